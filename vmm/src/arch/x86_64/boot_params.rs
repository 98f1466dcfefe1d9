//! The Linux zero page (`struct boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::layout::ZERO_PAGE_ADDR;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("too many e820 entries: {0}")]
    TooManyE820Entries(usize),
    #[error("cannot write the zero page into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
    #[error("initramfs address or size does not fit in 32 bits")]
    InitrdTooHigh,
}

// The bindgen struct is plain old data; the wrapper lets vm-memory write it.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a packed C struct of integers; every bit pattern is valid.
unsafe impl ByteValued for ZeroPage {}

/// What the zero page must say.
pub struct BootInfo<'a> {
    pub cmdline_addr: u64,
    /// Length of the command line including its terminating NUL.
    pub cmdline_size: usize,
    /// (guest address, size) of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
    pub e820: &'a [E820Entry],
    /// A bzImage's own setup header (an ELF vmlinux has none).
    pub setup_header: Option<setup_header>,
}

/// Writes the zero page at `ZERO_PAGE_ADDR`.
pub fn write_zero_page(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    params.hdr.cmdline_size = info.cmdline_size as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image =
            u32::try_from(addr).map_err(|_| BootParamsError::InitrdTooHigh)?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| BootParamsError::InitrdTooHigh)?;
    }
    if info.e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(info.e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(info.e820) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind;
    }
    params.e820_entries = info.e820.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::e820::e820_map;

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let map = e820_map(16 << 20);
        let info = BootInfo {
            cmdline_addr: 0x20000,
            cmdline_size: 10,
            initrd: Some((0x80_0000, 0x1000)),
            e820: &map,
            setup_header: None,
        };
        write_zero_page(&mem, &info).unwrap();
        let zp: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let p = zp.0;
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1000);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    }

    #[test]
    fn zero_page_outside_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 4096)]).unwrap();
        let info = BootInfo {
            cmdline_addr: 0,
            cmdline_size: 1,
            initrd: None,
            e820: &[],
            setup_header: None,
        };
        assert!(write_zero_page(&mem, &info).is_err());
    }

    #[test]
    fn a_bzimage_header_is_kept_and_loader_fields_set() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let hdr = setup_header {
            setup_sects: 27,
            init_size: 0x123_4000,
            version: 0x020f,
            ..Default::default()
        };
        let info = BootInfo {
            cmdline_addr: 0x20000,
            cmdline_size: 5,
            initrd: None,
            e820: &[],
            setup_header: Some(hdr),
        };
        write_zero_page(&mem, &info).unwrap();
        let p: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let p = p.0;
        assert_eq!(p.hdr.setup_sects, 27);
        assert_eq!({ p.hdr.init_size }, 0x123_4000);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!(p.hdr.type_of_loader, KERNEL_LOADER_OTHER);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
    }
}
