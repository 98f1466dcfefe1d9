//! Address → device routing for port I/O and MMIO exits.
//!
//! Each device owns a range; an access is delivered to the device with the offset inside
//! that range. Accesses that hit no device are counted and otherwise ignored: reads see
//! all-ones, like an empty bus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers reads and writes within its range.
pub trait BusDevice: Send {
    /// `offset` is relative to the start of the device's range; `data.len()` is 1, 2, 4 or 8.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("empty or overflowing bus range {base:#x}+{len:#x}")]
    BadRange { base: u64, len: u64 },
}

#[derive(Clone)]
struct Range {
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        // The device starting at or before `base` must end before it; the next must start
        // at or after `end`.
        if let Some((b, r)) = self.ranges.range(..=base).next_back()
            && b + r.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        if let Some((b, _)) = self.ranges.range(base..).next()
            && *b < end
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Range { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fit in the device's range.
        if offset.checked_add(size as u64)? <= range.len {
            Some((range, offset))
        } else {
            None
        }
    }

    /// Returns false if no device claims the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Returns false if no device claims the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device mutex, recovering from poisoning: a device that panicked once has already
/// been logged, and the VM should not die because of it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x10, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x17, 2),
            Err(BusError::Overlap { base: 0x17, len: 2 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x8, 9),
            Err(BusError::Overlap { base: 0x8, len: 9 })
        );
        assert!(bus.insert(dev.clone(), 0x18, 1).is_ok());
        assert!(bus.insert(dev.clone(), 0, 0).is_err());
        assert!(bus.insert(dev.clone(), u64::MAX, 2).is_err());

        let mut b = [0u8; 2];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b, [3, 3]);
        // Straddles the end of the range.
        assert!(!bus.read(0x17, &mut [0u8; 4]));
        assert!(bus.write(0x11, &[9]));
        assert!(!bus.write(0x100, &[9]));
        let mut b = [0u8; 1];
        assert!(!bus.read(0x5, &mut b));
        assert_eq!(b, [0xff]);
        assert_eq!(lock(&dev).0, vec![(1, vec![9])]);
    }
}
