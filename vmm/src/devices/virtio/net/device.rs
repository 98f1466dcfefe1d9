//! The net device: rx (0) and tx (1) queues, the MAC in config space.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;

use super::tap::open_tap;
use crate::config::{NetConfig, parse_mac};
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, DEVICE_SUB_BASE, DeviceError, VirtioDevice, read_config_bytes,
};
use crate::devices::virtio::{Activation, TYPE_NET, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, add, inc};

const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const F_MAC: u64 = 1 << 5;
/// virtio-net header with num_buffers (virtio 1.0).
pub const NET_HDR_SIZE: usize = 12;
/// Largest frame we pass (no offloads: MTU-sized frames plus VLAN headroom, generously).
pub const MAX_FRAME: usize = 65562;
const TAP_SUB: u32 = DEVICE_SUB_BASE;

pub struct Net {
    name: String,
    tap: File,
    mac: Option<[u8; 6]>,
    active: Activation<ActivateContext>,
    /// A frame read from the tap while the guest had no RX buffer.
    pending: Option<Vec<u8>>,
    tap_watched: bool,
    counters: Arc<DeviceCounters>,
}

impl Net {
    /// A device on `cfg.tap` by name, or on `inherited`, the fd `cfg.fd` names (claimed
    /// at start by [`crate::inherited_fds::InheritedFds`]).
    pub fn new(
        name: &str,
        cfg: &NetConfig,
        inherited: Option<OwnedFd>,
        counters: Arc<DeviceCounters>,
    ) -> io::Result<Self> {
        let tap = match (&cfg.tap, inherited) {
            (Some(t), _) => open_tap(t)?,
            (None, Some(fd)) => {
                let f = File::from(fd);
                set_nonblocking(&f)?;
                f
            }
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "net needs tap= or fd=",
                ));
            }
        };
        let mac = match &cfg.mac {
            Some(m) => {
                Some(parse_mac(m).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?)
            }
            None => None,
        };
        Ok(Self::with_tap(name, tap, mac, counters))
    }

    /// A device over any fd with packet semantics (a tap; a datagram socket in tests).
    pub fn with_tap(
        name: &str,
        tap: File,
        mac: Option<[u8; 6]>,
        counters: Arc<DeviceCounters>,
    ) -> Self {
        Net {
            name: name.to_string(),
            tap,
            mac,
            active: Activation::new(),
            pending: None,
            tap_watched: false,
            counters,
        }
    }

    fn watch_tap(&mut self, ctl: &EventCtl, on: bool) {
        if on && !self.tap_watched {
            if let Err(e) = ctl.add(self.tap.as_raw_fd(), EventSet::IN, TAP_SUB) {
                crate::rate_limited_warn!("{}: cannot watch the tap: {e}", self.name);
                return;
            }
        } else if !on && self.tap_watched {
            ctl.remove(self.tap.as_raw_fd());
        }
        self.tap_watched = on;
    }

    /// Moves frames from the tap into guest RX buffers until either runs out.
    fn process_rx(&mut self, ctl: &EventCtl) -> Result<(), DeviceError> {
        let Some(a) = self.active.get_mut() else {
            return Ok(());
        };
        let mut used = false;
        let mut out_of_buffers = false;
        loop {
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.tap.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            };
            let Some(chain) = a.queues[RXQ].pop_descriptor_chain(&a.mem) else {
                self.pending = Some(frame);
                out_of_buffers = true;
                break;
            };
            let head = chain.head_index();
            let len = match chain.writer(&a.mem) {
                Ok(mut w) if w.available_bytes() >= NET_HDR_SIZE + frame.len() => {
                    let mut hdr = [0u8; NET_HDR_SIZE];
                    hdr[10] = 1; // num_buffers
                    match w.write_all(&hdr).and_then(|_| w.write_all(&frame)) {
                        Ok(()) => {
                            add(&self.counters.rx_bytes, frame.len() as u64);
                            (NET_HDR_SIZE + frame.len()) as u32
                        }
                        Err(_) => {
                            inc(&self.counters.errors);
                            0
                        }
                    }
                }
                _ => {
                    // Too small or invalid: the frame is dropped, the buffer returned.
                    inc(&self.counters.errors);
                    0
                }
            };
            a.queues[RXQ].add_used(&a.mem, head, len)?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        // With no guest buffers, stop reading the tap until the guest adds some.
        self.watch_tap(ctl, !out_of_buffers);
        Ok(())
    }

    fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.get_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queues[TXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            inc(&self.counters.requests);
            match chain.reader(&a.mem) {
                Ok(mut r) => {
                    let n = r.available_bytes();
                    if !(NET_HDR_SIZE..=NET_HDR_SIZE + MAX_FRAME).contains(&n) {
                        inc(&self.counters.errors);
                    } else {
                        let mut buf = vec![0u8; n];
                        if r.read_exact(&mut buf).is_ok() {
                            // A full tap drops the frame, as a real NIC would.
                            // A tap takes a frame whole or not at all.
                            match self.tap.write(&buf[NET_HDR_SIZE..]) {
                                Ok(w) if w == n - NET_HDR_SIZE => {
                                    add(&self.counters.tx_bytes, (n - NET_HDR_SIZE) as u64)
                                }
                                _ => inc(&self.counters.errors),
                            }
                        } else {
                            inc(&self.counters.errors);
                        }
                    }
                }
                Err(_) => inc(&self.counters.errors),
            }
            a.queues[TXQ].add_used(&a.mem, head, 0)?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

fn set_nonblocking(f: &File) -> io::Result<()> {
    // SAFETY: plain fcntl flag calls on an fd we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | if self.mac.is_some() { F_MAC } else { 0 }
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 8];
        if let Some(m) = self.mac {
            cfg[..6].copy_from_slice(&m);
        }
        read_config_bytes(&cfg, offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext, ctl: &EventCtl) -> Result<(), ActivateError> {
        self.active.activate(ctx.expect_queues(2)?);
        self.watch_tap(ctl, true);
        Ok(())
    }
    fn queue_notify(&mut self, index: usize, ctl: &EventCtl) -> Result<(), DeviceError> {
        match index {
            RXQ => self.process_rx(ctl),
            TXQ => self.process_tx(),
            _ => Ok(()),
        }
    }
    fn handle_event(&mut self, sub: u32, _ev: EventSet, ctl: &EventCtl) -> Result<(), DeviceError> {
        if sub == TAP_SUB {
            self.process_rx(ctl)?;
        }
        Ok(())
    }
    fn reset(&mut self, ctl: &EventCtl) {
        self.watch_tap(ctl, false);
        self.active.reset();
        self.pending = None;
    }
    /// The queues are all there is: the tap is the restoring VMM's own (the new pod's),
    /// and a frame read but not yet delivered is dropped, as a NIC drops one in flight.
    /// The guest driver keeps the MAC it read at probe; whoever restores gives the
    /// interface its new one (the shim, through the agent).
    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        if self.pending.is_some() {
            tracing::info!(device = %self.name, "net: a frame in flight is left out of the snapshot");
        }
        Ok(self.active.queue_states())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::*;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// A datagram socket pair standing in for a tap: the device's end (non-blocking,
    /// as a tap is) and the peer's.
    fn datagram_tap() -> (File, UnixDatagram) {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        let tap = File::from(OwnedFd::from(ours));
        set_nonblocking(&tap).unwrap();
        (tap, peer)
    }

    #[test]
    fn frames_both_ways_and_hostile_buffers() {
        let mem = test_memory();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let (tap, peer) = datagram_tap();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let counters = Arc::new(DeviceCounters::default());
        let mut net = Net::with_tap("net0", tap, Some([2, 0, 0, 0, 0, 9]), counters.clone());
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 9]);
        let ctl = test_ctl();
        net.activate(
            ActivateContext {
                mem: mem.clone(),
                queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
                interrupt: Interrupt::new(test_irq()),
            },
            &ctl,
        )
        .unwrap();

        // TX: a good frame, a chain shorter than the header, one outside memory.
        mem.write_slice(&[0u8; NET_HDR_SIZE], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"frame-out", GuestAddress(0x10_0000 + NET_HDR_SIZE as u64))
            .unwrap();
        txq.add_desc_chains(
            &[
                d(0x10_0000, (NET_HDR_SIZE + 9) as u32, 0),
                d(0x10_1000, 4, 0),
                d(0x7fff_0000_0000, 100, 0),
            ],
            0,
        )
        .unwrap();
        net.queue_notify(TXQ, &ctl).unwrap();
        let mut buf = [0u8; 64];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"frame-out");
        assert_eq!(used_elems(&mem, &txq).len(), 3);

        // RX: one frame arrives before the guest has buffers; then a too-small buffer
        // (frame dropped), then a good one.
        peer.send(b"frame-in-1").unwrap();
        net.handle_event(TAP_SUB, EventSet::IN, &ctl).unwrap();
        assert!(net.pending.is_some());
        rxq.add_desc_chains(
            &[
                d(0x20_0000, 8, VRING_DESC_F_WRITE),
                d(0x21_0000, 2048, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        peer.send(b"frame-in-2").unwrap();
        net.queue_notify(RXQ, &ctl).unwrap();
        let used = used_elems(&mem, &rxq);
        assert_eq!(used, vec![(0, 0), (1, (NET_HDR_SIZE + 10) as u32)]);
        let mut got = [0u8; 10];
        mem.read_slice(&mut got, GuestAddress(0x21_0000 + NET_HDR_SIZE as u64))
            .unwrap();
        assert_eq!(&got, b"frame-in-2");
        assert!(counters.errors.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    }

    /// A net device saved with RX buffers posted and TX advanced, restored onto another
    /// tap: a frame on the new tap lands in a buffer the guest posted before the snapshot,
    /// and the used ring goes on where it was.
    #[test]
    fn a_restored_net_device_goes_on_with_its_saved_queues_on_a_new_tap() {
        use virtio_queue::Queue;
        let mem = test_memory();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let ctl = test_ctl();
        let activate = |net: &mut Net, queues: Vec<Queue>| {
            net.activate(
                ActivateContext {
                    mem: mem.clone(),
                    queues,
                    interrupt: Interrupt::new(test_irq()),
                },
                &ctl,
            )
            .unwrap();
        };
        let counters = Arc::new(DeviceCounters::default());
        let (tap, old_peer) = datagram_tap();
        let mut saved = Net::with_tap("net0", tap, Some([2, 0, 0, 0, 0, 1]), counters.clone());
        assert!(saved.queue_states().unwrap().is_empty(), "inactive");
        activate(
            &mut saved,
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
        );
        // Two RX buffers posted; one frame received before the snapshot.
        rxq.add_desc_chains(
            &[
                d(0x20_0000, 2048, VRING_DESC_F_WRITE),
                d(0x21_0000, 2048, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        old_peer.send(b"before").unwrap();
        saved.queue_notify(RXQ, &ctl).unwrap();
        let states = saved.queue_states().unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states[RXQ].next_avail, 1);
        assert_eq!(states[RXQ].next_used, 1);

        let (tap, new_peer) = datagram_tap();
        let mut restored = Net::with_tap("net0", tap, Some([2, 0, 0, 0, 0, 2]), counters);
        let queues = states
            .iter()
            .map(|s| Queue::try_from(*s).unwrap())
            .collect();
        activate(&mut restored, queues);
        old_peer.send(b"to-the-old-tap").unwrap();
        new_peer.send(b"after").unwrap();
        restored.handle_event(TAP_SUB, EventSet::IN, &ctl).unwrap();
        let used = used_elems(&mem, &rxq);
        assert_eq!(
            used,
            vec![
                (0, (NET_HDR_SIZE + 6) as u32),
                (1, (NET_HDR_SIZE + 5) as u32)
            ]
        );
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x21_0000 + NET_HDR_SIZE as u64))
            .unwrap();
        assert_eq!(&got, b"after");
    }
}
