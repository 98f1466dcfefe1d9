//! A container's root file system, from containerd's mounts to something the guest can use.
//!
//! containerd hands the snapshot as mounts (overlay) in `Create`; the shim mounts them on
//! `<bundle>/rootfs`, and the pod's virtio-fs share (`share`) binds that into the guest.
//! With `shared_fs = "none"` the guest gets a copy instead: an ext4 image on a virtio-blk
//! disk, made without root tricks by `mke2fs -d`, whose writes go away with the container.
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim_protos::api::Mount;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {kind} rootfs on {target}: {message}")]
    Mount {
        kind: String,
        target: PathBuf,
        message: String,
    },
    #[error("rootfs {0} is empty or missing (no mounts from containerd and no spec root)")]
    Empty(PathBuf),
    #[error("make rootfs image {image} from {dir}: {message}")]
    Image {
        image: PathBuf,
        dir: PathBuf,
        message: String,
    },
}

/// Free space added to the image on top of what the files use.
const IMAGE_HEADROOM_MIB: u64 = 256;

/// Mounts containerd's rootfs mounts on `target` (in order: later ones stack on earlier).
pub fn mount(mounts: &[Mount], target: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(|e| RootfsError::Mount {
        kind: "-".into(),
        target: target.into(),
        message: e.to_string(),
    })?;
    for m in mounts {
        let kind = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(kind, source, &m.options, target).map_err(|e| {
            RootfsError::Mount {
                kind: m.type_.clone(),
                target: target.into(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(())
}

/// Undoes `mount` (everything mounted on `target`); a target with nothing on it is fine.
pub fn unmount(target: &Path) {
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!("unmount {}: {e}", target.display());
                break;
            }
        }
    }
}

/// Copies `dir` into a fresh ext4 image at `image`, sized for its content plus headroom.
pub async fn make_image(dir: &Path, image: &Path) -> Result<(), RootfsError> {
    let err = |message: String| RootfsError::Image {
        image: image.into(),
        dir: dir.into(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    if entries.count() == 0 {
        return Err(RootfsError::Empty(dir.into()));
    }
    let walk = dir.to_path_buf();
    let used = tokio::task::spawn_blocking(move || disk_usage(&walk))
        .await
        .map_err(|e| err(e.to_string()))?;
    let size_kib = used / 1024 * 2 + IMAGE_HEADROOM_MIB * 1024;
    let _ = std::fs::remove_file(image);
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_kib}k"));
    let out = crate::command::output(cmd)
        .await
        .map_err(|e| err(format!("run mke2fs (is e2fsprogs installed?): {e}")))?;
    if out.code != 0 {
        let _ = std::fs::remove_file(image);
        return Err(err(format!(
            "mke2fs failed (exit {}): {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Bytes the files under `dir` take (rounded up to 4 KiB each), without crossing mounts.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.len().div_ceil(4096) * 4096;
            if m.is_dir() && m.dev() == top.dev() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn image_holds_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "box\n").unwrap();
        let image = dir.path().join("rootfs.img");
        make_image(&root, &image).await.unwrap();
        // debugfs reads the image without mounting it.
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "box\n");
    }

    #[tokio::test]
    async fn an_empty_rootfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_image(dir.path(), &dir.path().join("x.img"))
            .await
            .unwrap_err();
        assert!(matches!(err, RootfsError::Empty(_)), "{err}");
    }

    #[test]
    fn a_bad_mount_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount {
            type_: "nosuchfs".into(),
            source: "none".into(),
            ..Default::default()
        };
        let err = mount(&[m], &dir.path().join("rootfs"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuchfs"), "{err}");
    }
}
