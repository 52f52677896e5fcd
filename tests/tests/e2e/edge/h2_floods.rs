//! HTTP/2 floods: the proxy ends a connection that floods it with GOAWAY, within the
//! documented limit, and clients on other connections do not notice.

use std::time::Duration;

use bulwark_e2e::raw::h2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{assert_unharmed, Edge};

/// HTTP/2 error codes (RFC 9113 §7).
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Writes frames one at a time until the proxy answers GOAWAY or closes; returns the bytes
/// written until then and what the proxy sent.
async fn flood(
    addr: std::net::SocketAddr,
    first: Vec<u8>,
    next: impl Fn(usize) -> Vec<u8>,
    max: usize,
) -> (usize, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut written = 0;
    let mut got = Vec::new();
    let mut open = [h2::PREFACE.to_vec(), h2::frame(h2::SETTINGS, 0, 0, &[]), first].concat();
    for i in 0..max {
        if s.write_all(&open).await.is_err() {
            break;
        }
        written += open.len();
        open = next(i);
        let mut buf = [0u8; 4096];
        // Give the proxy the time to read what was written, so bytes counted are bytes read.
        match tokio::time::timeout(Duration::from_millis(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if h2::error_code(&got, h2::GOAWAY).is_some() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut rest)).await;
    got.extend_from_slice(&rest);
    (written, got)
}

#[tokio::test]
async fn a_continuation_flood_is_cut_at_the_header_limit() {
    let edge = Edge::start("", "").await;
    let watch = edge.watch();
    let headers = h2::frame(h2::HEADERS, 0, 1, &h2::get_block());
    // Each CONTINUATION carries 154 literal headers (`x-a: v…`, 106 bytes each), never ending
    // the block.
    let literal = [&[0x00, 0x03][..], b"x-a", &[100], &[b'v'; 100]].concat();
    let chunk = literal.repeat(154);
    let (written, got) = flood(edge.web(), headers, |_| h2::frame(h2::CONTINUATION, 0, 1, &chunk), 400).await;
    println!("CONTINUATION flood: {written} bytes written before the proxy ended it");
    assert_eq!(h2::error_code(&got, h2::GOAWAY), Some(ENHANCE_YOUR_CALM), "the flood was ended with GOAWAY");
    assert!(written < 256 * 1024, "the header block was cut near its 60 KiB limit, not after {written} bytes");
    watch.end("a_continuation_flood_is_cut_at_the_header_limit").await;
}

#[tokio::test]
async fn streams_beyond_the_concurrency_limit_are_refused_and_a_persistent_offender_dropped() {
    // Over HTTP/2 the raw upstream never answers (it reads HTTP/1.1 only): every stream stays open.
    let edge = Edge::start("  upstream: { protocol: http2 }\n", "").await;
    let watch = edge.watch();
    // Streams opened and never finished (no END_STREAM): past 100 at once they are refused.
    let (written, got) = flood(
        edge.web(),
        Vec::new(),
        |i| h2::frame(h2::HEADERS, h2::END_HEADERS, (2 * i + 1) as u32, &h2::get_block()),
        5000,
    )
    .await;
    println!("stream flood: {written} bytes written before the proxy ended it");
    assert_eq!(h2::error_code(&got, h2::RST_STREAM), Some(REFUSED_STREAM), "streams past the limit are refused");
    assert!(
        h2::error_code(&got, h2::GOAWAY).is_some(),
        "a client that keeps opening streams past the limit is disconnected with GOAWAY"
    );
    watch.end("streams_beyond_the_concurrency_limit_are_refused_and_a_persistent_offender_dropped").await;
}

#[tokio::test]
async fn a_rapid_reset_flood_is_ended_with_goaway() {
    let edge = Edge::start("", "").await;
    let watch = edge.watch();
    let cancel = 0x8u32.to_be_bytes();
    let block = h2::get_block();
    // Open a stream and cancel it at once, over and over (CVE-2023-44487).
    let (written, got) = flood(
        edge.web(),
        Vec::new(),
        |i| {
            let id = (2 * i + 1) as u32;
            let open = h2::frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &block);
            [open, h2::frame(h2::RST_STREAM, 0, id, &cancel)].concat()
        },
        2_000,
    )
    .await;
    println!("rapid reset: {written} bytes written before the proxy ended it");
    assert!(h2::error_code(&got, h2::GOAWAY).is_some(), "the flood was ended with GOAWAY");
    assert_eq!(edge.proxy.metric("bulwark_downstream_h2_reset_floods_total", &[("listener", "web")]).await, 1.0);
    watch.end("a_rapid_reset_flood_is_ended_with_goaway").await;
}

#[tokio::test]
async fn a_client_that_makes_the_proxy_reset_its_streams_is_ended_with_goaway() {
    let edge = Edge::start("", "").await;
    let watch = edge.watch();
    // MadeYouReset (CVE-2025-8671): each stream, already ended by the client, gets a DATA
    // frame, an error the proxy must answer; the client never resets anything itself.
    let (written, got) = flood(
        edge.web(),
        Vec::new(),
        |i| {
            let id = (2 * i + 1) as u32;
            let open = h2::frame(h2::HEADERS, h2::END_HEADERS | h2::END_STREAM, id, &h2::get_block());
            [open, h2::frame(h2::DATA, 0, id, b"late")].concat()
        },
        5_000,
    )
    .await;
    let resets = h2::frames(&got).iter().filter(|(kind, _, _)| *kind == h2::RST_STREAM).count();
    let goaway = h2::error_code(&got, h2::GOAWAY);
    println!("made-you-reset: {written} bytes written, {resets} streams reset, then GOAWAY {goaway:?}");
    // The h2 library treats these as connection errors: the first one ends the connection,
    // before the proxy could be made to reset streams in bulk (at most 1,024 in any case).
    assert!(goaway.is_some(), "the flood was ended with GOAWAY");
    assert!(resets <= 1024, "{resets} streams reset on the client's behalf");
    watch.end("made-you-reset").await;
}

/// PING and SETTINGS each need an answer. A client that floods them without reading the
/// answers is pushed back (the proxy keeps at most one answer pending and stops reading until
/// it is written): its connection stalls, the proxy's memory does not grow, and nobody else
/// notices.
#[tokio::test]
async fn ping_and_settings_floods_are_pushed_back_not_buffered() {
    let edge = Edge::start("", "").await;
    let legit = edge.legit();
    let pid = edge.proxy.child.id();
    let before = bulwark_e2e::legit::rss_kib(pid);
    for (what, frame) in
        [("PING", h2::frame(h2::PING, 0, 0, &[7; 8])), ("SETTINGS", h2::frame(h2::SETTINGS, 0, 0, &[]))]
    {
        let mut s = TcpStream::connect(edge.web()).await.unwrap();
        s.write_all(&[h2::PREFACE, &h2::frame(h2::SETTINGS, 0, 0, &[])].concat()).await.unwrap();
        let batch = frame.repeat(1024);
        let (mut written, mut pushed_back) = (0usize, false);
        // At most 64 MiB, never reading an answer.
        while written < 64 << 20 {
            match tokio::time::timeout(Duration::from_secs(1), s.write_all(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                Ok(Err(_)) => break,
                Err(_) => {
                    pushed_back = true;
                    break;
                }
            }
        }
        println!("{what} flood: pushed back after {written} bytes");
        assert!(pushed_back, "{what}: the proxy kept reading {written} bytes of frames it could not answer");
    }
    let grown = bulwark_e2e::legit::rss_kib(pid).saturating_sub(before) / 1024;
    assert!(grown < 32, "the floods grew the proxy by {grown} MiB");
    assert_unharmed(legit.finish().await);
}
