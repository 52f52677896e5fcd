//! Protocol detection is not a way around policy: bytes that start like an HTTP request are
//! HTTP — parsed, or answered 400 — and never tunnelled raw to the upstream.

use std::time::Duration;

use bulwark_e2e::raw::exchange;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Edge;

/// Every request on `web` is aborted by its route's fault: a request that passes the stages
/// gets 418 and never reaches the upstream; one the parser refuses gets 400.
const ABORT_ALL: &str = "  defaults:\n    faults:\n      abort: { httpStatus: 418, percent: 100 }\n";

#[tokio::test]
async fn requests_the_parser_refuses_are_answered_not_tunnelled() {
    let edge = Edge::start(ABORT_ALL, "detection: { timeout: 300ms }\n").await;
    let watch = edge.watch();
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9 * 1024));
    let vectors: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
        ("lower-case method", b"post / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("method with (", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("30-character method", b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCD / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n".to_vec()),
        ("line over 8 KiB", long_line.into_bytes()),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n".to_vec()),
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
    ];
    let mut all = tokio::task::JoinSet::new();
    for (what, bytes) in vectors {
        let web = edge.web();
        all.spawn(async move { (what, exchange(web, &bytes, Duration::from_secs(5)).await) });
    }
    while let Some(Ok((what, answer))) = all.join_next().await {
        let status = answer.split(' ').nth(1).unwrap_or("");
        assert!(matches!(status, "400" | "418" | "414" | "431" | "505"), "{what}: answered {answer:?}");
    }
    assert_eq!(edge.raw.received_text(), "", "nothing reached the upstream");
    watch.end("requests_the_parser_refuses_are_answered_not_tunnelled").await;
}

#[tokio::test]
async fn a_client_that_pauses_after_its_first_byte_still_passes_its_route() {
    let edge = Edge::start(ABORT_ALL, "detection: { timeout: 200ms }\n").await;
    let mut s = TcpStream::connect(edge.web()).await.unwrap();
    s.write_all(b"G").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"ET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 418"), "the fault answered: {answer:?}");
    assert!(answer.contains("x-bulwark-reason: fault-abort"), "{answer}");
    assert_eq!(edge.raw.received_text(), "");
}

#[tokio::test]
async fn what_is_clearly_not_http_is_still_forwarded_as_tcp() {
    let edge = Edge::start(ABORT_ALL, "detection: { timeout: 300ms }\n").await;
    let _ = exchange(edge.web(), b"PING\r\n", Duration::from_millis(500)).await;
    bulwark_e2e::wait_for("the raw bytes at the upstream", Duration::from_secs(5), || async {
        edge.raw.received_text() == "PING\r\n"
    })
    .await;
}

#[tokio::test]
async fn an_http_listener_never_falls_back_to_tcp() {
    let raw = bulwark_e2e::raw::RawUpstream::start().await;
    let proxy = bulwark_e2e::proxy::ProxyBuilder::new().listener_with_protocol("web", raw.addr, "http").start().await;
    let answer = exchange(proxy.listener("web"), b"PING\r\n", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let ok = exchange(
        proxy.listener("web"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.ends_with("raw-ok"), "HTTP still works: {ok:?}");
    assert!(!raw.received_text().contains("PING"), "{}", raw.received_text());
}
