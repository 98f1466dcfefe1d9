//! Talking to hyper-agent inside the VM.
pub mod hybrid_vsock;
pub mod log;

use std::path::Path;
use std::time::Duration;

use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use ttrpc::r#async::Client;
use ttrpc::r#async::transport::Socket;

pub use hybrid_vsock::HybridVsockError;

/// Connects to the agent's ttrpc server through the VMM's hybrid vsock socket.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<AgentServiceClient, HybridVsockError> {
    let stream = hybrid_vsock::connect(uds, port, timeout).await?;
    Ok(AgentServiceClient::new(Client::new(Socket::new(stream))))
}

/// Like [`connect`], but retries until `deadline` passes: the agent listens only once
/// the guest has booted, and the VMM refuses connections to ports nobody listens on.
pub async fn connect_with_retry(
    uds: &Path,
    port: u32,
    deadline: Duration,
) -> Result<AgentServiceClient, HybridVsockError> {
    let start = tokio::time::Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match connect(uds, port, left.min(Duration::from_secs(5))).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() + Duration::from_millis(50) < deadline => {
                tracing::debug!("agent not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
