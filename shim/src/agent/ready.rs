//! The agent's "I am serving" call. Once its ttrpc server listens, the agent connects to
//! host vsock port [`AGENT_READY_VSOCK_PORT`], which the VMM turns into a connection to
//! `<vsock uds>_<port>`: the shim connects at once instead of at its next poll, and a
//! booting guest is not sent a refused connection every few milliseconds.
//!
//! The call carries nothing and proves nothing (any guest process can make it, any number
//! of times, or never): it only says when to try. The shim still polls, slowly.
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_agent_protocol::AGENT_READY_VSOCK_PORT;
use tokio::net::UnixListener;

/// The listener for the agent's call, removed when dropped.
pub struct ReadyListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadyListener {
    /// Listens beside the VM's hybrid vsock socket `vsock_uds`. Bind before the VMM
    /// starts: a call made before anyone waits stays queued.
    pub fn bind(vsock_uds: &Path) -> std::io::Result<ReadyListener> {
        let mut name = vsock_uds.as_os_str().to_owned();
        name.push(format!("_{AGENT_READY_VSOCK_PORT}"));
        let path = PathBuf::from(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        Ok(ReadyListener { listener, path })
    }

    /// Whether the agent called within `wait`. Each call counts once.
    pub async fn called(&self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.listener.accept()).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_made_before_anyone_waits_is_kept_and_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let ready = ReadyListener::bind(&uds).unwrap();
        let path = dir
            .path()
            .join(format!("vsock.sock_{AGENT_READY_VSOCK_PORT}"));
        assert!(
            !ready.called(Duration::from_millis(20)).await,
            "no call yet"
        );
        // What the VMM does when the guest connects to the port: connect, then close.
        drop(std::os::unix::net::UnixStream::connect(&path).unwrap());
        assert!(ready.called(Duration::from_secs(5)).await);
        assert!(
            !ready.called(Duration::from_millis(20)).await,
            "counted twice"
        );
        drop(ready);
        assert!(!path.exists(), "the socket file outlived its listener");
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let path = dir
            .path()
            .join(format!("vsock.sock_{AGENT_READY_VSOCK_PORT}"));
        // A shim that crashed left its socket file behind (closing does not unlink it).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let ready = ReadyListener::bind(&uds).unwrap();
        drop(std::os::unix::net::UnixStream::connect(&path).unwrap());
        assert!(ready.called(Duration::from_secs(5)).await);
    }
}
