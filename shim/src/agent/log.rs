//! The agent's log (vsock port 1025) forwarded into the shim's own log, which containerd
//! reads from the shim's `log` FIFO: one place to read what happened on both sides.
use std::path::PathBuf;
use std::time::Duration;

use hyper_agent_protocol::AGENT_LOG_VSOCK_PORT;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest agent log line forwarded whole; longer ones are cut.
const MAX_LINE: usize = 8192;

/// Connects to the agent's log stream and forwards it line by line until the VM goes away.
pub fn spawn_relay(uds: PathBuf, sandbox_id: String) {
    tokio::spawn(async move {
        match super::hybrid_vsock::connect(&uds, AGENT_LOG_VSOCK_PORT, Duration::from_secs(5)).await
        {
            Ok(stream) => {
                relay(stream, &sandbox_id).await;
            }
            Err(e) => tracing::warn!("no agent log for sandbox {sandbox_id}: {e}"),
        }
    });
}

/// Forwards every line of `stream` as a shim log line; returns at EOF.
pub async fn relay(stream: impl AsyncRead + Unpin, sandbox_id: &str) -> usize {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    let mut lines = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return lines,
            Ok(_) => {
                buf.truncate(MAX_LINE);
                let line = String::from_utf8_lossy(&buf);
                tracing::info!(target: "hyper_agent", sandbox = sandbox_id, "{}", line.trim_end());
                lines += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_line_is_forwarded_until_eof() {
        let text = format!(
            "one\ntwo\n{}\nlast-without-newline",
            "x".repeat(3 * MAX_LINE)
        );
        assert_eq!(relay(text.as_bytes(), "pod").await, 4);
        assert_eq!(relay(&b""[..], "pod").await, 0);
    }
}
