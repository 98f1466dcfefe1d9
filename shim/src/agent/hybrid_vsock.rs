//! Firecracker's "hybrid vsock": the VMM exposes the guest's vsock as a unix socket.
//! The host connects, writes `CONNECT <port>\n` and reads `OK <host port>\n`; after that
//! the stream carries the bytes of a guest vsock connection to `<port>`.
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest acknowledgement we accept ("OK 4294967295\n" is 14 bytes).
const MAX_ACK_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    #[error("connect to vsock socket {path}: {cause}")]
    Connect {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("handshake for guest port {port} on {path}: {cause}")]
    Io {
        path: PathBuf,
        port: u32,
        cause: std::io::Error,
    },
    #[error(
        "guest port {port} on {path}: VMM closed the connection (nothing listens on that port yet?)"
    )]
    Refused { path: PathBuf, port: u32 },
    #[error("guest port {port} on {path}: bad handshake reply {reply:?}")]
    BadReply {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    #[error("guest port {port} on {path}: no handshake reply within {timeout:?}")]
    Timeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
    },
}

/// Opens a stream to guest vsock `port` through the VMM's unix socket `uds`.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let path = uds.to_path_buf();
    let handshake = async {
        let mut stream =
            UnixStream::connect(uds)
                .await
                .map_err(|cause| HybridVsockError::Connect {
                    path: path.clone(),
                    cause,
                })?;
        let io_err = |cause| HybridVsockError::Io {
            path: path.clone(),
            port,
            cause,
        };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(io_err)?;
        let Some(reply) = read_line(&mut stream, MAX_ACK_LEN).await.map_err(io_err)? else {
            return Err(HybridVsockError::Refused {
                path: path.clone(),
                port,
            });
        };
        let text = String::from_utf8_lossy(&reply).into_owned();
        let ok = text
            .strip_prefix("OK ")
            .is_some_and(|p| p.parse::<u32>().is_ok());
        if !ok {
            return Err(HybridVsockError::BadReply {
                path: path.clone(),
                port,
                reply: text,
            });
        }
        Ok(stream)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result,
        Err(_) => Err(HybridVsockError::Timeout {
            path: uds.to_path_buf(),
            port,
            timeout,
        }),
    }
}

/// Reads one line without its newline, byte by byte: what follows it already belongs to
/// the guest. `None` if the stream ends first; a line longer than `max` is cut there.
pub async fn read_line(stream: &mut UnixStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::with_capacity(max);
    loop {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' || line.len() == max {
            return Ok(Some(line));
        }
        line.push(b[0]);
    }
}
