//! Mount helpers shared by storages and container setup: OCI mount options, safe path
//! resolution inside a root (symlinks cannot escape it), and checks that a guest path
//! lies under one of the roots the agent allows.
use nix::mount::MsFlags;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{field}: {path:?} is not an absolute path")]
    NotAbsolute { field: String, path: PathBuf },
    #[error("{field}: {path:?} contains '..'")]
    DotDot { field: String, path: PathBuf },
    #[error("{field}: {path:?} does not exist or cannot be resolved: {source}")]
    Resolve {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {path:?} resolves to {resolved:?}, outside the allowed roots {roots:?}")]
    Escapes {
        field: String,
        path: PathBuf,
        resolved: PathBuf,
        roots: Vec<PathBuf>,
    },
}

/// Checks that `path` is absolute, has no `..`, and (after resolving every symlink) lies
/// under one of `roots`. Returns the resolved path.
pub fn check_under_roots(
    field: &str,
    path: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, PathError> {
    if !path.is_absolute() {
        return Err(PathError::NotAbsolute {
            field: field.into(),
            path: path.into(),
        });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::DotDot {
            field: field.into(),
            path: path.into(),
        });
    }
    let resolved = std::fs::canonicalize(path).map_err(|source| PathError::Resolve {
        field: field.into(),
        path: path.into(),
        source,
    })?;
    let ok = roots.iter().any(|r| {
        let r = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
        resolved.starts_with(&r)
    });
    if !ok {
        return Err(PathError::Escapes {
            field: field.into(),
            path: path.into(),
            resolved,
            roots: roots.to_vec(),
        });
    }
    Ok(resolved)
}

/// Joins `unsafe_path` to `root` as if `root` were `/`: every symlink met on the way is
/// resolved relative to `root`, and `..` never climbs above it. The result may not exist
/// yet (missing components are appended as they are).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> std::io::Result<PathBuf> {
    // Components still to walk, in reverse order.
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let push_path = |todo: &mut Vec<std::ffi::OsString>, p: &Path| {
        let comps: Vec<_> = p
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        todo.extend(comps.into_iter().rev());
    };
    push_path(&mut todo, unsafe_path);
    let mut current = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        if comp == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&comp);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                push_path(&mut todo, &target);
            }
            _ => current = candidate,
        }
    }
    Ok(root.join(current))
}

/// What an OCI mount's `options` turn into.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation changes applied after the mount (MS_SHARED, MS_SLAVE, ...).
    pub propagation: Vec<MsFlags>,
    /// Options the kernel file system gets as data ("size=64k,mode=755").
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
        }
    }
}

/// Splits OCI/fstab mount options into flags, propagation and file-system data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    for o in options {
        let (set, flag) = match o.as_str() {
            "defaults" => (true, MsFlags::empty()),
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "dev" => (false, MsFlags::MS_NODEV),
            "nodev" => (true, MsFlags::MS_NODEV),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "mand" => (true, MsFlags::MS_MANDLOCK),
            "nomand" => (false, MsFlags::MS_MANDLOCK),
            "atime" => (false, MsFlags::MS_NOATIME),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
            "shared" | "rshared" | "private" | "rprivate" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let mut f = match o.trim_start_matches('r') {
                    "shared" => MsFlags::MS_SHARED,
                    "private" => MsFlags::MS_PRIVATE,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if o.starts_with('r') {
                    f |= MsFlags::MS_REC;
                }
                out.propagation.push(f);
                continue;
            }
            _ => {
                out.data.push(o.clone());
                continue;
            }
        };
        if set {
            out.flags |= flag;
        } else {
            out.flags &= !flag;
        }
    }
    out
}

/// Mount points listed in /proc/self/mountinfo, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(OsStr::from_bytes(&unescape_octal(p))))
        .collect()
}

fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Lazily unmounts every mount at or under `path`, deepest first.
pub fn umount_recursive(path: &Path) {
    let mut mps: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(path))
        .collect();
    mps.reverse();
    for m in mps {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(path = %m.display(), "umount: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split() {
        let o = parse_options(&[
            "nosuid".into(),
            "noexec".into(),
            "rbind".into(),
            "ro".into(),
            "rslave".into(),
            "size=64k".into(),
            "mode=755".into(),
        ]);
        assert!(
            o.flags
                .contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_BIND)
        );
        assert!(o.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data, vec!["size=64k".to_string(), "mode=755".to_string()]);
        let rw = parse_options(&["ro".into(), "rw".into()]);
        assert!(!rw.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn secure_join_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("a/up")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/a/b/c")).unwrap(),
            root.join("a/b/c")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/a/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("a/rel/z")).unwrap(),
            root.join("a/b/z")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop")).is_err());
    }

    #[test]
    fn roots_are_enforced() {
        let d = tempfile::tempdir().unwrap();
        let allowed = d.path().join("allowed");
        std::fs::create_dir_all(allowed.join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("evil")).unwrap();
        let roots = vec![allowed.clone()];
        assert!(check_under_roots("rootfs", &allowed.join("rootfs"), &roots).is_ok());
        let e = check_under_roots("rootfs", &allowed.join("evil"), &roots).unwrap_err();
        assert!(matches!(e, PathError::Escapes { .. }), "{e}");
        let e = check_under_roots("rootfs", &allowed.join("rootfs/../../x"), &roots).unwrap_err();
        assert!(matches!(e, PathError::DotDot { .. }), "{e}");
        let e = check_under_roots("rootfs", Path::new("rel/x"), &roots).unwrap_err();
        assert!(e.to_string().starts_with("rootfs:"), "{e}");
        let e = check_under_roots("rootfs", Path::new("/nonexistent-xyz"), &roots).unwrap_err();
        assert!(matches!(e, PathError::Resolve { .. }));
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_octal(r"/a\040b"), b"/a b".to_vec());
        assert_eq!(unescape_octal("/plain"), b"/plain".to_vec());
    }
}
