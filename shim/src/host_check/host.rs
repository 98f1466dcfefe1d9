//! The host kernel and privileges hyper needs besides KVM.
use std::path::Path;

use super::Finding;

pub fn root() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::ok(
            "root",
            "running as root (the shim sets up jails, taps and cgroups)",
        )
    } else {
        Finding::fail(
            "root",
            format!("running as uid {}", nix::unistd::geteuid()),
            "run hyperctl check as root, as containerd runs the shim",
        )
    }
}

pub fn cgroup2() -> Finding {
    cgroup2_in(Path::new(crate::host_cgroup::CGROUP_ROOT))
}

/// The controllers a pod's host cgroup must be able to limit.
const CONTROLLERS: [&str; 2] = ["cpu", "memory"];

fn cgroup2_in(root: &Path) -> Finding {
    let file = root.join("cgroup.controllers");
    let Ok(have) = std::fs::read_to_string(&file) else {
        return Finding::fail(
            "cgroup2",
            format!(
                "{} has no cgroup v2 hierarchy ({} missing)",
                root.display(),
                file.display()
            ),
            "boot the host with the unified hierarchy (systemd.unified_cgroup_hierarchy=1, the default since systemd 247)",
        );
    };
    let have: Vec<&str> = have.split_whitespace().collect();
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect();
    if missing.is_empty() {
        Finding::ok(
            "cgroup2",
            format!("cgroup v2 at {} ({})", root.display(), have.join(" ")),
        )
    } else {
        Finding::fail(
            "cgroup2",
            format!(
                "cgroup v2 at {} lacks the {} controller(s)",
                root.display(),
                missing.join(", ")
            ),
            "enable them in the host kernel (CONFIG_MEMCG, CONFIG_CGROUP_SCHED) and on the root cgroup",
        )
    }
}

pub fn overlayfs() -> Finding {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    overlayfs_in(&filesystems, module_present("overlay"))
}

fn overlayfs_in(filesystems: &str, module: bool) -> Finding {
    let loaded = filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    match (loaded, module) {
        (true, _) => Finding::ok(
            "overlayfs",
            "overlay is in /proc/filesystems (containerd's snapshotter)",
        ),
        (false, true) => Finding::ok("overlayfs", "overlay loads as a module on first use"),
        (false, false) => Finding::fail(
            "overlayfs",
            "the kernel has no overlay filesystem: containerd's overlayfs snapshotter cannot mount image layers",
            "modprobe overlay, or use a kernel with CONFIG_OVERLAY_FS",
        ),
    }
}

/// Whether `name`.ko is among the running kernel's modules.
fn module_present(name: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let list =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap_or_default();
    list.lines().any(|l| {
        let path = l.split(':').next().unwrap_or("");
        let file = path.rsplit('/').next().unwrap_or("");
        file.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(".ko"))
    })
}

pub fn tun() -> Finding {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Finding::ok(
            "tun",
            "/dev/net/tun opens (a tap per pod network interface)",
        ),
        Err(e) => Finding::fail(
            "tun",
            format!("cannot open /dev/net/tun: {e}; pods with a CNI network will not start"),
            "modprobe tun (CONFIG_TUN); pods without a network (ctr run) do not need it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_check::Status;

    #[test]
    fn cgroup2_needs_the_unified_hierarchy_with_cpu_and_memory() {
        let cases = [
            (
                "v2 with both",
                Some("cpuset cpu io memory pids\n"),
                Status::Ok,
            ),
            ("v2 without memory", Some("cpu io pids\n"), Status::Fail),
            ("no cgroup.controllers (v1)", None, Status::Fail),
        ];
        for (name, controllers, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            if let Some(c) = controllers {
                std::fs::write(dir.path().join("cgroup.controllers"), c).unwrap();
            }
            let f = cgroup2_in(dir.path());
            assert_eq!(f.status, want, "{name}: {f}");
        }
    }

    #[test]
    fn overlayfs_is_loaded_or_loadable() {
        let loaded = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        let absent = "nodev\tsysfs\n\text4\n";
        let cases = [
            ("loaded", loaded, false, Status::Ok),
            ("a module", absent, true, Status::Ok),
            ("neither", absent, false, Status::Fail),
        ];
        for (name, filesystems, module, want) in cases {
            assert_eq!(overlayfs_in(filesystems, module).status, want, "{name}");
        }
    }
}
