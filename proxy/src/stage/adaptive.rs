//! Adaptive concurrency: a route's concurrency limit found by measuring the upstream, after
//! Envoy's gradient controller. Every `minRttInterval` (± jitter) the limit is pinned to
//! `minLimit` until `minRttRequests` requests admitted under it have answered: the
//! `samplePercentile` of their latencies is the minimum latency, what the upstream takes
//! unloaded. Between those probes, each `sampleWindow` the same percentile of the window's
//! latencies is compared with it:
//!
//! ```text
//! gradient = clamp(minRtt × (1 + buffer) / sampleRtt, 0.5, 2)
//! limit    = clamp(ceil(gradient × limit + sqrt(gradient × limit)), minLimit, maxLimit)
//! ```
//!
//! so the limit grows while latency stays near the minimum and shrinks (at most by half a
//! window) once requests queue in the upstream; the square root is headroom that lets it
//! probe upwards. Requests over the limit wait in the route's queue by priority class
//! (`admission`), or are refused with `concurrency-limited`.

use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::adaptive::AdaptivePolicy;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::admission::{Admission, Full, Gauges, Permit, Reserves};
use super::Refusal;
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::route_family::RouteFamily;
use crate::upstream::outcome::Outcome;

type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latencies a window keeps at most; past it, a uniform sample of them (reservoir sampling),
/// which the window's percentile is read from.
const MAX_WINDOW_SAMPLES: usize = 4096;

#[derive(Clone)]
pub struct AdaptiveFamilies {
    limit: RouteFamily<StageLabels, Gauge>,
    min_rtt: RouteFamily<StageLabels, Seconds>,
    sample_rtt: RouteFamily<StageLabels, Seconds>,
    samples: RouteFamily<StageLabels, Counter>,
    rejected: RouteFamily<StageLabels, Counter>,
    in_flight: RouteFamily<StageLabels, Gauge>,
    queued: RouteFamily<StageLabels, Gauge>,
}

impl AdaptiveFamilies {
    pub fn register(r: &mut Registry) -> AdaptiveFamilies {
        AdaptiveFamilies {
            limit: RouteFamily::register(r, "adaptive_limit", "The concurrency limit adaptive concurrency found"),
            min_rtt: RouteFamily::register(
                r,
                "adaptive_min_rtt_seconds",
                "The upstream's latency unloaded, as last measured at the minimum limit",
            ),
            sample_rtt: RouteFamily::register(
                r,
                "adaptive_sample_rtt_seconds",
                "The latency of the last sample window, as adaptive concurrency compares it",
            ),
            samples: RouteFamily::register(r, "adaptive_samples", "Latencies adaptive concurrency has measured"),
            rejected: RouteFamily::register(
                r,
                "adaptive_rejected",
                "Requests refused over the adaptive concurrency limit (concurrency-limited)",
            ),
            in_flight: RouteFamily::register(r, "adaptive_in_flight", "Requests within the adaptive limit"),
            queued: RouteFamily::register(r, "adaptive_queued", "Requests waiting under the adaptive limit"),
        }
    }

    pub fn route(&self, l: &StageLabels) -> AdaptiveMetrics {
        AdaptiveMetrics {
            limit: self.limit.handle(&l.policy, &l.route, l),
            min_rtt: self.min_rtt.handle(&l.policy, &l.route, l),
            sample_rtt: self.sample_rtt.handle(&l.policy, &l.route, l),
            samples: self.samples.handle(&l.policy, &l.route, l),
            rejected: self.rejected.handle(&l.policy, &l.route, l),
            gauges: Gauges {
                in_flight: self.in_flight.handle(&l.policy, &l.route, l),
                queued: self.queued.handle(&l.policy, &l.route, l),
            },
        }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.limit.forget(policy, route);
        self.min_rtt.forget(policy, route);
        self.sample_rtt.forget(policy, route);
        self.samples.forget(policy, route);
        self.rejected.forget(policy, route);
        self.in_flight.forget(policy, route);
        self.queued.forget(policy, route);
    }
}

#[derive(Clone, Default)]
pub struct AdaptiveMetrics {
    limit: Gauge,
    min_rtt: Seconds,
    sample_rtt: Seconds,
    samples: Counter,
    rejected: Counter,
    gauges: Gauges,
}

pub struct Adaptive {
    policy: AdaptivePolicy,
    slots: Arc<Admission>,
    controller: Mutex<Controller>,
    metrics: AdaptiveMetrics,
}

struct Controller {
    /// Bumped at each probe's start and end, so a latency is only counted in the phase its
    /// request was admitted in (one admitted before a probe saw the old, higher concurrency).
    epoch: u64,
    probing: bool,
    /// The limit to go back to after a probe.
    limit: u32,
    min_rtt: Option<Duration>,
    samples: Reservoir,
    window_start: Instant,
    next_probe: Instant,
}

/// A request inside the adaptive limit: its latency is measured from here to `done`.
pub struct Admitted {
    _permit: Option<Permit>,
    started: Instant,
    epoch: u64,
    /// The priority class's reserve refused it, or would have (a priority in dry-run).
    pub would_shed: bool,
}

/// The stage: a place within the limit for the request's class (waiting for one in the
/// queue if there is one), or `concurrency-limited`. In dry-run, a request over the limit is
/// let through and measured all the same; the caller counts what would have been refused.
pub async fn enter(adaptive: Option<&Adaptive>, class: usize) -> Result<Option<Admitted>, Refusal> {
    let Some(a) = adaptive else { return Ok(None) };
    let epoch = a.controller.lock().epoch;
    let permit =
        if a.policy.dry_run { a.slots.try_take(class) } else { a.slots.take(class, a.policy.queue_timeout).await };
    match permit {
        Ok(p) => Ok(Some(Admitted { would_shed: p.would_shed, _permit: Some(p), started: Instant::now(), epoch })),
        Err(Full) => {
            // In dry-run the caller counts it as what would have been refused.
            if !a.policy.dry_run {
                a.metrics.rejected.inc();
            }
            Err(Reason::ConcurrencyLimited.into())
        }
    }
}

impl Adaptive {
    pub fn new(policy: AdaptivePolicy, reserves: Reserves, metrics: AdaptiveMetrics) -> Adaptive {
        let now = Instant::now();
        let slots = Admission::new(policy.min_limit, policy.max_queued, reserves, metrics.gauges.clone());
        metrics.limit.set(i64::from(policy.min_limit));
        Adaptive {
            controller: Mutex::new(Controller {
                epoch: 0,
                // The first thing it does is learn the upstream's unloaded latency.
                probing: true,
                limit: policy.min_limit,
                min_rtt: None,
                samples: Reservoir::default(),
                window_start: now,
                next_probe: now,
            }),
            policy,
            slots,
            metrics,
        }
    }

    /// A request of a dry-run limit, over the limit: let through and measured all the same.
    pub fn unlimited(&self) -> Admitted {
        Admitted { _permit: None, started: Instant::now(), epoch: self.controller.lock().epoch, would_shed: false }
    }

    pub fn dry_run(&self) -> bool {
        self.policy.dry_run
    }

    pub fn limit(&self) -> u32 {
        self.slots.limit()
    }

    /// The request's latency until its response headers (or its timeout) is a sample. A 5xx
    /// or a lost connection says nothing of how loaded the upstream is: a fast failure would
    /// read as an idle upstream and raise the limit, so those are not counted.
    pub fn done(&self, admitted: &Admitted, how: Outcome, now: Instant) {
        let counts = match how {
            Outcome::Response { status, .. } => status < 500,
            Outcome::Timeout | Outcome::PerTryTimeout => true,
            _ => false,
        };
        if counts {
            self.sample(admitted.epoch, now.saturating_duration_since(admitted.started), now);
        }
    }

    fn sample(&self, epoch: u64, latency: Duration, now: Instant) {
        let mut c = self.controller.lock();
        if epoch != c.epoch {
            return;
        }
        self.metrics.samples.inc();
        c.samples.push(latency);
        let p = &self.policy;
        if c.probing {
            if c.samples.seen < p.min_rtt_requests as usize {
                return;
            }
            let min_rtt = c.samples.percentile(p.sample_percentile);
            c.min_rtt = Some(min_rtt);
            self.metrics.min_rtt.set(min_rtt.as_secs_f64());
            c.probing = false;
            c.epoch = c.epoch.wrapping_add(1);
            c.samples.clear();
            c.window_start = now;
            // Proxies of one fleet do not probe together: a factor in [1 - jitter, 1 + jitter].
            let jitter = 1.0 + p.jitter * (2.0 * fastrand::f64() - 1.0);
            c.next_probe = now + p.min_rtt_interval.mul_f64(jitter);
            self.set_limit(c.limit);
            return;
        }
        if now.saturating_duration_since(c.window_start) < p.sample_window {
            return;
        }
        let sample_rtt = c.samples.percentile(p.sample_percentile);
        self.metrics.sample_rtt.set(sample_rtt.as_secs_f64());
        c.samples.clear();
        c.window_start = now;
        if let Some(min_rtt) = c.min_rtt {
            c.limit = next_limit(p, c.limit, min_rtt, sample_rtt);
        }
        if now >= c.next_probe {
            c.probing = true;
            c.epoch = c.epoch.wrapping_add(1);
            self.slots.set_limit(p.min_limit);
            self.metrics.limit.set(i64::from(p.min_limit));
        } else {
            self.set_limit(c.limit);
        }
    }

    fn set_limit(&self, limit: u32) {
        self.slots.set_limit(limit);
        self.metrics.limit.set(i64::from(limit));
    }
}

/// The latencies of a phase: all of them up to `MAX_WINDOW_SAMPLES`, then a uniform sample.
#[derive(Default)]
struct Reservoir {
    kept: Vec<Duration>,
    seen: usize,
}

impl Reservoir {
    fn push(&mut self, latency: Duration) {
        self.seen = self.seen.saturating_add(1);
        if self.kept.len() < MAX_WINDOW_SAMPLES {
            self.kept.push(latency);
        } else if let Some(slot) = self.kept.get_mut(fastrand::usize(..self.seen)) {
            *slot = latency;
        }
    }

    fn percentile(&mut self, pct: f64) -> Duration {
        percentile(&mut self.kept, pct)
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.seen = 0;
    }
}

/// The gradient step: what the limit becomes after a window whose latency was `sample_rtt`.
pub fn next_limit(p: &AdaptivePolicy, limit: u32, min_rtt: Duration, sample_rtt: Duration) -> u32 {
    let sample = sample_rtt.as_secs_f64().max(1e-9);
    let gradient = (min_rtt.as_secs_f64() * (1.0 + p.buffer) / sample).clamp(0.5, 2.0);
    let scaled = gradient * f64::from(limit);
    let next = (scaled + scaled.sqrt()).ceil();
    // Float to int saturates; the clamp keeps it within what the policy allows.
    (next as u32).clamp(p.min_limit, p.max_limit)
}

/// The `pct` percentile of `samples` (nearest rank); reorders them.
fn percentile(samples: &mut [Duration], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * samples.len() as f64).ceil() as usize;
    let at = rank.saturating_sub(1).min(samples.len() - 1);
    *samples.select_nth_unstable(at).1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdaptivePolicy {
        AdaptivePolicy {
            dry_run: false,
            min_limit: 3,
            max_limit: 1000,
            sample_window: Duration::from_millis(100),
            sample_percentile: 50.0,
            buffer: 0.25,
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_requests: 10,
            jitter: 0.1,
            max_queued: 0,
            queue_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn the_gradient_grows_an_unloaded_limit_and_halves_a_loaded_one_at_most() {
        let p = policy();
        let ms = Duration::from_millis;
        assert_eq!(next_limit(&p, 10, ms(20), ms(20)), 17, "1.25 × 10 + sqrt(12.5)");
        assert_eq!(next_limit(&p, 100, ms(20), ms(1000)), 58, "0.5 × 100 + sqrt(50)");
        assert_eq!(next_limit(&p, 1000, ms(20), ms(1)), 1000, "capped at maxLimit");
        assert_eq!(next_limit(&p, 3, ms(20), Duration::ZERO), 9, "a zero latency cannot divide by zero");
    }

    /// A long `sampleWindow` under heavy traffic must not make the window's latencies grow
    /// without bound (60 s at 100,000 req/s would be 6 million of them).
    #[tokio::test(start_paused = true)]
    async fn a_window_keeps_a_bounded_sample_of_its_latencies() {
        let p = AdaptivePolicy { sample_window: Duration::from_secs(60), min_rtt_requests: 1, ..policy() };
        let a = Adaptive::new(p, Reserves::default(), AdaptiveMetrics::default());
        let now = Instant::now();
        a.sample(0, Duration::from_millis(10), now);
        let epoch = a.controller.lock().epoch;
        for i in 0..100_000u64 {
            a.sample(epoch, Duration::from_micros(i % 1000), now + Duration::from_micros(i));
        }
        let kept = a.controller.lock().samples.kept.len();
        assert!(kept <= MAX_WINDOW_SAMPLES, "{kept} latencies kept");
        assert_eq!(a.metrics.samples.get(), 100_001, "every latency still counted");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    /// An upstream that serves `capacity` requests at once in 10 ms and queues the rest: the
    /// limit settles near the knee, and follows it when it moves.
    #[tokio::test(start_paused = true)]
    async fn the_limit_follows_a_capacity_that_steps_down_and_up() {
        let a = Adaptive::new(policy(), Reserves::default(), AdaptiveMetrics::default());
        let service = Duration::from_millis(10);
        let mut now = Instant::now();
        let run = |capacity: u32, windows: u32, now: &mut Instant| {
            for _ in 0..windows * 10 {
                // Offered load always exceeds the limit: every slot is busy.
                let limit = a.limit();
                let latency = service.mul_f64(f64::from(limit.max(capacity)) / f64::from(capacity));
                let epoch = a.controller.lock().epoch;
                for _ in 0..limit.min(50) {
                    a.sample(epoch, latency, *now);
                }
                *now += Duration::from_millis(10);
            }
            a.limit()
        };
        let at_50 = run(50, 40, &mut now);
        assert!((50..=90).contains(&at_50), "capacity 50: limit {at_50}");
        let at_10 = run(10, 40, &mut now);
        assert!((10..=25).contains(&at_10), "capacity 10: limit {at_10}");
        let back = run(50, 40, &mut now);
        assert!((50..=90).contains(&back), "capacity 50 again: limit {back}");
    }
}
