//! The proxy's Prometheus metrics, served on :15020/metrics. Every label value comes from
//! configuration (listener, policy and route names) or a fixed vocabulary (direction, status
//! class, reason), never from request data, so cardinality is bounded by the config.
//!
//! Each module registers the families it counts (`register` next to the code that counts):
//! this module only holds the registry, the request families every request's record is
//! rendered into, and the process gauges read at scrape time.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::control::ControlMetrics;
use crate::listener::ListenerMetrics;
use crate::reason::Reason;
use crate::stage::StageFamilies;
use crate::telemetry::route_family::RouteFamily;
use crate::upstream::UpstreamMetrics;

/// 0.5 ms to 30 s: sidecar overhead lives at the bottom, timeouts at the top.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    // Shared with the listener and the compiled route: labelling a request allocates nothing.
    pub listener: Arc<str>,
    pub policy: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    listener: Arc<str>,
    policy: Arc<str>,
    route: Arc<str>,
    status_class: &'static str,
    reason: Option<Reason>,
}

/// The labels of a route's stage metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub policy: String,
    pub route: String,
}

impl StageLabels {
    pub fn new(policy: &str, route: &str) -> StageLabels {
        StageLabels { policy: policy.to_string(), route: route.to_string() }
    }
}

/// The result label of counters such as reloads and upstream connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A metric (or a family of them), registered under `name`.
pub fn single<M>(r: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

type HistogramFamily = RouteFamily<RouteLabels, Histogram, fn() -> Histogram>;

/// The golden signals every request's record ends in.
pub struct RequestMetrics {
    requests: RouteFamily<RequestLabels, Counter>,
    latency: HistogramFamily,
}

impl RequestMetrics {
    fn register(r: &mut Registry) -> RequestMetrics {
        let requests =
            RouteFamily::register(r, "requests", "HTTP requests completed, by route, status class and refusal reason");
        let latency = RouteFamily::register_with(
            r,
            "request_duration_seconds",
            "Time from request arrival to response headers sent, by route",
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        RequestMetrics { requests, latency }
    }

    fn forget(&self, policy: &str, route: &str) {
        self.requests.forget(policy, route);
        self.latency.forget(policy, route);
    }

    pub fn observe(&self, route: &RouteLabels, status: u16, reason: Option<Reason>, elapsed: Duration) {
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = RequestLabels {
            direction: route.direction,
            listener: route.listener.clone(),
            policy: route.policy.clone(),
            route: route.route.clone(),
            status_class,
            reason,
        };
        self.requests.with(&route.policy, &route.route, &labels, |c| c.inc());
        self.latency.with(&route.policy, &route.route, route, |h| h.observe(elapsed.as_secs_f64()));
    }
}

/// What the telemetry pipelines themselves drop or deliver.
#[derive(Clone)]
pub struct ExportMetrics {
    pub access_log_dropped: Counter,
    pub spans_dropped: Counter,
    pub spans_exported: Counter,
}

impl ExportMetrics {
    fn register(r: &mut Registry) -> ExportMetrics {
        ExportMetrics {
            access_log_dropped: single(
                r,
                "access_log_dropped",
                "Access log lines dropped because stdout could not keep up",
            ),
            spans_dropped: single(
                r,
                "trace_spans_dropped",
                "Spans dropped: export queue full, collector absent, slow or refusing",
            ),
            spans_exported: single(r, "trace_spans_exported", "Spans the collector accepted"),
        }
    }
}

struct ProcessMetrics {
    resident_memory: Gauge,
    open_fds: Gauge,
}

pub struct Metrics {
    registry: Registry,
    pub requests: RequestMetrics,
    pub listeners: ListenerMetrics,
    pub upstream: UpstreamMetrics,
    pub stages: StageFamilies,
    pub control: ControlMetrics,
    pub export: ExportMetrics,
    /// What running experiments observe here, and their faults' state on this proxy.
    pub experiments: super::experiment::Experiments,
    process: ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bulwark");
        let r = &mut registry;
        let requests = RequestMetrics::register(r);
        let listeners = ListenerMetrics::register(r);
        let upstream = UpstreamMetrics::register(r);
        let control = ControlMetrics::register(r);
        let stages = StageFamilies::register(r);
        let export = ExportMetrics::register(r);
        let experiments = super::experiment::Experiments::register(r);
        let process = ProcessMetrics {
            resident_memory: single(r, "process_resident_memory_bytes", "Resident memory of the proxy process"),
            open_fds: single(r, "process_open_fds", "File descriptors the proxy process has open"),
        };
        Metrics { registry, requests, listeners, upstream, stages, control, export, experiments, process }
    }

    /// Removes every series of a route that no longer exists, so deleted and renamed routes
    /// do not stay in the scrape.
    pub fn forget_route(&self, policy: &str, route: &str) {
        self.requests.forget(policy, route);
        self.stages.forget(policy, route);
    }

    /// Reads RSS and open descriptors from /proc (at scrape time; Linux only).
    pub fn refresh_process(&self) {
        let rss_kb = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
        if let Some(kb) = rss_kb {
            self.process.resident_memory.set(kb * 1024);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.process.open_fds.set(fds.count() as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an empty scrape is the worst case.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
