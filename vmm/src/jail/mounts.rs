//! The jail's root, built in its own mount namespace: a small tmpfs on the root directory,
//! the config's files and directories bound into it at their host paths, a fresh `/proc`,
//! then `pivot_root` into it and the host's tree detached.

use std::ffi::CStr;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::ptr;

use super::plan::Bind;
use super::{JailError, c_path, check, step_err};

/// Mode of the tmpfs root and the directories made in it: as a host's, so that a share
/// served with a guest user's credentials can still walk `/proc/self/fd`.
const DIR_MODE: u32 = 0o755;
/// The root holds only mount points: a few KiB and inodes, capped so that it cannot grow.
const TMPFS_OPTIONS: &CStr = c"mode=0755,size=1m,nr_inodes=4096";
const OLD_ROOT: &str = "/.old-root";

fn mount(
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let target = c_path(target).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let opt = |s: Option<&CStr>| s.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string living across the call.
    let ret = unsafe {
        libc::mount(
            opt(source),
            target.as_ptr(),
            opt(fstype),
            flags,
            opt(data).cast(),
        )
    };
    check(ret.into())
}

/// Builds the root on `root` and moves this process into it.
pub fn build_root(root: &Path, binds: &[Bind]) -> Result<(), JailError> {
    let host_root = Path::new("/");
    // Nothing mounted here reaches the host; what the host mounts still reaches us.
    mount(None, host_root, None, libc::MS_REC | libc::MS_SLAVE, None)
        .map_err(step_err("make the host's mounts slaves at", host_root))?;
    mount(
        Some(c"tmpfs"),
        root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(TMPFS_OPTIONS),
    )
    .map_err(step_err("mount the jail's tmpfs on", root))?;
    for b in binds {
        bind_into(root, b)?;
    }
    let proc_dir = root.join("proc");
    make_dir(&proc_dir)?;
    // Read-only: the passthrough reopens files through /proc/self/fd (that still works),
    // but nothing in the jail may write /proc/sys.
    let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    mount(Some(c"proc"), &proc_dir, Some(c"proc"), proc_flags, None)
        .map_err(step_err("mount proc on", &proc_dir))?;
    pivot_into(root)?;
    // The root itself never changes again.
    let flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    mount(None, host_root, None, flags, None)
        .map_err(step_err("make read-only the jail's root", root))
}

/// Binds `b.path` at the same path under `root`, then narrows the bind's flags: never
/// setuid, device nodes only where the source is one, nothing executable but a share's
/// files, read-only unless the VMM writes it.
fn bind_into(root: &Path, b: &Bind) -> Result<(), JailError> {
    let source = &b.path;
    if b.create && !source.exists() {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(source)
            .map_err(step_err("create", source))?;
    }
    let meta = std::fs::metadata(source).map_err(step_err("find", source))?;
    let target = root.join(source.strip_prefix("/").unwrap_or(source));
    if let Some(parent) = target.parent() {
        make_dir(parent)?;
    }
    // Only a missing mount point is created: an existing one may be the host's own file,
    // seen through a directory bound earlier.
    if std::fs::symlink_metadata(&target).is_err() {
        let made = if meta.is_dir() {
            DirBuilder::new().mode(DIR_MODE).create(&target)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map(drop)
        };
        made.map_err(step_err("make a mount point at", &target))?;
    }
    let c_source = c_path(source)?;
    let mut flags = libc::MS_BIND;
    if b.recursive {
        flags |= libc::MS_REC;
    }
    mount(Some(&c_source), &target, None, flags, None)
        .map_err(step_err("bind-mount into the jail", source))?;
    let device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
    // A bind remount sets the flags, so the source's own go in too: a read-only share
    // stays read-only.
    let mut narrow = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | mount_flags(&target)?;
    if !device {
        narrow |= libc::MS_NODEV;
    }
    if !b.recursive {
        narrow |= libc::MS_NOEXEC;
    }
    if !b.writable {
        narrow |= libc::MS_RDONLY;
    }
    mount(None, &target, None, narrow, None)
        .map_err(step_err("restrict the jail's bind of", source))?;
    tracing::debug!(what = b.what, path = %source.display(), writable = b.writable, "bound into the jail");
    Ok(())
}

/// The flags of the mount `path` is on, as `mount(2)` takes them.
fn mount_flags(path: &Path) -> Result<libc::c_ulong, JailError> {
    let c = c_path(path)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a NUL-terminated path and a struct statvfs fills.
    check(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }.into())
        .map_err(step_err("read the mount flags of", path))?;
    // SAFETY: filled by the successful statvfs.
    let have = unsafe { st.assume_init() }.f_flag;
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st, _)| have & *st != 0)
        .fold(0, |acc, (_, ms)| acc | ms))
}

fn make_dir(dir: &Path) -> Result<(), JailError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(step_err("make the directory", dir))
}

/// `pivot_root` into `root` and detach the host's tree: after this no path leads out.
fn pivot_into(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(step_err("enter", root))?;
    let old = Path::new(OLD_ROOT);
    let old_here = root.join(OLD_ROOT.trim_start_matches('/'));
    DirBuilder::new()
        .mode(0o700)
        .create(&old_here)
        .map_err(step_err("make the directory", &old_here))?;
    let dot = c".";
    let old_rel = c_path(&old_here)?;
    // SAFETY: two NUL-terminated paths living across the call.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old_rel.as_ptr()) })
        .map_err(step_err("pivot_root into", root))?;
    std::env::set_current_dir("/").map_err(step_err("enter", Path::new("/")))?;
    let c_old = c_path(old)?;
    // SAFETY: a NUL-terminated path living across the call.
    check(unsafe { libc::umount2(c_old.as_ptr(), libc::MNT_DETACH) }.into())
        .map_err(step_err("detach the host's tree at", old))?;
    std::fs::remove_dir(old).map_err(step_err("remove", old))
}
