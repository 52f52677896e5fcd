//! Guarded chaos experiments, run by the control plane (docs/experiments.md).
//!
//! An admitted experiment goes `pending → preflight → running → completed | aborted | refused`.
//! Preflight publishes what it observes, so that the proxies carrying the observed policy start
//! measuring, and judges the baseline. Running sets its faults (scaled by the blast radius)
//! with a short lease, `expiresAt` a few evaluation intervals ahead, renewed while it runs: a
//! control plane that dies leaves faults that every proxy drops by itself at lease end. Each
//! interval the guard is judged on the window summed over every proxy, and each proxy judges
//! its own; the first breach clears the faults everywhere. Every change of state is written to
//! `DATA_DIR/experiments.json` before it is acted on, so a restart finds what was running and
//! reports it aborted.

pub mod measure;
pub mod metrics;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bulwark_policy::experiment::{self, ChaosExperiment, Guard};
use bulwark_policy::faults::format_rfc3339;
use bulwark_policy::spec::{FaultMatchSpec, FaultSpec};
use bulwark_policy::{Snapshot, ValidationError};
use bulwark_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::published::Publisher;
use crate::store::Store;
use measure::Aggregate;
pub use record::{Phase, Record, Report, State, Verdict};

const FILE: &str = "experiments.json";
/// Faults live this many evaluation intervals unless renewed (and at least `MIN_LEASE`).
const LEASE_INTERVALS: u32 = 5;
const MIN_LEASE: Duration = Duration::from_secs(2);
/// The blast radii of the experiments faulting one policy at once add up to at most this.
pub const MAX_CONCURRENT_BLAST_PERCENT: f64 = 50.0;
/// How long after the faults are removed recovery is watched for, at most.
const MAX_AFTER: Duration = Duration::from_secs(60);

/// A running experiment's live state beside its record.
struct Live {
    experiment: ChaosExperiment,
    guard: Guard,
    measure: Aggregate,
    /// Set by `abort`: the reason.
    abort: Option<String>,
    wake: Arc<Notify>,
}

struct Inner {
    records: BTreeMap<String, Record>,
    live: HashMap<String, Live>,
}

pub struct Experiments {
    inner: Mutex<Inner>,
    store: Arc<tokio::sync::Mutex<Store>>,
    publisher: Arc<Publisher>,
    file: PathBuf,
    max_duration: Duration,
    pub metrics: metrics::ExperimentMetrics,
}

fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

fn refusal(id: &str, path: &str, message: impl Into<String>) -> ValidationError {
    ValidationError { policy: id.to_string(), path: path.to_string(), message: message.into() }
}

impl Experiments {
    /// Opens the records in the store's directory. Experiments that were running when the
    /// control plane stopped are reported aborted ("controller restarted") and their faults
    /// cleared from the store.
    pub async fn open(
        store: Arc<tokio::sync::Mutex<Store>>,
        publisher: Arc<Publisher>,
        max_duration: Duration,
    ) -> anyhow::Result<Arc<Experiments>> {
        let file = store.lock().await.dir().join(FILE);
        let mut records = record::load(&file)?;
        let mut interrupted = Vec::new();
        for r in records.values_mut().filter(|r| !r.state.is_final()) {
            r.state = State::Aborted;
            r.report.state = Some(State::Aborted);
            r.report.verdict = Some(Verdict::Aborted);
            r.report.cause = Some("controller restarted".into());
            r.report.ended_at = Some(now_rfc3339());
            if r.report.faults_set_at.is_some() && r.report.faults_removed_at.is_none() {
                r.report.faults_removed_at = r.report.ended_at.clone();
            }
            interrupted.push(r.id.clone());
        }
        record::save(&file, &records)?;
        let x = Arc::new(Experiments {
            inner: Mutex::new(Inner { records, live: HashMap::new() }),
            store,
            publisher,
            file,
            max_duration,
            metrics: metrics::ExperimentMetrics::default(),
        });
        for id in interrupted {
            tracing::warn!(experiment = %id, "experiment was running when the control plane stopped: reported aborted");
            x.clear_faults(&id).await;
        }
        Ok(x)
    }

    /// The metrics' exposition text.
    pub fn encode_metrics(&self) -> String {
        let states: Vec<State> = self.inner.lock().records.values().map(|r| r.state).collect();
        self.metrics.encode(states.into_iter())
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.inner.lock().records.get(id).cloned()
    }

    pub fn list(&self, namespace: &str) -> Vec<Record> {
        let inner = self.inner.lock();
        inner
            .records
            .values()
            .filter(|r| namespace.is_empty() || r.id.starts_with(&format!("{namespace}/")))
            .cloned()
            .collect()
    }

    /// Asks a live experiment to stop; the runner stops it within an interval.
    pub fn abort(&self, id: &str, reason: &str) -> Result<Record, String> {
        let mut inner = self.inner.lock();
        let Some(live) = inner.live.get_mut(id) else {
            return match inner.records.get(id) {
                Some(r) => Err(format!("experiment {id} is {} already", r.state.as_str())),
                None => Err(format!("experiment {id} not found")),
            };
        };
        let why = if reason.trim().is_empty() { "aborted by request".to_string() } else { reason.to_string() };
        live.abort = Some(why);
        live.wake.notify_one();
        inner.records.get(id).cloned().ok_or_else(|| format!("experiment {id} not found"))
    }

    /// Measurements from proxy `proxy`, as it sent them on its discovery stream.
    pub fn measured(&self, proxy: &str, m: &pb::Measurements) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        // What a proxy sends is bounded to what a proxy can mean: the histogram's buckets, the
        // fault kinds, a line of reason.
        let buckets = experiment::LATENCY_BOUNDS_MS.len() + 1;
        for o in &m.observed {
            if let Some(live) = inner.live.get_mut(&o.experiment) {
                let counts = experiment::Counts {
                    requests: o.requests,
                    errors: o.errors.min(o.requests),
                    buckets: o.latency_buckets.iter().take(buckets).copied().collect(),
                };
                live.measure.record(proxy, now, counts);
            }
        }
        for i in &m.injected {
            if let Some(live) = inner.live.get_mut(&i.experiment) {
                let known = ["abort", "delay", "response-delay", "bandwidth"];
                let by_kind = i.by_kind.iter().filter(|(k, _)| known.contains(&k.as_str()));
                live.measure.injected.insert(proxy.to_string(), by_kind.map(|(k, n)| (k.clone(), *n)).collect());
            }
        }
        for a in &m.local_aborts {
            if let Some(live) = inner.live.get_mut(&a.experiment) {
                if live.measure.local_abort.is_none() {
                    let reason: String = a.reason.chars().take(512).collect();
                    live.measure.local_abort = Some((proxy.to_string(), reason));
                    live.wake.notify_one();
                }
            }
        }
    }

    /// Admits `yaml` and starts it, or says every reason it cannot be.
    pub async fn run(self: &Arc<Self>, yaml: &str) -> Result<Record, Vec<ValidationError>> {
        let mut parsed = experiment::read(yaml, "experiment")?;
        if parsed.len() != 1 {
            return Err(vec![refusal(
                "experiment",
                "",
                format!("{} experiments in one request: send one", parsed.len()),
            )]);
        }
        let e = parsed.remove(0);
        let id = e.id();
        let mut errors = experiment::validate(&e, self.max_duration);
        // Held until the experiment is in the live set: two admissions are checked one after
        // the other, so two overlapping experiments cannot both pass.
        let store = self.store.lock().await;
        let faults = self.check_against(&store, &e, &mut errors);
        self.check_overlap(&self.inner.lock(), &e, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let observe = &e.spec.steady_state.observe;
        let record = Record {
            id: id.clone(),
            yaml: yaml_serde::to_string(&e).unwrap_or_default(),
            state: State::Pending,
            report: Report {
                experiment: id.clone(),
                hypothesis: e.spec.hypothesis.clone(),
                state: Some(State::Pending),
                admitted_at: now_rfc3339(),
                observed: format!(
                    "{}{}",
                    observe.policy,
                    observe.route.as_ref().map(|r| format!("/{r}")).unwrap_or_default()
                ),
                faults: faults
                    .iter()
                    .map(|(policy, route, spec)| record::FaultSet {
                        policy: policy.clone(),
                        route: route.clone(),
                        // Its end is the lease, renewed while it runs: not a property of the fault.
                        faults: serde_json::to_value(FaultSpec { expires_at: None, ..spec.clone() })
                            .unwrap_or_default(),
                    })
                    .collect(),
                ..Report::default()
            },
        };
        let guard = experiment::guard(&e.spec.steady_state);
        let every = experiment::evaluate_every(&e);
        let baseline = e.spec.preflight.as_ref().map_or(every, |p| p.baseline.get());
        let keep = guard.window.max(baseline) + every * 3;
        {
            let mut inner = self.inner.lock();
            inner.records.insert(id.clone(), record.clone());
            inner.live.insert(
                id.clone(),
                Live {
                    experiment: e,
                    guard,
                    measure: Aggregate::new(keep),
                    abort: None,
                    wake: Arc::new(Notify::new()),
                },
            );
            if let Err(err) = record::save(&self.file, &inner.records) {
                inner.live.remove(&id);
                inner.records.remove(&id);
                return Err(vec![refusal(&id, "", format!("cannot store the experiment: {err}"))]);
            }
        }
        drop(store);
        tracing::info!(experiment = %id, "experiment admitted");
        let x = self.clone();
        tokio::spawn(async move { x.drive(id, faults).await });
        Ok(record)
    }

    /// The faults the experiment sets, checked against the store: each target policy and
    /// route exists and has no faults of its own, and the faulted policy still validates.
    fn check_against(
        &self,
        store: &Store,
        e: &ChaosExperiment,
        errors: &mut Vec<ValidationError>,
    ) -> Vec<(String, String, FaultSpec)> {
        let id = e.id();
        let observe = &e.spec.steady_state.observe;
        match store.doc(&observe.policy) {
            None => errors.push(refusal(
                &id,
                "spec.steadyState.observe.policy",
                format!("no policy {:?} is stored", observe.policy),
            )),
            Some(doc) => {
                if let Some(route) = &observe.route {
                    if !doc.has_route(route) {
                        errors.push(refusal(
                            &id,
                            "spec.steadyState.observe.route",
                            format!("policy {} has no route {route:?}", observe.policy),
                        ));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (i, f) in e.spec.faults.iter().enumerate() {
            let at = format!("spec.faults[{i}]");
            let Some(doc) = store.doc(&f.target.policy) else {
                errors.push(refusal(
                    &id,
                    &format!("{at}.target.policy"),
                    format!("no policy {:?} is stored", f.target.policy),
                ));
                continue;
            };
            let route = f.target.route_name().to_string();
            if !doc.has_route(&route) {
                errors.push(refusal(
                    &id,
                    &format!("{at}.target.route"),
                    format!("policy {} has no route {route:?}", f.target.policy),
                ));
                continue;
            }
            // Another experiment's faults are check_overlap's to name.
            if doc.route_faults(&route).is_some_and(|f| f.experiment.is_none()) {
                errors.push(refusal(
                    &id,
                    &format!("{at}.target"),
                    format!("route {route} of {} has faults of its own: clear them first", f.target.policy),
                ));
                continue;
            }
            let spec = fault_spec(e, f, Duration::from_secs(60));
            let mut faulted = doc.clone();
            if faulted.set_route_faults(&route, Some(spec.clone())).is_ok() {
                if let Err(found) = Snapshot::compile("check", vec![faulted]) {
                    for err in found {
                        // The fault's own fields, named where the experiment wrote them.
                        let field = err.path.split_once(".faults").map_or(String::new(), |(_, rest)| rest.to_string());
                        errors.push(refusal(&id, &format!("{at}{field}"), err.message));
                    }
                }
            }
            out.push((f.target.policy.clone(), route, spec));
        }
        out
    }

    /// At most one live experiment per faulted route, and a cap on the blast radii faulting
    /// one policy at once.
    fn check_overlap(&self, inner: &Inner, e: &ChaosExperiment, errors: &mut Vec<ValidationError>) {
        let id = e.id();
        if inner.live.contains_key(&id) {
            errors.push(refusal(
                &id,
                "metadata.name",
                format!("experiment {id} is already running; abort it or use another name"),
            ));
        }
        let radius = |x: &ChaosExperiment| x.spec.blast_radius.as_ref().and_then(|b| b.percent).unwrap_or(100.0);
        for (i, f) in e.spec.faults.iter().enumerate() {
            let others = || inner.live.values().filter(|l| l.experiment.id() != id);
            let same_route = others().find(|o| {
                o.experiment
                    .spec
                    .faults
                    .iter()
                    .any(|g| g.target.policy == f.target.policy && g.target.route_name() == f.target.route_name())
            });
            if let Some(o) = same_route {
                errors.push(refusal(
                    &id,
                    &format!("spec.faults[{i}].target"),
                    format!(
                        "experiment {} already faults route {} of {}",
                        o.experiment.id(),
                        f.target.route_name(),
                        f.target.policy
                    ),
                ));
                continue;
            }
            let same_policy: Vec<&Live> = others()
                .filter(|o| o.experiment.spec.faults.iter().any(|g| g.target.policy == f.target.policy))
                .collect();
            let total = radius(e) + same_policy.iter().map(|o| radius(&o.experiment)).sum::<f64>();
            if !same_policy.is_empty() && total > MAX_CONCURRENT_BLAST_PERCENT {
                errors.push(refusal(
                    &id,
                    "spec.blastRadius.percent",
                    format!("with the experiments already faulting {}, {total}% of its traffic would be in a blast radius; at most {MAX_CONCURRENT_BLAST_PERCENT}% at once", f.target.policy),
                ));
            }
        }
    }

    /// Runs an admitted experiment to its end.
    async fn drive(self: Arc<Self>, id: String, faults: Vec<(String, String, FaultSpec)>) {
        let Some((experiment, guard, wake)) =
            self.with_live(&id, |l| (l.experiment.clone(), l.guard.clone(), l.wake.clone()))
        else {
            return;
        };
        let every = experiment::evaluate_every(&experiment);
        let lease = (every * LEASE_INTERVALS).max(MIN_LEASE);

        // Preflight: measure the baseline.
        self.transition(&id, State::Preflight, |_| {});
        self.publish_observations().await;
        let baseline_for = experiment.spec.preflight.as_ref().map_or(every, |p| p.baseline.get());
        let t0 = Instant::now();
        let cp0 = self.with_live(&id, |l| l.measure.checkpoint(t0)).unwrap_or_default();
        if let Some(reason) = self.wait(&id, &wake, t0 + baseline_for + every).await {
            return self.finish(&id, State::Aborted, Verdict::Aborted, reason, None, &faults).await;
        }
        let (baseline, proxies) =
            self.with_live(&id, |l| (l.measure.since(&cp0), l.measure.proxies())).unwrap_or_default();
        self.transition(&id, State::Preflight, |r| {
            r.baseline = Some(Phase::of(&baseline, t0.elapsed().as_secs_f64()));
            r.proxies = proxies.clone();
        });
        if proxies.is_empty() {
            let why = format!(
                "no proxy measured {} during the baseline: nothing could guard the experiment",
                experiment.spec.steady_state.observe.policy
            );
            return self.finish(&id, State::Refused, Verdict::Refused, why, None, &faults).await;
        }
        if experiment.spec.preflight.is_some() {
            if let Some(why) = guard.preflight_refusal(&baseline) {
                return self.finish(&id, State::Refused, Verdict::Refused, why, None, &faults).await;
            }
        }

        // Running: faults with a lease, renewed; the guard judged every interval.
        let mut expires = SystemTime::now() + lease;
        if let Err(why) = self.set_faults(&faults, expires).await {
            return self.finish(&id, State::Aborted, Verdict::Aborted, why, None, &faults).await;
        }
        let started = Instant::now();
        let cp_start = self.with_live(&id, |l| l.measure.checkpoint(started)).unwrap_or_default();
        self.transition(&id, State::Running, |r| r.faults_set_at = Some(now_rfc3339()));
        let end = started + experiment.spec.duration.get();
        let mut evaluations = 0u64;
        let outcome = loop {
            let next = (Instant::now() + every).min(end);
            if let Some(reason) = self.wait(&id, &wake, next).await {
                break (State::Aborted, Verdict::Aborted, reason, None);
            }
            evaluations += 1;
            let from = Instant::now().checked_sub(guard.window).map_or(started, |t| t.max(started));
            let judged = self.with_live(&id, |l| (l.measure.window(from), l.measure.local_abort.clone()));
            let Some((window, local)) = judged else { break (State::Aborted, Verdict::Aborted, "lost".into(), None) };
            let gauge = |bound: &'static str, v: f64| {
                self.metrics.guard.get_or_create(&metrics::GuardLabels { experiment: id.clone(), bound }).set(v);
            };
            gauge("errorRate", window.error_rate());
            for (q, bound) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
                gauge(bound, window.quantile_ms(q));
            }
            if let Some((proxy, reason)) = local {
                let breach = breach_from_local(&reason, &proxy);
                break (
                    State::Aborted,
                    Verdict::Broken,
                    format!("guard crossed on proxy {proxy}: {reason}"),
                    Some(breach),
                );
            }
            if let Some(b) = guard.breaches(&window).into_iter().next() {
                let record = record::BreachRecord {
                    bound: b.bound.clone(),
                    observed: b.observed,
                    limit: b.limit,
                    at: now_rfc3339(),
                    seen_by: "control plane".into(),
                };
                break (State::Aborted, Verdict::Broken, format!("guard crossed: {b}"), Some(record));
            }
            if Instant::now() >= end {
                break (State::Completed, Verdict::Held, String::new(), None);
            }
            // Renewed before it runs low: a few intervals of slack for a slow store or push.
            let left = expires.duration_since(SystemTime::now()).unwrap_or_default();
            if left <= every * (LEASE_INTERVALS - 2) {
                expires = SystemTime::now() + lease;
                if let Err(why) = self.set_faults(&faults, expires).await {
                    break (State::Aborted, Verdict::Aborted, why, None);
                }
            }
            if evaluations % 10 == 0 {
                let during = self.with_live(&id, |l| l.measure.since(&cp_start)).unwrap_or_default();
                self.transition(&id, State::Running, |r| {
                    r.during = Some(Phase::of(&during, started.elapsed().as_secs_f64()));
                    r.evaluations = evaluations;
                });
            }
        };
        let (state, verdict, cause, breach) = outcome;
        let removed = Instant::now();
        self.clear_faults(&id).await;
        let removed_at = now_rfc3339();
        // The proxies' next reports still count requests from before the removal reached them:
        // the during phase ends one interval later, and the after phase starts there.
        tokio::time::sleep(every + every / 4).await;
        let settled = Instant::now();
        let cp_settled = self.with_live(&id, |l| l.measure.checkpoint(settled)).unwrap_or_default();
        let during = self.with_live(&id, |l| l.measure.between(&cp_start, &cp_settled)).unwrap_or_default();
        // Still running until its after phase is measured: the final state comes with the verdict.
        self.transition(&id, State::Running, |r| {
            r.faults_removed_at = Some(removed_at.clone());
            r.during = Some(Phase::of(&during, settled.duration_since(started).as_secs_f64()));
            r.evaluations = evaluations;
        });

        // After: how long until the signals are back within the baseline band, watched for a
        // window (at least five intervals, at most a minute).
        let after_for = guard.window.max(every * 5).min(MAX_AFTER);
        let cp_removed = cp_settled;
        let mut recovery = None;
        let mut previous = cp_removed.clone();
        while removed.elapsed() < after_for {
            tokio::time::sleep(every).await;
            let now = Instant::now();
            let Some((interval, checkpoint)) = self.with_live(&id, |l| {
                let cp = l.measure.checkpoint(now);
                (l.measure.between(&previous, &cp), cp)
            }) else {
                break;
            };
            previous = checkpoint;
            if recovery.is_none() && interval.requests > 0 && within_band(&baseline, &interval, &guard) {
                recovery = Some(removed.elapsed().as_secs_f64());
            }
        }
        let after = self.with_live(&id, |l| l.measure.since(&cp_removed)).unwrap_or_default();
        self.transition(&id, State::Running, |r| {
            r.after = Some(Phase::of(&after, settled.elapsed().as_secs_f64()));
            r.recovery_seconds = recovery;
        });
        self.finish(&id, state, verdict, cause, breach, &[]).await;
    }

    /// Sleeps until `until`, or returns early with the reason the experiment must stop.
    async fn wait(&self, id: &str, wake: &Notify, until: Instant) -> Option<String> {
        loop {
            if let Some(reason) = self.with_live(id, |l| l.abort.clone()).flatten() {
                return Some(reason);
            }
            if self.with_live(id, |l| l.measure.local_abort.is_some()).unwrap_or(false) || Instant::now() >= until {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = wake.notified() => {}
            }
        }
    }

    fn with_live<T>(&self, id: &str, f: impl FnOnce(&mut Live) -> T) -> Option<T> {
        self.inner.lock().live.get_mut(id).map(f)
    }

    /// Sets the state, edits the report, and writes every record.
    fn transition(&self, id: &str, state: State, edit: impl FnOnce(&mut Report)) {
        let mut inner = self.inner.lock();
        let Some(r) = inner.records.get_mut(id) else { return };
        r.state = state;
        r.report.state = Some(state);
        edit(&mut r.report);
        if let Err(e) = record::save(&self.file, &inner.records) {
            tracing::error!(experiment = %id, error = %e, "cannot write the experiment records");
        }
    }

    /// Ends the experiment: faults cleared (when `faults` were possibly set), observation
    /// withdrawn, the final report written.
    async fn finish(
        &self,
        id: &str,
        state: State,
        verdict: Verdict,
        cause: String,
        breach: Option<record::BreachRecord>,
        faults: &[(String, String, FaultSpec)],
    ) {
        if !faults.is_empty() {
            self.clear_faults(id).await;
        }
        self.metrics.forget_guard(id);
        if let Some(b) = &breach {
            let seen_by = if b.seen_by.starts_with("proxy") { "proxy" } else { "control plane" };
            let labels = metrics::BreachLabels { experiment: id.to_string(), bound: b.bound.clone(), seen_by };
            self.metrics.breaches.get_or_create(&labels).inc();
        }
        let injected = self.with_live(id, |l| (l.measure.injected.clone(), l.measure.proxies())).unwrap_or_default();
        self.transition(id, state, |r| {
            r.verdict = Some(verdict);
            if !cause.is_empty() {
                r.cause = Some(cause.clone());
            }
            if breach.is_some() {
                r.breach = breach;
            }
            r.injected = injected.0;
            if !injected.1.is_empty() {
                r.proxies = injected.1;
            }
            r.ended_at = Some(now_rfc3339());
        });
        self.inner.lock().live.remove(id);
        self.publish_observations().await;
        tracing::info!(experiment = %id, state = state.as_str(), ?verdict, %cause, "experiment ended");
    }

    /// Publishes what every live experiment observes.
    async fn publish_observations(&self) {
        let observations: Vec<pb::Observation> = {
            let inner = self.inner.lock();
            inner
                .live
                .values()
                .map(|l| {
                    let s = &l.experiment.spec.steady_state;
                    pb::Observation {
                        experiment: l.experiment.id(),
                        policy: s.observe.policy.clone(),
                        route: s.observe.route.clone().unwrap_or_default(),
                        evaluate_every_ms: u32::try_from(experiment::evaluate_every(&l.experiment).as_millis())
                            .unwrap_or(u32::MAX),
                        steady_state_yaml: yaml_serde::to_string(s).unwrap_or_default(),
                    }
                })
                .collect()
        };
        let store = self.store.lock().await;
        self.publisher.observe(&store, observations);
    }

    /// Writes the faults into their routes with `expires` as their end, and publishes.
    async fn set_faults(&self, faults: &[(String, String, FaultSpec)], expires: SystemTime) -> Result<(), String> {
        let mut store = self.store.lock().await;
        for (policy, route, spec) in faults {
            let mut spec = spec.clone();
            spec.expires_at = Some(format_rfc3339(expires));
            let route = route.clone();
            store
                .edit(policy, move |doc| doc.set_route_faults(&route, Some(spec)))
                .map_err(|e| format!("cannot set the faults on {policy}: {e}"))?;
        }
        self.publisher.publish(&store);
        Ok(())
    }

    /// Removes every fault of experiment `id` from the store, wherever it is, and publishes.
    async fn clear_faults(&self, id: &str) {
        let mut store = self.store.lock().await;
        let ours: Vec<(String, String)> = store
            .list()
            .filter_map(|(pid, _)| store.doc(pid).map(|d| (pid.clone(), d)))
            .flat_map(|(pid, d)| {
                std::iter::once(bulwark_policy::compile::DEFAULT_ROUTE.to_string())
                    .chain(d.spec.routes.iter().map(|r| r.name.clone()))
                    .filter(|r| d.route_faults(r).is_some_and(|f| f.experiment.as_deref() == Some(id)))
                    .map(|r| (pid.clone(), r))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (policy, route) in ours {
            if let Err(e) = store.edit(&policy, |doc| doc.set_route_faults(&route, None)) {
                tracing::error!(experiment = %id, %policy, %route, error = %e, "cannot clear the experiment's faults; they end with their lease");
            }
        }
        self.publisher.publish(&store);
    }
}

/// The route faults an experiment fault becomes: its kinds with their shares scaled by the
/// blast radius, the radius's identities and headers as the match, tagged with the experiment.
fn fault_spec(e: &ChaosExperiment, f: &experiment::ExperimentFault, lease: Duration) -> FaultSpec {
    let radius = e.spec.blast_radius.clone().unwrap_or_default();
    let scale = radius.percent.unwrap_or(100.0) / 100.0;
    let scaled = |mut d: bulwark_policy::spec::DelaySpec| {
        d.percent *= scale;
        d
    };
    let delay = f.delay.clone().map(scaled);
    let response_delay = f.response_delay.clone().map(scaled);
    let abort = f.abort.clone().map(|mut a| {
        a.percent *= scale;
        a
    });
    let response_bandwidth = f.response_bandwidth.clone().map(|mut b| {
        b.percent *= scale;
        b
    });
    let matches = (!radius.identities.is_empty() || !radius.headers.is_empty()).then(|| FaultMatchSpec {
        headers: radius.headers.clone(),
        identities: radius.identities.clone(),
        client_percent: None,
    });
    FaultSpec {
        delay,
        abort,
        response_delay,
        response_bandwidth,
        matches,
        expires_at: Some(format_rfc3339(SystemTime::now() + lease)),
        for_: None,
        experiment: Some(e.id()),
    }
}

/// A proxy's words about its breach, as a record (the bound is the first word of them).
fn breach_from_local(reason: &str, proxy: &str) -> record::BreachRecord {
    let bound = if reason.starts_with("error rate") {
        "errorRate"
    } else {
        reason.split_whitespace().next().unwrap_or("guard")
    };
    let numbers: Vec<f64> =
        reason.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|n| n.parse().ok()).collect();
    let (observed, limit) = match (numbers.first(), numbers.get(1)) {
        (Some(o), Some(l)) if bound == "errorRate" => (o / 100.0, l / 100.0),
        (Some(o), Some(l)) => (*o, *l),
        _ => (0.0, 0.0),
    };
    record::BreachRecord { bound: bound.into(), observed, limit, at: now_rfc3339(), seen_by: format!("proxy {proxy}") }
}

/// The interval's signals are within the baseline band: error rate at most the baseline's
/// plus half a percent (or twice it), each guarded quantile at most one and a half times the
/// baseline's or 10 ms more, whichever is larger (a millisecond baseline moves by more than
/// half on a busy machine), and never above the bound.
fn within_band(baseline: &experiment::Counts, interval: &experiment::Counts, guard: &Guard) -> bool {
    let base_rate = baseline.error_rate();
    if interval.error_rate() > (base_rate * 2.0).max(base_rate + 0.005) {
        return false;
    }
    guard.max_latency.iter().all(|&(q, bound)| {
        let base = baseline.quantile_ms(q);
        let allowed = (base * 1.5).max(base + 10.0).min(bound.as_secs_f64() * 1000.0);
        interval.quantile_ms(q) <= allowed.max(base)
    })
}
