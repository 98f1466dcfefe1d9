//! The host cgroup a pod's VMM runs in: the one containerd (or kubelet) named for the
//! pod's sandbox container, `linux.cgroupsPath`, as Kata's `sandbox_cgroup_only` does. So
//! the VMM's memory, CPU and open files count against the pod, not against the shim.
use std::path::{Component, Path, PathBuf};

/// Where cgroup v2 is mounted on the host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host cgroup directory for a sandbox whose spec says `cgroups_path`, under `root`.
/// Both forms runc takes: a path (`/default/c1`, `kubepods/burstable/pod1/c1`), and
/// systemd's `slice:prefix:name` (a slice's dashes name its parents: `a-b.slice` lives in
/// `a.slice`; the unit is `prefix-name.scope`). `None` for a path that would leave `root`.
pub fn dir_for(root: &Path, cgroups_path: &str) -> Option<PathBuf> {
    let rel = match cgroups_path.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] => systemd_path(slice, prefix, name)?,
        [_] => PathBuf::from(cgroups_path.trim_start_matches('/')),
        _ => return None,
    };
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && rel.components().next().is_some()).then(|| root.join(rel))
}

fn systemd_path(slice: &str, prefix: &str, name: &str) -> Option<PathBuf> {
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let stem = slice.strip_suffix(".slice")?;
    let mut path = PathBuf::new();
    let mut parent = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        if !parent.is_empty() {
            parent.push('-');
        }
        parent.push_str(part);
        path.push(format!("{parent}.slice"));
    }
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Some(path)
}

/// Removes the pod's cgroup once its VMM is gone (an empty cgroup only; its parents are
/// containerd's or kubelet's to remove).
pub fn remove(dir: &Path) {
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(cgroup = %dir.display(), "remove the pod's cgroup: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_paths_map_as_runc_maps_them() {
        let root = Path::new("/sys/fs/cgroup");
        let cases = [
            ("ctr's default", "/default/c1", Some("default/c1")),
            (
                "kubelet, cgroupfs",
                "kubepods/burstable/pod1/c1",
                Some("kubepods/burstable/pod1/c1"),
            ),
            (
                "kubelet, systemd",
                "kubepods-burstable-pod1.slice:cri-containerd:c1",
                Some(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope",
                ),
            ),
            (
                "systemd, no slice",
                ":cri:c1",
                Some("system.slice/cri-c1.scope"),
            ),
            ("dot dot", "/default/../../etc", None),
            ("only slashes", "/", None),
            ("empty", "", None),
            ("a bad slice", "a--b.slice:p:n", None),
            ("not a slice", "kubepods:p:n", None),
            ("two colons too many", "a:b:c:d", None),
        ];
        for (case, path, want) in cases {
            assert_eq!(
                dir_for(root, path),
                want.map(|w| root.join(w)),
                "{case}: {path:?}"
            );
        }
    }
}
