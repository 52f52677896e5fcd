//! The stage chain in process: a real listener and HTTP server of the proxy in front of a real
//! upstream on loopback, the stage state read straight from the store. Clients that leave are
//! TCP connections closed mid-request; each test asserts that what the stage held is back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::config::load_text;
use crate::control::store::Store;
use crate::downstream::{Downstream, ExplicitUpstream, Upstream};
use crate::listener::{self, Kind, Lifecycle, Listener};
use crate::shared::Shared;
use crate::stage::registry::{ClusterState, RouteState};
use crate::telemetry::metrics::Metrics;

/// An upstream answering after `x-delay` milliseconds with `x-status`, and `x-retry-after`
/// as `Retry-After`; it counts what it received.
struct TestUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn upstream() -> TestUpstream {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        if let Some(ms) = header("x-delay") {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if let Some(s) = header("x-status") {
                            *resp.status_mut() = StatusCode::from_u16(s as u16).unwrap();
                        }
                        if let Some(after) = header("x-retry-after") {
                            resp.headers_mut().insert("retry-after", after.into());
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    TestUpstream { addr, requests }
}

struct TestProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    downstream: Downstream,
}

/// The proxy with one explicit listener `web` to `to`, governed by a policy whose `spec`
/// continues with `spec` (indented four spaces).
async fn proxy(to: SocketAddr, spec: &str) -> TestProxy {
    let yaml = format!(
        "listeners:\n- {{ name: web, listen: \"127.0.0.1:0\", upstream: \"{to}\" }}\npolicies:\n- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {{ name: web }}\n  spec:\n    target: {{ listener: web }}\n{spec}"
    );
    let loaded = load_text(&yaml, "test", Path::new("."), "1").unwrap_or_else(|e| panic!("{e:?}"));
    let metrics = Arc::new(Metrics::new());
    let config = loaded.config.listeners[0].clone();
    let store = Arc::new(Store::new(loaded.config, loaded.snapshot, metrics.clone(), true));
    let shared = Arc::new(Shared::new(store, metrics, TaskTracker::new()).unwrap());
    let explicit = ExplicitUpstream::start(&config, &CancellationToken::new());
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let downstream = Downstream::new(config.direction, "web".into(), Upstream::Explicit(explicit.clone()), addr);
    let l = Arc::new(Listener { label: "web".into(), kind: Kind::Explicit(Arc::new(ArcSwap::new(explicit))) });
    let life = Lifecycle::new(shared.tasks.clone());
    tokio::spawn(listener::run(socket, l, shared.clone(), life));
    TestProxy { addr, shared, downstream }
}

impl TestProxy {
    fn route(&self) -> Arc<RouteState> {
        let installed = self.shared.store.installed();
        installed.states.iter().flatten().find(|s| &*s.route == "default").cloned().expect("the default route")
    }

    fn cluster(&self) -> Arc<ClusterState> {
        self.route().cluster(&self.downstream.cluster)
    }
}

/// Status and `x-bulwark-reason` of a GET with `headers`.
async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::get("/").header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    let reason = resp.headers().get("x-bulwark-reason").map(|v| v.to_str().unwrap().to_string());
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    (status, reason)
}

/// A client that sends a GET and will leave when the returned stream is dropped.
async fn leaving(addr: SocketAddr, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = String::from("GET / HTTP/1.1\r\nhost: web\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Waits (generously) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_rate_limited_request_reaches_neither_the_breaker_nor_the_upstream() {
    let up = upstream().await;
    let p = proxy(
        up.addr,
        "    defaults:\n      rateLimit: { perSecond: 1, burst: 1 }\n      circuitBreaker: { failureRatePercent: 50, minimumRequests: 100, window: 30s }\n",
    )
    .await;
    assert_eq!(get(p.addr, &[]).await, (200, None));
    for _ in 0..5 {
        assert_eq!(get(p.addr, &[]).await, (429, Some("rate-limited".into())));
    }
    let breaker = p.cluster().breaker.clone().unwrap();
    assert_eq!(breaker.view(tokio::time::Instant::now()).requests_in_window, 1, "refused requests took no place");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_aborted_request_takes_no_bulkhead_slot() {
    let up = upstream().await;
    let p = proxy(
        up.addr,
        "    defaults:\n      bulkhead: { maxConcurrent: 1, maxQueued: 0 }\n      faults:\n        abort: { httpStatus: 503, percent: 100 }\n        match: { headers: [{ name: x-abort, exact: \"on\" }] }\n",
    )
    .await;
    let slow = tokio::spawn(get(p.addr, &[("x-delay", "1000")]));
    let bulkhead = || p.route().bulkhead.as_ref().map(|b| b.in_flight()).unwrap();
    until("the slow request holds the slot", || bulkhead() == 1).await;
    for _ in 0..5 {
        assert_eq!(get(p.addr, &[("x-abort", "on")]).await, (503, Some("fault-abort".into())));
    }
    assert_eq!(bulkhead(), 1, "aborts took no slot");
    assert_eq!(get(p.addr, &[]).await, (503, Some("bulkhead-full".into())), "the slot is the slow request's");
    assert_eq!(slow.await.unwrap(), (200, None));
}

#[tokio::test]
async fn a_queued_request_opens_no_upstream_connection() {
    let up = upstream().await;
    let p =
        proxy(up.addr, "    defaults:\n      bulkhead: { maxConcurrent: 1, maxQueued: 5, queueTimeout: 10s }\n").await;
    let slow = tokio::spawn(get(p.addr, &[("x-delay", "1000")]));
    let route = p.route();
    let b = route.bulkhead.as_ref().unwrap();
    until("the slot is taken", || b.in_flight() == 1).await;
    let queued: Vec<_> = (0..3).map(|_| tokio::spawn(get(p.addr, &[]))).collect();
    until("three wait", || b.queued() == 3).await;
    assert_eq!(p.shared.pool.open(up.addr), 1, "only the running request has a connection");
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
    assert_eq!(slow.await.unwrap(), (200, None));
    for q in queued {
        assert_eq!(q.await.unwrap(), (200, None));
    }
}

#[tokio::test]
async fn clients_that_leave_while_queued_give_their_places_back() {
    let up = upstream().await;
    let p =
        proxy(up.addr, "    defaults:\n      bulkhead: { maxConcurrent: 1, maxQueued: 2, queueTimeout: 30s }\n").await;
    let slow = tokio::spawn(get(p.addr, &[("x-delay", "1500")]));
    let route = p.route();
    let b = route.bulkhead.as_ref().unwrap();
    until("the slot is taken", || b.in_flight() == 1).await;
    for _ in 0..5 {
        let clients = [leaving(p.addr, &[]).await, leaving(p.addr, &[]).await];
        until("both queue", || b.queued() == 2).await;
        drop(clients);
        until("their places are back", || b.queued() == 0).await;
    }
    assert_eq!(slow.await.unwrap(), (200, None));
    let after: Vec<_> = (0..3).map(|_| tokio::spawn(get(p.addr, &[("x-delay", "100")]))).collect();
    for a in after {
        assert_eq!(a.await.unwrap(), (200, None), "the queue takes waiters again");
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_connect_gives_the_pool_slot_back() {
    let (dead, _fill, _socket) = crate::upstream::pool::tests::blackhole();
    let p = proxy(dead, "    upstream:\n      connectTimeout: 30s\n      pool: { maxConnections: 1 }\n").await;
    for _ in 0..3 {
        let client = leaving(p.addr, &[]).await;
        until("the connect is under way", || p.shared.pool.open(dead) == 1).await;
        drop(client);
        until("the slot is back", || p.shared.pool.open(dead) == 0).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_during_a_half_open_trial_gives_the_trial_back() {
    let up = upstream().await;
    let p = proxy(
        up.addr,
        "    defaults:\n      circuitBreaker: { consecutiveFailures: 1, openFor: 200ms, halfOpenRequests: 1 }\n",
    )
    .await;
    assert_eq!(get(p.addr, &[("x-status", "503")]).await, (503, None));
    assert_eq!(get(p.addr, &[]).await, (503, Some("circuit-open".into())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let breaker = p.cluster().breaker.clone().unwrap();
    let client = leaving(p.addr, &[("x-delay", "10000")]).await;
    until("the trial is in flight", || breaker.trials_in_flight() == Some(1)).await;
    assert_eq!(get(p.addr, &[]).await, (503, Some("circuit-open".into())), "one trial at a time");
    drop(client);
    until("the trial is back", || breaker.trials_in_flight() == Some(0)).await;
    assert_eq!(get(p.addr, &[]).await, (200, None), "a new trial is admitted, and closes the breaker");
    assert_eq!(get(p.addr, &[]).await, (200, None));
}

#[tokio::test]
async fn a_client_that_leaves_during_retry_backoff_gives_the_retry_back() {
    let up = upstream().await;
    let p = proxy(
        up.addr,
        "    defaults:\n      retries: { attempts: 1, on: [503], backoff: { base: 5s, max: 5s }, budget: { percent: 1, minPerSecond: 1 } }\n",
    )
    .await;
    let budget = || p.cluster().budget.as_ref().unwrap().retries(tokio::time::Instant::now());
    let client = leaving(p.addr, &[("x-status", "503"), ("x-retry-after", "3")]).await;
    until("the retry is withdrawn and waits its backoff", || budget() == 1).await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);
    drop(client);
    until("the retry is back in the budget", || budget() == 0).await;
    assert_eq!(up.requests.load(Ordering::SeqCst), 1, "the abandoned retry was never sent");
    assert_eq!(p.route().retry_metrics.retries(), 0);
}
