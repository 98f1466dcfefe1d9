//! The e820 memory map handed to the kernel in the zero page, and the guest RAM ranges it
//! describes.

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

pub const E820_RAM: u32 = 1;

/// One e820 entry: (start, size, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM ranges (guest address, size) for `mem_size` bytes: below the MMIO gap, then
/// the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The e820 map for `mem_size` bytes of RAM. The EBDA and the legacy VGA/BIOS area between
/// 640 KiB and 1 MiB are left out so the kernel does not use them.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for (start, size) in ram_ranges(mem_size) {
        let end = start + size;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_low_and_high_ram() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(map[0].size, EBDA_START);
        assert_eq!(map[1].addr, HIMEM_START);
        assert_eq!(map[1].addr + map[1].size, 128 << 20);
    }

    #[test]
    fn big_guest_skips_the_mmio_gap() {
        let mem = 4u64 << 30;
        let ranges = ram_ranges(mem);
        assert_eq!(
            ranges,
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem - MMIO_GAP_START)]
        );
        let map = e820_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, mem);
    }
}
