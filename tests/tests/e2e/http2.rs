//! h2c (HTTP/2 with prior knowledge) through an explicit listener: HTTP/2 end to end, with
//! trailers preserved.

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::{StatusCode, Version};

#[tokio::test]
async fn h2c_is_proxied_as_h2_with_trailers() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
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
