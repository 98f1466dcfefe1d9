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

/// `_IOR(KVMIO, nr, T)`: the kernel writes a `size`-byte struct.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

pub const KVM_RUN: u64 = kvm_io(0x80);
pub const KVM_GET_REGS: u64 = kvm_ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub const KVM_GET_SREGS: u64 = kvm_ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// The vCPU's ioctls: running, and reading registers to describe a KVM internal error;
/// FIONBIO makes an accepted vsock connection nonblocking.
const IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, libc::FIONBIO];

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
    }
}
