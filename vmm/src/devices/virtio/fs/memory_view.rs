//! Guest memory as vm-memory 0.17 sees it (fuse-backend-rs's version), over the mappings
//! the rest of the VMM owns through vm-memory 0.18. Nothing is mapped twice: each 0.17
//! region borrows the host address range of a 0.18 region, which the view keeps alive.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_memory_017 as vm017;

pub struct MemoryView {
    pub mem: vm017::GuestMemoryMmap,
    /// Holds the mappings `mem` points into.
    _owner: GuestMemoryMmap,
}

pub fn memory_view(mem: &GuestMemoryMmap) -> Result<MemoryView, String> {
    let mut regions = Vec::new();
    for r in mem.iter() {
        // SAFETY: the range is exactly one live mapping of `mem`, whose clone the view keeps,
        // so it stays mapped as long as the 0.17 region exists; prot and flags are the
        // mapping's own. build_raw regions never unmap what they borrow.
        let mapping =
            unsafe { vm017::MmapRegion::build_raw(r.as_ptr(), r.size(), r.prot(), r.flags()) }
                .map_err(|e| format!("cannot view guest memory region: {e}"))?;
        let region = vm017::GuestRegionMmap::new(mapping, vm017::GuestAddress(r.start_addr().0))
            .ok_or("guest memory region wraps around")?;
        regions.push(region);
    }
    let view = vm017::GuestMemoryMmap::from_regions(regions)
        .map_err(|e| format!("cannot view guest memory: {e}"))?;
    Ok(MemoryView {
        mem: view,
        _owner: mem.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vm_memory_017::Bytes as _;

    #[test]
    fn both_views_see_the_same_bytes() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ])
        .unwrap();
        let view = memory_view(&mem).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x100)).unwrap();
        assert_eq!(
            view.mem
                .read_obj::<u32>(vm017::GuestAddress(0x100))
                .unwrap(),
            0x1234_5678
        );
        view.mem
            .write_obj(7u8, vm017::GuestAddress((4 << 20) + 5))
            .unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress((4 << 20) + 5)).unwrap(), 7);
        // The hole between the regions is not memory in either view.
        assert!(
            view.mem
                .read_obj::<u8>(vm017::GuestAddress(2 << 20))
                .is_err()
        );
        drop(mem);
        // The view keeps the mappings alive on its own.
        assert_eq!(
            view.mem
                .read_obj::<u8>(vm017::GuestAddress((4 << 20) + 5))
                .unwrap(),
            7
        );
    }
}
