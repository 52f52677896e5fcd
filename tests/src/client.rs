//! Plain HTTP clients for tests: one request on a new HTTP/1.1 connection, or over h2c with
//! prior knowledge, returning status, headers, body and trailers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn reason(&self) -> Option<&str> {
        self.headers.get("x-bulwark-reason").and_then(|v| v.to_str().ok())
    }

    /// The upstream's JSON echo of the request it received.
    pub fn echo(&self) -> crate::upstream::Echo {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }
}

pub fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("valid request")
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    send(addr, request(Method::GET, path, headers)).await
}

/// One request on a new HTTP/1.1 connection. Adds `Host` when missing.
pub async fn send(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut().insert(http::header::HOST, addr.to_string().parse()?);
    }
    let mut send = connect_h1(addr).await?;
    collect(send.send_request(req).await?).await
}

/// An HTTP/1.1 connection kept open for several requests.
pub async fn connect_h1(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// An h2c connection (prior knowledge); the task ends when the connection closes.
pub async fn connect_h2(
    addr: SocketAddr,
) -> anyhow::Result<(http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<Result<(), hyper::Error>>)> {
    let stream = TcpStream::connect(addr).await?;
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    Ok((send, tokio::spawn(conn)))
}

/// One request over a new h2c connection (prior knowledge).
pub async fn get_h2(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    let (mut send, _conn) = connect_h2(addr).await?;
    let mut req = request(Method::GET, &format!("http://{addr}{path}"), headers);
    *req.version_mut() = Version::HTTP_2;
    collect(send.send_request(req).await?).await
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<Reply> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Polls `url`'s path on `addr` until it answers 200 or `within` passes.
pub async fn wait_ok(addr: SocketAddr, path: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), get(addr, path, &[])).await {
            if r.status == StatusCode::OK {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
