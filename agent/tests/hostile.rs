//! Every RPC agent.proto declares is served by the real agent, and each one refuses
//! hostile input (unknown ids, bad JSON, escaping paths, duplicates) with the right code,
//! leaving nothing half-created behind.
//!
//! The hostile inputs are tables of named cases: each test runs all of its cases and then
//! fails once, listing every case that went wrong.
mod common;

use common::*;
use hyper_agent_protocol::agent;
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use std::future::Future;
use std::pin::Pin;
use ttrpc::Code;

/// One hostile request and the error it must get.
struct Case<'a> {
    name: String,
    want: Code,
    /// What the error message must contain.
    needle: String,
    call: Pin<Box<dyn Future<Output = ttrpc::Result<()>> + 'a>>,
}

/// The case `name`: `call` must fail with `want` and a message containing `needle`. The
/// call is made when the case runs, not here.
fn case<'a, T>(
    name: impl Into<String>,
    want: Code,
    needle: impl Into<String>,
    call: impl Future<Output = ttrpc::Result<T>> + 'a,
) -> Case<'a> {
    Case {
        name: name.into(),
        want,
        needle: needle.into(),
        call: Box::pin(async move { call.await.map(drop) }),
    }
}

/// What is wrong with `r`, which should be an RPC error `want` whose message contains
/// `needle`; None when nothing is.
fn mismatch(r: ttrpc::Result<()>, want: Code, needle: &str) -> Option<String> {
    let e = match r {
        Ok(()) => return Some(format!("succeeded, expected {want:?} with {needle:?}")),
        Err(e) => e,
    };
    let ttrpc::Error::RpcStatus(s) = &e else {
        return Some(format!("not an RPC status: {e:?}"));
    };
    let mut wrong = Vec::new();
    if s.code() != want {
        wrong.push(format!("code {:?}, expected {want:?}", s.code()));
    }
    if !s.message().contains(needle) {
        wrong.push(format!("message lacks {needle:?}"));
    }
    (!wrong.is_empty()).then(|| format!("{}: {:?}", wrong.join(", "), s.message()))
}

/// Runs `cases` one after the other; returns "case: what went wrong" for each that did
/// not fail as it should.
async fn run_cases(cases: Vec<Case<'_>>) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        if let Some(wrong) = mismatch(c.call.await, c.want, &c.needle) {
            failures.push(format!("{}: {wrong}", c.name));
        }
    }
    failures
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Calls `name` with a harmless request; None when this test does not know `name`.
async fn call(c: &AgentServiceClient, name: &str) -> Option<ttrpc::Result<()>> {
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
        "GuestMetrics" => c.guest_metrics(ctx(), &Default::default()).await.map(drop),
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
        _ => return None,
    };
    Some(r)
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
    let mut failures = Vec::new();
    for name in rest.iter().chain(last.iter()) {
        match call(&h.client, name).await {
            None => failures.push(format!(
                "{name}: agent.proto declares it, which this test does not know: add it"
            )),
            Some(Err(e)) => {
                let msg = message(&e);
                let unsupported = matches!(&e, ttrpc::Error::RpcStatus(s) if s.code() == Code::NOT_FOUND)
                    && msg.contains("not supported");
                if unsupported {
                    failures.push(format!("{name}: {msg}"));
                }
            }
            Some(Ok(())) => {}
        }
    }
    assert_no_failures(&failures);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    if skip_unless_root("unknown_ids_are_not_found") {
        return;
    }
    let h = Harness::start("ids").await;
    let c = &h.client;
    let id = || "nope".to_string();
    let nf = Code::NOT_FOUND;
    let mut failures = run_cases(vec![
        case("StartContainer(nope)", nf, "nope", async move {
            c.start_container(
                ctx(),
                &agent::StartContainerRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("RemoveContainer(nope)", nf, "nope", async move {
            c.remove_container(
                ctx(),
                &agent::RemoveContainerRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("PauseContainer(nope)", nf, "nope", async move {
            c.pause_container(
                ctx(),
                &agent::PauseContainerRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("ResumeContainer(nope)", nf, "nope", async move {
            c.resume_container(
                ctx(),
                &agent::ResumeContainerRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("UpdateContainer(nope)", nf, "nope", async move {
            c.update_container(
                ctx(),
                &agent::UpdateContainerRequest {
                    container_id: id(),
                    resources_json: b"{}".to_vec(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("StatsContainer(nope)", nf, "nope", async move {
            c.stats_container(
                ctx(),
                &agent::StatsContainerRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("ListProcesses(nope)", nf, "nope", async move {
            c.list_processes(
                ctx(),
                &agent::ListProcessesRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("ExecProcess(nope)", nf, "nope", async move {
            c.exec_process(
                ctx(),
                &agent::ExecProcessRequest {
                    container_id: id(),
                    exec_id: "e".into(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("SignalProcess(nope)", nf, "nope", async move {
            c.signal_process(
                ctx(),
                &agent::SignalProcessRequest {
                    container_id: id(),
                    signal: 15,
                    ..Default::default()
                },
            )
            .await
        }),
        case("WaitProcess(nope)", nf, "nope", async move {
            c.wait_process(
                ctx(),
                &agent::WaitProcessRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("WriteStdin(nope)", nf, "nope", async move {
            c.write_stdin(
                ctx(),
                &agent::WriteStreamRequest {
                    container_id: id(),
                    data: b"x".to_vec(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("ReadStdout(nope)", nf, "nope", async move {
            c.read_stdout(
                ctx(),
                &agent::ReadStreamRequest {
                    container_id: id(),
                    len: 1,
                    ..Default::default()
                },
            )
            .await
        }),
        case("ReadStderr(nope)", nf, "nope", async move {
            c.read_stderr(
                ctx(),
                &agent::ReadStreamRequest {
                    container_id: id(),
                    len: 1,
                    ..Default::default()
                },
            )
            .await
        }),
        case("CloseStdin(nope)", nf, "nope", async move {
            c.close_stdin(
                ctx(),
                &agent::CloseStdinRequest {
                    container_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
        case("TtyWinResize(nope)", nf, "nope", async move {
            c.tty_win_resize(
                ctx(),
                &agent::TtyWinResizeRequest {
                    container_id: id(),
                    row: 1,
                    column: 1,
                    ..Default::default()
                },
            )
            .await
        }),
        case("DestroySandbox(nope)", nf, "nope", async move {
            c.destroy_sandbox(
                ctx(),
                &agent::DestroySandboxRequest {
                    sandbox_id: id(),
                    ..Default::default()
                },
            )
            .await
        }),
    ])
    .await;

    // Unknown exec ids of a real container, out-of-range values, stdin not asked for.
    h.create("c", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    h.start_container("c").await.unwrap();
    let invalid = Code::INVALID_ARGUMENT;
    failures.extend(
        run_cases(vec![
            case("WaitProcess(c, ghost)", nf, "ghost", async move {
                c.wait_process(
                    ctx(),
                    &agent::WaitProcessRequest {
                        container_id: "c".into(),
                        exec_id: "ghost".into(),
                        ..Default::default()
                    },
                )
                .await
            }),
            case("ReadStdout(c, ghost)", nf, "ghost", async move {
                c.read_stdout(
                    ctx(),
                    &agent::ReadStreamRequest {
                        container_id: "c".into(),
                        exec_id: "ghost".into(),
                        len: 1,
                        ..Default::default()
                    },
                )
                .await
            }),
            case("SignalProcess(c, ghost)", nf, "ghost", async move {
                c.signal_process(
                    ctx(),
                    &agent::SignalProcessRequest {
                        container_id: "c".into(),
                        exec_id: "ghost".into(),
                        signal: 9,
                        ..Default::default()
                    },
                )
                .await
            }),
            case(
                "SignalProcess(c, signal 999)",
                invalid,
                "signal",
                async move {
                    c.signal_process(
                        ctx(),
                        &agent::SignalProcessRequest {
                            container_id: "c".into(),
                            signal: 999,
                            ..Default::default()
                        },
                    )
                    .await
                },
            ),
            case(
                "SetGuestDateTime(usec 2000000)",
                invalid,
                "usec",
                async move {
                    c.set_guest_date_time(
                        ctx(),
                        &agent::SetGuestDateTimeRequest {
                            sec: 1,
                            usec: 2_000_000,
                            ..Default::default()
                        },
                    )
                    .await
                },
            ),
            case("ReseedRandomDev(no data)", invalid, "data", async move {
                c.reseed_random_dev(ctx(), &agent::ReseedRandomDevRequest::default())
                    .await
            }),
            case(
                "WriteStdin(c, stdin not requested)",
                Code::FAILED_PRECONDITION,
                "stdin",
                async move {
                    c.write_stdin(
                        ctx(),
                        &agent::WriteStreamRequest {
                            container_id: "c".into(),
                            data: b"x".to_vec(),
                            ..Default::default()
                        },
                    )
                    .await
                },
            ),
        ])
        .await,
    );
    if let Err(e) = h.remove("c").await {
        failures.push(format!("RemoveContainer(c): {}", message(&e)));
    }
    assert_no_failures(&failures);
}

/// CreateContainer with `req`, as a future that owns it.
async fn create_container(
    c: &AgentServiceClient,
    req: agent::CreateContainerRequest,
) -> ttrpc::Result<agent::Empty> {
    c.create_container(ctx(), &req).await
}

/// CreateSandbox with `req`, as a future that owns it.
async fn create_sandbox(
    c: &AgentServiceClient,
    req: agent::CreateSandboxRequest,
) -> ttrpc::Result<agent::Empty> {
    c.create_sandbox(ctx(), &req).await
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
    let spec_with = |edit: fn(&mut serde_json::Value)| {
        let mut s = spec(&["true"]);
        edit(&mut s);
        s.to_string().into_bytes()
    };
    // (case, container id, oci_spec_json, what the error must name)
    let specs: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "spec is not JSON",
            "a",
            b"{not json".to_vec(),
            "oci_spec_json",
        ),
        (
            "uid is a string",
            "a",
            spec_with(|s| s["process"]["user"]["uid"] = "root".into()),
            "oci_spec_json.process.user.uid",
        ),
        (
            "no args",
            "a",
            spec_with(|s| s["process"]["args"] = serde_json::json!([])),
            "process.args",
        ),
        (
            "relative mount destination",
            "a",
            spec_with(|s| s["mounts"][0]["destination"] = "proc".into()),
            "mounts[0].destination",
        ),
        (
            "container id with ..",
            "../evil",
            spec(&["true"]).to_string().into_bytes(),
            "container_id",
        ),
    ];
    let mut failures = run_cases(
        specs
            .into_iter()
            .map(|(name, id, json, needle)| {
                case(
                    name,
                    Code::INVALID_ARGUMENT,
                    needle,
                    create_container(c, create(id, json)),
                )
            })
            .collect(),
    )
    .await;

    h.create("c", spec(&["sleep", "1000"]), false)
        .await
        .unwrap();
    failures.extend(
        run_cases(vec![case(
            "container id already in use",
            Code::ALREADY_EXISTS,
            "\"c\"",
            h.create("c", spec(&["true"]), false),
        )])
        .await,
    );
    h.start_container("c").await.unwrap();
    let mut relative_cwd = process(&["true"]);
    relative_cwd["cwd"] = "relative".into();
    failures.extend(
        run_cases(vec![
            case(
                "process_json is not a process",
                Code::INVALID_ARGUMENT,
                "process_json",
                async move {
                    c.exec_process(
                        ctx(),
                        &agent::ExecProcessRequest {
                            container_id: "c".into(),
                            exec_id: "e".into(),
                            process_json: b"[]".to_vec(),
                            ..Default::default()
                        },
                    )
                    .await
                },
            ),
            case(
                "exec with a relative cwd",
                Code::INVALID_ARGUMENT,
                "process_json.cwd",
                h.exec("c", "e", relative_cwd, false),
            ),
            case(
                "memory limit is a string",
                Code::INVALID_ARGUMENT,
                "resources_json.memory.limit",
                async move {
                    c.update_container(
                        ctx(),
                        &agent::UpdateContainerRequest {
                            container_id: "c".into(),
                            resources_json: br#"{"memory": {"limit": "lots"}}"#.to_vec(),
                            ..Default::default()
                        },
                    )
                    .await
                },
            ),
        ])
        .await,
    );
    if let Err(e) = h.remove("c").await {
        failures.push(format!("RemoveContainer(c): {}", message(&e)));
    }
    failures.extend(leftovers(&h, &["a", "c"]).await);
    assert_no_failures(&failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_paths_are_refused() {
    if skip_unless_root("escaping_paths_are_refused") {
        return;
    }
    let h = Harness::start("paths").await;
    let c = &h.client;
    let invalid = Code::INVALID_ARGUMENT;
    let with_rootfs = |rootfs: &str| agent::CreateContainerRequest {
        container_id: "x".into(),
        oci_spec_json: spec(&["true"]).to_string().into_bytes(),
        rootfs: rootfs.into(),
        ..Default::default()
    };
    let dotdot = format!("{}/../../../../etc", h.rootfs.display());
    let link = h.images.join("link");
    std::os::unix::fs::symlink("/", &link).unwrap();
    // A bind source outside, directly or through a symlink.
    let bind_from = |source: serde_json::Value| {
        let mut s = spec(&["true"]);
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": "/host", "type": "bind", "source": source, "options": ["rbind"]}));
        s
    };
    let mut failures = run_cases(vec![
        case(
            "rootfs /etc",
            invalid,
            "outside the allowed roots",
            create_container(c, with_rootfs("/etc")),
        ),
        case(
            "rootfs with ..",
            invalid,
            "'..'",
            create_container(c, with_rootfs(&dotdot)),
        ),
        case(
            "rootfs through a symlink to /",
            invalid,
            "outside the allowed roots",
            create_container(c, with_rootfs(link.to_str().unwrap())),
        ),
        case(
            "relative rootfs",
            invalid,
            "rootfs",
            create_container(c, with_rootfs("relative/rootfs")),
        ),
        case(
            "bind source /etc",
            invalid,
            "mounts[7].source",
            h.create("x", bind_from("/etc".into()), false),
        ),
        case(
            "bind source through a symlink to /",
            invalid,
            "mounts[7].source",
            h.create("x", bind_from(link.to_str().unwrap().into()), false),
        ),
    ])
    .await;
    // A mount destination that is a symlink out of the rootfs lands inside it instead.
    std::os::unix::fs::symlink("/", h.rootfs.join("escape")).unwrap();
    let mut s = spec(&["sh", "-c", "ls /escape/marker"]);
    s["mounts"].as_array_mut().unwrap().push(
        serde_json::json!({"destination": "/escape/tmpx", "type": "tmpfs", "source": "tmpfs"}),
    );
    let (st, _, _) = h.run("y", s).await;
    if st == 0 {
        failures
            .push("mount destination through a symlink to /: ls /escape/marker exited 0".into());
    }
    if std::path::Path::new("/tmpx").exists() {
        failures.push("mount destination through a symlink to /: mount escaped the rootfs".into());
    }
    // Storages must be mounted under the agent's state dir.
    let tmpfs_at = |mp: &str| agent::CreateContainerRequest {
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
    let sneaky = format!("{}/../../etc", h.state.display());
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
    let bad_host = agent::CreateSandboxRequest {
        sandbox_id: "s".into(),
        hostname: "bad host\n".into(),
        ..Default::default()
    };
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
    let mut good_then_bad = half.clone();
    good_then_bad.oci_spec_json = spec(&["true"]).to_string().into_bytes();
    good_then_bad.rootfs = "/etc".into();
    failures.extend(
        run_cases(vec![
            case(
                "storage mount point /etc",
                invalid,
                "storages[0].mount_point",
                create_container(c, tmpfs_at("/etc")),
            ),
            case(
                "storage mount point .. out of the state dir",
                invalid,
                "storages[0].mount_point",
                create_container(c, tmpfs_at(&sneaky)),
            ),
            case(
                "sandbox storage binds /etc",
                invalid,
                "storages[0].source",
                create_sandbox(c, bad_sandbox),
            ),
            case(
                "sandbox hostname with a newline",
                invalid,
                "hostname",
                create_sandbox(c, bad_host),
            ),
            case(
                "good storage, then a bad spec",
                invalid,
                "oci_spec_json",
                create_container(c, half),
            ),
            case(
                "good storage, then a bad rootfs",
                invalid,
                "rootfs",
                create_container(c, good_then_bad),
            ),
        ])
        .await,
    );
    failures.extend(leftovers(&h, &["x"]).await);
    // Nothing was created in a failed sandbox either: a good one can be made now.
    let good = agent::CreateSandboxRequest {
        sandbox_id: "s".into(),
        ..Default::default()
    };
    if let Err(e) = c.create_sandbox(ctx(), &good).await {
        failures.push(format!(
            "a good sandbox after the failed ones: {}",
            message(&e)
        ));
    }
    assert_no_failures(&failures);
}

/// What failed requests left behind of the containers `ids`: the agent still knowing one,
/// its cgroup, mounts under the state dir.
async fn leftovers(h: &Harness, ids: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        let r = h
            .client
            .list_processes(
                ctx(),
                &agent::ListProcessesRequest {
                    container_id: (*id).into(),
                    ..Default::default()
                },
            )
            .await
            .map(drop);
        if let Some(wrong) = mismatch(r, Code::NOT_FOUND, "") {
            found.push(format!("{id} still known: ListProcesses {wrong}"));
        }
        if h.cgroup_root.join(id).exists() {
            found.push(format!("{id}: cgroup left behind"));
        }
    }
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let state = h.state.to_string_lossy();
    let left: Vec<&str> = mi.lines().filter(|l| l.contains(state.as_ref())).collect();
    if !left.is_empty() {
        found.push(format!("mounts left: {left:?}"));
    }
    found
}
