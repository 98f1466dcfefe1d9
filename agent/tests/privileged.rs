//! Host tests: privileged containers (what `ctr run --privileged` sends: every capability,
//! no seccomp, no masked or read-only paths, every device of the host in linux.devices)
//! and the device paths the agent must refuse.
mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One linux.devices entry for the node at `path` on this host, as containerd's
/// `DeviceFromPath` builds it (lstat: a symlink is not a device).
fn device_entry(path: &Path) -> Option<serde_json::Value> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let ft = m.file_type();
    let typ = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some(serde_json::json!({
        "path": path, "type": typ,
        "major": nix::sys::stat::major(rdev), "minor": nix::sys::stat::minor(rdev),
        "fileMode": m.mode() & 0o7777, "uid": m.uid(), "gid": m.gid()
    }))
}

/// containerd's `oci.HostDevices`: every device node under /dev, skipping the same
/// directories and /dev/console.
fn host_devices(dir: &Path, out: &mut Vec<serde_json::Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            let skipped = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
            if !skipped.iter().any(|s| name == *s) {
                host_devices(&e.path(), out);
            }
        } else if name != "console"
            && let Some(d) = device_entry(&e.path())
        {
            out.push(d);
        }
    }
}

fn current_caps() -> caps::CapsHashSet {
    caps::read(None, caps::CapSet::Bounding).unwrap()
}

/// The spec `ctr run --privileged` (containerd 1.6: WithPrivileged, WithAllDevicesAllowed,
/// WithHostDevices) makes of the harness's runc-like spec.
fn privileged_spec(args: &[&str]) -> serde_json::Value {
    let mut s = spec(args);
    // WithAllCurrentCapabilities: those of the caller (here: this test's bounding set).
    let mut all: Vec<String> = current_caps().iter().map(|c| c.to_string()).collect();
    all.sort();
    s["process"]["capabilities"] =
        serde_json::json!({"bounding": all, "effective": all, "permitted": all});
    let linux = s["linux"].as_object_mut().unwrap();
    linux.remove("maskedPaths");
    linux.remove("readonlyPaths");
    linux.remove("seccomp");
    for m in s["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/sys" {
            m["options"] = serde_json::json!(["nosuid", "noexec", "nodev", "rw"]);
        }
    }
    let mut devices = Vec::new();
    host_devices(Path::new("/dev"), &mut devices);
    // The ones the agent also makes itself, whether or not this host has them.
    for (path, major, minor) in [
        ("/dev/ptmx", 5, 2),
        ("/dev/null", 1, 3),
        ("/dev/tty", 5, 0),
        ("/dev/zero", 1, 5),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/full", 1, 7),
    ] {
        if !devices.iter().any(|d| d["path"] == path) {
            devices.push(serde_json::json!({"path": path, "type": "c",
                "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0}));
        }
    }
    s["linux"]["devices"] = devices.into();
    s["linux"]["resources"] = serde_json::json!({"devices": [{"allow": true, "access": "rwm"}]});
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_runs() {
    if skip_unless_root("privileged_container_runs") {
        return;
    }
    let h = Harness::start("priv").await;
    let s = privileged_spec(&[
        "sh",
        "-c",
        "ls -l /dev/ptmx; \
         for d in null zero full random urandom tty fuse; do \
           [ -e /dev/$d ] && echo \"$d $(stat -c '%F %t:%T' /dev/$d)\"; done; \
         head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-writable; \
         mkdir -p /mnt && mount -t tmpfs none /mnt && grep -c ' /mnt tmpfs ' /proc/mounts; \
         grep CapEff /proc/self/status",
    ]);
    let listed = |p: &str| {
        s["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == p)
    };
    let fuse = listed("/dev/fuse");
    let (st, out, err) = h.run("p", s).await;
    assert_eq!(st, 0, "stdout: {out}\nstderr: {err}");
    let mut lines = out.lines();
    // As runc: /dev/ptmx is the container's own devpts's multiplexer, whatever the spec says.
    let ptmx = lines.next().unwrap_or_default();
    assert!(
        ptmx.starts_with('l') && ptmx.ends_with("/dev/ptmx -> pts/ptmx"),
        "{out}"
    );
    for (name, numbers) in [
        ("null", "1:3"),
        ("zero", "1:5"),
        ("full", "1:7"),
        ("random", "1:8"),
        ("urandom", "1:9"),
        ("tty", "5:0"),
    ] {
        let want = format!("\n{name} character special file {numbers}\n");
        assert!(out.contains(&want), "missing {want:?} in {out}");
    }
    if fuse {
        assert!(
            out.contains("\nfuse character special file a:e5\n"),
            "/dev/fuse (10:229) missing: {out}"
        );
    }
    assert!(
        out.contains("\n3\nnull-writable\n1\nCapEff:\t"),
        "/dev/zero, /dev/null or the tmpfs mount (CAP_SYS_ADMIN) failed: {out}\n{err}"
    );
    let cap_eff = out.rsplit("CapEff:\t").next().unwrap().trim();
    let want: u64 = current_caps().iter().map(|c| c.bitmask()).sum();
    assert_eq!(
        cap_eff,
        format!("{want:016x}"),
        "every capability is effective"
    );
}

/// Device paths that must not be created: each names the spec field or the path in its
/// error, and nothing appears outside the container's /dev.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_paths_that_are_refused() {
    if skip_unless_root("device_paths_that_are_refused") {
        return;
    }
    let h = Harness::start("devpath").await;
    // A rootfs whose own /dev (used when the spec mounts nothing there) holds symlinks,
    // and a volume with a symlink, bind-mounted under the container's tmpfs /dev.
    let dev = h.rootfs.join("dev");
    std::os::unix::fs::symlink("/etc", dev.join("abs")).unwrap();
    std::os::unix::fs::symlink("../..", dev.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dev.join("last")).unwrap();
    std::fs::write(dev.join("plain"), "a regular file\n").unwrap();
    let vol = h.images.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::symlink("/etc", vol.join("link")).unwrap();
    let victims = [
        h.rootfs.join("etc/victim"),
        h.images.join("victim"),
        Path::new("/etc/victim").to_path_buf(),
    ];
    struct Case {
        name: &'static str,
        path: &'static str,
        /// The spec mounts a tmpfs on /dev (else the rootfs's own /dev is used).
        dev_tmpfs: bool,
        /// Expected in the error.
        error: &'static str,
    }
    #[rustfmt::skip]
    let cases = [
        Case { name: "relative", path: "../escape", dev_tmpfs: true, error: "linux.devices[0].path" },
        Case { name: "dotdot", path: "/dev/../etc/victim", dev_tmpfs: true, error: "linux.devices[0].path" },
        Case { name: "not under /dev", path: "/etc/victim", dev_tmpfs: true, error: "linux.devices[0].path" },
        Case { name: "/dev itself", path: "/dev", dev_tmpfs: true, error: "linux.devices[0].path" },
        Case { name: "absolute symlink in the rootfs", path: "/dev/abs/victim", dev_tmpfs: false, error: "/dev/abs/victim" },
        Case { name: "relative symlink in the rootfs", path: "/dev/up/etc/victim", dev_tmpfs: false, error: "/dev/up/etc/victim" },
        Case { name: "symlink as the last component", path: "/dev/last", dev_tmpfs: false, error: "/dev/last" },
        Case { name: "a regular file", path: "/dev/plain", dev_tmpfs: false, error: "/dev/plain" },
        Case { name: "symlink in a volume under /dev", path: "/dev/vol/link/victim", dev_tmpfs: true, error: "/dev/vol/link/victim" },
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut s = spec(&["true"]);
        let mounts = s["mounts"].as_array_mut().unwrap();
        if c.dev_tmpfs {
            mounts.push(
                serde_json::json!({"destination": "/dev/vol", "type": "bind",
                "source": vol, "options": ["rbind"]}),
            );
        } else {
            mounts.retain(|m| {
                !m["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("/dev"))
            });
        }
        s["linux"]["devices"] = serde_json::json!([{"path": c.path, "type": "c",
            "major": 1, "minor": 3, "fileMode": 0o666}]);
        let res = h.create(&format!("d{i}"), s, false).await;
        // Checked (and cleaned up) first: a regression must not leave nodes on the host.
        let made: Vec<_> = victims.iter().filter(|v| v.exists()).collect();
        for v in &made {
            let _ = std::fs::remove_file(v);
        }
        assert!(made.is_empty(), "{}: created {made:?}", c.name);
        let e = res.expect_err(&format!("{}: {} was accepted", c.name, c.path));
        assert!(
            message(&e).contains(c.error),
            "{}: the error does not name {:?}: {}",
            c.name,
            c.error,
            message(&e)
        );
        assert_eq!(
            std::fs::read_to_string(h.rootfs.join("etc/hostname")).unwrap(),
            "image\n",
            "{}",
            c.name
        );
    }
}
