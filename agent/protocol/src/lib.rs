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
    pub use crate::handshake::{MAX_REPLY_LEN, parse_reply, reply};

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
}

/// The reply that ends the handshake of the agent's raw streams (port forwarding, the
/// debug console): one line, `OK` or `ERR <why>`; after `OK` the stream is the payload.
pub mod handshake {
    /// Longest reply line, newline included; a longer one is a broken agent.
    pub const MAX_REPLY_LEN: usize = 256;

    /// The reply line for the agent's result.
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
                "not a handshake reply: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )),
        }
    }
}

/// The guest debug console's handshake. It is served only when the kernel command line
/// holds [`KERNEL_PARAM`](debug_console::KERNEL_PARAM) (the shim's `agent.debug_console`).
/// The host opens a vsock stream to [`DEBUG_CONSOLE_VSOCK_PORT`] and writes a
/// [`Request`](debug_console::Request); the agent starts the command (a login shell when
/// none is given) on a new pty in the guest, outside every container, and answers a
/// [`handshake`] line. After `OK` the stream is the pty both ways; it ends when the
/// command has exited and its output is drained.
pub mod debug_console {
    pub use crate::handshake::{MAX_REPLY_LEN, parse_reply, reply};

    /// On the guest kernel's command line: the agent serves the debug console.
    pub const KERNEL_PARAM: &str = "hyper.debug_console=1";
    /// Longest encoded request: the command and its arguments.
    pub const MAX_REQUEST_LEN: usize = 16 * 1024;

    /// The terminal's size and the command to run (empty: the guest's shell).
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Request {
        pub rows: u16,
        pub cols: u16,
        pub argv: Vec<String>,
    }

    impl Request {
        /// `u32` total length, `u16` rows, `u16` cols, then each argument as a `u16`
        /// length and its UTF-8 bytes; all big-endian.
        pub fn encode(&self) -> Result<Vec<u8>, String> {
            let mut body = Vec::new();
            body.extend_from_slice(&self.rows.to_be_bytes());
            body.extend_from_slice(&self.cols.to_be_bytes());
            for a in &self.argv {
                let len = u16::try_from(a.len())
                    .map_err(|_| format!("argument of {} bytes is too long", a.len()))?;
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(a.as_bytes());
            }
            if body.len() + 4 > MAX_REQUEST_LEN {
                return Err(format!(
                    "the command is longer than {MAX_REQUEST_LEN} bytes"
                ));
            }
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend(body);
            Ok(out)
        }

        /// The body's length from the first four bytes, refused when out of bounds.
        pub fn body_len(head: [u8; 4]) -> Result<usize, String> {
            let len = u32::from_be_bytes(head) as usize;
            if !(4..=MAX_REQUEST_LEN - 4).contains(&len) {
                return Err(format!(
                    "a request body of {len} bytes (4 to {} allowed)",
                    MAX_REQUEST_LEN - 4
                ));
            }
            Ok(len)
        }

        /// Parses the body that follows the length; anything malformed is named.
        pub fn parse_body(body: &[u8]) -> Result<Request, String> {
            let u16_at = |at: usize| -> Result<u16, String> {
                body.get(at..at + 2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .ok_or_else(|| format!("request cut short at byte {at}"))
            };
            let (rows, cols) = (u16_at(0)?, u16_at(2)?);
            let mut argv = Vec::new();
            let mut at = 4;
            while at < body.len() {
                let len = usize::from(u16_at(at)?);
                let arg = body.get(at + 2..at + 2 + len).ok_or_else(|| {
                    format!("argument {} runs past the request's end", argv.len())
                })?;
                let arg = std::str::from_utf8(arg)
                    .map_err(|_| format!("argument {} is not UTF-8", argv.len()))?;
                if arg.contains('\0') {
                    return Err(format!("argument {} holds a NUL byte", argv.len()));
                }
                argv.push(arg.to_string());
                at += 2 + len;
            }
            Ok(Request { rows, cols, argv })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_request_survives_the_round_trip() {
            let r = Request {
                rows: 40,
                cols: 120,
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo ü; exit 3".into(),
                    String::new(),
                ],
            };
            let wire = r.encode().unwrap();
            let len = Request::body_len(wire[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, wire.len() - 4);
            assert_eq!(Request::parse_body(&wire[4..]).unwrap(), r);
        }

        #[test]
        fn malformed_requests_are_named() {
            let cases: [(&str, &[u8], &str); 4] = [
                ("no size", &[0, 24], "cut short at byte 2"),
                (
                    "argument past the end",
                    &[0, 24, 0, 80, 0, 9, b'l', b's'],
                    "argument 0 runs past",
                ),
                (
                    "not UTF-8",
                    &[0, 24, 0, 80, 0, 1, 0xff],
                    "argument 0 is not UTF-8",
                ),
                (
                    "NUL",
                    &[0, 24, 0, 80, 0, 2, b'a', 0],
                    "argument 0 holds a NUL",
                ),
            ];
            for (name, body, want) in cases {
                let e = Request::parse_body(body).unwrap_err();
                assert!(e.contains(want), "{name}: {e}");
            }
            assert!(Request::body_len(u32::MAX.to_be_bytes()).is_err());
            assert!(Request::body_len(2u32.to_be_bytes()).is_err());
            let huge = Request {
                argv: vec!["x".repeat(60_000)],
                ..Default::default()
            };
            assert!(huge.encode().is_err());
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
