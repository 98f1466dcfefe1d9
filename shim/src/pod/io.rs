//! containerd's stdio FIFOs ↔ the agent's process streams.
//!
//! One task per stream: stdout/stderr pull from the agent (`ReadStdout`/`ReadStderr`
//! block until data or end of stream) and write to the FIFO; stdin reads the FIFO and
//! pushes with `WriteStdin`, then `CloseStdin` at EOF. The agent bounds its buffers and
//! each loop has one request in flight, so a slow reader slows the process, no more.
use std::path::Path;

use hyper_agent_protocol::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// Bytes asked for in one read call.
const CHUNK: u32 = 32 * 1024;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutStream {
    Stdout,
    Stderr,
}

/// Copies one output stream of a guest process to a FIFO until the stream ends.
/// Returns the handle so the caller can wait for the last bytes before reporting exit.
pub fn copy_output(
    agent: AgentServiceClient,
    container_id: String,
    exec_id: String,
    which: OutStream,
    fifo: &str,
) -> std::io::Result<JoinHandle<()>> {
    let mut out = pipe::OpenOptions::new().open_sender(Path::new(fifo))?;
    Ok(tokio::spawn(async move {
        let req = ReadStreamRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            len: CHUNK,
            ..Default::default()
        };
        loop {
            let ctx = ttrpc::context::Context::default();
            let read = match which {
                OutStream::Stdout => agent.read_stdout(ctx, &req).await,
                OutStream::Stderr => agent.read_stderr(ctx, &req).await,
            };
            match read {
                Ok(r) if r.data.is_empty() => break,
                Ok(r) => {
                    if let Err(e) = out.write_all(&r.data).await {
                        tracing::warn!(%container_id, %exec_id, "{which:?} reader went away: {e}");
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(%container_id, %exec_id, "{which:?} ended: {e}");
                    break;
                }
            }
        }
    }))
}

/// Copies a stdin FIFO into the guest process until EOF, then closes its stdin.
pub fn copy_input(
    agent: AgentServiceClient,
    container_id: String,
    exec_id: String,
    fifo: &str,
) -> JoinHandle<()> {
    let fifo = fifo.to_string();
    tokio::spawn(async move {
        // A blocking read-only open waits for the writer, so EOF later means the writer
        // really closed (a non-blocking open would read EOF before anyone connected).
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(&fifo)).await;
        let mut input = match opened {
            Ok(Ok(f)) => match pipe::Receiver::from_file(f) {
                Ok(r) => r,
                Err(e) => return tracing::warn!(%container_id, "stdin is not a FIFO: {e}"),
            },
            Ok(Err(e)) => return tracing::warn!(%container_id, "open stdin: {e}"),
            Err(e) => return tracing::warn!(%container_id, "open stdin: {e}"),
        };
        let mut buf = vec![0u8; CHUNK as usize];
        loop {
            let n = match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let req = WriteStreamRequest {
                container_id: container_id.clone(),
                exec_id: exec_id.clone(),
                data: buf[..n].to_vec(),
                ..Default::default()
            };
            if let Err(e) = agent
                .write_stdin(ttrpc::context::Context::default(), &req)
                .await
            {
                tracing::debug!(%container_id, %exec_id, "stdin closed by the guest: {e}");
                return;
            }
        }
        let req = CloseStdinRequest {
            container_id,
            exec_id,
            ..Default::default()
        };
        let _ = agent
            .close_stdin(ttrpc::context::Context::default(), &req)
            .await;
    })
}
