//! Raw sockets on both sides of the proxy, for what a well-behaved HTTP library never sends
//! or hides once parsed: a client that writes exact bytes, and an upstream that records every
//! byte it receives, byte for byte, and answers each request it can frame with
//! `200 raw-ok` (Content-Length or chunked bodies; anything else it stops parsing and just
//! records).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one connection received.
type Log = Arc<Mutex<Vec<u8>>>;

pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nraw-ok";

/// Writes `bytes`, then reads until the proxy closes or `within` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], within: Duration) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else { return String::new() };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    /// What each accepted connection received, in accept order.
    connections: Arc<Mutex<Vec<Log>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        let connections: Arc<Mutex<Vec<Log>>> = Arc::default();
        let all = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let log = Arc::new(Mutex::new(Vec::new()));
                all.lock().expect("raw upstream log").push(log.clone());
                tokio::spawn(serve(s, log));
            }
        });
        RawUpstream { addr, connections, task }
    }

    /// Every byte received, all connections one after another.
    pub fn received(&self) -> Vec<u8> {
        let conns = self.connections.lock().expect("raw upstream log");
        conns.iter().flat_map(|c| c.lock().expect("raw upstream log").clone()).collect()
    }

    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received()).into_owned()
    }

    /// The request heads received (request line and header lines), parsed strictly.
    pub fn heads(&self) -> Vec<Head> {
        self.framed().0
    }

    /// How many of the received bytes belong to a strictly framed request; anything beyond is
    /// bytes no HTTP/1 parser agrees on.
    pub fn framed_len(&self) -> usize {
        self.framed().1
    }

    fn framed(&self) -> (Vec<Head>, usize) {
        let conns = self.connections.lock().expect("raw upstream log");
        let (mut heads, mut total) = (Vec::new(), 0);
        for c in conns.iter() {
            let bytes = c.lock().expect("raw upstream log").clone();
            let mut at = 0;
            while let Some(Framed { head, len }) = frame(bytes.get(at..).unwrap_or_default()) {
                heads.push(head);
                at += len;
            }
            total += at;
        }
        (heads, total)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request head as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Values of header `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

struct Framed {
    head: Head,
    /// Bytes of head and body.
    len: usize,
}

/// Frames one request at the start of `b`: its head and, by Content-Length or chunked
/// coding, its body. None when incomplete or not strictly HTTP/1.
fn frame(b: &[u8]) -> Option<Framed> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(b).ok()? else { return None };
    let head = Head {
        method: req.method?.to_string(),
        target: req.path?.to_string(),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    };
    let body = b.get(head_len..)?;
    let body_len = if head.all("transfer-encoding").iter().any(|v| v.eq_ignore_ascii_case("chunked")) {
        chunked_len(body)?
    } else {
        match head.all("content-length").first() {
            Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n <= body.len())?,
            None => 0,
        }
    };
    Some(Framed { head, len: head_len + body_len })
}

fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(b.get(at..at + line_end)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = b.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            if end == 0 {
                return Some(at + 2);
            }
            at += end + 2;
            continue;
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if at > b.len() {
            return None;
        }
    }
}

async fn serve(mut s: TcpStream, log: Log) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.lock().expect("raw upstream log").extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some(f) = frame(&pending) {
            pending.drain(..f.len);
            if s.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
    }
}

/// HTTP/2 frames written by hand, for what no client library sends (floods, frames out of
/// order). RFC 9113 §4.1: length (24 bits), type, flags, stream id (31 bits), payload.
pub mod h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const RST_STREAM: u8 = 0x3;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK block for `GET / http` with `:authority: a`, from the static table and one
    /// literal (RFC 7541 appendix A).
    pub fn get_block() -> Vec<u8> {
        // :method GET (2), :path / (4), :scheme http (6), :authority literal without indexing.
        vec![0x82, 0x84, 0x86, 0x01, 0x01, b'a']
    }

    /// The frames in `buf`: (type, stream, payload).
    pub fn frames(buf: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(head) = buf.get(at..at + 9) {
            let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let Some(payload) = buf.get(at + 9..at + 9 + len) else { break };
            out.push((head[3], stream, payload.to_vec()));
            at += 9 + len;
        }
        out
    }

    /// The error code of the first frame of type `kind` (GOAWAY: after the last stream id;
    /// RST_STREAM: the payload).
    pub fn error_code(buf: &[u8], kind: u8) -> Option<u32> {
        let (_, _, p) = frames(buf).into_iter().find(|(t, _, _)| *t == kind)?;
        let at = if kind == GOAWAY { 4 } else { 0 };
        Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
    }
}
