//! The host end of the guest debug console (`hyperctl exec --sandbox POD`): a stream to
//! the agent's vsock port 1026, where a pod started with `agent.debug_console = true`
//! runs a command on a pty in the guest (the handshake:
//! [`hyper_agent_protocol::debug_console`]).
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT;
use hyper_agent_protocol::debug_console::{self, KERNEL_PARAM, MAX_REPLY_LEN, Request};
use hyper_vmm_api::VmConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::hybrid_vsock::{self, HybridVsockError};
use crate::hypervisor::hyper_vmm::vsock_uds_in;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DebugConsoleError {
    #[error(
        "pod {pod} runs without the debug console: set `debug_console = true` under [agent] in the shim's config and start the pod again"
    )]
    Off { pod: String },
    #[error("no such pod: {0} (hyperctl list shows the pods)")]
    NoPod(PathBuf),
    #[error(
        "cannot reach the debug console of pod {pod}: {cause} (was the pod started with agent.debug_console = true?)"
    )]
    Connect {
        pod: String,
        cause: HybridVsockError,
    },
    #[error("debug console of pod {pod}: {why}")]
    Handshake { pod: String, why: String },
}

/// Opens a console session in pod `pod` (its state dir `run_dir`) for `req`; after this,
/// the stream is the session's terminal.
pub async fn open(
    run_dir: &Path,
    pod: &str,
    req: &Request,
) -> Result<UnixStream, DebugConsoleError> {
    if !run_dir.is_dir() {
        return Err(DebugConsoleError::NoPod(run_dir.to_path_buf()));
    }
    if started_without_console(run_dir) {
        return Err(DebugConsoleError::Off { pod: pod.into() });
    }
    let handshake = |why: String| DebugConsoleError::Handshake {
        pod: pod.into(),
        why,
    };
    let mut stream = hybrid_vsock::connect(
        &vsock_uds_in(run_dir),
        DEBUG_CONSOLE_VSOCK_PORT,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .map_err(|cause| DebugConsoleError::Connect {
        pod: pod.into(),
        cause,
    })?;
    stream
        .write_all(&req.encode().map_err(handshake)?)
        .await
        .map_err(|e| handshake(format!("send the request: {e}")))?;
    let reply = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        hybrid_vsock::read_line(&mut stream, MAX_REPLY_LEN),
    )
    .await
    .map_err(|_| handshake(format!("no reply within {HANDSHAKE_TIMEOUT:?}")))?
    .map_err(|e| handshake(format!("read the reply: {e}")))?
    .ok_or_else(|| handshake("the guest closed the stream without a reply".into()))?;
    debug_console::parse_reply(&reply).map_err(handshake)?;
    Ok(stream)
}

/// Whether the VM's config (`vm.json`, written by the shim) shows a kernel command line
/// without the console's switch. Unknown (no file, a restored VM): try the port.
fn started_without_console(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(run_dir.join("vm.json")) else {
        return false;
    };
    match serde_json::from_str::<VmConfig>(&text) {
        Ok(VmConfig {
            cmdline: Some(cmdline),
            ..
        }) => !cmdline.split_whitespace().any(|w| w == KERNEL_PARAM),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_started_without_the_switch_is_refused_before_connecting() {
        let cases = [
            ("console off", Some("console=ttyS0 quiet"), true),
            (
                "console on",
                Some("console=ttyS0 hyper.debug_console=1"),
                false,
            ),
            ("no vm.json", None, false),
        ];
        for (name, cmdline, off) in cases {
            let dir = tempfile::tempdir().unwrap();
            if let Some(c) = cmdline {
                let mut cfg = VmConfig::new(PathBuf::from("/k"));
                cfg.cmdline = Some(c.into());
                std::fs::write(
                    dir.path().join("vm.json"),
                    serde_json::to_string(&cfg).unwrap(),
                )
                .unwrap();
            }
            assert_eq!(started_without_console(dir.path()), off, "{name}");
        }
    }

    #[tokio::test]
    async fn the_refusal_says_how_to_turn_it_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = VmConfig::new(PathBuf::from("/k"));
        cfg.cmdline = Some("quiet".into());
        std::fs::write(
            dir.path().join("vm.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let e = open(dir.path(), "p1", &Request::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("debug_console = true"), "{e}");
    }
}
