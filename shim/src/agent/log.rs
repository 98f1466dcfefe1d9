//! The agent's log (vsock port 1025) forwarded into the shim's own log, which containerd
//! reads from the shim's `log` FIFO: one place to read what happened on both sides.
use std::path::PathBuf;
use std::time::Duration;

use hyper_agent_protocol::AGENT_LOG_VSOCK_PORT;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

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

/// Forwards every line of `stream` as a shim log line; returns the number of lines at EOF.
pub async fn relay(stream: impl AsyncRead + Unpin, sandbox_id: &str) -> usize {
    relay_lines(stream, |line| {
        tracing::info!(target: "hyper_agent", sandbox = sandbox_id, "{line}");
    })
    .await
    .lines
}

/// What a relay did, for tests.
#[derive(Debug, Default, PartialEq)]
struct RelayStats {
    lines: usize,
    /// The most line bytes held at once.
    peak_line_capacity: usize,
}

/// Reads lines from `stream` and hands each to `emit`, holding at most `MAX_LINE` bytes
/// of one (the guest may never send a newline): a longer line is cut, marked, and the
/// rest of it read and dropped.
async fn relay_lines(stream: impl AsyncRead + Unpin, mut emit: impl FnMut(&str)) -> RelayStats {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut stats = RelayStats::default();
    loop {
        line.clear();
        let dropped = match read_bounded_line(&mut reader, &mut line).await {
            Ok(Some(dropped)) => dropped,
            Ok(None) | Err(_) => return stats,
        };
        stats.peak_line_capacity = stats.peak_line_capacity.max(line.capacity());
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if dropped > 0 {
            emit(&format!("{text} [line cut: {dropped} more bytes dropped]"));
        } else {
            emit(text);
        }
        stats.lines += 1;
    }
}

/// Reads one line, newline excluded, keeping its first `MAX_LINE` bytes in `line`; returns
/// how many bytes past those were dropped, or `None` at EOF before any byte.
async fn read_bounded_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    let mut dropped = 0u64;
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any.then_some(dropped));
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let content = &available[..newline.unwrap_or(available.len())];
        let keep = content.len().min(MAX_LINE - line.len());
        line.extend_from_slice(&content[..keep]);
        dropped += (content.len() - keep) as u64;
        let used = newline.map_or(available.len(), |n| n + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(dropped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    async fn lines_of(stream: impl AsyncRead + Unpin) -> (Vec<String>, RelayStats) {
        let mut lines = Vec::new();
        let stats = relay_lines(stream, |l| lines.push(l.to_string())).await;
        (lines, stats)
    }

    #[tokio::test]
    async fn every_line_is_forwarded_until_eof() {
        let long = "x".repeat(3 * MAX_LINE);
        let exact = "y".repeat(MAX_LINE);
        let cut = format!(
            "{} [line cut: {} more bytes dropped]",
            "x".repeat(MAX_LINE),
            2 * MAX_LINE
        );
        let cases: Vec<(&str, String, Vec<String>)> = vec![
            ("nothing", String::new(), vec![]),
            (
                "short lines, the last without a newline",
                "one\ntwo\nlast".into(),
                vec!["one".into(), "two".into(), "last".into()],
            ),
            (
                "empty line",
                "\n\n".into(),
                vec![String::new(), String::new()],
            ),
            ("CRLF", "dos\r\n".into(), vec!["dos".into()]),
            (
                "a long line is cut and marked",
                format!("{long}\nafter\n"),
                vec![cut.clone(), "after".into()],
            ),
            (
                "a long last line without a newline",
                long.clone(),
                vec![cut.clone()],
            ),
            (
                "MAX_LINE bytes exactly are whole",
                format!("{exact}\n"),
                vec![exact.clone()],
            ),
        ];
        let mut failures = Vec::new();
        for (name, text, want) in cases {
            let (got, stats) = lines_of(text.as_bytes()).await;
            if got != want {
                let short: Vec<String> = got.iter().map(|l| l.chars().take(60).collect()).collect();
                failures.push(format!("{name}: got {short:?}"));
            }
            if stats.lines != want.len() {
                failures.push(format!("{name}: counted {} lines", stats.lines));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!(relay(&b"a\nb\n"[..], "pod").await, 2);
    }

    /// `len` bytes of 'x' without a newline, then `tail`, in reads of at most 64 KiB.
    struct NoNewline {
        left: usize,
        tail: &'static [u8],
    }

    impl AsyncRead for NoNewline {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.left > 0 {
                let n = self.left.min(buf.remaining()).min(64 * 1024);
                buf.put_slice(&vec![b'x'; n]);
                self.left -= n;
            } else {
                let n = self.tail.len().min(buf.remaining());
                buf.put_slice(&self.tail[..n]);
                self.tail = &self.tail[n..];
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_64_mib_line_is_relayed_in_bounded_memory() {
        const LEN: usize = 64 << 20;
        let stream = NoNewline {
            left: LEN,
            tail: b"\nnext\nlast\n",
        };
        let (lines, stats) = lines_of(stream).await;
        assert!(
            stats.peak_line_capacity <= MAX_LINE,
            "held {} bytes of one line",
            stats.peak_line_capacity
        );
        assert_eq!(lines.len(), 3, "lines after the long one must arrive");
        assert_eq!(
            lines[0],
            format!(
                "{} [line cut: {} more bytes dropped]",
                "x".repeat(MAX_LINE),
                LEN - MAX_LINE
            )
        );
        assert_eq!(lines[1..], ["next", "last"]);
    }
}
