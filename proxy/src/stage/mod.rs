//! The resilience stages a request passes, each entered through one function that answers
//! either a [`Refusal`] or what the stage holds for the request (a guard that gives it back
//! when dropped, so a request cancelled at any `.await` leaves nothing behind). The order they
//! run in is written once, in `http/stack.rs`.
//!
//! Each stage module holds its runtime state, its decision, the metrics it counts (registered
//! by the module itself) and what it tells the request's record; `registry` keeps the state
//! across policy updates.

pub mod adaptive;
pub mod admission;
pub mod breaker;
pub mod bulkhead;
pub mod fault;
pub mod ratelimit;
pub mod registry;
pub mod retry;
pub mod timeout;

use std::time::Duration;

use bulwark_policy::faults::AbortWith;
use bulwark_policy::priority::Priority;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::reason::Reason;
use crate::telemetry::record::Record;
use crate::telemetry::route_family::RouteFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WouldRefuseLabels {
    policy: String,
    route: String,
    stage: &'static str,
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    policy: String,
    route: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    policy: String,
    route: String,
    class: String,
    reason: Reason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    policy: String,
    route: String,
    reason: Reason,
}

/// Why the proxy answers a request itself, and what it tells the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// `Retry-After` for the client (rate limits).
    pub retry_after: Option<Duration>,
    /// The status an injected abort answers with.
    pub abort: Option<AbortWith>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal { reason, retry_after: None, abort: None }
    }
}

/// Every stage's metric families, registered once at start; a route's state takes its handles
/// from them.
#[derive(Clone)]
pub struct StageFamilies {
    /// What guarding stages in dry-run would have refused, by route, stage and reason.
    would_refuse: RouteFamily<WouldRefuseLabels, Counter>,
    /// Refusals answered with the route's fallback, by route and reason.
    fallbacks: RouteFamily<FallbackLabels, Counter>,
    pub rate_limit: ratelimit::RateLimitFamilies,
    pub fault: fault::FaultFamilies,
    pub breaker: breaker::BreakerFamilies,
    pub bulkhead: bulkhead::BulkheadFamilies,
    pub adaptive: adaptive::AdaptiveFamilies,
    /// Requests by priority class, and those refused, by class and reason.
    classes: RouteFamily<ClassLabels, Counter>,
    shed: RouteFamily<ShedLabels, Counter>,
    pub retry: retry::RetryFamilies,
}

impl StageFamilies {
    pub fn register(r: &mut Registry) -> StageFamilies {
        StageFamilies {
            would_refuse: RouteFamily::register(
                r,
                "would_refuse",
                "Requests a guarding stage in dry-run would have refused, by stage and reason (it refused nothing)",
            ),
            fallbacks: RouteFamily::register(
                r,
                "fallbacks",
                "Refusals answered with the route's fallback instead, by the refusal's reason",
            ),
            breaker: breaker::BreakerFamilies::register(r),
            bulkhead: bulkhead::BulkheadFamilies::register(r),
            adaptive: adaptive::AdaptiveFamilies::register(r),
            classes: RouteFamily::register(r, "priority_requests", "Requests by the priority class they were told"),
            shed: RouteFamily::register(
                r,
                "priority_refused",
                "Requests of a priority class the proxy refused, by class and reason",
            ),
            retry: retry::RetryFamilies::register(r),
            rate_limit: ratelimit::RateLimitFamilies::register(r),
            fault: fault::FaultFamilies::register(r),
        }
    }

    /// Counts what a stage in dry-run would have refused, on the request's record too.
    pub fn would_refuse(&self, rec: &mut Record, stage: &'static str, reason: Reason) {
        let l = &rec.labels;
        let labels = WouldRefuseLabels { policy: l.policy.to_string(), route: l.route.to_string(), stage, reason };
        self.would_refuse.with(&l.policy, &l.route, &labels, |c| c.inc());
        rec.would_refuse.push(reason);
    }

    /// Counts a refusal answered with the route's fallback, on the request's record too.
    pub fn fallback(&self, rec: &mut Record, reason: Reason) {
        let l = &rec.labels;
        let labels = FallbackLabels { policy: l.policy.to_string(), route: l.route.to_string(), reason };
        self.fallbacks.with(&l.policy, &l.route, &labels, |c| c.inc());
        rec.fallback = Some(reason);
    }

    /// A route's request counter for each of its priority classes, in class order: resolved
    /// once with the route's state, so a request only increments one.
    pub fn class_counters(&self, policy: &str, route: &str, p: &Priority) -> Vec<Counter> {
        p.classes
            .iter()
            .map(|c| {
                let labels = ClassLabels { policy: policy.into(), route: route.into(), class: c.name.to_string() };
                self.classes.handle(policy, route, &labels)
            })
            .collect()
    }

    /// Counts a refusal of a request that has a priority class.
    pub fn class_refused(&self, rec: &Record, reason: Reason) {
        let (Some(class), l) = (&rec.class, &rec.labels) else { return };
        let labels =
            ShedLabels { policy: l.policy.to_string(), route: l.route.to_string(), class: class.to_string(), reason };
        self.shed.with(&l.policy, &l.route, &labels, |c| c.inc());
    }

    /// Removes the series of a route that no longer exists.
    pub fn forget(&self, policy: &str, route: &str) {
        self.adaptive.forget(policy, route);
        self.classes.forget(policy, route);
        self.shed.forget(policy, route);
        self.would_refuse.forget(policy, route);
        self.fallbacks.forget(policy, route);
        self.breaker.forget(policy, route);
        self.bulkhead.forget(policy, route);
        self.retry.forget(policy, route);
        self.rate_limit.forget(policy, route);
        self.fault.forget(policy, route);
    }
}
