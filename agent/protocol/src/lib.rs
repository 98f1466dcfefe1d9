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
/// vsock port of the agent's port forwarder (CRI `PortForward`, [`port_forward`]).
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1027;
/// Host vsock port the agent connects to once its ttrpc server listens, and closes at
/// once: the shim's cue to connect now rather than at its next poll. It carries nothing
/// and proves nothing; the shim still checks the agent with a health call.
pub const AGENT_READY_VSOCK_PORT: u32 = 1028;

/// The port forwarder's handshake. The shim opens a vsock stream to
/// [`PORT_FORWARD_VSOCK_PORT`] and writes the pod's TCP port as 2 bytes, big-endian; the
/// agent connects to that port on the pod's loopback and answers one line, `OK` or
/// `ERR <why>`. After `OK` the stream carries the TCP connection's bytes both ways.
pub mod port_forward {
    /// Longest reply line, newline included; a longer one is a broken agent.
    pub const MAX_REPLY_LEN: usize = 256;

    /// The request for pod port `port`.
    pub fn request(port: u16) -> [u8; 2] {
        port.to_be_bytes()
    }

    /// The port a request asks for; port 0 is no port.
    pub fn parse_request(bytes: [u8; 2]) -> Result<u16, String> {
        match u16::from_be_bytes(bytes) {
            0 => Err("port 0 is not a TCP port one can connect to".into()),
            port => Ok(port),
        }
    }

    /// The reply line for the agent's connect result.
    pub fn reply(res: &Result<(), String>) -> Vec<u8> {
        let mut line = match res {
            Ok(()) => "OK".to_string(),
            // One line, and short enough for the shim to take.
            Err(why) => format!("ERR {}", why.replace('\n', " ")),
        };
        let mut end = line.len().min(MAX_REPLY_LEN - 1);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('\n');
        line.into_bytes()
    }

    /// Reads a reply line without its newline: `Ok` for `OK`, the agent's reason for `ERR`,
    /// and a description of anything else (the guest is not trusted to be well-formed).
    pub fn parse_reply(line: &[u8]) -> Result<(), String> {
        match std::str::from_utf8(line) {
            Ok("OK") => Ok(()),
            Ok(l) if l.starts_with("ERR ") => Err(format!("the guest said: {}", &l[4..])),
            _ => Err(format!(
                "not a port-forward reply: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )),
        }
    }
}

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

    #[test]
    fn port_forward_handshake_round_trips() {
        use super::port_forward::*;
        assert_eq!(parse_request(request(8080)), Ok(8080));
        assert!(parse_request(request(0)).is_err());
        let strip = |v: Vec<u8>| {
            assert_eq!(v.last(), Some(&b'\n'));
            assert!(v.len() <= MAX_REPLY_LEN);
            v[..v.len() - 1].to_vec()
        };
        assert_eq!(parse_reply(&strip(reply(&Ok(())))), Ok(()));
        let err = parse_reply(&strip(reply(&Err("refused\nnothing listens".into())))).unwrap_err();
        assert_eq!(err, "the guest said: refused nothing listens");
        let long = parse_reply(&strip(reply(&Err("é".repeat(400))))).unwrap_err();
        assert!(long.len() < MAX_REPLY_LEN + 20, "{long}");
        for bad in [&b"ok"[..], b"", b"ERR", b"\xff\xfe"] {
            assert!(parse_reply(bad).is_err(), "{bad:?} taken as a reply");
        }
    }
}
