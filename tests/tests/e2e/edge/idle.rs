//! Connections that open and send nothing: each costs little memory until it sends bytes. At
//! the connection cap the oldest of them is shed for a newcomer; only when none is idle is the
//! newcomer refused (closed at once, counted), and the connections already open keep working.

use std::time::Duration;

use bulwark_e2e::legit::{rss_kib, Legit};
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const IDLE: usize = 10_000;
/// Each silent TCP connection also holds an upstream connection, on the test's own upstream:
/// two descriptors in each process.
const SILENT_TCP: usize = 5_000;
/// The scenarios hold thousands of descriptors each: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Resident memory an idle connection may add (docs/limits.md); measured 2.8 KiB while
/// detecting, 4.2 KiB as silent TCP with its upstream connection.
const BOUND_KIB_PER_CONNECTION: u64 = 10;

/// The soft and hard limits on open files of this process.
fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    let mut n = line.split_whitespace().skip(3).map(|v| v.parse().unwrap_or(u64::MAX));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Raises this process's open-file limit (the proxy inherits it) to hold `descriptors` and some
/// room; None says why it cannot.
fn enough_descriptors(descriptors: usize) -> Option<String> {
    let need = descriptors as u64 + 1024;
    let (soft, hard) = nofile();
    if soft >= need {
        return None;
    }
    if hard < need {
        return Some(format!("the open-file limit is {hard}, and this test needs {need}"));
    }
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--nofile={need}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    (!raised || nofile().0 < need).then(|| format!("cannot raise the open-file limit to {need} (prlimit)"))
}

/// Still detecting: nothing but the accepted socket and a place among the idle.
#[tokio::test]
async fn ten_thousand_idle_connections_stay_small_and_the_oldest_is_shed_at_the_cap() {
    idle_connections(IDLE, "60s", IDLE).await;
}

/// Past the detection timeout silence is TCP (a server may speak first): an upstream
/// connection is open, but no relay buffer until either side sends a byte.
#[tokio::test]
async fn ten_thousand_silent_tcp_connections_stay_small_and_the_oldest_is_shed_at_the_cap() {
    idle_connections(SILENT_TCP, "200ms", 2 * SILENT_TCP).await;
}

/// `count` connections that send nothing, each holding `descriptors / count` descriptors in
/// each process.
async fn idle_connections(count: usize, detection_timeout: &str, descriptors: usize) {
    let _alone = ONE_AT_A_TIME.lock().await;
    if let Some(why) = enough_descriptors(descriptors) {
        println!("SKIP ten_thousand_idle_connections: {why}");
        return;
    }
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new()
        .listener("web", up.addr)
        .listener("legit", up.addr)
        .extra(&format!(
            "detection: {{ timeout: {detection_timeout} }}\nlimits: {{ maxConnectionsPerListener: {count} }}"
        ))
        .start()
        .await;
    let web = proxy.listener("web");
    let legit = Legit::start(proxy.listener("legit"), "/");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(proxy.child.id());
    let mut idle = Vec::with_capacity(count);
    // The first is known to the proxy before the others come: it is the oldest idle one.
    idle.push(TcpStream::connect(web).await.unwrap());
    bulwark_e2e::wait_for("the first idle connection accepted", Duration::from_secs(10), || async {
        proxy.metric("bulwark_downstream_connections_active", &[("listener", "web")]).await == 1.0
    })
    .await;
    for _ in 1..count {
        idle.push(TcpStream::connect(web).await.unwrap());
    }
    bulwark_e2e::wait_for("every idle connection accepted", Duration::from_secs(30), || async {
        proxy.metric("bulwark_downstream_connections_active", &[("listener", "web")]).await == count as f64
    })
    .await;
    // Past a short detection timeout, let every connection reach its silent TCP state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(proxy.child.id());
    let per = after.saturating_sub(before) * 1024 / count as u64;
    println!(
        "{count} idle connections (detection timeout {detection_timeout}): proxy RSS {} -> {} MiB ({per} bytes each)",
        before / 1024,
        after / 1024
    );
    assert!(per < BOUND_KIB_PER_CONNECTION * 1024, "{per} bytes per idle connection");

    // Connection 10,001 speaks: the oldest idle connection makes room for it.
    let served = bulwark_e2e::raw::exchange(
        web,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(served.starts_with("HTTP/1.1 200"), "a client that speaks is served at the cap: {served:?}");
    let mut buf = [0u8; 1];
    let shed = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(matches!(shed, Ok(Ok(0)) | Ok(Err(_))), "the oldest idle connection was closed: {shed:?}");
    assert_eq!(proxy.metric("bulwark_downstream_connections_shed_total", &[("listener", "web")]).await, 1.0);
    super::assert_unharmed(legit.finish().await);
    drop(idle);
}

#[tokio::test]
async fn at_the_cap_with_nobody_idle_the_newcomer_is_refused_at_once() {
    let up = Upstream::start().await;
    // HTTP/1 by declaration: no detection, so no connection counts as idle.
    let proxy = ProxyBuilder::new()
        .listener_with_protocol("web", up.addr, "http1")
        .extra("limits: { maxConnectionsPerListener: 3 }")
        .start()
        .await;
    let web = proxy.listener("web");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(bulwark_e2e::client::connect_h1(web).await.unwrap());
    }
    bulwark_e2e::wait_for("three connections open", Duration::from_secs(5), || async {
        proxy.metric("bulwark_downstream_connections_active", &[("listener", "web")]).await == 3.0
    })
    .await;
    let mut over = TcpStream::connect(web).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the connection over the cap was closed: {closed:?}");
    assert_eq!(proxy.metric("bulwark_downstream_connections_rejected_total", &[("listener", "web")]).await, 1.0);
    for send in &mut open {
        let r = send.send_request(bulwark_e2e::client::request(http::Method::GET, "/", &[])).await.unwrap();
        assert_eq!(r.status(), http::StatusCode::OK, "open connections keep working");
    }
}

#[tokio::test]
async fn the_process_cap_counts_every_listener() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new()
        .listener_with_protocol("a", up.addr, "http1")
        .listener_with_protocol("b", up.addr, "http1")
        .extra("limits: { maxConnections: 3, maxConnectionsPerListener: 10 }")
        .start()
        .await;
    let mut open = Vec::new();
    for name in ["a", "a", "b"] {
        open.push(bulwark_e2e::client::connect_h1(proxy.listener(name)).await.unwrap());
    }
    bulwark_e2e::wait_for("three connections open", Duration::from_secs(5), || async {
        proxy.metric("bulwark_downstream_connections_active", &[]).await == 3.0
    })
    .await;
    let mut over = TcpStream::connect(proxy.listener("b")).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the connection over the process cap was closed: {closed:?}");
    assert_eq!(proxy.metric("bulwark_downstream_connections_rejected_total", &[("listener", "b")]).await, 1.0);
}
