//! `make demo`: runs Bulwark's main job on this machine and says what happened. Starts a
//! demo upstream and `bulwark-proxy` with the policies of `examples/` (copied, with free
//! ports), drives traffic at each route, prints what each policy did (from the proxy's own
//! metrics), then edits the policy live to show hot reload, and a bad edit being refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulwark_e2e::client::{self, request};
use bulwark_e2e::proxy::{free_port, metric_sum};
use bulwark_e2e::upstream::Upstream;
use http::Method;

struct Step {
    route: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    what: &'static str,
}

const STEPS: &[Step] = &[
    Step { route: "charge", method: Method::POST, path: "/charge", headers: &[], what: "fast upstream" },
    Step {
        route: "charge",
        method: Method::POST,
        path: "/charge",
        headers: &[("x-delay", "1s")],
        what: "upstream takes 1s; perTry is 800ms",
    },
    Step { route: "receipts", method: Method::GET, path: "/receipts/42", headers: &[], what: "fast upstream" },
    Step {
        route: "receipts",
        method: Method::GET,
        path: "/receipts/42",
        headers: &[("x-delay", "700ms")],
        what: "upstream takes 700ms; request timeout 500ms",
    },
    Step { route: "health", method: Method::GET, path: "/healthz", headers: &[], what: "exact-path route" },
    Step {
        route: "debug",
        method: Method::POST,
        path: "/charge",
        headers: &[("x-debug", "1")],
        what: "+ header condition: more specific",
    },
    Step {
        route: "default",
        method: Method::GET,
        path: "/catalog",
        headers: &[("x-delay", "100ms")],
        what: "no route matches: the policy's defaults (3s)",
    },
    Step {
        route: "default",
        method: Method::GET,
        path: "/catalog",
        headers: &[("x-reset", "1")],
        what: "upstream drops the connection",
    },
    Step {
        route: "default",
        method: Method::GET,
        path: "/catalog",
        headers: &[("x-status", "503")],
        what: "upstream answers 503 itself: passed through",
    },
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = repo_root();
    let proxy_bin = bulwark_e2e::workspace_bin("bulwark-proxy");
    let up = Upstream::start().await;
    let dir = bulwark_e2e::TempDir::new("demo");
    let (listen, admin, health) = (free_port(), free_port(), free_port());

    // The examples, with free ports instead of the documented fixed ones.
    let config = std::fs::read_to_string(root.join("examples/proxy.yaml"))?
        .replace("localhost:9000", &up.addr.to_string())
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
        .replace("admin: 127.0.0.1:15000", &format!("admin: 127.0.0.1:{admin}"))
        .replace("health: 0.0.0.0:15020", &format!("health: 127.0.0.1:{health}"));
    std::fs::create_dir_all(dir.path().join("policies"))?;
    let policy_path = dir.path().join("policies/payments.yaml");
    let policy = std::fs::read_to_string(root.join("examples/policies/payments.yaml"))?;
    std::fs::write(&policy_path, &policy)?;
    let config_path = dir.path().join("proxy.yaml");
    std::fs::write(&config_path, config)?;

    println!("== Bulwark demo ==\n");
    let check = Command::new(&proxy_bin).args(["check", "--config"]).arg(&config_path).output()?;
    print!("$ bulwark-proxy check --config examples/proxy.yaml\n{}", String::from_utf8_lossy(&check.stdout));
    if !check.status.success() {
        bail!("the example config is invalid:\n{}", String::from_utf8_lossy(&check.stderr));
    }

    let log = std::fs::File::create(dir.path().join("proxy.log"))?;
    let mut child = Command::new(&proxy_bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let health_addr: std::net::SocketAddr = format!("127.0.0.1:{health}").parse()?;
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{listen}").parse()?;
    if !client::wait_ok(health_addr, "/ready", Duration::from_secs(15)).await {
        let _ = child.kill();
        bail!("bulwark-proxy did not become ready:\n{}", std::fs::read_to_string(dir.path().join("proxy.log"))?);
    }
    println!("\nupstream : {} (a demo server that is slow, fails or resets when asked)", up.addr);
    println!("proxy    : listener \"payments\" on {addr} -> upstream, policy shop/payments");
    println!("admin    : http://{admin_addr}/config   metrics: http://{health_addr}/metrics\n");

    println!("{:<9} {:<22} {:<44} answer", "route", "request", "situation");
    for s in STEPS {
        let mut req = request(s.method.clone(), s.path, s.headers);
        req.headers_mut().insert("host", "payments.shop".parse()?);
        let start = Instant::now();
        let r = client::send(addr, req).await.context("request through the proxy")?;
        let took = start.elapsed().as_secs_f64();
        let answer = match r.reason() {
            Some(reason) => format!("{} {reason} (the proxy answered, {took:.2}s)", r.status.as_u16()),
            None => format!("{} from upstream ({took:.2}s)", r.status.as_u16()),
        };
        println!("{:<9} {:<22} {:<44} {answer}", s.route, format!("{} {}", s.method, s.path), s.what);
    }

    let metrics = client::get(health_addr, "/metrics", &[]).await?.text();
    println!("\nWhat each route saw (from bulwark_requests_total):");
    println!("{:<9} {:>5} {:>5} {:>5}  refusals by reason", "route", "2xx", "4xx", "5xx");
    for route in ["charge", "receipts", "health", "debug", "default"] {
        let count =
            |class: &str| metric_sum(&metrics, "bulwark_requests_total", &[("route", route), ("status_class", class)]);
        let reasons: Vec<String> = ["timeout", "per-try-timeout", "upstream-reset", "upstream-connect-failure"]
            .iter()
            .filter_map(|reason| {
                let n = metric_sum(&metrics, "bulwark_requests_total", &[("route", route), ("reason", reason)]);
                (n > 0.0).then(|| format!("{reason}={n}"))
            })
            .collect();
        println!(
            "{route:<9} {:>5} {:>5} {:>5}  {}",
            count("2xx") as u64,
            count("4xx") as u64,
            count("5xx") as u64,
            reasons.join(" ")
        );
    }

    stages(addr, health_addr, &up).await?;
    faults(addr, admin_addr, &dir.path().join("proxy.log")).await?;

    println!("\nHot reload: raise the receipts timeout from 500ms to 2s by editing the policy file.");
    let before = metric_sum(&client::get(health_addr, "/metrics", &[]).await?.text(), "bulwark_config_generation", &[]);
    std::fs::write(&policy_path, policy.replace("timeout: { request: 500ms }", "timeout: { request: 2s }"))?;
    wait_generation(health_addr, before + 1.0).await?;
    let r = client::get(addr, "/receipts/42", &[("x-delay", "700ms")]).await?;
    println!("  GET /receipts/42 (upstream 700ms) -> {} {}", r.status.as_u16(), r.reason().unwrap_or("from upstream"));

    println!("\nA bad edit is refused and the policy in force stays: set the timeout to \"2 seconds\".");
    std::fs::write(&policy_path, policy.replace("timeout: { request: 500ms }", "timeout: { request: 2 seconds }"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let m = client::get(health_addr, "/metrics", &[]).await?.text();
        if metric_sum(&m, "bulwark_config_reloads_total", &[("result", "rejected")]) >= 1.0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("proxy.log"))?;
    if let Some(line) = log.lines().find(|l| l.contains("reload rejected")) {
        let why = line.split("errors=").nth(1).unwrap_or(line);
        println!("  proxy log: reload rejected: {}", why.split(" reload rejected").next().unwrap_or(why).trim());
    }
    let r = client::get(addr, "/receipts/42", &[("x-delay", "700ms")]).await?;
    println!(
        "  rejected={rejected}; GET /receipts/42 (upstream 700ms) -> {} {} (the 2s policy is still in force)",
        r.status.as_u16(),
        r.reason().unwrap_or("from upstream")
    );

    Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    println!("\nSIGTERM: bulwark-proxy drained and exited ({status}).");

    control_plane(&root, &up, &dir).await?;
    Ok(())
}

/// Each resilience stage acting on its own route of the example policy.
async fn stages(addr: SocketAddr, health: SocketAddr, up: &Upstream) -> anyhow::Result<()> {
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        let r = client::get(addr, path, headers).await?;
        anyhow::Ok((r.status.as_u16(), r.reason().map(str::to_string), r.headers.get("retry-after").cloned()))
    };
    let show = |(status, reason, _): &(u16, Option<String>, Option<http::HeaderValue>)| match reason {
        Some(r) => format!("{status} {r}"),
        None => format!("{status}"),
    };

    println!("\nRetries (route inventory): the upstream fails one request in three.");
    let before = up.requests();
    let mut ok = 0;
    for _ in 0..9 {
        ok += u32::from(get("/inventory", &[("x-fail-every", "3")]).await?.0 == 200);
    }
    let m = client::get(health, "/metrics", &[]).await?.text();
    println!(
        "  {ok}/9 answered 200; the upstream saw {} requests ({} retries)",
        up.requests() - before,
        metric_sum(&m, "bulwark_retries_total", &[("route", "inventory")])
    );

    println!("\nCircuit breaker (route ledger): the upstream starts failing.");
    let mut line = Vec::new();
    for _ in 0..3 {
        line.push(show(&get("/ledger", &[("x-status", "500")]).await?));
    }
    let before = up.requests();
    for _ in 0..3 {
        line.push(show(&get("/ledger", &[]).await?));
    }
    println!("  6 requests: {}", line.join(", "));
    println!("  while open the upstream saw {} requests; waiting 2s (openFor)...", up.requests() - before);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    println!(
        "  the upstream recovered: trial -> {}, next -> {}",
        show(&get("/ledger", &[]).await?),
        show(&get("/ledger", &[]).await?)
    );
    let m = client::get(health, "/metrics", &[]).await?.text();
    let t = |from, to| {
        metric_sum(&m, "bulwark_breaker_transitions_total", &[("route", "ledger"), ("from", from), ("to", to)])
    };
    println!(
        "  transitions: closed->open {}, open->half-open {}, half-open->closed {}",
        t("closed", "open"),
        t("open", "half-open"),
        t("half-open", "closed")
    );

    println!("\nBulkhead (route reports): 3 slow requests at once, 2 slots.");
    let calls: Vec<_> = (0..3).map(|_| tokio::spawn(get("/reports", &[("x-delay", "500ms")]))).collect();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(show(&c.await??));
    }
    answers.sort();
    println!("  {}", answers.join(", "));

    println!("\nRate limit (route search): API key \"noisy\" sends 6 requests, \"quiet\" sends 2.");
    let mut noisy = Vec::new();
    for _ in 0..6 {
        let r = get("/search", &[("x-api-key", "noisy")]).await?;
        let after =
            r.2.as_ref().and_then(|v| v.to_str().ok()).map(|v| format!(" (Retry-After: {v})")).unwrap_or_default();
        noisy.push(format!("{}{after}", show(&r)));
    }
    println!("  noisy: {}", noisy.join(", "));
    let quiet = [
        show(&get("/search", &[("x-api-key", "quiet")]).await?),
        show(&get("/search", &[("x-api-key", "quiet")]).await?),
    ];
    println!("  quiet: {}", quiet.join(", "));

    println!("\nFallback (route recommendations): the upstream takes 1s, the route's timeout is 300ms.");
    let r = client::get(addr, "/recommendations", &[("x-delay", "1s")]).await?;
    let fallback = r.headers.get("x-bulwark-fallback").and_then(|v| v.to_str().ok()).unwrap_or("none");
    println!(
        "  -> {} {} (x-bulwark-fallback: {fallback}, x-bulwark-reason: {})",
        r.status.as_u16(),
        r.text(),
        r.reason().unwrap_or("none")
    );

    println!("\nPriority shedding (route orders): 4 slots; 8 analytics requests arrive, then 3 checkout.");
    let burst = |class: &'static str, n: usize| {
        (0..n)
            .map(|_| tokio::spawn(get("/orders", if class == "checkout" { CHECKOUT } else { ANALYTICS })))
            .collect::<Vec<_>>()
    };
    let analytics = burst("analytics", 8);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checkout = burst("checkout", 3);
    let admitted = |calls: Vec<tokio::task::JoinHandle<anyhow::Result<(u16, _, _)>>>| async move {
        let mut ok = 0;
        for c in calls {
            ok += u32::from(c.await??.0 == 200);
        }
        anyhow::Ok(ok)
    };
    let (analytics, checkout) = (admitted(analytics).await?, admitted(checkout).await?);
    println!("  analytics: {analytics} of 8 admitted (the rest 503 bulkhead-full); checkout: {checkout} of 3, though it came last");
    Ok(())
}

const ANALYTICS: &[(&str, &str)] = &[("x-class", "analytics"), ("x-delay", "800ms")];
const CHECKOUT: &[(&str, &str)] = &[("x-class", "checkout"), ("x-delay", "800ms")];

/// A fault switched on for one route at runtime, its effect there alone, and its expiry.
async fn faults(addr: SocketAddr, admin: SocketAddr, log: &Path) -> anyhow::Result<()> {
    println!("\nFault injection: switch on a 100% abort (503) for route charge, for 2s, on the admin port.");
    let mut set = request(Method::POST, "/faults?policy=shop/payments&route=charge", &[]);
    *set.body_mut() =
        http_body_util::Full::new(bytes::Bytes::from("abort: { httpStatus: 503, percent: 100 }\nfor: 2s\n"));
    let r = client::send(admin, set).await?;
    if r.status != http::StatusCode::OK {
        bail!("setting the fault failed: {}", r.text());
    }
    let answer = |r: &client::Reply| match r.reason() {
        Some(reason) => format!("{} {reason}", r.status.as_u16()),
        None => format!("{}", r.status.as_u16()),
    };
    let charge = || async { client::send(addr, request(Method::POST, "/charge", &[])).await };
    println!("  POST /charge      -> {}   (the upstream never sees it)", answer(&charge().await?));
    println!(
        "  GET /receipts/42  -> {}   (other routes are untouched)",
        answer(&client::get(addr, "/receipts/42", &[]).await?)
    );
    println!("  waiting 2s...");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    println!("  POST /charge      -> {}   (expired by itself; nobody cleared it)", answer(&charge().await?));
    let text = std::fs::read_to_string(log)?;
    if let Some(line) = text.lines().find(|l| l.contains("faults expired")) {
        println!("  proxy log: {}", line.split_once("INFO ").map_or(line, |(_, rest)| rest));
    }
    Ok(())
}

/// The same policies managed by the control plane: applied with bulwarkctl, pushed to a proxy,
/// enforced, and a fault toggled live.
async fn control_plane(root: &Path, up: &Upstream, dir: &bulwark_e2e::TempDir) -> anyhow::Result<()> {
    println!("\n== With the control plane ==");
    let (cp_port, listen, health) = (free_port(), free_port(), free_port());
    let server = format!("127.0.0.1:{cp_port}");
    let cp_log = std::fs::File::create(dir.path().join("control.log"))?;
    let mut cp = Command::new(bulwark_e2e::workspace_bin("bulwark-control"))
        .args(["--listen", &server, "--data-dir"])
        .arg(dir.path().join("control-data"))
        .stdout(Stdio::null())
        .stderr(cp_log)
        .spawn()?;
    let config = format!(
        "admin: 127.0.0.1:{}\nhealth: 127.0.0.1:{health}\ncontrolPlane: {{ address: \"{server}\", cacheFile: \"{}\", tokenFile: \"{}\", node: {{ id: demo-proxy, service: payments }} }}\nlisteners:\n- {{ name: payments, listen: \"127.0.0.1:{listen}\", upstream: \"{}\" }}\n",
        free_port(),
        dir.path().join("snapshot.json").display(),
        // The discovery token bulwark-control generates in its data directory.
        dir.path().join("control-data/discovery-token").display(),
        up.addr
    );
    let config_path = dir.path().join("proxy-cp.yaml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("proxy-cp.log"))?;
    let mut proxy = Command::new(bulwark_e2e::workspace_bin("bulwark-proxy"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let health_addr: SocketAddr = format!("127.0.0.1:{health}").parse()?;
    let addr: SocketAddr = format!("127.0.0.1:{listen}").parse()?;
    let result = async {
        if !client::wait_ok(health_addr, "/ready", Duration::from_secs(15)).await {
            bail!("the control-plane proxy did not become ready");
        }
        println!("control plane: bulwark-control on {server}; proxy \"demo-proxy\" takes its policies from it");
        println!("control plane: PolicyAdmin requires the admin token bulwark-control generated in its data directory (admin-token); bulwarkctl on this host reads it there");
        println!("control plane: discovery requires the discovery token generated beside it (discovery-token); the proxy's controlPlane.tokenFile names it");
        let ctl = |args: &[&str]| -> anyhow::Result<String> {
            // bulwarkctl finds the admin token bulwark-control generated in its data directory.
            let o = Command::new(bulwark_e2e::workspace_bin("bulwarkctl"))
                .arg("--server")
                .arg(&server)
                .args(args)
                .env("BULWARK_CONTROL_DATA", dir.path().join("control-data"))
                .output()?;
            Ok(format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        };
        println!("$ bulwarkctl apply -f examples/policies");
        print!("{}", ctl(&["apply", "-f", root.join("examples/policies").to_str().unwrap_or_default()])?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_sum(
            &client::get(health_addr, "/metrics", &[]).await?.text(),
            "bulwark_discovery_snapshots_total",
            &[("result", "ack")],
        ) < 2.0
        {
            if Instant::now() > deadline {
                bail!("the proxy never acknowledged the pushed policies");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = client::get(addr, "/receipts/42", &[("x-delay", "700ms")]).await?;
        println!(
            "  pushed and acknowledged: GET /receipts/42 (upstream 700ms) -> {} {}",
            r.status.as_u16(),
            r.reason().unwrap_or("")
        );
        println!("$ bulwarkctl fault set shop/payments/charge --abort 503 --percent 100 --for 1m");
        print!(
            "{}",
            ctl(&["fault", "set", "shop/payments/charge", "--abort", "503", "--percent", "100", "--for", "1m"])?
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let r = client::send(addr, request(Method::POST, "/charge", &[])).await?;
            if r.reason() == Some("fault-abort") || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("  POST /charge -> {} {}", answer.status.as_u16(), answer.reason().unwrap_or(""));
        print!("{}", ctl(&["fault", "clear", "shop/payments/charge"])?);
        // Four snapshots by now: the empty first one, the apply, the fault, its removal.
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric_sum(
            &client::get(health_addr, "/metrics", &[]).await?.text(),
            "bulwark_discovery_snapshots_total",
            &[("result", "ack")],
        ) < 4.0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("$ bulwarkctl status");
        print!("{}", ctl(&["status"])?);
        experiments(root, addr, &ctl).await
    }
    .await;
    let _ = proxy.kill();
    let _ = cp.kill();
    let _ = (proxy.wait(), cp.wait());
    result
}

/// Two guarded chaos experiments on route receipts while traffic flows: one whose hypothesis
/// holds, one whose guard is crossed and that aborts itself; each report printed.
async fn experiments(
    root: &Path,
    addr: SocketAddr,
    ctl: &dyn Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    println!("\n== Guarded chaos experiments (traffic on route receipts all along) ==");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let traffic = tokio::spawn(async move {
        let mut answered = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if client::get(addr, "/receipts/42", &[]).await.is_ok() {
                answered += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered
    });
    for (file, what) in [
        ("slow-receipts.yaml", "a delay the steady state absorbs: the hypothesis holds"),
        ("failing-receipts.yaml", "errors over the budget: the guard aborts it"),
    ] {
        let path = root.join("examples/experiments").join(file);
        println!("\n$ bulwarkctl experiment run --wait -f examples/experiments/{file}   # {what}");
        print!("{}", ctl(&["experiment", "run", "--wait", "-f", path.to_str().unwrap_or_default()])?);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = traffic.await?;
    println!("\n$ bulwarkctl experiment list");
    print!("{}", ctl(&["experiment", "list"])?);
    println!("  ({answered} requests answered during the experiments; every fault was removed by its experiment)");
    let r = client::get(addr, "/receipts/42", &[]).await?;
    println!("  GET /receipts/42 after both -> {} {}", r.status.as_u16(), r.reason().unwrap_or("from upstream"));
    Ok(())
}

async fn wait_generation(health: std::net::SocketAddr, at_least: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = client::get(health, "/metrics", &[]).await?.text();
        if metric_sum(&m, "bulwark_config_generation", &[]) >= at_least {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the reload did not apply within 10s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
