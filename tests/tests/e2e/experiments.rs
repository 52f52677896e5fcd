//! Guarded chaos experiments through the real binaries: a control plane, several proxies and
//! test upstreams, traffic driven through every proxy while an experiment runs. The guard
//! crossed mid-experiment clears the faults everywhere within an evaluation interval; a
//! degraded baseline is refused; a healthy one completes with the hypothesis held; a control
//! plane killed mid-experiment leaves faults that every proxy drops at lease end, and reports
//! the experiment aborted once back; a proxy that cannot reach the control plane drops faults by
//! itself on its own breach; the blast radius bounds who is hit; overlapping and invalid
//! experiments are refused with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bulwark_e2e::client;
use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::proxy::{free_port, metric_sum, ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;
use bulwark_e2e::TempDir;
use bulwark_proto::v1 as pb;
use serde_json::Value;

const POLICY: &str = "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: { name: web, namespace: shop }\nspec:\n  target: { listener: web }\n  defaults:\n    retries: { attempts: 0 }\n  routes:\n  - name: pay\n    match: { pathPrefix: /pay }\n";

struct Mesh {
    cp: ControlPlane,
    /// The control plane's `--metrics-listen`.
    cp_metrics: std::net::SocketAddr,
    up: Upstream,
    proxies: Vec<ProxyProcess>,
    _cache: TempDir,
}

async fn mesh(proxies: usize) -> Mesh {
    mesh_traced(proxies, None).await
}

/// With `otlp`, the proxies send every request's span there.
async fn mesh_traced(proxies: usize, otlp: Option<std::net::SocketAddr>) -> Mesh {
    let cp_metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cp = ControlPlane::start_with_args(vec!["--metrics-listen".into(), cp_metrics.to_string()]).await;
    let r = cp.admin().await.apply(pb::ApplyRequest { documents: vec![POLICY.into()], dry_run: false }).await.unwrap();
    assert!(r.into_inner().applied);
    let up = Upstream::start().await;
    let cache = TempDir::new("experiment-cache");
    let mut started = Vec::new();
    for i in 0..proxies {
        let id = format!("proxy-{i}");
        let mut builder = ProxyBuilder::new().listener("web", up.addr).control_plane(
            cp.addr,
            &cache.path().join(format!("{id}.json")),
            &id,
        );
        if let Some(otlp) = otlp {
            builder = builder.extra(&format!("tracing: {{ endpoint: \"http://{otlp}\", sampleRatio: 1 }}"));
        }
        started.push(builder.start().await);
    }
    Mesh { cp, cp_metrics, up, proxies: started, _cache: cache }
}

/// Requests sent in a loop through one proxy, each answer kept with the time it was sent (the
/// proxy decides a request's faults when it arrives).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(SystemTime, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, path: &'static str, headers: &'static [(&'static str, &'static str)]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let sent = SystemTime::now();
                let status = client::get(addr, path, headers).await.map(|r| r.status.as_u16()).unwrap_or(0);
                out.lock().unwrap().push((sent, status));
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        });
        Load { stop, seen, task }
    }

    async fn stop(self) -> Vec<(SystemTime, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Arc::try_unwrap(self.seen).ok().and_then(|m| m.into_inner().ok()).unwrap_or_default()
    }

    fn count(&self, status: u16) -> usize {
        self.seen.lock().unwrap().iter().filter(|(_, s)| *s == status).count()
    }
}

async fn run(cp: &ControlPlane, yaml: &str) -> pb::RunExperimentResponse {
    cp.admin().await.run_experiment(pb::RunExperimentRequest { yaml: yaml.into() }).await.unwrap().into_inner()
}

async fn get(cp: &ControlPlane, name: &str) -> pb::Experiment {
    let req = pb::GetExperimentRequest { namespace: "shop".into(), name: name.into() };
    cp.admin().await.get_experiment(req).await.unwrap().into_inner()
}

fn report(e: &pb::Experiment) -> Value {
    serde_json::from_str(&e.report_json).unwrap()
}

/// Waits until the experiment is in one of `states`.
async fn wait_state(cp: &ControlPlane, name: &str, states: &[&str], within: Duration) -> pb::Experiment {
    let deadline = Instant::now() + within;
    loop {
        let e = get(cp, name).await;
        if states.contains(&e.state.as_str()) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "experiment {name} is {} ({}), not {states:?}:\n{}",
            e.state,
            e.reason,
            cp.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn experiment(name: &str, faults: &str, steady: &str, extra: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ChaosExperiment\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  hypothesis: payments keep working\n  faults:\n    - target: {{ policy: shop/web, route: pay }}\n      {faults}\n  steadyState:\n    observe: {{ policy: shop/web, route: pay }}\n    {steady}\n{extra}"
    )
}

fn parse_time(t: &str) -> SystemTime {
    bulwark_policy::faults::parse_rfc3339(t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossed_guard_clears_the_faults_on_every_proxy_within_an_interval() {
    let m = mesh(2).await;
    let loads: Vec<Load> = m.proxies.iter().map(|p| Load::start(p.listener("web"), "/pay", &[])).collect();
    let yaml = experiment(
        "breaks",
        "abort: { httpStatus: 503, percent: 100 }",
        "maxErrorRate: 10%\n    window: 2s\n    minRequests: 10",
        "  blastRadius: { percent: 50 }\n  duration: 2m\n  preflight: { baseline: 1s }\n  evaluateEvery: 500ms\n",
    );
    let admitted = run(&m.cp, &yaml).await;
    assert!(admitted.errors.is_empty(), "{:?}", admitted.errors);
    let e = wait_state(&m.cp, "breaks", &["aborted", "completed", "refused"], Duration::from_secs(30)).await;
    let r = report(&e);
    assert_eq!(e.state, "aborted", "{r:#}");
    assert_eq!(r["verdict"], "broken", "{r:#}");
    let breach = &r["breach"];
    assert_eq!(breach["bound"], "errorRate", "{r:#}");
    assert!(breach["observed"].as_f64().unwrap() > 0.10, "{r:#}");
    assert!(e.reason.contains("guard crossed"), "{}", e.reason);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Half the requests fail from the first faulted one on: the guard is crossed at once, so
    // the faults must be gone one evaluation interval after they were set, on every proxy.
    let set_at = parse_time(r["faultsSetAt"].as_str().unwrap());
    let breach_at = parse_time(breach["at"].as_str().unwrap());
    let mut slowest = Duration::ZERO;
    for (i, load) in loads.into_iter().enumerate() {
        let seen = load.stop().await;
        let hit = seen.iter().filter(|(_, s)| *s == 503).count();
        assert!(hit > 0, "proxy-{i} injected nothing");
        let last = seen.iter().filter(|(_, s)| *s == 503).map(|(t, _)| *t).max().unwrap();
        slowest = slowest.max(last.duration_since(set_at).unwrap_or_default());
        assert!(last <= breach_at + Duration::from_millis(3000), "proxy-{i} injected after the breach was recorded");
        let tail: Vec<u16> = seen.iter().rev().take(20).map(|(_, s)| *s).collect();
        assert!(tail.iter().all(|s| *s == 200), "proxy-{i} still injects: {tail:?}");
    }
    println!(
        "faults gone from every proxy {} ms after they were set (evaluation interval 500 ms)",
        slowest.as_millis()
    );
    // One evaluation interval (500 ms) and a push, with a generous margin for a busy machine.
    assert!(slowest < Duration::from_millis(500 + 3000), "{slowest:?}");
    assert!(r["injected"]["proxy-0"]["abort"].as_u64().unwrap() > 0, "{r:#}");
    // The control plane's metrics say what happened; each proxy's say what it injected.
    let text = client::get(m.cp_metrics, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric_sum(&text, "bulwark_control_experiments", &[("state", "aborted")]), 1.0, "{text}");
    assert_eq!(
        metric_sum(
            &text,
            "bulwark_control_experiment_breaches_total",
            &[("experiment", "shop/breaks"), ("bound", "errorRate")]
        ),
        1.0,
        "{text}"
    );
    let injected = m.proxies[0]
        .metric("bulwark_experiment_faults_injected_total", &[("experiment", "shop/breaks"), ("kind", "abort")])
        .await;
    assert_eq!(
        injected as u64,
        r["injected"]["proxy-0"]["abort"].as_u64().unwrap(),
        "the report has the proxy's own count"
    );
    assert!(r["baseline"]["requests"].as_u64().unwrap() > 0 && r["during"]["requests"].as_u64().unwrap() > 0);
    // The faults are gone from the stored policy too.
    let stored = m.cp.admin().await.get(pb::GetRequest { namespace: "shop".into(), name: "web".into() }).await.unwrap();
    assert!(!stored.into_inner().yaml.contains("experiment"), "faults left in the store");
    assert!(m.up.requests() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_baseline_is_refused_and_a_healthy_one_completes_held() {
    let m = mesh(2).await;
    let loads: Vec<Load> = m.proxies.iter().map(|p| Load::start(p.listener("web"), "/pay", &[])).collect();
    m.up.set_status(500);
    let steady = "maxErrorRate: 5%\n    maxLatency: { p99: 800ms }\n    window: 2s\n    minRequests: 5";
    let extra = "  duration: 3s\n  preflight: { baseline: 1s }\n  evaluateEvery: 500ms\n";
    let yaml = experiment("degraded", "delay: { fixed: 20ms, percent: 50 }", steady, extra);
    assert!(run(&m.cp, &yaml).await.errors.is_empty());
    let e =
        wait_state(&m.cp, "degraded", &["refused", "running", "completed", "aborted"], Duration::from_secs(20)).await;
    assert_eq!(e.state, "refused", "{}", e.reason);
    assert!(e.reason.contains("half the error budget"), "{}", e.reason);
    let r = report(&e);
    assert_eq!(r["verdict"], "refused");
    assert!(r["faultsSetAt"].is_null(), "no fault was ever set: {r:#}");
    assert!(r["baseline"]["errorRate"].as_f64().unwrap() > 0.9);

    // Healthy again: the same experiment, run again, completes at its duration with the
    // hypothesis held; through bulwarkctl, waiting for the report.
    m.up.set_status(200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = TempDir::new("experiment-file");
    let file = dir.path().join("healthy.yaml");
    std::fs::write(&file, experiment("degraded", "delay: { fixed: 20ms, percent: 50 }", steady, extra)).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(bulwark_e2e::workspace_bin("bulwarkctl"))
        .args(["--server", &m.cp.addr.to_string(), "experiment", "run", "--wait", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("verdict:    held (state completed)"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(4), "baseline 1s and duration 3s");
    for phase in ["baseline", "during", "after"] {
        assert!(text.lines().any(|l| l.starts_with(phase)), "{phase} missing:\n{text}");
    }
    let e = get(&m.cp, "degraded").await;
    let r = report(&e);
    assert_eq!((e.state.as_str(), r["verdict"].as_str()), ("completed", Some("held")), "{r:#}");
    let delays: u64 = (0..2).map(|i| r["injected"][format!("proxy-{i}")]["delay"].as_u64().unwrap_or(0)).sum();
    assert!(delays > 0, "{r:#}");
    assert!(r["during"]["p99Ms"].as_f64().unwrap() >= 20.0, "the delay shows in the during phase: {r:#}");
    assert!(r["recoverySeconds"].as_f64().is_some(), "recovered: {r:#}");
    assert_eq!(r["proxies"], serde_json::json!(["proxy-0", "proxy-1"]));
    let md = std::process::Command::new(bulwark_e2e::workspace_bin("bulwarkctl"))
        .args(["--server", &m.cp.addr.to_string(), "experiment", "report", "shop/degraded", "-o", "md"])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("# Experiment shop/degraded") && md.contains("| during |"), "{md}");
    for load in loads {
        let seen = load.stop().await;
        assert!(seen.iter().all(|(_, s)| *s != 0), "no request failed to get an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_outlive_no_killed_control_plane_and_the_restart_reports_aborted() {
    let mut m = mesh(2).await;
    let loads: Vec<Load> = m.proxies.iter().map(|p| Load::start(p.listener("web"), "/pay", &[])).collect();
    let yaml = experiment(
        "orphan",
        "abort: { httpStatus: 503, percent: 30 }",
        "maxErrorRate: 90%\n    window: 2s",
        "  duration: 10m\n  evaluateEvery: 500ms\n",
    );
    assert!(run(&m.cp, &yaml).await.errors.is_empty());
    wait_state(&m.cp, "orphan", &["running"], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while loads.iter().any(|l| l.count(503) == 0) {
        assert!(Instant::now() < deadline, "faults never reached every proxy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.cp.stop();
    let killed = SystemTime::now();
    // The lease: 5 intervals of 500 ms, at least 2 s; every proxy must be clean after it.
    tokio::time::sleep(Duration::from_millis(2500 + 1500)).await;
    let mut served_after = 0;
    for (i, load) in loads.into_iter().enumerate() {
        let seen = load.stop().await;
        let last = seen.iter().filter(|(_, s)| *s == 503).map(|(t, _)| *t).max().unwrap();
        let outlived = last.duration_since(killed).unwrap_or_default();
        println!("proxy-{i}: last fault {} ms after the control plane died", outlived.as_millis());
        assert!(outlived <= Duration::from_millis(2500 + 500), "proxy-{i} injected {outlived:?} after the kill");
        served_after += seen.iter().filter(|(t, s)| *t > killed && *s == 200).count();
        assert!(seen.iter().all(|(_, s)| *s == 200 || *s == 503), "every request answered");
    }
    assert!(served_after > 0, "the proxies kept serving without their control plane");

    m.cp.start_again().await;
    let e = get(&m.cp, "orphan").await;
    assert_eq!(e.state, "aborted");
    assert_eq!(e.reason, "controller restarted");
    let r = report(&e);
    assert_eq!(r["verdict"], "aborted");
    assert!(r["faultsRemovedAt"].is_string(), "{r:#}");
    let stored = m.cp.admin().await.get(pb::GetRequest { namespace: "shop".into(), name: "web".into() }).await.unwrap();
    assert!(!stored.into_inner().yaml.contains("experiment"), "the restart cleared the faults from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cut_off_from_its_control_plane_drops_the_faults_on_its_own_breach() {
    let mut m = mesh(1).await;
    let p = &m.proxies[0];
    // The fault hits only requests marked for it; the rest is the legitimate client.
    let yaml = experiment(
        "local",
        "abort: { httpStatus: 503, percent: 100 }",
        "maxErrorRate: 20%\n    window: 4s\n    minRequests: 5",
        "  blastRadius: { headers: [ { name: x-chaos, exact: \"yes\" } ] }\n  duration: 10m\n  evaluateEvery: 2s\n",
    );
    assert!(run(&m.cp, &yaml).await.errors.is_empty());
    wait_state(&m.cp, "local", &["running"], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client::get(p.listener("web"), "/pay", &[("x-chaos", "yes")]).await.unwrap().status != 503 {
        assert!(Instant::now() < deadline, "the fault never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.cp.stop();
    let cut = SystemTime::now();
    let legit = Load::start(p.listener("web"), "/pay", &[]);
    let chaos = Load::start(p.listener("web"), "/pay", &[("x-chaos", "yes")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while p.metric("bulwark_experiment_local_breaches_total", &[("experiment", "shop/local")]).await < 1.0 {
        assert!(Instant::now() < deadline, "no local breach:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chaos = chaos.stop().await;
    let legit = legit.stop().await;
    let last = chaos.iter().filter(|(_, s)| *s == 503).map(|(t, _)| *t).max().unwrap_or(cut);
    let dropped_after = last.duration_since(cut).unwrap_or_default();
    println!("the proxy dropped the faults {} ms after losing its control plane", dropped_after.as_millis());
    // The lease had at least 6 s left (10 s, renewed with 3 intervals left): the proxy acted
    // on its own, before it.
    assert!(dropped_after < Duration::from_secs(6), "{dropped_after:?}");
    assert!(chaos.iter().rev().take(10).all(|(_, s)| *s == 200), "still injecting");
    assert!(legit.iter().all(|(_, s)| *s == 200), "the legitimate client never saw a fault");
    assert!(p.logs().contains("experiment guard crossed here"), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blast_radius_bounds_who_is_hit_and_overlaps_are_refused() {
    let otlp = bulwark_e2e::otlp::OtlpReceiver::start(false).await;
    let m = mesh_traced(1, Some(otlp.addr)).await;
    let p = &m.proxies[0];
    let loose = "maxErrorRate: 100%\n    window: 2s";
    let yaml = experiment(
        "share",
        "abort: { httpStatus: 503, percent: 40 }",
        loose,
        "  blastRadius: { percent: 50 }\n  duration: 10m\n  evaluateEvery: 500ms\n",
    );
    assert!(run(&m.cp, &yaml).await.errors.is_empty());
    wait_state(&m.cp, "share", &["running"], Duration::from_secs(20)).await;
    // A second experiment on the same route is refused at admission, with the reason.
    let second = run(&m.cp, &experiment("again", "delay: { fixed: 1ms, percent: 1 }", loose, "  duration: 1m\n")).await;
    assert!(second.experiment.is_none());
    assert_eq!(second.errors[0].path, "spec.faults[0].target", "{:?}", second.errors);
    assert!(second.errors[0].message.contains("already faults route pay"), "{:?}", second.errors);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = 2000;
    let mut hit = 0;
    for _ in 0..n {
        if client::get(p.listener("web"), "/pay", &[]).await.unwrap().status == 503 {
            hit += 1;
        }
    }
    // 40% of a 50% radius: 20%; within five standard deviations of a binomial draw.
    let (expected, sd) = (n as f64 * 0.2, (n as f64 * 0.2 * 0.8).sqrt());
    println!("{hit} of {n} requests hit, {expected} expected");
    assert!((hit as f64 - expected).abs() < 5.0 * sd, "{hit} of {n}");
    // The requests the experiment faulted say so on their spans; the others do not.
    let deadline = Instant::now() + Duration::from_secs(15);
    while otlp.spans().len() < 100 {
        assert!(Instant::now() < deadline, "spans did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attr =
        |s: &opentelemetry_proto::tonic::trace::v1::Span, k: &str| bulwark_e2e::otlp::attribute(&s.attributes, k);
    let spans = otlp.spans();
    let faulted: Vec<_> = spans.iter().filter(|(_, s)| attr(s, "bulwark.fault").is_some()).collect();
    assert!(!faulted.is_empty());
    assert!(faulted.iter().all(|(_, s)| attr(s, "bulwark.experiment").as_deref() == Some("shop/share")));
    assert!(spans.iter().filter(|(_, s)| attr(s, "bulwark.fault").is_none()).all(|(_, s)| attr(
        s,
        "bulwark.experiment"
    )
    .is_none()));
    let stop = pb::AbortExperimentRequest { namespace: "shop".into(), name: "share".into(), reason: "enough".into() };
    m.cp.admin().await.abort_experiment(stop).await.unwrap();
    let e = wait_state(&m.cp, "share", &["aborted"], Duration::from_secs(10)).await;
    assert_eq!((e.reason.as_str(), report(&e)["verdict"].as_str()), ("enough", Some("aborted")));

    // Only the named callers.
    let yaml = experiment(
        "callers",
        "abort: { httpStatus: 503, percent: 100 }",
        loose,
        "  blastRadius: { identities: [checkout.shop] }\n  duration: 10m\n  evaluateEvery: 500ms\n",
    );
    assert!(run(&m.cp, &yaml).await.errors.is_empty());
    wait_state(&m.cp, "callers", &["running"], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let named = [("x-bulwark-client-id", "checkout.shop")];
    while client::get(p.listener("web"), "/pay", &named).await.unwrap().status != 503 {
        assert!(Instant::now() < deadline, "the caller was never hit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..50 {
        assert_eq!(
            client::get(p.listener("web"), "/pay", &[("x-bulwark-client-id", "cart.shop")]).await.unwrap().status,
            200
        );
        assert_eq!(client::get(p.listener("web"), "/pay", &[]).await.unwrap().status, 200);
        assert_eq!(client::get(p.listener("web"), "/pay", &named).await.unwrap().status, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_refused_with_its_path() {
    let m = mesh(0).await;
    let steady = "maxErrorRate: 1%";
    for (yaml, path, says) in [
        (
            experiment("a", "delay: { fixed: 1ms, percent: 1 }", steady, "  evaluateEvery: 1s\n"),
            "spec",
            "missing field `duration`",
        ),
        (
            experiment("b", "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 2h\n"),
            "spec.duration",
            "over the cap of 1h",
        ),
        (
            experiment("c", "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 1m\n")
                .replace("route: pay }\n      delay", "route: refund }\n      delay"),
            "spec.faults[0].target.route",
            "no route \"refund\"",
        ),
        (
            experiment("d", "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 1m\n")
                .replace("observe: { policy: shop/web", "observe: { policy: shop/cart"),
            "spec.steadyState.observe.policy",
            "no policy \"shop/cart\"",
        ),
        (
            experiment("e", "delay: { fixed: 1ms, percent: 1 }", "maxErrorRate: 250%", "  duration: 1m\n"),
            "spec.steadyState.maxErrorRate",
            "not a rate",
        ),
        (
            experiment("f", "delay: { fixed: 1ms, percent: 1 }", "maxLatency: { p99: 0s }", "  duration: 1m\n"),
            "spec.steadyState.maxLatency.p99",
            "at least 1ms",
        ),
        (
            experiment("g", "delay: { fixed: 1ms, percent: 140 }", steady, "  duration: 1m\n"),
            "spec.faults[0].delay.percent",
            "not a percentage",
        ),
    ] {
        let r = run(&m.cp, &yaml).await;
        assert!(r.experiment.is_none(), "{yaml}");
        assert!(
            r.errors.iter().any(|e| e.path == path && e.message.contains(says)),
            "{path}: {says} not in {:#?}",
            r.errors
        );
    }
    // Several at once.
    let many = experiment("h", "delay: { fixed: 1ms, percent: 140 }", "maxErrorRate: 250%", "  duration: 2h\n");
    let r = run(&m.cp, &many).await;
    assert!(r.errors.len() >= 3, "{:#?}", r.errors);
    let listed = m.cp.admin().await.list_experiments(pb::ListExperimentsRequest::default()).await.unwrap();
    assert!(listed.into_inner().experiments.is_empty(), "nothing refused is kept");

    // `bulwarkctl apply -f` runs the ChaosExperiments of a stream and applies the rest.
    let dir = TempDir::new("apply-experiment");
    let file = dir.path().join("both.yaml");
    let bad = experiment("i", "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 2h\n");
    std::fs::write(&file, format!("{POLICY}---\n{bad}")).unwrap();
    let ctl = |file: &std::path::Path| {
        std::process::Command::new(bulwark_e2e::workspace_bin("bulwarkctl"))
            .args(["--server", &m.cp.addr.to_string(), "apply", "-f"])
            .arg(file)
            .output()
            .unwrap()
    };
    let out = ctl(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("experiment shop/i: spec.duration: 2h is over the cap of 1h"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("policy shop/web unchanged"), "the policy is applied");
    std::fs::write(&file, experiment("j", "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 1s\n")).unwrap();
    let out = ctl(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("experiment shop/j admitted"));

    // j ends by itself: no proxy measures shop/web here, so nothing could guard it.
    let j = wait_state(&m.cp, "j", &["refused"], Duration::from_secs(20)).await;
    assert!(j.reason.contains("no proxy measured shop/web"), "{}", j.reason);

    // Eight admissions at once for one route: one.
    let admin = m.cp.admin().await;
    let runs = (0..8).map(|i| {
        let yaml = experiment(&format!("race-{i}"), "delay: { fixed: 1ms, percent: 1 }", steady, "  duration: 1m\n");
        let mut admin = admin.clone();
        tokio::spawn(async move { admin.run_experiment(pb::RunExperimentRequest { yaml }).await.unwrap().into_inner() })
    });
    let mut admitted = 0;
    for r in runs.collect::<Vec<_>>() {
        let r = r.await.unwrap();
        if r.experiment.is_some() {
            admitted += 1;
        } else {
            assert!(r.errors.iter().any(|e| e.message.contains("already faults route pay")), "{:?}", r.errors);
        }
    }
    assert_eq!(admitted, 1, "exactly one of eight overlapping experiments admitted");
}
