//! The admin and health endpoints as operators use them.

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::{Method, StatusCode};

#[tokio::test]
async fn config_live_ready_metrics_and_log_level() {
    let up = Upstream::start().await;
    let policy = crate::web_policy("  defaults:\n    timeout: { request: 2500ms }\n");
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    assert_eq!(client::get(proxy.listener("web"), "/", &[]).await.unwrap().status, StatusCode::OK);

    let config = client::get(proxy.admin, "/config", &[]).await.unwrap();
    assert_eq!(config.headers["content-type"], "application/yaml");
    let text = config.text();
    assert!(text.contains("name: web") && text.contains("request: 2500ms"), "{text}");
    assert!(text.contains(&format!("upstream: {}", up.addr)), "{text}");

    assert_eq!(client::get(proxy.health, "/live", &[]).await.unwrap().status, StatusCode::OK);
    assert_eq!(client::get(proxy.health, "/ready", &[]).await.unwrap().status, StatusCode::OK);

    let metrics = proxy.metrics().await;
    assert!(metrics.contains("bulwark_requests_total{direction=\"outbound\",listener=\"web\",policy=\"default/web\",route=\"default\",status_class=\"2xx\""), "{metrics}");
    assert!(metrics.contains("bulwark_request_duration_seconds_bucket{le=\"0.0005\",direction=\"outbound\",listener=\"web\",policy=\"default/web\",route=\"default\"}"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "OpenMetrics text");

    let set = client::send(proxy.admin, client::request(Method::POST, "/logging?level=warn", &[])).await.unwrap();
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(client::get(proxy.admin, "/logging", &[]).await.unwrap().text().trim(), "warn");
    let bad = client::send(proxy.admin, client::request(Method::POST, "/logging?level=[[", &[])).await.unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
