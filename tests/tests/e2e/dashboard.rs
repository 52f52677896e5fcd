//! The Grafana dashboard only queries metrics the proxy registers, so it cannot drift
//! silently. A family appears on /metrics only once it has a sample, so the registered names
//! are read from where they are declared, and the ones a plain request produces are also
//! checked on a running proxy.

use std::collections::BTreeSet;

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/dashboards/bulwark.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = token.strip_prefix("bulwark_") {
                    let base = ["_bucket", "_total", "_sum", "_count"]
                        .iter()
                        .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                    queried.insert(format!("bulwark_{base}"));
                }
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");

    // Each module registers its own families: `single(r, "name", ...)`, `r.register("name", ...)`
    // or `RouteFamily::register(r, "name", ...)` / `register_with(r, "name", ...)`.
    let mut registered = BTreeSet::new();
    for source in rust_sources(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy/src"))) {
        for call in ["register(", "register_with(", "single("] {
            for rest in source.split(call).skip(1) {
                let rest = rest.trim_start();
                let rest = rest.strip_prefix("r,").map(str::trim_start).unwrap_or(rest);
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    registered.insert(format!("bulwark_{name}"));
                }
            }
        }
    }
    let missing: Vec<&String> = queried.iter().filter(|q| !registered.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the proxy does not register: {missing:?} (registered: {registered:?})"
    );

    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    client::get(proxy.listener("web"), "/", &[]).await.unwrap();
    let text = proxy.metrics().await;
    for name in [
        "bulwark_requests",
        "bulwark_request_duration_seconds",
        "bulwark_upstream_connections",
        "bulwark_process_resident_memory_bytes",
    ] {
        assert!(queried.contains(name), "{name} is on the dashboard");
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} exported after one request");
    }
}

fn rust_sources(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}
