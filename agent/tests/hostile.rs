//! Every RPC agent.proto declares is served by the real agent, and each one refuses
//! hostile input (unknown ids, bad JSON, escaping paths, duplicates) with the right code,
//! leaving nothing half-created behind.
mod common;

use common::*;
use hyper_agent_protocol::agent;
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use ttrpc::Code;

/// Calls `name` with a harmless request; returns the error, if any.
async fn call(c: &AgentServiceClient, name: &str) -> Option<ttrpc::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let r = match name {
        "Health" => c.health(ctx(), &Default::default()).await.map(drop),
        "Version" => c.version(ctx(), &Default::default()).await.map(drop),
        "CreateSandbox" => c.create_sandbox(ctx(), &Default::default()).await.map(drop),
        "DestroySandbox" => c
            .destroy_sandbox(ctx(), &Default::default())
            .await
            .map(drop),
        "CreateContainer" => c
            .create_container(ctx(), &Default::default())
            .await
            .map(drop),
        "StartContainer" => c
            .start_container(ctx(), &Default::default())
            .await
            .map(drop),
        "RemoveContainer" => c
            .remove_container(ctx(), &Default::default())
            .await
            .map(drop),
        "PauseContainer" => c
            .pause_container(ctx(), &Default::default())
            .await
            .map(drop),
        "ResumeContainer" => c
            .resume_container(ctx(), &Default::default())
            .await
            .map(drop),
        "UpdateContainer" => c
            .update_container(ctx(), &Default::default())
            .await
            .map(drop),
        "StatsContainer" => c
            .stats_container(ctx(), &Default::default())
            .await
            .map(drop),
        "ListProcesses" => c.list_processes(ctx(), &Default::default()).await.map(drop),
        "ExecProcess" => c.exec_process(ctx(), &Default::default()).await.map(drop),
        "RemoveProcess" => c.remove_process(ctx(), &Default::default()).await.map(drop),
        "SignalProcess" => c.signal_process(ctx(), &Default::default()).await.map(drop),
        "WaitProcess" => c.wait_process(ctx(), &Default::default()).await.map(drop),
        "WriteStdin" => c.write_stdin(ctx(), &Default::default()).await.map(drop),
        "ReadStdout" => c.read_stdout(ctx(), &Default::default()).await.map(drop),
        "ReadStderr" => c.read_stderr(ctx(), &Default::default()).await.map(drop),
        "CloseStdin" => c.close_stdin(ctx(), &Default::default()).await.map(drop),
        "TtyWinResize" => c.tty_win_resize(ctx(), &Default::default()).await.map(drop),
        // Blocks until an OOM kill: a deadline error is the expected answer.
        "GetOOMEvent" => c
            .get_oom_event(short_ctx(300), &Default::default())
            .await
            .map(drop),
        // The current time, so the host clock does not move.
        "SetGuestDateTime" => c
            .set_guest_date_time(
                ctx(),
                &agent::SetGuestDateTimeRequest {
                    sec: now.as_secs() as i64,
                    usec: now.subsec_micros() as i64,
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        "ReseedRandomDev" => c
            .reseed_random_dev(
                ctx(),
                &agent::ReseedRandomDevRequest {
                    data: vec![7; 64],
                    ..Default::default()
                },
            )
            .await
            .map(drop),
        "Shutdown" => c.shutdown(ctx(), &Default::default()).await.map(drop),
        other => panic!("agent.proto declares {other}, which this test does not know: add it"),
    };
    r.err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_rpc_is_served() {
    if skip_unless_root("every_declared_rpc_is_served") {
        return;
    }
    let mut h = Harness::start("rpcs").await;
    let names = hyper_agent_protocol::rpc_names();
    assert!(names.len() >= 20 && names.contains(&"Health"), "{names:?}");
    // Shutdown last: it stops the agent.
    let (last, rest): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| **n == "Shutdown");
    for name in rest.iter().chain(last.iter()) {
        if let Some(e) = call(&h.client, name).await {
            let msg = message(&e);
            let unsupported = matches!(&e, ttrpc::Error::RpcStatus(s) if s.code() == Code::NOT_FOUND)
                && msg.contains("not supported");
            assert!(!unsupported, "{name}: {msg}");
        }
    }
    // Shutdown really stops a non-init agent, cleanly.
    let agent = h.agent.as_mut().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = agent.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent still running after Shutdown"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    h.agent = None;
}

async fn expect(r: ttrpc::Result<impl std::fmt::Debug>, want: Code, needle: &str) {
    let e = r.expect_err("expected an error");
    assert_eq!(code(&e), want, "{}", message(&e));
    assert!(
        message(&e).contains(needle),
        "{:?} lacks {needle:?}",
        message(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    if skip_unless_root("unknown_ids_are_not_found") {
        return;
    }
    let h = Harness::start("ids").await;
    let c = &h.client;
    let id = || "nope".to_string();
    expect(
        c.start_container(
            ctx(),
            &agent::StartContainerRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.remove_container(
            ctx(),
            &agent::RemoveContainerRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.pause_container(
            ctx(),
            &agent::PauseContainerRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.resume_container(
            ctx(),
            &agent::ResumeContainerRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.update_container(
            ctx(),
            &agent::UpdateContainerRequest {
                container_id: id(),
                resources_json: b"{}".to_vec(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.stats_container(
            ctx(),
            &agent::StatsContainerRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.list_processes(
            ctx(),
            &agent::ListProcessesRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.exec_process(
            ctx(),
            &agent::ExecProcessRequest {
                container_id: id(),
                exec_id: "e".into(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.signal_process(
            ctx(),
            &agent::SignalProcessRequest {
                container_id: id(),
                signal: 15,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.write_stdin(
            ctx(),
            &agent::WriteStreamRequest {
                container_id: id(),
                data: b"x".to_vec(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.read_stdout(
            ctx(),
            &agent::ReadStreamRequest {
                container_id: id(),
                len: 1,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.read_stderr(
            ctx(),
            &agent::ReadStreamRequest {
                container_id: id(),
                len: 1,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.close_stdin(
            ctx(),
            &agent::CloseStdinRequest {
                container_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.tty_win_resize(
            ctx(),
            &agent::TtyWinResizeRequest {
                container_id: id(),
                row: 1,
                column: 1,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;
    expect(
        c.destroy_sandbox(
            ctx(),
            &agent::DestroySandboxRequest {
                sandbox_id: id(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "nope",
    )
    .await;

    // Unknown exec ids of a real container.
    h.create("c", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    h.start_container("c").await.unwrap();
    expect(
        c.wait_process(
            ctx(),
            &agent::WaitProcessRequest {
                container_id: "c".into(),
                exec_id: "ghost".into(),
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "ghost",
    )
    .await;
    expect(
        c.read_stdout(
            ctx(),
            &agent::ReadStreamRequest {
                container_id: "c".into(),
                exec_id: "ghost".into(),
                len: 1,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "ghost",
    )
    .await;
    expect(
        c.signal_process(
            ctx(),
            &agent::SignalProcessRequest {
                container_id: "c".into(),
                exec_id: "ghost".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .await,
        Code::NOT_FOUND,
        "ghost",
    )
    .await;
    // Out-of-range values.
    expect(
        c.signal_process(
            ctx(),
            &agent::SignalProcessRequest {
                container_id: "c".into(),
                signal: 999,
                ..Default::default()
            },
        )
        .await,
        Code::INVALID_ARGUMENT,
        "signal",
    )
    .await;
    expect(
        c.set_guest_date_time(
            ctx(),
            &agent::SetGuestDateTimeRequest {
                sec: 1,
                usec: 2_000_000,
                ..Default::default()
            },
        )
        .await,
        Code::INVALID_ARGUMENT,
        "usec",
    )
    .await;
    expect(
        c.reseed_random_dev(ctx(), &agent::ReseedRandomDevRequest::default())
            .await,
        Code::INVALID_ARGUMENT,
        "data",
    )
    .await;
    // Stdin that was not asked for.
    expect(
        c.write_stdin(
            ctx(),
            &agent::WriteStreamRequest {
                container_id: "c".into(),
                data: b"x".to_vec(),
                ..Default::default()
            },
        )
        .await,
        Code::FAILED_PRECONDITION,
        "stdin",
    )
    .await;
    h.remove("c").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_specs_are_invalid_arguments() {
    if skip_unless_root("bad_json_and_specs_are_invalid_arguments") {
        return;
    }
    let h = Harness::start("json").await;
    let c = &h.client;
    let create = |id: &str, json: Vec<u8>| agent::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: json,
        rootfs: h.rootfs.to_string_lossy().into_owned(),
        ..Default::default()
    };
    expect(
        c.create_container(ctx(), &create("a", b"{not json".to_vec()))
            .await,
        Code::INVALID_ARGUMENT,
        "oci_spec_json",
    )
    .await;
    let mut s = spec(&["true"]);
    s["process"]["user"]["uid"] = "root".into();
    expect(
        c.create_container(ctx(), &create("a", s.to_string().into_bytes()))
            .await,
        Code::INVALID_ARGUMENT,
        "oci_spec_json.process.user.uid",
    )
    .await;
    let mut s = spec(&["true"]);
    s["process"]["args"] = serde_json::json!([]);
    expect(
        c.create_container(ctx(), &create("a", s.to_string().into_bytes()))
            .await,
        Code::INVALID_ARGUMENT,
        "process.args",
    )
    .await;
    let mut s = spec(&["true"]);
    s["mounts"][0]["destination"] = "proc".into();
    expect(
        c.create_container(ctx(), &create("a", s.to_string().into_bytes()))
            .await,
        Code::INVALID_ARGUMENT,
        "mounts[0].destination",
    )
    .await;
    expect(
        c.create_container(
            ctx(),
            &create("../evil", spec(&["true"]).to_string().into_bytes()),
        )
        .await,
        Code::INVALID_ARGUMENT,
        "container_id",
    )
    .await;

    h.create("c", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    expect(
        h.create("c", spec(&["true"]), false).await,
        Code::ALREADY_EXISTS,
        "\"c\"",
    )
    .await;
    h.start_container("c").await.unwrap();
    expect(
        c.exec_process(
            ctx(),
            &agent::ExecProcessRequest {
                container_id: "c".into(),
                exec_id: "e".into(),
                process_json: b"[]".to_vec(),
                ..Default::default()
            },
        )
        .await,
        Code::INVALID_ARGUMENT,
        "process_json",
    )
    .await;
    let mut p = process(&["true"]);
    p["cwd"] = "relative".into();
    expect(
        h.exec("c", "e", p, false).await,
        Code::INVALID_ARGUMENT,
        "process_json.cwd",
    )
    .await;
    expect(
        c.update_container(
            ctx(),
            &agent::UpdateContainerRequest {
                container_id: "c".into(),
                resources_json: br#"{"memory": {"limit": "lots"}}"#.to_vec(),
                ..Default::default()
            },
        )
        .await,
        Code::INVALID_ARGUMENT,
        "resources_json.memory.limit",
    )
    .await;
    h.remove("c").await.unwrap();
    assert_no_leftovers(&h, &["a", "c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_paths_are_refused() {
    if skip_unless_root("escaping_paths_are_refused") {
        return;
    }
    let h = Harness::start("paths").await;
    let c = &h.client;
    let with_rootfs = |rootfs: &str| agent::CreateContainerRequest {
        container_id: "x".into(),
        oci_spec_json: spec(&["true"]).to_string().into_bytes(),
        rootfs: rootfs.into(),
        ..Default::default()
    };
    expect(
        c.create_container(ctx(), &with_rootfs("/etc")).await,
        Code::INVALID_ARGUMENT,
        "outside the allowed roots",
    )
    .await;
    let dotdot = format!("{}/../../../../etc", h.rootfs.display());
    expect(
        c.create_container(ctx(), &with_rootfs(&dotdot)).await,
        Code::INVALID_ARGUMENT,
        "'..'",
    )
    .await;
    let link = h.images.join("link");
    std::os::unix::fs::symlink("/", &link).unwrap();
    expect(
        c.create_container(ctx(), &with_rootfs(link.to_str().unwrap()))
            .await,
        Code::INVALID_ARGUMENT,
        "outside the allowed roots",
    )
    .await;
    expect(
        c.create_container(ctx(), &with_rootfs("relative/rootfs"))
            .await,
        Code::INVALID_ARGUMENT,
        "rootfs",
    )
    .await;
    // A bind source outside, directly or through a symlink.
    let mut s = spec(&["true"]);
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind"]}));
    expect(
        h.create("x", s, false).await,
        Code::INVALID_ARGUMENT,
        "mounts[7].source",
    )
    .await;
    let mut s = spec(&["true"]);
    s["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/host", "type": "bind", "source": link, "options": ["rbind"]}));
    expect(
        h.create("x", s, false).await,
        Code::INVALID_ARGUMENT,
        "mounts[7].source",
    )
    .await;
    // A mount destination that is a symlink out of the rootfs lands inside it instead.
    std::os::unix::fs::symlink("/", h.rootfs.join("escape")).unwrap();
    let mut s = spec(&["sh", "-c", "ls /escape/marker"]);
    s["mounts"].as_array_mut().unwrap().push(
        serde_json::json!({"destination": "/escape/tmpx", "type": "tmpfs", "source": "tmpfs"}),
    );
    let (st, _, _) = h.run("y", s).await;
    assert_ne!(st, 0);
    assert!(
        !std::path::Path::new("/tmpx").exists(),
        "mount escaped the rootfs"
    );
    // Storages must be mounted under the agent's state dir.
    let st = |mp: &str| agent::CreateContainerRequest {
        container_id: "x".into(),
        oci_spec_json: spec(&["true"]).to_string().into_bytes(),
        rootfs: h.rootfs.to_string_lossy().into_owned(),
        storages: vec![agent::Storage {
            driver: "tmpfs".into(),
            source: "tmpfs".into(),
            mount_point: mp.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    expect(
        c.create_container(ctx(), &st("/etc")).await,
        Code::INVALID_ARGUMENT,
        "storages[0].mount_point",
    )
    .await;
    let sneaky = format!("{}/../../etc", h.state.display());
    expect(
        c.create_container(ctx(), &st(&sneaky)).await,
        Code::INVALID_ARGUMENT,
        "storages[0].mount_point",
    )
    .await;
    let bad_sandbox = agent::CreateSandboxRequest {
        sandbox_id: "s".into(),
        storages: vec![agent::Storage {
            driver: "bind".into(),
            source: "/etc".into(),
            mount_point: h.state.join("m").to_string_lossy().into_owned(),
            ..Default::default()
        }],
        ..Default::default()
    };
    expect(
        c.create_sandbox(ctx(), &bad_sandbox).await,
        Code::INVALID_ARGUMENT,
        "storages[0].source",
    )
    .await;
    let bad_host = agent::CreateSandboxRequest {
        sandbox_id: "s".into(),
        hostname: "bad host\n".into(),
        ..Default::default()
    };
    expect(
        c.create_sandbox(ctx(), &bad_host).await,
        Code::INVALID_ARGUMENT,
        "hostname",
    )
    .await;
    // A failed storage after a good one: the good one is unmounted again.
    let half = agent::CreateContainerRequest {
        container_id: "x".into(),
        oci_spec_json: b"{}".to_vec(),
        rootfs: h.rootfs.to_string_lossy().into_owned(),
        storages: vec![agent::Storage {
            driver: "tmpfs".into(),
            source: "tmpfs".into(),
            mount_point: h.state.join("ok").to_string_lossy().into_owned(),
            ..Default::default()
        }],
        ..Default::default()
    };
    expect(
        c.create_container(ctx(), &half).await,
        Code::INVALID_ARGUMENT,
        "oci_spec_json",
    )
    .await;
    let mut good_then_bad = half.clone();
    good_then_bad.oci_spec_json = spec(&["true"]).to_string().into_bytes();
    good_then_bad.rootfs = "/etc".into();
    expect(
        c.create_container(ctx(), &good_then_bad).await,
        Code::INVALID_ARGUMENT,
        "rootfs",
    )
    .await;
    assert_no_leftovers(&h, &["x"]).await;
    // Nothing was created in a failed sandbox either: a good one can be made now.
    c.create_sandbox(
        ctx(),
        &agent::CreateSandboxRequest {
            sandbox_id: "s".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

async fn assert_no_leftovers(h: &Harness, ids: &[&str]) {
    for id in ids {
        let e = h
            .client
            .list_processes(
                ctx(),
                &agent::ListProcessesRequest {
                    container_id: (*id).into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(code(&e), Code::NOT_FOUND, "{id} still known");
        assert!(
            !h.cgroup_root.join(id).exists(),
            "cgroup of {id} left behind"
        );
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = h.state.to_string_lossy();
    let left: Vec<&str> = mi.lines().filter(|l| l.contains(state.as_ref())).collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}
