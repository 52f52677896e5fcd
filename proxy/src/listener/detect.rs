//! Protocol detection on a new connection's first bytes. The rule, in the order it is applied
//! (docs/limits.md states it for users):
//!
//! - the HTTP/2 connection preface is HTTP/2 (prior knowledge, which covers gRPC);
//! - bytes that start like an HTTP/1 request are HTTP/1: a token followed by a space and a
//!   request target starting with `/` or `*`, a registered method followed by a space, or a
//!   first line that contains ` HTTP/`. They go to the HTTP server, which parses them or
//!   answers 400 and closes: they are never tunnelled, so nothing that looks like a request
//!   reaches an upstream without passing its route's stages;
//! - anything else is opaque TCP, decided as early as possible: a first byte that cannot start
//!   a method (TLS, binary protocols) or a control byte in the first line decides at once, a
//!   complete first line that is none of the above (`PING`, `get key`) decides at its end;
//! - a client that sends nothing (the server speaks first) is TCP when the detection timeout
//!   ends; a client that sent the printable start of a line and paused, or a first line
//!   longer than 8 KiB, is HTTP/1 (the HTTP server's own limits then answer it).
//!
//! Listeners declared `http1`, `http2` or `http`, and transparent ports listed in
//! `detection.httpPorts`, never fall back to TCP: what is not HTTP/2 is HTTP/1 there.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A first line longer than this is not worth waiting for: it is handed to the HTTP server,
/// whose request-line limit answers it.
const MAX_DETECT_BYTES: usize = 8 * 1024;
/// Methods of the IANA registry that matter in practice: `GET key` is a request even with an
/// unusual target. Case matters, so text protocols' lower-case commands stay opaque.
const METHODS: [&[u8]; 10] =
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PRI"];

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

/// What a listener lets detection decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1, HTTP/2 or opaque TCP.
    Auto,
    /// HTTP/1 or HTTP/2; bytes that are not HTTP are answered by the HTTP/1 server (400).
    HttpOnly,
}

enum Verdict {
    Known(Protocol),
    NeedMore,
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A byte no HTTP/1 request line contains (CR and LF end it; HTAB is tolerated).
fn is_control(c: u8) -> bool {
    (c < 0x20 && !matches!(c, b'\t' | b'\r' | b'\n')) || c == 0x7f
}

fn classify(b: &[u8]) -> Verdict {
    let Some(&first) = b.first() else { return Verdict::NeedMore };
    let n = b.len().min(H2_PREFACE.len());
    if b.get(..n) == H2_PREFACE.get(..n) {
        return if b.len() >= H2_PREFACE.len() { Verdict::Known(Protocol::Http2) } else { Verdict::NeedMore };
    }
    if !is_tchar(first) {
        return Verdict::Known(Protocol::Opaque);
    }
    let window = &b[..b.len().min(MAX_DETECT_BYTES)];
    let line_end = window.iter().position(|c| *c == b'\n');
    let line = &window[..line_end.unwrap_or(window.len())];
    if line.iter().any(|c| is_control(*c)) {
        return Verdict::Known(Protocol::Opaque);
    }
    let token = line.iter().position(|c| !is_tchar(*c)).unwrap_or(line.len());
    if line.get(token) == Some(&b' ') {
        let method = &line[..token];
        let target = line.get(token + 1);
        if METHODS.contains(&method) || matches!(target, Some(b'/' | b'*')) {
            return Verdict::Known(Protocol::Http1);
        }
    }
    if line_end.is_some() {
        let http = line.windows(6).any(|w| w == b" HTTP/");
        return Verdict::Known(if http { Protocol::Http1 } else { Protocol::Opaque });
    }
    if b.len() >= MAX_DETECT_BYTES {
        return Verdict::Known(Protocol::Http1);
    }
    Verdict::NeedMore
}

/// Reads until the protocol is known, the peer stops sending, or `timeout` passes. The bytes
/// read are returned inside the `Prefixed` stream so nothing is lost.
pub async fn detect<S: AsyncRead + Unpin>(
    mut io: S,
    timeout: Duration,
    mode: Mode,
) -> io::Result<(Protocol, Prefixed<S>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Verdict::Known(p) = classify(&buf) {
            break p;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            // Silence is a server-first protocol; the start of a line that then pauses is a
            // (slow or hostile) HTTP client, never a way around the HTTP server.
            Ok(Ok(0)) | Err(_) if buf.is_empty() => break Protocol::Opaque,
            Ok(Ok(0)) | Err(_) => break Protocol::Http1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    let protocol = match (protocol, mode) {
        (Protocol::Opaque, Mode::HttpOnly) => Protocol::Http1,
        (p, _) => p,
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

    /// Bytes read during detection are still to be replayed.
    pub fn has_prefix(&self) -> bool {
        !self.prefix.is_empty()
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
        assert_eq!(verdict(b"GE"), None);
        assert_eq!(verdict(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque), "TLS decides at once");
        assert_eq!(verdict(b"A\x00\x00\x00"), Some(Protocol::Opaque), "a control byte decides at once");
        assert_eq!(verdict(b"hello world\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"PING\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"get key\r\n"), Some(Protocol::Opaque), "memcached's text protocol");
        assert_eq!(verdict(b"*1\r\n$4\r\nPING\r\n"), Some(Protocol::Opaque), "RESP");
    }

    #[test]
    fn what_starts_like_a_request_is_http_even_when_the_parser_will_refuse_it() {
        for line in [
            &b"GET / HTTP/1.2\r\n"[..],
            b"GET /\r\n",
            b"post / HTTP/1.1\r\n",
            b"GE(T / HTTP/1.1\r\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCD / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET / HTTP/1.1\n",
            b"GET key\r\n",
            b"GET / SPDY/3\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
        ] {
            assert_eq!(verdict(line), Some(Protocol::Http1), "{}", String::from_utf8_lossy(line));
        }
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES + 10, b'a');
        assert_eq!(verdict(&long), Some(Protocol::Http1), "a line over the limit");
        let mut token = vec![b'a'; MAX_DETECT_BYTES];
        token.push(b'b');
        assert_eq!(verdict(&token), Some(Protocol::Http1), "a token over the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_pauses_after_its_first_byte_is_http() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"G").await.unwrap();
        let (p, _) = detect(server, Duration::from_secs(1), Mode::Auto).await.unwrap();
        assert_eq!(p, Protocol::Http1);
    }

    #[tokio::test]
    async fn http_only_listeners_never_fall_back() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PING\r\n").await.unwrap();
        let (p, _) = detect(server, Duration::from_secs(1), Mode::HttpOnly).await.unwrap();
        assert_eq!(p, Protocol::Http1);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_becomes_tcp_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (p, _) = detect(server, Duration::from_secs(1), Mode::Auto).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        drop(client);
    }

    #[tokio::test]
    async fn bytes_read_during_detection_are_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (p, mut io) = detect(server, Duration::from_secs(5), Mode::Auto).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        client.write_all(b"rest").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nrest");
    }
}
