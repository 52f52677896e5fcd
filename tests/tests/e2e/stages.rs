//! The resilience stages through the real binary, against the misbehaving upstream: what
//! reaches the upstream is counted by the upstream itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulwark_e2e::client::{self, request};
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;
use http::{Method, StatusCode};

async fn start(up: &Upstream, spec: &str) -> ProxyProcess {
    ProxyBuilder::new().listener("web", up.addr).policies(&crate::web_policy(spec)).start().await
}

async fn status_and_reason(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let r = client::get(addr, "/", headers).await.unwrap();
    (r.status.as_u16(), r.reason().map(str::to_string))
}

#[tokio::test]
async fn breaker_opens_after_n_failures_fails_fast_and_half_opens_k_trials() {
    let up = Upstream::start().await;
    let proxy =
        start(&up, "  defaults:\n    circuitBreaker: { consecutiveFailures: 3, openFor: 1s, halfOpenRequests: 2 }\n")
            .await;
    let addr = proxy.listener("web");
    for _ in 0..3 {
        assert_eq!(status_and_reason(addr, &[("x-status", "503")]).await, (503, None), "upstream's 503 passes through");
    }
    let before = up.requests();
    for _ in 0..5 {
        assert_eq!(status_and_reason(addr, &[]).await, (503, Some("circuit-open".into())));
    }
    assert_eq!(up.requests(), before, "an open breaker sends nothing upstream");
    let view = client::get(proxy.admin, "/breakers", &[]).await.unwrap().text();
    assert!(view.contains("\"state\": \"open\"") && view.contains("\"half_open_in_seconds\""), "{view}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Ten concurrent slow requests: exactly two trials reach the upstream.
    let calls: Vec<_> = (0..10).map(|_| tokio::spawn(status_and_reason(addr, &[("x-delay", "300ms")]))).collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.0 == 200).count(), 2, "{results:?}");
    assert_eq!(results.iter().filter(|r| r.1.as_deref() == Some("circuit-open")).count(), 8);
    assert_eq!(up.requests(), before + 2);
    assert_eq!(status_and_reason(addr, &[]).await, (200, None), "both trials succeeded: closed");
    let m = proxy.metrics().await;
    for (from, to) in [("closed", "open"), ("open", "half-open"), ("half-open", "closed")] {
        let n = bulwark_e2e::proxy::metric_sum(&m, "bulwark_breaker_transitions_total", &[("from", from), ("to", to)]);
        assert_eq!(n, 1.0, "{from}->{to}\n{m}");
    }
    assert_eq!(
        bulwark_e2e::proxy::metric_sum(&m, "bulwark_breaker_state", &[("route", "default"), ("state", "closed")]),
        1.0
    );
}

#[tokio::test]
async fn bulkhead_runs_m_queues_q_and_refuses_the_next_at_once() {
    let up = Upstream::start().await;
    let proxy = start(&up, "  defaults:\n    bulkhead: { maxConcurrent: 2, maxQueued: 1, queueTimeout: 5s }\n").await;
    let addr = proxy.listener("web");
    let slow: Vec<_> = (0..3).map(|_| tokio::spawn(status_and_reason(addr, &[("x-delay", "1s")]))).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let b = client::get(proxy.admin, "/bulkheads", &[]).await.unwrap().text();
        if b.contains("\"in_flight\": 2") && b.contains("\"queued\": 1") {
            break;
        }
        assert!(Instant::now() < deadline, "bulkhead never filled: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    assert_eq!(status_and_reason(addr, &[]).await, (503, Some("bulkhead-full".into())));
    assert!(start.elapsed() < Duration::from_millis(500), "refused at once");
    for s in slow {
        assert_eq!(s.await.unwrap().0, 200, "running and queued requests complete");
    }
    assert_eq!(up.stats.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.metric("bulwark_bulkhead_rejected_total", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_parallel_clients_never_exceed_the_bulkhead() {
    let up = Upstream::start().await;
    let proxy =
        start(&up, "  defaults:\n    bulkhead: { maxConcurrent: 5, maxQueued: 200, queueTimeout: 30s }\n").await;
    let addr = proxy.listener("web");
    let calls: Vec<_> = (0..60).map(|_| tokio::spawn(status_and_reason(addr, &[("x-delay", "30ms")]))).collect();
    for c in calls {
        assert_eq!(c.await.unwrap().0, 200);
    }
    assert_eq!(up.requests(), 60);
    assert!(up.stats.max_in_flight.load(Ordering::SeqCst) <= 5, "{}", up.stats.max_in_flight.load(Ordering::SeqCst));
}

#[tokio::test]
async fn retries_mask_a_flaky_upstream_and_resend_the_body() {
    let up = Upstream::start().await;
    let proxy =
        start(&up, "  defaults:\n    retries: { attempts: 2, on: [503], backoff: { base: 1ms, max: 5ms } }\n").await;
    let addr = proxy.listener("web");
    for i in 0..30 {
        let mut req = request(Method::POST, "/pay", &[("x-fail-every", "3")]);
        *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 1000 + i]));
        let r = client::send(addr, req).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.echo().body_len, 1000 + i, "the retried try carries the whole body");
    }
    let retries = proxy.metric("bulwark_retries_total", &[("route", "default")]).await;
    assert_eq!(up.requests() as f64, 30.0 + retries);
    assert!(retries >= 10.0, "one in three first tries failed: {retries}");
}

#[tokio::test]
async fn retry_budget_caps_retries_when_everything_fails() {
    let up = Upstream::start().await;
    let proxy = start(
        &up,
        "  defaults:\n    retries: { attempts: 3, on: [503], backoff: { base: 1ms, max: 2ms }, budget: { percent: 20, minPerSecond: 1 } }\n",
    )
    .await;
    let addr = proxy.listener("web");
    for _ in 0..50 {
        assert_eq!(status_and_reason(addr, &[("x-status", "503")]).await.0, 503);
    }
    // 50 first tries; retries at most 20% of 50 plus 1/s over the 10 s window = 20 (vs 150 unbudgeted).
    let hits = up.requests();
    assert!((50..=70).contains(&hits), "upstream saw {hits}");
    assert!(proxy.metric("bulwark_retry_budget_exhausted_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn per_client_rate_limit_isolates_a_noisy_client() {
    let up = Upstream::start().await;
    let proxy = start(
        &up,
        "  defaults:\n    rateLimit: { perSecond: 1000, perClient: { header: x-api-key, perSecond: 1, burst: 2 } }\n",
    )
    .await;
    let addr = proxy.listener("web");
    let mut noisy = Vec::new();
    for _ in 0..10 {
        noisy.push(client::get(addr, "/", &[("x-api-key", "noisy")]).await.unwrap());
    }
    assert_eq!(noisy.iter().filter(|r| r.status == StatusCode::OK).count(), 2);
    let limited = noisy.iter().find(|r| r.status == StatusCode::TOO_MANY_REQUESTS).unwrap();
    assert_eq!(limited.reason(), Some("rate-limited"));
    assert_eq!(limited.headers["retry-after"], "1");
    for _ in 0..2 {
        assert_eq!(
            status_and_reason(addr, &[("x-api-key", "quiet")]).await,
            (200, None),
            "the quiet client is unaffected"
        );
    }
    assert_eq!(up.requests(), 4);
    assert_eq!(proxy.metric("bulwark_rate_limited_total", &[("scope", "client")]).await, 8.0);
}

#[tokio::test]
async fn a_policy_update_keeps_an_open_breaker_unless_its_config_changes() {
    let up = Upstream::start().await;
    let spec = |open_for: &str, timeout: &str| {
        crate::web_policy(&format!(
            "  defaults:\n    timeout: {{ request: {timeout} }}\n    circuitBreaker: {{ consecutiveFailures: 1, openFor: {open_for} }}\n"
        ))
    };
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&spec("30m", "5s")).start().await;
    let addr = proxy.listener("web");
    status_and_reason(addr, &[("x-status", "500")]).await;
    assert_eq!(status_and_reason(addr, &[]).await.1.as_deref(), Some("circuit-open"));
    // An unrelated change (the timeout) keeps the breaker's state...
    proxy.write_policies(&spec("30m", "6s"));
    wait_generation(&proxy, 2.0).await;
    assert_eq!(status_and_reason(addr, &[]).await.1.as_deref(), Some("circuit-open"));
    // ...a change to the breaker itself starts fresh.
    proxy.write_policies(&spec("40m", "6s"));
    wait_generation(&proxy, 3.0).await;
    assert_eq!(status_and_reason(addr, &[]).await, (200, None));
}

async fn wait_generation(p: &ProxyProcess, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.metric("bulwark_config_generation", &[]).await < n {
        assert!(Instant::now() < deadline, "reload {n} never applied:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_body_larger_than_the_buffer_is_sent_once_without_retries() {
    let up = Upstream::start().await;
    let proxy = start(&up, "  defaults:\n    retries: { attempts: 3, on: [503], maxBufferedBytes: 100 }\n").await;
    let mut req = request(Method::POST, "/upload", &[("x-fail-every", "1")]);
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 1000]));
    let r = client::send(proxy.listener("web"), req).await.unwrap();
    assert_eq!((r.status, r.reason()), (StatusCode::SERVICE_UNAVAILABLE, None), "the upstream's own 503");
    assert_eq!(up.requests(), 1, "not resent: the body could not be kept");
    let small = client::get(proxy.listener("web"), "/", &[("x-fail-every", "1")]).await.unwrap();
    assert_eq!(small.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.requests(), 5, "an empty body is retried: 1 + 3 tries");
}
