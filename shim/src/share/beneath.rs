//! File operations that stay beneath a directory the shim holds open: every lookup goes
//! through `openat2` and never follows a symlink or crosses into another mount, so a name
//! swapped for a symlink (or a mount) while the shim works fails instead of leading it
//! somewhere else on the host.
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// No symlinks, no `..` above the directory, no other mounts.
fn strict() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(resolve)
}

/// Opens `path` (an absolute host path the shim itself chose, e.g. under its state dir)
/// as an `O_PATH` directory, refusing a symlink as its last component.
pub fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory `name` (one or more plain components) beneath `dir`.
pub fn open_dir_beneath(dir: BorrowedFd, name: &Path) -> Result<OwnedFd, Errno> {
    openat2(dir, name, how(OFlag::O_PATH | OFlag::O_DIRECTORY, strict()))
}

/// Opens the root of the mount on `name` beneath `dir` (crossing onto it, no symlinks).
pub fn open_mount_root(dir: BorrowedFd, name: &Path) -> Result<OwnedFd, Errno> {
    let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
    openat2(dir, name, how(OFlag::O_PATH | OFlag::O_DIRECTORY, resolve))
}

/// Opens whatever `name` is beneath `dir` as an `O_PATH` fd (a mount target).
pub fn open_path_beneath(dir: BorrowedFd, name: &Path) -> Result<OwnedFd, Errno> {
    openat2(dir, name, how(OFlag::O_PATH, strict()))
}

/// Makes the directory `name` in `dir` (an existing one is fine if it is a directory)
/// and opens it.
pub fn make_dir(dir: BorrowedFd, name: &OsStr, mode: u32) -> Result<OwnedFd, Errno> {
    match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => open_dir_beneath(dir, Path::new(name)),
        Err(e) => Err(e),
    }
}

/// Creates the empty file `name` in `dir` (a bind target for a file), never through a
/// symlink; an existing regular file is reused.
pub fn make_file(dir: BorrowedFd, name: &OsStr, mode: u32) -> Result<OwnedFd, Errno> {
    let create =
        how(OFlag::O_CREAT | OFlag::O_WRONLY, strict()).mode(Mode::from_bits_truncate(mode));
    openat2(dir, name, create)?;
    open_path_beneath(dir, Path::new(name))
}

/// Makes the mount point `rel` inside `root` as if `root` were `/` (symlinks inside
/// resolve within it, `..` stops at it), with its missing parents: what runc does for the
/// mount points of a rootfs. The last component is made a file when `file` is true;
/// whatever already exists there is left as it is.
pub fn make_path_in_root(root: BorrowedFd, rel: &Path, file: bool) -> Result<(), Errno> {
    let in_root = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    let open_in_root =
        |p: &Path| openat2(root, p, how(OFlag::O_PATH | OFlag::O_DIRECTORY, in_root));
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut parent = open_in_root(Path::new("."))?;
    let mut sofar = std::path::PathBuf::from(".");
    for (i, name) in names.iter().enumerate() {
        sofar.push(name);
        let last = i + 1 == names.len();
        let made = if last && file {
            let h = how(
                OFlag::O_CREAT | OFlag::O_WRONLY,
                ResolveFlag::RESOLVE_BENEATH,
            )
            .mode(Mode::from_bits_truncate(0o644));
            openat2(&parent, *name, h).map(drop)
        } else {
            nix::sys::stat::mkdirat(&parent, *name, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EEXIST) | Err(Errno::EISDIR) | Err(Errno::ELOOP) => {}
            Err(e) => return Err(e),
        }
        if !last {
            // From the root again: a symlink made of this component stays inside it.
            parent = open_in_root(&sofar)?;
        }
    }
    Ok(())
}

/// Deletes everything in `dir` and then `name` itself, with `unlinkat` on directories
/// opened beneath each other: never through a symlink (a symlink is removed, not
/// followed) and never into another mount (a mount point is left, with a warning).
pub fn remove_all(dir: BorrowedFd, name: &OsStr) -> Result<(), Errno> {
    match openat2(
        dir,
        name,
        how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, strict()),
    ) {
        Ok(sub) => {
            empty_dir(sub)?;
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
        // Not a directory (or a symlink): unlink the name itself.
        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
            nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
        }
        Err(Errno::EXDEV) => {
            tracing::warn!(name = %name.to_string_lossy(), "not removed: something is mounted there");
            Err(Errno::EBUSY)
        }
        Err(e) => Err(e),
    }
}

fn empty_dir(fd: OwnedFd) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // Listing the open directory itself (its /proc/self/fd link), not a path again.
    let listing = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let names: Vec<_> = std::fs::read_dir(&listing)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    let mut first_err = None;
    for n in names {
        if let Err(e) = remove_all(fd.as_fd(), &n) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
#[path = "beneath_tests.rs"]
mod tests;
