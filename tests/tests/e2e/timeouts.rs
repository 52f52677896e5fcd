//! Each timeout kind answers with its status and reason; upstream failures likewise.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::StatusCode;
use http_body_util::BodyExt;

const POLICY: &str = "  defaults:\n    timeout: { request: 5s }\n  routes:\n  - name: short\n    match: { pathPrefix: /short }\n    timeout: { request: 300ms }\n  - name: per-try\n    match: { pathPrefix: /try }\n    timeout: { perTry: 250ms }\n  - name: idle\n    match: { pathPrefix: /idle }\n    timeout: { idle: 300ms }\n";

#[tokio::test]
async fn request_per_try_and_idle_timeouts_answer_504_with_their_reason() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&crate::web_policy(POLICY)).start().await;
    let addr = proxy.listener("web");

    let r = client::get(addr, "/short", &[("x-delay", "3s")]).await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.reason(), Some("timeout"));
    assert_eq!(r.text(), "upstream request timeout\n");

    let r = client::get(addr, "/try", &[("x-delay", "3s")]).await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.reason(), Some("per-try-timeout"));

    // Idle bounds the wait for headers...
    let r = client::get(addr, "/idle", &[("x-hang", "1")]).await.unwrap();
    assert_eq!(r.reason(), Some("timeout"));
    // ...and silence mid-body: the stream is cut, not completed.
    let mut send = client::connect_h1(addr).await.unwrap();
    let resp = send
        .send_request(client::request(http::Method::GET, "/idle", &[("host", "a"), ("x-stall-after", "1")]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "headers and first chunk arrive");
    let body =
        tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.expect("cut well before 10s");
    assert!(body.is_err(), "a cut stream is an error for the client, not a complete body");

    // A route without its own timeout inherits the defaults and succeeds.
    assert_eq!(client::get(addr, "/other", &[("x-delay", "100ms")]).await.unwrap().status, StatusCode::OK);
    assert_eq!(proxy.metric("bulwark_requests_total", &[("route", "short"), ("reason", "timeout")]).await, 1.0);
    assert_eq!(
        proxy.metric("bulwark_requests_total", &[("route", "per-try"), ("reason", "per-try-timeout")]).await,
        1.0
    );
}

#[tokio::test]
async fn connect_failure_and_reset_answer_503_with_their_reason() {
    let up = Upstream::start().await;
    let dead = bulwark_e2e::proxy::free_port();
    let proxy =
        ProxyBuilder::new().listener("web", up.addr).listener("dead", format!("127.0.0.1:{dead}")).start().await;
    let r = client::get(proxy.listener("dead"), "/", &[]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason(), Some("upstream-connect-failure"));

    let r = client::get(proxy.listener("web"), "/", &[("x-reset", "1")]).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason(), Some("upstream-reset"));
}

#[tokio::test]
async fn connect_timeout_answers_upstream_connect_failure() {
    // A listener with a zero backlog that never accepts: once its queue holds what it can,
    // further SYNs are dropped and connecting hangs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let sock = sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let policy = "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: { name: hang }\nspec:\n  target: { listener: hang }\n  upstream: { connectTimeout: 300ms }\n";
    let proxy = ProxyBuilder::new().listener("hang", addr).policies(policy).start().await;
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), client::get(proxy.listener("hang"), "/", &[]))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason(), Some("upstream-connect-failure"));
    assert!(start.elapsed() < Duration::from_secs(4), "answered by the 300ms connect timeout, not the OS");
    drop(sock);
}

#[tokio::test]
async fn upstream_crash_mid_request_then_down() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let addr = proxy.listener("web");
    let in_flight = tokio::spawn(async move { client::get(addr, "/", &[("x-delay", "3s")]).await });
    let arrived = || async { up.requests() == 1 };
    bulwark_e2e::wait_for("the request to reach the upstream", Duration::from_secs(10), arrived).await;
    up.crash();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!((r.status, r.reason()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream-reset")));
    let r = client::get(addr, "/", &[]).await.unwrap();
    assert_eq!((r.status, r.reason()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream-connect-failure")));
}
