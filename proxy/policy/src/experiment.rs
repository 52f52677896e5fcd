//! Guarded chaos experiments (`kind: ChaosExperiment`): the schema, its validation, and the
//! arithmetic of the steady-state guard that the control plane (over every proxy) and each proxy
//! (over its own traffic) both evaluate, so that they judge the same numbers the same way.
//!
//! A proxy measures an observed route as cumulative counters — requests, errors, and a latency
//! histogram over fixed bucket bounds ([`LATENCY_BOUNDS_MS`]) — and reports them; a window is
//! the difference of two reports, and a percentile the upper bound of the bucket it falls in
//! (never lower than the truth, so a guard never passes on rounding).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::Dur;
use crate::error::{Errors, ValidationError};
use crate::spec::{AbortSpec, BandwidthSpec, DelaySpec, HeaderMatchSpec, Metadata, Token, API_VERSION};
use crate::stages::Condition;

pub const KIND: &str = "ChaosExperiment";
/// The longest an experiment may run unless the control plane is given another cap.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(3600);
pub const DEFAULT_EVALUATE_EVERY: Duration = Duration::from_secs(1);
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
const MIN_EVALUATE_EVERY: Duration = Duration::from_millis(100);
const MAX_EVALUATE_EVERY: Duration = Duration::from_secs(60);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const MAX_FAULTS: usize = 16;
const MAX_TEXT: usize = 4096;

/// What `errorsOn` counts when not set: the proxy's own refusals always, and the responses
/// the breaker counts by default (5xx, and the gRPC failures answered trailers-only).
pub const DEFAULT_ERRORS_ON: [Condition; 6] = [
    Condition::Any5xx,
    Condition::Grpc(14),
    Condition::Grpc(4),
    Condition::Grpc(13),
    Condition::Grpc(2),
    Condition::Grpc(8),
];

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChaosExperiment {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ExperimentSpec,
}

impl ChaosExperiment {
    pub fn id(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExperimentSpec {
    pub hypothesis: String,
    pub faults: Vec<ExperimentFault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    pub duration: Dur,
    pub steady_state: SteadyState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Preflight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_every: Option<Dur>,
}

/// One route fault, of the kinds a route's `faults` takes (its `match` is the blast radius's).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExperimentFault {
    pub target: RouteTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_delay: Option<DelaySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<BandwidthSpec>,
}

/// A policy (`namespace/name`) and a route of it; without a route, the policy's default route.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTarget {
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl RouteTarget {
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or(crate::compile::DEFAULT_ROUTE)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlastRadius {
    /// Share of the fault's own share: a 50% delay in a 10% radius hits 5% of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Only callers of these mesh identities (`NAME.NAMESPACE`, `*.NAMESPACE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Only requests with these headers (the route match form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SteadyState {
    pub observe: Observe,
    /// `1%`, or a fraction such as `0.01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Token>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<LatencyBounds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
    /// What counts as an error besides the proxy's own refusals; the breaker's `failureOn` words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_on: Option<Vec<Token>>,
    /// A window with fewer requests is not judged (too few to tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Observe {
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBounds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<Dur>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Preflight {
    pub baseline: Dur,
}

/// The steady state, checked: bounds as numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    /// A fraction in (0, 1].
    pub max_error_rate: Option<f64>,
    /// (quantile, bound) for p50 / p95 / p99.
    pub max_latency: Vec<(f64, Duration)>,
    pub window: Duration,
    pub errors_on: Vec<Condition>,
    pub min_requests: u64,
}

/// A bound crossed: which, what was seen, what was allowed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// `errorRate`, `p50`, `p95`, `p99`.
    pub bound: String,
    pub observed: f64,
    pub limit: f64,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.bound == "errorRate" {
            write!(f, "error rate {:.2}% over the bound {:.2}%", self.observed * 100.0, self.limit * 100.0)
        } else {
            write!(f, "{} {:.0}ms over the bound {:.0}ms", self.bound, self.observed, self.limit)
        }
    }
}

impl Guard {
    /// The bounds `counts` crosses (none when there are too few requests to tell).
    pub fn breaches(&self, counts: &Counts) -> Vec<Breach> {
        let mut out = Vec::new();
        if counts.requests < self.min_requests.max(1) {
            return out;
        }
        if let Some(limit) = self.max_error_rate {
            let rate = counts.error_rate();
            if rate > limit {
                out.push(Breach { bound: "errorRate".into(), observed: rate, limit });
            }
        }
        for &(q, limit) in &self.max_latency {
            let observed = counts.quantile_ms(q);
            let limit_ms = limit.as_secs_f64() * 1000.0;
            if observed > limit_ms {
                out.push(Breach { bound: quantile_name(q).into(), observed, limit: limit_ms });
            }
        }
        out
    }

    /// Why a baseline is too close to the bounds to start: half the error budget used, or
    /// latency at 80% of its bound.
    pub fn preflight_refusal(&self, baseline: &Counts) -> Option<String> {
        if let Some(limit) = self.max_error_rate {
            let rate = baseline.error_rate();
            if baseline.requests > 0 && rate >= limit / 2.0 {
                return Some(format!(
                    "the baseline error rate {:.2}% already uses half the error budget ({:.2}%)",
                    rate * 100.0,
                    limit * 100.0
                ));
            }
        }
        for &(q, limit) in &self.max_latency {
            let observed = baseline.quantile_ms(q);
            let limit_ms = limit.as_secs_f64() * 1000.0;
            if baseline.requests > 0 && observed >= 0.8 * limit_ms {
                return Some(format!(
                    "the baseline {} {observed:.0}ms is already at 80% of its bound {limit_ms:.0}ms",
                    quantile_name(q)
                ));
            }
        }
        None
    }
}

pub fn quantile_name(q: f64) -> &'static str {
    if q <= 0.5 {
        "p50"
    } else if q <= 0.95 {
        "p95"
    } else {
        "p99"
    }
}

/// Upper bounds of the latency histogram's buckets, in milliseconds; one more bucket holds
/// what is slower than the last.
pub const LATENCY_BOUNDS_MS: [u64; 28] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500,
    10_000, 15_000, 30_000, 60_000,
];

/// The bucket a latency falls in.
pub fn bucket(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1000.0;
    LATENCY_BOUNDS_MS.iter().position(|&b| ms <= b as f64).unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Requests, errors and latencies of some traffic: cumulative as reported, or a window (the
/// difference of two reports), or the sum over proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// One count per bucket of [`LATENCY_BOUNDS_MS`], and the overflow bucket last.
    pub buckets: Vec<u64>,
}

impl Counts {
    /// `self - earlier`, saturating (a proxy that restarted reports from zero again).
    pub fn since(&self, earlier: &Counts) -> Counts {
        if self.requests < earlier.requests {
            return self.clone();
        }
        Counts {
            requests: self.requests - earlier.requests,
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile in milliseconds: the upper bound of the bucket it falls in (the
    /// overflow bucket reads as twice the last bound); 0 with no requests.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return LATENCY_BOUNDS_MS.get(i).map_or(2.0 * 60_000.0, |b| *b as f64);
            }
        }
        2.0 * 60_000.0
    }
}

/// `1%`, `0.5%` or a fraction `0.01`: a fraction in (0, 1].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{t:?} is not a rate: write e.g. 1% or 0.01"))?;
    if !(value > 0.0 && value <= 1.0) {
        return Err(format!("{t:?} is not a rate in (0%, 100%]"));
    }
    Ok(value)
}

/// Reads and checks every ChaosExperiment document of `text`, each error with its field path.
pub fn parse(text: &str, source: &str) -> Result<Vec<ChaosExperiment>, Vec<ValidationError>> {
    let docs = read(text, source)?;
    let errors: Vec<ValidationError> = docs.iter().flat_map(|e| validate(e, DEFAULT_MAX_DURATION)).collect();
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Reads every ChaosExperiment document of `text`: shape errors (with what `validate` says of
/// the rest of such a document) refuse it; a well-formed one is the caller's to `validate`.
pub fn read(text: &str, source: &str) -> Result<Vec<ChaosExperiment>, Vec<ValidationError>> {
    if text.len() > crate::document::MAX_DOCUMENT_BYTES {
        return Err(vec![ValidationError {
            policy: source.into(),
            path: String::new(),
            message: format!("{} bytes; the limit is {}", text.len(), crate::document::MAX_DOCUMENT_BYTES),
        }]);
    }
    let (out, mut errors) = crate::document::each_document(text, source, |value, label| {
        crate::document::every_error(value, label, |e: &ChaosExperiment| validate(e, DEFAULT_MAX_DURATION))
    });
    if out.is_empty() && errors.is_empty() {
        errors.push(ValidationError {
            policy: source.into(),
            path: String::new(),
            message: "no ChaosExperiment in it".into(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Checks what can be checked without the store (policies and routes are the control plane's
/// to check), with `max_duration` the longest an experiment may run.
pub fn validate(e: &ChaosExperiment, max_duration: Duration) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let mut errs = Errors { policy: e.id(), out: &mut out };
    if e.api_version != API_VERSION {
        errs.push("apiVersion", format!("{:?} is not supported; use {API_VERSION:?}", e.api_version));
    }
    if e.kind != KIND {
        errs.push("kind", format!("{:?} is not {KIND}", e.kind));
    }
    crate::validate::name(&mut errs, "metadata.name", &e.metadata.name);
    crate::validate::name(&mut errs, "metadata.namespace", &e.metadata.namespace);
    let s = &e.spec;
    if s.hypothesis.trim().is_empty() {
        errs.push("spec.hypothesis", "say what should stay true");
    } else if s.hypothesis.len() > MAX_TEXT {
        errs.push("spec.hypothesis", format!("at most {MAX_TEXT} bytes"));
    }
    if s.faults.is_empty() {
        errs.push("spec.faults", "an experiment injects at least one fault");
    } else if s.faults.len() > MAX_FAULTS {
        errs.push("spec.faults", format!("at most {MAX_FAULTS} faults"));
    }
    for (i, f) in s.faults.iter().enumerate() {
        let at = format!("spec.faults[{i}]");
        policy_ref(&mut errs, &format!("{at}.target.policy"), &f.target.policy);
        if f.delay.is_none() && f.abort.is_none() && f.response_delay.is_none() && f.response_bandwidth.is_none() {
            errs.push(at.clone(), "sets no fault: set delay, abort, responseDelay or responseBandwidth");
        }
        for (j, g) in s.faults.iter().enumerate().take(i) {
            if g.target.policy == f.target.policy && g.target.route_name() == f.target.route_name() {
                errs.push(format!("{at}.target"), format!("the same route as spec.faults[{j}]: put both in one fault"));
            }
        }
    }
    let d = s.duration.get();
    if d.is_zero() {
        errs.push("spec.duration", "must be greater than zero");
    } else if d > max_duration {
        errs.push(
            "spec.duration",
            format!("{} is over the cap of {}", crate::duration::format(d), crate::duration::format(max_duration)),
        );
    }
    if let Some(b) = &s.blast_radius {
        if let Some(p) = b.percent {
            if !(p > 0.0 && p <= 100.0) {
                errs.push("spec.blastRadius.percent", format!("{p} is not a percentage in (0, 100]"));
            }
        }
        for (i, id) in b.identities.iter().enumerate() {
            if let Err(m) = crate::faults::IdentityPattern::parse(id) {
                errs.push(format!("spec.blastRadius.identities[{i}]"), m);
            }
        }
    }
    let every = evaluate_every(e);
    if every < MIN_EVALUATE_EVERY || every > MAX_EVALUATE_EVERY {
        errs.push("spec.evaluateEvery", "must be between 100ms and 1m");
    }
    let guard = guard_of(&mut errs, &s.steady_state);
    if guard.window < every {
        errs.push("spec.steadyState.window", "must be at least evaluateEvery");
    }
    if let Some(p) = &s.preflight {
        let b = p.baseline.get();
        if b < every || b > MAX_WINDOW {
            errs.push("spec.preflight.baseline", "must be between evaluateEvery and 1h");
        }
    }
    out
}

fn policy_ref(errs: &mut Errors<'_>, path: &str, policy: &str) {
    match policy.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {}
        _ => errs.push(path, format!("{policy:?} is not NAMESPACE/NAME")),
    }
}

pub fn evaluate_every(e: &ChaosExperiment) -> Duration {
    e.spec.evaluate_every.map_or(DEFAULT_EVALUATE_EVERY, Dur::get)
}

/// The steady state as a guard; errors pushed under `spec.steadyState`.
fn guard_of(errs: &mut Errors<'_>, s: &SteadyState) -> Guard {
    let at = "spec.steadyState";
    policy_ref(errs, &format!("{at}.observe.policy"), &s.observe.policy);
    let max_error_rate = s
        .max_error_rate
        .as_ref()
        .and_then(|r| parse_rate(&r.0).map_err(|m| errs.push(format!("{at}.maxErrorRate"), m)).ok());
    let mut max_latency = Vec::new();
    if let Some(l) = &s.max_latency {
        for (q, name, bound) in [(0.5, "p50", l.p50), (0.95, "p95", l.p95), (0.99, "p99", l.p99)] {
            let Some(bound) = bound else { continue };
            if bound.get() < Duration::from_millis(1) {
                errs.push(format!("{at}.maxLatency.{name}"), "must be at least 1ms");
            }
            max_latency.push((q, bound.get()));
        }
        if max_latency.is_empty() {
            errs.push(format!("{at}.maxLatency"), "set p50, p95 or p99");
        }
    }
    if max_error_rate.is_none() && max_latency.is_empty() && s.max_error_rate.is_none() {
        errs.push(at, "sets no bound: set maxErrorRate or maxLatency");
    }
    let window = s.window.map_or(DEFAULT_WINDOW, Dur::get);
    if window > MAX_WINDOW {
        errs.push(format!("{at}.window"), "must be at most 1h");
    }
    let errors_on =
        crate::stages::conditions(errs, &format!("{at}.errorsOn"), s.errors_on.as_ref(), &DEFAULT_ERRORS_ON);
    let min_requests = s.min_requests.unwrap_or(20);
    if min_requests > 1_000_000 {
        errs.push(format!("{at}.minRequests"), "must be at most 1000000");
    }
    Guard { max_error_rate, max_latency, window, errors_on, min_requests }
}

/// The guard of an experiment that validated.
pub fn guard(s: &SteadyState) -> Guard {
    let mut sink = Vec::new();
    guard_of(&mut Errors { policy: String::new(), out: &mut sink }, s)
}

/// Whether a response counts as an error for the guard: the proxy's own answer (`refused`),
/// or a status or gRPC status `errors_on` names.
pub fn is_error(errors_on: &[Condition], status: u16, grpc: Option<u16>, refused: bool) -> bool {
    refused
        || errors_on.iter().any(|c| match c {
            Condition::Any5xx => (500..600).contains(&status),
            Condition::GatewayError => matches!(status, 502..=504),
            Condition::Status(s) => *s == status,
            Condition::Grpc(g) => grpc == Some(*g),
            // Transport failures reach the client as the proxy's own answer: counted above.
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: bulwark.dev/v1
kind: ChaosExperiment
metadata: { name: slow-payments, namespace: shop }
spec:
  hypothesis: checkout keeps under 1% errors and 800ms p99 when payments slows down
  faults:
    - target: { policy: shop/payments, route: charge }
      delay: { fixed: 300ms, percent: 50 }
  blastRadius: { percent: 10 }
  duration: 5m
  steadyState:
    observe: { policy: shop/checkout }
    maxErrorRate: 1%
    maxLatency: { p99: 800ms }
    window: 30s
  preflight: { baseline: 1m }
  evaluateEvery: 1s
"#;

    #[test]
    fn the_example_of_the_docs_is_accepted() {
        let e = parse(GOOD, "test").unwrap().remove(0);
        assert_eq!(e.id(), "shop/slow-payments");
        let g = guard(&e.spec.steady_state);
        assert_eq!(g.max_error_rate, Some(0.01));
        assert_eq!(g.max_latency, vec![(0.99, Duration::from_millis(800))]);
        assert_eq!(g.window, Duration::from_secs(30));
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let bad = GOOD
            .replace("duration: 5m", "duration: 2h")
            .replace("maxErrorRate: 1%", "maxErrorRate: 140%")
            .replace("percent: 10 }", "percent: 0 }")
            .replace("policy: shop/payments", "policy: payments")
            .replace("evaluateEvery: 1s", "evaluateEvery: 1ms");
        let errors = parse(&bad, "test").unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "spec.duration",
            "spec.steadyState.maxErrorRate",
            "spec.blastRadius.percent",
            "spec.faults[0].target.policy",
            "spec.evaluateEvery",
        ] {
            assert!(paths.contains(&p), "{p} not in {errors:#?}");
        }
        let missing = parse(&GOOD.replace("  duration: 5m\n", ""), "test").unwrap_err();
        assert!(missing[0].message.contains("missing field `duration`"), "{missing:?}");
        let unknown = parse(&GOOD.replace("window: 30s", "windw: 30s"), "test").unwrap_err();
        assert_eq!(unknown[0].path, "spec.steadyState.windw");
        assert!(parse("---\n", "empty").unwrap_err()[0].message.contains("no ChaosExperiment"));
    }

    #[test]
    fn windows_percentiles_and_bounds() {
        let mut a = Counts { requests: 0, errors: 0, buckets: vec![0; LATENCY_BOUNDS_MS.len() + 1] };
        for (ms, error) in [(4, false), (4, false), (40, false), (900, true)] {
            a.requests += 1;
            a.errors += u64::from(error);
            a.buckets[bucket(Duration::from_millis(ms))] += 1;
        }
        assert_eq!(a.quantile_ms(0.5), 5.0, "the bucket's upper bound");
        assert_eq!(a.quantile_ms(0.99), 1000.0);
        let later = Counts { requests: 10, errors: 1, buckets: a.buckets.iter().map(|b| b * 3).collect() };
        let w = later.since(&a);
        assert_eq!((w.requests, w.errors), (6, 0));
        let g = Guard {
            max_error_rate: Some(0.1),
            max_latency: vec![(0.99, Duration::from_millis(800))],
            window: Duration::from_secs(1),
            errors_on: DEFAULT_ERRORS_ON.to_vec(),
            min_requests: 1,
        };
        let b = g.breaches(&a);
        assert_eq!(b.iter().map(|b| b.bound.as_str()).collect::<Vec<_>>(), ["errorRate", "p99"]);
        assert!(g.preflight_refusal(&a).unwrap().contains("half the error budget"));
        assert!(Guard { min_requests: 5, ..g }.breaches(&a).is_empty(), "too few to tell");
        assert!(is_error(&DEFAULT_ERRORS_ON, 200, Some(14), false));
        assert!(!is_error(&DEFAULT_ERRORS_ON, 404, None, false));
        assert!(is_error(&DEFAULT_ERRORS_ON, 429, None, true));
    }
}
