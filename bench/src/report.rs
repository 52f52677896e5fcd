//! Medians, ratios and the markdown table; the budgets of DESIGN.md checked against them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::control::ControlFigures;
use crate::load::Measure;
use crate::scale;

#[derive(Serialize)]
pub struct Run {
    pub date: String,
    pub machine: String,
    pub profile: String,
    pub rounds: usize,
    pub seconds_per_measure: u64,
    pub skipped: Vec<String>,
    pub results: BTreeMap<String, BTreeMap<String, Vec<Measure>>>,
    pub cpu_per_100k: BTreeMap<String, Vec<f64>>,
    pub idle_rss: BTreeMap<String, u64>,
    pub peak_rss: BTreeMap<String, u64>,
    pub control: ControlFigures,
    pub connections: scale::Connections,
    pub sweep: scale::Sweep,
    /// "NAME WORKERS" → req/s per round, 32 connections closed loop.
    pub workers: BTreeMap<String, Vec<f64>>,
    pub churn: scale::Churn,
}

pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%MZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The machine's CPU time so far, in clock ticks: (stolen by the hypervisor, all).
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let all = ticks.iter().take(8).sum();
    (ticks.get(7).copied().unwrap_or(0), all)
}

/// Cores, CPU model, load average and the CPU time the hypervisor took since `start` (from
/// `cpu_ticks`): what a reader needs to weigh the figures. Stolen time shows above all in the
/// tail latencies, the direct path's included.
pub fn machine(start: (u64, u64)) -> String {
    let (steal, all) = cpu_ticks();
    let stolen = match all.checked_sub(start.1) {
        Some(d) if d > 0 => format!(
            ", {:.1}% of CPU time stolen by the hypervisor during the run",
            100.0 * steal.saturating_sub(start.0) as f64 / d as f64
        ),
        _ => String::new(),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores, {model}, load average {} at the end{stolen}", load.join(" "))
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn med(run: &Run, scenario: &str, target: &str, f: impl Fn(&Measure) -> Option<f64>) -> Option<f64> {
    median(run.results.get(scenario)?.get(target)?.iter().filter_map(f).collect())
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "—".into())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

fn mib(b: Option<&u64>) -> Option<f64> {
    b.map(|b| *b as f64 / (1024.0 * 1024.0))
}

fn percentile(m: &Measure, pick: usize) -> Option<f64> {
    match pick {
        0 => m.p50_ms,
        1 => m.p99_ms,
        _ => m.p999_ms,
    }
}

/// The median latency (p50, p99, p99.9 by `pick`) that Bulwark and Envoy add over direct.
fn added_latency(run: &Run, scenario: &str, pick: usize) -> (Option<f64>, Option<f64>) {
    let lat = |target| med(run, scenario, target, |m| percentile(m, pick));
    let direct = lat("direct");
    let added = |x: Option<f64>| x.zip(direct).map(|(x, d)| x - d);
    (added(lat("bulwark")), added(lat("envoy")))
}

/// A row of direct, Bulwark and Envoy figures with the two ratios; "—" where one is missing.
fn comparison_row(t: &mut String, label: &str, d: Option<f64>, b: Option<f64>, e: Option<f64>, digits: usize) {
    let (fd, fb, fe) = (fmt(d, digits), fmt(b, digits), fmt(e, digits));
    let _ = writeln!(t, "| {label} | {fd} | {fb} | {fe} | {} | {} |", ratio(b, e), ratio(b, d));
}

pub fn markdown(run: &Run) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Bulwark benchmark, {} — {} — {} build, {} round(s) of {} s per measure, medians.\n",
        run.date, run.machine, run.profile, run.rounds, run.seconds_per_measure
    );
    let _ = writeln!(t, "| measure | direct | Bulwark | Envoy | Bulwark/Envoy | Bulwark/direct |");
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    let throughput = [
        ("h1", "HTTP/1.1 keep-alive, 32 connections, closed loop (req/s)"),
        ("h1-nginx", "same, nginx as the upstream (req/s)"),
        ("h2c", "h2c, 8 connections × 16 streams (req/s)"),
        ("grpc", "gRPC unary, 8 connections × 16 streams (req/s)"),
    ];
    for (scenario, label) in throughput {
        if !run.results.contains_key(scenario) {
            continue;
        }
        let rps = |target| med(run, scenario, target, |m| Some(m.rps));
        comparison_row(&mut t, label, rps("direct"), rps("bulwark"), rps("envoy"), 0);
    }
    for rate in [1000, 5000] {
        let scenario = format!("open-{rate}");
        if !run.results.contains_key(&scenario) {
            continue;
        }
        for (name, pick) in [("p50", 0), ("p99", 1), ("p99.9", 2)] {
            let lat = |target| med(run, &scenario, target, |m| percentile(m, pick));
            let (d, b, e) = (lat("direct"), lat("bulwark"), lat("envoy"));
            comparison_row(&mut t, &format!("open loop {rate} req/s, {name} latency (ms)"), d, b, e, 3);
            if pick < 2 {
                let (ab, ae) = added_latency(run, &scenario, pick);
                comparison_row(
                    &mut t,
                    &format!("open loop {rate} req/s, {name} latency added over direct (ms)"),
                    None,
                    ab,
                    ae,
                    3,
                );
            }
        }
    }
    let (bi, ei) = (mib(run.idle_rss.get("bulwark")), mib(run.idle_rss.get("envoy")));
    comparison_row(&mut t, "RSS idle (MiB)", None, bi, ei, 1);
    let (bp, ep) = (mib(run.peak_rss.get("bulwark")), mib(run.peak_rss.get("envoy")));
    comparison_row(&mut t, "RSS peak (MiB)", None, bp, ep, 1);
    let cpu = |n: &str| run.cpu_per_100k.get(n).cloned().and_then(median);
    comparison_row(
        &mut t,
        "CPU seconds per 100k requests (HTTP/1.1 closed loop)",
        None,
        cpu("bulwark"),
        cpu("envoy"),
        2,
    );

    let _ = writeln!(t, "\n| Bulwark stages | req/s | vs bare |\n|---|---|---|");
    let bare = med(run, "stages", "bulwark-bare", |m| Some(m.rps));
    for (name, label) in [
        ("bulwark-bare", "no policy"),
        (
            "bulwark-all",
            "every stage: breaker, bulkhead, retries, rate limit never reached, 0% faults, metrics, 1% tracing",
        ),
    ] {
        let v = med(run, "stages", name, |m| Some(m.rps));
        if v.is_some() {
            let _ = writeln!(t, "| {label} | {} | {} |", fmt(v, 0), ratio(v, bare));
        }
    }
    // Selecting a policy among many: against the same policies alone (the `bulwark` column).
    let one = med(run, "h1", "bulwark", |m| Some(m.rps));
    let many = med(run, "stages", "bulwark-1000-policies", |m| Some(m.rps));
    let keys_label = format!(
        "the same plus a per-client rate limit tracking {} clients, load from {} rotating keys",
        crate::configs::CLIENT_KEYS_TRACKED,
        crate::configs::CLIENT_KEYS_SENT
    );
    for (variant, label) in [
        ("bulwark-1000-policies", "the Envoy-equivalent policies among 1,000 policies of 10 routes each"),
        (
            "bulwark-10000-routes",
            "the Envoy-equivalent policies with 250 routes each (none matching), 10,000 routes in 40 policies",
        ),
        ("bulwark-client-keys", keys_label.as_str()),
        (
            "bulwark-adaptive",
            "the same plus adaptive concurrency on every route (every latency measured, the limit moved each 100 ms)",
        ),
    ] {
        let v = med(run, "stages", variant, |m| Some(m.rps));
        if v.is_some() {
            let _ = writeln!(t, "| {label} | {} | {} of the same policies alone |", fmt(v, 0), ratio(v, one));
        }
    }

    let conns = &run.connections;
    if !conns.peak_rss.is_empty() {
        let _ =
            writeln!(t, "\n| {} connections | Bulwark | Envoy | Bulwark/Envoy |\n|---|---|---|---|", conns.connections);
        let (b, e) = (mib(conns.peak_rss.get("bulwark")), mib(conns.peak_rss.get("envoy")));
        let _ = writeln!(t, "| RSS, highest during the run (MiB) | {} | {} | {} |", fmt(b, 1), fmt(e, 1), ratio(b, e));
        let (b, e) = (mib(conns.after_rss.get("bulwark")), mib(conns.after_rss.get("envoy")));
        let _ = writeln!(
            t,
            "| RSS {} s after they closed (MiB) | {} | {} | {} |",
            crate::scale::SETTLE.as_secs(),
            fmt(b, 1),
            fmt(e, 1),
            ratio(b, e)
        );
        let (b, e) = (conns.rps.get("bulwark").copied(), conns.rps.get("envoy").copied());
        let _ = writeln!(t, "| throughput, closed loop (req/s) | {} | {} | {} |", fmt(b, 0), fmt(e, 0), ratio(b, e));
    }
    if !conns.idle_rss.is_empty() {
        let n = crate::scale::IDLE_CONNECTIONS;
        let _ =
            writeln!(t, "\n| {n} idle keep-alive connections | Bulwark | Envoy | Bulwark/Envoy |\n|---|---|---|---|");
        let held = |name: &str| conns.idle_rss.get(name).map(|&(_, held)| held);
        let (b, e) = (mib(held("bulwark").as_ref()), mib(held("envoy").as_ref()));
        let _ = writeln!(t, "| RSS while they are held (MiB) | {} | {} | {} |", fmt(b, 1), fmt(e, 1), ratio(b, e));
        let each = |name: &str| {
            conns.idle_rss.get(name).map(|&(before, held)| held.saturating_sub(before) as f64 / 1024.0 / n as f64)
        };
        let (b, e) = (each("bulwark"), each("envoy"));
        let _ = writeln!(t, "| added per connection (KiB) | {} | {} | {} |", fmt(b, 1), fmt(e, 1), ratio(b, e));
    }

    let points = |name: &str| run.sweep.points.get(name).cloned().unwrap_or_default();
    let (b, e) = (points("bulwark"), points("envoy"));
    if !b.is_empty() {
        let _ = writeln!(
            t,
            "\n| connections | Bulwark req/s | Envoy req/s | Bulwark/Envoy | Bulwark CPU µs/req | Envoy CPU µs/req | Bulwark CPU vs 32 |\n|---|---|---|---|---|---|---|"
        );
        let base = b.get(&32).map(|p| p.1);
        for (conns, (rps, cpu, errors)) in &b {
            let other = e.get(conns);
            let failed = if *errors > 0 { format!(" ({errors} failed)") } else { String::new() };
            let _ = writeln!(
                t,
                "| {conns} | {}{failed} | {} | {} | {} | {} | {} |",
                fmt(Some(*rps), 0),
                fmt(other.map(|o| o.0), 0),
                ratio(Some(*rps), other.map(|o| o.0)),
                fmt(Some(*cpu), 1),
                fmt(other.map(|o| o.1), 1),
                ratio(Some(*cpu), base)
            );
        }
    }
    let w = |key: &str| median(run.workers.get(key).cloned().unwrap_or_default());
    let (b1, b2, e1, e2) = (w("bulwark 1"), w("bulwark 2"), w("envoy 1"), w("envoy 2"));
    if b1.is_some() {
        let _ = writeln!(
            t,
            "\n| workers, 32 connections closed loop (req/s) | Bulwark | Envoy | Bulwark/Envoy |\n|---|---|---|---|"
        );
        let _ = writeln!(t, "| 1 worker | {} | {} | {} |", fmt(b1, 0), fmt(e1, 0), ratio(b1, e1));
        let _ = writeln!(t, "| 2 workers | {} | {} | {} |", fmt(b2, 0), fmt(e2, 0), ratio(b2, e2));
        let _ = writeln!(t, "| scaling 1 → 2 | {} | {} | — |", ratio(b2, b1), ratio(e2, e1));
    }

    let churn = &run.churn;
    let p999 = |v: &[Measure]| median(v.iter().filter_map(|m| m.p999_ms).collect());
    let (quiet, reloading, scraping) = (p999(&churn.quiet), p999(&churn.reloading), p999(&churn.scraping));
    if quiet.is_some() {
        let _ = writeln!(
            t,
            "\n| {} routes, open loop {} req/s | p99.9 (ms) | vs quiet |\n|---|---|---|",
            churn.routes,
            scale::CHURN_RATE
        );
        let _ = writeln!(t, "| quiet | {} | 1.00 |", fmt(quiet, 3));
        let _ = writeln!(
            t,
            "| the whole set reloaded every second ({} reloads installed) | {} | {} |",
            churn.reloads,
            fmt(reloading, 3),
            ratio(reloading, quiet)
        );
        let _ = writeln!(
            t,
            "| /metrics scraped every second ({:.1} MB, {} ms per scrape) | {} | {} |",
            churn.scrape_bytes as f64 / 1e6,
            fmt(median(churn.scrape_ms.clone()), 1),
            fmt(scraping, 3),
            ratio(scraping, quiet)
        );
    }

    let c = &run.control;
    let ack = median(c.apply_to_ack_ms.clone());
    let big_ack = median(c.big_apply_to_ack_ms.clone());
    let streams_ack = median(c.streams_apply_to_ack_ms.clone());
    let streams_big_ack = median(c.streams_big_apply_to_ack_ms.clone());
    let big = crate::control::BIG_ROUTES;
    let _ = writeln!(t, "\n| control plane | figure |\n|---|---|");
    let _ = writeln!(
        t,
        "| Apply of a small policy → ACK by {} connected proxies (ms, median of {}) | {} |",
        c.proxies,
        c.apply_to_ack_ms.len(),
        fmt(ack, 1)
    );
    let _ =
        writeln!(t, "| Apply of {big} routes → ACK by {} connected proxies (ms) | {} |", c.proxies, fmt(big_ack, 1));
    let _ = writeln!(
        t,
        "| Apply of a small policy beside those {big} routes → ACK by {} connected proxies (ms) | {} |",
        c.proxies,
        fmt(median(c.small_beside_big_apply_to_ack_ms.clone()), 1)
    );
    let _ = writeln!(
        t,
        "| Apply of a small policy → ACK by {} streams on {} connections (ms) | {} |",
        c.streams,
        c.streams,
        fmt(streams_ack, 1)
    );
    let _ = writeln!(t, "| Apply of {big} routes → ACK by {} streams (ms) | {} |", c.streams, fmt(streams_big_ack, 1));
    let _ = writeln!(t, "| RSS idle (MiB) | {} |", fmt(mib(Some(&c.idle_rss)), 1));
    let _ =
        writeln!(t, "| RSS with {} proxies connected (MiB) | {} |", c.proxies, fmt(mib(Some(&c.rss_with_proxies)), 1));
    let _ =
        writeln!(t, "| RSS holding {} proxy streams (MiB) | {} |", c.streams, fmt(mib(Some(&c.rss_with_streams)), 1));
    let _ = writeln!(t, "| RSS at its highest, any time in the run (MiB) | {} |", fmt(mib(Some(&c.peak_rss)), 1));

    // The budgets of DESIGN.md.
    let check = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    let _ = writeln!(t, "\n| budget | result |\n|---|---|");
    let h1 = (med(run, "h1", "bulwark", |m| Some(m.rps)), med(run, "h1", "envoy", |m| Some(m.rps)));
    let _ = writeln!(
        t,
        "| throughput ≥ 2× Envoy (HTTP/1.1) | {} ({}×) |",
        check(h1.0.zip(h1.1).map(|(b, e)| b >= 2.0 * e)),
        ratio(h1.0, h1.1)
    );
    for rate in [1000, 5000] {
        for (name, pick) in [("p50", 0), ("p99", 1)] {
            let (ab, ae) = added_latency(run, &format!("open-{rate}"), pick);
            let _ = writeln!(
                t,
                "| added {name} at {rate} req/s ≤ ½ Envoy's | {} ({} vs {} ms) |",
                check(ab.zip(ae).map(|(b, e)| b <= e / 2.0)),
                fmt(ab, 3),
                fmt(ae, 3)
            );
        }
    }
    let _ = writeln!(t, "| idle RSS < 10 MiB | {} ({} MiB) |", check(bi.map(|b| b < 10.0)), fmt(bi, 1));
    let all = med(run, "stages", "bulwark-all", |m| Some(m.rps));
    let _ = writeln!(
        t,
        "| every stage costs ≤ 10% of bare throughput | {} ({}) |",
        check(all.zip(bare).map(|(a, b)| a >= 0.9 * b)),
        ratio(all, bare)
    );
    let _ = writeln!(
        t,
        "| Apply of a small policy reaches {} proxies (ACKed) < 100 ms | {} ({} ms) |",
        c.proxies,
        check(ack.map(|a| a < 100.0)),
        fmt(ack, 1)
    );
    let _ = writeln!(
        t,
        "| Apply of {big} routes reaches {} proxies (ACKed) < 1 s | {} ({} ms) |",
        c.proxies,
        check(big_ack.map(|a| a < 1000.0)),
        fmt(big_ack, 1)
    );
    let _ = writeln!(
        t,
        "| 1,000 policies cost ≤ 10% of one policy's throughput | {} ({}) |",
        check(many.zip(one).map(|(m, o)| m >= 0.9 * o)),
        ratio(many, one)
    );
    let _ = writeln!(
        t,
        "| p99.9 while {} routes reload every second ≤ 2× quiet | {} ({} vs {} ms) |",
        churn.routes,
        check(reloading.zip(quiet).map(|(r, q)| r <= 2.0 * q)),
        fmt(reloading, 3),
        fmt(quiet, 3)
    );
    let _ = writeln!(t, "| one control plane holds {} streams | {} |", c.streams, check(Some(c.rss_with_streams > 0)));
    let after = mib(run.connections.after_rss.get("bulwark"));
    let _ = writeln!(
        t,
        "| RSS {} s after {} connections closed ≤ 2× idle | {} ({} vs {} MiB) |",
        crate::scale::SETTLE.as_secs(),
        run.connections.connections,
        check(after.zip(bi).map(|(a, i)| a <= 2.0 * i)),
        fmt(after, 1),
        fmt(bi, 1)
    );
    if !run.skipped.is_empty() {
        let _ = writeln!(t, "\nSkipped: {}.", run.skipped.join("; "));
    }
    t
}
