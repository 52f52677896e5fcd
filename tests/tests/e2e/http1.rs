//! HTTP/1.1 through an explicit listener: what passes through unchanged, what the proxy adds
//! or removes, and what it refuses to forward.

use std::time::Duration;

use bulwark_e2e::client::{self, request};
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    bulwark_e2e::raw::exchange(addr, bytes, Duration::from_secs(5)).await
}

#[tokio::test]
async fn forwards_with_host_kept_request_id_added_and_hop_by_hop_removed() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let r = client::get(
        proxy.listener("web"),
        "/hello?x=1",
        &[
            ("host", "payments.example"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-app", "kept"),
            ("x-status", "418"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "upstream status passes through");
    assert_eq!(r.reason(), None, "a passed-through response carries no x-bulwark-reason");
    let echo = r.echo();
    assert_eq!(echo.uri, "/hello?x=1");
    assert_eq!(echo.headers["host"], "payments.example");
    assert_eq!(echo.headers["x-app"], "kept");
    assert!(!echo.headers.contains_key("x-secret"), "headers named in Connection are hop-by-hop");
    assert!(!echo.headers.contains_key("keep-alive"));
    assert_eq!(echo.headers["x-request-id"].len(), 36, "x-request-id generated");

    let given = client::get(proxy.listener("web"), "/", &[("x-request-id", "abc-123")]).await.unwrap();
    assert_eq!(given.echo().headers["x-request-id"], "abc-123", "an incoming x-request-id is kept");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    for _ in 0..5 {
        assert_eq!(client::get(proxy.listener("web"), "/", &[]).await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(proxy.metric("bulwark_upstream_connections_total", &[("result", "opened")]).await, 1.0);
    assert_eq!(proxy.metric("bulwark_upstream_connections_total", &[("result", "reused")]).await, 4.0);
}

#[tokio::test]
async fn streams_bodies_and_handles_head_204_and_http10() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let addr = proxy.listener("web");
    let streamed = client::get(addr, "/", &[("x-stream", "5"), ("x-stream-interval", "10ms")]).await.unwrap();
    assert_eq!(streamed.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");

    let head = client::send(addr, request(Method::HEAD, "/", &[])).await.unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let no_content = client::get(addr, "/", &[("x-status", "204")]).await.unwrap();
    assert_eq!(no_content.status, StatusCode::NO_CONTENT);
    assert!(no_content.body.is_empty());

    // HTTP/1.0 without Host: forwarded as HTTP/1.1 with a Host so upstream keep-alive works.
    let old = raw(addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"), "{old}");
    assert!(old.contains("\"version\":\"HTTP/1.1\""), "{old}");
    assert!(old.contains(&format!("\"host\":\"{}\"", up.addr)), "{old}");
}

#[tokio::test]
async fn upgrade_tunnels_bytes_both_ways() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let mut s = TcpStream::connect(proxy.listener("web")).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\nx-upgrade: 1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"over the tunnel").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"over the tunnel");
}

#[tokio::test]
async fn ambiguous_framing_and_oversized_headers_are_refused_and_never_forwarded() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let addr = proxy.listener("web");
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: five\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    ] {
        let r = raw(addr, bad).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }
    assert_eq!(up.requests(), 0, "nothing ambiguous reached the upstream");

    // Both framings: the chunked coding wins, Content-Length never reaches the upstream, and
    // the connection is closed after the response so nothing can be smuggled behind it.
    let both = raw(addr, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(both.starts_with("HTTP/1.1 200"), "{both}");
    assert!(both.contains("\"body_len\":5"), "{both}");
    assert!(!both.contains("content-length\":"), "{both}");
    assert!(!both.contains("/smuggled"), "{both}");
    assert_eq!(up.requests(), 1);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = raw(addr, many.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let r = raw(addr, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(up.requests(), 1, "oversized heads never reach the upstream");
}

#[tokio::test]
async fn a_listener_may_listen_on_a_host_name_at_every_address_it_resolves_to() {
    let up = bulwark_e2e::upstream::Upstream::start().await;
    let port = bulwark_e2e::proxy::free_port();
    let proxy = bulwark_e2e::proxy::ProxyBuilder::new()
        .extra(&format!("listeners:\n- {{ name: web, listen: \"localhost:{port}\", upstream: \"{}\" }}", up.addr))
        .start()
        .await;
    let r = bulwark_e2e::client::get(format!("127.0.0.1:{port}").parse().unwrap(), "/", &[]).await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK);
    // Every address the name resolves to is listened on (IPv6 too, where localhost names ::1).
    let names: Vec<std::net::SocketAddr> = tokio::net::lookup_host(("localhost", port)).await.unwrap().collect();
    for addr in names {
        let r = bulwark_e2e::client::get(addr, "/", &[]).await.unwrap();
        assert_eq!(r.status, http::StatusCode::OK, "{addr}");
    }
    assert!(proxy.logs().contains("explicit listener ready"), "{}", proxy.logs());
}
