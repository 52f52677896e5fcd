//! Protocol detection on a new connection's first bytes. HTTP/2 is recognised by its
//! connection preface (prior knowledge, which covers gRPC), HTTP/1.x by a request line ending
//! in ` HTTP/1.0` or ` HTTP/1.1`. Anything else is opaque TCP, decided as early as possible:
//! a first byte that cannot start a method (TLS, binary protocols) decides at once, and a
//! client that sends nothing (the server speaks first) is forwarded as TCP when the detection
//! timeout ends, so such protocols never hang.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not worth waiting for; treat the stream as opaque.
const MAX_DETECT_BYTES: usize = 8 * 1024;
const MAX_METHOD_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "tcp",
        }
    }
}

enum Verdict {
    Known(Protocol),
    NeedMore,
}

fn classify(b: &[u8]) -> Verdict {
    if b.is_empty() {
        return Verdict::NeedMore;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if b.len() >= H2_PREFACE.len() { Verdict::Known(Protocol::Http2) } else { Verdict::NeedMore };
    }
    // Method token: upper-case letters (and '-') up to the first space.
    match b.iter().position(|c| *c == b' ') {
        None if b.len() > MAX_METHOD_LEN => return Verdict::Known(Protocol::Opaque),
        None => {
            if !b.iter().all(|c| c.is_ascii_uppercase() || *c == b'-') {
                return Verdict::Known(Protocol::Opaque);
            }
            return Verdict::NeedMore;
        }
        Some(0) => return Verdict::Known(Protocol::Opaque),
        Some(i) if i > MAX_METHOD_LEN || !b[..i].iter().all(|c| c.is_ascii_uppercase() || *c == b'-') => {
            return Verdict::Known(Protocol::Opaque)
        }
        Some(_) => {}
    }
    match b.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &b[..end];
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Verdict::Known(Protocol::Http1)
            } else {
                Verdict::Known(Protocol::Opaque)
            }
        }
        None if b.len() >= MAX_DETECT_BYTES => Verdict::Known(Protocol::Opaque),
        None => Verdict::NeedMore,
    }
}

/// Reads until the protocol is known, the peer stops sending, or `timeout` passes. The bytes
/// read are returned inside the `Prefixed` stream so nothing is lost.
pub async fn detect<S: AsyncRead + Unpin>(mut io: S, timeout: Duration) -> io::Result<(Protocol, Prefixed<S>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Verdict::Known(p) = classify(&buf) {
            break p;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break Protocol::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, Prefixed::new(buf.freeze(), io)))
}

/// A stream that first yields `prefix`, then reads from `inner`. Writes go to `inner`.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::io::delegate_async_write!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn verdict(b: &[u8]) -> Option<Protocol> {
        match classify(b) {
            Verdict::Known(p) => Some(p),
            Verdict::NeedMore => None,
        }
    }

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(b"GET /x HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(verdict(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(verdict(b"GET / HT"), None);
        assert_eq!(verdict(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque), "TLS decides at once");
        assert_eq!(verdict(b"hello world\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"PING\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"GET / SPDY/3\r\n"), Some(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_becomes_tcp_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (p, _) = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        drop(client);
    }

    #[tokio::test]
    async fn bytes_read_during_detection_are_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (p, mut io) = detect(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        client.write_all(b"rest").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nrest");
    }
}
