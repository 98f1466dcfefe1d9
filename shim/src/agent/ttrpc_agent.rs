//! [`Agent`] over ttrpc: the generated `AgentServiceClient` on a hybrid vsock stream.
use std::time::Duration;

use async_trait::async_trait;
use hyper_agent_protocol::agent::{self as pb, CreateContainerRequest, CreateSandboxRequest};
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use tokio::net::UnixStream;
use ttrpc::r#async::Client;
use ttrpc::r#async::transport::Socket;
use ttrpc::context::{self, Context};

use super::{Agent, AgentError, OutStream, ProcessRef};

/// Deadlines of the calls the guest answers promptly (config `agent.*_timeout_ms`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AgentTimeouts {
    pub request: Duration,
    pub create_container: Duration,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(10),
            create_container: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct TtrpcAgent {
    client: AgentServiceClient,
    timeouts: AgentTimeouts,
}

fn deadline(d: Duration) -> Context {
    context::with_timeout(d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Keeps the agent's status code, so containerd sees NOT_FOUND as NOT_FOUND.
fn err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> AgentError {
    move |e| match e {
        ttrpc::Error::RpcStatus(s) => AgentError::new(call, s.code(), s.message()),
        other => AgentError::new(call, ttrpc::Code::UNAVAILABLE, other.to_string()),
    }
}

impl TtrpcAgent {
    pub fn new(stream: UnixStream, timeouts: AgentTimeouts) -> Self {
        Self {
            client: AgentServiceClient::new(Client::new(Socket::new(stream))),
            timeouts,
        }
    }

    fn prompt(&self) -> Context {
        deadline(self.timeouts.request)
    }

    /// Agent version, protocol version and guest kernel release (for hyperctl).
    pub async fn version(&self) -> Result<pb::VersionResponse, AgentError> {
        self.client
            .version(self.prompt(), &pb::VersionRequest::default())
            .await
            .map_err(err("Version"))
    }
}

#[async_trait]
impl Agent for TtrpcAgent {
    async fn health(&self) -> Result<(), AgentError> {
        let h = self
            .client
            .health(self.prompt(), &pb::HealthRequest::default())
            .await
            .map_err(err("Health"))?;
        if h.status == pb::health_response::Status::SERVING.into() {
            Ok(())
        } else {
            Err(AgentError::new(
                "Health",
                ttrpc::Code::UNAVAILABLE,
                format!("agent health is {:?}", h.status),
            ))
        }
    }

    async fn create_sandbox(&self, req: CreateSandboxRequest) -> Result<(), AgentError> {
        self.client
            .create_sandbox(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("CreateSandbox"))
    }

    async fn destroy_sandbox(&self, sandbox_id: &str) -> Result<(), AgentError> {
        let req = pb::DestroySandboxRequest {
            sandbox_id: sandbox_id.to_string(),
            ..Default::default()
        };
        self.client
            .destroy_sandbox(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("DestroySandbox"))
    }

    async fn reseed_random(&self, seed: Vec<u8>) -> Result<(), AgentError> {
        let req = pb::ReseedRandomDevRequest {
            data: seed,
            ..Default::default()
        };
        self.client
            .reseed_random_dev(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("ReseedRandomDev"))
    }

    async fn set_guest_time(&self, now: std::time::SystemTime) -> Result<(), AgentError> {
        let since_epoch = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let req = pb::SetGuestDateTimeRequest {
            sec: since_epoch.as_secs() as i64,
            usec: i64::from(since_epoch.subsec_micros()),
            ..Default::default()
        };
        self.client
            .set_guest_date_time(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("SetGuestDateTime"))
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<(), AgentError> {
        self.client
            .create_container(deadline(self.timeouts.create_container), &req)
            .await
            .map(drop)
            .map_err(err("CreateContainer"))
    }

    async fn start_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = pb::StartContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .start_container(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("StartContainer"))
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = pb::RemoveContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .remove_container(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("RemoveContainer"))
    }

    async fn pause_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = pb::PauseContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .pause_container(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("PauseContainer"))
    }

    async fn resume_container(&self, container_id: &str) -> Result<(), AgentError> {
        let req = pb::ResumeContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .resume_container(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("ResumeContainer"))
    }

    async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), AgentError> {
        let req = pb::UpdateContainerRequest {
            container_id: container_id.to_string(),
            resources_json,
            ..Default::default()
        };
        self.client
            .update_container(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("UpdateContainer"))
    }

    async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<pb::StatsContainerResponse, AgentError> {
        let req = pb::StatsContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.client
            .stats_container(self.prompt(), &req)
            .await
            .map_err(err("StatsContainer"))
    }

    async fn guest_metrics(&self) -> Result<pb::GuestMetricsResponse, AgentError> {
        self.client
            .guest_metrics(self.prompt(), &pb::GuestMetricsRequest::default())
            .await
            .map_err(err("GuestMetrics"))
    }

    async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, AgentError> {
        let req = pb::ListProcessesRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        let list = self
            .client
            .list_processes(self.prompt(), &req)
            .await
            .map_err(err("ListProcesses"))?;
        Ok(list.processes.iter().map(|p| p.pid as u32).collect())
    }

    async fn exec_process(
        &self,
        p: &ProcessRef,
        process_json: Vec<u8>,
        stdin: bool,
    ) -> Result<(), AgentError> {
        let req = pb::ExecProcessRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            process_json,
            stdin,
            ..Default::default()
        };
        self.client
            .exec_process(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("ExecProcess"))
    }

    async fn remove_process(&self, p: &ProcessRef) -> Result<(), AgentError> {
        let req = pb::RemoveProcessRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            ..Default::default()
        };
        self.client
            .remove_process(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("RemoveProcess"))
    }

    async fn signal_process(
        &self,
        p: &ProcessRef,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let req = pb::SignalProcessRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            signal,
            all,
            ..Default::default()
        };
        self.client
            .signal_process(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("SignalProcess"))
    }

    async fn wait_process(&self, p: &ProcessRef) -> Result<u32, AgentError> {
        let req = pb::WaitProcessRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            ..Default::default()
        };
        let r = self
            .client
            .wait_process(Context::default(), &req)
            .await
            .map_err(err("WaitProcess"))?;
        Ok(r.status as u32)
    }

    async fn resize_tty(&self, p: &ProcessRef, rows: u32, cols: u32) -> Result<(), AgentError> {
        let req = pb::TtyWinResizeRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            row: rows,
            column: cols,
            ..Default::default()
        };
        self.client
            .tty_win_resize(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("TtyWinResize"))
    }

    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> Result<usize, AgentError> {
        let req = pb::WriteStreamRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            data: data.to_vec(),
            ..Default::default()
        };
        // No deadline: a process that reads slowly makes the write wait for room.
        let r = self
            .client
            .write_stdin(Context::default(), &req)
            .await
            .map_err(err("WriteStdin"))?;
        Ok(r.len as usize)
    }

    async fn close_stdin(&self, p: &ProcessRef) -> Result<(), AgentError> {
        let req = pb::CloseStdinRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            ..Default::default()
        };
        self.client
            .close_stdin(self.prompt(), &req)
            .await
            .map(drop)
            .map_err(err("CloseStdin"))
    }

    async fn read_stream(
        &self,
        p: &ProcessRef,
        which: OutStream,
        max: u32,
    ) -> Result<Vec<u8>, AgentError> {
        let req = pb::ReadStreamRequest {
            container_id: p.container_id.clone(),
            exec_id: p.exec_id.clone(),
            len: max,
            ..Default::default()
        };
        let ctx = Context::default();
        let r = match which {
            OutStream::Stdout => self.client.read_stdout(ctx, &req).await,
            OutStream::Stderr => self.client.read_stderr(ctx, &req).await,
        };
        let call = match which {
            OutStream::Stdout => "ReadStdout",
            OutStream::Stderr => "ReadStderr",
        };
        r.map(|r| r.data).map_err(err(call))
    }

    async fn oom_event(&self) -> Result<String, AgentError> {
        self.client
            .get_oom_event(Context::default(), &pb::GetOOMEventRequest::default())
            .await
            .map(|e| e.container_id)
            .map_err(err("GetOOMEvent"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A VM is saved only once the shim's connections to its agent are closed: dropping
    /// the client must close its socket.
    #[tokio::test]
    async fn dropping_the_agent_closes_its_connection() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let agent = TtrpcAgent::new(ours, AgentTimeouts::default());
        drop(agent);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), theirs.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the agent's socket stayed open: {read:?}"
        );
    }
}
