//! Host tests: the real agent binary on a unix socket, as root, creating real containers
//! from a busybox rootfs. Each test prints "skipped: <reason>" when the host cannot run it.
mod common;

use common::*;
use hyper_agent_protocol::agent;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_and_output_streams() {
    if skip_unless_root("exit_code_and_output_streams") {
        return;
    }
    let h = Harness::start("basic").await;
    let (status, out, err) = h
        .run(
            "c1",
            spec(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]),
        )
        .await;
    assert_eq!(status, 3);
    assert_eq!(out, "hello\n");
    assert_eq!(err, "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_mounts_identity() {
    if skip_unless_root("namespaces_mounts_identity") {
        return;
    }
    let h = Harness::start("ns").await;
    let mut s = spec(&["sh", "-c", "sleep 1000"]);
    s["hostname"] = "box1".into();
    s["linux"]["maskedPaths"] = serde_json::json!(["/etc/group", "/root", "/proc/kcore"]);
    std::fs::write(h.rootfs.join("root/secret"), "x").unwrap();
    h.create("c", s, false).await.unwrap();
    h.start_container("c").await.unwrap();
    let pid = h.pid_of("c", "sleep").await;
    let me = std::process::id() as i32;
    for ns in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
        assert_ne!(
            ns_link(pid, ns),
            ns_link(me, ns),
            "{ns} namespace shared with the host"
        );
        assert!(!ns_link(pid, ns).is_empty());
    }
    // Seen from inside: exec a probe into the running container.
    let mut p = process(&[
        "sh",
        "-c",
        "hostname; echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         wc -c < /etc/group; ls /root | wc -l; touch /proc/sys/x 2>/dev/null || echo ro-proc-sys; \
         awk '$2==\"/dev\"||$2==\"/proc\"||$2==\"/tmp\"||$2==\"/dev/pts\" {print $2, $3}' /proc/mounts | sort; \
         ls /dev/null /dev/zero /dev/urandom /dev/tty >/dev/null && echo devices-ok; \
         id -u; id -g; id -G; echo $FOO; pwd; umask; ulimit -n; echo home=$HOME; \
         grep -E '^(NoNewPrivs|CapEff)' /proc/self/status",
    ]);
    p["user"] =
        serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [2000], "umask": 63});
    p["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    p["cwd"] = "/tmp".into();
    p["noNewPrivileges"] = true.into();
    // A non-root user keeps capabilities across exec only through the ambient set.
    p["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
        "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]});
    p["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
    h.exec("c", "probe", p, false).await.unwrap();
    let out = h.read_all("c", "probe", false).await;
    let st = h.wait("c", "probe").await;
    assert_eq!(st.status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box1", "{out}");
    assert!(lines[1].starts_with("pid=") && lines[1] != "pid=1", "{out}");
    assert_eq!(
        lines[2].trim(),
        "sleep 1000",
        "init is PID 1 of its own namespace: {out}"
    );
    assert_eq!(lines[3], "0", "masked /etc/group must read empty: {out}");
    assert_eq!(lines[4], "0", "masked /root must list empty: {out}");
    assert_eq!(lines[5], "ro-proc-sys", "{out}");
    assert!(
        out.contains("/dev tmpfs\n/dev/pts devpts\n/proc proc\n/tmp tmpfs\n"),
        "{out}"
    );
    assert!(out.contains("devices-ok\n"), "{out}");
    assert!(
        out.contains("\n1000\n1000\n1000 2000\nbar\n/tmp\n0077\n256\nhome=/tmp\n"),
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // CAP_KILL only = bit 5.
    assert!(out.contains("CapEff:\t0000000000000020"), "{out}");
    // A root process in the same container: the spec's capabilities, full uid 0.
    h.exec(
        "c",
        "root",
        process(&["sh", "-c", "id -u; cat /etc/hostname"]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(h.read_all("c", "root", false).await, "0\nimage\n");
    h.remove("c").await.unwrap();
    assert!(!alive(pid), "container process survived removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_and_bind_mounts() {
    if skip_unless_root("readonly_rootfs_and_bind_mounts") {
        return;
    }
    let h = Harness::start("ro").await;
    let vol = h.images.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("data"), "from-host\n").unwrap();
    let mut s = spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null || echo ro-root; cat /vol/data; echo new > /vol/out; \
         touch /rovol/y 2>/dev/null || echo ro-vol",
    ]);
    s["root"]["readonly"] = true.into();
    s["mounts"].as_array_mut().unwrap().extend([
        serde_json::json!({"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]}),
        serde_json::json!({"destination": "/rovol", "type": "bind", "source": vol, "options": ["rbind", "ro"]}),
    ]);
    let (st, out, err) = h.run("c", s).await;
    assert_eq!(
        (st, out.as_str()),
        (0, "ro-root\nfrom-host\nro-vol\n"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "new\n");
}

/// What CRI's pods ask that runc gives: namespaced sysctls although the container's
/// /proc/sys is read-only, and a shared or rshared rootfs propagation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysctls_and_rootfs_propagation() {
    if skip_unless_root("sysctls_and_rootfs_propagation") {
        return;
    }
    let h = Harness::start("sysctl").await;
    for propagation in ["rslave", "rshared", "shared", "rprivate"] {
        let mut s = spec(&[
            "sh",
            "-c",
            "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_forward",
        ]);
        s["linux"]["sysctl"] =
            serde_json::json!({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"});
        s["linux"]["rootfsPropagation"] = propagation.into();
        let (st, out, err) = h.run(&format!("c-{propagation}"), s).await;
        assert_eq!(st, 0, "{propagation}: {err}");
        assert_eq!(out, "1\n1\n", "{propagation}: the sysctls in the container");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_and_wait_statuses() {
    if skip_unless_root("signals_and_wait_statuses") {
        return;
    }
    let h = Harness::start("sig").await;
    // A handler makes SIGTERM deliverable to a namespace's PID 1.
    h.create(
        "t",
        spec(&[
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ]),
        false,
    )
    .await
    .unwrap();
    h.start_container("t").await.unwrap();
    h.read_until("t", "", "ready", 20).await;
    h.signal("t", "", libc::SIGTERM, false).await.unwrap();
    let st = h.wait("t", "").await;
    assert_eq!(st.status, 7);
    // Signalling an exited process: NOT_FOUND, not a crash.
    let e = h.signal("t", "", libc::SIGTERM, false).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND, "{}", message(&e));
    h.remove("t").await.unwrap();

    h.create("k", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    h.start_container("k").await.unwrap();
    h.signal("k", "", libc::SIGKILL, true).await.unwrap();
    assert_eq!(h.wait("k", "").await.status, 128 + libc::SIGKILL);
    // Several waiters all get the status.
    let (a, b) = tokio::join!(h.wait("k", ""), h.wait("k", ""));
    assert_eq!((a.status, b.status), (137, 137));
    h.remove("k").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_blocks_until_start() {
    if skip_unless_root("create_blocks_until_start") {
        return;
    }
    let h = Harness::start("start").await;
    h.create("c", spec(&["sh", "-c", "echo started"]), false)
        .await
        .unwrap();
    let pid = h.pids("c").await[0].pid;
    assert!(alive(pid));
    // Nothing runs before Start.
    let r = h
        .client
        .read_stdout(
            short_ctx(500),
            &agent::ReadStreamRequest {
                container_id: "c".into(),
                len: 100,
                ..Default::default()
            },
        )
        .await;
    assert!(r.is_err(), "output before start: {r:?}");
    // No exec into a container that has not started.
    let e = h
        .exec("c", "e", process(&["true"]), false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    h.start_container("c").await.unwrap();
    assert_eq!(h.read_all("c", "", false).await, "started\n");
    assert_eq!(h.wait("c", "").await.status, 0);
    let e = h.start_container("c").await.unwrap_err();
    assert_eq!(
        code(&e),
        ttrpc::Code::FAILED_PRECONDITION,
        "{}",
        message(&e)
    );
    h.remove("c").await.unwrap();

    // Remove a created, never started container: its process goes.
    h.create("d", spec(&["true"]), false).await.unwrap();
    let pid = h.pids("d").await[0].pid;
    h.remove("d").await.unwrap();
    assert!(!alive(pid));

    // A missing program fails Start with the exec error.
    h.create("bad", spec(&["/bin/does-not-exist"]), false)
        .await
        .unwrap();
    let e = h.start_container("bad").await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    assert!(message(&e).contains("does-not-exist"), "{}", message(&e));
    assert_eq!(h.wait("bad", "").await.status, 127);
    h.remove("bad").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_eof_and_tty() {
    if skip_unless_root("exec_stdin_eof_and_tty") {
        return;
    }
    let h = Harness::start("exec").await;
    // stdin of a container's init, then EOF.
    h.create("cat", spec(&["cat"]), true).await.unwrap();
    h.start_container("cat").await.unwrap();
    let w = h
        .client
        .write_stdin(
            ctx(),
            &agent::WriteStreamRequest {
                container_id: "cat".into(),
                data: b"abc\n".to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.len, 4);
    h.client
        .close_stdin(
            ctx(),
            &agent::CloseStdinRequest {
                container_id: "cat".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(h.read_all("cat", "", false).await, "abc\n");
    assert_eq!(h.wait("cat", "").await.status, 0);
    h.remove("cat").await.unwrap();

    h.create("c", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    h.start_container("c").await.unwrap();
    h.exec(
        "c",
        "e1",
        process(&["sh", "-c", "echo from-exec; exit 4"]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(h.read_all("c", "e1", false).await, "from-exec\n");
    assert_eq!(h.wait("c", "e1").await.status, 4);
    let e = h
        .exec("c", "e1", process(&["true"]), false)
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS);
    // Once removed (containerd deletes each finished exec) the id is free again; a
    // running exec cannot be removed, an unknown one is NotFound.
    let remove = |exec_id: &str| agent::RemoveProcessRequest {
        container_id: "c".into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    h.client.remove_process(ctx(), &remove("e1")).await.unwrap();
    let e = h
        .client
        .remove_process(ctx(), &remove("e1"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
    h.exec("c", "e1", process(&["sleep", "1000"]), false)
        .await
        .unwrap();
    let e = h
        .client
        .remove_process(ctx(), &remove("e1"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    h.client
        .signal_process(
            ctx(),
            &agent::SignalProcessRequest {
                container_id: "c".into(),
                exec_id: "e1".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(h.wait("c", "e1").await.status, 137);

    // A container whose init has a terminal: a tty the container knows by name (its
    // /dev/console), stdout and stderr both come through it, nothing is lost at exit.
    let mut t = spec(&[
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo isatty; echo on-stderr >&2; echo tty-exit; exit 3",
    ]);
    t["process"]["terminal"] = true.into();
    h.create("t", t, false).await.unwrap();
    h.start_container("t").await.unwrap();
    let out = h.read_all("t", "", false).await;
    assert_eq!(h.wait("t", "").await.status, 3);
    assert!(out.starts_with("/dev/console\r\n"), "{out:?}");
    for want in ["isatty", "on-stderr", "tty-exit"] {
        assert!(out.contains(want), "{want} missing from {out:?}");
    }
    h.remove("t").await.unwrap();

    // A terminal: size from consoleSize, then resized.
    let mut p = process(&[
        "sh",
        "-c",
        "[ -t 0 ] && echo isatty; stty size; read x; stty size",
    ]);
    p["terminal"] = true.into();
    p["consoleSize"] = serde_json::json!({"height": 24, "width": 80});
    h.exec("c", "tty", p, true).await.unwrap();
    h.read_until("c", "tty", "24 80", 20).await;
    h.client
        .tty_win_resize(
            ctx(),
            &agent::TtyWinResizeRequest {
                container_id: "c".into(),
                exec_id: "tty".into(),
                row: 30,
                column: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.client
        .write_stdin(
            ctx(),
            &agent::WriteStreamRequest {
                container_id: "c".into(),
                exec_id: "tty".into(),
                data: b"go\r".to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rest = h.read_all("c", "tty", false).await;
    assert!(rest.contains("30 100"), "{rest:?}");
    assert_eq!(h.wait("c", "tty").await.status, 0);
    // No terminal, no resize.
    let e = h
        .client
        .tty_win_resize(
            ctx(),
            &agent::TtyWinResizeRequest {
                container_id: "c".into(),
                exec_id: "e1".into(),
                row: 1,
                column: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);

    // When init exits, exec'd processes are killed.
    h.exec("c", "long", process(&["sleep", "1000"]), false)
        .await
        .unwrap();
    let listed = h.pids("c").await;
    assert!(listed.iter().any(|p| p.exec_id == "long"), "{listed:?}");
    h.signal("c", "", libc::SIGKILL, false).await.unwrap();
    assert_eq!(h.wait("c", "").await.status, 137);
    assert_eq!(h.wait("c", "long").await.status, 137);
    h.remove("c").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_back_pressure_is_bounded() {
    if skip_unless_root("output_back_pressure_is_bounded") {
        return;
    }
    let h = Harness::start("bp").await;
    // 8 MiB of output nobody reads yet: the writer must block, not the agent's memory grow.
    h.create(
        "big",
        spec(&["sh", "-c", "head -c 8388608 /dev/zero; echo done >&2"]),
        false,
    )
    .await
    .unwrap();
    h.start_container("big").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = h
        .client
        .read_stderr(
            short_ctx(300),
            &agent::ReadStreamRequest {
                container_id: "big".into(),
                len: 100,
                ..Default::default()
            },
        )
        .await;
    assert!(
        r.is_err(),
        "writer finished without anyone reading 8 MiB: {r:?}"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", h.agent_pid)).unwrap();
    let kb: u64 = rss
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        kb < 64 * 1024,
        "agent RSS {kb} kB while a container floods stdout"
    );
    let out = h.read_all("big", "", false).await;
    assert_eq!(out.len(), 8 << 20);
    assert_eq!(h.read_all("big", "", true).await, "done\n");
    assert_eq!(h.wait("big", "").await.status, 0);
    h.remove("big").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_pause_resume_remove() {
    if skip_unless_root("stats_pause_resume_remove") {
        return;
    }
    let h = Harness::start("cg").await;
    if !h.has_cgroups() {
        skip("stats_pause_resume_remove: no cgroup2 mount on this host");
        return;
    }
    h.create("c", spec(&["sh", "-c", "while true; do :; done"]), false)
        .await
        .unwrap();
    h.start_container("c").await.unwrap();
    let cg = h.cgroup_root.join("c");
    assert!(cg.is_dir());
    let pid = h.pids("c").await[0].pid;
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{procs}"
    );
    let stats = |h: &Harness| {
        let c = h.client.clone();
        async move {
            c.stats_container(
                ctx(),
                &agent::StatsContainerRequest {
                    container_id: "c".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s1 = stats(&h).await;
    assert!(s1.cpu.usage_usec > 0, "{s1:?}");
    assert!(s1.pids.current >= 1, "{s1:?}");
    let pause = agent::PauseContainerRequest {
        container_id: "c".into(),
        ..Default::default()
    };
    h.client.pause_container(ctx(), &pause).await.unwrap();
    assert!(
        std::fs::read_to_string(cg.join("cgroup.events"))
            .unwrap()
            .contains("frozen 1")
    );
    let e = h.client.pause_container(ctx(), &pause).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
    let a = stats(&h).await.cpu.usage_usec;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = stats(&h).await.cpu.usage_usec;
    assert!(b - a < 20_000, "paused container used {} us of CPU", b - a);
    h.client
        .resume_container(
            ctx(),
            &agent::ResumeContainerRequest {
                container_id: "c".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = stats(&h).await.cpu.usage_usec;
    assert!(c - b > 50_000, "resumed container used only {} us", c - b);
    // Limits this cgroup2 has no controller for are refused, naming the field.
    let e = h
        .client
        .update_container(
            ctx(),
            &agent::UpdateContainerRequest {
                container_id: "c".into(),
                resources_json: br#"{"pids": {"limit": 10}}"#.to_vec(),
                ..Default::default()
            },
        )
        .await;
    let has_pids = cg.join("pids.max").exists();
    match e {
        Ok(_) => assert!(has_pids),
        Err(e) => {
            assert!(!has_pids);
            assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION);
            assert!(message(&e).starts_with("pids.limit"), "{}", message(&e));
        }
    }
    h.remove("c").await.unwrap();
    assert!(!cg.exists(), "cgroup left behind");
    assert!(!alive(pid));
    let e = h
        .client
        .list_processes(
            ctx(),
            &agent::ListProcessesRequest {
                container_id: "c".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_without_stealing_statuses() {
    if skip_unless_root("orphans_are_reaped_without_stealing_statuses") {
        return;
    }
    let h = Harness::start("reap").await;
    // No pid namespace: orphans come back to the agent (a subreaper), which must reap
    // them, while still reporting each container's own status.
    let mut s = spec(&[
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do (sleep 0.2 &) ; done; exit 9",
    ]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}]);
    let (st, _, err) = h.run("c", s).await;
    assert_eq!(st, 9, "{err}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| {
            let rest: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            rest.first() == Some(&"Z") && rest.get(1) == Some(&h.agent_pid.to_string().as_str())
        })
        .collect();
    assert!(zombies.is_empty(), "zombies of the agent: {zombies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_shares_namespaces_and_files() {
    if skip_unless_root("sandbox_shares_namespaces_and_files") {
        return;
    }
    let h = Harness::start("pod").await;
    let vol_mp = h.state.join("storage/vol1");
    h.client
        .create_sandbox(
            ctx(),
            &agent::CreateSandboxRequest {
                sandbox_id: "pod1".into(),
                hostname: "podhost".into(),
                dns: vec!["nameserver 10.0.0.53".into(), "search svc.local".into()],
                hosts: vec!["10.1.1.1 db".into()],
                sandbox_pidns: true,
                host_task_pid: 999999,
                host_netns: "/var/run/netns/cni-x".into(),
                storages: vec![agent::Storage {
                    driver: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["size=1m".into()],
                    mount_point: vol_mp.to_string_lossy().into_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Host paths naming the pod's namespaces (meaningless in a guest) become the pod's.
    let pod_spec = |args: &[&str]| {
        let mut s = spec(args);
        s["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"},
            {"type": "ipc", "path": "/proc/999999/ns/ipc"},
            {"type": "uts", "path": "/proc/999999/ns/uts"},
            {"type": "network", "path": "/var/run/netns/cni-x"}
        ]);
        s["mounts"].as_array_mut().unwrap().extend([
            serde_json::json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/x/resolv.conf", "options": ["rbind", "ro"]}),
            serde_json::json!({"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/x/hosts", "options": ["rbind", "ro"]}),
            serde_json::json!({"destination": "/vol", "type": "bind", "source": vol_mp, "options": ["rbind"]}),
        ]);
        s
    };
    h.create(
        "a",
        pod_spec(&["sh", "-c", "echo shared > /vol/f; sleep 1000"]),
        false,
    )
    .await
    .unwrap();
    h.start_container("a").await.unwrap();
    let pa = h.pids("a").await[0].pid;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vol_mp.join("f").exists() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, out, err) = h
        .run(
            "b",
            pod_spec(&[
                "sh",
                "-c",
                "hostname; cat /etc/resolv.conf; grep db /etc/hosts; cat /vol/f; ps -o comm",
            ]),
        )
        .await;
    assert_eq!(st, 0, "{err}");
    assert!(
        out.starts_with("podhost\nnameserver 10.0.0.53\nsearch svc.local\n10.1.1.1 db\nshared\n"),
        "{out}"
    );
    assert!(
        out.contains("sleep"),
        "containers of the pod share a pid namespace: {out}"
    );
    // A host path that is not the pod's is refused, naming it.
    let mut foreign = pod_spec(&["true"]);
    foreign["linux"]["namespaces"][4]["path"] = "/proc/1/ns/net".into();
    let e = h.create("c", foreign, false).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        format!("{e:?}").contains("/proc/1/ns/net\\\" is not one of this pod's namespaces"),
        "{e:?}"
    );
    let me = std::process::id() as i32;
    assert_ne!(ns_link(pa, "ipc"), ns_link(me, "ipc"));
    assert_ne!(ns_link(pa, "pid"), ns_link(me, "pid"));
    // The pod's network is the guest's own (here: the agent's).
    assert_eq!(ns_link(pa, "net"), ns_link(h.agent_pid, "net"));
    let e = h
        .client
        .create_sandbox(
            ctx(),
            &agent::CreateSandboxRequest {
                sandbox_id: "pod2".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS);
    h.client
        .destroy_sandbox(
            ctx(),
            &agent::DestroySandboxRequest {
                sandbox_id: "pod1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        !alive(pa),
        "destroying the sandbox leaves no container process"
    );
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(h.state.to_str().unwrap()),
        "mounts left under the state dir"
    );
}

/// CRI's pid mode POD: the pod's sandbox container (the one whose id is the pod's) has a
/// PID namespace of its own, and a container whose spec names the sandbox's pid namespace
/// by containerd's host path joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pid_mode_pod_joins_the_sandbox_container() {
    if skip_unless_root("cri_pid_mode_pod_joins_the_sandbox_container") {
        return;
    }
    let h = Harness::start("cripid").await;
    h.client
        .create_sandbox(
            ctx(),
            &agent::CreateSandboxRequest {
                sandbox_id: "pod1".into(),
                host_task_pid: 4242,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let with_ns = |args: &[&str], pid: serde_json::Value| {
        let mut s = spec(args);
        s["linux"]["namespaces"] = serde_json::json!([pid, {"type": "mount"},
            {"type": "ipc", "path": "/proc/4242/ns/ipc"}, {"type": "uts", "path": "/proc/4242/ns/uts"}]);
        s
    };
    // Before the sandbox container exists, its pid namespace cannot be joined.
    let joins = serde_json::json!({"type": "pid", "path": "/proc/4242/ns/pid"});
    let e = h
        .create("early", with_ns(&["true"], joins.clone()), false)
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("sandbox container"), "{e:?}");
    h.create(
        "pod1",
        with_ns(&["sleep", "1000"], serde_json::json!({"type": "pid"})),
        false,
    )
    .await
    .unwrap();
    h.start_container("pod1").await.unwrap();
    let (st, out, err) = h
        .run("app", with_ns(&["sh", "-c", "ps -o pid,comm"], joins))
        .await;
    assert_eq!(st, 0, "{err}");
    assert!(
        out.lines().any(|l| l.split_whitespace().eq(["1", "sleep"])),
        "the sandbox container is PID 1 of the app's pid namespace: {out}"
    );
    let (st, out, _) = h
        .run(
            "own",
            with_ns(
                &["sh", "-c", "ps -o comm"],
                serde_json::json!({"type": "pid"}),
            ),
        )
        .await;
    assert_eq!(st, 0);
    assert!(
        !out.contains("sleep"),
        "pid mode CONTAINER sees only itself: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_network_via_rtnetlink() {
    if skip_unless_root("sandbox_network_via_rtnetlink") {
        return;
    }
    if !std::path::Path::new("/usr/bin/unshare").exists()
        || !std::path::Path::new("/usr/sbin/ip").exists()
    {
        skip("sandbox_network_via_rtnetlink: needs unshare and ip");
        return;
    }
    // The agent in a fresh network namespace, as in a guest.
    let h = Harness::start_with("net", &["/usr/bin/unshare", "-n"]).await;
    let ip = |args: &[&str]| {
        let o = std::process::Command::new("/usr/bin/nsenter")
            .arg("-t")
            .arg(h.agent_pid.to_string())
            .arg("-n")
            .arg("/usr/sbin/ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ip(&[
        "link",
        "add",
        "v0",
        "address",
        "02:00:00:00:00:aa",
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ]);
    // A device that still has a template's address (a restored VM): found by it, given
    // the pod's.
    ip(&[
        "link",
        "add",
        "w0",
        "address",
        "02:68:79:00:00:00",
        "type",
        "veth",
        "peer",
        "name",
        "w1",
    ]);
    h.client
        .create_sandbox(
            ctx(),
            &agent::CreateSandboxRequest {
                sandbox_id: "net".into(),
                interfaces: vec![
                    agent::Interface {
                        name: "eth7".into(),
                        hw_addr: "02:00:00:00:00:aa".into(),
                        mtu: 1400,
                        addresses: vec![agent::IPAddress {
                            address: "10.9.8.7".into(),
                            prefix_len: 24,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    agent::Interface {
                        name: "eth9".into(),
                        hw_addr: "02:00:00:00:00:cc".into(),
                        device_hw_addr: "02:68:79:00:00:00".into(),
                        ..Default::default()
                    },
                ],
                routes: vec![
                    agent::Route {
                        dest: "10.10.0.0/16".into(),
                        gateway: "10.9.8.1".into(),
                        ..Default::default()
                    },
                    agent::Route {
                        dest: "".into(),
                        gateway: "10.9.8.254".into(),
                        ..Default::default()
                    },
                ],
                neighbors: vec![agent::ArpNeighbor {
                    to_ip: "10.9.8.1".into(),
                    device: "eth7".into(),
                    ll_addr: "02:00:00:00:00:01".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let link = ip(&["-o", "link", "show", "eth7"]);
    assert!(
        link.contains("mtu 1400") && link.contains("02:00:00:00:00:aa"),
        "{link}"
    );
    assert!(link.contains(",UP"), "{link}");
    let renamed = ip(&["-o", "link", "show", "eth9"]);
    assert!(
        renamed.contains("link/ether 02:00:00:00:00:cc"),
        "{renamed}"
    );
    assert!(ip(&["-o", "addr", "show", "eth7"]).contains("10.9.8.7/24"));
    let routes = ip(&["route"]);
    assert!(routes.contains("10.10.0.0/16 via 10.9.8.1"), "{routes}");
    assert!(routes.contains("default via 10.9.8.254"), "{routes}");
    let neigh = ip(&["neigh", "show", "dev", "eth7"]);
    // iproute2 versions differ in what they print between the address and the state.
    assert!(
        neigh.contains("10.9.8.1 lladdr 02:00:00:00:00:01") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    assert!(ip(&["-o", "link", "show", "lo"]).contains("UP"));

    // An unknown MAC is the caller's mistake, named.
    h.client
        .destroy_sandbox(
            ctx(),
            &agent::DestroySandboxRequest {
                sandbox_id: "net".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = h
        .client
        .create_sandbox(
            ctx(),
            &agent::CreateSandboxRequest {
                sandbox_id: "net2".into(),
                interfaces: vec![agent::Interface {
                    name: "eth8".into(),
                    hw_addr: "02:00:00:00:00:bb".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        message(&e).contains("interfaces[0].hw_addr"),
        "{}",
        message(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_update_and_oom_event() {
    if skip_unless_root("cgroup_limits_update_and_oom_event") {
        return;
    }
    let h = Harness::start("limits").await;
    let controllers =
        std::fs::read_to_string(h.cgroup_root.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
        .collect();
    if !missing.is_empty() {
        skip(&format!(
            "cgroup_limits_update_and_oom_event: cgroup2 here lacks {missing:?} (cgroup v1 hybrid host); agent/tests/testhost/run.sh runs it with every controller"
        ));
        return;
    }
    let mut s = spec(&["sh", "-c", "echo up; tail /dev/zero"]);
    s["linux"]["resources"] = serde_json::json!({
        "memory": {"limit": 33554432},
        "pids": {"limit": 50},
        "cpu": {"quota": 50000, "period": 100000, "shares": 1024}
    });
    h.create("m", s, false).await.unwrap();
    let cg = h.cgroup_root.join("m");
    let read = |f: &str| {
        std::fs::read_to_string(cg.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("memory.max"), "33554432");
    assert_eq!(read("pids.max"), "50");
    assert_eq!(read("cpu.max"), "50000 100000");
    h.client
        .update_container(
            ctx(),
            &agent::UpdateContainerRequest {
                container_id: "m".into(),
                resources_json: br#"{"memory": {"limit": 67108864}}"#.to_vec(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(read("memory.max"), "67108864");
    let st = h
        .client
        .stats_container(
            ctx(),
            &agent::StatsContainerRequest {
                container_id: "m".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(st.memory.usage_limit, 67108864);
    assert_eq!(st.pids.limit, 50);
    // tail buffers /dev/zero (no newline) until the OOM killer comes.
    let client = h.client.clone();
    let oom = tokio::spawn(async move {
        client
            .get_oom_event(ctx(), &agent::GetOOMEventRequest::default())
            .await
    });
    h.start_container("m").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(60), oom)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "m");
    assert_eq!(h.wait("m", "").await.status, 137);
    h.remove("m").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_is_enforced() {
    if skip_unless_root("seccomp_profile_is_enforced") {
        return;
    }
    let h = Harness::start("seccomp").await;
    for nnp in [true, false] {
        let id = format!("s{nnp}");
        let mut s = spec(&["sleep", "1000"]);
        s["process"]["noNewPrivileges"] = nnp.into();
        s["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["not_a_syscall_at_all"], "action": "SCMP_ACT_KILL"}
            ]
        });
        h.create(&id, s, false).await.unwrap();
        h.start_container(&id).await.unwrap();
        let pid = h.pids(&id).await[0].pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status.contains("Seccomp:\t2"),
            "init not filtered (nnp={nnp})"
        );
        // Exec'd processes get the container's filter too.
        h.exec(
            &id,
            "probe",
            process(&[
                "sh",
                "-c",
                "mkdir /tmp/d 2>&1 || echo denied; echo ok > /tmp/f && cat /tmp/f",
            ]),
            false,
        )
        .await
        .unwrap();
        let out = h.read_all(&id, "probe", false).await;
        assert!(
            out.contains("Operation not permitted") && out.contains("denied\nok\n"),
            "{out}"
        );
        h.remove(&id).await.unwrap();
    }
    let mut s = spec(&["true"]);
    s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    let e = h.create("bad", s, false).await.unwrap_err();
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT);
    assert!(
        message(&e).contains("linux.seccomp.defaultAction"),
        "{}",
        message(&e)
    );
}
