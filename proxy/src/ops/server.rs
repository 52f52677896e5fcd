//! A small HTTP/1.1 server for the proxy's own endpoints (admin, health). Requests are
//! answered by a function returning a future; bodies are small and complete. The peer's address
//! is in the request's extensions as [`Peer`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> Reply + Send + Sync>;

/// Who sent the request.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// A reply that is already known.
pub fn ready(response: Response<Full<Bytes>>) -> Reply {
    Box::pin(std::future::ready(response))
}

const MAX_BODY: usize = 64 * 1024;

pub async fn serve(socket: TcpListener, handler: Handler, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let (stream, peer) = stream;
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.extensions.insert(Peer(peer));
                    let resp = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => handler(Request::from_parts(parts, b.to_bytes())).await,
                        Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    typed(status, "text/plain; charset=utf-8", body)
}

pub fn typed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}
