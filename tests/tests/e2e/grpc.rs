//! gRPC through the proxy with a tonic client and server: unary, bidirectional streaming, and
//! the proxy's refusals read as gRPC statuses.

use std::time::Duration;

use bulwark_e2e::grpc::GrpcUpstream;
use bulwark_e2e::pb::echo_client::EchoClient;
use bulwark_e2e::pb::EchoRequest;
use bulwark_e2e::proxy::ProxyBuilder;
use tonic::Code;

async fn client(addr: std::net::SocketAddr) -> EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    EchoClient::new(channel)
}

#[tokio::test]
async fn unary_and_bidi_streaming_pass_through() {
    let up = GrpcUpstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let mut c = client(proxy.listener("web")).await;
    let r = c.unary(EchoRequest { message: "hi".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(r.into_inner().message, "hi");

    // An application error's status and message travel in trailers, untouched.
    let err = c.unary(EchoRequest { message: "fail".into(), delay_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(err.message(), "asked to fail");
    assert!(err.metadata().get("x-bulwark-reason").is_none());

    // Full duplex: each reply arrives before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for i in 0..3 {
        tx.send(EchoRequest { message: format!("m{i}"), delay_ms: 0 }).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.message, format!("echo: m{i}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none(), "stream ends cleanly");
}

#[tokio::test]
async fn route_timeout_answers_deadline_exceeded_trailers_only() {
    let up = GrpcUpstream::start().await;
    let policy = crate::web_policy(
        "  routes:\n  - name: unary\n    match: { path: /bulwark.test.v1.Echo/Unary }\n    timeout: { request: 200ms }\n",
    );
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    let mut c = client(proxy.listener("web")).await;
    let err = c.unary(EchoRequest { message: "slow".into(), delay_ms: 3000 }).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "timeout");
    let fast = c.unary(EchoRequest { message: "fast".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(fast.into_inner().message, "fast");
}

#[tokio::test]
async fn unreachable_upstream_answers_unavailable() {
    let port = bulwark_e2e::proxy::free_port();
    let proxy = ProxyBuilder::new().listener_with_protocol("web", format!("127.0.0.1:{port}"), "http2").start().await;
    let mut c = client(proxy.listener("web")).await;
    let err = c.unary(EchoRequest { message: "x".into(), delay_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "upstream-connect-failure");
}

#[tokio::test]
async fn retries_on_a_grpc_status_hide_a_flaky_server() {
    let up = GrpcUpstream::start().await;
    let policy = crate::web_policy(
        "  defaults:\n    retries: { attempts: 1, on: [unavailable], backoff: { base: 1ms, max: 2ms } }\n",
    );
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    let mut c = client(proxy.listener("web")).await;
    for _ in 0..6 {
        let r =
            c.unary(EchoRequest { message: "flaky".into(), delay_ms: 0 }).await.expect("the retry hides UNAVAILABLE");
        assert_eq!(r.into_inner().message, "flaky");
    }
    assert_eq!(up.service.calls.load(std::sync::atomic::Ordering::SeqCst), 12, "every call needed its retry");
    // An error not listed in retries.on is passed through, not retried.
    let err = c.unary(EchoRequest { message: "fail".into(), delay_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(up.service.calls.load(std::sync::atomic::Ordering::SeqCst), 13);
}

#[tokio::test]
async fn the_breaker_counts_grpc_failures_by_default() {
    let up = GrpcUpstream::start().await;
    let policy = crate::web_policy("  defaults:\n    circuitBreaker: { consecutiveFailures: 5, openFor: 30s }\n");
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    let mut c = client(proxy.listener("web")).await;
    for _ in 0..5 {
        let err = c.unary(EchoRequest { message: "unavailable".into(), delay_ms: 0 }).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.metadata().get("x-bulwark-reason").is_none(), "the server's own answer");
    }
    let err = c.unary(EchoRequest { message: "hello".into(), delay_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "circuit-open", "five UNAVAILABLE opened it");
    assert_eq!(up.service.calls.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_request_timeout_bounds_a_streaming_call_until_its_trailers() {
    let up = GrpcUpstream::start().await;
    let policy = crate::web_policy("  defaults:\n    timeout: { request: 1s }\n");
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    let mut c = client(proxy.listener("web")).await;
    // Response headers come at once; then the server waits for the next message, forever.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let started = std::time::Instant::now();
    let mut replies = c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(EchoRequest { message: "one".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().message, "echo: one");
    let err = tokio::time::timeout(Duration::from_secs(20), replies.message()).await.expect("cut").unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "timeout");
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the deadline");
    drop(tx);
}
