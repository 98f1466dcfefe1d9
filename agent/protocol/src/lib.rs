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
/// What both sides assume about the guest beyond the messages: where the agent keeps
/// things, and the `Storage.driver` names it understands.
pub mod guest {
    /// The agent's state directory (its default `--state-dir`); storages must be mounted under it.
    pub const STATE_DIR: &str = "/run/hyper";
    /// Mount point of the pod's virtio-fs share; containers' rootfs and volumes lie below it.
    pub const SHARED_DIR: &str = "/run/hyper/shared";
    /// Parent of each container's own storages, e.g. `<CONTAINERS_DIR>/<id>/rootfs` from a disk.
    pub const CONTAINERS_DIR: &str = "/run/hyper/containers";

    /// `Storage.driver` of a virtio-fs share; `source` is its tag.
    pub const DRIVER_VIRTIOFS: &str = "virtiofs";
    /// Another spelling of [`DRIVER_VIRTIOFS`] that the agent accepts.
    pub const DRIVER_VIRTIOFS_ALT: &str = "virtio-fs";
    /// `Storage.driver` of a virtio-blk disk; `source` is its serial, `fstype` is required.
    pub const DRIVER_BLK: &str = "blk";
    /// Another spelling of [`DRIVER_BLK`] that the agent accepts.
    pub const DRIVER_BLK_ALT: &str = "virtio-blk";
    /// `Storage.driver` of a fresh tmpfs; `source` is ignored.
    pub const DRIVER_TMPFS: &str = "tmpfs";
    /// `Storage.driver` of a bind mount of `source`, a guest path under the agent's allowed roots.
    pub const DRIVER_BIND: &str = "bind";
}

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

#[cfg(test)]
mod tests {
    use super::guest::*;
    use std::path::Path;

    #[test]
    fn guest_dirs_lie_under_the_state_dir() {
        // The agent refuses a storage whose mount point is not strictly under its state dir.
        for dir in [SHARED_DIR, CONTAINERS_DIR] {
            let dir = Path::new(dir);
            assert!(
                dir.starts_with(STATE_DIR) && dir != Path::new(STATE_DIR),
                "{} is not under {STATE_DIR}",
                dir.display()
            );
        }
    }
}
