//! The ttrpc `AgentService`: thin. Each call finds its object, delegates, and maps the
//! error to a ttrpc status code.
use crate::container;
use crate::error::{AgentError, invalid};
use crate::sandbox::Sandbox;
use async_trait::async_trait;
use hyper_agent_protocol::{PROTOCOL_VERSION, agent, agent_ttrpc};
use std::sync::Arc;
use std::time::Duration;
use ttrpc::r#async::TtrpcContext;

pub struct Agent {
    pub sandbox: Arc<Sandbox>,
    /// Told when Shutdown was called.
    pub shutdown: tokio::sync::mpsc::UnboundedSender<()>,
}

type R<T> = ttrpc::Result<T>;

fn map<T>(r: Result<T, AgentError>) -> R<T> {
    r.map_err(|e| {
        tracing::debug!(code = ?e.code(), "{e}");
        e.into_ttrpc()
    })
}

fn empty() -> agent::Empty {
    agent::Empty::default()
}

#[async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn health(&self, _: &TtrpcContext, _: agent::HealthRequest) -> R<agent::HealthResponse> {
        Ok(agent::HealthResponse {
            status: agent::health_response::Status::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: agent::VersionRequest,
    ) -> R<agent::VersionResponse> {
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(agent::VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            kernel_release,
            ..Default::default()
        })
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> R<agent::Empty> {
        map(self.sandbox.create_sandbox(&req).await.map(|_| empty()))
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> R<agent::Empty> {
        map(self
            .sandbox
            .destroy_sandbox(&req.sandbox_id)
            .await
            .map(|_| empty()))
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> R<agent::Empty> {
        map(self.sandbox.create_container(&req).await.map(|_| empty()))
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> R<agent::Empty> {
        let r = async { self.sandbox.container(&req.container_id)?.start().await };
        map(r.await.map(|_| empty()))
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> R<agent::Empty> {
        let t = Duration::from_secs(req.timeout.into());
        map(self
            .sandbox
            .remove_container(&req.container_id, t)
            .await
            .map(|_| empty()))
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> R<agent::Empty> {
        let r = async { self.sandbox.container(&req.container_id)?.pause(true).await };
        map(r.await.map(|_| empty()))
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> R<agent::Empty> {
        let r = async {
            self.sandbox
                .container(&req.container_id)?
                .pause(false)
                .await
        };
        map(r.await.map(|_| empty()))
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> R<agent::Empty> {
        let r = self
            .sandbox
            .container(&req.container_id)
            .and_then(|c| c.update(&req.resources_json));
        map(r.map(|_| empty()))
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> R<agent::StatsContainerResponse> {
        map(self.sandbox.container(&req.container_id).map(|c| c.stats()))
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> R<agent::ListProcessesResponse> {
        map(self
            .sandbox
            .container(&req.container_id)
            .map(|c| agent::ListProcessesResponse {
                processes: c.list_processes(),
                ..Default::default()
            }))
    }

    async fn guest_metrics(
        &self,
        _: &TtrpcContext,
        _: agent::GuestMetricsRequest,
    ) -> R<agent::GuestMetricsResponse> {
        map(crate::guest_metrics::read())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> R<agent::Empty> {
        let r = async { self.sandbox.container(&req.container_id)?.exec(&req).await };
        map(r.await.map(|_| empty()))
    }

    async fn remove_process(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveProcessRequest,
    ) -> R<agent::Empty> {
        let r = self
            .sandbox
            .container(&req.container_id)
            .and_then(|c| c.remove_exec(&req.exec_id));
        map(r.map(|_| empty()))
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> R<agent::Empty> {
        let r = (|| {
            let c = self.sandbox.container(&req.container_id)?;
            let sig = container::signal(req.signal)?;
            c.signal(&req.exec_id, sig, req.all)
        })();
        map(r.map(|_| empty()))
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> R<agent::WaitProcessResponse> {
        let r = async {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            let status = p.exit.wait().await;
            Ok(agent::WaitProcessResponse {
                status,
                pid: p.pid,
                ..Default::default()
            })
        };
        map(r.await)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> R<agent::WriteStreamResponse> {
        let r = async {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            let n = p.streams.write_stdin(&req.data).await?;
            Ok(agent::WriteStreamResponse {
                len: n as u32,
                ..Default::default()
            })
        };
        map(r.await)
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> R<agent::ReadStreamResponse> {
        let r = async {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            Ok(agent::ReadStreamResponse {
                data: p.streams.stdout.read(req.len as usize).await,
                ..Default::default()
            })
        };
        map(r.await)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> R<agent::ReadStreamResponse> {
        let r = async {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            Ok(agent::ReadStreamResponse {
                data: p.streams.stderr.read(req.len as usize).await,
                ..Default::default()
            })
        };
        map(r.await)
    }

    async fn close_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::CloseStdinRequest,
    ) -> R<agent::Empty> {
        let r = async {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            p.streams.close_stdin().await?;
            Ok(empty())
        };
        map(r.await)
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> R<agent::Empty> {
        let r = (|| {
            let p = self
                .sandbox
                .container(&req.container_id)?
                .process(&req.exec_id)?;
            let rows = u16::try_from(req.row)
                .map_err(|_| invalid(format!("row: {} too large", req.row)))?;
            let cols = u16::try_from(req.column)
                .map_err(|_| invalid(format!("column: {} too large", req.column)))?;
            p.streams.resize(rows, cols)?;
            Ok(empty())
        })();
        map(r)
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: agent::GetOOMEventRequest,
    ) -> R<agent::OOMEvent> {
        match self.sandbox.next_oom_event().await {
            Some(id) => Ok(agent::OOMEvent {
                container_id: id,
                ..Default::default()
            }),
            None => map(Err(AgentError::Internal("OOM event stream closed".into()))),
        }
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: agent::SetGuestDateTimeRequest,
    ) -> R<agent::Empty> {
        map(crate::pid1::set_time(req.sec, req.usec)
            .map(|_| empty())
            .map_err(|e| {
                if e.to_string().starts_with("sec/usec") {
                    invalid(format!("{e:#}"))
                } else {
                    AgentError::Internal(format!("{e:#}"))
                }
            }))
    }

    async fn reseed_random_dev(
        &self,
        _: &TtrpcContext,
        req: agent::ReseedRandomDevRequest,
    ) -> R<agent::Empty> {
        map(crate::pid1::reseed_random(&req.data)
            .map(|_| empty())
            .map_err(|e| {
                if req.data.is_empty() {
                    invalid(format!("{e:#}"))
                } else {
                    AgentError::Internal(format!("{e:#}"))
                }
            }))
    }

    async fn shutdown(&self, _: &TtrpcContext, _: agent::ShutdownRequest) -> R<agent::Empty> {
        let _ = self.shutdown.send(());
        Ok(empty())
    }
}
