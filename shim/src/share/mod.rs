//! The pod's share: one host directory per sandbox that hyper-vmm serves to the guest with
//! virtio-fs (tag [`SHARE_TAG`]) and the agent mounts at [`guest::SHARED_DIR`]. Each
//! container gets `<share>/<id>/rootfs`, a bind of its rootfs, and
//! `<share>/<id>/volumes/<n>`, a bind of the n-th mount of its spec when that is a bind of a
//! host path; the spec the guest sees names those guest paths instead.
//!
//! Mounts live inside the share, so removing it must never descend into them: everything
//! here unmounts first and deletes only on the share's own file system.
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use hyper_agent_protocol::agent::Storage;
use hyper_agent_protocol::guest;
use nix::mount::{MntFlags, MsFlags};

/// The virtio-fs tag of the pod's share.
pub const SHARE_TAG: &str = "hypershare";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("container id {0:?} cannot name a directory")]
    BadId(String),
    #[error("OCI spec: {0}")]
    Spec(String),
    #[error("mount {destination}: bind source {source_path} {why}")]
    Source {
        destination: String,
        source_path: String,
        why: String,
    },
    #[error("share {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("bind {from} on {to}: {cause}")]
    Bind {
        from: PathBuf,
        to: PathBuf,
        cause: nix::errno::Errno,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShareError + '_ {
    move |cause| ShareError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// What the guest needs to create a container out of the share.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedContainer {
    /// The rootfs as the guest sees it.
    pub guest_rootfs: String,
    /// The spec with bind sources pointing into the guest's view of the share.
    pub spec_json: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Share {
    host: PathBuf,
}

impl Share {
    /// Makes (or reuses) the share directory `dir`.
    pub fn create(dir: &Path) -> Result<Self, ShareError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Self {
            host: dir.to_path_buf(),
        })
    }

    pub fn host_dir(&self) -> &Path {
        &self.host
    }

    /// The storage that has the agent mount the share.
    pub fn storage() -> Storage {
        Storage {
            driver: guest::DRIVER_VIRTIOFS.into(),
            source: SHARE_TAG.into(),
            fstype: "virtiofs".into(),
            mount_point: guest::SHARED_DIR.into(),
            ..Default::default()
        }
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf, ShareError> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." || id.contains('\0') {
            return Err(ShareError::BadId(id.into()));
        }
        Ok(self.host.join(id))
    }

    /// Binds `rootfs` and the spec's host bind mounts into the share for container `id`.
    /// On failure nothing of it is left in the share.
    pub fn add_container(
        &self,
        id: &str,
        rootfs: &Path,
        spec_json: &[u8],
    ) -> Result<SharedContainer, ShareError> {
        let dir = self.container_dir(id)?;
        let result = self.bind_container(id, &dir, rootfs, spec_json);
        if result.is_err() {
            remove_tree(&dir);
        }
        result
    }

    fn bind_container(
        &self,
        id: &str,
        dir: &Path,
        rootfs: &Path,
        spec_json: &[u8],
    ) -> Result<SharedContainer, ShareError> {
        let mut spec: serde_json::Value =
            serde_json::from_slice(spec_json).map_err(|e| ShareError::Spec(e.to_string()))?;
        let target = dir.join("rootfs");
        std::fs::create_dir_all(&target).map_err(io_err(&target))?;
        bind(rootfs, &target, true)?;
        let guest_dir = format!("{}/{id}", guest::SHARED_DIR);
        if let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            for (i, m) in mounts.iter_mut().enumerate() {
                let Some(source) = host_bind_source(m) else {
                    continue;
                };
                let destination = m
                    .get("destination")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .to_string();
                let bad = |why: String| ShareError::Source {
                    destination: destination.clone(),
                    source_path: source.display().to_string(),
                    why,
                };
                let meta = std::fs::metadata(&source).map_err(|e| bad(e.to_string()))?;
                let target = dir.join("volumes").join(i.to_string());
                std::fs::create_dir_all(dir.join("volumes")).map_err(io_err(dir))?;
                if meta.is_dir() {
                    std::fs::create_dir(&target).map_err(io_err(&target))?;
                } else {
                    std::fs::File::create(&target).map_err(io_err(&target))?;
                }
                let recursive = options(m).any(|o| o == "rbind");
                bind(&source, &target, recursive)?;
                m["source"] = serde_json::Value::String(format!("{guest_dir}/volumes/{i}"));
            }
        }
        Ok(SharedContainer {
            guest_rootfs: format!("{guest_dir}/rootfs"),
            spec_json: serde_json::to_vec(&spec).map_err(|e| ShareError::Spec(e.to_string()))?,
        })
    }

    /// Unmounts and removes everything the share holds for container `id`.
    pub fn remove_container(&self, id: &str) {
        if let Ok(dir) = self.container_dir(id) {
            remove_tree(&dir);
        }
    }

    /// Unmounts and removes the whole share.
    pub fn remove(&self) {
        remove_tree(&self.host);
    }
}

fn options(m: &serde_json::Value) -> impl Iterator<Item = &str> {
    m.get("options")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str())
}

/// The host path of a spec mount that binds one, as runc would treat it (type "bind", or
/// a "bind"/"rbind" option); file systems the guest makes itself are not shared.
fn host_bind_source(m: &serde_json::Value) -> Option<PathBuf> {
    let is_bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
        || options(m).any(|o| o == "bind" || o == "rbind");
    let source = Path::new(m.get("source")?.as_str()?);
    (is_bind && source.is_absolute()).then(|| source.to_path_buf())
}

fn bind(from: &Path, to: &Path, recursive: bool) -> Result<(), ShareError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    nix::mount::mount(Some(from), to, None::<&str>, flags, None::<&str>).map_err(|cause| {
        ShareError::Bind {
            from: from.into(),
            to: to.into(),
            cause,
        }
    })
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The id of the mount `path` is on (bind mounts of one file system differ here, unlike
/// st_dev).
fn mount_id(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: c is a valid NUL-terminated path and stx a writable statx buffer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    // SAFETY: statx filled the buffer when it returned 0.
    let stx = unsafe { stx.assume_init() };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Unmounts everything below `dir` (lazily: the guest may still hold files open), then
/// deletes what is left, never crossing into another mount.
pub fn remove_tree(dir: &Path) {
    for m in mounts_under(dir) {
        // A bind stacked twice needs two unmounts.
        while nix::mount::umount2(&m, MntFlags::MNT_DETACH).is_ok() {}
    }
    if let Some(id) = mount_id(dir) {
        remove_same_mount(dir, id);
    }
}

fn remove_same_mount(path: &Path, id: u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if mount_id(path) != Some(id) {
        tracing::warn!(
            "not removing {}: something is mounted there",
            path.display()
        );
        return;
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                remove_same_mount(&e.path(), id);
            }
        }
        if let Err(e) = std::fs::remove_dir(path) {
            tracing::warn!("remove {}: {e}", path.display());
        }
    } else if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("remove {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\011c"),
            PathBuf::from("/a b\tc")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape_mountinfo("/end\\"), PathBuf::from("/end\\"));
    }

    #[test]
    fn bad_ids_and_specs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let share = Share::create(&d.path().join("share")).unwrap();
        for id in ["", "..", "a/b"] {
            let e = share
                .add_container(id, d.path(), b"{}")
                .unwrap_err()
                .to_string();
            assert!(e.contains("cannot name"), "{e}");
        }
        let e = share
            .add_container("c", d.path(), b"{not json")
            .unwrap_err();
        assert!(matches!(e, ShareError::Spec(_)), "{e}");
    }

    #[test]
    fn rootfs_and_bind_volumes_are_shared_and_removed_without_touching_sources() {
        if !is_root() {
            eprintln!("skipped: needs root to bind-mount");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hostname"), "box").unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("data"), "volume").unwrap();
        let file = d.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 x").unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
                {"destination": "/etc/hosts", "type": "none", "source": file, "options": ["bind", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
            ]
        });
        let share = Share::create(&d.path().join("share")).unwrap();
        let s = share
            .add_container("c1", &rootfs, &serde_json::to_vec(&spec).unwrap())
            .unwrap();
        assert_eq!(s.guest_rootfs, "/run/hyper/shared/c1/rootfs");
        let host = share.host_dir().join("c1");
        assert_eq!(
            std::fs::read_to_string(host.join("rootfs/etc/hostname")).unwrap(),
            "box"
        );
        assert_eq!(
            std::fs::read_to_string(host.join("volumes/1/data")).unwrap(),
            "volume"
        );
        assert_eq!(
            std::fs::read_to_string(host.join("volumes/2")).unwrap(),
            "127.0.0.1 x"
        );
        let out: serde_json::Value = serde_json::from_slice(&s.spec_json).unwrap();
        let sources: Vec<&str> = out["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["source"].as_str().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                "proc",
                "/run/hyper/shared/c1/volumes/1",
                "/run/hyper/shared/c1/volumes/2",
                "tmpfs"
            ]
        );
        assert_eq!(mounts_under(&host).len(), 3);

        share.remove();
        assert!(mounts_under(share.host_dir()).is_empty());
        assert!(!share.host_dir().exists());
        // The sources are untouched.
        assert_eq!(std::fs::read_to_string(vol.join("data")).unwrap(), "volume");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "127.0.0.1 x");
        assert!(rootfs.join("etc/hostname").exists());
    }

    #[test]
    fn a_missing_bind_source_fails_and_leaves_nothing() {
        if !is_root() {
            eprintln!("skipped: needs root to bind-mount");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let spec = serde_json::json!({"mounts": [
            {"destination": "/data", "type": "bind", "source": "/nonexistent-hyper-src", "options": ["rbind"]}
        ]});
        let share = Share::create(&d.path().join("share")).unwrap();
        let e = share
            .add_container("c1", &rootfs, &serde_json::to_vec(&spec).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/data") && e.contains("/nonexistent-hyper-src"),
            "{e}"
        );
        assert!(mounts_under(share.host_dir()).is_empty());
        assert!(!share.host_dir().join("c1").exists());
    }

    #[test]
    fn removal_never_crosses_into_another_file_system() {
        if !is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let keep = d.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("precious"), "x").unwrap();
        let dir = d.path().join("tree");
        std::fs::create_dir_all(dir.join("m")).unwrap();
        bind(&keep, &dir.join("m"), false).unwrap();
        // Even if the unmount were skipped, the walk stops at the bind (same st_dev).
        remove_same_mount(&dir, mount_id(&dir).unwrap());
        assert!(keep.join("precious").exists());
        assert!(dir.join("m").exists());
        remove_tree(&dir);
        assert!(keep.join("precious").exists());
        assert!(!dir.exists());
    }
}
