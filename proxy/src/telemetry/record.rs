//! One record per HTTP request of what happened to it: its route, what each stage decided,
//! every try upstream, the reason the proxy answered itself, the status. The stages fill it
//! as the request passes them; [`Record::finish`] renders it once, into the request metrics,
//! the span (when sampled) and the access-log line (when sampled, written when the response
//! body ends so that its bytes and duration are the whole exchange's).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use opentelemetry::{Context, KeyValue};
use tokio::time::Instant;

use super::access_log::{self, Entry};
use super::metrics::RouteLabels;
use crate::http::body::ProxyBody;
use crate::http::headers;
use crate::reason::Reason;
use crate::shared::Shared;
use crate::upstream::Outcome;

/// One try upstream: its endpoint and, once known, how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Try {
    pub endpoint: SocketAddr,
    pub outcome: Option<Outcome>,
}

pub struct Record {
    start: Instant,
    pub labels: RouteLabels,
    /// Why the proxy answered itself, if it did.
    pub reason: Option<Reason>,
    /// Fault kinds injected (stage `fault`).
    pub faults: Vec<&'static str>,
    /// The experiment whose faults were injected, if they were an experiment's.
    pub experiment: Option<Arc<str>>,
    /// What stages in dry-run would have refused (stage `rate-limit`, `breaker`, `bulkhead`).
    pub would_refuse: Vec<Reason>,
    /// The refusal the route's fallback answered instead.
    pub fallback: Option<Reason>,
    /// The request's priority class, when its route has classes.
    pub class: Option<Arc<str>>,
    /// The breaker's state as the request found it (stage `breaker`).
    pub breaker: Option<&'static str>,
    /// Time spent waiting for a bulkhead slot (stage `bulkhead`).
    pub bulkhead_wait: Option<Duration>,
    /// Every try, in order (stage `retry`).
    pub tries: Vec<Try>,
    /// The span, when this request is traced.
    span: Option<Context>,
    /// The access-log line being filled, when this request is logged.
    log: Option<Entry>,
}

impl Record {
    /// Starts the record of `req`: its span (made the upstream request's parent) and its
    /// access-log line, each only when sampled.
    pub fn start<B>(
        shared: &Shared,
        labels: RouteLabels,
        req: &mut Request<B>,
        host: Option<&str>,
        client: SocketAddr,
    ) -> Record {
        let start = Instant::now();
        let log = shared.access_log.as_ref().is_some_and(|l| l.sampled()).then(|| Entry {
            time: access_log::now(),
            request_id: req
                .headers()
                .get(headers::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            trace_id: access_log::trace_id(req.headers()),
            direction: labels.direction,
            listener: labels.listener.to_string(),
            policy: labels.policy.to_string(),
            route: labels.route.to_string(),
            method: req.method().to_string(),
            authority: host.unwrap_or_default().to_string(),
            path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            ..Default::default()
        });
        let span = shared.tracing.as_ref().map(|t| {
            let describe = || {
                let route = if labels.route.is_empty() { "(no route)" } else { &labels.route };
                let attributes = vec![
                    KeyValue::new("http.request.method", req.method().to_string()),
                    KeyValue::new("url.path", req.uri().path().to_string()),
                    KeyValue::new("url.scheme", "http"),
                    KeyValue::new("server.address", host.unwrap_or_default().to_string()),
                    KeyValue::new(
                        "network.protocol.version",
                        if req.version() == Version::HTTP_2 { "2" } else { "1.1" },
                    ),
                    KeyValue::new("client.address", client.ip().to_string()),
                    KeyValue::new("bulwark.listener", labels.listener.to_string()),
                    KeyValue::new("bulwark.policy", labels.policy.to_string()),
                    KeyValue::new("bulwark.route", labels.route.to_string()),
                ];
                (format!("{} {route}", req.method()), attributes)
            };
            let inbound = labels.direction == bulwark_policy::Direction::Inbound.as_str();
            let cx = t.start_span(req.headers(), inbound, describe);
            t.inject(&cx, req.headers_mut());
            cx
        });
        Record {
            start,
            labels,
            reason: None,
            faults: Vec::new(),
            experiment: None,
            would_refuse: Vec::new(),
            fallback: None,
            class: None,
            breaker: None,
            bulkhead_wait: None,
            tries: Vec::new(),
            span,
            log,
        }
    }

    /// A try to `endpoint` begins.
    pub fn begin_try(&mut self, endpoint: SocketAddr) {
        self.tries.push(Try { endpoint, outcome: None });
    }

    /// The latest try ended with `outcome` (kept if it already has one).
    pub fn end_try(&mut self, outcome: Outcome) {
        if let Some(t) = self.tries.last_mut() {
            t.outcome.get_or_insert(outcome);
        }
    }

    /// Endpoints tried so far; a retry prefers another.
    pub fn tried(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.tries.iter().map(|t| t.endpoint)
    }

    fn would_refuses(&self) -> String {
        self.would_refuse.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
    }

    fn retries(&self) -> u32 {
        u32::try_from(self.tries.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// Renders the record into the metric and the span, and arranges for the access-log line
    /// to be written when the response body ends.
    pub fn finish(self, shared: &Arc<Shared>, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = resp.status().as_u16();
        let elapsed = self.start.elapsed();
        shared.metrics.requests.observe(&self.labels, status, self.reason, elapsed);
        let grpc = || resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        shared.metrics.experiments.observe(
            &self.labels.policy,
            &self.labels.route,
            status,
            grpc,
            self.reason.is_some(),
            elapsed,
        );
        let upstream = self.tries.last().map(|t| t.endpoint);
        let retries = self.retries();
        let would_refuse = (!self.would_refuse.is_empty()).then(|| self.would_refuses());
        if let Some(cx) = self.span.filter(super::trace::recording) {
            let mut attributes = vec![KeyValue::new("bulwark.retries", i64::from(retries))];
            attributes.extend(self.reason.map(|r| KeyValue::new("bulwark.reason", r.as_str())));
            if !self.faults.is_empty() {
                attributes.push(KeyValue::new("bulwark.fault", self.faults.join(",")));
            }
            attributes.extend(self.experiment.as_ref().map(|e| KeyValue::new("bulwark.experiment", e.to_string())));
            attributes.extend(would_refuse.clone().map(|w| KeyValue::new("bulwark.would_refuse", w)));
            attributes.extend(self.fallback.map(|f| KeyValue::new("bulwark.fallback", f.as_str())));
            attributes.extend(self.class.as_ref().map(|c| KeyValue::new("bulwark.priority", c.to_string())));
            attributes.extend(self.breaker.map(|b| KeyValue::new("bulwark.breaker.state", b)));
            attributes.extend(
                self.bulkhead_wait.map(|w| KeyValue::new("bulwark.bulkhead.wait_ms", w.as_secs_f64() * 1000.0)),
            );
            attributes.extend(upstream.map(|u| KeyValue::new("network.peer.address", u.to_string())));
            let tries = self.tries.iter().enumerate().map(|(i, t)| {
                vec![
                    KeyValue::new("bulwark.try", i as i64 + 1),
                    KeyValue::new("network.peer.address", t.endpoint.to_string()),
                    KeyValue::new("bulwark.outcome", t.outcome.map(|o| o.to_string()).unwrap_or_default()),
                ]
            });
            super::trace::finish(cx, status, attributes, tries.collect(), status >= 500 || self.reason.is_some());
        }
        let Some(mut entry) = self.log else { return resp };
        entry.status = status;
        entry.reason = self.reason.map(Reason::as_str);
        entry.upstream = upstream.map(|a| a.to_string());
        entry.retries = retries;
        entry.would_refuse = would_refuse;
        entry.fallback = self.fallback.map(Reason::as_str);
        entry.priority = self.class.as_ref().map(|c| c.to_string());
        let (shared, start) = (shared.clone(), self.start);
        resp.map(move |body| {
            body.counted(Box::new(move |bytes, complete| {
                entry.bytes = bytes;
                entry.incomplete = !complete;
                entry.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
                if let Some(l) = &shared.access_log {
                    l.write(&entry);
                }
            }))
        })
    }
}
