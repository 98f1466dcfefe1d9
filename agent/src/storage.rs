//! Storages: what the shim asks the agent to mount in the guest (a virtio-fs share by
//! tag, a virtio-blk disk by serial, a tmpfs, a bind of something already there). Mount
//! points must lie under the agent's state directory.
use crate::mount::{self, PathError, parse_options};
use hyper_agent_protocol::agent;
use hyper_agent_protocol::guest::{
    DRIVER_BIND, DRIVER_BLK, DRIVER_BLK_ALT, DRIVER_TMPFS, DRIVER_VIRTIOFS, DRIVER_VIRTIOFS_ALT,
};
use nix::mount::MsFlags;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("{field}: no block device with serial {serial:?} appeared")]
    NoDevice { field: String, serial: String },
    #[error("{field}: mount {what} on {target}: {source}")]
    Mount {
        field: String,
        what: String,
        target: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("{field}: {source}")]
    Io {
        field: String,
        source: std::io::Error,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The block device (under /dev) whose virtio serial is `serial`, looked up in `sys_block`.
pub fn find_block_by_serial(sys_block: &Path, serial: &str) -> Option<PathBuf> {
    std::fs::read_dir(sys_block).ok()?.flatten().find_map(|e| {
        let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (s.trim() == serial).then(|| PathBuf::from("/dev").join(e.file_name()))
    })
}

/// Checks a storage description; returns the mount point.
pub fn validate(
    field: &str,
    s: &agent::Storage,
    state_dir: &Path,
) -> Result<PathBuf, StorageError> {
    let mp = Path::new(&s.mount_point);
    if !mp.is_absolute() || mp.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            &format!("{field}.mount_point"),
            format!("{:?} must be absolute without '..'", s.mount_point),
        ));
    }
    if !mp.starts_with(state_dir) || mp == state_dir {
        return Err(invalid(
            &format!("{field}.mount_point"),
            format!("{:?} is not under {}", s.mount_point, state_dir.display()),
        ));
    }
    match s.driver.as_str() {
        DRIVER_VIRTIOFS | DRIVER_VIRTIOFS_ALT | DRIVER_BLK | DRIVER_BLK_ALT | DRIVER_BIND => {
            if s.source.is_empty() {
                return Err(invalid(&format!("{field}.source"), "empty"));
            }
        }
        DRIVER_TMPFS => {}
        other => {
            return Err(invalid(
                &format!("{field}.driver"),
                format!(
                    "unknown driver {other:?} \
                     ({DRIVER_VIRTIOFS}, {DRIVER_BLK}, {DRIVER_TMPFS}, {DRIVER_BIND})"
                ),
            ));
        }
    }
    if matches!(s.driver.as_str(), DRIVER_BLK | DRIVER_BLK_ALT) && s.fstype.is_empty() {
        return Err(invalid(
            &format!("{field}.fstype"),
            "needed for a block device",
        ));
    }
    Ok(mp.to_path_buf())
}

/// Readahead of a virtio-fs mount, in KiB: what one request carries once the device
/// grants 1 MiB requests (max_pages 256). A FUSE mount starts at the kernel's 128 KiB,
/// which cuts a sequential read into 128 KiB READs, each a round trip to the host.
const VIRTIOFS_READ_AHEAD_KB: u32 = 1024;

/// Sets the readahead of the file system mounted at `mp` (its backing device info).
fn set_read_ahead(mp: &Path, kb: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mp)?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// Mounts one storage. `allowed` are the roots a bind source must resolve under.
pub fn mount_storage(
    field: &str,
    s: &agent::Storage,
    state_dir: &Path,
    allowed: &[PathBuf],
) -> Result<PathBuf, StorageError> {
    let mp = validate(field, s, state_dir)?;
    // The mount point's existing parents must not be symlinks leading elsewhere.
    let mp =
        mount::secure_join(state_dir, mp.strip_prefix(state_dir).unwrap_or(&mp)).map_err(|e| {
            StorageError::Io {
                field: format!("{field}.mount_point"),
                source: e,
            }
        })?;
    let opts = parse_options(&s.options);
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let (source, fstype, flags): (String, Option<&str>, MsFlags) = match s.driver.as_str() {
        DRIVER_VIRTIOFS | DRIVER_VIRTIOFS_ALT => (s.source.clone(), Some("virtiofs"), opts.flags),
        DRIVER_TMPFS => ("tmpfs".into(), Some("tmpfs"), opts.flags),
        DRIVER_BLK | DRIVER_BLK_ALT => {
            let deadline = Instant::now() + Duration::from_secs(5);
            let dev = loop {
                if let Some(d) = find_block_by_serial(Path::new("/sys/block"), &s.source) {
                    break d;
                }
                if Instant::now() > deadline {
                    return Err(StorageError::NoDevice {
                        field: format!("{field}.source"),
                        serial: s.source.clone(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            (
                dev.to_string_lossy().into_owned(),
                Some(s.fstype.as_str()),
                opts.flags,
            )
        }
        _ => {
            let src = mount::check_under_roots(
                &format!("{field}.source"),
                Path::new(&s.source),
                allowed,
            )?;
            (
                src.to_string_lossy().into_owned(),
                None,
                opts.flags | MsFlags::MS_BIND | MsFlags::MS_REC,
            )
        }
    };
    let is_dir_source = fstype.is_some() || Path::new(&source).is_dir();
    let mk = if is_dir_source {
        std::fs::create_dir_all(&mp)
    } else {
        mp.parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&mp)
                    .map(drop)
            })
    };
    mk.map_err(|e| StorageError::Io {
        field: format!("{field}.mount_point"),
        source: e,
    })?;
    let merr = |e| StorageError::Mount {
        field: field.into(),
        what: source.clone(),
        target: mp.clone(),
        source: e,
    };
    nix::mount::mount(Some(source.as_str()), &mp, fstype, flags, data).map_err(merr)?;
    if fstype == Some("virtiofs")
        && let Err(e) = set_read_ahead(&mp, VIRTIOFS_READ_AHEAD_KB)
    {
        // Only slower sequential reads: not worth failing the mount for.
        tracing::warn!(mount = %mp.display(), "cannot set the share's readahead: {e}");
    }
    if fstype.is_none() && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            &mp,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(merr)?;
    }
    for p in &opts.propagation {
        nix::mount::mount(None::<&str>, &mp, None::<&str>, *p, None::<&str>).map_err(merr)?;
    }
    Ok(mp)
}

/// Mounts all of `list`; on failure unmounts what it mounted.
pub fn mount_all(
    prefix: &str,
    list: &[agent::Storage],
    state_dir: &Path,
    allowed: &[PathBuf],
) -> Result<Vec<PathBuf>, StorageError> {
    for (i, s) in list.iter().enumerate() {
        validate(&format!("{prefix}[{i}]"), s, state_dir)?;
    }
    let mut done = Vec::new();
    for (i, s) in list.iter().enumerate() {
        // Earlier storages may hold later bind sources.
        let mut roots = allowed.to_vec();
        roots.extend(done.iter().cloned());
        match mount_storage(&format!("{prefix}[{i}]"), s, state_dir, &roots) {
            Ok(mp) => done.push(mp),
            Err(e) => {
                for mp in done.iter().rev() {
                    unmount(mp);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

pub fn unmount(mp: &Path) {
    mount::umount_recursive(mp);
    let _ = std::fs::remove_dir(mp);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(driver: &str, source: &str, mp: &str) -> agent::Storage {
        agent::Storage {
            driver: driver.into(),
            source: source.into(),
            mount_point: mp.into(),
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        let sd = Path::new("/run/hyper");
        assert!(validate("s", &st("tmpfs", "", "/run/hyper/x"), sd).is_ok());
        let e = validate("s", &st("tmpfs", "", "/etc"), sd)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.mount_point"), "{e}");
        let e = validate("s", &st("tmpfs", "", "/run/hyper/../../etc"), sd)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.mount_point"), "{e}");
        let e = validate("s", &st("nfs", "x", "/run/hyper/x"), sd)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.driver"), "{e}");
        let e = validate("s", &st("blk", "serial1", "/run/hyper/x"), sd)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.fstype"), "{e}");
        let e = validate("s", &st("virtiofs", "", "/run/hyper/x"), sd)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.source"), "{e}");
    }

    #[test]
    fn block_by_serial() {
        let d = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", "rootdisk\n"), ("vdb", "data")] {
            std::fs::create_dir_all(d.path().join(dev)).unwrap();
            std::fs::write(d.path().join(dev).join("serial"), serial).unwrap();
        }
        std::fs::create_dir_all(d.path().join("loop0")).unwrap();
        assert_eq!(
            find_block_by_serial(d.path(), "rootdisk"),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(
            find_block_by_serial(d.path(), "data"),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(find_block_by_serial(d.path(), "nope"), None);
    }
}
