//! An HTTP upstream (HTTP/1.1 and h2c on one port) told per request how to misbehave, by
//! request headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-delay: 500ms` | wait before answering |
//! | `x-hang: 1` | never answer |
//! | `x-reset: 1` | drop the connection/stream without an answer |
//! | `x-status: 503` | answer with this status |
//! | `x-fail-every: 3` | answer 503 to the 1st, 4th, 7th… request this upstream receives |
//! | `x-stream: 5` | send the body in 5 chunks, `x-stream-interval` apart (default 50ms) |
//! | `x-stall-after: 2` | send 2 chunks, then go silent forever |
//! | `x-trailer: 1` | end the body with a `x-upstream-trailer: yes` trailer |
//! | `x-body-bytes: 20000` | answer with a body of that many bytes instead of the echo |
//! | `x-upgrade: 1` | accept an `Upgrade` with 101 and echo bytes on the upgraded stream |
//!
//! `set_status`, `set_delay` and `set_capacity` change how every request is answered.
//!
//! Otherwise it answers 200 with a JSON echo of what it received (method, URI, version,
//! headers), so tests can assert what the proxy forwarded. It counts requests and tracks
//! its own concurrency.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
}

#[derive(Default)]
pub struct Stats {
    /// When non-zero, every request is answered with this status (set with `set_status`).
    pub forced_status: std::sync::atomic::AtomicU16,
    /// When non-zero, every request waits this many milliseconds first (set with `set_delay`).
    pub forced_delay_ms: std::sync::atomic::AtomicU64,
    pub requests: AtomicUsize,
    /// When set (with `set_capacity`), requests are served this many at a time, the rest wait
    /// their turn, and once three times that many are inside the upstream answers 503 at once.
    pub capacity: std::sync::Mutex<Option<(usize, Arc<tokio::sync::Semaphore>)>>,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts on 127.0.0.1, a free port.
    pub async fn start() -> Upstream {
        Self::start_on("127.0.0.1:0".parse().expect("literal")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let task = tokio::spawn(async move { serve(listener, s).await });
        Upstream { addr, stats, task }
    }

    /// From now on answer every request with `status` (0: behave as the request asks again).
    pub fn set_status(&self, status: u16) {
        self.stats.forced_status.store(status, Ordering::SeqCst);
    }

    /// From now on make every request wait `delay` before it is answered (zero: no wait).
    pub fn set_delay(&self, delay: Duration) {
        self.stats.forced_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on serve `n` requests at a time (the forced delay is each one's service time)
    /// and queue the rest, overloaded (503) beyond `3 × n` inside; 0: no limit. Requests
    /// already inside finish under the capacity they entered with.
    pub fn set_capacity(&self, n: usize) {
        let mut c = self.stats.capacity.lock().unwrap_or_else(|e| e.into_inner());
        *c = (n > 0).then(|| (n, Arc::new(tokio::sync::Semaphore::new(n))));
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes open connections (a crash, as seen by the proxy).
    pub fn crash(self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint that does not answer connects: a listener whose accept queue is full, so a
/// connect to it hangs in SYN-SENT (a black-holed endpoint, on loopback). `answer` turns it
/// into a working [`Upstream`] on the same address.
pub struct Blackhole {
    pub addr: SocketAddr,
    socket: socket2::Socket,
    _fill: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
        // The queue takes one connection beyond its backlog of 0; two fill it for sure.
        let _fill = (0..2)
            .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect();
        Blackhole { addr, socket, _fill }
    }

    /// From now on the endpoint accepts and answers like [`Upstream`].
    pub fn answer(self) -> Upstream {
        self.socket.listen(1024).expect("listen");
        self.socket.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(self.socket.into()).expect("tokio listener");
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let task = tokio::spawn(async move { serve(listener, s).await });
        Upstream { addr: self.addr, stats, task }
    }
}

pub async fn serve(listener: TcpListener, stats: Arc<Stats>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| answer(req, stats.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn parse_ms(v: &str) -> Duration {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap_or(0))
    } else if let Some(s) = v.strip_suffix('s') {
        Duration::from_secs_f64(s.parse().unwrap_or(0.0))
    } else {
        Duration::from_millis(v.parse().unwrap_or(0))
    }
}

struct InFlight(Arc<Stats>);

impl InFlight {
    fn enter(stats: Arc<Stats>) -> InFlight {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(mut req: Request<Incoming>, stats: Arc<Stats>) -> Result<Response<Body>, std::io::Error> {
    let nth = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight::enter(stats.clone());
    let h = req.headers().clone();
    let capacity = stats.capacity.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _served = match capacity {
        Some((n, _)) if stats.in_flight.load(Ordering::SeqCst) > 3 * n => {
            return Ok(Response::builder().status(503).body(empty()).expect("valid"));
        }
        Some((_, slots)) => slots.acquire_owned().await.ok(),
        None => None,
    };
    let forced_delay = stats.forced_delay_ms.load(Ordering::SeqCst);
    if forced_delay > 0 {
        tokio::time::sleep(Duration::from_millis(forced_delay)).await;
    }
    if let Some(d) = header(&h, "x-delay") {
        tokio::time::sleep(parse_ms(d)).await;
    }
    if header(&h, "x-hang").is_some() {
        std::future::pending::<()>().await;
    }
    if header(&h, "x-reset").is_some() {
        return Err(std::io::Error::other("reset on request"));
    }
    if header(&h, "x-upgrade").is_some() {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", header(&h, "upgrade").unwrap_or("echo"))
            .body(empty())
            .expect("valid");
        return Ok(resp);
    }
    let every = header(&h, "x-fail-every").and_then(|s| s.parse::<usize>().ok());
    let forced = stats.forced_status.load(Ordering::SeqCst);
    let status = match every {
        _ if forced != 0 => forced,
        Some(n) if n > 0 && nth % n == 1 % n => 503,
        _ => header(&h, "x-status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200),
    };
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body_len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let echo = Echo {
        method,
        uri,
        version,
        headers: h.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
        body_len,
    };
    let json = Bytes::from(serde_json::to_vec(&echo).expect("json"));
    let mut builder = Response::builder().status(status).header("content-type", "application/json");
    let chunks = header(&h, "x-stream").and_then(|s| s.parse::<usize>().ok());
    let stall = header(&h, "x-stall-after").and_then(|s| s.parse::<usize>().ok());
    let trailer = header(&h, "x-trailer").is_some();
    let body = if chunks.is_some() || stall.is_some() || trailer {
        let interval = header(&h, "x-stream-interval").map(parse_ms).unwrap_or(Duration::from_millis(50));
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let n = stall.or(chunks).unwrap_or(1);
        tokio::spawn(async move {
            for i in 0..n {
                if tx.send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n"))))).await.is_err() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
            if stall.is_some() {
                // Keep the stream open and silent.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            if trailer {
                let mut t = HeaderMap::new();
                t.insert("x-upstream-trailer", "yes".parse().expect("valid"));
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        builder = builder.header("x-upstream-streaming", "1");
        StreamBody::new(stream).boxed()
    } else if let Some(n) = header(&h, "x-body-bytes").and_then(|s| s.parse::<usize>().ok()) {
        Repeat { left: n, chunk: Bytes::from_static(&[b'b'; 64 * 1024]) }.boxed()
    } else {
        Full::new(json).map_err(|never| match never {}).boxed()
    };
    Ok(builder.body(body).expect("valid response"))
}

/// `left` bytes of `b`, made as the proxy reads them: a 50 MB body costs this server 64 KiB,
/// and a client that never reads holds it back through the proxy.
struct Repeat {
    left: usize,
    chunk: Bytes,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left as u64)
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never: Infallible| match never {}).boxed()
}
