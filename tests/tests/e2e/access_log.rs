//! The access log (JSON lines on stdout), process metrics, and the metrics output read by the
//! official Prometheus/OpenMetrics parser.

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

async fn lines(p: &ProxyProcess, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parsed: Vec<serde_json::Value> = p
            .stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if parsed.len() >= want || Instant::now() > deadline {
            return parsed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_request_is_one_json_line_with_what_happened() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let policy = crate::web_policy(
        "  defaults:\n    retries: { attempts: 1, on: [503], backoff: { base: 1ms, max: 2ms } }\n  upstream: { loadBalancer: round-robin }\n",
    );
    let proxy = ProxyBuilder::new()
        .listener_many("web", &[a.addr, b.addr])
        .policies(&policy)
        .extra("accessLog: { enabled: true, sample: 1 }")
        .start()
        .await;
    a.set_status(503);
    let addr = proxy.listener("web");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for i in 0..2 {
        let r = client::get(
            addr,
            &format!("/items/{i}?q=1"),
            &[("x-request-id", &format!("req-{i}")), ("traceparent", traceparent), ("x-body-bytes", "1234")],
        )
        .await
        .unwrap();
        assert_eq!(r.status.as_u16(), 200);
    }
    let logged = lines(&proxy, 2).await;
    assert_eq!(logged.len(), 2, "{logged:?}");
    let first = logged.iter().find(|l| l["request_id"] == "req-0").expect("req-0 logged");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!((first["method"].as_str(), first["path"].as_str()), (Some("GET"), Some("/items/0?q=1")));
    assert_eq!((first["status"].as_u64(), first["bytes"].as_u64()), (Some(200), Some(1234)));
    assert_eq!((first["policy"].as_str(), first["route"].as_str()), (Some("default/web"), Some("default")));
    assert_eq!(first["authority"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    // Round robin starts on the failing endpoint for one of the two: that one shows a retry
    // and ends on the healthy endpoint.
    let retried: Vec<&serde_json::Value> = logged.iter().filter(|l| l["retries"] == 1).collect();
    assert_eq!(retried.len(), 1, "{logged:?}");
    assert_eq!(retried[0]["upstream"], b.addr.to_string());

    let refused = client::get(addr, "/", &[("x-request-id", "req-x"), ("x-reset", "1")]).await.unwrap();
    assert_eq!(refused.reason(), Some("upstream-reset"));
    let logged = lines(&proxy, 3).await;
    let last = logged.iter().find(|l| l["request_id"] == "req-x").expect("refusal logged");
    assert_eq!((last["status"].as_u64(), last["reason"].as_str()), (Some(503), Some("upstream-reset")));
}

#[tokio::test]
async fn sampling_at_zero_logs_nothing_and_the_log_is_off_by_default() {
    let up = Upstream::start().await;
    let zero =
        ProxyBuilder::new().listener("web", up.addr).extra("accessLog: { enabled: true, sample: 0 }").start().await;
    let off = ProxyBuilder::new().listener("web", up.addr).start().await;
    for p in [&zero, &off] {
        for _ in 0..20 {
            client::get(p.listener("web"), "/", &[]).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(zero.stdout(), "");
    assert_eq!(off.stdout(), "");
}

#[tokio::test]
async fn process_metrics_and_the_official_parser_reads_the_output() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    client::get(proxy.listener("web"), "/", &[]).await.unwrap();
    assert!(proxy.metric("bulwark_process_resident_memory_bytes", &[]).await > 1_000_000.0);
    assert!(proxy.metric("bulwark_process_open_fds", &[]).await >= 3.0);

    let python = bulwark_e2e::venv_bin("python");
    let parser = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfamilies = list(parse(sys.stdin.read()))\nprint(' '.join(sorted(f.name for f in families)))\n";
    let ready = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "SKIP OpenMetrics parse: {} with prometheus_client is missing (make test installs it)",
            python.display()
        );
        return;
    }
    let text = proxy.metrics().await;
    let mut child = std::process::Command::new(&python)
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused the output: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let families = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "bulwark_requests",
        "bulwark_request_duration_seconds",
        "bulwark_process_resident_memory_bytes",
        "bulwark_upstream_connections",
    ] {
        assert!(families.split_whitespace().any(|f| f == want), "{want} not among the parsed families: {families}");
    }
}
