//! What the proxy does where no policy says anything, as Istio and Linkerd users expect: a
//! request that never reached an upstream is tried once more on another endpoint, and an
//! endpoint that keeps failing is ejected; each default turned off by the policy field the
//! docs name.

use bulwark_e2e::client;
use bulwark_e2e::proxy::{free_port, ProxyBuilder};
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;

/// Two endpoints, one of them closed: (requests answered 200, requests sent).
async fn with_one_endpoint_down(policies: &str) -> (usize, usize) {
    let up = Upstream::start().await;
    let down: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = ProxyBuilder::new().listener_many("web", &[up.addr, down]).policies(policies).start().await;
    let mut ok = 0;
    for _ in 0..100 {
        if client::get(proxy.listener("web"), "/", &[]).await.unwrap().status == StatusCode::OK {
            ok += 1;
        }
    }
    (ok, 100)
}

#[tokio::test]
async fn a_closed_endpoint_costs_nothing_by_default() {
    let (ok, sent) = with_one_endpoint_down("").await;
    assert_eq!(ok, sent, "connect failures are retried on the other endpoint");
    // A policy that names neither retries nor outlier detection keeps the defaults.
    let (ok, sent) = with_one_endpoint_down(&crate::web_policy("  defaults:\n    timeout: { request: 5s }\n")).await;
    assert_eq!(ok, sent);
}

#[tokio::test]
async fn the_defaults_turn_off_as_documented() {
    let off = crate::web_policy(
        "  defaults:\n    retries: { attempts: 0 }\n  upstream: { outlierDetection: { enabled: false } }\n",
    );
    let (ok, sent) = with_one_endpoint_down(&off).await;
    assert!(ok < sent * 8 / 10, "about half go to the closed endpoint without the defaults: {ok} of {sent}");
    assert!(ok > sent / 5, "{ok} of {sent}");
}
