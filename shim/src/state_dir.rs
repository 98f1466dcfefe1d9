//! The shim's state directory (`runtime.state_dir`) and each pod's directory in it: only
//! root reads them (sockets that control a VM, its logs, the share), and mounts made in
//! them stay there.
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// Makes `<root>/<pod>` (mode 0700, set explicitly, not from the umask) and makes `root`
/// a mount of its own with private propagation, so the share's mounts in it never
/// propagate to the rest of the host (Docker does the same for its state).
pub fn create_pod_dir(root: &Path, pod: &str) -> std::io::Result<PathBuf> {
    make_private_dir(root)?;
    make_private_mount(root)?;
    let dir = root.join(pod);
    make_private_dir(&dir)?;
    Ok(dir)
}

/// Makes `dir` (and missing parents) mode 0700, set explicitly; an existing directory is
/// made 0700 too, a non-directory there is an error.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates (or truncates) the file `path`, mode 0600 whatever the umask.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The umask can only narrow the mode above; this sets it exactly.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// The pods in state dir `root`: (pod id, its dir), sorted by id. Dot entries are the
/// shim's own (VM templates), not pods; a missing root has no pods.
pub fn pod_dirs(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pods: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    pods.sort();
    Ok(pods)
}

fn make_private_mount(root: &Path) -> std::io::Result<()> {
    if !crate::share::mounts_under(root).iter().any(|m| m == root) {
        nix::mount::mount(
            Some(root),
            root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
    }
    nix::mount::mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn pod_dirs_are_0700_and_the_root_a_private_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("state");
        // A umask that would leave everything readable by everyone.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let pod = create_pod_dir(&root, "p1").unwrap();
        // Twice is fine (a second pod, or a restart).
        create_pod_dir(&root, "p2").unwrap();
        nix::sys::stat::umask(old);
        for dir in [&root, &pod, &root.join("p2")] {
            let mode = std::fs::metadata(dir).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
            .expect("state root is a mount");
        // Optional fields (shared:N, master:N) absent = private.
        let optional: Vec<&str> = line.split(' ').skip(6).take_while(|f| *f != "-").collect();
        assert!(optional.is_empty(), "{line}");
        crate::share::remove_tree(&root);
        assert!(!root.exists());
    }
}
