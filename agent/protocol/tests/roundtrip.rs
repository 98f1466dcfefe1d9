//! Client ↔ server round trip over `unix://` for every RPC in agent.proto.
//!
//! The server below records each call with the request field that identifies it and
//! answers with data derived from the request, so a field lost or renamed on either side
//! fails an assertion. The last test checks that every RPC declared in the `.proto`
//! was exercised here, so a new RPC cannot be added without a round trip.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hyper_agent_protocol::agent::*;
use hyper_agent_protocol::agent_ttrpc::{AgentService, AgentServiceClient, create_agent_service};
use ttrpc::r#async::{Client, Server, TtrpcContext};
use ttrpc::context;

type Calls = Arc<Mutex<Vec<String>>>;

struct Recorder {
    calls: Calls,
}

impl Recorder {
    fn record(&self, method: &str, key: impl std::fmt::Display) {
        self.calls.lock().unwrap().push(format!("{method}:{key}"));
    }
}

fn empty() -> ttrpc::Result<Empty> {
    Ok(Empty::default())
}

#[async_trait]
impl AgentService for Recorder {
    async fn health(&self, _: &TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        self.record("Health", "");
        Ok(HealthResponse {
            status: health_response::Status::SERVING.into(),
            ..Default::default()
        })
    }
    async fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        self.record("Version", "");
        Ok(VersionResponse {
            agent_version: "9.9.9".into(),
            protocol_version: hyper_agent_protocol::PROTOCOL_VERSION,
            kernel_release: "6.1.0-hyper".into(),
            ..Default::default()
        })
    }
    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        r: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        let iface = &r.interfaces[0];
        let key = format!(
            "{}/{}/{}/{}/{}/{}/{}/{}/{}",
            r.sandbox_id,
            r.hostname,
            r.dns.join(","),
            iface.hw_addr,
            iface.addresses[0].address,
            r.routes[0].gateway,
            r.neighbors[0].ll_addr,
            r.storages[0].source,
            r.sandbox_pidns
        );
        self.record("CreateSandbox", key);
        empty()
    }
    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        r: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("DestroySandbox", r.sandbox_id);
        empty()
    }
    async fn create_container(
        &self,
        _: &TtrpcContext,
        r: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let spec = String::from_utf8_lossy(&r.oci_spec_json).into_owned();
        self.record(
            "CreateContainer",
            format!("{}/{spec}/{}/{}", r.container_id, r.rootfs, r.stdin),
        );
        empty()
    }
    async fn start_container(
        &self,
        _: &TtrpcContext,
        r: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("StartContainer", r.container_id);
        empty()
    }
    async fn remove_container(
        &self,
        _: &TtrpcContext,
        r: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(
            "RemoveContainer",
            format!("{}/{}", r.container_id, r.timeout),
        );
        empty()
    }
    async fn pause_container(
        &self,
        _: &TtrpcContext,
        r: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("PauseContainer", r.container_id);
        empty()
    }
    async fn resume_container(
        &self,
        _: &TtrpcContext,
        r: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("ResumeContainer", r.container_id);
        empty()
    }
    async fn update_container(
        &self,
        _: &TtrpcContext,
        r: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        let res = String::from_utf8_lossy(&r.resources_json).into_owned();
        self.record("UpdateContainer", format!("{}/{res}", r.container_id));
        empty()
    }
    async fn stats_container(
        &self,
        _: &TtrpcContext,
        r: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.record("StatsContainer", &r.container_id);
        let mut memory = MemoryStats {
            usage: 4096,
            ..Default::default()
        };
        memory.stat.insert("anon".into(), 42);
        Ok(StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 7,
                ..Default::default()
            })
            .into(),
            memory: Some(memory).into(),
            pids: Some(PidsStats {
                current: 3,
                limit: 10,
                ..Default::default()
            })
            .into(),
            io: vec![IoEntry {
                major: 254,
                rbytes: 512,
                ..Default::default()
            }],
            hugetlb: vec![HugetlbStats {
                pagesize: "2MB".into(),
                ..Default::default()
            }],
            network: vec![NetworkStats {
                name: r.container_id,
                rx_bytes: 99,
                ..Default::default()
            }],
            ..Default::default()
        })
    }
    async fn guest_metrics(
        &self,
        _: &TtrpcContext,
        _: GuestMetricsRequest,
    ) -> ttrpc::Result<GuestMetricsResponse> {
        self.record("GuestMetrics", "");
        let mut m = GuestMetricsResponse {
            load1: 0.25,
            tasks_total: 40,
            cpu: Some(GuestCpuSeconds {
                user: 1.5,
                steal: 0.125,
                ..Default::default()
            })
            .into(),
            uptime_seconds: 9.5,
            ..Default::default()
        };
        m.meminfo_bytes.insert("MemTotal".into(), 1 << 28);
        Ok(m)
    }
    async fn list_processes(
        &self,
        _: &TtrpcContext,
        r: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.record("ListProcesses", &r.container_id);
        Ok(ListProcessesResponse {
            processes: vec![ProcessInfo {
                pid: 1,
                exec_id: "e1".into(),
                command: format!("sh-in-{}", r.container_id),
                ..Default::default()
            }],
            ..Default::default()
        })
    }
    async fn exec_process(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let p = String::from_utf8_lossy(&r.process_json).into_owned();
        self.record(
            "ExecProcess",
            format!("{}/{}/{p}/{}", r.container_id, r.exec_id, r.stdin),
        );
        empty()
    }
    async fn remove_process(
        &self,
        _: &TtrpcContext,
        r: RemoveProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("RemoveProcess", format!("{}/{}", r.container_id, r.exec_id));
        empty()
    }
    async fn signal_process(
        &self,
        _: &TtrpcContext,
        r: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(
            "SignalProcess",
            format!("{}/{}/{}/{}", r.container_id, r.exec_id, r.signal, r.all),
        );
        empty()
    }
    async fn wait_process(
        &self,
        _: &TtrpcContext,
        r: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.record("WaitProcess", format!("{}/{}", r.container_id, r.exec_id));
        Ok(WaitProcessResponse {
            status: 137,
            pid: 77,
            ..Default::default()
        })
    }
    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        r: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        self.record("WriteStdin", format!("{}/{}", r.container_id, r.exec_id));
        Ok(WriteStreamResponse {
            len: r.data.len() as u32,
            ..Default::default()
        })
    }
    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        r: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.record(
            "ReadStdout",
            format!("{}/{}/{}", r.container_id, r.exec_id, r.len),
        );
        Ok(ReadStreamResponse {
            data: b"out".to_vec(),
            ..Default::default()
        })
    }
    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        r: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.record(
            "ReadStderr",
            format!("{}/{}/{}", r.container_id, r.exec_id, r.len),
        );
        Ok(ReadStreamResponse {
            data: b"err".to_vec(),
            ..Default::default()
        })
    }
    async fn close_stdin(&self, _: &TtrpcContext, r: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.record("CloseStdin", format!("{}/{}", r.container_id, r.exec_id));
        empty()
    }
    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        r: TtyWinResizeRequest,
    ) -> ttrpc::Result<Empty> {
        self.record(
            "TtyWinResize",
            format!("{}/{}/{}x{}", r.container_id, r.exec_id, r.row, r.column),
        );
        empty()
    }
    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        self.record("GetOOMEvent", "");
        Ok(OOMEvent {
            container_id: "oom-victim".into(),
            ..Default::default()
        })
    }
    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        r: SetGuestDateTimeRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("SetGuestDateTime", format!("{}.{}", r.sec, r.usec));
        empty()
    }
    async fn reseed_random_dev(
        &self,
        _: &TtrpcContext,
        r: ReseedRandomDevRequest,
    ) -> ttrpc::Result<Empty> {
        self.record("ReseedRandomDev", r.data.len());
        empty()
    }
    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.record("Shutdown", "");
        empty()
    }
}

/// A server on a fresh unix socket; the tempdir keeps the socket path alive.
async fn start_server(
    service: Arc<dyn AgentService + Send + Sync>,
) -> (Server, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix://{}/agent.sock", dir.path().display());
    let mut server = Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_agent_service(service));
    server.start().await.unwrap();
    (server, dir, addr)
}

fn ctx() -> context::Context {
    context::with_timeout(5_000_000_000)
}

/// Calls every RPC once with distinctive arguments and returns the method names called.
async fn call_everything(c: &AgentServiceClient) -> Vec<&'static str> {
    let mut called = Vec::new();

    let h = c.health(ctx(), &HealthRequest::default()).await.unwrap();
    assert_eq!(h.status, health_response::Status::SERVING.into());
    called.push("Health");

    let v = c.version(ctx(), &VersionRequest::default()).await.unwrap();
    assert_eq!(
        (v.agent_version.as_str(), v.kernel_release.as_str()),
        ("9.9.9", "6.1.0-hyper")
    );
    assert_eq!(v.protocol_version, hyper_agent_protocol::PROTOCOL_VERSION);
    called.push("Version");

    let sandbox = CreateSandboxRequest {
        sandbox_id: "pod1".into(),
        hostname: "web-0".into(),
        dns: vec!["nameserver 10.0.0.10".into(), "search svc".into()],
        interfaces: vec![Interface {
            name: "eth0".into(),
            hw_addr: "02:00:00:00:00:01".into(),
            mtu: 1500,
            addresses: vec![IPAddress {
                family: ipaddress::Family::V4.into(),
                address: "10.88.0.5".into(),
                prefix_len: 16,
                ..Default::default()
            }],
            ..Default::default()
        }],
        routes: vec![Route {
            gateway: "10.88.0.1".into(),
            device: "eth0".into(),
            ..Default::default()
        }],
        neighbors: vec![ArpNeighbor {
            to_ip: "10.88.0.1".into(),
            ll_addr: "02:00:00:00:00:ff".into(),
            ..Default::default()
        }],
        storages: vec![Storage {
            driver: "virtiofs".into(),
            source: "hypershare".into(),
            mount_point: "/run/hyper/shared".into(),
            ..Default::default()
        }],
        sandbox_pidns: true,
        ..Default::default()
    };
    c.create_sandbox(ctx(), &sandbox).await.unwrap();
    called.push("CreateSandbox");

    let cid = || "c1".to_string();
    c.create_container(
        ctx(),
        &CreateContainerRequest {
            container_id: cid(),
            oci_spec_json: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
            rootfs: "/run/hyper/shared/c1/rootfs".into(),
            stdin: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("CreateContainer");
    c.start_container(
        ctx(),
        &StartContainerRequest {
            container_id: cid(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("StartContainer");
    c.pause_container(
        ctx(),
        &PauseContainerRequest {
            container_id: cid(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("PauseContainer");
    c.resume_container(
        ctx(),
        &ResumeContainerRequest {
            container_id: cid(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("ResumeContainer");
    c.update_container(
        ctx(),
        &UpdateContainerRequest {
            container_id: cid(),
            resources_json: br#"{"pids":{"limit":5}}"#.to_vec(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("UpdateContainer");

    let stats = c
        .stats_container(
            ctx(),
            &StatsContainerRequest {
                container_id: cid(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stats.cpu.usage_usec, 7);
    assert_eq!(stats.memory.usage, 4096);
    assert_eq!(stats.memory.stat.get("anon"), Some(&42));
    assert_eq!((stats.pids.current, stats.pids.limit), (3, 10));
    assert_eq!((stats.io[0].major, stats.io[0].rbytes), (254, 512));
    assert_eq!(stats.hugetlb[0].pagesize, "2MB");
    assert_eq!(
        (stats.network[0].name.as_str(), stats.network[0].rx_bytes),
        ("c1", 99)
    );
    called.push("StatsContainer");

    let g = c
        .guest_metrics(ctx(), &GuestMetricsRequest::default())
        .await
        .unwrap();
    assert_eq!(g.meminfo_bytes.get("MemTotal"), Some(&(1 << 28)));
    assert_eq!((g.load1, g.tasks_total, g.uptime_seconds), (0.25, 40, 9.5));
    assert_eq!((g.cpu.user, g.cpu.steal), (1.5, 0.125));
    called.push("GuestMetrics");

    let ps = c
        .list_processes(
            ctx(),
            &ListProcessesRequest {
                container_id: cid(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ps.processes[0].command, "sh-in-c1");
    assert_eq!(ps.processes[0].exec_id, "e1");
    called.push("ListProcesses");

    c.exec_process(
        ctx(),
        &ExecProcessRequest {
            container_id: cid(),
            exec_id: "e1".into(),
            process_json: br#"{"args":["ls"]}"#.to_vec(),
            stdin: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("ExecProcess");
    c.remove_process(
        ctx(),
        &RemoveProcessRequest {
            container_id: cid(),
            exec_id: "e1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("RemoveProcess");
    c.signal_process(
        ctx(),
        &SignalProcessRequest {
            container_id: cid(),
            exec_id: "e1".into(),
            signal: 15,
            all: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("SignalProcess");
    let w = c
        .wait_process(
            ctx(),
            &WaitProcessRequest {
                container_id: cid(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((w.status, w.pid), (137, 77));
    called.push("WaitProcess");

    let n = c
        .write_stdin(
            ctx(),
            &WriteStreamRequest {
                container_id: cid(),
                exec_id: "e1".into(),
                data: vec![0u8; 1000],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n.len, 1000);
    called.push("WriteStdin");
    let read = ReadStreamRequest {
        container_id: cid(),
        exec_id: "e1".into(),
        len: 4096,
        ..Default::default()
    };
    assert_eq!(c.read_stdout(ctx(), &read).await.unwrap().data, b"out");
    called.push("ReadStdout");
    assert_eq!(c.read_stderr(ctx(), &read).await.unwrap().data, b"err");
    called.push("ReadStderr");
    c.close_stdin(
        ctx(),
        &CloseStdinRequest {
            container_id: cid(),
            exec_id: "e1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("CloseStdin");
    c.tty_win_resize(
        ctx(),
        &TtyWinResizeRequest {
            container_id: cid(),
            exec_id: "e1".into(),
            row: 24,
            column: 80,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("TtyWinResize");

    let oom = c
        .get_oom_event(ctx(), &GetOOMEventRequest::default())
        .await
        .unwrap();
    assert_eq!(oom.container_id, "oom-victim");
    called.push("GetOOMEvent");
    c.set_guest_date_time(
        ctx(),
        &SetGuestDateTimeRequest {
            sec: 1_700_000_000,
            usec: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("SetGuestDateTime");
    c.reseed_random_dev(
        ctx(),
        &ReseedRandomDevRequest {
            data: vec![7; 32],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("ReseedRandomDev");
    c.remove_container(
        ctx(),
        &RemoveContainerRequest {
            container_id: cid(),
            timeout: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("RemoveContainer");
    c.destroy_sandbox(
        ctx(),
        &DestroySandboxRequest {
            sandbox_id: "pod1".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    called.push("DestroySandbox");
    c.shutdown(ctx(), &ShutdownRequest::default())
        .await
        .unwrap();
    called.push("Shutdown");
    called
}

#[tokio::test]
async fn every_rpc_round_trips_with_its_fields() {
    let calls: Calls = Arc::default();
    let (mut server, _dir, addr) = start_server(Arc::new(Recorder {
        calls: calls.clone(),
    }))
    .await;
    let client = AgentServiceClient::new(Client::connect(&addr).await.unwrap());

    let called = call_everything(&client).await;

    // What the server saw, field by field, proves both sides encode the same messages.
    let seen = calls.lock().unwrap().clone();
    let expected = [
        "Health:",
        "Version:",
        "CreateSandbox:pod1/web-0/nameserver 10.0.0.10,search svc/02:00:00:00:00:01/10.88.0.5/10.88.0.1/02:00:00:00:00:ff/hypershare/true",
        r#"CreateContainer:c1/{"ociVersion":"1.0.2"}//run/hyper/shared/c1/rootfs/true"#,
        "StartContainer:c1",
        "PauseContainer:c1",
        "ResumeContainer:c1",
        r#"UpdateContainer:c1/{"pids":{"limit":5}}"#,
        "StatsContainer:c1",
        "GuestMetrics:",
        "ListProcesses:c1",
        r#"ExecProcess:c1/e1/{"args":["ls"]}/false"#,
        "RemoveProcess:c1/e1",
        "SignalProcess:c1/e1/15/true",
        "WaitProcess:c1/e1",
        "WriteStdin:c1/e1",
        "ReadStdout:c1/e1/4096",
        "ReadStderr:c1/e1/4096",
        "CloseStdin:c1/e1",
        "TtyWinResize:c1/e1/24x80",
        "GetOOMEvent:",
        "SetGuestDateTime:1700000000.5",
        "ReseedRandomDev:32",
        "RemoveContainer:c1/10",
        "DestroySandbox:pod1",
        "Shutdown:",
    ];
    assert_eq!(seen, expected);

    // Every RPC the .proto declares was called above, and nothing else.
    let declared: BTreeSet<&str> = hyper_agent_protocol::rpc_names().into_iter().collect();
    let exercised: BTreeSet<&str> = called.into_iter().collect();
    assert_eq!(
        declared, exercised,
        "agent.proto and this round-trip test disagree"
    );
    server.shutdown().await.unwrap();
}

/// A server that leaves a method to the generated default answers NOT_FOUND: this is why
/// the test above must cover every RPC (and why the agent has the same check).
#[tokio::test]
async fn an_unimplemented_method_is_detected() {
    struct HealthOnly;
    #[async_trait]
    impl AgentService for HealthOnly {}
    let (mut server, _dir, addr) = start_server(Arc::new(HealthOnly)).await;
    let client = AgentServiceClient::new(Client::connect(&addr).await.unwrap());
    let err = client
        .wait_process(ctx(), &WaitProcessRequest::default())
        .await
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
            assert!(s.message().contains("WaitProcess"), "{}", s.message());
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

#[test]
fn rpc_names_are_parsed_from_the_proto() {
    let names = hyper_agent_protocol::rpc_names();
    assert_eq!(names.len(), 26, "{names:?}");
    assert_eq!(names.first(), Some(&"Health"));
    assert!(names.contains(&"GetOOMEvent"));
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicate rpc names: {names:?}");
}
