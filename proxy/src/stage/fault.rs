//! Fault injection for a route's HTTP requests, as users of Envoy's fault filter read it:
//!
//! - `abort`: the proxy answers with the configured HTTP or gRPC status; the request never
//!   reaches the upstream (`x-bulwark-reason: fault-abort`).
//! - `delay`: the request is held before it goes upstream (before the breaker and bulkhead,
//!   so a delayed request holds no slot).
//! - `responseDelay`: the upstream's answer is held before its headers go to the client.
//! - `responseBandwidth`: the response body is sent at most this many bytes per second.
//!
//! Each kind is drawn on its own for every request. `match` narrows who is hit: header
//! conditions, and `clientPercent`, a stable share of clients (the same source addresses for the
//! whole experiment). An injected delay adds no header to the response: a delayed request looks
//! to the client exactly like a slow upstream, which is what the experiment is for.
//!
//! Faults may expire: at `expiresAt`, or `for` after the proxy first applied them. The proxy
//! drops them by itself at that moment, logs it and counts it, even if nothing else happens.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bulwark_policy::faults::{AbortWith, DelayFault, Expiry, FaultPolicy};
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::Refusal;
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::record::Record;
use crate::telemetry::route_family::RouteFamily;

/// What the draws decided for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub abort: Option<AbortWith>,
    pub delay: Option<Duration>,
    pub response_delay: Option<Duration>,
    pub bandwidth: Option<u64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    policy: String,
    route: String,
    kind: &'static str,
}

/// Faults injected and expired, by route (TCP faults by policy, route `tcp`).
#[derive(Clone)]
pub struct FaultFamilies {
    injected: RouteFamily<FaultLabels, Counter>,
    expired: RouteFamily<StageLabels, Counter>,
}

impl FaultFamilies {
    pub fn register(r: &mut Registry) -> FaultFamilies {
        FaultFamilies {
            injected: RouteFamily::register(
                r,
                "faults_injected",
                "Faults injected, by kind (abort, delay, response-delay, bandwidth, tcp-*)",
            ),
            expired: RouteFamily::register(r, "faults_expired", "Faults the proxy dropped by itself when they expired"),
        }
    }

    pub fn counter(&self, policy: &str, route: &str, kind: &'static str) -> Counter {
        self.injected.handle(policy, route, &FaultLabels { policy: policy.into(), route: route.into(), kind })
    }

    pub fn route(&self, policy: &str, route: &str) -> FaultMetrics {
        let kind = |kind| self.counter(policy, route, kind);
        FaultMetrics {
            abort: kind("abort"),
            delay: kind("delay"),
            response_delay: kind("response-delay"),
            bandwidth: kind("bandwidth"),
            expired: self.expired.handle(policy, route, &StageLabels::new(policy, route)),
        }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.injected.forget(policy, route);
        self.expired.forget(policy, route);
    }
}

/// The stage: draws this request's faults. An abort is the refusal (the request is never
/// delayed or slowed then); otherwise what was drawn is returned for the later phases: the
/// delay to hold before the breaker, the response delay and bandwidth after the upstream
/// answered. Each injected kind is counted and told to the record.
pub fn draw(
    state: Option<&FaultState>,
    headers: &HeaderMap,
    client: IpAddr,
    rec: &mut Record,
) -> Result<Decision, Refusal> {
    let Some(f) = state.filter(|f| f.active(Instant::now())) else { return Ok(Decision::default()) };
    // An experiment's faults this proxy dropped after its own traffic crossed the guard.
    if f.experiment.as_ref().is_some_and(|x| x.aborted()) {
        return Ok(Decision::default());
    }
    let d = f.decide(headers, client, || fastrand::u64(..));
    let m = &f.metrics;
    let injected = |rec: &mut Record, counter: &Counter, kind: &'static str| {
        counter.inc();
        rec.faults.push(kind);
        if let Some(x) = &f.experiment {
            x.injected(kind);
            rec.experiment = Some(x.name.clone());
        }
    };
    if let Some(with) = d.abort {
        injected(rec, &m.abort, "abort");
        return Err(Refusal { reason: Reason::FaultAbort, retry_after: None, abort: Some(with) });
    }
    for (hit, counter, kind) in [
        (d.delay.is_some(), &m.delay, "delay"),
        (d.response_delay.is_some(), &m.response_delay, "response-delay"),
        (d.bandwidth.is_some(), &m.bandwidth, "bandwidth"),
    ] {
        if hit {
            injected(rec, counter, kind);
        }
    }
    Ok(d)
}

/// Counters for one route's faults, by kind.
#[derive(Clone)]
pub struct FaultMetrics {
    pub abort: Counter,
    pub delay: Counter,
    pub response_delay: Counter,
    pub bandwidth: Counter,
    pub expired: Counter,
}

pub struct FaultState {
    pub policy: Arc<str>,
    pub route: Arc<str>,
    pub faults: Arc<FaultPolicy>,
    pub deadline: Option<Instant>,
    /// Where the faults came from: the policy file, or a runtime toggle.
    pub runtime: bool,
    pub metrics: FaultMetrics,
    /// Set when the faults are a ChaosExperiment's.
    pub experiment: Option<Arc<crate::telemetry::experiment::Handle>>,
}

impl FaultState {
    pub fn new(
        policy: Arc<str>,
        route: Arc<str>,
        faults: Arc<FaultPolicy>,
        runtime: bool,
        metrics: FaultMetrics,
        experiment: Option<Arc<crate::telemetry::experiment::Handle>>,
    ) -> Arc<FaultState> {
        let now = Instant::now();
        let deadline = faults.expiry.map(|e| match e {
            Expiry::After(d) => now + d,
            Expiry::At(t) => now + t.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO),
        });
        let state = Arc::new(FaultState { policy, route, faults, deadline, runtime, metrics, experiment });
        if let Some(deadline) = deadline {
            watch_expiry(Arc::downgrade(&state), deadline);
        }
        state
    }

    pub fn active(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|d| now < d)
    }

    /// The faults for one request; `draw` gives uniform 64-bit values.
    pub fn decide(&self, headers: &HeaderMap, client: IpAddr, mut draw: impl FnMut() -> u64) -> Decision {
        let f = &self.faults;
        if !f.headers.iter().all(|h| h.matches(headers)) {
            return Decision::default();
        }
        if let Some(share) = f.clients {
            if !share.hit(client_hash(client)) {
                return Decision::default();
            }
        }
        if !f.identities.is_empty() {
            let caller = headers.get(bulwark_policy::faults::CLIENT_ID_HEADER).and_then(|v| v.to_str().ok());
            if !caller.is_some_and(|id| f.identities.iter().any(|p| p.matches(id))) {
                return Decision::default();
            }
        }
        let delay_of = |d: &Option<DelayFault>, draw: &mut dyn FnMut() -> u64| {
            d.filter(|d| d.chance.hit(draw())).map(|d| d.delay.sample(draw))
        };
        Decision {
            abort: f.abort.filter(|a| a.chance.hit(draw())).map(|a| a.with),
            delay: delay_of(&f.delay, &mut draw),
            response_delay: delay_of(&f.response_delay, &mut draw),
            bandwidth: f.response_bandwidth.filter(|b| b.chance.hit(draw())).map(|b| b.bytes_per_second),
        }
    }
}

/// A stable value per client address, so `clientPercent` picks the same clients every time.
fn client_hash(ip: IpAddr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.to_canonical().hash(&mut h);
    h.finish()
}

fn watch_expiry(state: Weak<FaultState>, deadline: Instant) {
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        // Gone already: replaced or removed before it expired.
        let Some(s) = state.upgrade() else { return };
        s.metrics.expired.inc();
        tracing::info!(policy = %s.policy, route = %s.route, "faults expired and are no longer injected");
    });
}

#[cfg(test)]
mod tests;
