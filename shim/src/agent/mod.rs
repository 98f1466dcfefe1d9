//! The agent inside the VM as the shim sees it: [`Agent`], the calls the shim makes, each
//! with its own deadline. [`TtrpcAgent`] is the real one (ttrpc over the VMM's hybrid
//! vsock); tests use fakes. Nothing outside this module touches the generated client.
pub mod debug_console;
pub mod hybrid_vsock;
pub mod log;
pub mod ready;
pub mod ttrpc_agent;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use hyper_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, GuestMetricsResponse, StatsContainerResponse,
};

pub use hybrid_vsock::HybridVsockError;
pub use ttrpc_agent::{AgentTimeouts, TtrpcAgent};

/// A failed agent call: which call, and the status the agent (or the transport) gave.
#[derive(Debug, Clone, thiserror::Error)]
#[error("agent {call}: {message}")]
pub struct AgentError {
    pub call: &'static str,
    pub code: ttrpc::Code,
    pub message: String,
}

impl AgentError {
    pub fn new(call: &'static str, code: ttrpc::Code, message: impl Into<String>) -> Self {
        Self {
            call,
            code,
            message: message.into(),
        }
    }
}

/// One of a process's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutStream {
    Stdout,
    Stderr,
}

/// Identifies a process: a container's init (`exec_id` empty) or one of its execs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProcessRef {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessRef {
    pub fn new(container_id: &str, exec_id: &str) -> Self {
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
        }
    }
}

/// The agent calls the shim makes. Calls the guest answers promptly carry the request
/// deadline; `create_container` its own (it may mount and set up a lot); the calls that
/// block until something happens in the guest (`wait_process`, `read_stream`,
/// `oom_event`) carry none.
#[async_trait]
pub trait Agent: Send + Sync {
    /// Ok once the agent serves requests.
    async fn health(&self) -> Result<(), AgentError>;
    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<(), AgentError>;
    async fn destroy_sandbox(&self, sandbox_id: &str) -> Result<(), AgentError>;
    /// Mixes `seed` into the guest's kernel RNG, credits it and reseeds the CRNG.
    async fn reseed_random(&self, seed: Vec<u8>) -> Result<(), AgentError>;
    /// Sets the guest's wall clock.
    async fn set_guest_time(&self, now: std::time::SystemTime) -> Result<(), AgentError>;

    async fn create_container(&self, req: CreateContainerRequest) -> Result<(), AgentError>;
    async fn start_container(&self, container_id: &str) -> Result<(), AgentError>;
    async fn remove_container(&self, container_id: &str) -> Result<(), AgentError>;
    async fn pause_container(&self, container_id: &str) -> Result<(), AgentError>;
    async fn resume_container(&self, container_id: &str) -> Result<(), AgentError>;
    /// `resources_json` is an OCI `LinuxResources` as JSON.
    async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), AgentError>;
    async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, AgentError>;
    /// The guest's memory, load and CPU time.
    async fn guest_metrics(&self) -> Result<GuestMetricsResponse, AgentError>;
    /// Guest pids of the container's processes.
    async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, AgentError>;

    /// Starts exec `p.exec_id` from an OCI process (JSON).
    async fn exec_process(
        &self,
        p: &ProcessRef,
        process_json: Vec<u8>,
        stdin: bool,
    ) -> Result<(), AgentError>;
    async fn remove_process(&self, p: &ProcessRef) -> Result<(), AgentError>;
    async fn signal_process(
        &self,
        p: &ProcessRef,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError>;
    /// Blocks until the process exits; returns its status (128 + signal if killed).
    async fn wait_process(&self, p: &ProcessRef) -> Result<u32, AgentError>;
    async fn resize_tty(&self, p: &ProcessRef, rows: u32, cols: u32) -> Result<(), AgentError>;

    /// Writes what the process's stdin takes now; returns how many bytes that was.
    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> Result<usize, AgentError>;
    /// EOF for the process's stdin (^D on a terminal).
    async fn close_stdin(&self, p: &ProcessRef) -> Result<(), AgentError>;
    /// Blocks until output is there; empty means the stream ended.
    async fn read_stream(
        &self,
        p: &ProcessRef,
        which: OutStream,
        max: u32,
    ) -> Result<Vec<u8>, AgentError>;

    /// Blocks until a container of the sandbox is OOM-killed; returns its id.
    async fn oom_event(&self) -> Result<String, AgentError>;
}

/// Connects to the agent through the VMM's hybrid vsock socket `uds`, without retrying.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
    timeouts: AgentTimeouts,
) -> Result<TtrpcAgent, HybridVsockError> {
    let stream = hybrid_vsock::connect(uds, port, timeout).await?;
    Ok(TtrpcAgent::new(stream, timeouts))
}

/// Like [`connect`], but retries until `deadline` passes: the agent listens only once
/// the guest has booted, and the VMM refuses connections to ports nobody listens on.
pub async fn connect_with_retry(
    uds: &Path,
    port: u32,
    deadline: Duration,
    timeouts: AgentTimeouts,
) -> Result<TtrpcAgent, HybridVsockError> {
    let start = tokio::time::Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match connect(uds, port, left.min(Duration::from_secs(5)), timeouts).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() + Duration::from_millis(50) < deadline => {
                tracing::debug!("agent not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
