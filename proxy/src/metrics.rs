//! The proxy's Prometheus metrics, served on :15020/metrics. Every label value comes from
//! configuration (listener, policy and route names) or a fixed vocabulary (direction, status
//! class, reason), never from request data, so cardinality is bounded by the config.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::reason::Reason;

/// 0.5 ms to 30 s: sidecar overhead lives at the bottom, timeouts at the top.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    pub listener: String,
    pub policy: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    listener: String,
    policy: String,
    route: String,
    status_class: &'static str,
    reason: Option<Reason>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    listener: String,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    connections: Family<ConnLabels, Counter>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections_rejected: Family<ListenerLabels, Counter>,
    upstream_connections: Family<ResultLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    config_generation: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bulwark");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests completed, by route, status class and refusal reason",
            requests.clone(),
        );
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time from request arrival to response headers sent, by route",
            latency.clone(),
        );
        let connections = Family::<ConnLabels, Counter>::default();
        registry.register(
            "downstream_connections",
            "Downstream connections accepted, by detected protocol",
            connections.clone(),
        );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "downstream_connections_active",
            "Downstream connections open now",
            connections_active.clone(),
        );
        let connections_rejected = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "downstream_connections_rejected",
            "Downstream connections closed at once because the listener was at its connection cap",
            connections_rejected.clone(),
        );
        let upstream_connections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "upstream_connections",
            "Upstream connections opened, reused from the pool, or failed",
            upstream_connections.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, applied or rejected",
            config_reloads.clone(),
        );
        let config_generation = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_generation",
            "Generation of the policy snapshot in force (1 at start, +1 per applied reload)",
            config_generation.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            connections,
            connections_active,
            connections_rejected,
            upstream_connections,
            config_reloads,
            config_generation,
        }
    }

    pub fn request(
        &self,
        route: &RouteLabels,
        status: u16,
        reason: Option<Reason>,
        elapsed: Duration,
    ) {
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                direction: route.direction,
                listener: route.listener.clone(),
                policy: route.policy.clone(),
                route: route.route.clone(),
                status_class,
                reason,
            })
            .inc();
        self.latency
            .get_or_create(route)
            .observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self, listener: &str, protocol: &'static str) {
        self.connections
            .get_or_create(&ConnLabels {
                listener: listener.into(),
                protocol,
            })
            .inc();
    }

    pub fn connections_active(&self, listener: &str) -> Gauge {
        self.connections_active
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .clone()
    }

    pub fn connection_rejected(&self, listener: &str) {
        self.connections_rejected
            .get_or_create(&ListenerLabels {
                listener: listener.into(),
            })
            .inc();
    }

    pub fn upstream_connection(&self, result: &'static str) {
        self.upstream_connections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn config_reload(&self, applied: bool, generation: u64) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        if applied {
            self.config_generation.set(generation as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
