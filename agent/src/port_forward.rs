//! The guest end of CRI `PortForward`: each vsock stream on
//! [`PORT_FORWARD_VSOCK_PORT`](hyper_agent_protocol::PORT_FORWARD_VSOCK_PORT) asks for one
//! TCP port of the pod; the agent connects to it on loopback (the guest's network
//! namespace is the pod's) and relays bytes until either side closes.
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_agent_protocol::port_forward;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the shim may take to send its request, and the pod's port to accept.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts forwarding streams on vsock `port` for as long as the agent runs.
pub fn serve(port: u32) -> Result<()> {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
    let listener = tokio_vsock::VsockListener::bind(addr)
        .with_context(|| format!("bind the port forwarder on vsock port {port}"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(forward(stream));
        }
    });
    Ok(())
}

/// Serves one forwarding stream: handshake, then the relay.
pub async fn forward<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&mut stream))
        .await
        .unwrap_or_else(|_| Err(format!("no connection within {HANDSHAKE_TIMEOUT:?}")));
    let reply = port_forward::reply(&connected.as_ref().map(|_| ()).map_err(Clone::clone));
    if stream.write_all(&reply).await.is_err() {
        return;
    }
    match connected {
        Ok((port, mut tcp)) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
                tracing::debug!(port, "port forward ended: {e}");
            }
        }
        Err(why) => tracing::info!("port forward refused: {why}"),
    }
}

async fn connect<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, TcpStream), String> {
    let mut req = [0u8; 2];
    stream
        .read_exact(&mut req)
        .await
        .map_err(|e| format!("read the request: {e}"))?;
    let port = port_forward::parse_request(req)?;
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| format!("connect to port {port} in the pod: {e}"))?;
    Ok((port, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim's side of the handshake over `client`: the reply line.
    async fn ask(client: &mut tokio::io::DuplexStream, req: &[u8]) -> String {
        client.write_all(req).await.unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while client.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[tokio::test]
    async fn relays_to_the_pods_loopback_port() {
        let server = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&[&b"pong:"[..], &buf].concat()).await.unwrap();
        });
        let (mut client, agent_end) = tokio::io::duplex(4096);
        tokio::spawn(forward(agent_end));
        assert_eq!(ask(&mut client, &port_forward::request(port)).await, "OK");
        client.write_all(b"ping").await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "pong:ping");
    }

    #[tokio::test]
    async fn refusals_name_the_reason() {
        // A port nobody listens on: bind one, note it, free it.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cases: [(&str, Vec<u8>, &str); 2] = [
            (
                "closed port",
                port_forward::request(port).to_vec(),
                "connect to port",
            ),
            ("port 0", vec![0, 0], "port 0"),
        ];
        for (case, req, want) in cases {
            let (mut client, agent_end) = tokio::io::duplex(4096);
            tokio::spawn(forward(agent_end));
            let reply = ask(&mut client, &req).await;
            let err = port_forward::parse_reply(reply.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{case}: {err}");
        }
    }
}
