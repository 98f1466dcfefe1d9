//! Loading the guest kernel: an uncompressed ELF `vmlinux`, or a `bzImage` (the kernel's
//! own decompressor then runs in the guest), told apart by the ELF magic.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::HIMEM_START;

/// The 64-bit entry point sits this far into a bzImage's protected-mode kernel
/// (Documentation/x86/boot.rst, "64-bit boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, PartialEq)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in 64-bit mode.
    pub entry: u64,
    /// First guest address above everything the kernel occupies while it boots.
    pub end: u64,
    /// A bzImage's setup header, which the zero page must carry.
    pub setup_header: Option<setup_header>,
}

pub fn load(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, String> {
    let mut magic = [0u8; 4];
    kernel
        .read_exact(&mut magic)
        .map_err(|e| format!("read the image's first bytes: {e}"))?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| format!("rewind: {e}"))?;
    let himem = Some(GuestAddress(HIMEM_START));
    if magic == *b"\x7fELF" {
        let r = Elf::load(mem, None, kernel, himem).map_err(|e| format!("ELF: {e}"))?;
        return Ok(LoadedKernel {
            entry: r.kernel_load.0,
            end: r.kernel_end,
            setup_header: None,
        });
    }
    let r = BzImage::load(mem, None, kernel, himem)
        .map_err(|e| format!("neither an ELF vmlinux nor a bzImage: {e}"))?;
    let hdr = r
        .setup_header
        .ok_or_else(|| "bzImage without a setup header".to_string())?;
    // The decompressor works in place and needs init_size bytes from the load address.
    let init_end = r.kernel_load.0 + u64::from(hdr.init_size);
    Ok(LoadedKernel {
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        end: r.kernel_end.max(init_end),
        setup_header: Some(hdr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    /// A minimal bzImage: a setup header with "HdrS", protocol 2.15, loaded high, and a
    /// few bytes of "compressed kernel" after two setup sectors.
    fn tiny_bzimage(init_size: u32) -> tempfile::NamedTempFile {
        let mut img = vec![0u8; 3 * 512 + 64];
        img[0x1f1] = 1; // setup_sects: 1 + the boot sector
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 0x01; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        img[1024..1028].copy_from_slice(b"KERN");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&img).unwrap();
        f
    }

    #[test]
    fn bzimage_entry_end_and_header() {
        let f = tiny_bzimage(0x40_0000);
        let mem = memory();
        let k = load(&mem, &mut f.reopen().unwrap()).unwrap();
        assert_eq!(k.entry, 0x10_0000 + 0x200);
        assert_eq!(
            k.end,
            0x10_0000 + 0x40_0000,
            "room for the in-place decompression"
        );
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.header }, 0x5372_6448);
        let mut kern = [0u8; 4];
        vm_memory::Bytes::read_slice(&mem, &mut kern, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&kern, b"KERN");
    }

    #[test]
    fn garbage_is_neither_format() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x42; 4096]).unwrap();
        let err = load(&memory(), &mut f.reopen().unwrap()).unwrap_err();
        assert!(
            err.contains("neither an ELF vmlinux nor a bzImage"),
            "{err}"
        );
        let mut short = tempfile::NamedTempFile::new().unwrap();
        short.write_all(b"ab").unwrap();
        assert!(load(&memory(), &mut short.reopen().unwrap()).is_err());
    }

    /// A real bzImage when the machine has one (Debian's test-host kernel in the cache).
    #[test]
    fn a_distribution_bzimage_loads() {
        let cache = std::env::var("HOME").unwrap_or_default() + "/.cache/hyper/testhost";
        let Some(vmlinuz) = std::fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("vmlinuz"))
            .find(|p| p.is_file())
        else {
            eprintln!("skipped: no test-host vmlinuz under {cache}");
            return;
        };
        let k = load(&memory(), &mut File::open(&vmlinuz).unwrap()).unwrap();
        let hdr = k.setup_header.unwrap();
        assert!({ hdr.version } >= 0x020c, "boot protocol {:#x}", {
            hdr.version
        });
        assert_eq!(k.entry, k.entry & !0xfff | 0x200);
        assert!(k.end > k.entry);
    }
}
