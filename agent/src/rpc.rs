//! The ttrpc `AgentService` the shim calls.
use async_trait::async_trait;
use hyper_agent_protocol::{PROTOCOL_VERSION, agent, agent_ttrpc};
use ttrpc::r#async::TtrpcContext;

#[derive(Default)]
pub struct Agent {}

#[async_trait]
impl agent_ttrpc::AgentService for Agent {
    async fn health(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::HealthRequest,
    ) -> ttrpc::Result<agent::HealthResponse> {
        Ok(agent::HealthResponse {
            status: agent::health_response::Status::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: agent::VersionRequest,
    ) -> ttrpc::Result<agent::VersionResponse> {
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
}
