//! The entropy device: one queue of write-only buffers.

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::device::{ActivateContext, ActivateError, DeviceError, VirtioDevice};
use crate::devices::virtio::{Interrupt, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, add, inc};

const QUEUE_SIZE: u16 = 256;
/// Most bytes we hand out per request, so one request cannot make us fill gigabytes.
const MAX_REQUEST: usize = 64 * 1024;

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

pub struct Rng {
    active: Option<Active>,
    counters: Arc<DeviceCounters>,
}

impl Rng {
    pub fn new(counters: Arc<DeviceCounters>) -> Self {
        Rng {
            active: None,
            counters,
        }
    }

    fn process_queue(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
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
                    tracing::debug!("rng: bad descriptor chain: {e}");
                    inc(&self.counters.errors);
                    0
                }
            };
            add(&self.counters.rx_bytes, u64::from(written));
            a.queue.add_used(&a.mem, head, written)?;
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
            tracing::error!("rng: getrandom failed");
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
        let (mem, queue, interrupt) = ctx.into_single_queue()?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }
    fn queue_notify(&mut self, _index: usize, _ctl: &EventCtl) -> Result<(), DeviceError> {
        self.process_queue()
    }
    fn reset(&mut self, _ctl: &EventCtl) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

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

    #[test]
    fn fills_buffers_and_survives_hostile_chains() {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let counters = Arc::new(DeviceCounters::default());
        let mut rng = Rng::new(counters.clone());
        activate(&mut rng, &mem, &vq);

        let w = VRING_DESC_F_WRITE;
        vq.add_desc_chains(
            &[
                // A good 64-byte buffer.
                desc(0x10_0000, 64, w, 0),
                // Outside guest memory.
                desc(0xffff_0000_0000, 64, w, 0),
                // Zero length.
                desc(0x10_1000, 0, w, 0),
                // Read-only buffer: nothing to fill.
                desc(0x10_2000, 16, 0, 0),
                // A loop: next points to itself.
                desc(0x10_3000, 16, w | VRING_DESC_F_NEXT, 4),
            ],
            0,
        )
        .unwrap();
        rng.queue_notify(0, &test_ctl()).unwrap();

        let used = used_elems(&mem, &vq);
        assert_eq!(used.len(), 5);
        assert_eq!(used[0], (0, 64));
        assert_eq!(used[1].1, 0);
        assert_eq!(used[2].1, 0);
        assert_eq!(used[3].1, 0);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        assert!(buf.iter().any(|&b| b != 0));
        assert!(counters.errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    }
}
