//! The share as root on this machine: real tmpfs, binds and propagation.
use std::os::unix::fs::PermissionsExt;

use super::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
    };
}

/// A pod dir in a private mount of its own, so nothing here propagates to the host.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        crate::state_dir::create_pod_dir(&dir.path().join("state"), "pod").unwrap();
        Self { dir }
    }
    fn pod(&self) -> PathBuf {
        self.dir.path().join("state/pod")
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        remove_tree(&self.dir.path().join("state"));
    }
}

fn write(p: &Path, data: &str) -> std::io::Result<()> {
    std::fs::write(p, data)
}

fn is_erofs(r: std::io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS))
}

fn statvfs_flags(p: &Path) -> nix::sys::statvfs::FsFlags {
    nix::sys::statvfs::statvfs(p).unwrap().flags()
}

/// A rootfs with /etc/hostname, a rw volume dir, a ro volume dir and a ro file volume.
fn sources(r: &Rig) -> serde_json::Value {
    std::fs::create_dir_all(r.path("rootfs/etc")).unwrap();
    write(&r.path("rootfs/etc/hostname"), "box").unwrap();
    for v in ["rw", "ro"] {
        std::fs::create_dir_all(r.path(v)).unwrap();
        write(&r.path(&format!("{v}/data")), v).unwrap();
    }
    write(&r.path("hosts"), "127.0.0.1 x").unwrap();
    serde_json::json!({
        "ociVersion": "1.0.2",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/rw", "type": "bind", "source": r.path("rw"), "options": ["rbind", "rw"]},
            {"destination": "/ro", "type": "bind", "source": r.path("ro"), "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "none", "source": r.path("hosts"), "options": ["bind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
        ]
    })
}

#[test]
fn bad_ids_and_specs_are_refused() {
    need_root!();
    let r = Rig::new();
    let share = Share::create(&r.pod()).unwrap();
    for id in ["", "..", "a/b", "."] {
        let e = share
            .add_container(id, &r.pod(), b"{}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot name"), "{id:?}: {e}");
    }
    let e = share
        .add_container("c", &r.pod(), b"{not json")
        .unwrap_err();
    assert!(matches!(e, ShareError::Spec(_)), "{e}");
}

#[test]
fn rootfs_and_bind_volumes_reach_the_served_view_and_go_without_touching_sources() {
    need_root!();
    let r = Rig::new();
    let spec = sources(&r);
    let share = Share::create(&r.pod()).unwrap();
    let s = share
        .add_container("c1", &r.path("rootfs"), &serde_json::to_vec(&spec).unwrap())
        .unwrap();
    assert_eq!(s.guest_rootfs, "/run/hyper/shared/c1/rootfs");
    let served = share.served_dir().join("c1");
    for (path, want) in [
        ("rootfs/etc/hostname", "box"),
        ("volumes/1/data", "rw"),
        ("volumes/2/data", "ro"),
        ("volumes/3", "127.0.0.1 x"),
    ] {
        let got = std::fs::read_to_string(served.join(path)).unwrap();
        assert_eq!(got, want, "{path}");
    }
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
            "/run/hyper/shared/c1/volumes/3",
            "tmpfs"
        ]
    );
    assert_eq!(
        mounts_under(&served).len(),
        4,
        "{:?}",
        mounts_under(&served)
    );

    share.remove_container("c1");
    assert!(mounts_under(&served).is_empty());
    assert!(!served.exists() && !share.host_dir().join("c1").exists());
    share.remove();
    assert!(mounts_under(&r.pod()).is_empty());
    assert!(!share.host_dir().exists() && !share.served_dir().exists());
    for (p, want) in [
        ("rw/data", "rw"),
        ("ro/data", "ro"),
        ("hosts", "127.0.0.1 x"),
    ] {
        assert_eq!(std::fs::read_to_string(r.path(p)).unwrap(), want, "{p}");
    }
    assert!(r.path("rootfs/etc/hostname").exists());
}

#[test]
fn the_guest_view_is_read_only_nosuid_nodev_except_where_the_spec_allows_writes() {
    need_root!();
    let r = Rig::new();
    let mut spec = sources(&r);
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
    let share = Share::create(&r.pod()).unwrap();
    share
        .add_container("c1", &r.path("rootfs"), &serde_json::to_vec(&spec).unwrap())
        .unwrap();
    let served = share.served_dir();
    // The top level: no file, dir or symlink can be made, nothing renamed.
    assert!(
        is_erofs(write(&served.join("planted"), "x")),
        "file at the top"
    );
    assert!(
        is_erofs(std::fs::create_dir(served.join("c1/new"))),
        "dir in c1"
    );
    assert!(is_erofs(std::os::unix::fs::symlink(
        "/etc",
        served.join("c1/volumes/9")
    )));
    assert!(is_erofs(std::fs::rename(
        served.join("c1/volumes"),
        served.join("c1/v")
    )));
    // Volumes: rw writes land in the source, ro ones fail in both views.
    write(&served.join("c1/volumes/1/new"), "guest").unwrap();
    assert_eq!(std::fs::read_to_string(r.path("rw/new")).unwrap(), "guest");
    for view in [served, share.host_dir()] {
        for p in [
            "c1/volumes/2/data",
            "c1/volumes/3",
            "c1/rootfs/etc/hostname",
        ] {
            assert!(
                is_erofs(write(&view.join(p), "changed")),
                "{}",
                view.join(p).display()
            );
        }
    }
    assert_eq!(std::fs::read_to_string(r.path("ro/data")).unwrap(), "ro");
    // The read-only rootfs got its mount points before it was bound.
    assert!(r.path("rootfs/rw").is_dir() && r.path("rootfs/etc/hosts").is_file());
    use nix::sys::statvfs::FsFlags;
    for m in mounts_under(served) {
        let f = statvfs_flags(&m);
        assert!(
            f.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
            "{}: {f:?}",
            m.display()
        );
    }
    assert!(statvfs_flags(served).contains(FsFlags::ST_RDONLY | FsFlags::ST_NOEXEC));
}

#[test]
fn volumes_follow_later_host_mounts_only_when_the_spec_asks() {
    need_root!();
    let r = Rig::new();
    for v in ["private", "slave"] {
        std::fs::create_dir_all(r.path(&format!("{v}/sub"))).unwrap();
    }
    // The sources must be shared mounts for propagation to mean anything.
    let private_root = r.dir.path().to_path_buf();
    nix::mount::mount(
        Some(&private_root),
        &private_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    nix::mount::mount(
        None::<&str>,
        &private_root,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    let spec = serde_json::json!({"mounts": [
        {"destination": "/p", "type": "bind", "source": r.path("private"), "options": ["rbind", "rprivate"]},
        {"destination": "/s", "type": "bind", "source": r.path("slave"), "options": ["rbind", "rslave"]}
    ]});
    std::fs::create_dir(r.path("rootfs")).unwrap();
    let share = Share::create(&r.pod()).unwrap();
    share
        .add_container("c1", &r.path("rootfs"), &serde_json::to_vec(&spec).unwrap())
        .unwrap();
    for v in ["private", "slave"] {
        let sub = r.path(&format!("{v}/sub"));
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        write(&sub.join("later"), v).unwrap();
    }
    let seen = |n: usize| {
        share
            .served_dir()
            .join(format!("c1/volumes/{n}/sub/later"))
            .exists()
    };
    assert!(!seen(0), "a private volume followed a host mount");
    assert!(seen(1), "an rslave volume missed a host mount");
    share.remove();
    for v in ["private", "slave"] {
        nix::mount::umount2(&r.path(&format!("{v}/sub")), MntFlags::MNT_DETACH).unwrap();
    }
    remove_tree(&r.pod());
    nix::mount::umount2(&private_root, MntFlags::MNT_DETACH).unwrap();
}

#[test]
fn a_missing_bind_source_fails_and_leaves_nothing() {
    need_root!();
    let r = Rig::new();
    std::fs::create_dir(r.path("rootfs")).unwrap();
    let spec = serde_json::json!({"mounts": [
        {"destination": "/data", "type": "bind", "source": "/nonexistent-hyper-src", "options": ["rbind"]}
    ]});
    let share = Share::create(&r.pod()).unwrap();
    let e = share
        .add_container("c1", &r.path("rootfs"), &serde_json::to_vec(&spec).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/data") && e.contains("/nonexistent-hyper-src"),
        "{e}"
    );
    assert!(mounts_under(&share.host_dir().join("c1")).is_empty());
    assert!(!share.host_dir().join("c1").exists());
    // The id can be used again.
    share.add_container("c1", &r.path("rootfs"), b"{}").unwrap();
    assert!(matches!(
        share.add_container("c1", &r.path("rootfs"), b"{}"),
        Err(ShareError::Exists(_))
    ));
}

#[test]
fn removal_never_crosses_into_a_mount_or_through_a_symlink() {
    need_root!();
    let r = Rig::new();
    let keep = r.path("keep");
    std::fs::create_dir(&keep).unwrap();
    write(&keep.join("precious"), "x").unwrap();
    let tree = r.pod().join("tree");
    std::fs::create_dir_all(tree.join("m")).unwrap();
    std::os::unix::fs::symlink(&keep, tree.join("link")).unwrap();
    nix::mount::mount(
        Some(&keep),
        &tree.join("m"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    // Without the unmount the walk stops at the mount.
    let pod = beneath::open_dir(&r.pod()).unwrap();
    assert!(beneath::remove_all(pod.as_fd(), OsStr::new("tree")).is_err());
    assert!(keep.join("precious").exists() && tree.join("m").exists());
    assert!(!tree.join("link").exists(), "the symlink itself goes");
    remove_tree(&tree);
    assert!(keep.join("precious").exists());
    assert!(!tree.exists());
    let _ = std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o755));
}
