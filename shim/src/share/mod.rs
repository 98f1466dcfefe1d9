//! The pod's share: what hyper-vmm serves to the guest with virtio-fs (tag
//! [`SHARE_TAG`]) and the agent mounts at [`guest::SHARED_DIR`]. Each container gets
//! `<id>/rootfs`, a bind of its rootfs, and `<id>/volumes/<n>`, a bind of the n-th mount of
//! its spec when that binds a host path; the spec the guest sees names those guest paths.
//!
//! Two views of one small tmpfs, as Kata has `mounts/` and `shared/`:
//! - `<pod>/mounts`, the shim's: writable, seen only by the host (the pod dir is 0700);
//! - `<pod>/shared`, the guest's: a read-only, nosuid, nodev copy that is a mount slave of
//!   `mounts`, so each bind the shim attaches there appears in it while the VM runs.
//!
//! The guest can write only inside the binds (its rootfs and rw volumes), never the tree
//! that holds them, so it cannot plant a symlink where the shim works. The shim works
//! through dirfds anyway ([`beneath`]), attaches binds made detached ([`detached`]) with
//! nosuid, nodev and read-only when the spec says so, and removes without following
//! symlinks or crossing mounts.
mod beneath;
mod detached;
mod mountinfo;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_agent_protocol::agent::Storage;
use hyper_agent_protocol::guest;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use detached::{BindFlags, DetachedTree, Propagation};
pub use mountinfo::mounts_under;

/// The virtio-fs tag of the pod's share.
pub const SHARE_TAG: &str = "hypershare";

/// The share's tmpfs holds only directories and mount points: a small cap on what a
/// runaway shim could put there.
const TMPFS_OPTIONS: &str = "mode=0755,size=1m,nr_inodes=16384";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("container id {0:?} cannot name a directory")]
    BadId(String),
    #[error("container {0:?} is already in the share")]
    Exists(String),
    #[error("OCI spec: {0}")]
    Spec(String),
    #[error("mount {destination}: bind source {source_path} {why}")]
    Source {
        destination: String,
        source_path: String,
        why: String,
    },
    #[error("share: {what} {path}: {cause}")]
    Op {
        what: &'static str,
        path: PathBuf,
        cause: Errno,
    },
}

fn op<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> ShareError + 'a {
    move |cause| ShareError::Op {
        what,
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
    /// `<pod>/mounts`, the host's writable view.
    host: PathBuf,
    /// The root of the share's tmpfs, where every operation starts.
    host_fd: Arc<OwnedFd>,
    /// `<pod>/shared`, what hyper-vmm serves.
    served: PathBuf,
}

impl Share {
    /// Makes the share's two views in `pod_dir` (the pod's 0700 state dir).
    pub fn create(pod_dir: &Path) -> Result<Self, ShareError> {
        let host = pod_dir.join("mounts");
        let served = pod_dir.join("shared");
        let pod = beneath::open_dir(pod_dir).map_err(op("open", pod_dir))?;
        let mount_point = beneath::make_dir(pod.as_fd(), OsStr::new("mounts"), 0o700)
            .map_err(op("mkdir", &host))?;
        mount_on(
            &mount_point,
            Some("tmpfs"),
            Some("tmpfs"),
            fs_flags(),
            Some(TMPFS_OPTIONS),
        )
        .map_err(op("mount tmpfs on", &host))?;
        // Its own peer group, nothing shared with the state dir's mount.
        let host_fd = beneath::open_mount_root(pod.as_fd(), Path::new("mounts"))
            .map_err(op("open", &host))?;
        for flag in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
            mount_on(&host_fd, None, None, flag, None).map_err(op("set propagation of", &host))?;
        }
        let target = beneath::make_dir(pod.as_fd(), OsStr::new("shared"), 0o700)
            .map_err(op("mkdir", &served))?;
        let view = DetachedTree::clone_of(host_fd.as_fd(), false).map_err(op("clone", &host))?;
        view.set_flags(BindFlags {
            read_only: true,
            propagation: Propagation::Slave,
        })
        .map_err(op("set flags of", &served))?;
        view.attach(target.as_fd()).map_err(op("attach", &served))?;
        Ok(Self {
            host,
            host_fd: Arc::new(host_fd),
            served,
        })
    }

    /// The directory hyper-vmm serves.
    pub fn served_dir(&self) -> &Path {
        &self.served
    }

    /// The shim's own writable view.
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

    fn check_id(id: &str) -> Result<(), ShareError> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." || id.contains('\0') {
            return Err(ShareError::BadId(id.into()));
        }
        Ok(())
    }

    /// Binds `rootfs` and the spec's host bind mounts into the share for container `id`.
    /// On failure nothing of it is left in the share.
    pub fn add_container(
        &self,
        id: &str,
        rootfs: &Path,
        spec_json: &[u8],
    ) -> Result<SharedContainer, ShareError> {
        Self::check_id(id)?;
        let mut spec: serde_json::Value =
            serde_json::from_slice(spec_json).map_err(|e| ShareError::Spec(e.to_string()))?;
        let dir = self.host.join(id);
        match nix::sys::stat::mkdirat(
            self.host_fd.as_fd(),
            id,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Err(ShareError::Exists(id.into())),
            Err(e) => return Err(op("mkdir", &dir)(e)),
        }
        let result = self.bind_container(id, &dir, rootfs, &mut spec);
        if result.is_err() {
            self.remove_container(id);
        }
        result?;
        Ok(SharedContainer {
            guest_rootfs: format!("{}/{id}/rootfs", guest::SHARED_DIR),
            spec_json: serde_json::to_vec(&spec).map_err(|e| ShareError::Spec(e.to_string()))?,
        })
    }

    fn bind_container(
        &self,
        id: &str,
        dir: &Path,
        rootfs: &Path,
        spec: &mut serde_json::Value,
    ) -> Result<(), ShareError> {
        let dir_fd = beneath::open_dir_beneath(self.host_fd.as_fd(), Path::new(id))
            .map_err(op("open", dir))?;
        let read_only_root = spec
            .pointer("/root/readonly")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let root_fd = beneath::open_dir(rootfs).map_err(op("open rootfs", rootfs))?;
        if read_only_root {
            // The guest cannot make mount points in a read-only rootfs: make them now,
            // inside it, as runc does before it remounts the rootfs read-only.
            make_mount_points(root_fd.as_fd(), spec).map_err(op("make mount points in", rootfs))?;
        }
        let target = beneath::make_dir(dir_fd.as_fd(), OsStr::new("rootfs"), 0o755)
            .map_err(op("mkdir", &dir.join("rootfs")))?;
        bind(
            root_fd.as_fd(),
            true,
            BindFlags {
                read_only: read_only_root,
                propagation: Propagation::Private,
            },
            target.as_fd(),
        )
        .map_err(op("bind rootfs on", &dir.join("rootfs")))?;

        let guest_dir = format!("{}/{id}", guest::SHARED_DIR);
        let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
            return Ok(());
        };
        let mut volumes: Option<OwnedFd> = None;
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
            // The source as runc takes it: a host path, symlinks followed.
            let source_fd = nix::fcntl::open(
                &source,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| bad(e.desc().to_lowercase()))?;
            let is_dir = nix::sys::stat::fstat(&source_fd)
                .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(|e| bad(e.desc().to_lowercase()))?;
            let vdir = match &volumes {
                Some(fd) => fd,
                None => volumes.insert(
                    beneath::make_dir(dir_fd.as_fd(), OsStr::new("volumes"), 0o755)
                        .map_err(op("mkdir", &dir.join("volumes")))?,
                ),
            };
            let name = i.to_string();
            let target_path = dir.join("volumes").join(&name);
            let target = if is_dir {
                beneath::make_dir(vdir.as_fd(), OsStr::new(&name), 0o755)
            } else {
                beneath::make_file(vdir.as_fd(), OsStr::new(&name), 0o644)
            }
            .map_err(op("make", &target_path))?;
            let flags = BindFlags {
                read_only: options(m).any(|o| o == "ro" || o == "rro"),
                propagation: Propagation::from_options(options(m)),
            };
            let recursive = options(m).any(|o| o == "rbind");
            bind(source_fd.as_fd(), recursive, flags, target.as_fd())
                .map_err(|e| bad(format!("cannot be bound: {}", e.desc().to_lowercase())))?;
            m["source"] = serde_json::Value::String(format!("{guest_dir}/volumes/{name}"));
        }
        Ok(())
    }

    /// Unmounts and removes everything the share holds for container `id`.
    pub fn remove_container(&self, id: &str) {
        if Self::check_id(id).is_err() {
            return;
        }
        // The guest's copies go with the shim's (umount propagates); both are checked.
        for view in [&self.host, &self.served] {
            unmount_all(&view.join(id));
        }
        match beneath::remove_all(self.host_fd.as_fd(), OsStr::new(id)) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => tracing::warn!(container = id, "remove from the share: {e}"),
        }
    }

    /// Unmounts and removes the whole share (both views).
    pub fn remove(&self) {
        remove_tree(&self.served);
        remove_tree(&self.host);
    }
}

/// What the share's own mounts get: nothing on them runs or opens as a device on the host.
fn fs_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// mount(2) on the object an `O_PATH` fd refers to, never on a path looked up again.
fn mount_on(
    target: &OwnedFd,
    source: Option<&str>,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", target.as_raw_fd());
    nix::mount::mount(source, path.as_str(), fstype, flags, data)
}

fn bind(
    source: std::os::fd::BorrowedFd,
    recursive: bool,
    flags: BindFlags,
    target: std::os::fd::BorrowedFd,
) -> Result<(), Errno> {
    let tree = DetachedTree::clone_of(source, recursive)?;
    tree.set_flags(flags)?;
    tree.attach(target)
}

/// Makes each spec mount's destination inside the rootfs: a file for a bind of a file,
/// a directory otherwise.
fn make_mount_points(root: std::os::fd::BorrowedFd, spec: &serde_json::Value) -> Result<(), Errno> {
    let Some(mounts) = spec.get("mounts").and_then(|m| m.as_array()) else {
        return Ok(());
    };
    for m in mounts {
        let Some(dest) = m.get("destination").and_then(|d| d.as_str()) else {
            continue;
        };
        let file =
            host_bind_source(m).is_some_and(|s| std::fs::metadata(s).is_ok_and(|md| !md.is_dir()));
        beneath::make_path_in_root(root, Path::new(dest), file)?;
    }
    Ok(())
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

/// Detaches every mount at or below `dir`, deepest first, without following a symlink.
fn unmount_all(dir: &Path) {
    for m in mounts_under(dir) {
        // A bind stacked twice needs two unmounts.
        while nix::mount::umount2(&m, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_ok() {}
    }
}

/// Unmounts everything at or below `dir` (lazily: the guest may still hold files open),
/// then deletes what is left, never following a symlink or crossing into another mount.
pub fn remove_tree(dir: &Path) {
    unmount_all(dir);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let Ok(parent) = beneath::open_dir(parent) else {
        return;
    };
    match beneath::remove_all(parent.as_fd(), name) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %dir.display(), "remove: {e}"),
    }
}

#[cfg(test)]
mod tests;
