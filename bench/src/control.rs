//! The control plane's budgets: how long an Apply takes to be acknowledged by 100 connected
//! proxies (real `bulwark-proxy` processes, which validate and install each snapshot before
//! they ACK) and by 1,000 streams, each on its own connection (discovery clients in this
//! process that speak the protocol and ACK every snapshot), for a small policy and for a set of
//! 1,000 routes; and the control plane's memory with 100 and with 1,000 streams.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_proto::v1 as pb;
use serde::Serialize;
use tonic::transport::Channel;

use crate::procs::{free_addr, wait_listening, Proc};

#[derive(Clone, Debug, Default, Serialize)]
pub struct ControlFigures {
    pub proxies: usize,
    /// Apply → every proxy ACKed, milliseconds, one per round.
    pub apply_to_ack_ms: Vec<f64>,
    /// The same for an apply of `BIG_ROUTES` routes.
    pub big_apply_to_ack_ms: Vec<f64>,
    /// The small policy again, once the proxies also hold the `BIG_ROUTES` routes.
    pub small_beside_big_apply_to_ack_ms: Vec<f64>,
    pub streams: usize,
    pub streams_apply_to_ack_ms: Vec<f64>,
    pub streams_big_apply_to_ack_ms: Vec<f64>,
    pub idle_rss: u64,
    pub rss_with_proxies: u64,
    pub rss_with_streams: u64,
    /// The highest resident memory of the whole run (every apply, every stream).
    pub peak_rss: u64,
}

/// Routes in the large apply: four policies of 250 (a policy holds at most 256).
pub const BIG_ROUTES: usize = 1000;

fn policy(round: usize) -> Vec<String> {
    vec![format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: bench-cp, namespace: bench }}\nspec:\n  target: {{ listener: web }}\n  defaults:\n    timeout: {{ request: {}s }}\n",
        round + 1
    )]
}

/// `BIG_ROUTES` routes in four policies; `round` changes every route's timeout.
fn big_policy(round: usize) -> Vec<String> {
    (0..4)
        .map(|p| {
            let routes: String = (0..BIG_ROUTES / 4)
                .map(|r| {
                    format!(
                        "  - {{ name: r{r}, match: {{ pathPrefix: /p{p}/r{r}/, methods: [GET, POST] }}, timeout: {{ request: {}s }}, retries: {{ attempts: 2 }} }}\n",
                        round % 5 + 1
                    )
                })
                .collect();
            format!(
                "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: bench-big-{p}, namespace: bench }}\nspec:\n  target: {{ service: big-{p}.bench.svc }}\n  routes:\n{routes}"
            )
        })
        .collect()
}

/// Applies `documents` and waits until `n` streams ACKed it; milliseconds.
async fn timed_apply(
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
    documents: Vec<String>,
    n: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let r = admin.apply(pb::ApplyRequest { documents, dry_run: false }).await?.into_inner();
    anyhow::ensure!(r.applied, "the benchmark policy was refused: {:?}", r.errors);
    wait_all_acked(admin, n, Duration::from_secs(60)).await?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

async fn all_acked(admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>, n: usize) -> anyhow::Result<bool> {
    let r = admin.list_proxies(pb::ListProxiesRequest {}).await?.into_inner();
    let acked = r.proxies.iter().filter(|p| p.connected && p.acked_version == r.current_version).count();
    Ok(acked >= n)
}

async fn wait_all_acked(
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
    n: usize,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !all_acked(admin, n).await? {
        if Instant::now() > deadline {
            let r = admin.list_proxies(pb::ListProxiesRequest {}).await?.into_inner();
            let acked = r.proxies.iter().filter(|p| p.acked_version == r.current_version).count();
            anyhow::bail!("only {acked} of {n} proxies acknowledged version {} in {within:?}", r.current_version);
        }
        // Each poll lists every stream; polling faster would load the control plane measured.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    proxies: usize,
    streams: usize,
    rounds: usize,
) -> anyhow::Result<ControlFigures> {
    let addr = free_addr();
    let cp = Proc::spawn(
        "bulwark-control",
        Command::new(bin.join("bulwark-control"))
            // One machine, the benchmark's own control plane: no admin token to pass around.
            .args(["--insecure-no-auth", "--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.join("control-data"))
            .env("BULWARK_LOG", "warn"),
        dir,
    )?;
    wait_listening(addr, "bulwark-control").await?;
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    admin.apply(pb::ApplyRequest { documents: policy(0), dry_run: false }).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut figures = ControlFigures { proxies, streams, idle_rss: cp.rss(), ..Default::default() };

    // Real proxies, one worker thread each. A proxy whose free port was taken in the meantime
    // by another one fails to start; it is started again on other ports.
    let spawn = |i: usize| -> anyhow::Result<Proc> {
        let config = dir.join(format!("cp-proxy-{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "admin: \"{}\"\nhealth: \"{}\"\ncontrolPlane: {{ address: \"{addr}\", node: {{ id: bench-{i}, service: bench }} }}\n",
                free_addr(),
                free_addr()
            ),
        )?;
        Proc::spawn(
            &format!("cp-proxy-{i}"),
            Command::new(bin.join("bulwark-proxy"))
                .args(["run", "--workers", "1", "--config"])
                .arg(&config)
                .env("BULWARK_LOG", "warn"),
            dir,
        )
    };
    let mut running = (0..proxies).map(spawn).collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, p) in running.iter_mut().enumerate() {
            if !p.alive() {
                eprintln!("bench: {} exited at start ({}); starting it again", p.name, p.logs().trim());
                *p = spawn(i)?;
            }
        }
    }
    wait_all_acked(&mut admin, proxies, Duration::from_secs(60)).await?;
    figures.rss_with_proxies = cp.rss();
    // The small policy alone first; then 1,000 routes; then the small policy again, now beside
    // the 1,000 routes: every proxy installs its whole set at every push.
    for round in 1..=rounds {
        figures.apply_to_ack_ms.push(timed_apply(&mut admin, policy(round), proxies).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for round in 1..=rounds {
        figures.big_apply_to_ack_ms.push(timed_apply(&mut admin, big_policy(round), proxies).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for round in 1..=rounds {
        let small = policy(rounds + round);
        figures.small_beside_big_apply_to_ack_ms.push(timed_apply(&mut admin, small, proxies).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(running);

    // Simulated streams, each on a connection of its own, as separate proxies would be.
    let mut holders = Vec::new();
    for i in 0..streams {
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        let mut client = pb::policy_discovery_client::PolicyDiscoveryClient::new(channel.clone())
            .max_decoding_message_size(64 << 20);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::DiscoveryRequest {
            kind: Some(pb::discovery_request::Kind::Node(pb::Node {
                id: format!("stream-{i}"),
                service: "bench".into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let task = tokio::spawn(async move {
            while let Ok(Some(snapshot)) = inbound.message().await {
                let ack = pb::DiscoveryRequest {
                    kind: Some(pb::discovery_request::Kind::Ack(pb::Ack { version: snapshot.version })),
                };
                if tx.send(ack).await.is_err() {
                    return;
                }
            }
        });
        holders.push((channel, task));
    }
    wait_all_acked(&mut admin, streams, Duration::from_secs(60)).await?;
    figures.rss_with_streams = cp.rss();
    for round in 1..=rounds {
        let base = 2 * rounds + round;
        figures.streams_apply_to_ack_ms.push(timed_apply(&mut admin, policy(base), streams).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
        figures.streams_big_apply_to_ack_ms.push(timed_apply(&mut admin, big_policy(base), streams).await?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    figures.peak_rss = cp.peak_rss();
    for (_, task) in holders {
        task.abort();
    }
    drop(cp);
    Ok(figures)
}
