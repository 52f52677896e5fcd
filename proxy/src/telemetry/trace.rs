//! Tracing: one span per proxied request (a server span for inbound traffic, a client span for
//! outbound), exported to an OTLP collector over gRPC with opentelemetry-otlp.
//!
//! - The parent comes from W3C `traceparent`/`tracestate`, else from B3 (single `b3` header or
//!   `X-B3-*` headers); the upstream request carries the proxy's span as W3C `traceparent`.
//! - Sampling is parent-based with a ratio for new traces (`sampleRatio`).
//! - Spans go into a bounded queue that a task drains in batches (up to 512 spans or 1 s) and
//!   exports with a timeout. When the queue is full, or the collector is absent, slow or
//!   refusing, spans are dropped and counted (`bulwark_trace_spans_dropped_total`): a collector
//!   can never slow a request or grow the proxy's memory.

use std::time::Duration;

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const QUEUE: usize = 2048;
const BATCH: usize = 512;
const BATCH_WAIT: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `tracing:` in the bootstrap file; tracing is off without it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// Share of new traces sampled (a request with a sampled parent is always traced).
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans; default `bulwark-proxy`.
    #[serde(default)]
    pub service: Option<String>,
}

fn default_ratio() -> f64 {
    0.01
}

/// Feeds ended spans to the export task, dropping (and counting) when it is behind.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

pub struct Tracing {
    // Kept so the provider (and its processor) live as long as the proxy.
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Builds the pipeline and starts the export task (needs a Tokio runtime).
    pub fn start(cfg: &TracingConfig, dropped: Counter, exported: Counter) -> anyhow::Result<Tracing> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
        if let Some(pod) = env("POD_NAME") {
            attributes.push(KeyValue::new("k8s.pod.name", pod));
        }
        if let Some(ns) = env("POD_NAMESPACE") {
            attributes.push(KeyValue::new("k8s.namespace.name", ns));
        }
        let resource = Resource::builder()
            .with_service_name(cfg.service.clone().unwrap_or_else(|| "bulwark-proxy".into()))
            .with_attributes(attributes)
            .build();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        exporter.set_resource(&resource);
        let (tx, mut rx) = mpsc::channel::<SpanData>(QUEUE);
        let lost = dropped.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                let deadline = tokio::time::Instant::now() + BATCH_WAIT;
                while batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(s)) => batch.push(s),
                        _ => break,
                    }
                }
                let n = batch.len() as u64;
                match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(std::mem::take(&mut batch))).await {
                    Ok(Ok(())) => {
                        exported.inc_by(n);
                    }
                    Ok(Err(e)) => {
                        lost.inc_by(n);
                        tracing::debug!(error = %e, spans = n, "span export failed; spans dropped");
                    }
                    Err(_) => {
                        lost.inc_by(n);
                        tracing::debug!(spans = n, "span export timed out; spans dropped");
                    }
                }
            }
        });
        let ratio = cfg.sample_ratio.clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queue { tx, dropped })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("bulwark-proxy");
        Ok(Tracing { _provider: provider, tracer, propagator: TraceContextPropagator::new() })
    }

    /// Starts the span of a request, under the caller's trace when it sent one.
    /// `describe` gives the span's name and attributes; it is called only when the span is
    /// sampled, so that the unsampled majority of requests builds none of them (the sampler is
    /// parent-based by ratio and needs neither).
    pub fn start_span(
        &self,
        headers: &HeaderMap,
        inbound: bool,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> Context {
        let parent = match self.propagator.extract(&Headers(headers)) {
            cx if cx.span().span_context().is_valid() => cx,
            _ => b3(headers).map(|sc| Context::new().with_remote_span_context(sc)).unwrap_or_default(),
        };
        let kind = if inbound { SpanKind::Server } else { SpanKind::Client };
        let builder = self.tracer.span_builder("request").with_kind(kind);
        let mut span = self.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            let (name, attributes) = describe();
            span.update_name(name);
            span.set_attributes(attributes);
        }
        parent.with_span(span)
    }

    /// Writes the span as the upstream request's parent (W3C `traceparent`, `tracestate`).
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator.inject_context(cx, &mut HeadersMut(headers));
    }
}

/// Whether the request's span is sampled: what it would record is only built then.
pub fn recording(cx: &Context) -> bool {
    cx.span().is_recording()
}

/// Ends a request's span with what happened; each try upstream is an event, so retries show
/// on the span's timeline. Called for sampled spans only (see [`recording`]): an unsampled
/// span records nothing, so nothing is built for it.
pub fn finish(cx: Context, status: u16, attributes: Vec<KeyValue>, tries: Vec<Vec<KeyValue>>, error: bool) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
    for a in attributes {
        span.set_attribute(a);
    }
    for t in tries {
        span.add_event("try", t);
    }
    if error {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
}

/// B3, single header (`{trace}-{span}[-{sampled}[-{parent}]]`) or multiple `X-B3-*` headers.
fn b3(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let (trace, span, sampled) = match get("b3") {
        Some(single) => {
            let mut parts = single.split('-');
            (parts.next()?.to_string(), parts.next()?.to_string(), parts.next().map(str::to_string))
        }
        None => {
            (get("x-b3-traceid")?.to_string(), get("x-b3-spanid")?.to_string(), get("x-b3-sampled").map(str::to_string))
        }
    };
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let trace = TraceId::from_hex(&format!("{trace:0>32}")).ok()?;
    let span = SpanId::from_hex(&span).ok()?;
    let flags = if matches!(sampled.as_deref(), Some("1" | "d" | "true")) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(trace, span, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_single_and_multi_headers() {
        let mut h = HeaderMap::new();
        h.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".parse().unwrap());
        let sc = b3(&h).unwrap();
        assert_eq!(sc.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(sc.is_sampled() && sc.is_remote());
        let mut m = HeaderMap::new();
        m.insert("x-b3-traceid", "64fe8b2a57d3eff7".parse().unwrap());
        m.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
        let sc = b3(&m).unwrap();
        assert_eq!(sc.trace_id().to_string(), "000000000000000064fe8b2a57d3eff7", "64-bit ids are padded");
        assert!(!sc.is_sampled());
        assert!(b3(&HeaderMap::new()).is_none());
    }
}
