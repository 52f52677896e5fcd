//! HTTP/1 half-close. A client that sent `Connection: close` (or an HTTP/1.0 request without
//! keep-alive) and a request without a body has said it sends nothing more, so it may shut
//! down its write side and still wait for the response (RFC 9112 §9.6): its end of stream is
//! not a departure, and the request goes on. (With a body the end of stream could cut the
//! body short, which must fail the request, so it is not held back.) Any other end of stream during an exchange is a client that went away,
//! and the request is cancelled as before: at the TCP level a half-close and a close look the
//! same, and a keep-alive client has no reason to half-close.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONNECTION;
use http::{Request, Version};
use tokio::io::{AsyncRead, ReadBuf};

/// Set per request by the service before hyper reads on: this client announced the close.
#[derive(Clone, Default)]
pub struct Announced(Arc<AtomicBool>);

impl Announced {
    pub fn note<B: http_body::Body>(&self, req: &Request<B>) {
        self.0.store(req.body().is_end_stream() && announces_close(req), Ordering::Release);
    }
}

fn announces_close<B>(req: &Request<B>) -> bool {
    let tokens = || {
        req.headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    match req.version() {
        Version::HTTP_10 => !tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")),
        Version::HTTP_11 => tokens().any(|t| t.eq_ignore_ascii_case("close")),
        _ => false,
    }
}

/// The downstream stream as hyper reads it: an end of stream after an announced close is
/// held back, so hyper finishes the exchange (and then closes, as the client asked).
pub struct HalfClose<S> {
    inner: S,
    announced: Announced,
}

impl<S> HalfClose<S> {
    pub fn new(inner: S, announced: Announced) -> Self {
        HalfClose { inner, announced }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HalfClose<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let eof = matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0;
        if eof && self.announced.0.load(Ordering::Acquire) {
            // Nothing more will come and none is owed: the response's completion wakes the
            // connection, which then closes.
            return Poll::Pending;
        }
        read
    }
}

crate::io::delegate_async_write!(HalfClose);

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, connection: Option<&str>) -> Request<()> {
        let mut b = Request::builder().version(version);
        if let Some(c) = connection {
            b = b.header(CONNECTION, c);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_an_announced_close_makes_end_of_stream_a_half_close() {
        assert!(announces_close(&req(Version::HTTP_11, Some("close"))));
        assert!(announces_close(&req(Version::HTTP_11, Some("x-foo, Close"))));
        assert!(!announces_close(&req(Version::HTTP_11, None)));
        assert!(announces_close(&req(Version::HTTP_10, None)));
        assert!(!announces_close(&req(Version::HTTP_10, Some("keep-alive"))));
        assert!(!announces_close(&req(Version::HTTP_2, Some("close"))));
    }
}
