//! x86_64 guest setup: memory layout, boot structures written into guest memory,
//! and the initial vCPU state for a 64-bit Linux entry.

pub mod boot_params;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;
