//! The KVM ioctl numbers the filters allow, from linux/kvm.h's macros (checked against
//! the kernel's values below).

const KVMIO: u64 = 0xAE;

/// `_IO(KVMIO, nr)`.
pub const fn kvm_io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}

/// `_IOR(KVMIO, nr, T)`: the kernel writes a `T`.
const fn kvm_ior<T>(nr: u64) -> u64 {
    (2 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (KVMIO << 8) | nr
}

/// `_IOWR(KVMIO, nr, T)`: the kernel reads and writes a `T`.
const fn kvm_iowr<T>(nr: u64) -> u64 {
    (3 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | (KVMIO << 8) | nr
}

use kvm_bindings as kb;

pub const KVM_RUN: u64 = kvm_io(0x80);
pub const KVM_GET_REGS: u64 = kvm_ior::<kb::kvm_regs>(0x81);
pub const KVM_GET_SREGS: u64 = kvm_ior::<kb::kvm_sregs>(0x83);
pub const KVM_GET_MSRS: u64 = kvm_iowr::<kb::kvm_msrs>(0x88);
pub const KVM_GET_LAPIC: u64 = kvm_ior::<kb::kvm_lapic_state>(0x8e);
pub const KVM_GET_CPUID2: u64 = kvm_iowr::<kb::kvm_cpuid2>(0x91);
pub const KVM_GET_MP_STATE: u64 = kvm_ior::<kb::kvm_mp_state>(0x98);
pub const KVM_GET_VCPU_EVENTS: u64 = kvm_ior::<kb::kvm_vcpu_events>(0x9f);
pub const KVM_GET_DEBUGREGS: u64 = kvm_ior::<kb::kvm_debugregs>(0xa1);
pub const KVM_GET_XSAVE: u64 = kvm_ior::<kb::kvm_xsave>(0xa4);
pub const KVM_GET_XCRS: u64 = kvm_ior::<kb::kvm_xcrs>(0xa6);

// The VM's, which a snapshot reads on the main thread.
pub const KVM_GET_IRQCHIP: u64 = kvm_iowr::<kb::kvm_irqchip>(0x62);
pub const KVM_GET_CLOCK: u64 = kvm_ior::<kb::kvm_clock_data>(0x7c);
pub const KVM_GET_PIT2: u64 = kvm_ior::<kb::kvm_pit_state2>(0x9f);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        // From linux/kvm.h on x86_64.
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_GET_MSRS, 0xC008_AE88);
        assert_eq!(KVM_GET_LAPIC, 0x8400_AE8E);
        assert_eq!(KVM_GET_CPUID2, 0xC008_AE91);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_AE98);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_AE9F);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_AEA1);
        assert_eq!(KVM_GET_XSAVE, 0x9000_AEA4);
        assert_eq!(KVM_GET_XCRS, 0x8188_AEA6);
        assert_eq!(KVM_GET_IRQCHIP, 0xC208_AE62);
        assert_eq!(KVM_GET_CLOCK, 0x8030_AE7C);
        assert_eq!(KVM_GET_PIT2, 0x8070_AE9F);
    }
}
