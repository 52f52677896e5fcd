//! Several endpoints behind one listener: balancing, outlier ejection and return, retries on
//! another endpoint, connection pool limits, and following an upstream that moves behind its
//! DNS name. Each upstream counts what it receives.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::proxy::{free_port, ProxyBuilder};
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;

fn policy(spec: &str) -> String {
    crate::web_policy(spec)
}

async fn status(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> u16 {
    client::get(addr, "/", headers).await.unwrap().status.as_u16()
}

#[tokio::test]
async fn an_ejected_endpoint_gets_no_traffic_until_its_ejection_ends() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let spec = "  upstream:\n    loadBalancer: round-robin\n    outlierDetection: { consecutive5xx: 2, baseEjection: 1s, maxEjectionPercent: 50 }\n";
    let proxy = ProxyBuilder::new().listener_many("web", &[a.addr, b.addr]).policies(&policy(spec)).start().await;
    let addr = proxy.listener("web");
    a.set_status(503);
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(status(addr, &[]).await);
    }
    assert_eq!(a.requests(), 2, "ejected after two 5xx in a row");
    assert_eq!(b.requests(), 18);
    assert_eq!(answers.iter().filter(|s| **s == 503).count(), 2, "the two failures passed through");
    assert_eq!(proxy.metric("bulwark_outlier_ejections_total", &[]).await, 1.0);

    a.set_status(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_eq!(status(addr, &[]).await, 200);
    }
    assert!(a.requests() >= 6, "back in rotation after its ejection: {}", a.requests());
}

#[tokio::test]
async fn ejection_never_exceeds_the_max_percent() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let spec = "  upstream:\n    loadBalancer: round-robin\n    outlierDetection: { consecutive5xx: 1, baseEjection: 30s, maxEjectionPercent: 50 }\n";
    let proxy = ProxyBuilder::new().listener_many("web", &[a.addr, b.addr]).policies(&policy(spec)).start().await;
    a.set_status(500);
    b.set_status(500);
    for _ in 0..10 {
        status(proxy.listener("web"), &[]).await;
    }
    assert_eq!(proxy.metric("bulwark_outlier_ejections_total", &[]).await, 1.0, "half of two endpoints");
    assert_eq!(a.requests() + b.requests(), 10, "the remaining endpoint keeps serving");
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let spec = "  defaults:\n    retries: { attempts: 1, on: [503], backoff: { base: 1ms, max: 2ms } }\n  upstream: { loadBalancer: round-robin, outlierDetection: { enabled: false } }\n";
    let proxy = ProxyBuilder::new().listener_many("web", &[a.addr, b.addr]).policies(&policy(spec)).start().await;
    a.set_status(503);
    for _ in 0..20 {
        assert_eq!(
            status(proxy.listener("web"), &[]).await,
            200,
            "every failed first try is retried on the healthy endpoint"
        );
    }
    assert_eq!(b.requests(), 20);
    assert_eq!(a.requests(), 10, "only first tries reached the failing endpoint");
}

#[tokio::test]
async fn least_request_avoids_the_endpoint_with_requests_in_flight() {
    let (slow, fast) = (Upstream::start().await, Upstream::start().await);
    let proxy = ProxyBuilder::new().listener_many("web", &[slow.addr, fast.addr]).start().await;
    let addr = proxy.listener("web");
    slow.set_delay(Duration::from_secs(5));
    // Park requests until the slow endpoint holds one (after that, least-request sends it no more).
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.stats.in_flight.load(Ordering::SeqCst) < 1 {
        assert!(Instant::now() < deadline, "requests never reached the slow endpoint");
        held.push(tokio::spawn(async move { client::get(addr, "/", &[]).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (slow_before, fast_before) = (slow.requests(), fast.requests());
    for _ in 0..20 {
        assert_eq!(status(addr, &[]).await, 200);
    }
    // With two endpoints both are always compared: the busy one never wins.
    assert_eq!(slow.requests() - slow_before, 0);
    assert_eq!(fast.requests() - fast_before, 20);
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn max_connections_bounds_what_an_endpoint_sees() {
    let up = Upstream::start().await;
    let spec = "  upstream:\n    pool: { maxConnections: 2 }\n";
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy(spec)).start().await;
    let addr = proxy.listener("web");
    let calls: Vec<_> =
        (0..8).map(|_| tokio::spawn(async move { status(addr, &[("x-delay", "200ms")]).await })).collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 200, "requests beyond the limit wait for a connection");
    }
    assert_eq!(up.stats.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.metric("bulwark_upstream_connections_total", &[("result", "opened")]).await, 2.0);
}

#[tokio::test]
async fn max_lifetime_stops_reuse_of_old_connections() {
    let up = Upstream::start().await;
    let spec = "  upstream:\n    pool: { maxLifetime: 300ms }\n";
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy(spec)).start().await;
    let addr = proxy.listener("web");
    assert_eq!(status(addr, &[]).await, 200);
    assert_eq!(status(addr, &[]).await, 200);
    assert_eq!(proxy.metric("bulwark_upstream_connections_total", &[("result", "opened")]).await, 1.0, "young: reused");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(addr, &[]).await, 200);
    assert_eq!(proxy.metric("bulwark_upstream_connections_total", &[("result", "opened")]).await, 2.0, "old: replaced");
}

/// The proxy runs in a mount namespace whose /etc/hosts the test rewrites: the upstream's name
/// moves from one address to another, as when a service is rescheduled.
#[tokio::test]
async fn a_restarted_upstream_on_a_new_address_behind_the_same_name_is_followed() {
    if let Some(why) = bulwark_e2e::netns::skip_reason() {
        eprintln!("SKIP dns follow: {why}");
        return;
    }
    let port = free_port();
    let first = Upstream::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let dir = bulwark_e2e::TempDir::new("hosts");
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 upstream.bulwark.test\n").unwrap();
    let script = format!("mount --bind {} /etc/hosts && exec \"$0\" \"$@\"", hosts.display());
    let proxy = ProxyBuilder::new()
        .listener("web", format!("upstream.bulwark.test:{port}"))
        .command_prefix(&["unshare", "--mount", "--", "sh", "-c", &script])
        .start()
        .await;
    let addr = proxy.listener("web");
    assert_eq!(status(addr, &[]).await, 200);
    assert_eq!(first.requests(), 1);

    first.crash();
    let second = Upstream::start_on(format!("127.0.0.2:{port}").parse().unwrap()).await;
    // Rewritten in place: the bind mount follows the file's inode.
    std::fs::write(&hosts, "127.0.0.2 upstream.bulwark.test\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(addr, "/", &[]).await.unwrap();
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never followed the new address; last answer {:?}", r.reason());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(second.requests() >= 1, "served by the upstream at the new address");
}
