//! The virtio-fs worker: every syscall fuse-backend-rs's passthrough (0.14) can make to
//! serve a request, not only those the tests happened to see (a missing one kills the
//! VMM the first time a guest uses it). Every path is relative to an fd the share holds,
//! so the list has no path-based calls beyond the *at family and `/proc/self/fd` names.
//!
//! Left out on purpose: `open_by_handle_at` (with CAP_DAC_READ_SEARCH it opens any file
//! on the host file system by handle; we never enable file handles), sockets, exec,
//! mounts, namespaces, ptrace, and ioctl (the passthrough implements no FUSE ioctl).

use super::allow_list::{AllowList, args_are, sys, syscalls};

/// `-1` as the kernel reads a uid_t argument: "leave this id as it is".
const UNCHANGED: u64 = u32::MAX as u64;

pub fn allow_list() -> AllowList {
    super::common::allow_list()
        .allow(syscalls![
            // Waiting on the queues' notification eventfds and the reset kick, and
            // draining them.
            SYS_poll,
            SYS_ppoll,
            SYS_read,
            // File data.
            SYS_readv,
            SYS_writev,
            SYS_pread64,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_preadv2,
            SYS_pwritev2,
            SYS_lseek,
            SYS_copy_file_range,
            SYS_fallocate,
            SYS_ftruncate,
            SYS_fsync,
            SYS_fdatasync,
            SYS_syncfs,
            // Opening, relative to a directory fd or through /proc/self/fd.
            SYS_openat,
            SYS_openat2,
            SYS_open,
            SYS_dup,
            SYS_dup3,
            SYS_name_to_handle_at,
            // Metadata.
            SYS_newfstatat,
            SYS_fstat,
            SYS_statx,
            SYS_fstatfs,
            SYS_statfs,
            SYS_getdents64,
            SYS_readlinkat,
            SYS_faccessat,
            SYS_faccessat2,
            SYS_fchownat,
            SYS_fchown,
            SYS_fchmodat,
            SYS_fchmodat2,
            SYS_fchmod,
            SYS_utimensat,
            SYS_umask,
            // Making, linking and removing names.
            SYS_mknodat,
            SYS_mkdirat,
            SYS_unlinkat,
            SYS_renameat,
            SYS_renameat2,
            SYS_linkat,
            SYS_symlinkat,
            // Extended attributes.
            SYS_setxattr,
            SYS_lsetxattr,
            SYS_fsetxattr,
            SYS_getxattr,
            SYS_lgetxattr,
            SYS_fgetxattr,
            SYS_listxattr,
            SYS_llistxattr,
            SYS_flistxattr,
            SYS_removexattr,
            SYS_lremovexattr,
            SYS_fremovexattr,
            // Creating files as the guest's caller; dropping CAP_FSETID for a write or
            // truncate that must clear set-id bits (the caps crate: capget + capset,
            // which can only move capabilities within the permitted set).
            SYS_capget,
            SYS_capset,
            SYS_setfsuid,
            SYS_setfsgid,
            SYS_getuid,
            SYS_getgid,
            SYS_geteuid,
            SYS_getegid,
        ])
        // The passthrough switches only this thread's effective ids, as
        // syscall(SYS_setresuid, -1, id, -1): the real and saved ids stay root's.
        .allow_when(
            sys!(SYS_setresuid),
            args_are(&[(0, UNCHANGED), (2, UNCHANGED)]),
        )
        .allow_when(
            sys!(SYS_setresgid),
            args_are(&[(0, UNCHANGED), (2, UNCHANGED)]),
        )
}
