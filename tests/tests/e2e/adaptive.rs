//! Adaptive concurrency through the real proxy, against an upstream whose capacity steps from
//! 50 requests at a time to 10 and back (it queues what it cannot serve, and answers 503 once
//! three times its capacity are inside). The limit the proxy finds follows each step within a
//! bounded number of samples, and few requests fail. Bounds are generous: the shape is the
//! point, not the milliseconds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

const CLIENTS: usize = 80;

async fn proxy(up: &Upstream, mode: &str) -> ProxyProcess {
    let policy = crate::web_policy(&format!(
        "  defaults:
    retries: {{ attempts: 0 }}
    adaptiveConcurrency:
      minLimit: 5
      maxLimit: 500
      sampleWindow: 100ms
      minRttInterval: 5s
      minRttRequests: 20
      maxQueued: 1000
      queueTimeout: 30s
      mode: {mode}
"
    ));
    ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `CLIENTS` clients, each sending its next request when the last one is answered (100 ms
/// after a failure).
fn closed_loop(p: &ProxyProcess) -> Load {
    let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
    let addr = p.listener("web");
    let tasks = (0..CLIENTS)
        .map(|_| {
            let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
                (stop.clone(), Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client::get(addr, "/", &[]).await {
                        Ok(r) if r.status.as_u16() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        // As a well-behaved client does, it waits a little before trying again.
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        })
        .collect();
    Load { stop, ok, failed, tasks }
}

impl Load {
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Polls until `good` holds for the limit; returns the limit and the samples it took.
async fn settle(p: &ProxyProcess, good: impl Fn(f64) -> bool) -> (f64, f64) {
    let samples = || p.metric("bulwark_adaptive_samples_total", &[]);
    let start = samples().await;
    for _ in 0..300 {
        let limit = p.metric("bulwark_adaptive_limit", &[]).await;
        if good(limit) {
            return (limit, samples().await - start);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (p.metric("bulwark_adaptive_limit", &[]).await, samples().await - start)
}

/// How long each capacity lasts once the limit has followed it.
const PHASE: Duration = Duration::from_secs(2);

/// Within this many samples after a step the limit must have followed it.
const SAMPLES_TO_FOLLOW: f64 = 3000.0;

#[tokio::test]
async fn the_limit_follows_the_upstreams_capacity_down_and_up_and_few_requests_fail() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(20));
    up.set_capacity(50);
    let p = proxy(&up, "enforce").await;
    let load = closed_loop(&p);

    // 50 at a time: the limit climbs from 5 to around the knee (the gradient's headroom puts
    // it somewhat above; the upstream's queue shows in latency, which holds it there).
    let (at_50, took) = settle(&p, |l| l >= 30.0).await;
    tokio::time::sleep(PHASE).await;
    assert!(at_50 >= 30.0, "capacity 50: the limit reached only {at_50} in {took} samples");
    assert!(took <= SAMPLES_TO_FOLLOW, "capacity 50: {took} samples to reach {at_50}");

    up.set_capacity(10);
    let (at_10, took) = settle(&p, |l| l <= 30.0).await;
    assert!(at_10 <= 30.0, "capacity 10: the limit is still {at_10} after {took} samples");
    assert!(took <= SAMPLES_TO_FOLLOW, "capacity 10: {took} samples to fall to {at_10}");
    // Held there: the upstream never sees more than it can queue.
    tokio::time::sleep(PHASE).await;
    let held = p.metric("bulwark_adaptive_limit", &[]).await;
    assert!(held <= 30.0, "capacity 10: the limit went back up to {held}");

    up.set_capacity(50);
    let (back, took) = settle(&p, |l| l >= 30.0).await;
    assert!(back >= 30.0, "capacity 50 again: the limit reached only {back} in {took} samples");
    tokio::time::sleep(PHASE).await;

    let (ok, failed) = load.stop().await;
    let error_rate = failed as f64 / (ok + failed).max(1) as f64;
    assert!(ok > 500, "{ok} requests answered");
    eprintln!("adaptive: {failed} of {} failed", ok + failed);
    assert!(error_rate < 0.10, "{failed} of {} failed", ok + failed);
    assert!(p.metric("bulwark_adaptive_min_rtt_seconds", &[]).await > 0.0, "the minimum latency is exported");
    assert_eq!(p.metric("bulwark_adaptive_in_flight", &[]).await, 0.0, "every place given back");
    assert_eq!(p.metric("bulwark_adaptive_queued", &[]).await, 0.0);
}

/// Without the limit the same step overloads the upstream: what adaptive concurrency saves.
#[tokio::test]
async fn in_dry_run_the_limit_is_found_but_nothing_waits_and_the_overload_shows() {
    let up = Upstream::start().await;
    up.set_delay(Duration::from_millis(20));
    up.set_capacity(10);
    let p = proxy(&up, "dry-run").await;
    let load = closed_loop(&p);
    let (limit, _) = settle(&p, |l| l > 5.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed) = load.stop().await;
    assert!(limit > 5.0, "the limit is still found: {limit}");
    assert!(failed > 0, "80 clients against an upstream that takes 30: {ok} ok, {failed} failed");
    let would = p.metric("bulwark_would_refuse_total", &[("stage", "adaptive"), ("reason", "concurrency-limited")]);
    assert!(would.await > 0.0, "what the limit would have held back is counted");
    assert_eq!(p.metric("bulwark_adaptive_rejected_total", &[]).await, 0.0, "nothing refused");
}
