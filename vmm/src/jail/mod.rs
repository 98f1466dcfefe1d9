//! The VMM's jail (after Firecracker's jailer, built into the launch): before the VM is
//! built, hyper-vmm joins the pod's cgroup and forks into new pid, mount, ipc, uts and net
//! namespaces whose `/` holds only what the config names, each at its host path, so the
//! rest of the VMM needs no path translation. A guest that takes the VMM over finds no
//! host file system, no host processes and no network.
//!
//! The process that was started stays outside as the one its parent knows: it forwards
//! termination signals and exits with the jailed VMM's status ([`supervise`]).
//!
//! Order: [`host`] (cgroup, share propagation; host side), fork ([`supervise`]), then in
//! the child: namespaces, the root ([`mounts`]), and what the process keeps ([`process`]).

mod host;
mod mounts;
mod plan;
mod process;
mod supervise;

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

pub use plan::{Bind, KVM_DEVICE, binds};

pub use hyper_vmm_api::JailConfig;

use crate::config::VmConfig;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0}")]
    Config(String),
    #[error("cannot {step} {}: {source}", path.display())]
    Step {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The error for `step` on `path`, from `errno` or an `io::Error`.
fn step_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JailError + 'a {
    move |source| JailError::Step {
        step,
        path: path.to_path_buf(),
        source,
    }
}

/// `Ok` for a syscall's 0 (or any non-negative) return, else the errno.
fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| JailError::Config(format!("{} contains a NUL byte", path.display())))
}

/// Jails this process as `jail` says. Returns in the jailed child only; the process that
/// called it supervises the child and exits with its status. Call on the main thread
/// before any other thread exists. Termination signals stay blocked in the child until
/// [`termination_signals_ready`]. Every inherited fd but `keep` is closed.
pub fn enter(cfg: &VmConfig, jail: &JailConfig, keep: &[RawFd]) -> Result<(), JailError> {
    let binds = binds(cfg, &jail.root)?;
    let root_is_dir = std::fs::metadata(&jail.root).map(|m| m.is_dir());
    if !root_is_dir.map_err(step_err("find the jail root", &jail.root))? {
        return Err(JailError::Config(format!(
            "jail root {} is not a directory",
            jail.root.display()
        )));
    }
    if let Some(cgroup) = &jail.cgroup {
        host::join_cgroup(cgroup)?;
    }
    for share in binds.iter().filter(|b| b.recursive) {
        host::let_mounts_propagate(&share.path)?;
    }
    process::check_single_threaded()?;
    supervise::fork_into_pid_namespace()?;

    // The jailed child from here on (pid 1 of its namespace).
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare takes flags only; a single-threaded process may unshare these.
    check(unsafe { libc::unshare(flags) }.into()).map_err(step_err(
        "unshare mount, ipc, uts and net namespaces for",
        &jail.root,
    ))?;
    mounts::build_root(&jail.root, &binds)?;
    process::set_hostname()?;
    process::close_inherited_fds(keep)?;
    process::limit_resources()?;
    tracing::info!(root = %jail.root.display(), binds = binds.len(), "jailed");
    Ok(())
}

/// Lets SIGTERM, SIGINT and SIGHUP through again in the jailed VMM: call once its
/// handlers are installed (any that came meanwhile were held, not lost: pid 1 of a
/// namespace ignores signals it has no handler for).
pub fn termination_signals_ready() {
    supervise::unblock(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP]);
}
