//! CRI `PortForward` for a pod whose processes live in a VM. containerd dials
//! `localhost:<port>` inside the pod's network namespace on the host; there the shim's
//! listener takes every such connection (see `sk_lookup`), reads the dialed port from the
//! accepted socket, and relays the bytes to the agent's port forwarder over vsock, which
//! connects to that port inside the guest.
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_agent_protocol::{PORT_FORWARD_VSOCK_PORT, port_forward};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::netns::{self, NetnsError};
use super::sk_lookup::{LoopbackSteering, SkLookupError};
use crate::agent::hybrid_vsock;

/// How long the VMM and the agent may take to answer a forwarding request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("port forwarding: listen on 127.0.0.1 in the pod's network namespace: {0}")]
    Listen(std::io::Error),
    #[error("port forwarding: {0}")]
    Steering(#[from] SkLookupError),
}

/// The listener and its steering program in one pod's network namespace; both go when
/// this is dropped.
#[derive(Debug)]
pub struct PortForwarder {
    accept: JoinHandle<()>,
    _steering: LoopbackSteering,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PortForwarder {
    /// Starts forwarding connections to 127.0.0.1 in the namespace at `netns` into the
    /// guest behind the VMM's vsock socket `vsock_uds`.
    pub async fn start(
        netns: &Path,
        vsock_uds: PathBuf,
        pod: String,
    ) -> Result<Self, PortForwardError> {
        // Opened once: the listener and the program are in the same namespace.
        let ns = netns::open(netns)?;
        let entered = ns.try_clone().map_err(|cause| NetnsError::Open {
            path: netns.to_path_buf(),
            cause,
        })?;
        // The socket must be made in the namespace whose connections it takes.
        let listener = netns::run_in_opened(entered, netns, || async {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PortForwardError::Listen)
        })
        .await?;
        let steering = LoopbackSteering::attach(ns.as_fd(), listener.as_fd())?;
        listener
            .set_nonblocking(true)
            .map_err(PortForwardError::Listen)?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(PortForwardError::Listen)?;
        tracing::info!(%pod, netns = %netns.display(), "port forwarding ready");
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        tokio::spawn(relay(tcp, vsock_uds.clone(), pod.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(%pod, "port forwarding: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(PortForwarder {
            accept,
            _steering: steering,
        })
    }
}

/// One forwarded connection: the port that was dialed, the agent's handshake, the bytes.
async fn relay(mut tcp: tokio::net::TcpStream, vsock_uds: PathBuf, pod: String) {
    let port = match tcp.local_addr() {
        Ok(SocketAddr::V4(a)) => a.port(),
        other => {
            tracing::warn!(%pod, "port forwarding: not an IPv4 loopback connection: {other:?}");
            return;
        }
    };
    let guest = tokio::time::timeout(HANDSHAKE_TIMEOUT, open_in_guest(&vsock_uds, port)).await;
    let mut guest = match guest {
        Ok(Ok(stream)) => stream,
        Ok(Err(why)) => {
            // The dialer sees the connection close, as it would see it refused.
            tracing::info!(%pod, port, "port forwarding: {why}");
            let _ = tcp.shutdown().await;
            return;
        }
        Err(_) => {
            tracing::warn!(%pod, port, "port forwarding: no answer from the guest within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    tracing::debug!(%pod, port, "port forwarding: connected");
    if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut guest).await {
        tracing::debug!(%pod, port, "port forwarding ended: {e}");
    }
}

async fn open_in_guest(vsock_uds: &Path, port: u16) -> Result<tokio::net::UnixStream, String> {
    let mut stream = hybrid_vsock::connect(vsock_uds, PORT_FORWARD_VSOCK_PORT, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&port_forward::request(port))
        .await
        .map_err(|e| format!("send the request to the guest: {e}"))?;
    let reply = hybrid_vsock::read_line(&mut stream, port_forward::MAX_REPLY_LEN)
        .await
        .map_err(|e| format!("read the guest's reply: {e}"))?
        .ok_or("the guest closed the stream without a reply")?;
    port_forward::parse_reply(&reply)?;
    Ok(stream)
}
