//! The proxy's Prometheus metrics, served on :15020/metrics. Every label value comes from
//! configuration (listener, policy and route names) or a fixed vocabulary (direction, status
//! class, reason), never from request data, so cardinality is bounded by the config.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::reason::Reason;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub policy: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerStateLabels {
    policy: String,
    route: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    policy: String,
    route: String,
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    policy: String,
    route: String,
    scope: &'static str,
}

/// Handles for one route's stage metrics, made once when the route's state is created so the
/// request path only touches atomics.
#[derive(Clone)]
pub struct StageMetrics {
    pub bulkhead_in_flight: Gauge,
    pub bulkhead_queued: Gauge,
    pub bulkhead_rejected: Counter,
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub rate_limited_route: Counter,
    pub rate_limited_client: Counter,
    breaker_closed: Gauge,
    breaker_open: Gauge,
    breaker_half_open: Gauge,
    transitions: Family<TransitionLabels, Counter>,
    labels: StageLabels,
}

impl StageMetrics {
    /// The number of this route's breakers in `state`.
    pub fn breakers_in(&self, state: crate::stage::breaker::State) -> &Gauge {
        use crate::stage::breaker::State;
        match state {
            State::Closed => &self.breaker_closed,
            State::Open => &self.breaker_open,
            State::HalfOpen => &self.breaker_half_open,
        }
    }

    pub fn transition(&self, from: crate::stage::breaker::State, to: crate::stage::breaker::State) {
        self.breakers_in(from).dec();
        self.breakers_in(to).inc();
        self.transitions
            .get_or_create(&TransitionLabels {
                policy: self.labels.policy.clone(),
                route: self.labels.route.clone(),
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
    }
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
    breaker_state: Family<BreakerStateLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    bulkhead_in_flight: Family<StageLabels, Gauge>,
    bulkhead_queued: Family<StageLabels, Gauge>,
    bulkhead_rejected: Family<StageLabels, Counter>,
    retries: Family<StageLabels, Counter>,
    retry_budget_exhausted: Family<StageLabels, Counter>,
    rate_limited: Family<ScopeLabels, Counter>,
    ejections: Counter,
    access_log_dropped: Counter,
    spans_dropped: Counter,
    spans_exported: Counter,
    resident_memory: Gauge,
    open_fds: Gauge,
    discovery: Family<ResultLabels, Counter>,
    control_plane_connected: Gauge,
    faults_injected: Family<FaultLabels, Counter>,
    faults_expired: Family<StageLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    policy: String,
    route: String,
    kind: &'static str,
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
        let latency: HistogramFamily = Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
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
        registry.register("config_reloads", "Configuration reloads, applied or rejected", config_reloads.clone());
        let config_generation = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_generation",
            "Generation of the policy snapshot in force (1 at start, +1 per applied reload or runtime fault change)",
            config_generation.clone(),
        );
        let breaker_state = Family::<BreakerStateLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breakers of a route in each state (closed, open, half-open)",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register("breaker_transitions", "Circuit breaker state changes", breaker_transitions.clone());
        let bulkhead_in_flight = Family::<StageLabels, Gauge>::default();
        registry.register("bulkhead_in_flight", "Requests holding a bulkhead slot", bulkhead_in_flight.clone());
        let bulkhead_queued = Family::<StageLabels, Gauge>::default();
        registry.register("bulkhead_queued", "Requests waiting for a bulkhead slot", bulkhead_queued.clone());
        let bulkhead_rejected = Family::<StageLabels, Counter>::default();
        registry.register(
            "bulkhead_rejected",
            "Requests refused because the bulkhead and its queue were full",
            bulkhead_rejected.clone(),
        );
        let retries = Family::<StageLabels, Counter>::default();
        registry.register("retries", "Retries sent upstream", retries.clone());
        let retry_budget_exhausted = Family::<StageLabels, Counter>::default();
        registry.register(
            "retry_budget_exhausted",
            "Retries not sent because the retry budget was spent",
            retry_budget_exhausted.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by bucket (route or client)",
            rate_limited.clone(),
        );
        let ejections = Counter::default();
        registry.register("outlier_ejections", "Upstream endpoints ejected by outlier detection", ejections.clone());
        let faults_injected = Family::<FaultLabels, Counter>::default();
        registry.register(
            "faults_injected",
            "Faults injected, by kind (abort, delay, response-delay, bandwidth, tcp-*)",
            faults_injected.clone(),
        );
        let faults_expired = Family::<StageLabels, Counter>::default();
        registry.register(
            "faults_expired",
            "Faults the proxy dropped by itself when they expired",
            faults_expired.clone(),
        );
        let discovery = Family::<ResultLabels, Counter>::default();
        registry.register(
            "discovery_snapshots",
            "Control-plane snapshots acknowledged (ack) or rejected (nack)",
            discovery.clone(),
        );
        let control_plane_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while the discovery stream to the control plane is open",
            control_plane_connected.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout could not keep up",
            access_log_dropped.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the proxy process",
            resident_memory.clone(),
        );
        let open_fds = Gauge::default();
        registry.register("process_open_fds", "File descriptors the proxy process has open", open_fds.clone());
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: export queue full, collector absent, slow or refusing",
            spans_dropped.clone(),
        );
        let spans_exported = Counter::default();
        registry.register("trace_spans_exported", "Spans the collector accepted", spans_exported.clone());
        Metrics {
            access_log_dropped,
            spans_dropped,
            spans_exported,
            resident_memory,
            open_fds,
            discovery,
            control_plane_connected,
            faults_injected,
            faults_expired,
            ejections,
            breaker_state,
            breaker_transitions,
            bulkhead_in_flight,
            bulkhead_queued,
            bulkhead_rejected,
            retries,
            retry_budget_exhausted,
            rate_limited,
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

    pub fn request(&self, route: &RouteLabels, status: u16, reason: Option<Reason>, elapsed: Duration) {
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
        self.latency.get_or_create(route).observe(elapsed.as_secs_f64());
    }

    pub fn connection_opened(&self, listener: &str, protocol: &'static str) {
        self.connections.get_or_create(&ConnLabels { listener: listener.into(), protocol }).inc();
    }

    pub fn connections_active(&self, listener: &str) -> Gauge {
        self.connections_active.get_or_create(&ListenerLabels { listener: listener.into() }).clone()
    }

    pub fn connection_rejected(&self, listener: &str) {
        self.connections_rejected.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    pub fn upstream_connection(&self, result: &'static str) {
        self.upstream_connections.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.config_generation.set(generation as i64);
    }

    /// Counter handles for one route's faults.
    pub fn faults(&self, policy: &str, route: &str) -> crate::stage::fault::FaultMetrics {
        let kind = |kind| self.fault_counter(policy, route, kind);
        crate::stage::fault::FaultMetrics {
            abort: kind("abort"),
            delay: kind("delay"),
            response_delay: kind("response-delay"),
            bandwidth: kind("bandwidth"),
            expired: self
                .faults_expired
                .get_or_create(&StageLabels { policy: policy.into(), route: route.into() })
                .clone(),
        }
    }

    pub fn fault_counter(&self, policy: &str, route: &str, kind: &'static str) -> Counter {
        self.faults_injected.get_or_create(&FaultLabels { policy: policy.into(), route: route.into(), kind }).clone()
    }

    /// (dropped, exported) span counters.
    pub fn span_counters(&self) -> (Counter, Counter) {
        (self.spans_dropped.clone(), self.spans_exported.clone())
    }

    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// Reads RSS and open descriptors from /proc (at scrape time; Linux only).
    pub fn refresh_process(&self) {
        let rss_kb = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        });
        if let Some(kb) = rss_kb {
            self.resident_memory.set(kb * 1024);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
    }

    pub fn discovery(&self, acked: bool) {
        let result = if acked { "ack" } else { "nack" };
        self.discovery.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn control_plane_connected(&self, connected: bool) {
        self.control_plane_connected.set(i64::from(connected));
    }

    pub fn ejection(&self) {
        self.ejections.inc();
    }

    pub fn stage(&self, policy: &str, route: &str) -> StageMetrics {
        let labels = StageLabels { policy: policy.to_string(), route: route.to_string() };
        let state = |state| {
            self.breaker_state
                .get_or_create(&BreakerStateLabels {
                    policy: labels.policy.clone(),
                    route: labels.route.clone(),
                    state,
                })
                .clone()
        };
        let scope = |scope| {
            self.rate_limited
                .get_or_create(&ScopeLabels { policy: labels.policy.clone(), route: labels.route.clone(), scope })
                .clone()
        };
        StageMetrics {
            bulkhead_in_flight: self.bulkhead_in_flight.get_or_create(&labels).clone(),
            bulkhead_queued: self.bulkhead_queued.get_or_create(&labels).clone(),
            bulkhead_rejected: self.bulkhead_rejected.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create(&labels).clone(),
            rate_limited_route: scope("route"),
            rate_limited_client: scope("client"),
            breaker_closed: state("closed"),
            breaker_open: state("open"),
            breaker_half_open: state("half-open"),
            transitions: self.breaker_transitions.clone(),
            labels,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
