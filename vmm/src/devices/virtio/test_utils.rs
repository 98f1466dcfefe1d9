//! Helpers for device tests: guest memory, a driver-side queue, reading what the device
//! put in the used ring, and running a table of hostile cases.

use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::event_loop::{EventCtl, EventLoop};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// 16 MiB of guest memory at 0. MockSplitQueue puts its rings at 0; buffers go at 1 MiB+.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

pub fn test_irq() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

/// An event-loop handle whose registrations go nowhere in particular.
pub fn test_ctl() -> EventCtl {
    let l = EventLoop::new().unwrap();
    l.next_ctl()
}

/// (descriptor head, length) for every used-ring entry the device wrote.
pub fn used_elems(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let base = vq.used_addr();
    let idx: u16 = mem.read_obj(base.unchecked_add_compat(2)).unwrap();
    (0..idx)
        .map(|i| {
            let e = base.unchecked_add_compat(4 + 8 * u64::from(i % vq_len(vq)));
            let id: u32 = mem.read_obj(e).unwrap();
            let len: u32 = mem.read_obj(e.unchecked_add_compat(4)).unwrap();
            (id, len)
        })
        .collect()
}

fn vq_len(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    // The descriptor table holds `len` 16-byte entries.
    ((vq.avail_addr().0 - vq.desc_table_addr().0) / 16) as u16
}

trait AddCompat {
    fn unchecked_add_compat(self, n: u64) -> GuestAddress;
}
impl AddCompat for GuestAddress {
    fn unchecked_add_compat(self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
}

/// Runs `check` on every case, even after one fails, then fails naming each failed case
/// with its panic: a failed assert, or the code under test panicking on that input.
pub fn check_cases<N: Display, C>(
    cases: impl IntoIterator<Item = (N, C)>,
    mut check: impl FnMut(C),
) {
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, case) in cases {
        total += 1;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(case))) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("panicked");
            failures.push(format!("{name}: {}", why.replace('\n', "\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Aborts the test binary if it is still alive when `limit` is up and the returned guard
/// has not been dropped: a busy loop in the code under test then fails the run, naming
/// `what`, instead of hanging it.
pub fn watchdog(what: &'static str, limit: std::time::Duration) -> WatchdogGuard {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let t = std::time::Instant::now();
        while t.elapsed() < limit {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("watchdog: {what} did not return within {limit:?} (busy loop?)");
        std::process::abort();
    });
    WatchdogGuard(done)
}

pub struct WatchdogGuard(std::sync::Arc<std::sync::atomic::AtomicBool>);
impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
