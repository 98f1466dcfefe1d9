//! Identity-mapped page tables for the 64-bit entry (first 1 GiB with 2 MiB pages), and a
//! read-only page walker used to show the faulting instruction on emulation failures.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PD_ADDR, PDPT_ADDR, PML4_ADDR};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes PML4 → PDPT → PD covering [0, 1 GiB) and returns the value for CR3.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | PRESENT_RW, GuestAddress(PDPT_ADDR))?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PAGE_SIZE_2M | PRESENT_RW,
            GuestAddress(PD_ADDR + i * 8),
        )?;
    }
    Ok(PML4_ADDR)
}

/// Translates a 4-level-paging linear address to a guest physical address by walking the
/// guest's tables. Returns None for anything not mapped or not readable.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, linear: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (linear >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        // 1 GiB or 2 MiB page.
        if (level == 2 || level == 1) && entry & PAGE_SIZE_2M != 0 {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (linear & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    Some(table | (linear & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tables_translate_to_themselves() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        for addr in [0u64, 0x1234, 0x20_0000, 0x3fff_ffff] {
            assert_eq!(translate(&mem, cr3, addr), Some(addr));
        }
        assert_eq!(translate(&mem, cr3, 0x4000_0000), None);
    }

    #[test]
    fn garbage_cr3_does_not_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(translate(&mem, u64::MAX, u64::MAX), None);
    }
}
