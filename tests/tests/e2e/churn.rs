//! Churn soak: steady traffic through a proxy while the control plane changes its policies ten
//! times a second and a fault on one route is switched on and off. Every answer that no policy
//! chose must be a 200; the open-loop latency (measured from when each request was due, so a
//! stall is not hidden by the client waiting) is printed. Runs for BULWARK_CHURN_SECONDS
//! (default 60).

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use bulwark_e2e::TempDir;
use bulwark_proto::v1 as pb;
use http::Method;

/// Requests per second, spread over this many keep-alive connections.
const RATE: u32 = 2000;
const CONNECTIONS: u32 = 16;

fn policy(version: u32) -> String {
    // Each version changes the stage settings, so every apply builds new stage state.
    format!(
        "apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: {{ name: web, namespace: shop }}
spec:
  target: {{ listener: web }}
  defaults:
    timeout: {{ request: {}s }}
    retries: {{ attempts: {} }}
    circuitBreaker: {{ consecutiveFailures: {} }}
  routes:
  - name: faulty
    match: {{ pathPrefix: /faulty }}
    bulkhead: {{ maxConcurrent: {} }}
",
        5 + version % 5,
        1 + version % 2,
        50 + version % 7,
        500 + version % 3
    )
}

/// Other teams' policies, changed in the same applies.
fn neighbour(i: u32, version: u32) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: n{i}, namespace: other }}\nspec:\n  target: {{ service: n{i}.other.svc }}\n  defaults: {{ timeout: {{ request: {}s }} }}\n",
        1 + version % 9
    )
}

#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    unexpected: Vec<String>,
    faulted: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_applied_ten_times_a_second_cost_traffic_nothing() {
    let seconds: u64 = std::env::var("BULWARK_CHURN_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let cp = ControlPlane::start(None).await;
    let up = Upstream::start().await;
    let cache = TempDir::new("churn");
    let mut admin = cp.admin().await;
    let apply = |version: u32| pb::ApplyRequest {
        documents: std::iter::once(policy(version)).chain((0..5).map(|i| neighbour(i, version))).collect(),
        dry_run: false,
    };
    assert!(admin.apply(apply(0)).await.unwrap().into_inner().applied);
    let proxy = ProxyBuilder::new()
        .listener("web", up.addr)
        .control_plane(cp.addr, &cache.path().join("cache.json"), "churn")
        .start()
        .await;
    let addr = proxy.listener("web");
    assert!(client::wait_ok(addr, "/", Duration::from_secs(10)).await);
    let generation_before = proxy.metric("bulwark_config_generation", &[]).await;

    let end = Instant::now() + Duration::from_secs(seconds);
    // The churn: an apply every 100 ms, and the fault on /faulty on for one apply in three.
    let churn = tokio::spawn(async move {
        let (mut applies, mut toggles, mut version) = (0u32, 0u32, 1u32);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while Instant::now() < end {
            tick.tick().await;
            let r = admin.apply(apply(version)).await.expect("apply").into_inner();
            assert!(r.applied, "{r:?}");
            applies += 1;
            let fault = pb::SetFaultRequest {
                namespace: "shop".into(),
                name: "web".into(),
                route: "faulty".into(),
                faults_yaml: "abort: { httpStatus: 503, percent: 50 }".into(),
                for_seconds: 60,
                for_milliseconds: 0,
            };
            if version % 3 == 0 {
                assert!(admin.set_fault(fault).await.expect("set fault").into_inner().applied);
                toggles += 1;
            }
            version += 1;
        }
        (applies, toggles)
    });

    // The traffic: open loop, each connection sending at its share of RATE; one request in ten
    // goes to the route whose fault is toggled.
    let interval = Duration::from_secs(1) * CONNECTIONS / RATE;
    let mut senders = Vec::new();
    for c in 0..CONNECTIONS {
        senders.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut conn = client::connect_h1(addr).await.expect("connect");
            let start = Instant::now() + interval * c / CONNECTIONS;
            for n in 0u32.. {
                let due = start + interval * n;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let path = if (n + c) % 10 == 0 { "/faulty" } else { "/" };
                if conn.ready().await.is_err() {
                    conn = client::connect_h1(addr).await.expect("reconnect");
                }
                let req = client::request(Method::GET, path, &[("host", "web")]);
                let outcome = match conn.send_request(req).await {
                    Ok(r) => {
                        let reason =
                            r.headers().get("x-bulwark-reason").and_then(|v| v.to_str().ok()).map(String::from);
                        Ok((r.status(), reason))
                    }
                    Err(e) => Err(e.to_string()),
                };
                seen.latencies.push(due.elapsed());
                match outcome {
                    Ok((status, _)) if status == 200 => {}
                    Ok((status, Some(reason))) if path == "/faulty" && status == 503 && reason == "fault-abort" => {
                        seen.faulted += 1
                    }
                    Ok((status, reason)) => seen.unexpected.push(format!("{path}: {status} {reason:?}")),
                    Err(e) => {
                        seen.unexpected.push(format!("{path}: {e}"));
                        conn = client::connect_h1(addr).await.expect("reconnect");
                    }
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for s in senders {
        let s = s.await.unwrap();
        all.latencies.extend(s.latencies);
        all.unexpected.extend(s.unexpected);
        all.faulted += s.faulted;
    }
    let (applies, toggles) = churn.await.unwrap();
    let generations = proxy.metric("bulwark_config_generation", &[]).await - generation_before;

    all.latencies.sort();
    let at = |q: f64| all.latencies[((all.latencies.len() as f64 * q) as usize).min(all.latencies.len() - 1)];
    let summary = format!(
        "churn soak: {} requests in {seconds}s with {applies} applies and {toggles} fault toggles ({generations} snapshots installed); \
         p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}; {} answered by the fault, {} answers no policy chose",
        all.latencies.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
        all.faulted,
        all.unexpected.len()
    );
    println!("{summary}");
    // make test prints this line after the run (test output is captured).
    let _ = std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("churn-soak.txt"), summary + "\n");
    assert!(
        all.unexpected.is_empty(),
        "{} answers no policy chose, first: {:?}",
        all.unexpected.len(),
        &all.unexpected[..all.unexpected.len().min(10)]
    );
    let expected = u64::from(RATE) * seconds;
    assert!(all.latencies.len() as u64 >= expected * 9 / 10, "{} of {expected} requests sent", all.latencies.len());
    assert!(applies as u64 >= seconds * 5, "only {applies} applies in {seconds}s");
    assert!(generations >= (seconds * 2) as f64, "the proxy installed only {generations} snapshots");
    assert!(all.faulted > 0, "the toggled fault never answered");
}
