//! Load generators and what they report: wrk (closed loop, HTTP/1.1 keep-alive), oha (open loop
//! with latency correction), h2load (h2c and gRPC), and a small built-in closed-loop client for
//! the smoke mode, which must run where none of those is installed.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Measure {
    pub rps: f64,
    /// Latency percentiles in milliseconds (open loop only).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub requests: u64,
    pub errors: u64,
}

fn run(program: &str, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| anyhow::anyhow!("{program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!("{program} {args:?} failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

fn number_after(text: &str, label: &str) -> Option<f64> {
    let at = text.find(label)? + label.len();
    text[at..].split_whitespace().next()?.trim_end_matches(',').parse().ok()
}

/// The number written just before `word` ("206172 succeeded").
fn count_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .iter()
        .position(|w| w.trim_end_matches(',') == word)
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| words[i].parse().ok())
        .unwrap_or(0)
}

/// wrk, closed loop: `connections` keep-alive connections as fast as they are answered.
pub fn wrk(url: &str, connections: u32, duration: Duration) -> anyhow::Result<Measure> {
    wrk_with(url, connections, duration, None)
}

/// wrk with a Lua `script` shaping each request (e.g. a header that changes per request).
pub fn wrk_with(
    url: &str,
    connections: u32,
    duration: Duration,
    script: Option<&std::path::Path>,
) -> anyhow::Result<Measure> {
    let threads = if connections > 100 { "-t2" } else { "-t1" };
    let mut args: Vec<String> =
        [threads, &format!("-c{connections}"), &format!("-d{}s", duration.as_secs().max(1))].map(String::from).to_vec();
    if let Some(script) = script {
        args.extend(["-s".into(), script.display().to_string()]);
    }
    args.push(url.into());
    let out = run("wrk", &args)?;
    let rps = number_after(&out, "Requests/sec:").ok_or_else(|| anyhow::anyhow!("wrk said: {out}"))?;
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "Non-2xx or 3xx responses: 12" and "Socket errors: connect 0, read 1, write 0, timeout 3".
    let non_2xx = number_after(&out, "Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    let socket: u64 = ["connect", "read", "write", "timeout"]
        .iter()
        .filter_map(|kind| out.lines().find(|l| l.contains("Socket errors:")).and_then(|l| number_after(l, kind)))
        .map(|n| n as u64)
        .sum();
    let errors = non_2xx + socket;
    Ok(Measure { rps, requests, errors, ..Default::default() })
}

/// oha, open loop at `rate` requests per second with latency correction (no coordinated
/// omission): p50, p99, p99.9.
pub fn oha(url: &str, rate: u32, duration: Duration) -> anyhow::Result<Measure> {
    let args: Vec<String> = [
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        &format!("{}s", duration.as_secs().max(1)),
        "-q",
        &rate.to_string(),
        "--latency-correction",
        "-c",
        "64",
        url,
    ]
    .map(String::from)
    .to_vec();
    let out = run("oha", &args)?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("oha output: {e}: {out}"))?;
    let ms = |k: &str| v["latencyPercentiles"][k].as_f64().map(|s| s * 1000.0);
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let total: u64 =
        v["statusCodeDistribution"].as_object().map(|m| m.values().filter_map(|n| n.as_u64()).sum()).unwrap_or(0);
    let errors = v["errorDistribution"].as_object().map(|m| m.values().filter_map(|n| n.as_u64()).sum()).unwrap_or(0);
    Ok(Measure {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
        requests: ok,
        errors: errors + total - ok,
    })
}

/// h2load over h2c: `clients` connections with `streams` concurrent streams each. With `grpc`,
/// a unary Echo call (POST of a framed EchoRequest) instead of a GET.
pub fn h2load(
    url: &str,
    clients: u32,
    streams: u32,
    duration: Duration,
    grpc_body: Option<&std::path::Path>,
) -> anyhow::Result<Measure> {
    let mut args: Vec<String> =
        ["-t1", "-c", &clients.to_string(), "-m", &streams.to_string(), "-D", &duration.as_secs().max(1).to_string()]
            .map(String::from)
            .to_vec();
    if let Some(body) = grpc_body {
        args.extend(["-d".into(), body.display().to_string()]);
        args.extend(["-H".into(), "content-type: application/grpc".into(), "-H".into(), "te: trailers".into()]);
    }
    args.push(url.into());
    let out = run("h2load", &args)?;
    // "finished in 5.00s, 41234.40 req/s, 4.21MB/s" and "requests: 206172 total, ... 206172 succeeded, 0 failed, 0 errored"
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
        .ok_or_else(|| anyhow::anyhow!("h2load said: {out}"))?;
    let requests_line = out.lines().find(|l| l.starts_with("requests:")).unwrap_or_default();
    let succeeded = count_before(requests_line, "succeeded");
    let errors = count_before(requests_line, "failed") + count_before(requests_line, "errored");
    let codes = out.lines().find(|l| l.starts_with("status codes:")).unwrap_or_default();
    let not_2xx = count_before(codes, "3xx") + count_before(codes, "4xx") + count_before(codes, "5xx");
    Ok(Measure { rps, requests: succeeded, errors: errors + not_2xx, ..Default::default() })
}

/// The built-in closed-loop HTTP/1.1 client: `connections` keep-alive connections for
/// `duration`. Only for the smoke mode: it measures the harness, not the proxies.
pub async fn builtin(addr: SocketAddr, connections: u32, duration: Duration) -> anyhow::Result<Measure> {
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let (mut ok, mut bad) = (0u64, 0u64);
            while Instant::now() < end {
                let req = http::Request::get("/").header("host", "bench").body(Empty::<Bytes>::new())?;
                let resp = send.send_request(req).await?;
                let good = resp.status().is_success();
                resp.into_body().collect().await?;
                if good {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            anyhow::Ok((ok, bad))
        }));
    }
    let started = Instant::now();
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        let (o, b) = t.await??;
        ok += o;
        bad += b;
    }
    Ok(Measure { rps: ok as f64 / started.elapsed().as_secs_f64(), requests: ok, errors: bad, ..Default::default() })
}
