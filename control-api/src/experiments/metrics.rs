//! The control plane's experiment metrics, served on `--metrics-listen` (`/metrics`):
//! experiments by state, each running experiment's guard signals as the control plane sums
//! them over every proxy, and the breaches that stopped experiments.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::record::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub experiment: String,
    pub bound: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreachLabels {
    pub experiment: String,
    pub bound: String,
    pub seen_by: &'static str,
}

pub struct ExperimentMetrics {
    registry: Registry,
    pub by_state: Family<StateLabels, Gauge>,
    pub guard: Family<GuardLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub breaches: Family<BreachLabels, Counter>,
}

impl Default for ExperimentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulwark_control");
        let by_state = Family::<StateLabels, Gauge>::default();
        let guard = Family::<GuardLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let breaches = Family::<BreachLabels, Counter>::default();
        registry.register("experiments", "Experiments kept, by state", by_state.clone());
        registry.register(
            "experiment_guard",
            "A running experiment's guard signals over its window, summed over every proxy (errorRate as a fraction, p50/p95/p99 in ms)",
            guard.clone(),
        );
        registry.register(
            "experiment_breaches",
            "Guard bounds crossed, which stopped an experiment (seen by the control plane or a proxy)",
            breaches.clone(),
        );
        ExperimentMetrics { registry, by_state, guard, breaches }
    }
}

impl ExperimentMetrics {
    /// The exposition text, with the state gauge set from `states`.
    pub fn encode(&self, states: impl Iterator<Item = State>) -> String {
        let mut counts = std::collections::BTreeMap::new();
        for s in [State::Pending, State::Preflight, State::Running, State::Completed, State::Aborted, State::Refused] {
            counts.insert(s.as_str(), 0i64);
        }
        for s in states {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        for (state, n) in counts {
            self.by_state.get_or_create(&StateLabels { state }).set(n);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn forget_guard(&self, experiment: &str) {
        for bound in ["errorRate", "p50", "p95", "p99"] {
            self.guard.remove(&GuardLabels { experiment: experiment.to_string(), bound });
        }
    }
}
