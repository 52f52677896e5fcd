//! `mode: dry-run` on the guarding stages, in paired runs through the real proxy: the same
//! traffic against the same stage in `enforce` and in `dry-run`. Dry-run answers exactly as if
//! the stage were not there, and counts (`bulwark_would_refuse_total`, span and access-log
//! field) what enforce mode refuses.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

async fn proxy(up: &Upstream, stage: &str, mode: &str) -> ProxyProcess {
    let policy =
        crate::web_policy(&format!("  defaults:\n    retries: {{ attempts: 0 }}\n    {stage}\n").replace("MODE", mode));
    ProxyBuilder::new()
        .listener("web", up.addr)
        .policies(&policy)
        .extra("accessLog: { enabled: true, sample: 1 }")
        .start()
        .await
}

async fn would_refuse(p: &ProxyProcess, stage: &str, reason: &str) -> f64 {
    p.metric("bulwark_would_refuse_total", &[("stage", stage), ("reason", reason)]).await
}

/// Statuses of `n` requests sent one after the other.
async fn sequential(p: &ProxyProcess, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client::get(p.listener("web"), "/", &[]).await.unwrap().status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_rate_limit_in_dry_run_refuses_nothing_and_counts_what_it_would() {
    let up = Upstream::start().await;
    let stage = "rateLimit: { perSecond: 1, burst: 5, mode: MODE }";
    let enforce = proxy(&up, stage, "enforce").await;
    let dry = proxy(&up, stage, "dry-run").await;
    let enforced = sequential(&enforce, 20).await;
    let dried = sequential(&dry, 20).await;
    let refused = crate::count(&enforced, 429);
    assert!(refused >= 13, "the limit refuses in enforce mode: {enforced:?}");
    assert_eq!(crate::count(&dried, 200), 20, "dry-run answers as if there were no limit: {dried:?}");
    let would = would_refuse(&dry, "rate-limit", "rate-limited").await as usize;
    // The same bucket over the same burst; a token may refill between the two runs.
    assert!(would.abs_diff(refused) <= 1, "would refuse {would}, enforce refused {refused}");
    assert_eq!(dry.metric("bulwark_rate_limited_total", &[]).await, 0.0, "nothing was refused");
    assert_eq!(would_refuse(&enforce, "rate-limit", "rate-limited").await, 0.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = dry.stdout();
    assert!(log.contains(r#""would_refuse":"rate-limited""#), "{log}");
}

#[tokio::test]
async fn a_bulkhead_in_dry_run_never_waits_or_refuses_and_counts_the_overflow() {
    let up = Upstream::start().await;
    let stage = "bulkhead: { maxConcurrent: 2, mode: MODE }";
    let enforce = proxy(&up, stage, "enforce").await;
    let dry = proxy(&up, stage, "dry-run").await;
    let burst = |p: &ProxyProcess| {
        let addr = p.listener("web");
        async move {
            let calls: Vec<_> = (0..6)
                .map(|_| {
                    tokio::spawn(async move {
                        client::get(addr, "/", &[("x-delay", "400ms")]).await.unwrap().status.as_u16()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        }
    };
    let enforced = burst(&enforce).await;
    let dried = burst(&dry).await;
    assert_eq!(crate::count(&enforced, 503), 4, "{enforced:?}");
    assert_eq!(crate::count(&dried, 200), 6, "{dried:?}");
    assert_eq!(would_refuse(&dry, "bulkhead", "bulkhead-full").await, 4.0);
    assert_eq!(dry.metric("bulwark_bulkhead_rejected_total", &[]).await, 0.0);
    assert_eq!(dry.metric("bulwark_bulkhead_in_flight", &[]).await, 0.0, "every slot given back");
}

#[tokio::test]
async fn a_breaker_in_dry_run_lets_requests_through_and_counts_the_open_circuit() {
    let up = Upstream::start().await;
    up.set_status(500);
    let stage = "circuitBreaker: { consecutiveFailures: 3, openFor: 1m, mode: MODE }";
    let enforce = proxy(&up, stage, "enforce").await;
    let dry = proxy(&up, stage, "dry-run").await;
    let enforced = sequential(&enforce, 10).await;
    let before = up.requests();
    let dried = sequential(&dry, 10).await;
    assert_eq!((crate::count(&enforced, 500), crate::count(&enforced, 503)), (3, 7), "{enforced:?}");
    assert_eq!(crate::count(&dried, 500), 10, "every request reached the upstream: {dried:?}");
    assert_eq!(up.requests() - before, 10);
    assert_eq!(would_refuse(&dry, "breaker", "circuit-open").await, 7.0);
    // The breaker itself still judges: it is open, as it would be in enforce mode.
    assert_eq!(dry.metric("bulwark_breaker_state", &[("state", "open")]).await, 1.0);
}
