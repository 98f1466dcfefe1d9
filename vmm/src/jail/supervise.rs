//! The fork into the jail's pid namespace. The parent stays the process whoever started
//! hyper-vmm knows (its pid, its pidfd): it forwards SIGTERM, SIGINT and SIGHUP to the
//! jailed child, waits for it and exits with its status, 128+N if signal N killed it. The
//! child dies with the parent (`PR_SET_PDEATHSIG`), so a SIGKILL of the parent ends both.

use std::io;
use std::path::Path;

use super::{JailError, check, process, step_err};

/// What the parent waits for; blocked from before the fork so none is lost.
const WATCHED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD];

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn set_mask(how: libc::c_int, signals: &[libc::c_int]) {
    let set = sigset(signals);
    // SAFETY: a valid set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

/// Unblocks `signals` on the calling thread.
pub fn unblock(signals: &[libc::c_int]) {
    set_mask(libc::SIG_UNBLOCK, signals);
}

/// Forks; returns in the child, which is pid 1 of a new pid namespace. The parent never
/// returns. Termination signals stay blocked in the child (see
/// [`super::termination_signals_ready`]).
pub fn fork_into_pid_namespace() -> Result<(), JailError> {
    let here = Path::new("/proc/self");
    // SAFETY: unshare takes flags only; CLONE_NEWPID affects the children made next.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }.into())
        .map_err(step_err("unshare a pid namespace for", here))?;
    set_mask(libc::SIG_BLOCK, &WATCHED);
    // The child's check that the parent is still there: the write end closes when it dies.
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills two fds.
    check(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }.into())
        .map_err(step_err("make a pipe in", here))?;
    let [alive_r, alive_w] = pipe;
    // SAFETY: single-threaded (checked by the caller), so the child may go on running Rust.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(step_err("fork in", here)(io::Error::last_os_error())),
        0 => {
            // SAFETY: closing our copy of the write end.
            unsafe { libc::close(alive_w) };
            die_with_parent(alive_r)?;
            unblock(&[libc::SIGCHLD]);
            Ok(())
        }
        child => {
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(alive_r) };
            // The parent needs nothing it inherited; the child has its own copies.
            process::close_inherited_fds(&[alive_w])?;
            tracing::info!(pid = child, "the jailed VMM runs as this pid (1 inside)");
            supervise(child)
        }
    }
}

/// Asks for SIGKILL when the parent dies, then checks it did not die already.
fn die_with_parent(alive_r: libc::c_int) -> Result<(), JailError> {
    let here = Path::new("/proc/self");
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }.into())
        .map_err(step_err("set the parent-death signal of", here))?;
    let mut poll = libc::pollfd {
        fd: alive_r,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    // SAFETY: the pipe's read end is ours and needed no more.
    unsafe { libc::close(alive_r) };
    if ready > 0 && poll.revents & libc::POLLHUP != 0 {
        return Err(JailError::Config(
            "the supervising parent died before the jail was set up".into(),
        ));
    }
    Ok(())
}

/// Forwards termination signals to `child` until it exits, then exits the same way.
fn supervise(child: libc::pid_t) -> ! {
    let set = sigset(&WATCHED);
    loop {
        // SAFETY: waits for one of the blocked signals in `set`.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => {
                if let Some(code) = reap(child) {
                    std::process::exit(code);
                }
            }
            -1 => {} // EINTR
            sig => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child, sig) };
            }
        }
    }
}

/// The exit code to pass on if `child` has ended.
fn reap(child: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, status into a local.
    match unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } {
        0 => None,
        -1 => {
            tracing::error!(
                "cannot wait for the jailed VMM: {}",
                io::Error::last_os_error()
            );
            Some(1)
        }
        _ if libc::WIFEXITED(status) => Some(libc::WEXITSTATUS(status)),
        _ if libc::WIFSIGNALED(status) => {
            let sig = libc::WTERMSIG(status);
            if sig == libc::SIGSYS {
                // The one death worth explaining: the kernel log names the syscall.
                tracing::error!(
                    "the jailed VMM was killed by SIGSYS: a thread made a syscall its \
                     seccomp filter forbids (the kernel log names it: dmesg | grep audit)"
                );
            } else {
                tracing::warn!(signal = sig, "the jailed VMM was killed by a signal");
            }
            Some(128 + sig)
        }
        _ => None,
    }
}
