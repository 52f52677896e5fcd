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

/// Series of a route the new policy no longer has leave `/metrics`; the others keep counting.
#[tokio::test]
async fn a_deleted_route_leaves_the_scrape() {
    let routes = |names: &[&str]| {
        let mut rest = String::from("  routes:\n");
        for n in names {
            rest.push_str(&format!(
                "  - name: {n}\n    match: {{ pathPrefix: /{n} }}\n    retries: {{ attempts: 1 }}\n    circuitBreaker: {{ consecutiveFailures: 5 }}\n    bulkhead: {{ maxConcurrent: 5 }}\n    rateLimit: {{ perSecond: 1000 }}\n    faults: {{ delay: {{ fixed: 1ms, percent: 100 }} }}\n"
            ));
        }
        crate::web_policy(&rest)
    };
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&routes(&["kept", "gone"])).start().await;
    let addr = proxy.listener("web");
    for path in ["/kept", "/gone"] {
        assert_eq!(client::get(addr, path, &[]).await.unwrap().status, StatusCode::OK);
    }
    let gone = |text: &str| text.lines().filter(|l| !l.starts_with('#') && l.contains("route=\"gone\"")).count();
    let before = proxy.metrics().await;
    assert!(gone(&before) >= 8, "every stage has series for the route:\n{before}");

    proxy.write_policies(&routes(&["kept"]));
    wait_metric(&proxy, "bulwark_config_generation", &[], 2.0).await;
    assert_eq!(client::get(addr, "/kept", &[]).await.unwrap().status, StatusCode::OK);
    let after = proxy.metrics().await;
    assert_eq!(gone(&after), 0, "no series of the deleted route remain:\n{after}");
    let kept = bulwark_e2e::proxy::metric_sum(&after, "bulwark_requests_total", &[("route", "kept")]);
    assert_eq!(kept, 2.0, "the kept route's counters go on from where they were");
}
