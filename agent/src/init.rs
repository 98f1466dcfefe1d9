//! PID 1 duties: mount the pseudo file systems, set the clock, seed the RNG, power off.
//! (Reaping is `reaper`'s job.)
use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};
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

/// Last resort for PID 1: halt the VM instead of panicking the kernel.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::park();
    }
}

/// SetGuestDateTime: the guest has no RTC worth trusting after a pause or restore.
pub fn set_time(sec: i64, usec: i64) -> Result<()> {
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        anyhow::bail!("sec/usec: {sec}.{usec:06} is not a valid time");
    }
    let ts = nix::sys::time::TimeSpec::new(sec, usec * 1000);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).context("clock_settime")?;
    Ok(())
}

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: u64 = 0x4008_5203;

/// ReseedRandomDev: mixes `data` into the pool and credits it as entropy.
pub fn reseed_random(data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    if data.is_empty() {
        anyhow::bail!("data: empty");
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .context("open /dev/urandom")?;
    f.write_all(data).context("write /dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + data.len() + 3);
    info.extend_from_slice(&((data.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(data.len() as i32).to_ne_bytes());
    info.extend_from_slice(data);
    info.resize(8 + data.len().div_ceil(4) * 4, 0);
    // SAFETY: the buffer is a complete rand_pool_info of buf_size bytes.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("RNDADDENTROPY");
    }
    Ok(())
}
