//! The vsock virtio device: queues rx (0), tx (1) and event (2); config space is the guest
//! CID.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::packet::{read_tx_packet, rx_capacity, write_rx_packet};
use super::unix::Muxer;
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, DeviceError, VirtioDevice, read_config_bytes,
};
use crate::devices::virtio::{Activation, TYPE_VSOCK, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, inc};

const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
const NUM_QUEUES: usize = 3;
/// `virtio_vsock_event.id` of a transport reset (virtio 1.2, 5.10.6.5): the driver
/// drops every connection and reads the CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// The device's own sub-token: a 1 s timer that expires stale handshakes.
const TIMER_SUB: u32 = u32::MAX;
const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    timer: TimerFd,
    active: Activation<ActivateContext>,
    counters: Arc<DeviceCounters>,
    /// Where the transport reset of a restore stands.
    reset: Reset,
}

/// A restored device's transport reset. Until the driver has handled it, nothing goes to
/// the guest's RX queue: the reset closes every connected guest socket when it is
/// handled, so a connection made before then (the shim's first one to the agent) would
/// be cut off. Linux's driver handles each event, reposts its buffer and kicks the event
/// queue: that kick is the sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// None owed (a device that booted, or the driver has handled it).
    Done,
    /// Owed: sent once the driver posts an event buffer.
    Owed,
    /// Sent; waiting for the driver's next event-queue kick.
    Sent,
}

impl Vsock {
    /// Binds the host socket at `uds` now, so clients can connect before the guest is up.
    pub fn new(cid: u64, uds: &Path, counters: Arc<DeviceCounters>) -> io::Result<Self> {
        Ok(Vsock {
            cid,
            muxer: Muxer::new(cid, uds, counters.clone())?,
            timer: TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?,
            active: Activation::new(),
            counters,
            reset: Reset::Done,
        })
    }

    /// Sends the owed transport reset, if the driver has an event buffer posted.
    fn deliver_reset(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.get_mut().filter(|_| self.reset == Reset::Owed) else {
            return Ok(());
        };
        let Some(chain) = a.queues[EVQ].pop_descriptor_chain(&a.mem) else {
            return Ok(());
        };
        let head = chain.head_index();
        let written = match chain.writer(&a.mem) {
            Ok(mut w) if w.available_bytes() >= 4 => {
                use std::io::Write;
                w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|()| 4)
                    .unwrap_or(0)
            }
            _ => 0,
        };
        a.queues[EVQ].add_used(&a.mem, head, written)?;
        a.interrupt.signal_used_queue();
        // A buffer too small to hold the event was the driver's mistake: still told.
        self.reset = Reset::Sent;
        Ok(())
    }

    fn process_tx(&mut self, ctl: &EventCtl) -> Result<(), DeviceError> {
        let Some(a) = self.active.get_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queues[TXQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match read_tx_packet(&a.mem, chain) {
                Ok((hdr, data)) => self.muxer.send_pkt(&hdr, &data, ctl),
                Err(e) => {
                    crate::rate_limited_warn!("vsock: dropping bad TX packet: {e}");
                    inc(&self.counters.errors);
                }
            }
            a.queues[TXQ].add_used(&a.mem, head, 0)?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }

    fn process_rx(&mut self, ctl: &EventCtl) -> Result<(), DeviceError> {
        if self.reset != Reset::Done {
            return Ok(());
        }
        let Some(a) = self.active.get_mut() else {
            return Ok(());
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = a.queues[RXQ].pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let cap = match rx_capacity(&a.mem, &chain) {
                Ok(cap) => cap,
                Err(e) => {
                    crate::rate_limited_warn!("vsock: unusable RX buffer: {e}");
                    inc(&self.counters.errors);
                    a.queues[RXQ].add_used(&a.mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let Some((hdr, data)) = self.muxer.recv_pkt(cap, ctl) else {
                if cap == 0 && self.muxer.has_pending_rx() {
                    // Payload is owed but this buffer only fits a header. The queue is
                    // FIFO, so keeping it would stall every buffer behind it: hand it back
                    // empty. The connection stays queued for the next buffer.
                    crate::rate_limited_warn!(
                        "vsock: RX buffer has no room for payload; returned unused"
                    );
                    inc(&self.counters.errors);
                    a.queues[RXQ].add_used(&a.mem, head, 0)?;
                    used = true;
                    continue;
                }
                // Nothing to send after all: give the buffer back.
                a.queues[RXQ].go_to_previous_position();
                break;
            };
            let len = match write_rx_packet(&a.mem, chain, &hdr, &data) {
                Ok(n) => n,
                Err(e) => {
                    crate::rate_limited_warn!("vsock: cannot write RX packet: {e}");
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
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn name(&self) -> &str {
        "vsock"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext, ctl: &EventCtl) -> Result<(), ActivateError> {
        let ctx = ctx.expect_queues(NUM_QUEUES)?;
        self.muxer.activate(ctl).map_err(ActivateError::Register)?;
        self.timer
            .reset(SWEEP_PERIOD, Some(SWEEP_PERIOD))
            .map_err(|e| ActivateError::Register(io::Error::from_raw_os_error(e.errno())))?;
        ctl.add(self.timer.as_raw_fd(), EventSet::IN, TIMER_SUB)
            .map_err(ActivateError::Register)?;
        self.active.activate(ctx);
        Ok(())
    }
    fn queue_notify(&mut self, index: usize, ctl: &EventCtl) -> Result<(), DeviceError> {
        match index {
            TXQ => self.process_tx(ctl)?,
            EVQ => match self.reset {
                Reset::Sent => self.reset = Reset::Done,
                _ => self.deliver_reset()?,
            },
            _ => {}
        }
        // TX often produces replies; a new RX buffer may unblock queued packets.
        self.process_rx(ctl)
    }
    fn handle_event(
        &mut self,
        sub: u32,
        events: EventSet,
        ctl: &EventCtl,
    ) -> Result<(), DeviceError> {
        if sub == TIMER_SUB {
            let _ = self.timer.wait();
            self.muxer.sweep(std::time::Instant::now(), ctl);
        } else {
            self.muxer.handle_event(sub, events, ctl);
        }
        self.process_rx(ctl)
    }
    fn reset(&mut self, ctl: &EventCtl) {
        ctl.remove(self.timer.as_raw_fd());
        let _ = self.timer.clear();
        self.muxer.reset(ctl);
        self.active.reset();
        self.reset = Reset::Done;
    }
    /// Connections are not saved: each one's peer is a host socket of this VMM, which no
    /// restored VM has. The restored device resets the guest's transport instead, which
    /// closes every guest socket (Firecracker does the same); this VMM's own connections
    /// go on if it resumes.
    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        let open = self.muxer.describe_connections();
        if !open.is_empty() || self.muxer.has_pending_rx() {
            tracing::info!(
                connections = ?open,
                "vsock: open connections are left out of the snapshot"
            );
        }
        Ok(self.active.queue_states())
    }
    fn restored(&mut self, _ctl: &EventCtl) {
        self.reset = Reset::Owed;
        if let Err(e) = self.deliver_reset() {
            crate::rate_limited_warn!("vsock: cannot send the transport reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::*;
    use crate::devices::virtio::vsock::packet::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    struct Rig<'a> {
        dev: Vsock,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        evq: MockSplitQueue<'a, GuestMemoryMmap>,
        ctl: EventCtl,
        _dir: tempfile::TempDir,
        uds: std::path::PathBuf,
    }

    fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
        rig_on(mem, test_ctl())
    }

    /// A rig whose fds are registered on `ctl` (e.g. a real loop's own handle).
    fn rig_on(mem: &GuestMemoryMmap, ctl: EventCtl) -> Rig<'_> {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut dev = Vsock::new(3, &uds, Arc::new(DeviceCounters::default())).unwrap();
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rxq.create_queue().unwrap(),
                txq.create_queue().unwrap(),
                evq.create_queue().unwrap(),
            ],
            interrupt: Interrupt::new(test_irq()),
        };
        dev.activate(ctx, &ctl).unwrap();
        Rig {
            dev,
            rxq,
            txq,
            evq,
            ctl,
            _dir: dir,
            uds,
        }
    }

    fn write_hdr(mem: &GuestMemoryMmap, at: u64, h: Header) {
        mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    }

    #[test]
    fn open_connections_are_not_saved_and_a_restored_vsock_sends_a_transport_reset() {
        let mem = test_memory();
        let mut r = rig(&mem);
        let quiet = r.dev.queue_states().unwrap();
        assert_eq!(quiet.len(), NUM_QUEUES);
        let _listener =
            std::os::unix::net::UnixListener::bind(format!("{}_52", r.uds.display())).unwrap();
        guest_connects_to_port_52(&mem, &mut r);
        assert_eq!(r.dev.muxer.describe_connections().len(), 1);
        let busy = r.dev.queue_states().unwrap();
        assert_eq!(
            busy.len(),
            NUM_QUEUES,
            "a connection does not stop the snapshot"
        );

        // Restored with no event buffer posted: the reset waits for one, sent once.
        let mut r = rig(&mem);
        r.dev.restored(&r.ctl);
        assert!(used_elems(&mem, &r.evq).is_empty());
        r.evq
            .add_desc_chains(
                &[
                    desc(0x30_0000, 8, VRING_DESC_F_WRITE),
                    desc(0x30_0100, 8, VRING_DESC_F_WRITE),
                ],
                0,
            )
            .unwrap();
        mem.write_obj(u32::MAX, GuestAddress(0x30_0000)).unwrap();
        r.dev.queue_notify(EVQ, &r.ctl).unwrap();
        r.dev.queue_notify(EVQ, &r.ctl).unwrap();
        assert_eq!(used_elems(&mem, &r.evq), vec![(0, 4)]);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x30_0000)).unwrap(),
            EVENT_TRANSPORT_RESET
        );
    }

    /// Until the driver has handled the reset (its next event-queue kick), nothing is
    /// put on the RX queue, which the reset would cut off.
    #[test]
    fn a_restored_vsock_holds_rx_until_the_driver_has_handled_the_reset() {
        let mem = test_memory();
        let mut r = rig(&mem);
        r.evq
            .add_desc_chains(&[desc(0x30_0000, 8, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        r.dev.restored(&r.ctl);
        assert_eq!(used_elems(&mem, &r.evq), vec![(0, 4)], "reset sent at once");
        // A REQUEST to a port nobody listens on: a RST is owed, and held.
        guest_connects_to_port_52(&mem, &mut r);
        assert!(r.dev.muxer.has_pending_rx());
        assert!(
            used_elems(&mem, &r.rxq).is_empty(),
            "RX before the reset was handled"
        );
        r.dev.queue_notify(EVQ, &r.ctl).unwrap();
        assert_eq!(used_elems(&mem, &r.rxq), vec![(0, HDR_SIZE as u32)]);
        let mut hb = [0u8; HDR_SIZE];
        mem.read_slice(&mut hb, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(Header::from_bytes(&hb).op, OP_RST);
    }

    #[test]
    fn config_space_is_the_cid() {
        let mem = test_memory();
        let r = rig(&mem);
        let mut b = [0u8; 8];
        r.dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 3);
        let mut b = [0xaau8; 4];
        r.dev.read_config(6, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
        r.dev.read_config(u64::MAX, &mut b);
    }

    /// The guest's side of a connect to host port 52: a REQUEST on the TX queue, one
    /// 4 KiB RX buffer for the answer, and the TX queue notified. Returns the REQUEST.
    fn guest_connects_to_port_52(mem: &GuestMemoryMmap, r: &mut Rig<'_>) -> Header {
        let req = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 4096,
            ..Default::default()
        };
        write_hdr(mem, 0x10_0000, req);
        r.txq
            .add_desc_chains(&[desc(0x10_0000, HDR_SIZE as u32, 0)], 0)
            .unwrap();
        r.rxq
            .add_desc_chains(&[desc(0x20_0000, 4096, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        r.dev.queue_notify(TXQ, &r.ctl).unwrap();
        req
    }

    #[test]
    fn guest_connects_to_host_listener_through_queues() {
        let mem = test_memory();
        let mut r = rig(&mem);
        let listener =
            std::os::unix::net::UnixListener::bind(format!("{}_52", r.uds.display())).unwrap();
        let req = guest_connects_to_port_52(&mem, &mut r);
        let used = used_elems(&mem, &r.rxq);
        assert_eq!(used, vec![(0, HDR_SIZE as u32)]);
        let mut hb = [0u8; HDR_SIZE];
        mem.read_slice(&mut hb, GuestAddress(0x20_0000)).unwrap();
        let resp = Header::from_bytes(&hb);
        assert_eq!(
            (resp.op, resp.dst_port, resp.src_port),
            (OP_RESPONSE, 1000, 52)
        );
        let (mut s, _) = listener.accept().unwrap();

        // TX: data split over header and payload descriptors.
        let mut rw = req;
        rw.op = OP_RW;
        rw.len = 3;
        write_hdr(&mem, 0x10_1000, rw);
        mem.write_slice(b"abc", GuestAddress(0x10_2000)).unwrap();
        r.txq
            .add_desc_chains(
                &[
                    RawDescriptor::from(SplitDescriptor::new(0x10_1000, HDR_SIZE as u32, 1, 2)),
                    RawDescriptor::from(SplitDescriptor::new(0x10_2000, 3, 0, 0)),
                ],
                1,
            )
            .unwrap();
        r.dev.queue_notify(TXQ, &r.ctl).unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        s.write_all(b"xy").unwrap();
    }

    #[test]
    fn hostile_tx_chains_are_dropped() {
        let mem = test_memory();
        let mut r = rig(&mem);
        let ok_hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            type_: TYPE_STREAM,
            op: OP_RW,
            ..Default::default()
        };
        // len beyond the buffer, len beyond the limit.
        let mut h = ok_hdr;
        h.len = 1000;
        write_hdr(&mem, 0x10_0000, h);
        h.len = u32::MAX;
        write_hdr(&mem, 0x10_1000, h);
        r.txq
            .add_desc_chains(
                &[
                    desc(0x10_0000, HDR_SIZE as u32 + 10, 0),
                    desc(0x10_1000, HDR_SIZE as u32, 0),
                    // Header-sized buffer outside memory.
                    desc(0x7fff_ffff_0000, HDR_SIZE as u32, 0),
                    // Too small, zero-length, and a write-only buffer on the TX queue.
                    desc(0x10_2000, 10, 0),
                    desc(0x10_3000, 0, 0),
                    desc(0x10_4000, 64, VRING_DESC_F_WRITE),
                    // A descriptor whose next points to itself.
                    RawDescriptor::from(SplitDescriptor::new(0x10_5000, 8, 1, 7)),
                ],
                0,
            )
            .unwrap();
        r.dev.queue_notify(TXQ, &r.ctl).unwrap();
        assert_eq!(used_elems(&mem, &r.txq).len(), 7);
        assert!(
            r.dev
                .counters
                .errors
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 6
        );
        // The device still works: a connect attempt to a closed port gets an RST.
        let _c = UnixStream::connect(&r.uds);
    }

    #[test]
    fn small_or_bad_rx_buffers_do_not_lose_packets() {
        let mem = test_memory();
        let mut r = rig(&mem);
        // A RST is owed to the guest (REQUEST to a port nobody listens on).
        let req = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1,
            dst_port: 9,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            ..Default::default()
        };
        write_hdr(&mem, 0x10_0000, req);
        r.txq
            .add_desc_chains(&[desc(0x10_0000, HDR_SIZE as u32, 0)], 0)
            .unwrap();
        r.rxq
            .add_desc_chains(
                &[
                    desc(0x20_0000, 8, VRING_DESC_F_WRITE),
                    desc(0x7fff_ffff_0000, 4096, VRING_DESC_F_WRITE),
                    desc(0x20_1000, 4096, VRING_DESC_F_WRITE),
                ],
                0,
            )
            .unwrap();
        r.dev.queue_notify(TXQ, &r.ctl).unwrap();
        let used = used_elems(&mem, &r.rxq);
        assert_eq!(used, vec![(0, 0), (1, 0), (2, HDR_SIZE as u32)]);
        let mut hb = [0u8; HDR_SIZE];
        mem.read_slice(&mut hb, GuestAddress(0x20_1000)).unwrap();
        assert_eq!(Header::from_bytes(&hb).op, OP_RST);
    }

    /// Forwards everything `el` reports within `ms` to the device; returns the events
    /// that were not the device's 1 s timer.
    fn pump(el: &crate::event_loop::EventLoop, r: &mut Rig, ms: i32) -> usize {
        let mut others = 0;
        for ev in el.run_once(ms).unwrap() {
            if ev.sub != TIMER_SUB {
                others += 1;
            }
            r.dev.handle_event(ev.sub, ev.events, &r.ctl).unwrap();
        }
        others
    }

    #[test]
    fn header_only_rx_buffers_do_not_spin_and_lose_no_data() {
        let mem = test_memory();
        let el = crate::event_loop::EventLoop::new().unwrap();
        let mut r = rig_on(&mem, el.own_ctl());
        let listener =
            std::os::unix::net::UnixListener::bind(format!("{}_52", r.uds.display())).unwrap();
        let req = guest_connects_to_port_52(&mem, &mut r);
        let (mut host, _) = listener.accept().unwrap();
        // Host data is pending for the guest, and the guest has no RX buffer yet.
        host.write_all(b"hello").unwrap();
        assert!(
            pump(&el, &mut r, 1000) > 0,
            "the host stream became readable"
        );

        // Buffers that fit a header and no payload byte (the 44-byte buffers).
        let small: Vec<_> = (0..4)
            .map(|i| desc(0x30_0000 + i * 0x1000, HDR_SIZE as u32, VRING_DESC_F_WRITE))
            .collect();
        r.rxq.add_desc_chains(&small, 1).unwrap();
        {
            let _dog = watchdog(
                "RX processing with header-only buffers",
                Duration::from_secs(10),
            );
            r.dev.queue_notify(RXQ, &r.ctl).unwrap();
        }
        // (a) Each is handed back empty, counted as an error; the call returned, and the
        // loop is quiet (the connection is not watched while it waits for a buffer).
        let used = used_elems(&mem, &r.rxq);
        assert_eq!(used[1..], [(1, 0), (2, 0), (3, 0), (4, 0)], "{used:?}");
        assert_eq!(r.dev.counters.errors.load(Ordering::Relaxed), 4);
        assert_eq!(
            pump(&el, &mut r, 50),
            0,
            "no events while waiting for a buffer"
        );

        // (b) A real buffer gets the data, all of it.
        r.rxq
            .add_desc_chains(&[desc(0x40_0000, 4096, VRING_DESC_F_WRITE)], 5)
            .unwrap();
        r.dev.queue_notify(RXQ, &r.ctl).unwrap();
        let used = used_elems(&mem, &r.rxq);
        assert_eq!(used.last(), Some(&(5, HDR_SIZE as u32 + 5)), "{used:?}");
        let mut hb = [0u8; HDR_SIZE];
        mem.read_slice(&mut hb, GuestAddress(0x40_0000)).unwrap();
        let h = Header::from_bytes(&hb);
        assert_eq!((h.op, h.len, h.dst_port), (OP_RW, 5, 1000));
        let mut data = [0u8; 5];
        mem.read_slice(&mut data, GuestAddress(0x40_0000 + HDR_SIZE as u64))
            .unwrap();
        assert_eq!(&data, b"hello");

        // A header-only buffer still carries a header-only packet (an RST here).
        let mut rst = req;
        rst.src_port = 1001;
        rst.dst_port = 9;
        write_hdr(&mem, 0x10_1000, rst);
        r.rxq
            .add_desc_chains(&[desc(0x50_0000, HDR_SIZE as u32, VRING_DESC_F_WRITE)], 6)
            .unwrap();
        r.txq
            .add_desc_chains(&[desc(0x10_1000, HDR_SIZE as u32, 0)], 1)
            .unwrap();
        r.dev.queue_notify(TXQ, &r.ctl).unwrap();
        assert_eq!(used_elems(&mem, &r.rxq).last(), Some(&(6, HDR_SIZE as u32)));
        mem.read_slice(&mut hb, GuestAddress(0x50_0000)).unwrap();
        assert_eq!(Header::from_bytes(&hb).op, OP_RST);
    }
}
