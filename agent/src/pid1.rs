//! The agent's duties as the guest's PID 1: leave the initramfs, mount the pseudo file
//! systems, report the boot to the VMM, set the clock, seed the RNG, power off.
//! (Reaping is `reaper`'s job; a container's own setup is `container::child`.)
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

/// Set in the environment of the agent re-executed by `leave_initramfs`.
const SWITCHED: &str = "HYPER_AGENT_SWITCHED_ROOT";

/// The initramfs is the `rootfs` mount, which `pivot_root` cannot leave, and containers
/// need `pivot_root`. As `switch_root` does: copy the image into a tmpfs, free the
/// initramfs, move the tmpfs over `/`, chroot into it and re-exec `/init`. Returns only
/// when there is nothing to do or it failed before the point of no return.
pub fn leave_initramfs() -> Result<()> {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // The magic is a u32; fs_type_t is signed on some libcs.
    #[allow(clippy::unnecessary_cast)]
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6_u32 as _);
    if std::env::var_os(SWITCHED).is_some() {
        return Ok(());
    }
    let t = statfs("/").context("statfs /")?.filesystem_type();
    if t != RAMFS_MAGIC && t != TMPFS_MAGIC {
        return Ok(());
    }
    let new = std::path::Path::new("/.hyper-root");
    fs::create_dir_all(new).context("mkdir new root")?;
    mount(
        Some("tmpfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mount tmpfs root")?;
    if let Err(e) = copy_tree(std::path::Path::new("/"), new) {
        let _ = nix::mount::umount2(new, nix::mount::MntFlags::MNT_DETACH);
        return Err(e).context("copy initramfs");
    }
    // Point of no return: free the initramfs (its files are copied), then switch.
    if let Ok(rd) = fs::read_dir("/") {
        for e in rd.flatten() {
            let p = e.path();
            if p != new && !matches!(p.to_str(), Some("/proc" | "/sys" | "/dev")) {
                let _ = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    std::env::set_current_dir(new).context("chdir new root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("move root")?;
    nix::unistd::chroot(".").context("chroot")?;
    std::env::set_current_dir("/").context("chdir /")?;
    // SAFETY: PID 1 at start-up, single-threaded: nothing reads the environment concurrently.
    unsafe { std::env::set_var(SWITCHED, "1") };
    let args: Vec<std::ffi::CString> = std::env::args()
        .map(|a| std::ffi::CString::new(a).unwrap_or_default())
        .collect();
    let err = nix::unistd::execv(c"/init", &args).unwrap_err();
    anyhow::bail!("re-exec /init in the new root: {err}")
}

/// Copies files, directories and symlinks (with modes) from `from` into `to`, skipping
/// `to` itself and the pseudo file systems.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        let src = e.path();
        if src == to || matches!(src.to_str(), Some("/proc" | "/sys" | "/dev")) {
            continue;
        }
        let dst = to.join(e.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.permissions().mode()))?;
        } else if ft.is_file() {
            fs::copy(&src, &dst).with_context(|| format!("copy {}", src.display()))?;
        }
        // Device nodes and fifos in an initramfs are recreated by devtmpfs.
    }
    Ok(())
}

/// Mounts what every guest needs and enables all cgroup controllers for children.
pub fn setup_guest() -> Result<()> {
    for m in MOUNTS {
        fs::create_dir_all(m.target).with_context(|| format!("mkdir {}", m.target))?;
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
            .with_context(|| format!("mount {} on {}", m.fstype, m.target))?;
    }
    enable_cgroup_controllers()?;
    // Ctrl-Alt-Del (the VMM's graceful stop, through its i8042) then reaches PID 1 as
    // SIGINT instead of an immediate reboot, so containers get stopped first.
    nix::sys::reboot::set_cad_enabled(false).context("disable immediate Ctrl-Alt-Del reboot")?;
    Ok(())
}

/// Guest-physical address of hyper-vmm's boot-timer register (`vmm/src/arch/x86_64/layout.rs`,
/// Firecracker's convention): writing `BOOT_TIMER_MAGIC` there makes the VMM log the
/// time from its start to this moment.
const BOOT_TIMER_ADDR: i64 = 0xd000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;

/// Tells the VMM the guest is ready. A VMM without the register (QEMU) ignores the write.
pub fn signal_boot_done() {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
    use std::num::NonZeroUsize;
    let Ok(mem) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
    else {
        return tracing::debug!("no /dev/mem: boot time not reported");
    };
    let len = NonZeroUsize::new(4096).expect("non-zero");
    // SAFETY: a fresh shared mapping of one device page, written once and unmapped; no
    // Rust object aliases it.
    unsafe {
        match mmap(
            None,
            len,
            ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &mem,
            BOOT_TIMER_ADDR,
        ) {
            Ok(page) => {
                std::ptr::write_volatile(page.as_ptr().cast::<u8>(), BOOT_TIMER_MAGIC);
                let _ = munmap(page, len.get());
            }
            Err(e) => tracing::debug!("map the boot timer: {e}"),
        }
    }
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

/// Ends the VM (Shutdown, or a fatal error as PID 1 instead of panicking the kernel).
/// A microVM has no ACPI, so a power-off only halts the vCPUs and the VMM never notices;
/// a reboot (keyboard-controller reset) is what makes hyper-vmm, Firecracker and
/// `qemu -no-reboot` exit.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
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

/// `RNDRESEEDCRNG`, `_IO('R', 0x07)`.
const RNDRESEEDCRNG: u64 = 0x5207;

/// ReseedRandomDev: mixes `data` into the pool, credits it as entropy and reseeds the
/// CRNG from the pool at once: a VM restored from a template otherwise goes on drawing
/// from the CRNG state every other VM of that template shares, until its next reseed.
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
    // SAFETY: an ioctl without argument on a descriptor we own.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } != 0 {
        return Err(std::io::Error::last_os_error()).context("RNDRESEEDCRNG");
    }
    Ok(())
}
