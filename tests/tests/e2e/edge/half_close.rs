//! HTTP/1 clients that shut down their write side after the request (RFC 9112 §9.6).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn half_closed(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_that_announced_the_close_and_half_closes_is_answered() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let web = proxy.listener("web");
    // The upstream takes a while, so the end of stream arrives mid-exchange.
    let answer =
        half_closed(web, b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-delay: 300ms\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\"uri\":\"/slow\""), "the whole response arrived: {answer}");
    let old = half_closed(web, b"GET /old HTTP/1.0\r\nHost: a\r\nx-delay: 300ms\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200") && old.contains("/old"), "HTTP/1.0 closes by default: {old:?}");
}

#[tokio::test]
async fn a_keep_alive_client_whose_stream_ends_mid_exchange_has_left() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let web = proxy.listener("web");
    let answer = {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\nx-hang: 1\r\n\r\n";
        let mut s = TcpStream::connect(web).await.unwrap();
        s.write_all(request).await.unwrap();
        bulwark_e2e::wait_for("the request to reach the upstream", Duration::from_secs(10), || async {
            up.stats.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
        s.shutdown().await.unwrap();
        bulwark_e2e::wait_for("the request to be cancelled upstream", Duration::from_secs(10), || async {
            up.stats.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        out
    };
    assert!(answer.is_empty(), "a departed keep-alive client is not answered: {:?}", String::from_utf8_lossy(&answer));
}
