//! Request smuggling: whatever framing tricks a client plays, the upstream receives only
//! requests with one unambiguous framing, and every byte it receives belongs to one.

use std::time::Duration;

use bulwark_e2e::raw::exchange;

use super::Edge;

const VECTORS: [(&str, &[u8]); 16] = [
    ("CL.TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED"),
    ("TE.CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("TE.TE xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n"),
    ("TE.TE space before colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("TE.TE two values", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"),
    ("TE.TE tab", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
    ("TE identity after chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("duplicate CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n"),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"),
    ("bare LF", b"GET / HTTP/1.1\nHost: a\nX-A: b\n\n"),
    ("chunk size not hex", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("negative chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n"),
    ("chunk size overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
];

#[tokio::test]
async fn nothing_ambiguous_reaches_the_upstream() {
    let edge = Edge::start("", "").await;
    let watch = edge.watch();
    // All at once: a vector's connection may stay open until the client gives up.
    let mut all = tokio::task::JoinSet::new();
    for (what, bytes) in VECTORS {
        let web = edge.web();
        all.spawn(async move { (what, exchange(web, bytes, Duration::from_secs(3)).await) });
    }
    while let Some(Ok((what, answer))) = all.join_next().await {
        assert!(answer.starts_with("HTTP/1.1 "), "{what}: the client gets an answer, got {answer:?}");
    }
    let received = edge.raw.received();
    let heads = edge.raw.heads();
    let framed: usize = edge.raw.framed_len();
    assert_eq!(
        framed,
        received.len(),
        "every byte the upstream got belongs to a framed request:\n{}",
        edge.raw.received_text()
    );
    for h in &heads {
        let te = h.all("transfer-encoding");
        let cl = h.all("content-length");
        assert!(te.is_empty() || cl.is_empty(), "two framings reached the upstream: {h:?}");
        assert!(te.iter().all(|v| v.eq_ignore_ascii_case("chunked")) && te.len() <= 1, "{h:?}");
        assert!(cl.len() <= 1, "{h:?}");
        assert_eq!(h.all("host").len(), 1, "one Host: {h:?}");
        assert!(matches!(h.method.as_str(), "GET" | "POST"), "no smuggled request: {h:?}");
        assert!(h.headers.iter().all(|(_, v)| !v.contains(['\r', '\n'])), "{h:?}");
    }
    watch.end("nothing_ambiguous_reaches_the_upstream").await;
}

#[tokio::test]
async fn one_authority_per_request_routes_and_reaches_the_upstream() {
    let policy = "  routes:\n  - name: guarded\n    match: { hosts: [guarded.example] }\n    faults:\n      abort: { httpStatus: 418, percent: 100 }\n";
    let edge = Edge::start(policy, "").await;
    let watch = edge.watch();

    // RFC 9112 §3.2.2: the absolute-form authority wins; Host is rewritten to it.
    let abs = exchange(
        edge.web(),
        b"GET http://guarded.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(abs.starts_with("HTTP/1.1 418"), "the absolute-form host chose the route: {abs:?}");
    let other = exchange(
        edge.web(),
        b"GET http://other.example/abs HTTP/1.1\r\nHost: guarded.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(other.ends_with("raw-ok"), "{other:?}");
    let heads = edge.raw.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(heads[0].all("host"), ["other.example"], "the upstream sees the authority the route was chosen by");
    assert_eq!(heads[0].target, "/abs", "origin-form upstream");

    // RFC 9112 §3.2: more than one Host is a bad request.
    let two = exchange(
        edge.web(),
        b"GET / HTTP/1.1\r\nHost: other.example\r\nHost: guarded.example\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two:?}");
    assert!(two.contains("x-bulwark-reason: bad-request"), "{two}");
    assert_eq!(edge.raw.heads().len(), 1, "the ambiguous request was not forwarded");
    watch.end("one_authority_per_request_routes_and_reaches_the_upstream").await;
}
