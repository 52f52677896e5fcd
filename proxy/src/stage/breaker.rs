//! Circuit breaker, as users of Resilience4j and Envoy read it:
//!
//! - **Closed**: requests pass. The breaker opens when `consecutiveFailures` failures arrive in
//!   a row, or when, over the sliding `window` with at least `minimumRequests` requests, the
//!   failure rate reaches `failureRatePercent` or the slow-call rate (slower than
//!   `slowCall.over`) reaches `slowCall.ratePercent`.
//! - **Open**: requests are refused at once (`circuit-open`) for `openFor`.
//! - **HalfOpen**: up to `halfOpenRequests` trial requests pass; if all succeed the breaker
//!   closes, and the first failure re-opens it. Other requests are refused meanwhile.
//!
//! Which outcomes are failures is `failureOn`. The window is kept in ten slices, so rates are
//! measured over the last `window` to within one slice. A trial abandoned before it finished
//! (the client went away) gives its slot back.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bulwark_policy::BreakerPolicy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::Refusal;
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::record::Record;
use crate::telemetry::route_family::RouteFamily;
use crate::upstream::Outcome;

const SLICES: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    policy: String,
    route: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    policy: String,
    route: String,
    from: &'static str,
    to: &'static str,
}

/// Breakers by state, and transitions, by route.
#[derive(Clone)]
pub struct BreakerFamilies {
    state: RouteFamily<StateLabels, Gauge>,
    transitions: RouteFamily<TransitionLabels, Counter>,
}

impl BreakerFamilies {
    pub fn register(r: &mut Registry) -> BreakerFamilies {
        BreakerFamilies {
            state: RouteFamily::register(
                r,
                "breaker_state",
                "Circuit breakers of a route in each state (closed, open, half-open)",
            ),
            transitions: RouteFamily::register(r, "breaker_transitions", "Circuit breaker state changes"),
        }
    }

    pub fn route(&self, labels: &StageLabels) -> BreakerMetrics {
        let state = |state| {
            self.state.handle(
                &labels.policy,
                &labels.route,
                &StateLabels { policy: labels.policy.clone(), route: labels.route.clone(), state },
            )
        };
        BreakerMetrics {
            closed: state("closed"),
            open: state("open"),
            half_open: state("half-open"),
            transitions: self.transitions.clone(),
            labels: labels.clone(),
        }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.state.forget(policy, route);
        self.transitions.forget(policy, route);
    }
}

/// One route's breakers: how many are in each state, and their transitions.
#[derive(Clone)]
pub struct BreakerMetrics {
    closed: Gauge,
    open: Gauge,
    half_open: Gauge,
    transitions: RouteFamily<TransitionLabels, Counter>,
    labels: StageLabels,
}

impl BreakerMetrics {
    /// The number of this route's breakers in `state`.
    pub fn breakers_in(&self, state: State) -> &Gauge {
        match state {
            State::Closed => &self.closed,
            State::Open => &self.open,
            State::HalfOpen => &self.half_open,
        }
    }

    pub fn transition(&self, from: State, to: State) {
        self.breakers_in(from).dec();
        self.breakers_in(to).inc();
        let labels = TransitionLabels {
            policy: self.labels.policy.clone(),
            route: self.labels.route.clone(),
            from: from.as_str(),
            to: to.as_str(),
        };
        self.transitions.with(&self.labels.policy, &self.labels.route, &labels, |c| c.inc());
    }
}

/// The stage: a permit to call the upstream (a half-open trial is given back if the request
/// is dropped before its outcome is recorded), or `circuit-open` at once. The breaker's state
/// as this request saw it goes into the record.
pub fn admit(breaker: Option<&Arc<Breaker>>, rec: &mut Record) -> Result<Option<Permit>, Refusal> {
    let Some(b) = breaker else { return Ok(None) };
    match b.admit(Instant::now()) {
        Ok(p) => {
            rec.breaker = Some(if p.is_trial() { "half-open" } else { "closed" });
            Ok(Some(p))
        }
        Err(CircuitOpen) => {
            rec.breaker = Some("open");
            Err(Reason::CircuitOpen.into())
        }
    }
}

/// Refused because the breaker is open (or half-open with every trial slot taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitOpen;

/// Told to whoever watches transitions (metrics, logs).
pub type OnTransition = Box<dyn Fn(State, State) + Send + Sync>;

#[derive(Clone, Copy, Default, Debug)]
struct Slice {
    epoch: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

struct Inner {
    phase: Phase,
    consecutive: u32,
    slices: [Slice; SLICES],
}

pub struct Breaker {
    policy: BreakerPolicy,
    start: Instant,
    slice_len: Duration,
    inner: Mutex<Inner>,
    on_transition: OnTransition,
}

/// What `/breakers` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct View {
    pub state: &'static str,
    pub requests_in_window: u32,
    pub failures_in_window: u32,
    pub slow_in_window: u32,
    pub consecutive_failures: u32,
    /// Seconds until half-open, when open.
    pub half_open_in_seconds: Option<f64>,
}

/// Admission to call the upstream; record its outcome with `record`.
pub struct Permit {
    breaker: Arc<Breaker>,
    trial: bool,
    done: bool,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy, now: Instant, on_transition: OnTransition) -> Arc<Breaker> {
        let slice_len = (policy.window / SLICES as u32).max(Duration::from_millis(1));
        Arc::new(Breaker {
            policy,
            start: now,
            slice_len,
            inner: Mutex::new(Inner { phase: Phase::Closed, consecutive: 0, slices: [Slice::default(); SLICES] }),
            on_transition,
        })
    }

    /// Refuses nothing: the caller lets what it would refuse pass.
    pub fn dry_run(&self) -> bool {
        self.policy.dry_run
    }

    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Permit, CircuitOpen> {
        let mut transition = None;
        let result = {
            let mut inner = self.inner.lock();
            if let Phase::Open { until } = inner.phase {
                if now >= until {
                    inner.phase = Phase::HalfOpen { admitted: 0, succeeded: 0 };
                    transition = Some((State::Open, State::HalfOpen));
                }
            }
            match &mut inner.phase {
                Phase::Closed => Ok(false),
                Phase::Open { .. } => Err(CircuitOpen),
                Phase::HalfOpen { admitted, .. } if *admitted < self.policy.half_open_requests => {
                    *admitted += 1;
                    Ok(true)
                }
                Phase::HalfOpen { .. } => Err(CircuitOpen),
            }
        };
        if let Some((from, to)) = transition {
            (self.on_transition)(from, to);
        }
        result.map(|trial| Permit { breaker: self.clone(), trial, done: false })
    }

    fn on_outcome(&self, trial: bool, outcome: Outcome, elapsed: Duration, now: Instant) {
        let failure = outcome.matches_any(&self.policy.failure_on);
        let slow = self.policy.slow_call.is_some_and(|(over, _)| elapsed > over);
        let mut transition = None;
        {
            let mut inner = self.inner.lock();
            match (&mut inner.phase, trial) {
                (Phase::HalfOpen { succeeded, .. }, true) => {
                    if failure || slow {
                        transition = Some(self.open(&mut inner, now, State::HalfOpen));
                    } else {
                        *succeeded += 1;
                        if *succeeded >= self.policy.half_open_requests {
                            inner.phase = Phase::Closed;
                            inner.consecutive = 0;
                            inner.slices = [Slice::default(); SLICES];
                            transition = Some((State::HalfOpen, State::Closed));
                        }
                    }
                }
                (Phase::Closed, false) => {
                    inner.consecutive = if failure { inner.consecutive + 1 } else { 0 };
                    let epoch =
                        (now.saturating_duration_since(self.start).as_nanos() / self.slice_len.as_nanos()) as u64;
                    let slice = &mut inner.slices[(epoch % SLICES as u64) as usize];
                    if slice.epoch != epoch {
                        *slice = Slice { epoch, ..Slice::default() };
                    }
                    slice.total += 1;
                    slice.failures += u32::from(failure);
                    slice.slow += u32::from(slow);
                    if self.should_trip(&inner, epoch) {
                        transition = Some(self.open(&mut inner, now, State::Closed));
                    }
                }
                // The state changed while this request was in flight; its outcome belongs to
                // a phase that is over.
                _ => {}
            }
        }
        if let Some((from, to)) = transition {
            (self.on_transition)(from, to);
        }
    }

    fn should_trip(&self, inner: &Inner, epoch: u64) -> bool {
        if self.policy.consecutive_failures.is_some_and(|n| inner.consecutive >= n) {
            return true;
        }
        let (total, failures, slow) = window_counts(inner, epoch);
        if total < self.policy.minimum_requests || total == 0 {
            return false;
        }
        let rate = |n: u32| f64::from(n) * 100.0 / f64::from(total);
        self.policy.failure_rate_percent.is_some_and(|p| rate(failures) >= p)
            || self.policy.slow_call.is_some_and(|(_, p)| rate(slow) >= p)
    }

    fn open(&self, inner: &mut Inner, now: Instant, from: State) -> (State, State) {
        inner.phase = Phase::Open { until: now + self.policy.open_for };
        inner.consecutive = 0;
        inner.slices = [Slice::default(); SLICES];
        (from, State::Open)
    }

    fn release_trial(&self) {
        let mut inner = self.inner.lock();
        if let Phase::HalfOpen { admitted, .. } = &mut inner.phase {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// Trials admitted and not yet finished or given back, while half-open.
    pub fn trials_in_flight(&self) -> Option<u32> {
        match self.inner.lock().phase {
            Phase::HalfOpen { admitted, succeeded } => Some(admitted.saturating_sub(succeeded)),
            _ => None,
        }
    }

    pub fn state(&self, now: Instant) -> State {
        match self.inner.lock().phase {
            Phase::Closed => State::Closed,
            // Reported as it will behave: an expired open period admits a trial next.
            Phase::Open { until } if now >= until => State::HalfOpen,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// The phase as last transitioned (what the state gauges count).
    pub fn phase(&self) -> State {
        match self.inner.lock().phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    pub fn view(&self, now: Instant) -> View {
        let state = self.state(now);
        let inner = self.inner.lock();
        let epoch = (now.saturating_duration_since(self.start).as_nanos() / self.slice_len.as_nanos()) as u64;
        let (total, failures, slow) = window_counts(&inner, epoch);
        let half_open_in_seconds = match inner.phase {
            Phase::Open { until } if until > now => Some((until - now).as_secs_f64()),
            _ => None,
        };
        View {
            state: state.as_str(),
            requests_in_window: total,
            failures_in_window: failures,
            slow_in_window: slow,
            consecutive_failures: inner.consecutive,
            half_open_in_seconds,
        }
    }
}

fn window_counts(inner: &Inner, epoch: u64) -> (u32, u32, u32) {
    inner
        .slices
        .iter()
        .filter(|s| s.total > 0 && s.epoch + SLICES as u64 > epoch)
        .fold((0, 0, 0), |(t, f, s), x| (t + x.total, f + x.failures, s + x.slow))
}

impl Permit {
    /// A half-open trial (otherwise the breaker was closed).
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    pub fn record(mut self, outcome: Outcome, elapsed: Duration, now: Instant) {
        self.done = true;
        self.breaker.on_outcome(self.trial, outcome, elapsed, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.trial && !self.done {
            self.breaker.release_trial();
        }
    }
}

#[cfg(test)]
mod tests;
