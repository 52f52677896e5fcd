//! Fault injection through the real binary: rates measured over many requests, aborts never
//! reaching the upstream, gRPC-aware aborts, targeting, runtime toggles that expire by
//! themselves, response delay and bandwidth, and TCP faults seen from a real client.

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::proxy::{metric_sum, ProxyBuilder, ProxyProcess};
use bulwark_e2e::tcp::TcpServer;
use bulwark_e2e::upstream::Upstream;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(up: &Upstream, spec: &str) -> ProxyProcess {
    ProxyBuilder::new().listener("web", up.addr).policies(&crate::web_policy(spec)).start().await
}

/// `n` GETs over `lanes` keep-alive connections; the statuses, in no particular order.
async fn load(addr: std::net::SocketAddr, n: usize, lanes: usize) -> Vec<(u16, Option<String>)> {
    let per = n / lanes;
    let tasks: Vec<_> = (0..lanes)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = client::connect_h1(addr).await.unwrap();
                let mut out = Vec::with_capacity(per);
                for _ in 0..per {
                    conn.ready().await.unwrap();
                    let req = client::request(Method::GET, "/", &[("host", "web")]);
                    let resp = conn.send_request(req).await.unwrap();
                    let reason = resp.headers().get("x-bulwark-reason").map(|v| v.to_str().unwrap().to_string());
                    let status = resp.status().as_u16();
                    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
                    out.push((status, reason));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_abort_over_ten_thousand_requests_lies_in_the_binomial_interval() {
    let up = Upstream::start().await;
    let proxy = start(&up, "  defaults:\n    faults:\n      abort: { httpStatus: 503, percent: 10 }\n").await;
    let answers = load(proxy.listener("web"), 10_000, 8).await;
    let aborted = answers.iter().filter(|(s, r)| *s == 503 && r.as_deref() == Some("fault-abort")).count();
    // n = 10000, p = 0.1: σ = 30; bounded at 5.5σ, 1000 ± 165 (a false failure about once in 25
    // million runs, where a 99.9% interval fails one CI run in a thousand).
    assert!((835..=1165).contains(&aborted), "{aborted} aborts");
    assert_eq!(up.requests(), 10_000 - aborted, "an aborted request never reaches the upstream");
    assert_eq!(proxy.metric("bulwark_faults_injected_total", &[("kind", "abort")]).await, aborted as f64);
}

#[tokio::test]
async fn zero_percent_never_fires_and_one_hundred_always_does() {
    let up = Upstream::start().await;
    let never = start(&up, "  defaults:\n    faults:\n      abort: { httpStatus: 500, percent: 0 }\n").await;
    assert!(load(never.listener("web"), 1000, 4).await.iter().all(|(s, _)| *s == 200));
    let always = start(&up, "  defaults:\n    faults:\n      abort: { httpStatus: 418, percent: 100 }\n").await;
    let answers = load(always.listener("web"), 1000, 4).await;
    assert!(answers.iter().all(|(s, r)| *s == 418 && r.as_deref() == Some("fault-abort")));
    let body = client::get(always.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(body.text(), "fault injected\n");
    assert_eq!(up.requests(), 1000, "only the 0% proxy's requests arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_delay_are_drawn_independently() {
    let up = Upstream::start().await;
    let spec = "  defaults:\n    faults:\n      abort: { httpStatus: 503, percent: 50 }\n      delay: { fixed: 1ms, percent: 50 }\n";
    let proxy = start(&up, spec).await;
    let answers = load(proxy.listener("web"), 4000, 8).await;
    let passed = answers.iter().filter(|(s, _)| *s == 200).count();
    let delayed = proxy.metric("bulwark_faults_injected_total", &[("kind", "delay")]).await as usize;
    // Binomial counts, bounded at 5.5σ (a false failure about once in 25 million runs): of the
    // requests not aborted, half are delayed (n ≈ 2000, σ ≈ 22, so ± 124); half of 4000 pass the
    // abort (σ ≈ 32, so ± 174). Drawing both from one number would put `delayed` at 0 or `passed`.
    let expected = passed / 2;
    assert!(delayed.abs_diff(expected) <= 124, "{delayed} delayed of {passed} passed");
    assert!((1826..=2174).contains(&passed), "{passed} of 4000 passed the 50% abort");
}

#[tokio::test]
async fn grpc_abort_is_a_status_a_grpc_client_reads() {
    let up = bulwark_e2e::grpc::GrpcUpstream::start().await;
    let spec = "  defaults:\n    faults:\n      abort: { grpcStatus: 14, percent: 100 }\n";
    let proxy = ProxyBuilder::new().listener("web", up.addr).policies(&crate::web_policy(spec)).start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", proxy.listener("web")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = bulwark_e2e::pb::echo_client::EchoClient::new(channel);
    let err = c.unary(bulwark_e2e::pb::EchoRequest { message: "x".into(), delay_ms: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.metadata().get("x-bulwark-reason").unwrap(), "fault-abort");
    assert_eq!(up.service.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_targeted_fault_fires_only_for_matching_requests() {
    let up = Upstream::start().await;
    let spec = "  defaults:\n    faults:\n      abort: { httpStatus: 503, percent: 100 }\n      match: { headers: [{ name: x-bulwark-fault, exact: \"on\" }] }\n";
    let proxy = start(&up, spec).await;
    let addr = proxy.listener("web");
    for _ in 0..20 {
        assert_eq!(
            client::get(addr, "/", &[("x-bulwark-fault", "on")]).await.unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(client::get(addr, "/", &[]).await.unwrap().status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_runtime_fault_hits_its_route_alone_and_expires_by_itself() {
    let up = Upstream::start().await;
    let spec = "  routes:\n  - name: pay\n    match: { pathPrefix: /pay }\n";
    let proxy = start(&up, spec).await;
    let addr = proxy.listener("web");
    let mut set = client::request(Method::POST, "/faults?policy=default/web&route=pay", &[]);
    *set.body_mut() =
        http_body_util::Full::new(bytes::Bytes::from("abort: { httpStatus: 503, percent: 100 }\nfor: 1s\n"));
    let r = client::send(proxy.admin, set).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let listed = client::get(proxy.admin, "/faults", &[]).await.unwrap().text();
    assert!(listed.contains("\"source\": \"runtime\"") && listed.contains("\"route\": \"pay\""), "{listed}");

    assert_eq!(client::get(addr, "/pay", &[]).await.unwrap().reason(), Some("fault-abort"));
    assert_eq!(client::get(addr, "/other", &[]).await.unwrap().status, StatusCode::OK, "other routes untouched");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(client::get(addr, "/pay", &[]).await.unwrap().status, StatusCode::OK, "expired with no further command");
    assert_eq!(proxy.metric("bulwark_faults_expired_total", &[("route", "pay")]).await, 1.0);
    assert!(proxy.logs().contains("faults expired"), "{}", proxy.logs());

    // A bad fault is refused with its field, and nothing changes.
    let mut bad = client::request(Method::POST, "/faults?policy=default/web&route=pay", &[]);
    *bad.body_mut() = http_body_util::Full::new(bytes::Bytes::from("abort: { httpStatus: 503, percent: 150 }\n"));
    let r = client::send(proxy.admin, bad).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("spec.routes[0].faults.abort.percent"), "{}", r.text());
    let clear = client::send(proxy.admin, client::request(Method::DELETE, "/faults?policy=default/web&route=pay", &[]))
        .await
        .unwrap();
    assert_eq!(clear.status, StatusCode::OK);

    // A policy or route that does not exist is named as such, with what does.
    for (query, says) in [
        ("policy=ns/nosuch&route=pay", "there is no policy \"ns/nosuch\"; the policies here: default/web"),
        ("policy=default/web&route=nosuch", "no route \"nosuch\" in policy \"default/web\"; its routes: default, pay"),
    ] {
        let mut r = client::request(Method::POST, &format!("/faults?{query}"), &[]);
        *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from("abort: { httpStatus: 503, percent: 100 }\n"));
        let r = client::send(proxy.admin, r).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.text().contains(says), "{query}: {}", r.text());
    }
}

#[tokio::test]
async fn response_delay_and_bandwidth_shape_the_response() {
    let up = Upstream::start().await;
    let spec = "  defaults:\n    faults:\n      responseDelay: { fixed: 300ms, percent: 100 }\n      responseBandwidth: { bytesPerSecond: 10000 }\n";
    let proxy = start(&up, spec).await;
    let start = Instant::now();
    let r = client::get(proxy.listener("web"), "/", &[("x-body-bytes", "20000")]).await.unwrap();
    let took = start.elapsed();
    assert_eq!(r.body.len(), 20000);
    // 300 ms before the headers, then 20000 bytes at 10000 B/s: about 2.3 s; generous bounds.
    assert!(took >= Duration::from_millis(2000) && took < Duration::from_secs(20), "{took:?}");
    assert_eq!(up.requests(), 1);
}

async fn tcp_proxy(server: &TcpServer, faults: &str) -> ProxyProcess {
    let policy = format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: db }}\nspec:\n  target: {{ listener: db }}\n  tcpFaults:\n{faults}"
    );
    ProxyBuilder::new().listener_with_protocol("db", server.addr, "tcp").policies(&policy).start().await
}

#[tokio::test]
async fn tcp_reset_at_once_and_after_n_bytes() {
    let server = TcpServer::echo().await;
    let proxy = tcp_proxy(&server, "    reset: { percent: 100 }\n").await;
    // The reset can arrive before the client's connect() has returned: both are a reset.
    let seen = match tokio::net::TcpStream::connect(proxy.listener("db")).await {
        Err(e) => e.kind(),
        Ok(mut s) => {
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
            r.expect_err("a reset, not data or EOF").kind()
        }
    };
    assert_eq!(seen, std::io::ErrorKind::ConnectionReset);

    let proxy = tcp_proxy(&server, "    reset: { afterBytes: 100, percent: 100 }\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.listener("db")).await.unwrap();
    s.write_all(&[1u8; 300]).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap() {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset), "ends with a reset");
    assert!(got.len() <= 100, "no more than 100 bytes passed: {}", got.len());
}

#[tokio::test]
async fn tcp_blackhole_never_answers_and_bandwidth_slows_the_stream() {
    let server = TcpServer::echo().await;
    let proxy = tcp_proxy(&server, "    blackhole: { percent: 100 }\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.listener("db")).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    assert!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await.is_err(), "the client times out");
    assert_eq!(proxy.metric("bulwark_faults_injected_total", &[("kind", "tcp-blackhole")]).await, 1.0);

    let proxy = tcp_proxy(&server, "    bandwidth: { bytesPerSecond: 8000 }\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.listener("db")).await.unwrap();
    let start = Instant::now();
    s.write_all(&[9u8; 16000]).await.unwrap();
    let mut back = vec![0u8; 16000];
    s.read_exact(&mut back).await.unwrap();
    // 16000 bytes each way at 8000 B/s: at least about 2 s; generous upper bound.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1800) && took < Duration::from_secs(30), "{took:?}");
}

#[tokio::test]
async fn tcp_delay_holds_each_chunk() {
    let server = TcpServer::echo().await;
    let proxy = tcp_proxy(&server, "    delay: { perChunk: 200ms, percent: 100 }\n").await;
    let mut s = tokio::net::TcpStream::connect(proxy.listener("db")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    // Held once on the way in and once on the way back.
    assert!(start.elapsed() >= Duration::from_millis(400), "{:?}", start.elapsed());
    let m = proxy.metrics().await;
    assert_eq!(metric_sum(&m, "bulwark_faults_injected_total", &[("kind", "tcp-delay")]), 1.0);
}

/// A fault aimed at one calling workload: its proxy states its identity, the callee's proxy
/// matches it, and an app cannot pass for another workload through its own proxy.
#[tokio::test]
async fn targeting_by_mesh_identity_hits_only_that_caller() {
    let up = Upstream::start().await;
    let callee = start(
        &up,
        "  defaults:\n    faults:\n      abort: { httpStatus: 503, percent: 100 }\n      match: { identities: [web.shop] }\n",
    )
    .await;
    let web = ProxyBuilder::new().listener("out", callee.listener("web")).extra("identity: web.shop").start().await;
    let worker =
        ProxyBuilder::new().listener("out", callee.listener("web")).extra("identity: worker.shop").start().await;
    let get = |addr, headers: &'static [(&'static str, &'static str)]| async move {
        let r = client::get(addr, "/", headers).await.unwrap();
        (r.status.as_u16(), r.reason().map(str::to_string))
    };
    assert_eq!(get(web.listener("out"), &[]).await, (503, Some("fault-abort".into())));
    assert_eq!(get(worker.listener("out"), &[]).await.0, 200, "another workload is not hit");
    assert_eq!(
        get(worker.listener("out"), &[("x-bulwark-client-id", "web.shop")]).await.0,
        200,
        "the worker's proxy states its own identity, whatever the app wrote"
    );
    assert_eq!(get(callee.listener("web"), &[]).await.0, 200, "a caller without identity is not hit");
    assert_eq!(up.requests(), 3, "the aborted request never reached the upstream");
}

/// A malformed time in a runtime fault is refused with its field; the proxy, its store and
/// every later change keep working (it once panicked under the store's lock, poisoning it).
#[tokio::test]
async fn a_malformed_expiry_is_refused_and_harms_nothing() {
    let up = Upstream::start().await;
    let spec = "  routes:\n  - name: pay\n    match: { pathPrefix: /pay }\n";
    let proxy = start(&up, spec).await;
    let post = |body: &'static str| {
        let mut r = client::request(Method::POST, "/faults?policy=default/web&route=pay", &[]);
        *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from(body));
        client::send(proxy.admin, r)
    };
    for bad in [
        "abort: { httpStatus: 503, percent: 100 }\nexpiresAt: \"2026-11-23T10:00:00+\u{e9}\u{e9}0\"\n",
        "abort: { httpStatus: 503, percent: 100 }\nexpiresAt: \"2026-02-30T10:00:00Z\"\n",
        "abort: { httpStatus: 503, percent: 100 }\nfor: 87600h\n",
    ] {
        let r = post(bad).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text());
        assert!(r.text().contains("spec.routes[0].faults."), "{}", r.text());
    }
    assert_eq!(client::get(proxy.listener("web"), "/pay", &[]).await.unwrap().status, StatusCode::OK);
    let r = post("abort: { httpStatus: 503, percent: 100 }\nfor: 1m\n").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "a good fault after the bad ones: {}", r.text());
    assert_eq!(client::get(proxy.listener("web"), "/pay", &[]).await.unwrap().reason(), Some("fault-abort"));
    proxy.signal("HUP");
    assert_eq!(client::get(proxy.admin, "/faults", &[]).await.unwrap().status, StatusCode::OK, "reloads still work");
}
