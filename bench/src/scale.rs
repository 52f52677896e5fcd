//! What users hit beyond the head-to-head rows: memory and throughput with 1,000 client
//! connections, and open-loop latency on a proxy holding 10,000 routes while that set is
//! reloaded every second, or its `/metrics` scraped every second, against the same proxy
//! quiet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::load::{self, Measure};
use crate::procs::Proc;

/// The open-loop rate of the churn measures.
pub const CHURN_RATE: u32 = 1000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Connections {
    pub connections: u32,
    /// Target → resident memory at its highest during the run, bytes.
    pub peak_rss: BTreeMap<String, u64>,
    /// Target → resident memory `SETTLE` after the connections closed, bytes.
    pub after_rss: BTreeMap<String, u64>,
    pub rps: BTreeMap<String, f64>,
    /// Target → (resident memory before, and while holding `IDLE_CONNECTIONS` idle keep-alive
    /// connections), bytes.
    pub idle_rss: BTreeMap<String, (u64, u64)>,
}

/// Keep-alive connections held open, each after one request, for the idle-memory measure.
pub const IDLE_CONNECTIONS: usize = 5000;

/// `IDLE_CONNECTIONS` clients through `target` that each send one request, read its answer and
/// stay connected (what a sidecar holds for a pool of callers that go quiet); the proxy's
/// resident memory is read while they are held.
pub async fn idle_connections(
    out: &mut Connections,
    name: &str,
    target: SocketAddr,
    proc: &Proc,
) -> anyhow::Result<()> {
    let before = proc.rss();
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    while held.len() < IDLE_CONNECTIONS {
        let batch = (IDLE_CONNECTIONS - held.len()).min(200);
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..batch {
            opening.spawn(one_exchange(target));
        }
        while let Some(c) = opening.join_next().await {
            held.push(c?.map_err(|e| e.context(format!("{name}: idle connection {}", held.len())))?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    out.idle_rss.insert(name.into(), (before, proc.rss()));
    drop(held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// A connection that has carried one GET and read its whole answer; open while it is held.
async fn one_exchange(
    target: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
    use bulwark_e2e::client;
    let mut c = client::connect_h1(target).await?;
    client::collect(c.send_request(client::request(http::Method::GET, "/", &[("host", "bench")])).await?).await?;
    Ok(c)
}

/// The connection counts of the sweep.
pub const SWEEP: [u32; 4] = [32, 256, 1000, 10_000];

/// Closed-loop throughput and the proxy's CPU per request as connections grow, per target.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sweep {
    /// (target, connections) → (req/s, CPU µs per request, requests that failed).
    pub points: BTreeMap<String, BTreeMap<u32, (f64, f64, u64)>>,
}

/// One point of the sweep: `conns` connections through `target` for `duration`.
pub fn sweep_point(
    out: &mut Sweep,
    name: &str,
    target: SocketAddr,
    proc: &Proc,
    conns: u32,
    duration: Duration,
) -> anyhow::Result<()> {
    let before = proc.cpu_seconds();
    let m = load::wrk_with(&format!("http://{target}/"), conns, duration, None)?;
    let cpu = proc.cpu_seconds() - before;
    let per_request = if m.requests > 0 { cpu * 1e6 / m.requests as f64 } else { f64::NAN };
    out.points.entry(name.into()).or_default().insert(conns, (m.rps, per_request, m.errors));
    Ok(())
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Churn {
    pub routes: usize,
    pub quiet: Vec<Measure>,
    pub reloading: Vec<Measure>,
    /// Snapshots installed during the reloading measures (one per rewrite if nothing lags).
    pub reloads: u64,
    pub scraping: Vec<Measure>,
    pub scrape_bytes: usize,
    pub scrape_ms: Vec<f64>,
}

/// `connections` keep-alive connections through `target` (wrk, closed loop); its resident
/// memory is sampled while they are open.
pub fn connections(
    out: &mut Connections,
    name: &str,
    target: SocketAddr,
    proc: &Proc,
    duration: Duration,
) -> anyhow::Result<()> {
    let url = format!("http://{target}/");
    let conns = out.connections;
    let load = std::thread::spawn(move || load::wrk_with(&url, conns, duration, None));
    let mut peak = 0;
    while !load.is_finished() {
        peak = peak.max(proc.rss());
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = load.join().map_err(|_| anyhow::anyhow!("wrk thread panicked"))??;
    anyhow::ensure!(m.errors == 0 || m.requests > 0, "{name} at {conns} connections: {m:?}");
    out.peak_rss.insert(name.into(), peak);
    out.rps.insert(name.into(), m.rps);
    // Memory that comes back: what is left once the burst has closed.
    std::thread::sleep(SETTLE);
    out.after_rss.insert(name.into(), proc.rss());
    Ok(())
}

/// How long after a burst closes its memory is measured again.
pub const SETTLE: Duration = Duration::from_secs(5);

async fn generation(health: SocketAddr) -> u64 {
    match bulwark_e2e::client::get(health, "/metrics", &[]).await {
        Ok(r) => bulwark_e2e::proxy::metric_sum(&r.text(), "bulwark_config_generation", &[]) as u64,
        Err(_) => 0,
    }
}

/// Open loop at `CHURN_RATE` through `target` for `duration`, while `meanwhile` runs once a
/// second.
async fn open_loop_while<F, Fut>(target: SocketAddr, duration: Duration, mut meanwhile: F) -> anyhow::Result<Measure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let url = format!("http://{target}/");
    let load = tokio::task::spawn_blocking(move || load::oha(&url, CHURN_RATE, duration));
    let end = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() + Duration::from_millis(500) < end {
        tick.tick().await;
        meanwhile().await?;
    }
    load.await?
}

/// One round of the churn measures on a proxy whose bootstrap file `config` holds 10,000
/// routes; `write(generation)` is the file's text at a generation.
pub async fn churn_round(
    out: &mut Churn,
    target: SocketAddr,
    health: SocketAddr,
    config: &Path,
    write: &dyn Fn(u32) -> String,
    duration: Duration,
) -> anyhow::Result<()> {
    out.quiet.push(open_loop_while(target, duration, || async { Ok(()) }).await?);

    let before = generation(health).await;
    let mut next = before as u32;
    let reloading = open_loop_while(target, duration, || {
        next += 1;
        let text = write(next);
        async move {
            // Renamed into place, as a config-map update or an editor would, so no reload sees
            // half a file.
            let tmp = config.with_extension("next");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, config)?;
            Ok(())
        }
    })
    .await?;
    out.reloading.push(reloading);
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.reloads += generation(health).await.saturating_sub(before);

    let scrapes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let scraping = open_loop_while(target, duration, || {
        let scrapes = scrapes.clone();
        async move {
            let start = Instant::now();
            let r = bulwark_e2e::client::get(health, "/metrics", &[]).await?;
            scrapes.borrow_mut().push((start.elapsed().as_secs_f64() * 1000.0, r.text().len()));
            Ok(())
        }
    })
    .await?;
    out.scraping.push(scraping);
    for (ms, bytes) in scrapes.take() {
        out.scrape_ms.push(ms);
        out.scrape_bytes = out.scrape_bytes.max(bytes);
    }
    Ok(())
}
