//! h2c (HTTP/2 with prior knowledge) through an explicit listener: HTTP/2 end to end when the
//! listener says the upstream speaks it, with trailers preserved; HTTP/1.1 upstream by default.

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::{StatusCode, Version};

#[tokio::test]
async fn h2c_is_proxied_as_h2_with_trailers() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener_speaking("web", up.addr, "http2").start().await;
    let r = client::get_h2(
        proxy.listener("web"),
        "/h2",
        &[("x-trailer", "1"), ("x-stream", "3"), ("x-stream-interval", "5ms")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");
    let trailers = r.trailers.expect("trailers forwarded");
    assert_eq!(trailers["x-upstream-trailer"], "yes");

    let echo = client::get_h2(proxy.listener("web"), "/who", &[]).await.unwrap().echo();
    assert_eq!(echo.version, "HTTP/2.0", "upstream leg is HTTP/2 too");
    assert!(echo.uri.ends_with("/who"));
    assert!(echo.headers.contains_key("x-request-id"));
    assert_eq!(proxy.metric("bulwark_downstream_connections_total", &[("protocol", "http2")]).await, 2.0);
}

#[tokio::test]
async fn an_h2_client_goes_upstream_as_http1_by_default() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let r = client::get_h2(proxy.listener("web"), "/who?x=1", &[("x-app", "1")]).await.unwrap();
    assert_eq!((r.status, r.version), (StatusCode::OK, Version::HTTP_2));
    let echo = r.echo();
    assert_eq!(echo.version, "HTTP/1.1", "auto speaks HTTP/2 only where the upstream is known to");
    assert_eq!(echo.uri, "/who?x=1", "origin-form target");
    assert_eq!(echo.headers["host"], proxy.listener("web").to_string(), "Host from :authority");
    assert_eq!(echo.headers["x-app"], "1");
}
