//! Against an agent that is a real guest's PID 1 (set up by agent/tests/testhost/run.sh):
//! HYPER_AGENT_GUEST is its address (vsock://CID:1024), HYPER_AGENT_GUEST_ROOTFS a busybox
//! rootfs inside the guest. Without them the test says it was skipped.
mod common;

use common::*;
use hyper_agent_protocol::agent;
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use std::time::Duration;

async fn read_all(c: &AgentServiceClient, id: &str, exec_id: &str) -> String {
    let mut out = Vec::new();
    loop {
        let r = c
            .read_stdout(
                ctx(),
                &agent::ReadStreamRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    len: 4096,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if r.data.is_empty() {
            break;
        }
        out.extend_from_slice(&r.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn wait(c: &AgentServiceClient, id: &str, exec_id: &str) -> i32 {
    c.wait_process(
        ctx(),
        &agent::WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .status
}

/// `vsock://CID:PORT`, or `hvsock://UDS:PORT` for a VMM's hybrid vsock (Firecracker's
/// protocol: send `CONNECT PORT\n`, read `OK ...\n`, then the stream is the guest's).
async fn connect(addr: &str) -> AgentServiceClient {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r: std::io::Result<ttrpc::r#async::Client> = async {
            if let Some(rest) = addr.strip_prefix("hvsock://") {
                let (uds, port) = rest.rsplit_once(':').expect("hvsock://UDS:PORT");
                let mut s = tokio::net::UnixStream::connect(uds).await?;
                s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
                let mut r = tokio::io::BufReader::new(s);
                let mut line = String::new();
                tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                    .await
                    .map_err(|_| std::io::Error::other("no handshake reply"))??;
                if !line.starts_with("OK") {
                    return Err(std::io::Error::other(format!("handshake: {line:?}")));
                }
                Ok(ttrpc::r#async::Client::new(
                    ttrpc::r#async::transport::Socket::new(r.into_inner()),
                ))
            } else {
                ttrpc::r#async::Client::connect(addr)
                    .await
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))
            }
        }
        .await;
        match r {
            Ok(c) => return AgentServiceClient::new(c),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot reach the agent at {addr}: {e}"),
        }
    }
}

fn create_req(id: &str, rootfs: &str, spec: serde_json::Value) -> agent::CreateContainerRequest {
    agent::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: spec.to_string().into_bytes(),
        rootfs: rootfs.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_in_a_real_guest() {
    let (Ok(addr), Ok(rootfs)) = (
        std::env::var("HYPER_AGENT_GUEST"),
        std::env::var("HYPER_AGENT_GUEST_ROOTFS"),
    ) else {
        skip(
            "containers_in_a_real_guest: HYPER_AGENT_GUEST/HYPER_AGENT_GUEST_ROOTFS not set (agent/tests/testhost/run.sh sets them)",
        );
        return;
    };
    let step = |m: &str| eprintln!("step: {m}");
    step("connecting");
    let c = connect(&addr).await;
    step("connected");
    let v = c.version(ctx(), &Default::default()).await.unwrap();
    assert!(!v.kernel_release.is_empty());
    step("version ok");
    c.create_sandbox(
        ctx(),
        &agent::CreateSandboxRequest {
            sandbox_id: "pod".into(),
            hostname: "guestpod".into(),
            dns: vec!["nameserver 10.0.2.3".into()],
            sandbox_pidns: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    step("sandbox created");
    // A container with limits, its own cgroup namespace and the cgroup file system.
    let mut s = spec(&[
        "sh",
        "-c",
        "hostname; cat /etc/resolv.conf; cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; \
         touch /x 2>/dev/null && echo rw-root",
    ]);
    s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "cgroup"}]);
    s["linux"]["resources"] = serde_json::json!({"memory": {"limit": 67108864}, "pids": {"limit": 64}, "cpu": {"shares": 512}});
    s["mounts"].as_array_mut().unwrap().extend([
        serde_json::json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev"]}),
        serde_json::json!({"destination": "/etc/resolv.conf", "type": "bind", "source": "/host/resolv.conf", "options": ["rbind", "ro"]}),
    ]);
    c.create_container(ctx(), &create_req("a", &rootfs, s))
        .await
        .unwrap();
    c.start_container(
        ctx(),
        &agent::StartContainerRequest {
            container_id: "a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = read_all(&c, "a", "").await;
    assert_eq!(wait(&c, "a", "").await, 0, "{out}");
    assert_eq!(
        out, "guestpod\nnameserver 10.0.2.3\n0::/\n67108864\n64\nrw-root\n",
        "pivot_root, pod files, cgroup namespace and limits in the guest"
    );
    c.remove_container(
        ctx(),
        &agent::RemoveContainerRequest {
            container_id: "a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    step("container a ok");
    // Exec, stats, pause/resume on a long-running one.
    c.create_container(
        ctx(),
        &create_req("b", &rootfs, spec(&["sh", "-c", "while true; do :; done"])),
    )
    .await
    .unwrap();
    c.start_container(
        ctx(),
        &agent::StartContainerRequest {
            container_id: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.exec_process(
        ctx(),
        &agent::ExecProcessRequest {
            container_id: "b".into(),
            exec_id: "e".into(),
            process_json: process(&["sh", "-c", "echo exec-ok; exit 5"])
                .to_string()
                .into_bytes(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(read_all(&c, "b", "e").await, "exec-ok\n");
    assert_eq!(wait(&c, "b", "e").await, 5);
    let st = c
        .stats_container(
            ctx(),
            &agent::StatsContainerRequest {
                container_id: "b".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        st.cpu.usage_usec > 0 && st.memory.usage > 0 && st.pids.current >= 1,
        "{st:?}"
    );
    c.pause_container(
        ctx(),
        &agent::PauseContainerRequest {
            container_id: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.resume_container(
        ctx(),
        &agent::ResumeContainerRequest {
            container_id: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.remove_container(
        ctx(),
        &agent::RemoveContainerRequest {
            container_id: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    step("container b ok");
    // An OOM kill is reported.
    let mut s = spec(&["sh", "-c", "tail /dev/zero"]);
    s["linux"]["resources"] = serde_json::json!({"memory": {"limit": 33554432}});
    c.create_container(ctx(), &create_req("oom", &rootfs, s))
        .await
        .unwrap();
    let c2 = c.clone();
    let ev = tokio::spawn(async move { c2.get_oom_event(ctx(), &Default::default()).await });
    c.start_container(
        ctx(),
        &agent::StartContainerRequest {
            container_id: "oom".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(120), ev)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "oom");
    assert_eq!(wait(&c, "oom", "").await, 137);

    step("oom ok");
    // As PID 1 the agent forwards SIGTERM to every container: a process in the guest's own
    // pid namespace runs `kill -TERM 1`, and a container that traps TERM exits by its trap.
    c.create_container(
        ctx(),
        &create_req(
            "term",
            &rootfs,
            spec(&[
                "sh",
                "-c",
                "trap 'exit 3' TERM; while true; do sleep 0.2; done",
            ]),
        ),
    )
    .await
    .unwrap();
    let mut killer = spec(&["kill", "-TERM", "1"]);
    // No pid namespace of its own or the pod's: its PID 1 is the agent.
    killer["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
    c.create_container(ctx(), &create_req("killer", &rootfs, killer))
        .await
        .unwrap();
    for id in ["term", "killer"] {
        c.start_container(
            ctx(),
            &agent::StartContainerRequest {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Let the trap be set before the signal comes.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(wait(&c, "killer", "").await, 0);
    let term = tokio::time::timeout(Duration::from_secs(60), wait(&c, "term", ""))
        .await
        .expect("the container did not get the forwarded SIGTERM");
    assert_eq!(term, 3, "the container's TERM trap did not run");
    step("sigterm forwarded");
    c.destroy_sandbox(
        ctx(),
        &agent::DestroySandboxRequest {
            sandbox_id: "pod".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The run script checks that the VM goes away after this.
    c.shutdown(ctx(), &Default::default()).await.unwrap();
}
