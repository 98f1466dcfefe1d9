//! What the jailed process keeps of what it inherited: fds 0-2 and the config's net fds,
//! no core dumps, its own host name.

use std::path::Path;

use super::{JailError, check, step_err};

pub const HOSTNAME: &str = "hyper-vmm";

/// `unshare` of a mount namespace, and `fork` running Rust on in the child, need one
/// thread.
pub fn check_single_threaded() -> Result<(), JailError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(step_err("read", Path::new("/proc/self/status")))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    match threads {
        Some("1") | None => Ok(()),
        Some(n) => Err(JailError::Config(format!(
            "the jail must be entered before any thread starts ({n} threads run)"
        ))),
    }
}

/// Closes every fd above 2 but `keep`: an inherited directory or socket would be a way
/// out of the jail.
pub fn close_inherited_fds(keep: &[i32]) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > first {
            // SAFETY: closes a range of this process's fds; nothing in it is used
            // (the caller's own fds are in `keep`).
            check(unsafe { libc::close_range(first, fd - 1, 0) }.into()).map_err(step_err(
                "close inherited fds in",
                Path::new("/proc/self/fd"),
            ))?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

/// No core dumps: one would hold all of guest memory. (The open-file limit is raised
/// later, for shares, by `privileges`; the process and file-size limits stay as they
/// are: a share's writes and the VMM's threads are legitimate.)
pub fn limit_resources() -> Result<(), JailError> {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads one plain struct.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) }.into())
        .map_err(step_err("set RLIMIT_CORE of", Path::new("/proc/self")))
}

pub fn set_hostname() -> Result<(), JailError> {
    // SAFETY: a pointer and length of a live byte string.
    check(unsafe { libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) }.into()).map_err(
        step_err(
            "set the host name in",
            Path::new("/proc/sys/kernel/hostname"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process of its own: closing fds in the test process would hit other
    /// tests' files.
    #[test]
    fn only_the_kept_fds_survive() {
        let fds: Vec<i32> = (0..4)
            .map(|_| {
                // SAFETY: opens /dev/null; checked below.
                unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) }
            })
            .collect();
        assert!(fds.iter().all(|&fd| fd > 2), "{fds:?}");
        let keep = [fds[1], fds[3]];
        // SAFETY: the child only makes syscalls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = close_inherited_fds(&keep).is_ok();
            // SAFETY: F_GETFD on an fd number only queries it.
            let open = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            let code = if !ok {
                2
            } else if open(fds[0]) || open(fds[2]) {
                3
            } else if !(open(fds[1]) && open(fds[3]) && open(2)) {
                4
            } else {
                0
            };
            // SAFETY: leaves the forked child without running the test harness's code.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        for fd in fds {
            // SAFETY: our own fds from above.
            unsafe { libc::close(fd) };
        }
        assert!(libc::WIFEXITED(status), "{status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "3: closed too few, 4: too many"
        );
    }
}
