//! vCPU threads: KVM_RUN and what a guest's port I/O and MMIO exits do on the vCPU's own
//! thread: serial output and eventfd writes, and the virtio transports' activate and
//! reset (the vsock device accepts waiting host connections and arms its timer then;
//! devices add and remove their fds in the event loop's epoll).

use super::allow_list::{AllowList, arg_in, sys, syscalls};

const KVMIO: u64 = 0xAE;

/// `_IO(KVMIO, nr)`.
const fn kvm_io(nr: u64) -> u64 {
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

/// The vCPU's ioctls: running, and reading registers to describe a KVM internal error
/// or to save the vCPU for a snapshot; FIONBIO makes an accepted vsock connection
/// nonblocking.
const IOCTLS: &[u64] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_GET_SREGS,
    KVM_GET_MSRS,
    KVM_GET_LAPIC,
    KVM_GET_CPUID2,
    KVM_GET_MP_STATE,
    KVM_GET_VCPU_EVENTS,
    KVM_GET_DEBUGREGS,
    KVM_GET_XSAVE,
    KVM_GET_XCRS,
    libc::FIONBIO,
];

pub fn allow_list() -> AllowList {
    super::common::allow_list()
        .allow(syscalls![SYS_epoll_ctl, SYS_accept4, SYS_timerfd_settime])
        .allow_when(sys!(SYS_ioctl), arg_in(1, IOCTLS))
}

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
    }
}
