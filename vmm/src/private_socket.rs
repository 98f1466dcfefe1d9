//! Listening unix sockets only our own user can connect to: the socket file is mode 0600
//! from the moment it exists, whatever the process umask is.
//!
//! Linux creates the file `bind(2)` makes with the socket inode's mode minus the umask, so
//! narrowing the inode with `fchmod` before `bind` means the file never has more than
//! 0600, even under umask 0 (no window between bind and chmod, and no process-wide umask
//! change that would race other threads). A `chmod` after `bind` then puts back owner bits
//! a restrictive umask took away, before `listen` lets anyone connect.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// The mode of every socket file we create.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds and listens on `path` (which must not exist) with mode [`SOCKET_MODE`].
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let fd = bind_narrowed(path)?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        // SAFETY: listen on a socket we own; the result is checked.
        if unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// socket + fchmod + bind: the file exists with at most [`SOCKET_MODE`] (minus the umask).
fn bind_narrowed(path: &Path) -> io::Result<OwnedFd> {
    let (addr, len) = sockaddr(path)?;
    // SAFETY: creating a socket; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain syscalls on our fd with a valid sockaddr_un of `len` bytes.
    unsafe {
        if libc::fchmod(fd.as_raw_fd(), SOCKET_MODE as libc::mode_t) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::bind(
            fd.as_raw_fd(),
            &addr as *const _ as *const libc::sockaddr,
            len,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a usable unix socket path: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// Runs `f` on a thread of its own whose umask is `mask`, leaving the process's umask
/// (shared by every other test thread) alone.
#[cfg(test)]
pub fn with_umask<T: Send>(mask: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) gives this thread its own umask/cwd; umask cannot fail.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_FS), 0, "unshare(CLONE_FS)");
                libc::umask(mask as libc::mode_t);
            }
            f()
        })
        .join()
        .unwrap()
    })
}

/// The permission bits of the file at `path`.
#[cfg(test)]
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::check_cases;
    use std::os::unix::net::UnixStream;

    #[test]
    fn socket_file_is_0600_whatever_the_umask() {
        let cases = [0o000, 0o002, 0o022, 0o077, 0o177, 0o777];
        check_cases(cases.map(|m| (format!("umask {m:03o}"), m)), |mask| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.sock");
            let listener = with_umask(mask, || bind_private(&path)).unwrap();
            assert_eq!(mode_of(&path), SOCKET_MODE, "{:o}", mode_of(&path));
            // Still a working listener.
            UnixStream::connect(&path).unwrap();
            listener.accept().unwrap();
        });
    }

    #[test]
    fn the_file_is_never_wider_than_0600() {
        // Before the chmod, even under umask 0.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _fd = with_umask(0, || bind_narrowed(&path)).unwrap();
        assert_eq!(mode_of(&path), SOCKET_MODE, "{:o}", mode_of(&path));
    }

    #[test]
    fn bad_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("taken");
        std::fs::write(&taken, b"").unwrap();
        let long = dir.path().join("x".repeat(200));
        let cases: [(&str, &Path); 4] = [
            ("empty", Path::new("")),
            ("too long", &long),
            ("already exists", &taken),
            ("no such directory", Path::new("/nonexistent-dir/s.sock")),
        ];
        check_cases(cases, |p| {
            assert!(bind_private(p).is_err(), "{}", p.display())
        });
        // The existing file was not removed or changed.
        assert_eq!(std::fs::read(&taken).unwrap(), b"");
    }
}
