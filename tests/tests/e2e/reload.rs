//! Hot reload: a valid file is swapped in without dropping connections; an invalid one is
//! rejected and the policy in force keeps working, asserted through behaviour.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;

fn policy(timeout: &str) -> String {
    crate::web_policy(&format!(
        "  routes:\n  - name: slow\n    match: {{ pathPrefix: /slow }}\n    timeout: {{ request: {timeout} }}\n"
    ))
}

async fn wait_metric(p: &ProxyProcess, name: &str, labels: &[(&str, &str)], at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.metric(name, labels).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} never reached {at_least}; log:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn invalid_file_keeps_the_old_policy_and_valid_one_applies_without_dropping_connections() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy("300ms")).start().await;
    let addr = proxy.listener("web");
    let slow = [("x-delay", "1s")];
    assert_eq!(client::get(addr, "/slow", &slow).await.unwrap().reason(), Some("timeout"));

    // A keep-alive connection opened before the reloads.
    let mut kept = client::connect_h1(addr).await.unwrap();

    proxy.write_policies(&policy("3x"));
    wait_metric(&proxy, "bulwark_config_reloads_total", &[("result", "rejected")], 1.0).await;
    assert!(proxy.logs().contains("spec.routes[0].timeout.request"), "the rejection names the field");
    assert_eq!(client::get(addr, "/slow", &slow).await.unwrap().reason(), Some("timeout"), "old policy still enforced");

    proxy.write_policies(&policy("5s"));
    wait_metric(&proxy, "bulwark_config_reloads_total", &[("result", "applied")], 1.0).await;
    assert_eq!(client::get(addr, "/slow", &slow).await.unwrap().status, StatusCode::OK, "new policy in force");

    kept.ready().await.unwrap();
    let r = kept
        .send_request(client::request(http::Method::GET, "/slow", &[("host", "a"), ("x-delay", "100ms")]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a connection from before the reload keeps working");
}

#[tokio::test]
async fn sighup_reloads() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy("300ms")).start().await;
    assert_eq!(proxy.metric("bulwark_config_generation", &[]).await, 1.0);
    proxy.write_policies(&policy("5s"));
    proxy.signal("HUP");
    wait_metric(&proxy, "bulwark_config_generation", &[], 2.0).await;
    let r = client::get(proxy.listener("web"), "/slow", &[("x-delay", "500ms")]).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}
