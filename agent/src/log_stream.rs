//! The agent's own log, streamed to whoever connects to vsock port 1025 (the shim, which
//! forwards it into containerd's log), besides stderr (the guest console).
//!
//! Every line also goes into a small backlog, replayed to each new reader, so what the
//! agent said while booting is not lost. A reader that falls behind loses lines (it is
//! told how many) rather than making the agent buffer without bound or block.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;

/// Lines replayed to a new reader.
const BACKLOG_LINES: usize = 256;
/// Lines a connected reader may lag behind before it loses some.
const READER_LAG_LINES: usize = 1024;

struct Shared {
    backlog: Mutex<VecDeque<Arc<str>>>,
    tx: broadcast::Sender<Arc<str>>,
}

#[derive(Clone)]
pub struct LogStream(Arc<Shared>);

impl Default for LogStream {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(READER_LAG_LINES);
        LogStream(Arc::new(Shared {
            backlog: Mutex::new(VecDeque::with_capacity(BACKLOG_LINES)),
            tx,
        }))
    }
}

impl LogStream {
    fn publish(&self, text: &str) {
        let line: Arc<str> = text.into();
        let mut backlog = self.0.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if backlog.len() == BACKLOG_LINES {
            backlog.pop_front();
        }
        backlog.push_back(line.clone());
        // No receiver is fine: nobody reads yet.
        let _ = self.0.tx.send(line);
    }

    /// The backlog and a receiver for what comes after it, with no line lost or doubled
    /// in between.
    fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let backlog = self.0.backlog.lock().unwrap_or_else(|e| e.into_inner());
        (backlog.iter().cloned().collect(), self.0.tx.subscribe())
    }

    /// Streams the log to one reader until it hangs up.
    pub async fn feed(&self, mut out: impl AsyncWrite + Unpin) {
        let (backlog, mut rx) = self.subscribe();
        for line in backlog {
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        loop {
            let bytes = match rx.recv().await {
                Ok(line) => line.as_bytes().to_vec(),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    format!("hyper-agent: {n} log lines dropped (reader too slow)\n").into_bytes()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if out.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }

    /// Accepts readers on `address` (`vsock://-1:PORT` or `unix:///path`) forever.
    pub async fn serve(self, address: &str) -> Result<()> {
        if let Some(path) = address.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("bind log stream {address}"))?;
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(self.clone().feed_owned(s));
                }
            });
        } else if let Some(port) = address.strip_prefix("vsock://-1:") {
            let port: u32 = port.parse().context("log stream port")?;
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
            let l = tokio_vsock::VsockListener::bind(addr)
                .with_context(|| format!("bind log stream {address}"))?;
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(self.clone().feed_owned(s));
                }
            });
        } else {
            anyhow::bail!("log address {address:?} is neither vsock://-1:PORT nor unix://PATH");
        }
        Ok(())
    }

    async fn feed_owned(self, out: impl AsyncWrite + Unpin) {
        self.feed(out).await
    }

    /// A writer for tracing-subscriber: each formatted event goes to stderr and the stream.
    pub fn writer(&self) -> Tee {
        Tee(self.clone())
    }
}

pub struct Tee(LogStream);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        self.0.publish(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn readers_get_the_backlog_then_new_lines() {
        let log = LogStream::default();
        for i in 0..(BACKLOG_LINES + 10) {
            log.publish(&format!("early {i}\n"));
        }
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn({
            let log = log.clone();
            async move { log.feed(server).await }
        });
        let mut lines = tokio::io::BufReader::new(client).lines();
        // The oldest lines fell out of the backlog.
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "early 10");
        for _ in 0..BACKLOG_LINES - 1 {
            lines.next_line().await.unwrap().unwrap();
        }
        log.publish("late\n");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "late");
    }

    #[tokio::test]
    async fn a_slow_reader_is_told_what_it_lost() {
        let log = LogStream::default();
        let (client, server) = tokio::io::duplex(64);
        tokio::spawn({
            let log = log.clone();
            async move { log.feed(server).await }
        });
        tokio::task::yield_now().await;
        // The reader does not read while far more lines than it may lag are written.
        for i in 0..(READER_LAG_LINES * 3) {
            log.publish(&format!("line {i}\n"));
        }
        let mut lines = tokio::io::BufReader::new(client).lines();
        let mut dropped = false;
        while let Ok(Ok(Some(l))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), lines.next_line()).await
        {
            dropped |= l.contains("log lines dropped");
            if l == format!("line {}", READER_LAG_LINES * 3 - 1) {
                break;
            }
        }
        assert!(dropped, "the reader was not told about the lost lines");
    }
}
