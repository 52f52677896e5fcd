//! Traces to a real OTLP collector: the span's parent, attributes and resource, the context the
//! upstream receives, parent-based sampling, B3, and that a missing or stuck collector never
//! touches traffic.

use std::time::{Duration, Instant};

use bulwark_e2e::client;
use bulwark_e2e::otlp::{attribute, OtlpReceiver};
use bulwark_e2e::proxy::{free_port, ProxyBuilder, ProxyProcess};
use bulwark_e2e::upstream::Upstream;

async fn proxy(up: &Upstream, endpoint: &str, ratio: &str) -> ProxyProcess {
    let policy = crate::web_policy(
        "  routes:\n  - name: items\n    match: { pathPrefix: /items }\n    circuitBreaker: { consecutiveFailures: 5 }\n    bulkhead: { maxConcurrent: 10 }\n",
    );
    ProxyBuilder::new()
        .listener("web", up.addr)
        .policies(&policy)
        .extra(&format!("tracing: {{ endpoint: \"{endpoint}\", sampleRatio: {ratio}, service: checkout }}"))
        .start()
        .await
}

async fn wait_spans(
    r: &OtlpReceiver,
    n: usize,
) -> Vec<(Vec<opentelemetry_proto::tonic::common::v1::KeyValue>, opentelemetry_proto::tonic::trace::v1::Span)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = r.spans();
        if spans.len() >= n || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_request_span_reaches_the_collector_under_its_parent_and_the_upstream_sees_it() {
    let receiver = OtlpReceiver::start(false).await;
    let up = Upstream::start().await;
    let p = proxy(&up, &format!("http://{}", receiver.addr), "0").await;
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let r = client::get(p.listener("web"), "/items/7", &[("traceparent", &traceparent), ("tracestate", "vendor=x")])
        .await
        .unwrap();
    let seen = r.echo().headers["traceparent"].clone();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!((parts[1], parts[3]), (TRACE, "01"), "same trace, still sampled: {seen}");
    assert_ne!(parts[2], PARENT, "the upstream's parent is the proxy's span");

    let spans = wait_spans(&receiver, 1).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (resource, span) = &spans[0];
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(hex(&span.span_id), parts[2], "the span the upstream was told about");
    assert_eq!(span.kind, 3, "SPAN_KIND_CLIENT for outbound traffic");
    assert_eq!(span.name, "GET items");
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/items/7"),
        ("http.response.status_code", "200"),
        ("bulwark.route", "items"),
        ("bulwark.policy", "default/web"),
        ("bulwark.retries", "0"),
        ("bulwark.breaker.state", "closed"),
    ] {
        assert_eq!(attribute(&span.attributes, key).as_deref(), Some(want), "{key} in {:?}", span.attributes);
    }
    assert!(attribute(&span.attributes, "bulwark.bulkhead.wait_ms").is_some());
    assert_eq!(span.events.len(), 1, "one try: {:?}", span.events);
    assert_eq!(attribute(&span.events[0].attributes, "bulwark.outcome").as_deref(), Some("200"));
    assert_eq!(attribute(resource, "service.name").as_deref(), Some("checkout"));
    assert!(attribute(resource, "service.version").is_some());
}

#[tokio::test]
async fn sampling_is_parent_based_and_b3_parents_are_understood() {
    let receiver = OtlpReceiver::start(false).await;
    let up = Upstream::start().await;
    let p = proxy(&up, &format!("http://{}", receiver.addr), "0").await;
    // Ratio 0: a new trace is not sampled, an unsampled parent stays unsampled...
    client::get(p.listener("web"), "/items/1", &[]).await.unwrap();
    client::get(p.listener("web"), "/items/2", &[("traceparent", &format!("00-{TRACE}-{PARENT}-00"))]).await.unwrap();
    // ...and a sampled B3 parent is followed.
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    let r = client::get(p.listener("web"), "/items/3", &[("b3", b3)]).await.unwrap();
    assert!(
        r.echo().headers["traceparent"].contains("80f198ee56343ba864fe8b2a57d3eff7"),
        "W3C context for the upstream"
    );
    let spans = wait_spans(&receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = if spans.len() > 1 { spans } else { receiver.spans() };
    assert_eq!(spans.len(), 1, "only the B3-sampled request: {spans:?}");
    assert_eq!(hex(&spans[0].1.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&spans[0].1.parent_span_id), "e457b5a2e4d86bd1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_or_stuck_collector_never_touches_traffic() {
    let up = Upstream::start().await;
    let stuck = OtlpReceiver::start(true).await;
    for endpoint in [format!("http://127.0.0.1:{}", free_port()), format!("http://{}", stuck.addr)] {
        let p = proxy(&up, &endpoint, "1").await;
        let addr = p.listener("web");
        let rss_before = p.metric("bulwark_process_resident_memory_bytes", &[]).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async move {
                    let mut conn = client::connect_h1(addr).await.unwrap();
                    for _ in 0..1500 {
                        conn.ready().await.unwrap();
                        let resp = conn
                            .send_request(client::request(http::Method::GET, "/items/1", &[("host", "web")]))
                            .await
                            .unwrap();
                        assert_eq!(resp.status(), 200);
                        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "6000 requests finished");
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.metric("bulwark_trace_spans_dropped_total", &[]).await < 1.0 {
            assert!(Instant::now() < deadline, "spans that cannot be delivered are dropped and counted ({endpoint})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss_after = p.metric("bulwark_process_resident_memory_bytes", &[]).await;
        assert!(rss_after - rss_before < 64.0 * 1024.0 * 1024.0, "memory stays bounded: {rss_before} -> {rss_after}");
    }
}

#[tokio::test]
async fn retries_and_faults_show_on_the_span() {
    let receiver = OtlpReceiver::start(false).await;
    let up = Upstream::start().await;
    let policy = crate::web_policy(
        "  defaults:\n    retries: { attempts: 2, on: [503], backoff: { base: 1ms, max: 2ms } }\n    faults:\n      delay: { fixed: 1ms, percent: 100 }\n",
    );
    let p = ProxyBuilder::new()
        .listener("web", up.addr)
        .policies(&policy)
        .extra(&format!("tracing: {{ endpoint: \"http://{}\", sampleRatio: 1 }}", receiver.addr))
        .start()
        .await;
    up.set_status(503);
    let r = client::get(p.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 503);
    let spans = wait_spans(&receiver, 1).await;
    let span = &spans[0].1;
    assert_eq!(attribute(&span.attributes, "bulwark.retries").as_deref(), Some("2"));
    assert_eq!(attribute(&span.attributes, "bulwark.fault").as_deref(), Some("delay"));
    let outcomes: Vec<String> =
        span.events.iter().filter_map(|e| attribute(&e.attributes, "bulwark.outcome")).collect();
    assert_eq!(outcomes, ["503", "503", "503"], "each try is an event");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "STATUS_CODE_ERROR");
}
