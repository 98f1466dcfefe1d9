//! vCPU threads: KVM_RUN and what a guest's port I/O and MMIO exits do on the vCPU's own
//! thread: serial output and eventfd writes, and the virtio transports' activate and
//! reset (the vsock device accepts waiting host connections and arms its timer then;
//! devices add and remove their fds in the event loop's epoll).

use super::allow_list::{AllowList, arg_in, sys, syscalls};
use super::kvm::*;

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
