//! The entropy device: one queue of write-only buffers.

use std::io::Write;
use std::sync::Arc;

use virtio_queue::QueueT;

use crate::devices::virtio::device::{ActivateContext, ActivateError, DeviceError, VirtioDevice};
use crate::devices::virtio::{Activation, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, add, inc};

const QUEUE_SIZE: u16 = 256;
/// Most bytes we hand out per request, so one request cannot make us fill gigabytes.
const MAX_REQUEST: usize = 64 * 1024;
const REQUESTQ: usize = 0;

pub struct Rng {
    active: Activation<ActivateContext>,
    counters: Arc<DeviceCounters>,
}

impl Rng {
    pub fn new(counters: Arc<DeviceCounters>) -> Self {
        Rng {
            active: Activation::new(),
            counters,
        }
    }

    fn process_queue(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.get_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queues[REQUESTQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            inc(&self.counters.requests);
            let written = match chain.writer(&a.mem) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_REQUEST);
                    let mut buf = vec![0u8; n];
                    fill_random(&mut buf);
                    match w.write_all(&buf) {
                        Ok(()) => n as u32,
                        Err(_) => {
                            inc(&self.counters.errors);
                            0
                        }
                    }
                }
                Err(e) => {
                    crate::rate_limited_debug!("rng: bad descriptor chain: {e}");
                    inc(&self.counters.errors);
                    0
                }
            };
            add(&self.counters.rx_bytes, u64::from(written));
            a.queues[REQUESTQ].add_used(&a.mem, head, written)?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// getrandom() into `buf`; short reads are retried, errors leave zeros (and are logged).
fn fill_random(buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[off..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - off,
                0,
            )
        };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::rate_limited_error!("rng: getrandom failed");
            return;
        }
        off += n as usize;
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn name(&self) -> &str {
        "rng"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivateContext, _ctl: &EventCtl) -> Result<(), ActivateError> {
        self.active.activate(ctx.into_single_queue()?);
        Ok(())
    }
    fn queue_notify(&mut self, _index: usize, _ctl: &EventCtl) -> Result<(), DeviceError> {
        self.process_queue()
    }
    fn reset(&mut self, _ctl: &EventCtl) {
        self.active.reset();
    }
    /// Nothing but its queue: each request is answered in full when it is popped.
    fn queue_states(&self) -> Result<Vec<virtio_queue::QueueState>, String> {
        Ok(self.active.queue_states())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn activate(rng: &mut Rng, mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: Interrupt::new(test_irq()),
        };
        rng.activate(ctx, &test_ctl()).unwrap();
    }

    /// What a buffer must get back.
    enum Want {
        /// Filled with this many random bytes at this address.
        Filled(u64, u32),
        /// Returned with nothing written.
        Nothing,
        /// Returned (a loop has no length to check).
        Returned,
    }

    #[test]
    fn fills_buffers_and_survives_hostile_chains() {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let counters = Arc::new(DeviceCounters::default());
        let mut rng = Rng::new(counters.clone());
        activate(&mut rng, &mem, &vq);

        let w = VRING_DESC_F_WRITE;
        // One descriptor per chain, put on the queue in this order for one notify.
        let cases = [
            (
                "a good 64-byte buffer",
                desc(0x10_0000, 64, w, 0),
                Want::Filled(0x10_0000, 64),
            ),
            (
                "outside guest memory",
                desc(0xffff_0000_0000, 64, w, 0),
                Want::Nothing,
            ),
            ("zero length", desc(0x10_1000, 0, w, 0), Want::Nothing),
            (
                "read-only buffer: nothing to fill",
                desc(0x10_2000, 16, 0, 0),
                Want::Nothing,
            ),
            (
                "a loop: next points to itself",
                desc(0x10_3000, 16, w | VRING_DESC_F_NEXT, 4),
                Want::Returned,
            ),
        ];
        let table: Vec<_> = cases.iter().map(|c| c.1).collect();
        vq.add_desc_chains(&table, 0).unwrap();
        rng.queue_notify(0, &test_ctl()).unwrap();

        let used = used_elems(&mem, &vq);
        check_cases(
            cases.iter().enumerate().map(|(i, c)| (c.0, (i, &c.2))),
            |(i, want)| {
                let Some(&(head, len)) = used.get(i) else {
                    panic!("buffer not returned: {used:?}");
                };
                match *want {
                    Want::Filled(at, n) => {
                        assert_eq!((head, len), (i as u32, n));
                        let mut buf = vec![0u8; n as usize];
                        mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
                        assert!(buf.iter().any(|&b| b != 0));
                    }
                    Want::Nothing => assert_eq!(len, 0),
                    Want::Returned => {}
                }
            },
        );
        assert_eq!(used.len(), cases.len());
        assert!(counters.errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}
