//! containerd's stdio FIFOs ↔ the agent's process streams, losing no byte either way.
//!
//! Output: one task per stream pulls from the agent (`read_stream` blocks until data or
//! the end) and writes to the FIFO. Input: the FIFO is opened with a writer of our own
//! kept open, as containerd's runc shim does, so the copy sees EOF only once the client
//! closed its end *and* `CloseIO` dropped ours; then every byte read has been taken by
//! the process before its stdin is closed. Each loop has one request in flight, so a
//! slow reader or writer slows the process, no more.
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::agent::{Agent, OutStream, ProcessRef};

/// Bytes asked for in one call.
const CHUNK: usize = 32 * 1024;

/// A running copy of one output stream to its FIFO.
pub struct OutputCopy {
    task: JoinHandle<()>,
    /// Bumped on every read from the guest and write to the FIFO.
    progress: Arc<AtomicU64>,
}

impl OutputCopy {
    /// Waits for the stream to end. A stream that makes no progress for `idle` (a
    /// process the guest never lets end, or a reader that stopped reading) is closed,
    /// which is containerd's end of output; returns false then.
    pub async fn drain(mut self, idle: Duration) -> bool {
        loop {
            let before = self.progress.load(Ordering::Relaxed);
            match tokio::time::timeout(idle, &mut self.task).await {
                Ok(_) => return true,
                Err(_) if self.progress.load(Ordering::Relaxed) == before => {
                    self.task.abort();
                    return false;
                }
                Err(_) => continue,
            }
        }
    }

    pub fn abort(&self) {
        self.task.abort();
    }
}

/// What runs when a process's first output byte has been written (the start-up trace).
pub type FirstOutput = Box<dyn FnOnce() + Send>;

/// A [`FirstOutput`] shared by a process's output streams: whichever writes first runs it.
#[derive(Clone)]
pub struct OnFirstOutput(Arc<std::sync::Mutex<Option<FirstOutput>>>);

impl OnFirstOutput {
    pub fn new(f: FirstOutput) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(f))))
    }

    fn fire(&self) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }
}

/// Starts copying `which` of process `p` into the FIFO at `fifo` until the stream ends;
/// `first_output` fires after the first write.
pub fn copy_output(
    agent: Arc<dyn Agent>,
    p: ProcessRef,
    which: OutStream,
    fifo: &Path,
    first_output: Option<OnFirstOutput>,
) -> std::io::Result<OutputCopy> {
    let mut out = pipe::OpenOptions::new().open_sender(fifo)?;
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    let task = tokio::spawn(async move {
        loop {
            let data = match agent.read_stream(&p, which, CHUNK as u32).await {
                Ok(d) if d.is_empty() => break,
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(container = %p.container_id, exec = %p.exec_id, "{which:?} ended: {e}");
                    break;
                }
            };
            seen.fetch_add(1, Ordering::Relaxed);
            let mut rest = &data[..];
            while !rest.is_empty() {
                match out.write(rest).await {
                    Ok(n) => {
                        rest = &rest[n..];
                        seen.fetch_add(1, Ordering::Relaxed);
                        if let Some(f) = &first_output {
                            f.fire();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(container = %p.container_id, exec = %p.exec_id, "{which:?} reader went away: {e}");
                        return;
                    }
                }
            }
        }
        let _ = out.flush().await;
    });
    Ok(OutputCopy { task, progress })
}

/// The copy of a stdin FIFO into a process.
pub struct StdinCopy {
    /// Our writer on the FIFO; dropping it lets the copy reach EOF.
    keeper: std::sync::Mutex<Option<File>>,
    task: JoinHandle<()>,
}

impl StdinCopy {
    /// Opens the FIFO at `fifo` (without waiting for the client) and copies it into the
    /// process's stdin; at EOF closes the process's stdin.
    pub fn start(agent: Arc<dyn Agent>, p: ProcessRef, fifo: &Path) -> std::io::Result<Self> {
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)?;
        // Opens at once: there is a reader now.
        let keeper = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)?;
        let mut input = pipe::Receiver::from_file(reader)?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match input.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(container = %p.container_id, exec = %p.exec_id, "read stdin: {e}");
                        break;
                    }
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    match agent.write_stdin(&p, rest).await {
                        Ok(0) => {
                            tracing::warn!(container = %p.container_id, exec = %p.exec_id, "agent took no stdin bytes");
                            return;
                        }
                        Ok(k) => rest = &rest[k.min(rest.len())..],
                        Err(e) => {
                            tracing::debug!(container = %p.container_id, exec = %p.exec_id, "stdin closed by the guest: {e}");
                            return;
                        }
                    }
                }
            }
            if let Err(e) = agent.close_stdin(&p).await {
                tracing::debug!(container = %p.container_id, exec = %p.exec_id, "close stdin: {e}");
            }
        });
        Ok(Self {
            keeper: std::sync::Mutex::new(Some(keeper)),
            task,
        })
    }

    /// containerd's `CloseIO`: once the client's end is closed too, the copy sends what
    /// is left and then EOF.
    pub fn close(&self) {
        self.keeper.lock().expect("stdin keeper lock").take();
    }
}

impl Drop for StdinCopy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
