//! The shared directory: fuse-backend-rs's passthrough file system over it, with the
//! configured cache mode.
//!
//! The passthrough resolves every name relative to an `O_PATH` descriptor of its parent,
//! one component at a time with `O_NOFOLLOW`, rejects names with `/`, `.` or `..` on
//! create/rename/link, and turns `..` at the root into `.`: the guest cannot name anything
//! outside the share, and symlinks are never followed on the host (the guest kernel
//! resolves them in its own view).

use std::path::PathBuf;
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::passthrough::{EXTRA_OPTIONS, Passthrough};
use crate::config::{FsCacheMode, FsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("shared directory {path} of tag {tag:?}: {why}")]
    Dir {
        tag: String,
        path: PathBuf,
        why: String,
    },
    #[error("cannot create the virtio-fs worker's eventfd: {0}")]
    Eventfd(std::io::Error),
}

/// How long the guest may trust attributes and directory entries, per cache mode
/// (virtiofsd's choices: none = 0, auto = 1 s, always = a day).
fn timeout(mode: FsCacheMode) -> Duration {
    match mode {
        FsCacheMode::None => Duration::ZERO,
        FsCacheMode::Auto => Duration::from_secs(1),
        FsCacheMode::Always => Duration::from_secs(86_400),
    }
}

/// Opens `cfg.shared_dir` for serving.
pub fn open_share(cfg: &FsConfig) -> Result<Passthrough, ShareError> {
    let err = |why: String| ShareError::Dir {
        tag: cfg.tag.clone(),
        path: cfg.shared_dir.clone(),
        why,
    };
    let meta = std::fs::metadata(&cfg.shared_dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    let root_dir = cfg
        .shared_dir
        .to_str()
        .ok_or_else(|| err("the path is not UTF-8".into()))?
        .to_string();
    let t = timeout(cfg.cache);
    let fs_cfg = Config {
        root_dir,
        cache_policy: match cfg.cache {
            FsCacheMode::None => CachePolicy::Never,
            FsCacheMode::Auto => CachePolicy::Auto,
            FsCacheMode::Always => CachePolicy::Always,
        },
        attr_timeout: t,
        entry_timeout: t,
        writeback: cfg.writeback,
        xattr: cfg.xattr,
        // HANDLE_KILLPRIV_V2: the passthrough clears set-id bits itself on the writes,
        // truncates and chowns the kernel flags, so the kernel no longer fetches the
        // attributes again (a GETATTR) before every chown or chmod of a file.
        killpriv_v2: true,
        // Serve the directory on its own (no vfs layer): the passthrough then validates
        // every name component itself.
        do_import: true,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(fs_cfg).map_err(|e| err(e.to_string()))?;
    fs.import().map_err(|e| err(e.to_string()))?;
    Ok(Passthrough::new(fs, EXTRA_OPTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: PathBuf) -> FsConfig {
        FsConfig {
            tag: "t".into(),
            shared_dir: dir,
            cache: FsCacheMode::Auto,
            writeback: false,
            xattr: true,
        }
    }

    #[test]
    fn a_missing_or_plain_file_share_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = open_share(&cfg(d.path().join("nope")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope") && e.contains("\"t\""), "{e}");
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = open_share(&cfg(d.path().join("f")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(open_share(&cfg(d.path().to_path_buf())).is_ok());
    }
}
