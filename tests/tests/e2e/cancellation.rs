//! Clients that go away and timeouts that fire, through the real binary: whatever a stage
//! held for the request (a bulkhead queue place, a pool slot, a tunnel) is given back, and
//! the route keeps serving legitimate clients.

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::{Blackhole, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(upstream: std::net::SocketAddr, spec: &str, extra: &str) -> ProxyProcess {
    ProxyBuilder::new().listener("web", upstream).policies(&crate::web_policy(spec)).extra(extra).start().await
}

async fn queued(proxy: &ProxyProcess) -> String {
    client::get(proxy.admin, "/bulkheads", &[]).await.unwrap().text()
}

#[tokio::test]
async fn a_thousand_clients_that_leave_while_queued_leave_the_route_serving() {
    let up = Upstream::start().await;
    let proxy =
        start(up.addr, "  defaults:\n    bulkhead: { maxConcurrent: 1, maxQueued: 50, queueTimeout: 60s }\n", "").await;
    let addr = proxy.listener("web");
    let slow = tokio::spawn(async move { client::get(addr, "/", &[("x-delay", "2s")]).await });
    bulwark_e2e::wait_for("the slow request to hold the slot", Duration::from_secs(10), || async {
        queued(&proxy).await.contains("\"in_flight\": 1")
    })
    .await;
    // Twenty rounds of fifty: each round fills the queue, then every client leaves.
    for round in 0..20 {
        let mut clients = Vec::new();
        for _ in 0..50 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await.unwrap();
            clients.push(s);
        }
        let what = format!("round {round}: fifty queued");
        bulwark_e2e::wait_for(&what, Duration::from_secs(10), || async {
            queued(&proxy).await.contains("\"queued\": 50")
        })
        .await;
        drop(clients);
        let what = format!("round {round}: the places given back");
        bulwark_e2e::wait_for(&what, Duration::from_secs(10), || async {
            queued(&proxy).await.contains("\"queued\": 0")
        })
        .await;
    }
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    // A legitimate burst after the storm: all of it queues and is served.
    let legit: Vec<_> =
        (0..20).map(|_| tokio::spawn(async move { client::get(addr, "/", &[("x-delay", "20ms")]).await })).collect();
    let mut ok = 0;
    for l in legit {
        ok += usize::from(l.await.unwrap().unwrap().status == 200);
    }
    assert_eq!(ok, 20, "legitimate clients' success after 1,000 left while queued");
    assert_eq!(up.requests(), 21, "the clients that left never reached the upstream");
}

#[tokio::test]
async fn per_try_timeouts_during_connect_leave_the_endpoint_usable() {
    let dead = Blackhole::start();
    let spec = "  defaults:\n    timeout: { perTry: 150ms, request: 2s }\n  upstream:\n    connectTimeout: 10s\n    pool: { maxConnections: 2 }\n";
    let proxy = start(dead.addr, spec, "").await;
    let addr = proxy.listener("web");
    // maxConnections + 10 connects, each cut by the per-try timeout while in SYN-SENT.
    for i in 0..12 {
        let r = client::get(addr, "/", &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.reason()), (504, Some("per-try-timeout")), "try {i}");
    }
    let up = dead.answer();
    let r = client::get(addr, "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (200, None), "the endpoint answers again, and so does the route");
    assert_eq!(up.requests(), 1);
}

/// Opens an upgraded connection through the proxy and checks it echoes.
async fn tunnel(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\nx-upgrade: 1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).to_lowercase().starts_with("http/1.1 101"));
    assert!(echoes(&mut s).await, "the tunnel echoes");
    s
}

async fn echoes(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await, Ok(Ok(4))) && &buf == b"ping"
}

/// Until the peer closes (true) or `within` passes (false).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(within, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn an_upgraded_connection_lives_through_the_drain_until_its_deadline() {
    let up = Upstream::start().await;
    let mut proxy = start(up.addr, "  defaults: {}\n", "drainTimeout: 2s").await;
    let mut ws = tunnel(proxy.listener("web")).await;
    let term = Instant::now();
    proxy.signal("TERM");
    assert!(echoes(&mut ws).await, "still served while draining: the drain waits for the tunnel");
    assert!(closed_within(&mut ws, Duration::from_secs(10)).await, "closed by the drain deadline");
    assert!(term.elapsed() >= Duration::from_millis(1500), "not before the deadline: {:?}", term.elapsed());
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits after the deadline");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_upgraded_connection_is_closed_by_the_routes_idle_timeout() {
    let up = Upstream::start().await;
    let proxy = start(up.addr, "  defaults:\n    timeout: { idle: 500ms }\n", "").await;
    let mut ws = tunnel(proxy.listener("web")).await;
    let quiet = Instant::now();
    assert!(closed_within(&mut ws, Duration::from_secs(10)).await, "a silent tunnel is closed");
    assert!(quiet.elapsed() >= Duration::from_millis(400), "after the idle timeout: {:?}", quiet.elapsed());
    // A tunnel that keeps talking is not idle.
    let mut busy = tunnel(proxy.listener("web")).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(echoes(&mut busy).await, "a talking tunnel stays open");
    }
}
