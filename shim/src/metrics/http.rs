//! Prometheus text over HTTP/1.1: `GET /metrics` on a unix socket (each pod's shim) or
//! on TCP (`hyperctl monitor`), and the client that fetches a pod's page.
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The path every endpoint serves its page on.
pub const PATH: &str = "/metrics";
/// The largest page the client takes (a pod's is tens of KiB).
const MAX_PAGE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
#[error("metrics from {socket}: {message}")]
pub struct FetchError {
    pub socket: String,
    pub message: String,
}

/// Serves one connection: `GET /metrics` answers with what `page` makes, anything else
/// with 404 or 405 saying what is served.
pub async fn serve_connection<S, F, Fut>(stream: S, page: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let page = page.clone();
        async move { Ok::<_, Infallible>(respond(&req, page).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!("metrics connection: {e}");
    }
}

async fn respond<F, Fut>(req: &Request<Incoming>, page: F) -> Response<Full<Bytes>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, PATH) => (StatusCode::OK, page().await),
        (&Method::GET, other) => (
            StatusCode::NOT_FOUND,
            format!("no page {other:?} here: the metrics are at {PATH}\n"),
        ),
        (method, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not served: GET {PATH}\n"),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let content_type = header::HeaderValue::from_static(CONTENT_TYPE);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    resp
}

/// Fetches the page a unix socket serves, within `timeout`.
pub async fn fetch_unix(socket: &Path, timeout: Duration) -> Result<String, FetchError> {
    let err = |message: String| FetchError {
        socket: socket.display().to_string(),
        message,
    };
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(PATH)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {PATH}: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_PAGE)
            .collect()
            .await
            .map_err(|e| format!("reading the page: {e}"))?
            .to_bytes();
        conn.abort();
        let text = String::from_utf8(body.to_vec()).map_err(|_| "the page is not UTF-8")?;
        if !status.is_success() {
            return Err(format!("GET {PATH}: {status}: {}", text.trim()));
        }
        Ok(text)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on a socket in `dir` whose page counts the scrapes.
    fn server(dir: &Path) -> std::path::PathBuf {
        let socket = dir.join("metrics.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let scrapes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let scrapes = scrapes.clone();
                tokio::spawn(serve_connection(stream, move || {
                    let n = scrapes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    async move { format!("scrapes_total {n}\n") }
                }));
            }
        });
        socket
    }

    #[tokio::test]
    async fn the_client_fetches_a_fresh_page_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let socket = server(dir.path());
        for want in ["scrapes_total 1\n", "scrapes_total 2\n"] {
            let page = fetch_unix(&socket, Duration::from_secs(5)).await.unwrap();
            assert_eq!(page, want);
        }
        let gone = dir.path().join("none.sock");
        let e = fetch_unix(&gone, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("none.sock: connect:"), "{e}");
    }

    #[tokio::test]
    async fn requests_other_than_get_metrics_are_told_what_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let socket = server(dir.path());
        for (request, want) in [
            ("GET /metrics HTTP/1.0\r\n\r\n", "200 OK"),
            ("GET / HTTP/1.0\r\n\r\n", "404 Not Found"),
            ("POST /metrics HTTP/1.0\r\n\r\n", "405 Method Not Allowed"),
        ] {
            let mut s = UnixStream::connect(&socket).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.unwrap();
            assert!(
                reply.starts_with(&format!("HTTP/1.0 {want}")),
                "{request:?}: {reply}"
            );
            assert!(reply.contains(CONTENT_TYPE), "{reply}");
        }
    }
}
