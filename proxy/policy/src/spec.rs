//! The policy document as users write it (YAML) — `ResiliencePolicy`, `apiVersion:
//! bulwark.dev/v1`. Every struct refuses unknown fields so that a typo (`timout:`) is an error
//! that names the field, never a setting silently ignored. Semantic checks live in
//! `validate.rs`; this module is only the shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

pub const API_VERSION: &str = "bulwark.dev/v1";
pub const KIND: &str = "ResiliencePolicy";

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResiliencePolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

impl ResiliencePolicy {
    /// `namespace/name`, the identity used in errors, metrics and the admin API.
    pub fn id(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// True when `route` names one of the policy's routes, or is `default` (its defaults).
    pub fn has_route(&self, route: &str) -> bool {
        route == crate::compile::DEFAULT_ROUTE || self.spec.routes.iter().any(|r| r.name == route)
    }

    /// The `faults` block of a route (`default`: the policy's defaults), if it has one.
    pub fn route_faults(&self, route: &str) -> Option<&FaultSpec> {
        if route == crate::compile::DEFAULT_ROUTE {
            return self.spec.defaults.faults.as_ref();
        }
        self.spec.routes.iter().find(|r| r.name == route).and_then(|r| r.faults.as_ref())
    }

    /// Sets (or with `None` removes) the `faults` block of a route; route `default` is the
    /// policy's `defaults`. Errs when the policy has no such route.
    pub fn set_route_faults(&mut self, route: &str, faults: Option<FaultSpec>) -> Result<(), String> {
        if route == crate::compile::DEFAULT_ROUTE {
            self.spec.defaults.faults = faults;
            return Ok(());
        }
        let id = self.id();
        let r = self
            .spec
            .routes
            .iter_mut()
            .find(|r| r.name == route)
            .ok_or_else(|| format!("route {route:?} in policy {id}"))?;
        r.faults = faults;
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    pub target: TargetSpec,
    /// Settings for requests that match no route, and the base every route inherits from.
    #[serde(default, skip_serializing_if = "RouteSettings::is_empty")]
    pub defaults: RouteSettings,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "UpstreamSpec::is_empty")]
    pub upstream: UpstreamSpec,
    /// Faults for opaque TCP connections of this target (TCP has no routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_faults: Option<TcpFaultSpec>,
}

/// Which traffic the policy governs. At least one selector must be given; `ports` and
/// `direction` narrow it further.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetSpec {
    /// Host name matched against the request's authority (HTTP) or an explicit listener's
    /// upstream host. `*.example.com` matches any subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Name of an explicit listener in the proxy's bootstrap config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// CIDRs matched against the original destination address of captured traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Destination ports; empty means any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Outbound,
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The per-route settings that `defaults` provides and each route may override field by field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PrioritySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrencySpec>,
}

/// What the proxy answers instead of refusing, for the reasons in `on`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FallbackSpec {
    /// Refusals answered with the fallback; default: circuit-open, bulkhead-full,
    /// concurrency-limited, timeout, no-healthy-upstream, upstream-connect-failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<Token>>,
    /// For HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<FallbackResponseSpec>,
    /// For gRPC requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcFallbackSpec>,
    /// Another upstream (`host:port`: a cache, a replica, a degraded service) a request without
    /// a body is sent to once, before `response`/`grpc` are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Bounds the try to `upstream` when the route's request timeout leaves nothing (the
    /// refusal was that timeout) or the route has none; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FallbackResponseSpec {
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// An absolute path on the proxy's own disk, read when the policy is put in force (instead
    /// of `body`). Not accepted by a control plane, which cannot see the proxies' disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
}

fn ok_status() -> u16 {
    200
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcFallbackSpec {
    /// 0 (OK) answers with `responseBase64` (or no message); any other code is an error the
    /// client sees.
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// With status 0: the response message the client receives, its protobuf encoding in
    /// base64 (`echo -n ... | protoc --encode=pkg.Reply file.proto | base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_base64: Option<String>,
}

/// Ordered classes of a route's requests (highest first). A request takes the first class whose
/// `match` holds (a class without `match` takes every request that reaches it; one that matches
/// none is of the lowest class). The route's bulkhead, rate limit and adaptive limit keep each
/// class's `reservePercent` of their capacity for it and the classes above it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrioritySpec {
    pub classes: Vec<PriorityClassSpec>,
    /// `dry-run`: classes are told and counted, what their reserves would refuse is counted,
    /// and the stages admit as if there were no classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StageMode>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PriorityClassSpec {
    pub name: String,
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<ClassMatchSpec>,
    /// Share of each stage's capacity that requests of lower classes may not take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_percent: Option<f64>,
}

/// Every condition given must hold; the same forms as a route match, and the caller's mesh
/// identity as faults match it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClassMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// `NAME.NAMESPACE` or `*.NAMESPACE`, read from `x-bulwark-client-id`; any one matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

/// A concurrency limit found by measurement: the gradient of the minimum latency (measured
/// at `minLimit` every `minRttInterval`) over the latency sampled each `sampleWindow` moves the
/// limit between `minLimit` and `maxLimit`. Requests over it wait in a queue by class, or are
/// refused (`concurrency-limited`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdaptiveConcurrencySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_window: Option<Dur>,
    /// The latency of a window is this percentile of its requests'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percentile: Option<f64>,
    /// Latency above the minimum that still counts as unloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_interval: Option<Dur>,
    /// Requests sampled at `minLimit` to measure the minimum latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_requests: Option<u32>,
    /// Spread of `minRttInterval`, so that proxies do not all probe at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Dur>,
    /// `dry-run`: the limit is found and what it would refuse is counted, nothing is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StageMode>,
}

impl RouteSettings {
    fn is_empty(&self) -> bool {
        *self == RouteSettings::default()
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
    // The same settings as `RouteSettings`; spelled out because serde's `flatten` cannot be
    // combined with `deny_unknown_fields`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<PrioritySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrencySpec>,
}

impl RouteSpec {
    pub fn settings(&self) -> RouteSettings {
        RouteSettings {
            timeout: self.timeout.clone(),
            retries: self.retries.clone(),
            circuit_breaker: self.circuit_breaker.clone(),
            bulkhead: self.bulkhead.clone(),
            rate_limit: self.rate_limit.clone(),
            faults: self.faults.clone(),
            fallback: self.fallback.clone(),
            priority: self.priority.clone(),
            adaptive_concurrency: self.adaptive_concurrency.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// Exact path (without query string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Regular expression that must match the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// Request hosts (authority without port); `*.example.com` allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Exactly one of `exact`, `regex` or `present` must be set.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutSpec {
    /// Whole exchange, retries included: first request byte to last response header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// One attempt upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Dur>,
    /// Longest silence on a stream: waiting for response headers or between body frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// The protocol spoken to the upstream, whatever the client speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
}

impl UpstreamSpec {
    fn is_empty(&self) -> bool {
        *self == UpstreamSpec::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolSpec {
    /// Connections open at once to each upstream endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Connections are not reused past this age, so a moved upstream is followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierSpec {
    /// On unless `false`: outlier detection runs by default (see `compile::DEFAULT_OUTLIER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Consecutive 5xx responses, connect failures or resets that eject an endpoint.
    #[serde(rename = "consecutive5xx", default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Two endpoints drawn at random; the one with fewer requests in flight wins.
    #[default]
    LeastRequest,
    RoundRobin,
}

/// What the proxy speaks to an upstream. `auto` speaks HTTP/2 only where the upstream is known
/// to: the client is gRPC, or an earlier HTTP/2 connection to that endpoint succeeded; HTTP/1.1
/// otherwise. The proxy translates between the client's protocol and this one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    #[default]
    Auto,
    Http1,
    Http2,
}

/// Retries of a failed attempt. `attempts` counts retries, not tries: `attempts: 2` allows up to
/// three tries.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    pub attempts: u32,
    /// Conditions: `connect-failure`, `reset`, `per-try-timeout`, `5xx`, `gateway-error` (502,
    /// 503, 504), an HTTP status such as `503`, or a gRPC status name such as `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<Token>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// Largest request body kept to send again; a larger body is sent once, without retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackoffSpec {
    pub base: Dur,
    pub max: Dur,
}

/// Retries may be at most `percent` of the requests of the last 10 seconds, plus
/// `minPerSecond` so that low traffic can still retry.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetSpec {
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_call: Option<SlowCallSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_requests: Option<u32>,
    /// Outcomes counted as failures (same vocabulary as `retries.on`); default
    /// `[5xx, connect-failure, reset, timeout]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_on: Option<Vec<Token>>,
    /// `dry-run`: the stage judges and counts what it would refuse, and refuses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StageMode>,
}

/// Whether a guarding stage refuses (`enforce`, the default) or only counts what it would
/// refuse (`dry-run`), to size a limit on real traffic before enforcing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageMode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlowCallSpec {
    pub over: Dur,
    pub rate_percent: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BulkheadSpec {
    pub max_concurrent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Dur>,
    /// `dry-run`: the stage judges and counts what it would refuse, and refuses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StageMode>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    pub per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<PerClientSpec>,
    /// `dry-run`: the stage judges and counts what it would refuse, and refuses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<StageMode>,
}

/// A bucket per client, keyed by a request header or the source IP (exactly one).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PerClientSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
    pub per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Clients tracked at once; the least recently seen are forgotten beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<u32>,
}

/// A list item written as a word or a number: `gateway-error`, `503`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Token(pub String);

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match yaml_serde::Value::deserialize(d)? {
            yaml_serde::Value::String(s) => Ok(Token(s)),
            yaml_serde::Value::Number(n) => Ok(Token(n.to_string())),
            other => Err(serde::de::Error::custom(format!("expected a word or a number, found {other:?}"))),
        }
    }
}

/// Injected failures for a route's HTTP requests. Each kind is drawn on its own, per request,
/// with its `percent` (decimals allowed down to 0.0001, one in a million).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Held before the request is sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    /// Answered by the proxy; the request never reaches the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
    /// Held after the upstream answered, before the response headers go to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_delay: Option<DelaySpec>,
    /// The response body sent at most this fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<BandwidthSpec>,
    /// Limits the faults to some requests; without it every request of the route may be hit.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    pub matches: Option<FaultMatchSpec>,
    /// RFC 3339 time after which the proxy drops these faults by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Like `expiresAt`, counted from when the proxy first applied these faults.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "for")]
    pub for_: Option<Dur>,
    /// Set by the control plane on the faults of a running ChaosExperiment (its
    /// `namespace/name`): the proxy tags what they inject with it and drops them when its own
    /// traffic crosses the experiment's guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
}

/// `fixed`, a `range` drawn uniformly, or a distribution given by its median and p99.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal: Option<QuantilesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lognormal: Option<QuantilesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pareto: Option<QuantilesSpec>,
    pub percent: f64,
}

/// A delay distribution by two of its quantiles.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuantilesSpec {
    pub median: Dur,
    pub p99: Dur,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RangeSpec {
    pub min: Dur,
    pub max: Dur,
}

/// Exactly one of `httpStatus` and `grpcStatus`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BandwidthSpec {
    pub bytes_per_second: u64,
    #[serde(default = "hundred")]
    pub percent: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultMatchSpec {
    /// Every header condition must hold (same form as route header matches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// A stable share of clients (by source IP): the same clients are hit for the whole experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_percent: Option<f64>,
    /// Mesh identities of the calling workload (`NAME.NAMESPACE`, or `*.NAMESPACE` for a whole
    /// namespace), as the caller's proxy states them in `x-bulwark-client-id`; any one matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

/// Faults for opaque TCP connections; each drawn per connection with its `percent`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpFaultSpec {
    /// Each chunk read from either side is held this long before it is passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<TcpDelaySpec>,
    /// Each direction passed on at most this fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthSpec>,
    /// Reset (RST) the connection at once, or after `afterBytes` bytes in either direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<TcpResetSpec>,
    /// Accept and never answer: nothing is sent upstream, nothing comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackhole: Option<PercentSpec>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpDelaySpec {
    pub per_chunk: Dur,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpResetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_bytes: Option<u64>,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PercentSpec {
    pub percent: f64,
}
