//! PID 1 duties: mount the pseudo file systems, reap orphans, power off.
use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::fs;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: later entries live under earlier ones.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Mounts what every guest needs and enables all cgroup controllers for children.
pub fn setup_guest() -> Result<()> {
    for m in MOUNTS {
        fs::create_dir_all(m.target).with_context(|| format!("mkdir {}", m.target))?;
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
            .with_context(|| format!("mount {} on {}", m.fstype, m.target))?;
    }
    enable_cgroup_controllers()?;
    Ok(())
}

fn enable_cgroup_controllers() -> Result<()> {
    let available = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("read cgroup.controllers")?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty() {
        fs::write("/sys/fs/cgroup/cgroup.subtree_control", wanted.join(" "))
            .with_context(|| format!("enable cgroup controllers {wanted:?}"))?;
    }
    Ok(())
}

/// PID 1 inherits every orphan: reap them so no zombie is left behind.
pub async fn reap_forever() -> Result<()> {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .context("SIGCHLD handler")?;
    loop {
        sigchld.recv().await;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// Last resort for PID 1: halt the VM instead of panicking the kernel.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::park();
    }
}
