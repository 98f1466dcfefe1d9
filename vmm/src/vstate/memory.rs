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
