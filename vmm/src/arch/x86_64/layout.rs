//! Where everything lives in guest physical memory (Firecracker-compatible layout).

/// GDT written by the VMM for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x520;
/// The Linux zero page (`struct boot_params`), passed to the kernel in %rsi.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: one PML4, one PDPT, one PD of 2 MiB pages (first 1 GiB).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; the MP table sits here and RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where high memory starts: the kernel must load at or above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// A hole below 4 GiB for MMIO devices, the IOAPIC and the LAPIC.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Our MMIO devices start here (the first page is the boot timer).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// The boot-timer device: the guest writes 123 at offset 0 when it reached userspace.
pub const BOOT_TIMER_ADDR: u64 = MMIO_DEVICES_START;
/// Each virtio-mmio device gets one page.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// First virtio-mmio device address.
pub const VIRTIO_MMIO_START: u64 = MMIO_DEVICES_START + MMIO_DEVICE_SIZE;
/// IOAPIC pins usable for virtio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const IRQ_VIRTIO_FIRST: u32 = 5;
pub const IRQ_VIRTIO_LAST: u32 = 23;
pub const IRQ_SERIAL: u32 = 4;
pub const IRQ_I8042: u32 = 1;
/// KVM needs three pages for the TSS and one for the identity map, inside the 32-bit space
/// but outside guest RAM and our MMIO range.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Smallest guest we accept: kernel, boot structures and a little room to run.
pub const MIN_MEMORY_MIB: u64 = 16;
