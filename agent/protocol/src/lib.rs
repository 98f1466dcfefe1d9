//! The shim ↔ agent protocol: messages and the async ttrpc `AgentService`.
//!
//! Everything here is generated from `proto/agent.proto`; this file only wires the
//! generated modules together and names the constants both sides agree on.
#![allow(
    clippy::all,
    unknown_lints,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_results,
    unused_mut,
    dead_code,
    missing_docs,
    trivial_casts
)]

/// Messages.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc client (`AgentServiceClient`) and server (`AgentService`, `create_agent_service`).
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// vsock port the agent's ttrpc server listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// vsock port on which the agent streams its own log.
pub const AGENT_LOG_VSOCK_PORT: u32 = 1025;
/// vsock port of the guest debug console.
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1026;
/// Bumped on incompatible changes to `agent.proto`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The agent prints this line on the console once its server is listening.
pub const READY_MARKER: &str = "HYPER-AGENT-READY";

/// The `.proto` source, so tests can check that every declared RPC is served.
pub const AGENT_PROTO: &str = include_str!("../proto/agent.proto");

/// Names of the RPCs `agent.proto` declares, in order.
pub fn rpc_names() -> Vec<&'static str> {
    AGENT_PROTO
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|rest| rest.split('(').next())
        .map(str::trim)
        .collect()
}
