//! The main thread, once the vCPUs run: the event loop serving every device's host side
//! (vsock sockets, block file, tap, rng, eventfds and timers), the control socket, stopping
//! and joining the vCPUs, and the teardown (closing everything, removing our sockets).

use seccompiler::SeccompRule;

use super::allow_list::{AllowList, arg_in, args_are, sys, syscalls};
use super::kvm::{KVM_GET_CLOCK, KVM_GET_IRQCHIP, KVM_GET_PIT2};

/// setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO or SO_RCVTIMEO, ...) only.
fn socket_timeouts() -> Vec<SeccompRule> {
    [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO]
        .into_iter()
        .flat_map(|opt| args_are(&[(1, libc::SOL_SOCKET as u64), (2, opt as u64)]))
        .collect()
}

pub fn allow_list() -> AllowList {
    super::common::allow_list()
        .allow(syscalls![
            // The event loop.
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_ctl,
            // Sockets (vsock, control), taps, eventfds and timerfds.
            SYS_read,
            SYS_readv,
            SYS_writev,
            SYS_recvfrom,
            SYS_sendto,
            SYS_recvmsg,
            SYS_sendmsg,
            SYS_accept4,
            SYS_connect,
            SYS_shutdown,
            SYS_timerfd_settime,
            // The block device.
            SYS_pread64,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_fsync,
            SYS_fdatasync,
            // virtio-rng.
            SYS_getrandom,
            // A snapshot: guest memory's data ranges, the files (opened at start) sized.
            SYS_lseek,
            SYS_ftruncate,
            // Removing the control and vsock sockets on exit.
            SYS_unlink,
            SYS_unlinkat,
        ])
        // Guest-initiated vsock connections to the host's unix sockets, nothing else.
        .allow_when(sys!(SYS_socket), arg_in(0, &[libc::AF_UNIX as u64]))
        // Nonblocking control connections, and the bound on writing a reply to one.
        .allow_when(sys!(SYS_ioctl), arg_in(1, &[libc::FIONBIO]))
        // A snapshot reads the VM's interrupt controllers, PIT and clock.
        .allow_when(
            sys!(SYS_ioctl),
            arg_in(1, &[KVM_GET_IRQCHIP, KVM_GET_CLOCK, KVM_GET_PIT2]),
        )
        .allow_when(sys!(SYS_setsockopt), socket_timeouts())
        // Kicking vCPUs out of KVM_RUN to pause or stop them.
        .allow_when(
            sys!(SYS_tgkill),
            arg_in(2, &[crate::vstate::vcpu::kick_signal() as u64]),
        )
}
