//! Priority classes through the real proxy: with the route saturated, the lowest class is
//! refused first and each higher class keeps its reserved share of the bulkhead and of the
//! rate limit; a higher class takes what lower ones leave. Counts, not timings.

use std::net::SocketAddr;
use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

/// checkout (critical, keeps 40%) › recommendations (standard, keeps 20%) › analytics.
const CLASSES: &str = "    priority:
      MODE
      classes:
        - name: critical
          match: { headers: [{ name: x-class, exact: critical }] }
          reservePercent: 40
        - name: standard
          match: { headers: [{ name: x-class, exact: standard }] }
          reservePercent: 20
        - name: best-effort
";

async fn proxy(up: &Upstream, stage: &str, mode: &str) -> ProxyProcess {
    let mode = if mode.is_empty() { String::new() } else { format!("mode: {mode}") };
    let policy = crate::web_policy(&format!(
        "  defaults:\n    retries: {{ attempts: 0 }}\n    {stage}\n{}",
        CLASSES.replace("MODE", &mode)
    ));
    ProxyBuilder::new()
        .listener("web", up.addr)
        .policies(&policy)
        .extra("accessLog: { enabled: true, sample: 1 }")
        .start()
        .await
}

/// Sends `n` requests of `class` at once, each held `hold` by the upstream; returns their
/// handles once every one of them is decided: holding a slot, or refused.
async fn burst(
    p: &ProxyProcess,
    class: &'static str,
    n: usize,
    hold: &'static str,
) -> Vec<tokio::task::JoinHandle<u16>> {
    let addr: SocketAddr = p.listener("web");
    let labels = [("class", class)];
    let in_flight = || p.metric("bulwark_bulkhead_in_flight", &[]);
    let refused = || p.metric("bulwark_priority_refused_total", &labels);
    let (held_before, refused_before) = (in_flight().await, refused().await);
    let calls: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                client::get(addr, "/", &[("x-class", class), ("x-delay", hold)]).await.unwrap().status.as_u16()
            })
        })
        .collect();
    for _ in 0..250 {
        let decided = (in_flight().await - held_before) + (refused().await - refused_before);
        if decided as usize >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    calls
}

async fn statuses(calls: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_saturated_bulkhead_refuses_the_lowest_class_first_and_keeps_each_reserve() {
    let up = Upstream::start().await;
    let p = proxy(&up, "bulkhead: { maxConcurrent: 10 }", "").await;
    // Analytics comes first and finds all 10 slots free, yet takes only the 4 nobody keeps.
    let best = burst(&p, "best-effort", 20, "2s").await;
    // Recommendations then gets its own 2, not the 4 critical keeps...
    let standard = burst(&p, "standard", 20, "2s").await;
    // ...and checkout its 4, although lower classes came first and wanted far more.
    let critical = burst(&p, "critical", 20, "2s").await;
    let (best, standard, critical) = (statuses(best).await, statuses(standard).await, statuses(critical).await);
    assert_eq!(crate::count(&best, 200), 4, "best-effort: {best:?}");
    assert_eq!(crate::count(&standard, 200), 2, "standard: {standard:?}");
    assert_eq!(crate::count(&critical, 200), 4, "critical: {critical:?}");
    assert_eq!(crate::count(&best, 503) + crate::count(&standard, 503) + crate::count(&critical, 503), 50);
    let refused = [("class", "best-effort"), ("reason", "bulkhead-full")];
    assert_eq!(p.metric("bulwark_priority_refused_total", &refused).await, 16.0);
    let refused = [("class", "critical"), ("reason", "bulkhead-full")];
    assert_eq!(p.metric("bulwark_priority_refused_total", &refused).await, 16.0);

    // With nobody else there, the highest class may take every slot.
    let critical = statuses(burst(&p, "critical", 12, "300ms").await).await;
    assert_eq!(crate::count(&critical, 200), 10, "{critical:?}");
    assert_eq!(p.metric("bulwark_bulkhead_in_flight", &[]).await, 0.0, "every slot given back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.stdout().contains(r#""priority":"critical""#), "the access log names the class");
}

#[tokio::test]
async fn a_rate_limit_keeps_its_reserves_from_the_classes_below() {
    let up = Upstream::start().await;
    // Ten tokens and (practically) no refill: who gets them is the whole story.
    let p = proxy(&up, "rateLimit: { perSecond: 0.001, burst: 10 }", "").await;
    let mut got = Vec::new();
    for class in ["best-effort", "standard", "critical"] {
        let mut ok = 0;
        for _ in 0..20 {
            let r = client::get(p.listener("web"), "/", &[("x-class", class)]).await.unwrap();
            ok += usize::from(r.status.as_u16() == 200);
        }
        got.push(ok);
    }
    assert_eq!(got, [4, 2, 4], "best-effort leaves the 6 tokens critical and standard keep, standard 4");
    let refused = p.metric("bulwark_priority_refused_total", &[("class", "best-effort"), ("reason", "rate-limited")]);
    assert_eq!(refused.await, 16.0);
}

#[tokio::test]
async fn a_priority_in_dry_run_sheds_nothing_and_counts_what_its_reserves_would() {
    let up = Upstream::start().await;
    let p = proxy(&up, "bulkhead: { maxConcurrent: 10 }", "dry-run").await;
    let best = statuses(burst(&p, "best-effort", 20, "1s").await).await;
    assert_eq!(crate::count(&best, 200), 10, "the bulkhead as if there were no classes: {best:?}");
    let would = p.metric("bulwark_would_refuse_total", &[("stage", "priority"), ("reason", "bulkhead-full")]).await;
    assert_eq!(would, 6.0, "the 6 slots critical and standard keep would have been refused");
    let refused = p.metric("bulwark_priority_refused_total", &[("class", "best-effort")]).await;
    assert_eq!(refused, 10.0, "what the bulkhead itself refused is still counted by class");
}
