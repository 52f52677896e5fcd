//! Policies pushed from the control plane to real proxies: every proxy acknowledges and
//! enforces a change, a snapshot a proxy cannot use is NACKed while the old one stays in
//! force, proxies serve through a control-plane outage (a restarted one from its cache) and
//! converge when it returns, and one stalled stream does not hold back the others.

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;
use bulwark_e2e::TempDir;
use bulwark_proto::v1 as pb;

fn policy(timeout: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  target: {{ listener: web }}\n  routes:\n  - name: slow\n    match: {{ pathPrefix: /slow }}\n    timeout: {{ request: {timeout} }}\n"
    )
}

async fn proxy(cp: &ControlPlane, up: &Upstream, cache: &TempDir, id: &str) -> ProxyProcess {
    ProxyBuilder::new()
        .listener("web", up.addr)
        .control_plane(cp.addr, &cache.path().join(format!("{id}.json")), id)
        .start()
        .await
}

async fn apply(cp: &ControlPlane, yaml: &str) -> u64 {
    let r = cp
        .admin()
        .await
        .apply(pb::ApplyRequest { documents: vec![yaml.to_string()], dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied, "{r:?}");
    r.revision
}

/// Waits until every proxy listed has acknowledged `version`.
async fn wait_acked(cp: &ControlPlane, ids: &[String], version: u64) -> pb::ListProxiesResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = cp.admin().await.list_proxies(pb::ListProxiesRequest {}).await.unwrap().into_inner();
        let acked = ids.iter().all(|id| {
            list.proxies
                .iter()
                .any(|p| p.node.as_ref().is_some_and(|n| &n.id == id) && p.acked_version == version.to_string())
        });
        if acked {
            return list;
        }
        assert!(Instant::now() < deadline, "not every proxy acked {version}: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn slow_reason(p: &ProxyProcess) -> Option<String> {
    client::get(p.listener("web"), "/slow", &[("x-delay", "1s")]).await.unwrap().reason().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_acks_an_apply_and_enforces_it() {
    let cp = ControlPlane::start(None).await;
    let up = Upstream::start().await;
    let cache = TempDir::new("caches");
    let ids: Vec<String> = (0..10).map(|i| format!("proxy-{i}")).collect();
    let mut proxies = Vec::new();
    for id in &ids {
        proxies.push(proxy(&cp, &up, &cache, id).await);
    }
    assert!(slow_reason(&proxies[0]).await.is_none(), "no policy yet: no timeout");
    let version = apply(&cp, &policy("300ms")).await;
    let list = wait_acked(&cp, &ids, version).await;
    assert!(list.proxies.iter().all(|p| p.connected && p.last_error.is_empty()));
    for p in &proxies {
        assert_eq!(slow_reason(p).await.as_deref(), Some("timeout"), "the pushed policy is enforced");
    }
}

#[tokio::test]
async fn a_snapshot_the_proxy_cannot_use_is_nacked_and_the_old_one_stays() {
    let mut cp = ControlPlane::start(None).await;
    let up = Upstream::start().await;
    let cache = TempDir::new("nack");
    let p = proxy(&cp, &up, &cache, "nacker").await;
    let version = apply(&cp, &policy("300ms")).await;
    wait_acked(&cp, &["nacker".to_string()], version).await;
    // A test-only path around the control plane's own validation: edit its store while it is
    // down, as an older or newer control plane with other rules might have written it.
    let file = cp.data.path().join("store/policies.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    state["revision"] = serde_json::json!(version + 1);
    let yaml = state["policies"]["shop/web"]["yaml"].as_str().unwrap().replace("request: 300ms", "request: 0s");
    state["policies"]["shop/web"]["yaml"] = serde_json::json!(yaml);
    cp.kill9_and_restart_with(|| std::fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap()).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let list = cp.admin().await.list_proxies(pb::ListProxiesRequest {}).await.unwrap().into_inner();
        if let Some(s) = list.proxies.into_iter().find(|s| s.nacked_version == (version + 1).to_string()) {
            break s;
        }
        assert!(Instant::now() < deadline, "no NACK seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.last_error.contains("spec.routes[0].timeout.request"), "{}", status.last_error);
    assert_eq!(slow_reason(&p).await.as_deref(), Some("timeout"), "the last good policy is still enforced");
    assert_eq!(p.metric("bulwark_discovery_snapshots_total", &[("result", "nack")]).await, 1.0);
}

#[tokio::test]
async fn proxies_serve_through_an_outage_a_restarted_one_from_its_cache_and_converge() {
    let mut cp = ControlPlane::start(None).await;
    let up = Upstream::start().await;
    let cache = TempDir::new("outage");
    let steady = proxy(&cp, &up, &cache, "steady").await;
    let version = apply(&cp, &policy("300ms")).await;
    wait_acked(&cp, &["steady".to_string()], version).await;

    cp.stop();
    let lost = || async { steady.metric("bulwark_control_plane_connected", &[]).await == 0.0 };
    bulwark_e2e::wait_for("the proxy to notice the control plane is gone", Duration::from_secs(10), lost).await;
    assert_eq!(slow_reason(&steady).await.as_deref(), Some("timeout"), "serving with the last snapshot");
    assert_eq!(steady.metric("bulwark_control_plane_connected", &[]).await, 0.0);
    // A proxy started while the control plane is down serves from the cache it shares a path with.
    std::fs::copy(cache.path().join("steady.json"), cache.path().join("restarted.json")).unwrap();
    let restarted = proxy(&cp, &up, &cache, "restarted").await;
    assert_eq!(slow_reason(&restarted).await.as_deref(), Some("timeout"), "ready and enforcing from the cache");

    cp.start_again().await;
    let version = apply(&cp, &policy("5s")).await;
    wait_acked(&cp, &["steady".to_string(), "restarted".to_string()], version).await;
    assert_eq!(slow_reason(&steady).await, None, "converged on the new policy");
    assert_eq!(slow_reason(&restarted).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_delay_a_hundred_others() {
    let cp = ControlPlane::start(None).await;
    let channel = cp.channel().await;
    let mut streams = Vec::new();
    for i in 0..101 {
        let mut client = pb::policy_discovery_client::PolicyDiscoveryClient::new(channel.clone());
        let node = pb::Node { id: format!("sim-{i}"), ..Default::default() };
        let hello = pb::DiscoveryRequest { kind: Some(pb::discovery_request::Kind::Node(node)) };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello).await.unwrap();
        let inbound = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        streams.push((tx, inbound));
    }
    // Stream 0 never reads again: its proxy is stalled. The others read and acknowledge
    // every snapshot, as a proxy does.
    let (_stalled_tx, _stalled) = streams.remove(0);
    let mut readers = Vec::new();
    for (tx, mut inbound) in streams {
        readers.push(tokio::spawn(async move {
            while let Ok(Some(snap)) = inbound.message().await {
                let ack = pb::DiscoveryRequest {
                    kind: Some(pb::discovery_request::Kind::Ack(pb::Ack { version: snap.version })),
                };
                if tx.send(ack).await.is_err() {
                    return;
                }
            }
        }));
    }
    let mut last = 0;
    for n in 0..20 {
        last = apply(&cp, &policy(&format!("{}ms", 300 + n))).await;
    }
    // Every live stream ends on the newest version, whatever the stalled one does.
    let live: Vec<String> = (1..101).map(|i| format!("sim-{i}")).collect();
    let list = wait_acked(&cp, &live, last).await;
    let stalled = list.proxies.iter().find(|p| p.node.as_ref().is_some_and(|n| n.id == "sim-0")).unwrap();
    assert!(stalled.connected && stalled.acked_version.is_empty(), "the stalled stream never acked: {stalled:?}");
    for r in readers {
        r.abort();
    }
}
