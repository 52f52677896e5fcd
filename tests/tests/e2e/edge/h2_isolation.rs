//! HTTP/2 clients share one upstream connection per endpoint: a client that never opens its
//! flow-control window, or that leaves mid-response, must not use up that connection's window
//! and stall everyone else's requests on it.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

fn big(addr: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
    let mut req = client::request(Method::GET, &format!("http://{addr}/big"), &[("x-body-bytes", "20000000")]);
    *req.version_mut() = Version::HTTP_2;
    req
}

/// A connection whose streams never get a window: the proxy cannot send them a byte.
async fn zero_window(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .initial_connection_window_size(65_535)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn stalled_and_abandoned_streams_leave_other_clients_on_the_upstream_connection_unharmed() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener_speaking("web", up.addr, "http2").start().await;
    let web = proxy.listener("web");

    // Ten streams whose client never reads, each held open.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut send = zero_window(web).await;
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(big(web))).await;
        stalled.push((send, resp));
    }
    // Ten clients that ask for the same and go away mid-response.
    for _ in 0..10 {
        let (mut send, conn) = client::connect_h2(web).await.unwrap();
        if let Ok(resp) = send.send_request(big(web)).await {
            let mut body = resp.into_body();
            let _ = body.frame().await;
        }
        conn.abort();
    }
    // The upstream connection they shared keeps serving a legitimate client.
    let (mut legit, _conn) = client::connect_h2(web).await.unwrap();
    let (mut sent, mut ok) = (0, 0);
    for _ in 0..50 {
        sent += 1;
        let mut req = client::request(Method::GET, &format!("http://{web}/"), &[("x-body-bytes", "100000")]);
        *req.version_mut() = Version::HTTP_2;
        let exchange = async {
            let r = legit.send_request(req).await.ok()?;
            let status = r.status();
            let body = r.into_body().collect().await.ok()?.to_bytes();
            Some((status, body.len()))
        };
        match tokio::time::timeout(Duration::from_secs(5), exchange).await {
            Ok(Some((StatusCode::OK, 100_000))) => ok += 1,
            // A stalled connection fails every request after it: no need to wait for all.
            _ if sent - ok >= 3 => break,
            _ => {}
        }
    }
    assert_eq!(ok, sent, "the legitimate client lost requests to stalled neighbours");
    assert_eq!(
        proxy.metric("bulwark_upstream_connections_total", &[("result", "opened")]).await,
        1.0,
        "they all shared one upstream connection"
    );
    drop(stalled);
}
