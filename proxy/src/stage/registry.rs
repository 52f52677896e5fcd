//! Runtime state of every route's stages, kept across policy updates. A route is known by
//! (policy, route name); when a new snapshot keeps a route's stage configuration unchanged,
//! the route keeps its state (open breakers stay open, buckets keep their tokens); when the
//! configuration changes it starts fresh. Routes that disappear are dropped with the old
//! snapshot.
//!
//! Breakers and retry budgets are per (route, upstream target): one breaker per endpoint set,
//! shared by every connection and worker. Rate limits and bulkheads are per route.

use std::collections::HashMap;
use std::sync::Arc;

use bulwark_policy::{BreakerPolicy, BulkheadPolicy, RateLimitPolicy, RetryPolicy, Route, Snapshot};
use dashmap::DashMap;
use tokio::time::Instant;

use super::breaker::{Breaker, State};
use super::bulkhead::Bulkhead;
use super::ratelimit::RateLimiter;
use super::retry::budget::RetryBudget;
use crate::metrics::{Metrics, StageMetrics};
use crate::target::TargetKey;

/// Bound on distinct upstream targets tracked per route; beyond it targets share one state.
const MAX_TARGETS: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
struct StageConfig {
    retries: Option<RetryPolicy>,
    breaker: Option<BreakerPolicy>,
    bulkhead: Option<BulkheadPolicy>,
    rate_limit: Option<RateLimitPolicy>,
}

impl StageConfig {
    fn of(r: &Route) -> StageConfig {
        StageConfig {
            retries: r.retries.clone(),
            breaker: r.breaker.clone(),
            bulkhead: r.bulkhead.clone(),
            rate_limit: r.rate_limit.clone(),
        }
    }
}

pub struct TargetState {
    pub breaker: Option<Arc<Breaker>>,
    pub budget: Option<RetryBudget>,
    metrics: StageMetrics,
}

impl Drop for TargetState {
    fn drop(&mut self) {
        if let Some(b) = &self.breaker {
            self.metrics.breakers_in(b.phase()).dec();
        }
    }
}

pub struct RouteState {
    pub policy: Arc<str>,
    pub route: Arc<str>,
    config: StageConfig,
    pub rate_limit: Option<RateLimiter>,
    pub bulkhead: Option<Bulkhead>,
    targets: DashMap<TargetKey, Arc<TargetState>>,
    overflow: std::sync::OnceLock<Arc<TargetState>>,
    pub metrics: StageMetrics,
}

impl RouteState {
    fn new(r: &Route, metrics: &Metrics) -> RouteState {
        let now = Instant::now();
        let metrics = metrics.stage(&r.policy, &r.name);
        RouteState {
            policy: r.policy.clone(),
            route: r.name.clone(),
            config: StageConfig::of(r),
            rate_limit: r.rate_limit.as_ref().map(|p| RateLimiter::new(p, now)),
            bulkhead: r.bulkhead.clone().map(|p| Bulkhead::new(p, metrics.bulkhead_queued.clone())),
            targets: DashMap::new(),
            overflow: std::sync::OnceLock::new(),
            metrics,
        }
    }

    /// The breaker and budget for requests of this route to `target`.
    pub fn target(&self, target: &TargetKey) -> Arc<TargetState> {
        if let Some(t) = self.targets.get(target) {
            return t.clone();
        }
        if self.targets.len() >= MAX_TARGETS {
            return self.overflow.get_or_init(|| self.new_target()).clone();
        }
        self.targets.entry(target.clone()).or_insert_with(|| self.new_target()).clone()
    }

    fn new_target(&self) -> Arc<TargetState> {
        let now = Instant::now();
        let breaker = self.config.breaker.clone().map(|p| {
            let m = self.metrics.clone();
            m.breakers_in(State::Closed).inc();
            Breaker::new(p, now, Box::new(move |from, to| m.transition(from, to)))
        });
        let budget =
            self.config.retries.as_ref().map(|r| RetryBudget::new(r.budget_percent, r.budget_min_per_second, now));
        Arc::new(TargetState { breaker, budget, metrics: self.metrics.clone() })
    }

    /// Breakers by target, for `/breakers`.
    pub fn breakers(&self) -> Vec<(String, Arc<Breaker>)> {
        let mut out: Vec<(String, Arc<Breaker>)> =
            self.targets.iter().filter_map(|e| e.value().breaker.clone().map(|b| (e.key().to_string(), b))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The state for every route of `snapshot`, indexed by `Route::index`, reusing the states of
/// `old` whose route and configuration are unchanged.
pub fn build(snapshot: &Snapshot, old: &[Arc<RouteState>], metrics: &Metrics) -> Vec<Arc<RouteState>> {
    let by_name: HashMap<(&str, &str), &Arc<RouteState>> = old.iter().map(|s| ((&*s.policy, &*s.route), s)).collect();
    let mut states: Vec<Option<Arc<RouteState>>> = vec![None; snapshot.route_count];
    for p in &snapshot.policies {
        for r in p.routes.iter().chain(std::iter::once(&p.default_route)) {
            let config = StageConfig::of(r);
            let kept = by_name.get(&(&*r.policy, &*r.name)).filter(|s| s.config == config);
            states[r.index] =
                Some(kept.map(|s| Arc::clone(s)).unwrap_or_else(|| Arc::new(RouteState::new(r, metrics))));
        }
    }
    states.into_iter().map(|s| s.expect("every route index is filled")).collect()
}
