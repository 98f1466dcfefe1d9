//! What every thread of ours needs, whatever its job: memory (never executable), locks,
//! clocks, logging to stderr, signal returns, a panic's abort, and ending the thread.

use super::allow_list::{AllowList, arg_in, arg_without, sys, syscalls};

/// fcntl commands std and fuse-backend-rs use (dup for try_clone, CLOEXEC, O_NONBLOCK;
/// F_GETFD is a debug-build check when an fd is closed). No locks, leases or signals.
const FCNTL_CMDS: &[u64] = &[
    libc::F_DUPFD as u64,
    libc::F_DUPFD_CLOEXEC as u64,
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
];

pub fn allow_list() -> AllowList {
    AllowList::default()
        .allow(syscalls![
            // The allocator; mremap for growing vectors.
            SYS_brk,
            SYS_munmap,
            SYS_mremap,
            SYS_madvise,
            // Mutexes, condvars, channels, joins; glibc's arena sizing.
            SYS_futex,
            SYS_sched_yield,
            SYS_sched_getaffinity,
            // Clocks, where the vDSO falls back to the kernel; sleeps.
            SYS_clock_gettime,
            SYS_gettimeofday,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_restart_syscall,
            // Logs (stderr), eventfd kicks and irqfds; closing what the thread owns.
            SYS_write,
            SYS_close,
            // Returning from the vCPU kick and termination handlers, which run on any
            // thread; thread teardown.
            SYS_rt_sigreturn,
            SYS_rt_sigprocmask,
            SYS_sigaltstack,
            SYS_gettid,
            SYS_getpid,
            SYS_exit,
            SYS_exit_group,
        ])
        // No new executable memory: code injected into data cannot be made runnable.
        .allow_when(sys!(SYS_mmap), arg_without(2, libc::PROT_EXEC as u64))
        .allow_when(sys!(SYS_mprotect), arg_without(2, libc::PROT_EXEC as u64))
        .allow_when(sys!(SYS_fcntl), arg_in(1, FCNTL_CMDS))
        // A panic that aborts: the default SIGABRT action, raised at itself.
        .allow_when(sys!(SYS_rt_sigaction), arg_in(0, &[libc::SIGABRT as u64]))
        .allow_when(sys!(SYS_tgkill), arg_in(2, &[libc::SIGABRT as u64]))
}
