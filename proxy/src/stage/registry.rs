//! Runtime state of every route's stages, kept across policy updates. A route is known by
//! (policy, route name); when a new snapshot keeps a route's stage configuration unchanged,
//! the route keeps its state (open breakers stay open, buckets keep their tokens); when the
//! configuration changes it starts fresh. Routes that disappear are dropped with the old
//! snapshot.
//!
//! Breakers and retry budgets are per (route, cluster): one breaker per endpoint set,
//! shared by every connection and worker. Rate limits and bulkheads are per route.

use std::collections::HashMap;
use std::sync::Arc;

use bulwark_policy::adaptive::AdaptivePolicy;
use bulwark_policy::fallback::FallbackUpstream;
use bulwark_policy::priority::Priority;
use bulwark_policy::{BreakerPolicy, BulkheadPolicy, RateLimitPolicy, RetryPolicy, Route, Snapshot};
use dashmap::DashMap;
use tokio::time::Instant;

use super::adaptive::Adaptive;
use super::admission::Reserves;
use super::breaker::{Breaker, BreakerMetrics, State};
use super::bulkhead::Bulkhead;
use super::ratelimit::RateLimiter;
use super::retry::budget::RetryBudget;
use super::retry::RetryMetrics;
use super::StageFamilies;
use crate::http::fallback::FallbackTarget;
use crate::telemetry::metrics::StageLabels;
use crate::upstream::ClusterKey;

/// Bound on distinct clusters tracked per route; beyond it clusters share one state.
const MAX_CLUSTERS: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
struct StageConfig {
    retries: Option<RetryPolicy>,
    breaker: Option<BreakerPolicy>,
    bulkhead: Option<BulkheadPolicy>,
    rate_limit: Option<RateLimitPolicy>,
    adaptive: Option<AdaptivePolicy>,
    priority: Option<Arc<Priority>>,
    fallback_upstream: Option<FallbackUpstream>,
}

impl StageConfig {
    fn of(r: &Route) -> StageConfig {
        StageConfig {
            retries: r.retries.clone(),
            breaker: r.breaker.clone(),
            bulkhead: r.bulkhead.clone(),
            rate_limit: r.rate_limit.clone(),
            adaptive: r.adaptive.clone(),
            priority: r.priority.clone(),
            fallback_upstream: r.fallback.as_ref().and_then(|f| f.upstream.clone()),
        }
    }

    fn reserves(&self) -> Reserves {
        self.priority.as_ref().map(|p| Reserves { percent: p.reserves(), judge_only: p.dry_run }).unwrap_or_default()
    }
}

/// A route's stages towards one cluster.
pub struct ClusterState {
    pub breaker: Option<Arc<Breaker>>,
    pub budget: Option<RetryBudget>,
    metrics: BreakerMetrics,
}

impl Drop for ClusterState {
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
    pub adaptive: Option<Adaptive>,
    /// The route's fallback upstream, with its resolved addresses.
    pub fallback: Option<FallbackTarget>,
    pub retry_metrics: RetryMetrics,
    /// Requests of each priority class, in class order (empty without classes).
    pub class_requests: Vec<prometheus_client::metrics::counter::Counter>,
    breaker_metrics: BreakerMetrics,
    clusters: DashMap<ClusterKey, Arc<ClusterState>>,
    overflow: std::sync::OnceLock<Arc<ClusterState>>,
}

impl RouteState {
    fn new(r: &Route, families: &StageFamilies) -> RouteState {
        let now = Instant::now();
        let labels = StageLabels::new(&r.policy, &r.name);
        let config = StageConfig::of(r);
        let reserves = config.reserves();
        RouteState {
            policy: r.policy.clone(),
            route: r.name.clone(),
            rate_limit: r
                .rate_limit
                .as_ref()
                .map(|p| RateLimiter::with_reserves(p, reserves.clone(), now, families.rate_limit.route(&labels))),
            bulkhead: r.bulkhead.clone().map(|p| Bulkhead::new(p, reserves.clone(), families.bulkhead.route(&labels))),
            adaptive: r.adaptive.clone().map(|p| Adaptive::new(p, reserves.clone(), families.adaptive.route(&labels))),
            fallback: config
                .fallback_upstream
                .as_ref()
                .map(|f| FallbackTarget::new(format!("fallback/{}/{}", r.policy, r.name), f)),
            config,
            retry_metrics: families.retry.route(&labels),
            class_requests: r
                .priority
                .as_ref()
                .map(|p| families.class_counters(&r.policy, &r.name, p))
                .unwrap_or_default(),
            breaker_metrics: families.breaker.route(&labels),
            clusters: DashMap::new(),
            overflow: std::sync::OnceLock::new(),
        }
    }

    /// The breaker and budget for requests of this route to `cluster`.
    pub fn cluster(&self, cluster: &ClusterKey) -> Arc<ClusterState> {
        if let Some(t) = self.clusters.get(cluster) {
            return t.clone();
        }
        if self.clusters.len() >= MAX_CLUSTERS {
            return self.overflow.get_or_init(|| self.new_cluster()).clone();
        }
        self.clusters.entry(cluster.clone()).or_insert_with(|| self.new_cluster()).clone()
    }

    fn new_cluster(&self) -> Arc<ClusterState> {
        let now = Instant::now();
        let breaker = self.config.breaker.clone().map(|p| {
            let m = self.breaker_metrics.clone();
            m.breakers_in(State::Closed).inc();
            Breaker::new(p, now, Box::new(move |from, to| m.transition(from, to)))
        });
        let budget =
            self.config.retries.as_ref().map(|r| RetryBudget::new(r.budget_percent, r.budget_min_per_second, now));
        Arc::new(ClusterState { breaker, budget, metrics: self.breaker_metrics.clone() })
    }

    /// Breakers by cluster, for `/breakers`.
    pub fn breakers(&self) -> Vec<(String, Arc<Breaker>)> {
        let mut out: Vec<(String, Arc<Breaker>)> =
            self.clusters.iter().filter_map(|e| e.value().breaker.clone().map(|b| (e.key().to_string(), b))).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The state for every route of `snapshot`, indexed by `Route::index` (every index is filled), reusing the states of
/// `old` whose route and configuration are unchanged.
pub fn build(
    snapshot: &Snapshot,
    old: &[Option<Arc<RouteState>>],
    families: &StageFamilies,
) -> Vec<Option<Arc<RouteState>>> {
    let by_name: HashMap<(&str, &str), &Arc<RouteState>> =
        old.iter().flatten().map(|s| ((&*s.policy, &*s.route), s)).collect();
    let mut states: Vec<Option<Arc<RouteState>>> = vec![None; snapshot.route_count];
    for p in &snapshot.policies {
        for r in p.routes.iter().chain(std::iter::once(&p.default_route)) {
            let config = StageConfig::of(r);
            let kept = by_name.get(&(&*r.policy, &*r.name)).filter(|s| s.config == config);
            states[r.index] =
                Some(kept.map(|s| Arc::clone(s)).unwrap_or_else(|| Arc::new(RouteState::new(r, families))));
        }
    }
    states
}
