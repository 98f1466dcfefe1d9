//! Guest RAM: one memfd, mapped shared, split around the MMIO gap below 4 GiB.
//!
//! A memfd (rather than anonymous memory) lets a future vhost-user backend map the same
//! pages.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::arch::x86_64::e820::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest memory memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest memory memfd to {size} bytes: {source}")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map guest memory: {0}")]
    Map(String),
    #[error("cannot save guest memory: {0}")]
    Save(#[source] std::io::Error),
    #[error("snapshot memory file holds {have} bytes, the VM needs {want}")]
    SnapshotSize { have: u64, want: u64 },
}

/// Creates `size` bytes of guest RAM backed by a memfd.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let name = CString::new("hyper-guest-ram").unwrap_or_default();
    // SAFETY: name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;

    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let handle = file.try_clone().map_err(MemoryError::Memfd)?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(handle, file_offset)),
        )
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        regions.push(region);
        file_offset += len;
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))?;
    advise_huge_pages(&mem);
    if let Some(mode) = shmem_thp_mode()
        && (mode == "never" || mode == "deny")
    {
        // Measured in the nested test host: about 1.2 s more to boot to the agent.
        tracing::info!(
            "host disallows huge pages for shared memory (shmem_enabled={mode}); guest \
             memory uses 4 KiB pages and boots slower; set \
             /sys/kernel/mm/transparent_hugepage/shmem_enabled to advise"
        );
    }
    Ok(mem)
}

/// Writes guest RAM into `out` at the offsets it has in its memfd, so `out` can be mapped
/// back the same way. Only the pages the guest has touched are written (the memfd's data
/// ranges): the rest stays a hole in a sparse `out`, and reads back as zeros.
pub fn save_guest_memory(mem: &GuestMemoryMmap, out: &File) -> Result<(), MemoryError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    out.set_len(0).map_err(MemoryError::Save)?;
    out.set_len(total).map_err(MemoryError::Save)?;
    for region in mem.iter() {
        let Some(fo) = region.file_offset() else {
            return Err(MemoryError::Save(std::io::Error::other(
                "guest memory is not file-backed",
            )));
        };
        let (start, end) = (fo.start(), fo.start() + region.len());
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        let mut at = start;
        while at < end {
            let Some(data) = seek(fo.file().as_raw_fd(), at, libc::SEEK_DATA)? else {
                break;
            };
            if data >= end {
                break;
            }
            let hole = seek(fo.file().as_raw_fd(), data, libc::SEEK_HOLE)?
                .unwrap_or(end)
                .min(end);
            // SAFETY: [data, hole) lies inside this region's mapping, which `mem` keeps
            // alive; the vCPUs are paused, so nothing writes it meanwhile.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    host.add((data - start) as usize),
                    (hole - data) as usize,
                )
            };
            out.write_all_at(bytes, data).map_err(MemoryError::Save)?;
            at = hole;
        }
    }
    out.sync_data().map_err(MemoryError::Save)
}

/// `lseek(fd, at, whence)`; `None` where SEEK_DATA finds no data after `at` (ENXIO).
fn seek(fd: i32, at: u64, whence: i32) -> Result<Option<u64>, MemoryError> {
    // SAFETY: lseek only reads its integer arguments.
    let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(MemoryError::Save(e)),
        };
    }
    Ok(Some(r as u64))
}

/// Guest RAM of `size` bytes mapped from a snapshot's memory file, privately: the guest's
/// writes go to its own copies of the pages, the file and every other VM mapped from it
/// keep the snapshot's contents, and clean pages are shared through the page cache.
pub fn restore_guest_memory(size: u64, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
    let have = file.metadata().map_err(MemoryError::Save)?.len();
    if have != size {
        return Err(MemoryError::SnapshotSize { have, want: size });
    }
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let handle = file.try_clone().map_err(MemoryError::Memfd)?;
        let mapping = vm_memory::MmapRegion::<()>::build(
            Some(FileOffset::new(handle, file_offset)),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| MemoryError::Map(format!("region at {start:#x} overflows")))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

/// The selected value of /sys/kernel/mm/transparent_hugepage/shmem_enabled.
fn shmem_thp_mode() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// Asks for transparent huge pages: fewer nested-paging faults while the guest touches
/// its memory. Effective only where the host allows THP for shared memory
/// (/sys/kernel/mm/transparent_hugepage/shmem_enabled); harmless elsewhere.
fn advise_huge_pages(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        if let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) {
            // SAFETY: the range is exactly one live mapping owned by `mem`; madvise only
            // changes paging hints.
            unsafe {
                libc::madvise(
                    host as *mut libc::c_void,
                    region.len() as usize,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn saved_memory_maps_back_privately_and_sparsely() {
        let size = 8 << 20;
        let mem = create_guest_memory(size).unwrap();
        // Two touched spots far apart; everything else stays untouched.
        mem.write_obj(0x1122_3344u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x5566_7788u32, GuestAddress(size - 8))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let out = File::create(&path).unwrap();
        save_guest_memory(&mem, &out).unwrap();
        drop(out);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < size / 2,
            "not sparse: {} blocks",
            meta.blocks()
        );

        let file = File::open(&path).unwrap();
        let a = restore_guest_memory(size, &file).unwrap();
        let b = restore_guest_memory(size, &file).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(size - 8)).unwrap(),
            0x5566_7788
        );
        assert_eq!(a.read_obj::<u32>(GuestAddress(0x40_0000)).unwrap(), 0);
        // A write lands in that VM's own copy only.
        a.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        let again = restore_guest_memory(size, &File::open(&path).unwrap()).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );

        let err = restore_guest_memory(size * 2, &file)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("holds {size} bytes")), "{err}");
    }

    #[test]
    fn memfd_memory_is_usable() {
        let mem = create_guest_memory(2 << 20).unwrap();
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.last_addr(), GuestAddress((2 << 20) - 1));
        assert!(mem.write_obj(1u8, GuestAddress(2 << 20)).is_err());
    }
}
