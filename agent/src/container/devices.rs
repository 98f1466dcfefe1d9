//! The container's /dev content, as runc makes it: the spec's device nodes, the default
//! ones the spec does not list, the /dev/ptmx symlink to the container's devpts and the
//! /proc/self/fd links.
//!
//! Everything is created through directory fds opened one component at a time with
//! O_NOFOLLOW, starting from the rootfs: a symlink anywhere on a device's path (planted in
//! the image, in a volume mounted under /dev, or made by the agent) is refused instead of
//! followed, so nothing is ever created outside the container's tree.
use super::config::DeviceConfig;
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, makedev, mkdirat, mknodat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, symlinkat, unlinkat};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

/// runc's "/dev/ptmx": never a node of its own, always a link to the devpts multiplexer.
const PTMX: &str = "/dev/ptmx";
const PTMX_TARGET: &str = "pts/ptmx";

/// Made (mode 0666, root-owned char devices) when the spec does not list them.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Made unless something already has the name.
const DEFAULT_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Sets up the container's /dev beneath `root` (its mounts already in place). With
/// `dev_tmpfs` (the spec mounts a fresh tmpfs on /dev) the defaults are added too.
/// Modes are taken as given: the caller runs with umask 0.
pub fn setup(root: &Path, devices: &[DeviceConfig], dev_tmpfs: bool) -> Result<()> {
    let root_fd = open_dir(None, root.as_os_str())
        .with_context(|| format!("open rootfs {}", root.display()))?;
    let listed = |p: &str| devices.iter().any(|d| d.path == Path::new(p));
    for d in devices {
        if d.path == Path::new(PTMX) {
            continue; // the symlink below
        }
        create_device(&root_fd, d).with_context(|| format!("device {}", d.path.display()))?;
    }
    if dev_tmpfs {
        for (path, major, minor) in DEFAULT_DEVICES {
            if listed(path) {
                continue; // as runc: the spec's entry wins
            }
            let d = DeviceConfig {
                path: path.into(),
                kind: 'c',
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            };
            create_device(&root_fd, &d).with_context(|| format!("device {path}"))?;
        }
    }
    if dev_tmpfs || listed(PTMX) {
        replace_with_symlink(&root_fd, Path::new(PTMX), PTMX_TARGET)
            .with_context(|| format!("symlink {PTMX} -> {PTMX_TARGET}"))?;
    }
    if dev_tmpfs {
        for (link, target) in DEFAULT_LINKS {
            symlink_unless_present(&root_fd, Path::new(link), target)
                .with_context(|| format!("symlink {link} -> {target}"))?;
        }
    }
    Ok(())
}

/// Makes the node `d` describes, or accepts the node already there if it is that device.
fn create_device(root: &OwnedFd, d: &DeviceConfig) -> Result<()> {
    let (dir, name) = open_parent(root, &d.path)?;
    let kind = match d.kind {
        'b' => SFlag::S_IFBLK,
        'p' => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let rdev = if kind == SFlag::S_IFIFO {
        0
    } else {
        makedev(d.major, d.minor)
    };
    match mknodat(&dir, name, kind, Mode::from_bits_truncate(d.mode), rdev) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            // OCI: a file at the path that is not the requested device is an error. The
            // same device is left as it is (runc does not touch it either).
            let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).context("stat")?;
            let same = st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
                && (kind == SFlag::S_IFIFO || st.st_rdev == rdev);
            if !same {
                bail!(
                    "{} exists and is {}, not the requested {}",
                    d.path.display(),
                    describe(&st),
                    describe_wanted(d)
                );
            }
            return Ok(());
        }
        Err(e) => return Err(e).context("mknod"),
    }
    fchownat(
        &dir,
        name,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .context("chown")
}

/// runc's setupPtmx: whatever is at `path` (but a directory) gives way to the symlink.
fn replace_with_symlink(root: &OwnedFd, path: &Path, target: &str) -> Result<()> {
    let (dir, name) = open_parent(root, path)?;
    match unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).context("unlink"),
    }
    symlinkat(target, &dir, name).context("symlink")
}

fn symlink_unless_present(root: &OwnedFd, path: &Path, target: &str) -> Result<()> {
    let (dir, name) = open_parent(root, path)?;
    match symlinkat(target, &dir, name) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).context("symlink"),
    }
}

/// Opens (creating what is missing) the directory holding `path`, beneath `root`, and
/// returns it with the last component's name.
fn open_parent<'a>(root: &OwnedFd, path: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => names.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{}: '..' in a device path", path.display())
            }
        }
    }
    let Some(name) = names.pop() else {
        bail!("{}: names no file", path.display());
    };
    let mut dir = open_dir(Some(root), OsStr::new("."))?;
    let mut walked = Path::new("/").to_path_buf();
    for n in names {
        walked.push(n);
        match mkdirat(&dir, n, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("mkdir {}", walked.display())),
        }
        dir = open_dir(Some(&dir), n).map_err(|e| match e {
            // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on something else: ENOTDIR.
            Errno::ELOOP | Errno::ENOTDIR => anyhow::anyhow!(
                "{}: {} is a symlink or not a directory; device paths must not go through one",
                path.display(),
                walked.display()
            ),
            e => anyhow::anyhow!("open {}: {e}", walked.display()),
        })?;
    }
    Ok((dir, name))
}

/// One directory, never through a symlink (`at`: None means relative to the cwd).
fn open_dir(at: Option<&OwnedFd>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    match at {
        Some(fd) => openat(fd, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
}

fn describe(st: &FileStat) -> String {
    let fmt = st.st_mode & SFlag::S_IFMT.bits();
    let numbers = format!(
        "{}:{}",
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev)
    );
    match SFlag::from_bits_truncate(fmt) {
        SFlag::S_IFCHR => format!("char device {numbers}"),
        SFlag::S_IFBLK => format!("block device {numbers}"),
        SFlag::S_IFIFO => "a fifo".into(),
        SFlag::S_IFLNK => "a symlink".into(),
        SFlag::S_IFDIR => "a directory".into(),
        SFlag::S_IFREG => "a regular file".into(),
        _ => format!("file type {fmt:o}"),
    }
}

fn describe_wanted(d: &DeviceConfig) -> String {
    match d.kind {
        'b' => format!("block device {}:{}", d.major, d.minor),
        'p' => "fifo".into(),
        _ => format!("char device {}:{}", d.major, d.minor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn fifo(path: &str) -> DeviceConfig {
        DeviceConfig {
            path: path.into(),
            kind: 'p',
            major: 0,
            minor: 0,
            mode: 0o600,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn chr(path: &str, major: u64, minor: u64) -> DeviceConfig {
        DeviceConfig {
            kind: 'c',
            major,
            minor,
            mode: 0o600,
            ..fifo(path)
        }
    }

    /// A rootfs with the traps `refused_paths` walks into, and the directory outside it
    /// that its absolute symlink points to.
    fn rootfs_with_traps() -> (tempfile::TempDir, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("dev/sub")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("dev/abs")).unwrap();
        std::os::unix::fs::symlink("../etc", r.join("dev/rel")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("dev/last")).unwrap();
        std::os::unix::fs::symlink("missing", r.join("dev/dangling")).unwrap();
        std::fs::write(r.join("dev/plain"), "x").unwrap();
        (d, outside)
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        d
    }

    #[test]
    fn refused_paths() {
        #[rustfmt::skip]
        let cases: [(&str, &str); 8] = [
            ("/dev/abs/x", "/dev/abs is a symlink"),
            ("/dev/rel/x", "/dev/rel is a symlink"),
            ("/dev/dangling/x", "/dev/dangling is a symlink"),
            ("/dev/plain/x", "/dev/plain is a symlink or not a directory"),
            ("/dev/last", "exists and is a symlink"),
            ("/dev/plain", "exists and is a regular file"),
            ("/dev/sub", "exists and is a directory"),
            ("/dev/../x", "'..'"),
        ];
        for (path, want) in cases {
            let (d, outside) = rootfs_with_traps();
            let res = setup(d.path(), &[fifo(path)], false);
            // Where a followed symlink would have put the node.
            let escapes = [
                d.path().join("etc/x"),
                d.path().join("x"),
                outside.path().join("x"),
            ];
            for p in &escapes {
                assert!(!p.exists(), "{path}: made {}", p.display());
            }
            let e = res.expect_err(&format!("{path} was accepted"));
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{path}: {msg:?} lacks {want:?}");
            assert!(
                msg.contains(path),
                "{path}: {msg:?} does not name the device"
            );
        }
    }

    #[test]
    fn nested_node_and_an_existing_same_node() {
        let d = rootfs();
        let dev = fifo("/dev/a/b/pipe");
        setup(d.path(), &[dev.clone(), dev.clone()], false).unwrap();
        let m = std::fs::symlink_metadata(d.path().join("dev/a/b/pipe")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert!(std::fs::metadata(d.path().join("dev/a")).unwrap().is_dir());
        // Without a tmpfs /dev: no defaults, no ptmx link.
        assert!(!d.path().join("dev/null").exists());
        assert!(std::fs::symlink_metadata(d.path().join("dev/ptmx")).is_err());
    }

    #[test]
    fn ptmx_is_always_the_devpts_link() {
        let d = rootfs();
        std::fs::write(d.path().join("dev/ptmx"), "stale").unwrap();
        // Listed in the spec (privileged: every device of the host): still the link.
        setup(d.path(), &[chr("/dev/ptmx", 5, 2)], false).unwrap();
        let p = d.path().join("dev/ptmx");
        assert_eq!(std::fs::read_link(&p).unwrap(), Path::new("pts/ptmx"));
    }

    #[test]
    fn defaults_yield_to_the_spec() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: defaults_yield_to_the_spec needs CAP_MKNOD");
            return;
        }
        let d = rootfs();
        let dev = d.path().join("dev");
        // The spec's /dev/null (other numbers, other mode) wins over the default one; the
        // spec's /dev/tty is the default device and must not collide with it.
        let spec = [chr("/dev/null", 1, 5), chr("/dev/tty", 5, 0)];
        setup(d.path(), &spec, true).unwrap();
        let null = std::fs::symlink_metadata(dev.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 5));
        assert_eq!(null.permissions().mode() & 0o777, 0o600);
        for (name, major, minor) in DEFAULT_DEVICES {
            let m = std::fs::symlink_metadata(d.path().join(&name[1..])).unwrap();
            if name != "/dev/null" {
                assert_eq!(m.rdev(), makedev(major, minor), "{name}");
            }
        }
        assert_eq!(
            std::fs::read_link(dev.join("ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
        assert_eq!(
            std::fs::read_link(dev.join("fd")).unwrap(),
            Path::new("/proc/self/fd")
        );
        // A second pass over the same /dev finds its own nodes: not an error.
        setup(d.path(), &spec, true).unwrap();
        // A node of another device under a listed name is.
        let e = setup(d.path(), &[chr("/dev/zero", 1, 3)], true).unwrap_err();
        assert!(
            format!("{e:#}")
                .contains("exists and is char device 1:5, not the requested char device 1:3"),
            "{e:#}"
        );
    }
}
