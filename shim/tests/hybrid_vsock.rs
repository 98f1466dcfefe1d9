//! The host side of the hybrid vsock handshake against a stand-in for the VMM's muxer:
//! a unix listener that answers the handshake as told and then relays to a real ttrpc
//! server speaking the agent protocol.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_agent_protocol::agent::{HealthRequest, HealthResponse, health_response};
use hyper_agent_protocol::agent_ttrpc::{AgentService, create_agent_service};
use hyper_shim::agent::{self, Agent, AgentTimeouts, HybridVsockError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::r#async::{Server, TtrpcContext};

struct Healthy;

#[async_trait]
impl AgentService for Healthy {
    async fn health(&self, _: &TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            status: health_response::Status::SERVING.into(),
            ..Default::default()
        })
    }
}

#[derive(Clone, Copy)]
enum Muxer {
    /// Answer `OK 1073741824` to `CONNECT 1024` and relay to the agent server.
    Good,
    /// Answer with this line.
    Reply(&'static str),
    /// Close the connection after reading the request (what the VMM does for a port nobody listens on).
    Close,
    /// Read the request and never answer.
    Silent,
}

async fn spawn_muxer(uds: PathBuf, agent_addr: Option<PathBuf>, mode: Muxer) {
    let listener = UnixListener::bind(&uds).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let agent_addr = agent_addr.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                let mut stream = reader.into_inner();
                match mode {
                    Muxer::Good => {
                        stream.write_all(b"OK 1073741824\n").await.unwrap();
                        let mut agent = UnixStream::connect(agent_addr.unwrap()).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
                    }
                    Muxer::Reply(r) => {
                        stream.write_all(r.as_bytes()).await.unwrap();
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Muxer::Close => drop(stream),
                    Muxer::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
}

async fn agent_server(dir: &Path) -> (Server, PathBuf) {
    let path = dir.join("agent.sock");
    let mut server = Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(create_agent_service(Arc::new(Healthy)));
    server.start().await.unwrap();
    (server, path)
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn handshake_then_ttrpc_reaches_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, agent_path) = agent_server(dir.path()).await;
    let uds = dir.path().join("vsock.sock");
    spawn_muxer(uds.clone(), Some(agent_path), Muxer::Good).await;

    let client = agent::connect(&uds, 1024, T, AgentTimeouts::default())
        .await
        .unwrap();
    // The real Agent over ttrpc: SERVING is Ok.
    client.health().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_replies_are_named() {
    for (reply, shown) in [
        ("NOPE\n", "\"NOPE\""),
        ("OK\n", "\"OK\""),
        ("OK notanumber\n", "\"OK notanumber\""),
        ("OK 12 extra\n", "\"OK 12 extra\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        spawn_muxer(uds.clone(), None, Muxer::Reply(reply)).await;
        let err = agent::connect(&uds, 1024, T, AgentTimeouts::default())
            .await
            .expect_failure();
        assert!(
            matches!(err, HybridVsockError::BadReply { .. }),
            "{reply:?}: {err}"
        );
        assert!(err.to_string().contains(shown), "{err}");
    }
}

#[tokio::test]
async fn an_endless_reply_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let long: &'static str = Box::leak("A".repeat(4096).into_boxed_str());
    spawn_muxer(uds.clone(), None, Muxer::Reply(long)).await;
    let err = agent::connect(&uds, 1024, T, AgentTimeouts::default())
        .await
        .expect_failure();
    assert!(matches!(err, HybridVsockError::BadReply { .. }), "{err}");
}

#[tokio::test]
async fn closed_silent_and_missing_sockets_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let closed = dir.path().join("closed.sock");
    spawn_muxer(closed.clone(), None, Muxer::Close).await;
    let err = agent::connect(&closed, 1024, T, AgentTimeouts::default())
        .await
        .expect_failure();
    assert!(matches!(err, HybridVsockError::Refused { .. }), "{err}");

    let silent = dir.path().join("silent.sock");
    spawn_muxer(silent.clone(), None, Muxer::Silent).await;
    let err = agent::connect(
        &silent,
        1024,
        Duration::from_millis(200),
        AgentTimeouts::default(),
    )
    .await
    .expect_failure();
    assert!(matches!(err, HybridVsockError::Timeout { .. }), "{err}");

    let missing = dir.path().join("missing.sock");
    let err = agent::connect(&missing, 1024, T, AgentTimeouts::default())
        .await
        .expect_failure();
    assert!(err.to_string().contains("missing.sock"), "{err}");
}

#[tokio::test]
async fn retry_waits_for_a_booting_guest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, agent_path) = agent_server(dir.path()).await;
    let uds = dir.path().join("vsock.sock");
    let late = uds.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        spawn_muxer(late, Some(agent_path), Muxer::Good).await;
    });
    let client =
        agent::connect_with_retry(&uds, 1024, Duration::from_secs(5), AgentTimeouts::default())
            .await
            .unwrap();
    client.health().await.unwrap();
    // And gives up with the last error once the deadline passes.
    let err = agent::connect_with_retry(
        &dir.path().join("never.sock"),
        1024,
        Duration::from_millis(200),
        AgentTimeouts::default(),
    )
    .await
    .expect_failure();
    assert!(err.to_string().contains("never.sock"), "{err}");
    server.shutdown().await.unwrap();
}

/// `unwrap_err` without requiring `Debug` of the success type (the generated client has none).
trait ExpectFailure<E> {
    fn expect_failure(self) -> E;
}

impl<T, E> ExpectFailure<E> for Result<T, E> {
    fn expect_failure(self) -> E {
        match self {
            Ok(_) => panic!("expected an error, got a connection"),
            Err(e) => e,
        }
    }
}
