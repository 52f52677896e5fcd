//! Route fallbacks through the real proxy: a refusal it names is answered with the route's
//! static response (HTTP) or status (gRPC, read by a tonic client), marked
//! `x-bulwark-fallback`, the refusal still named in `x-bulwark-reason`; what the upstream
//! answers itself passes untouched, and reasons the fallback does not name are refused as ever.

use std::time::Duration;

use bulwark_e2e::client;
use bulwark_e2e::grpc::GrpcUpstream;
use bulwark_e2e::pb::echo_client::EchoClient;
use bulwark_e2e::pb::EchoRequest;
use bulwark_e2e::proxy::{free_port, ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

const FALLBACK: &str = "    fallback:\n      response: { status: 200, headers: { content-type: application/json, cache-control: no-store }, body: '{\"items\":[]}' }\n      grpc: { status: 14, message: \"recommendations are resting\" }\n";

async fn proxy(upstream: impl ToString, settings: &str) -> ProxyProcess {
    let policy = crate::web_policy(&format!("  defaults:\n    retries: {{ attempts: 0 }}\n{settings}{FALLBACK}"));
    ProxyBuilder::new()
        .listener("web", upstream)
        .policies(&policy)
        .extra("accessLog: { enabled: true, sample: 1 }")
        .start()
        .await
}

/// A tonic client of the test Echo service, through the proxy's listener `web`.
async fn echo(p: &ProxyProcess) -> EchoClient<tonic::transport::Channel> {
    let url = format!("http://{}", p.listener("web"));
    EchoClient::new(tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap())
}

fn is_fallback(r: &client::Reply, reason: &str) -> bool {
    r.status == 200
        && r.headers.get("x-bulwark-fallback").is_some_and(|v| v == reason)
        && r.reason() == Some(reason)
        && r.headers["content-type"] == "application/json"
        && r.headers["cache-control"] == "no-store"
        && r.body == "{\"items\":[]}"
}

#[tokio::test]
async fn each_refusal_a_fallback_names_is_answered_with_it() {
    let up = Upstream::start().await;
    // timeout
    let p = proxy(up.addr, "    timeout: { request: 200ms }\n").await;
    let r = client::get(p.listener("web"), "/items", &[("x-delay", "2s")]).await.unwrap();
    assert!(is_fallback(&r, "timeout"), "{r:?}");
    assert_eq!(p.metric("bulwark_fallbacks_total", &[("reason", "timeout")]).await, 1.0);
    // What the upstream answers itself is its answer.
    let r = client::get(p.listener("web"), "/items", &[("x-status", "500")]).await.unwrap();
    assert_eq!(r.status, 500);
    assert!(r.headers.get("x-bulwark-fallback").is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.stdout().contains(r#""fallback":"timeout""#), "{}", p.stdout());

    // upstream-connect-failure
    let p = proxy(format!("127.0.0.1:{}", free_port()), "").await;
    let r = client::get(p.listener("web"), "/items", &[]).await.unwrap();
    assert!(is_fallback(&r, "upstream-connect-failure"), "{r:?}");

    // circuit-open: the breaker opens after one failure; the next request gets the fallback.
    let p = proxy(up.addr, "    circuitBreaker: { consecutiveFailures: 1, openFor: 1m }\n").await;
    let first = client::get(p.listener("web"), "/items", &[("x-status", "503")]).await.unwrap();
    assert_eq!(first.status, 503, "passed through and counted by the breaker");
    let r = client::get(p.listener("web"), "/items", &[]).await.unwrap();
    assert!(is_fallback(&r, "circuit-open"), "{r:?}");

    // bulkhead-full: one slot, taken by a slow request.
    let p = proxy(up.addr, "    bulkhead: { maxConcurrent: 1 }\n").await;
    let addr = p.listener("web");
    let slow = tokio::spawn(async move { client::get(addr, "/items", &[("x-delay", "500ms")]).await.unwrap().status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = client::get(addr, "/items", &[]).await.unwrap();
    assert!(is_fallback(&r, "bulkhead-full"), "{r:?}");
    assert_eq!(slow.await.unwrap(), 200);

    // concurrency-limited: an adaptive limit pinned at one, taken by a slow request.
    let p = proxy(up.addr, "    adaptiveConcurrency: { minLimit: 1, maxLimit: 1 }\n").await;
    let addr = p.listener("web");
    let slow = tokio::spawn(async move { client::get(addr, "/items", &[("x-delay", "500ms")]).await.unwrap().status });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = client::get(addr, "/items", &[]).await.unwrap();
    assert!(is_fallback(&r, "concurrency-limited"), "{r:?}");
    assert_eq!(slow.await.unwrap(), 200);

    // no-healthy-upstream: both endpoints answer 503 once and are ejected (outlier detection
    // may eject them all).
    let other = Upstream::start().await;
    let policy = crate::web_policy(&format!(
        "  upstream:\n    loadBalancer: round-robin\n    outlierDetection: {{ consecutive5xx: 1, maxEjectionPercent: 100 }}\n  defaults:\n    retries: {{ attempts: 0 }}\n{FALLBACK}"
    ));
    let p = ProxyBuilder::new().listener_many("web", &[up.addr, other.addr]).policies(&policy).start().await;
    for _ in 0..2 {
        let own = client::get(p.listener("web"), "/items", &[("x-status", "503")]).await.unwrap();
        assert_eq!(own.status, 503, "an endpoint's own 503, which ejects it");
    }
    let r = client::get(p.listener("web"), "/items", &[]).await.unwrap();
    assert!(is_fallback(&r, "no-healthy-upstream"), "{r:?}");
}

#[tokio::test]
async fn a_fallback_body_can_come_from_a_file_on_the_proxys_disk_but_not_from_a_control_plane() {
    let dir = bulwark_e2e::TempDir::new("fallback-file");
    let file = dir.path().join("empty-list.json");
    std::fs::write(&file, "{\"items\":[],\"from\":\"file\"}").unwrap();
    let fallback = format!(
        "    fallback:\n      on: [upstream-connect-failure]\n      response: {{ headers: {{ content-type: application/json }}, bodyFile: {} }}\n",
        file.display()
    );
    let policy = crate::web_policy(&format!("  defaults:\n    retries: {{ attempts: 0 }}\n{fallback}"));
    let p = ProxyBuilder::new().listener("web", format!("127.0.0.1:{}", free_port())).policies(&policy).start().await;
    let r = client::get(p.listener("web"), "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "{\"items\":[],\"from\":\"file\"}"), "{r:?}");

    // A file that is not there is an error naming the field and the file.
    let missing = policy.replace(&file.display().to_string(), "/nonexistent/fallback.json");
    let errors = bulwark_policy::parse_documents(&missing, "t").and_then(|d| bulwark_policy::Snapshot::compile("1", d));
    let errors: Vec<String> = errors.unwrap_err().iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("spec.defaults.fallback.response.bodyFile: cannot read /nonexistent/fallback.json")),
        "{errors:?}"
    );

    // The control plane cannot see the proxies' disks: it refuses the policy and says why.
    let cp = bulwark_e2e::control::ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    let r = admin
        .apply(bulwark_proto::v1::ApplyRequest { documents: vec![policy], dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied, "{r:?}");
    assert!(
        r.errors
            .iter()
            .any(|e| e.path == "spec.defaults.fallback.response.bodyFile" && e.message.contains("put the body inline")),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn a_grpc_fallback_can_answer_ok_with_a_fixed_response_message() {
    use base64::Engine as _;
    use prost::Message as _;
    let up = GrpcUpstream::start().await;
    let cached = bulwark_e2e::pb::EchoReply { message: "cached reply".into() }.encode_to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(cached);
    let policy = crate::web_policy(&format!(
        "  defaults:\n    retries: {{ attempts: 0 }}\n    timeout: {{ request: 200ms }}\n    fallback:\n      grpc: {{ status: 0, responseBase64: \"{b64}\" }}\n"
    ));
    let p = ProxyBuilder::new().listener("web", up.addr).policies(&policy).start().await;
    let mut c = echo(&p).await;
    let reply = c.unary(EchoRequest { message: "slow".into(), delay_ms: 2000 }).await.unwrap();
    assert_eq!(reply.metadata().get("x-bulwark-fallback").unwrap(), "timeout");
    assert_eq!(reply.into_inner().message, "cached reply", "the client decoded the fallback's message");
    let ok = c.unary(EchoRequest { message: "fast".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(ok.into_inner().message, "fast", "answered calls are untouched");
}

#[tokio::test]
async fn reasons_the_fallback_does_not_name_are_refused_as_ever() {
    let policy = crate::web_policy(
        "  defaults:\n    retries: { attempts: 0 }\n    fallback:\n      on: [timeout]\n      response: { body: cached }\n",
    );
    let p = ProxyBuilder::new().listener("web", format!("127.0.0.1:{}", free_port())).policies(&policy).start().await;
    let r = client::get(p.listener("web"), "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason()), (503, Some("upstream-connect-failure")));
    assert!(r.headers.get("x-bulwark-fallback").is_none());
    // A policy naming a reason that is no refusal is refused with its path.
    let bad = crate::web_policy("  defaults:\n    fallback:\n      on: [teapot]\n      response: { status: 42 }\n");
    let errors = bulwark_policy::parse_documents(&bad, "t").and_then(|d| bulwark_policy::Snapshot::compile("1", d));
    let errors: Vec<String> = errors.unwrap_err().iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
    assert!(errors.iter().any(|e| e.starts_with("spec.defaults.fallback.on[0]: \"teapot\"")), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("spec.defaults.fallback.response.status: 42")), "{errors:?}");
}

#[tokio::test]
async fn a_grpc_client_reads_the_fallback_status_and_message() {
    let up = GrpcUpstream::start().await;
    let p = proxy(up.addr, "    timeout: { request: 200ms }\n").await;
    let mut c = echo(&p).await;
    let err = c.unary(EchoRequest { message: "slow".into(), delay_ms: 2000 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "recommendations are resting");
    assert_eq!(err.metadata().get("x-bulwark-fallback").unwrap(), "timeout");
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "timeout");
    // A call the upstream answers is untouched.
    let ok = c.unary(EchoRequest { message: "fast".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(ok.into_inner().message, "fast");
}

/// A route whose fallback is another upstream, and a static answer when that fails too.
async fn with_fallback_upstream(primary: impl ToString, fallback: impl ToString, settings: &str) -> ProxyProcess {
    let policy = crate::web_policy(&format!(
        "  defaults:\n    retries: {{ attempts: 0 }}\n{settings}    fallback:\n      upstream: \"{}\"\n      response: {{ status: 200, body: static }}\n      grpc: {{ status: 14, message: static }}\n",
        fallback.to_string()
    ));
    ProxyBuilder::new().listener("web", primary).policies(&policy).start().await
}

fn post(path: &str, body: &'static str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = client::request(http::Method::POST, path, &[]);
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()));
    req
}

#[tokio::test]
async fn a_refused_request_is_sent_once_to_the_fallback_upstream_whole_and_its_answer_marked() {
    let replica = Upstream::start().await;
    // Nothing listens where the primary should be: upstream-connect-failure.
    let p = with_fallback_upstream(format!("127.0.0.1:{}", free_port()), replica.addr, "").await;
    let r = client::get(p.listener("web"), "/items?page=2", &[("x-request-id", "r-1")]).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["x-bulwark-fallback"], "upstream-connect-failure");
    assert_eq!(r.reason(), Some("upstream-connect-failure"), "the refusal stays visible");
    let echo = r.echo();
    assert_eq!((echo.method.as_str(), echo.uri.as_str()), ("GET", "/items?page=2"), "the replica answered");
    assert_eq!(echo.headers["x-request-id"], "r-1");
    // A body the primary never received goes whole.
    let r = client::send(p.listener("web"), post("/orders", "{\"id\":7}")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.echo().body_len), (200, 8), "{r:?}");
    assert_eq!(replica.requests(), 2, "tried once each");
    assert_eq!(p.metric("bulwark_fallbacks_total", &[("reason", "upstream-connect-failure")]).await, 2.0);

    // circuit-open: refused before any try, so even a POST's body is there to send.
    let primary = Upstream::start().await;
    let p = with_fallback_upstream(
        primary.addr,
        replica.addr,
        "    circuitBreaker: { consecutiveFailures: 1, openFor: 1m }\n",
    )
    .await;
    let first = client::get(p.listener("web"), "/", &[("x-status", "500")]).await.unwrap();
    assert_eq!(first.status, 500, "the primary's own answer, which opens the breaker");
    let r = client::send(p.listener("web"), post("/orders", "hello")).await.unwrap();
    assert_eq!(r.headers["x-bulwark-fallback"], "circuit-open");
    assert_eq!(r.echo().body_len, 5, "{r:?}");
}

#[tokio::test]
async fn a_timed_out_request_goes_to_the_fallback_upstream_with_the_body_the_proxy_kept() {
    let (primary, replica) = (Upstream::start().await, Upstream::start().await);
    primary.set_delay(Duration::from_secs(3));
    let p = with_fallback_upstream(primary.addr, replica.addr, "    timeout: { request: 300ms }\n").await;
    let r = client::send(p.listener("web"), post("/search", "needle")).await.unwrap();
    assert_eq!(r.headers["x-bulwark-fallback"], "timeout", "{r:?}");
    assert_eq!(r.echo().body_len, 6, "the body the primary had was kept for the fallback");
    assert_eq!(primary.requests(), 1);
}

#[tokio::test]
async fn when_the_fallback_upstream_fails_too_the_static_fallback_answers() {
    let replica = Upstream::start().await;
    replica.set_status(503);
    let p = with_fallback_upstream(format!("127.0.0.1:{}", free_port()), replica.addr, "").await;
    let r = client::get(p.listener("web"), "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "static"), "a 5xx from the replica is no answer");
    assert_eq!(replica.requests(), 1);
    let p =
        with_fallback_upstream(format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()), "").await;
    let r = client::get(p.listener("web"), "/", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "static"), "nor is a replica that is down");
    assert_eq!(r.headers["x-bulwark-fallback"], "upstream-connect-failure");
}

#[tokio::test]
async fn a_grpc_call_is_answered_by_the_fallback_upstream() {
    let replica = GrpcUpstream::start().await;
    let p = with_fallback_upstream(format!("127.0.0.1:{}", free_port()), replica.addr, "").await;
    let mut c = echo(&p).await;
    let reply = c.unary(EchoRequest { message: "via replica".into(), delay_ms: 0 }).await.unwrap();
    assert_eq!(reply.metadata().get("x-bulwark-fallback").unwrap(), "upstream-connect-failure");
    assert_eq!(reply.into_inner().message, "via replica", "the call's message went whole to the replica");
}

/// The gRPC side of every refusal a fallback names, read by a tonic client: the fallback's
/// status and message, marked, the refusal still visible.
#[tokio::test]
async fn a_grpc_client_reads_the_fallback_for_each_reason() {
    fn assert_fallback(r: Result<tonic::Response<bulwark_e2e::pb::EchoReply>, tonic::Status>, reason: &str) {
        let err = r.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::Unavailable, "recommendations are resting"), "{reason}");
        assert_eq!(err.metadata().get("x-bulwark-fallback").unwrap(), reason);
        assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), reason);
    }
    let call = |message: &str, delay_ms| EchoRequest { message: message.into(), delay_ms };
    let up = GrpcUpstream::start().await;

    let p = proxy(format!("127.0.0.1:{}", free_port()), "").await;
    assert_fallback(echo(&p).await.unary(call("x", 0)).await, "upstream-connect-failure");

    let p = proxy(up.addr, "    circuitBreaker: { consecutiveFailures: 1, openFor: 1m }\n").await;
    let mut c = echo(&p).await;
    assert_eq!(c.unary(call("fail", 0)).await.unwrap_err().code(), tonic::Code::Internal, "the upstream's own");
    assert_fallback(c.unary(call("x", 0)).await, "circuit-open");

    for (stage, reason) in [
        ("    bulkhead: { maxConcurrent: 1 }\n", "bulkhead-full"),
        ("    adaptiveConcurrency: { minLimit: 1, maxLimit: 1 }\n", "concurrency-limited"),
    ] {
        let p = proxy(up.addr, stage).await;
        let mut slow = echo(&p).await;
        let held = tokio::spawn(async move { slow.unary(call("slow", 600)).await.map(|r| r.into_inner().message) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_fallback(echo(&p).await.unary(call("x", 0)).await, reason);
        assert_eq!(held.await.unwrap().unwrap(), "slow", "the call holding the place is answered");
    }

    let other = GrpcUpstream::start().await;
    let policy = crate::web_policy(&format!(
        "  upstream:\n    loadBalancer: round-robin\n    outlierDetection: {{ consecutive5xx: 1, maxEjectionPercent: 100 }}\n  defaults:\n    retries: {{ attempts: 0 }}\n{FALLBACK}"
    ));
    let p = ProxyBuilder::new().listener_many("web", &[up.addr, other.addr]).policies(&policy).start().await;
    let mut c = echo(&p).await;
    for _ in 0..2 {
        let own = c.unary(call("unavailable", 0)).await.unwrap_err();
        assert_eq!(own.code(), tonic::Code::Unavailable, "an endpoint's own UNAVAILABLE, which ejects it");
        assert!(own.metadata().get("x-bulwark-fallback").is_none());
    }
    assert_fallback(c.unary(call("x", 0)).await, "no-healthy-upstream");
}
