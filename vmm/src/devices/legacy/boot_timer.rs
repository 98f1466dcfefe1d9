//! The boot-timer page: the guest's init writes the magic value 123 at offset 0 when it
//! reaches userspace, and we log the time since the VMM process started.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::devices::BusDevice;

pub const BOOT_TIMER_MAGIC: u8 = 123;

pub struct BootTimer {
    start: Instant,
    /// Boot time in µs once signalled (0 until then), shared with metrics.
    boot_time_us: Arc<AtomicU64>,
}

impl BootTimer {
    pub fn new(start: Instant, boot_time_us: Arc<AtomicU64>) -> Self {
        BootTimer {
            start,
            boot_time_us,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_TIMER_MAGIC) {
            let us = self.start.elapsed().as_micros() as u64;
            // Only the first signal counts as the boot time.
            if self
                .boot_time_us
                .compare_exchange(0, us.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                tracing::info!("guest-boot-time-us={us}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_value_at_offset_zero_counts() {
        let t = Arc::new(AtomicU64::new(0));
        let mut dev = BootTimer::new(Instant::now(), t.clone());
        dev.write(0, &[1]);
        dev.write(4, &[BOOT_TIMER_MAGIC]);
        dev.write(0, &[]);
        assert_eq!(t.load(Ordering::Relaxed), 0);
        dev.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        let first = t.load(Ordering::Relaxed);
        assert!(first > 0);
        dev.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(t.load(Ordering::Relaxed), first);
    }
}
