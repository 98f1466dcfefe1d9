//! Entry point for coverage-guided fuzzing (`vmm/fuzz`, cargo fuzz): arbitrary bytes
//! become a guest's view of a device's queues (descriptor tables, available rings and the
//! memory the descriptors point at), then the device is notified on every queue. The
//! property is the one the VMM promises: no input from the guest makes it panic.
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::block::Block;
use super::device::{ActivateContext, Interrupt, VirtioDevice};
use super::net::Net;
use super::rng::Rng;
use super::vsock::Vsock;
use crate::config::BlockConfig;
use crate::event_loop::EventLoop;

/// Which device the input drives.
#[derive(Clone, Copy, Debug)]
pub enum FuzzDevice {
    Block,
    Net,
    Rng,
    Vsock,
}

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
/// Per queue: descriptor table, then avail ring, then used ring, in one 4 KiB page.
const QUEUE_STRIDE: u64 = 0x1000;
const DESC_BYTES: usize = 16 * QUEUE_SIZE as usize;
const AVAIL_BYTES: usize = 4 + 2 * QUEUE_SIZE as usize + 2;
/// Where the rest of the input lands: the buffers descriptors are likely to point at.
const DATA_START: u64 = 0x1_0000;

/// A scratch directory kept for the whole fuzzing process (disk image, vsock socket).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hyper-vmm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz scratch dir");
        let disk = std::fs::File::create(dir.join("disk.img")).expect("fuzz disk image");
        disk.set_len(64 * 1024).expect("size fuzz disk image");
        dir
    })
}

fn make_device(kind: FuzzDevice) -> Option<Box<dyn VirtioDevice>> {
    let counters = Arc::default();
    Some(match kind {
        FuzzDevice::Rng => Box::new(Rng::new(counters)),
        FuzzDevice::Block => {
            let cfg = BlockConfig {
                path: scratch().join("disk.img"),
                read_only: false,
                serial: Some("fuzz".into()),
            };
            Box::new(Block::new("block0", &cfg, counters).ok()?)
        }
        FuzzDevice::Net => {
            let (ours, peer) = UnixDatagram::pair().ok()?;
            ours.set_nonblocking(true).ok()?;
            peer.set_nonblocking(true).ok()?;
            let _ = peer.send(&[0xab; 64]);
            // SAFETY: into_raw_fd hands the fd over; the File is its only owner. `peer`
            // is leaked so the tap stays connected for the whole run.
            let tap = unsafe { std::fs::File::from_raw_fd(ours.into_raw_fd()) };
            std::mem::forget(peer);
            Box::new(Net::with_tap(
                "net0",
                tap,
                Some([2, 0, 0, 0, 0, 1]),
                counters,
            ))
        }
        FuzzDevice::Vsock => {
            let uds = scratch().join("v.sock");
            let _ = std::fs::remove_file(&uds);
            Box::new(Vsock::new(3, &uds, counters).ok()?)
        }
    })
}

/// Runs one fuzz input against `kind`. Host-side set-up failures skip the input; a panic
/// anywhere below is a bug.
pub fn run(kind: FuzzDevice, data: &[u8]) {
    let Some(mut dev) = make_device(kind) else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let mut input = data;
    let mut take = |n: usize| {
        let (head, rest) = input.split_at(n.min(input.len()));
        input = rest;
        head
    };
    let nq = dev.queue_max_sizes().len();
    let mut queues = Vec::with_capacity(nq);
    for i in 0..nq as u64 {
        let base = i * QUEUE_STRIDE;
        let _ = mem.write_slice(take(DESC_BYTES), GuestAddress(base));
        let _ = mem.write_slice(take(AVAIL_BYTES), GuestAddress(base + 0x100));
        let Ok(mut q) = Queue::new(QUEUE_SIZE) else {
            return;
        };
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        queues.push(q);
    }
    let rest = take(MEM_SIZE - DATA_START as usize);
    let _ = mem.write_slice(rest, GuestAddress(DATA_START));

    let (Ok(irq), Ok(event_loop)) = (EventFd::new(libc::EFD_NONBLOCK), EventLoop::new()) else {
        return;
    };
    let ctl = event_loop.next_ctl();
    let ctx = ActivateContext {
        mem,
        queues,
        interrupt: Interrupt::new(irq),
    };
    if dev.activate(ctx, &ctl).is_err() {
        return;
    }
    // Twice: the second pass sees what the first left in the rings.
    for _ in 0..2 {
        for q in 0..nq {
            let _ = dev.queue_notify(q, &ctl);
        }
    }
    let mut cfg = [0u8; 8];
    let off = data.first().copied().unwrap_or(0);
    dev.read_config(u64::from(off), &mut cfg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::check_cases;

    /// The entry point itself runs every device on plain and degenerate inputs (the
    /// fuzzer explores from there).
    #[test]
    fn every_device_takes_any_input() {
        let inputs: [(&str, &[u8]); 4] = [
            ("no bytes", &[]),
            ("64 zero bytes", &[0; 64]),
            ("4096 0xff bytes", &[0xff; 4096]),
            ("70000 bytes of 7", &[7; 70_000]),
        ];
        let kinds = [
            FuzzDevice::Block,
            FuzzDevice::Net,
            FuzzDevice::Rng,
            FuzzDevice::Vsock,
        ];
        let cases = kinds.into_iter().flat_map(|kind| {
            inputs.map(|(what, data)| (format!("{kind:?}, {what}"), (kind, data)))
        });
        check_cases(cases, |(kind, data)| run(kind, data));
    }
}
