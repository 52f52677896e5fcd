//! A metric family whose series belong to routes. Each series created is remembered under its
//! (policy, route), so when a policy update removes a route its series are removed from
//! `/metrics` too: a fleet that renames or deletes routes does not grow the scrape forever.
//!
//! Looking up an existing series costs what a plain `Family` lookup costs; only the first use
//! of a label set takes the index lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry};

type Index<L> = Arc<Mutex<HashMap<(String, String), Vec<L>>>>;

pub struct RouteFamily<L, M, C = fn() -> M> {
    family: Family<L, M, C>,
    by_route: Index<L>,
}

impl<L, M, C: Clone> Clone for RouteFamily<L, M, C> {
    fn clone(&self) -> Self {
        RouteFamily { family: self.family.clone(), by_route: self.by_route.clone() }
    }
}

impl<L, M> RouteFamily<L, M>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: Default + EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync + 'static,
{
    /// A family registered under `name`.
    pub fn register(r: &mut Registry, name: &str, help: &str) -> Self {
        Self::register_with(r, name, help, M::default as fn() -> M)
    }
}

impl<L, M, C> RouteFamily<L, M, C>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync + 'static,
    C: MetricConstructor<M> + Clone + Send + Sync + 'static,
    Family<L, M, C>: Metric,
{
    /// A family registered under `name` whose series are made by `constructor`.
    pub fn register_with(r: &mut Registry, name: &str, help: &str, constructor: C) -> Self {
        let family = Family::new_with_constructor(constructor);
        r.register(name, help, family.clone());
        RouteFamily { family, by_route: Index::default() }
    }

    /// Runs `f` on the series of `labels`, which belong to `policy`'s route `route`.
    pub fn with<R>(&self, policy: &str, route: &str, labels: &L, f: impl FnOnce(&M) -> R) -> R {
        if let Some(m) = self.family.get(labels) {
            return f(&m);
        }
        self.by_route.lock().entry((policy.to_string(), route.to_string())).or_default().push(labels.clone());
        f(&self.family.get_or_create(labels))
    }

    /// Removes every series of the route.
    pub fn forget(&self, policy: &str, route: &str) {
        let gone = self.by_route.lock().remove(&(policy.to_string(), route.to_string()));
        for labels in gone.into_iter().flatten() {
            self.family.remove(&labels);
        }
    }
}

impl<L, M, C> RouteFamily<L, M, C>
where
    L: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: Clone + EncodeMetric + TypedMetric + std::fmt::Debug + Send + Sync + 'static,
    C: MetricConstructor<M> + Clone + Send + Sync + 'static,
    Family<L, M, C>: Metric,
{
    /// The series itself, for a route's state to keep.
    pub fn handle(&self, policy: &str, route: &str, labels: &L) -> M {
        self.with(policy, route, labels, M::clone)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::telemetry::metrics::StageLabels;

    #[test]
    fn a_forgotten_route_leaves_the_scrape_and_others_stay() {
        let mut r = Registry::default();
        let f: RouteFamily<StageLabels, Counter> = RouteFamily::register(&mut r, "things", "Things");
        for route in ["a", "b"] {
            f.handle("p", route, &StageLabels::new("p", route)).inc();
        }
        f.with("p", "a", &StageLabels::new("p", "a"), |c| c.inc());
        let series = |r: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out.lines().filter(|l| l.starts_with("things_total")).map(String::from).collect::<Vec<_>>()
        };
        assert_eq!(series(&r).len(), 2);
        f.forget("p", "a");
        assert_eq!(series(&r), ["things_total{policy=\"p\",route=\"b\"} 1"]);
        f.forget("p", "never-seen");
        assert_eq!(series(&r).len(), 1);
    }
}
