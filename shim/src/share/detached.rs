//! Bind mounts made with the new mount API: a copy of a mount tree is cloned detached
//! (`open_tree`), given its flags and propagation while nobody can see it
//! (`mount_setattr`), then attached on a mount point the shim opened (`move_mount`). So a
//! read-only volume is never visible writable, not even for a moment, and no path is
//! looked up twice.
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const AT_RECURSIVE: libc::c_uint = 0x8000;

/// How a bind's copy receives mounts made later under its source on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Never (Kubernetes `None`, the default).
    Private,
    /// Host mounts under the source appear in the copy too (`HostToContainer`; also what
    /// `Bidirectional` gets: nothing the guest does can mount on the host).
    Slave,
}

impl Propagation {
    /// From a spec mount's options, as runc reads them.
    pub fn from_options<'a>(options: impl IntoIterator<Item = &'a str>) -> Self {
        let mut p = Propagation::Private;
        for o in options {
            match o {
                "slave" | "rslave" | "shared" | "rshared" => p = Propagation::Slave,
                "private" | "rprivate" => p = Propagation::Private,
                _ => {}
            }
        }
        p
    }

    fn ms_flag(self) -> u64 {
        match self {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
        }
    }
}

/// The flags a copy gets on every mount of its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindFlags {
    pub read_only: bool,
    pub propagation: Propagation,
}

/// A clone of the mount tree at `source` (only its top mount unless `recursive`) that is
/// attached nowhere yet; dropped without `attach`, it vanishes.
pub struct DetachedTree(OwnedFd);

impl DetachedTree {
    /// Clones the mount at the object `source` refers to (an `O_PATH` fd).
    pub fn clone_of(source: BorrowedFd, recursive: bool) -> Result<Self, Errno> {
        let mut flags =
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint;
        if recursive {
            flags |= AT_RECURSIVE;
        }
        // SAFETY: open_tree takes a dirfd, a NUL-terminated path ("" with AT_EMPTY_PATH)
        // and flags; it returns a new fd or -1.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), flags) };
        Errno::result(fd)?;
        // SAFETY: a successful open_tree returned a new fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sets nosuid and nodev (the host never runs or opens what a guest put in its share),
    /// read-only if asked, and the propagation on every mount of the tree.
    pub fn set_flags(&self, flags: BindFlags) -> Result<(), Errno> {
        let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
        if flags.read_only {
            set |= libc::MOUNT_ATTR_RDONLY;
        }
        let attr = libc::mount_attr {
            attr_set: set,
            attr_clr: 0,
            propagation: flags.propagation.ms_flag(),
            userns_fd: 0,
        };
        // SAFETY: mount_setattr reads `attr` (of the size given) and changes the mounts of
        // our own detached tree.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        Errno::result(rc).map(drop)
    }

    /// Attaches the tree on the mount point `target` (an `O_PATH` fd the shim opened).
    pub fn attach(self, target: BorrowedFd) -> Result<(), Errno> {
        // SAFETY: move_mount takes two (dirfd, path) pairs, both fds with empty paths.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        Errno::result(rc).map(drop)
    }
}
