//! The proxy's part in guarded chaos experiments (docs/experiments.md).
//!
//! The control plane says, in each snapshot, what running experiments observe (a policy and
//! optionally a route). Every response of observed traffic is tallied here — requests, errors
//! as the experiment's guard counts them, a latency histogram — and the cumulative tallies go
//! back on the discovery stream each evaluation interval, with the faults each experiment
//! injected here. A proxy that carries an experiment's faults also judges its own window against
//! the guard: on a breach it stops injecting them at once, by itself, and says so in its next
//! report — so a fault never waits on the control plane to be stopped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bulwark_policy::experiment::{self, Counts, Guard, SteadyState, LATENCY_BOUNDS_MS};
use bulwark_proto::v1 as pb;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// Local judgements keep at most this many samples per observation (one per interval).
const MAX_SAMPLES: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExperimentLabels {
    experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    experiment: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    experiment: String,
    bound: &'static str,
}

struct Families {
    observing: Family<ExperimentLabels, Gauge>,
    injected: Family<KindLabels, Counter>,
    guard: Family<BoundLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    breaches: Family<ExperimentLabels, Counter>,
}

/// Cumulative tallies of one observation, written by every response it observes.
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Tally {
    fn new() -> Tally {
        Tally {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// One experiment's observation here.
struct Watch {
    experiment: Arc<str>,
    policy: String,
    route: Option<String>,
    guard: Guard,
    every: Duration,
    tally: Tally,
    /// (when, cumulative) samples of the last window, for the local judgement.
    samples: Mutex<VecDeque<(Instant, Counts)>>,
}

/// An experiment's faults here: whether this proxy stopped them, and what they injected.
pub struct Handle {
    pub name: Arc<str>,
    aborted: AtomicBool,
    reason: Mutex<Option<String>>,
    /// By [`KINDS`], for this run of the experiment (what is reported)...
    injected: [AtomicU64; 4],
    /// ...and the series of `bulwark_experiment_faults_injected_total`, over every run.
    series: [Counter; 4],
}

/// The kinds of [`Handle::injected`], in order.
const KINDS: [&str; 4] = ["abort", "delay", "response-delay", "bandwidth"];

impl Handle {
    /// The proxy dropped this experiment's faults after a local breach.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Counts a fault of `kind` (abort, delay, response-delay, bandwidth) injected.
    pub fn injected(&self, kind: &str) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.injected[i].fetch_add(1, Ordering::Relaxed);
            self.series[i].inc();
        }
    }
}

#[derive(Default)]
struct Observed {
    watches: Vec<Arc<Watch>>,
}

pub struct Experiments {
    observed: ArcSwap<Observed>,
    /// Any observation at all: the response path's one check when there is none.
    any: AtomicBool,
    handles: Mutex<HashMap<String, Arc<Handle>>>,
    families: Families,
}

impl Experiments {
    pub fn register(r: &mut Registry) -> Experiments {
        let families = Families {
            observing: Family::default(),
            injected: Family::default(),
            guard: Family::default(),
            breaches: Family::default(),
        };
        r.register(
            "experiment_observing",
            "1 while this proxy measures traffic a running experiment observes",
            families.observing.clone(),
        );
        r.register(
            "experiment_faults_injected",
            "Faults injected for experiments, by experiment and kind",
            families.injected.clone(),
        );
        r.register(
            "experiment_guard",
            "The experiment's guard signals on this proxy's traffic over the guard window (errorRate as a fraction, p50/p95/p99 in ms)",
            families.guard.clone(),
        );
        r.register(
            "experiment_local_breaches",
            "Experiments whose faults this proxy dropped by itself after its own traffic crossed the guard",
            families.breaches.clone(),
        );
        Experiments {
            observed: ArcSwap::from_pointee(Observed::default()),
            any: AtomicBool::new(false),
            handles: Mutex::new(HashMap::new()),
            families,
        }
    }

    /// Puts the snapshot's observations in force. An observation that stays keeps its tallies
    /// (the control plane differences cumulative counts); experiments no longer observed are
    /// forgotten, so that the same name run again starts clean.
    pub fn install(&self, observations: &[pb::Observation]) {
        let old = self.observed.load_full();
        let mut watches = Vec::with_capacity(observations.len());
        for o in observations {
            let route = (!o.route.is_empty()).then(|| o.route.clone());
            let kept =
                old.watches.iter().find(|w| *w.experiment == *o.experiment && w.policy == o.policy && w.route == route);
            if let Some(w) = kept {
                watches.push(w.clone());
                continue;
            }
            let steady: SteadyState = match yaml_serde::from_str(&o.steady_state_yaml) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(experiment = %o.experiment, error = %e, "ignoring an observation whose guard cannot be read");
                    continue;
                }
            };
            let every = Duration::from_millis(u64::from(o.evaluate_every_ms.max(100)));
            watches.push(Arc::new(Watch {
                experiment: o.experiment.as_str().into(),
                policy: o.policy.clone(),
                route,
                guard: experiment::guard(&steady),
                every,
                tally: Tally::new(),
                samples: Mutex::new(VecDeque::new()),
            }));
        }
        for w in &old.watches {
            if !watches.iter().any(|n| n.experiment == w.experiment) {
                self.families.observing.remove(&ExperimentLabels { experiment: w.experiment.to_string() });
                for bound in ["errorRate", "p50", "p95", "p99"] {
                    self.families.guard.remove(&BoundLabels { experiment: w.experiment.to_string(), bound });
                }
            }
        }
        for w in &watches {
            self.families.observing.get_or_create(&ExperimentLabels { experiment: w.experiment.to_string() }).set(1);
        }
        {
            let mut handles = self.handles.lock();
            // A handle a fault still holds stays; one of an experiment gone is forgotten (its
            // injected series stay: a counter that vanished would read as a reset).
            handles.retain(|name, h| watches.iter().any(|w| *w.experiment == **name) || Arc::strong_count(h) > 1);
        }
        self.any.store(!watches.is_empty(), Ordering::Release);
        self.observed.store(Arc::new(Observed { watches }));
    }

    /// The handle of experiment `name`'s faults, shared by every fault state of it.
    pub fn handle(&self, name: &str) -> Arc<Handle> {
        let counter =
            |kind| self.families.injected.get_or_create(&KindLabels { experiment: name.to_string(), kind }).clone();
        self.handles
            .lock()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Handle {
                    name: name.into(),
                    aborted: AtomicBool::new(false),
                    reason: Mutex::new(None),
                    injected: std::array::from_fn(|_| AtomicU64::new(0)),
                    series: KINDS.map(counter),
                })
            })
            .clone()
    }

    /// Tallies one response of `policy`/`route` for every experiment observing it; `grpc`
    /// reads its gRPC status (only when something is observed).
    pub fn observe(
        &self,
        policy: &str,
        route: &str,
        status: u16,
        grpc: impl FnOnce() -> Option<u16>,
        refused: bool,
        latency: Duration,
    ) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let grpc = grpc();
        let observed = self.observed.load();
        for w in observed.watches.iter().filter(|w| w.policy == policy && w.route.as_deref().is_none_or(|r| r == route))
        {
            w.tally.requests.fetch_add(1, Ordering::Relaxed);
            if experiment::is_error(&w.guard.errors_on, status, grpc, refused) {
                w.tally.errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(b) = w.tally.buckets.get(experiment::bucket(latency)) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The shortest evaluation interval observed, if anything is.
    pub fn interval(&self) -> Option<Duration> {
        self.observed.load().watches.iter().map(|w| w.every).min()
    }

    /// Judges each observed experiment whose faults are here on this proxy's own window (and
    /// drops its faults on a breach); called every interval whether or not the control plane
    /// is reachable.
    pub fn judge(&self) {
        let now = Instant::now();
        let observed = self.observed.load();
        let handles: HashMap<String, Arc<Handle>> = self.handles.lock().clone();
        for w in &observed.watches {
            let counts = w.tally.counts();
            let window = {
                let mut samples = w.samples.lock();
                samples.push_back((now, counts.clone()));
                while samples.len() > MAX_SAMPLES
                    || samples.get(1).is_some_and(|(t, _)| now.saturating_duration_since(*t) >= w.guard.window)
                {
                    samples.pop_front();
                }
                samples.front().map(|(_, first)| counts.since(first)).unwrap_or_default()
            };
            let name = w.experiment.to_string();
            let gauge = |bound: &'static str, v: f64| {
                self.families.guard.get_or_create(&BoundLabels { experiment: name.clone(), bound }).set(v);
            };
            gauge("errorRate", window.error_rate());
            for (q, bound) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
                gauge(bound, window.quantile_ms(q));
            }
            if let Some(h) = handles.get(&name).filter(|h| !h.aborted()) {
                if let Some(breach) = w.guard.breaches(&window).into_iter().next() {
                    let reason = format!("{breach} on proxy-local traffic ({} requests)", window.requests);
                    tracing::warn!(experiment = %name, %reason, "experiment guard crossed here: its faults are dropped on this proxy");
                    *h.reason.lock() = Some(reason);
                    h.aborted.store(true, Ordering::Release);
                    self.families.breaches.get_or_create(&ExperimentLabels { experiment: name.clone() }).inc();
                }
            }
        }
    }

    /// What to report now: the tallies, the faults injected, and the local breaches.
    pub fn report(&self) -> pb::Measurements {
        let observed = self.observed.load();
        let handles: HashMap<String, Arc<Handle>> = self.handles.lock().clone();
        let mut out = pb::Measurements::default();
        for w in &observed.watches {
            let counts = w.tally.counts();
            out.observed.push(pb::Measurement {
                experiment: w.experiment.to_string(),
                requests: counts.requests,
                errors: counts.errors,
                latency_buckets: counts.buckets,
            });
        }
        for (name, h) in &handles {
            let by_kind = KINDS
                .iter()
                .zip(&h.injected)
                .map(|(k, n)| (k.to_string(), n.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            out.injected.push(pb::InjectedFaults { experiment: name.clone(), by_kind });
            if let Some(reason) = h.reason.lock().clone() {
                out.local_aborts.push(pb::LocalAbort { experiment: name.clone(), reason });
            }
        }
        out
    }
}

/// Judges every interval of what is observed, until `stop`.
pub async fn judge_every_interval(metrics: Arc<super::metrics::Metrics>, stop: CancellationToken) {
    loop {
        let every = metrics.experiments.interval().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => metrics.experiments.judge(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(experiment: &str, route: &str) -> pb::Observation {
        pb::Observation {
            experiment: experiment.into(),
            policy: "shop/checkout".into(),
            route: route.into(),
            evaluate_every_ms: 1000,
            steady_state_yaml: "observe: { policy: shop/checkout }\nmaxErrorRate: 10%\nwindow: 5s\nminRequests: 5\n"
                .into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn observed_traffic_is_tallied_and_a_local_breach_stops_the_faults_here() {
        let mut r = Registry::default();
        let x = Experiments::register(&mut r);
        x.observe("shop/checkout", "pay", 200, || None, false, Duration::from_millis(3));
        x.install(&[observation("shop/e1", "")]);
        let h = x.handle("shop/e1");
        for i in 0..10 {
            x.observe("shop/checkout", "pay", 200, || None, false, Duration::from_millis(3));
            x.observe("shop/other", "pay", 500, || None, false, Duration::from_millis(3));
            if i < 2 {
                x.observe("shop/checkout", "pay", 503, || None, false, Duration::from_millis(3));
            }
        }
        x.judge();
        let first = x.report();
        assert_eq!((first.observed[0].requests, first.observed[0].errors), (12, 2), "only the observed policy");
        assert!(!h.aborted(), "the first sample is the window's start");
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            x.observe("shop/checkout", "pay", 503, || None, false, Duration::from_millis(3));
        }
        x.judge();
        let second = x.report();
        assert!(h.aborted(), "10 errors in 10 requests over a 10% bound");
        assert!(second.local_aborts[0].reason.contains("error rate"), "{:?}", second.local_aborts);
        // Kept across a push that still has it; forgotten when it is gone and unheld.
        x.install(&[observation("shop/e1", "")]);
        assert_eq!(x.report().observed[0].requests, 22);
        drop(h);
        x.install(&[]);
        assert!(!x.handle("shop/e1").aborted(), "the same name run again starts clean");
        assert!(x.report().observed.is_empty());
    }
}
