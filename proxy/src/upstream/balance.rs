//! Choosing an endpoint of an upstream's endpoint set for each try, and setting aside the
//! ones that keep failing.
//!
//! - **least-request** (default): two healthy endpoints drawn at random, the one with fewer
//!   requests in flight wins (power of two choices: near-best balance without scanning).
//! - **round-robin**: healthy endpoints in turn.
//! - A retry avoids the endpoints the request already tried, when another healthy one exists.
//! - **Outlier detection**: an endpoint with `consecutive5xx` 5xx responses, connect failures
//!   or resets in a row is ejected for `baseEjection × times ejected`, unless that would eject
//!   more than `maxEjectionPercent` of the set; it returns by itself when the time is up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use bulwark_policy::{LoadBalancer, OutlierPolicy};
use dashmap::DashMap;
use tokio::time::Instant;

use super::ClusterKey;
use super::Outcome;

/// The longest an endpoint stays ejected, however often it was ejected before.
const MAX_EJECTION: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bound on endpoint sets tracked; beyond it a set is balanced without remembered state.
const MAX_CLUSTERS: usize = 10_000;

/// Endpoints that left the set are remembered up to this many (beyond twice the set's size),
/// so an address that flaps out of DNS and back keeps its ejection.
const KEEP_DEPARTED: usize = 64;
/// Picks between two looks at how many endpoints are remembered.
const SWEEP_EVERY: usize = 64;

#[derive(Default)]
struct Endpoint {
    in_flight: AtomicUsize,
    consecutive: AtomicU32,
    times_ejected: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().is_some_and(|until| now < until)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Config {
    lb: LoadBalancer,
    outlier: Option<OutlierPolicy>,
}

pub struct Cluster {
    config: Config,
    endpoints: DashMap<SocketAddr, Arc<Endpoint>>,
    next: AtomicUsize,
    picks: AtomicUsize,
    on_eject: Box<dyn Fn(SocketAddr) + Send + Sync>,
}

/// Counts a request in flight to an endpoint while held.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Cluster {
    fn new(config: Config, on_eject: Box<dyn Fn(SocketAddr) + Send + Sync>) -> Cluster {
        Cluster { config, endpoints: DashMap::new(), next: AtomicUsize::new(0), picks: AtomicUsize::new(0), on_eject }
    }

    fn endpoint(&self, addr: SocketAddr) -> Arc<Endpoint> {
        self.endpoints.entry(addr).or_default().clone()
    }

    /// The endpoint for the next try, or None when every endpoint is ejected.
    pub fn pick(&self, set: &[SocketAddr], avoid: &[SocketAddr], now: Instant) -> Option<SocketAddr> {
        self.forget_departed(set);
        let healthy: Vec<SocketAddr> = set.iter().copied().filter(|a| !self.endpoint(*a).ejected(now)).collect();
        let fresh: Vec<SocketAddr> = healthy.iter().copied().filter(|a| !avoid.contains(a)).collect();
        let choices = if fresh.is_empty() { &healthy } else { &fresh };
        match choices.len() {
            0 => None,
            1 => Some(choices[0]),
            n => Some(match self.config.lb {
                LoadBalancer::RoundRobin => choices[self.next.fetch_add(1, Ordering::Relaxed) % n],
                LoadBalancer::LeastRequest => {
                    let a = fastrand::usize(..n);
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    let load = |i: usize| self.endpoint(choices[i]).in_flight.load(Ordering::Acquire);
                    if load(b) < load(a) {
                        choices[b]
                    } else {
                        choices[a]
                    }
                }
            }),
        }
    }

    /// Drops the state of endpoints that left the set (a service whose pods come and go would
    /// otherwise keep one entry per address it ever had), once there are many more entries
    /// than endpoints: amortized O(1) per pick. Endpoints with requests in flight stay.
    fn forget_departed(&self, set: &[SocketAddr]) {
        // Counting a DashMap takes a lock per shard: look only every so many picks.
        if self.picks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != 0
            || self.endpoints.len() <= set.len().saturating_mul(2).saturating_add(KEEP_DEPARTED)
        {
            return;
        }
        let current: std::collections::HashSet<&SocketAddr> = set.iter().collect();
        self.endpoints.retain(|a, e| current.contains(a) || e.in_flight.load(Ordering::Acquire) > 0);
    }

    #[cfg(test)]
    fn known_endpoints(&self) -> usize {
        self.endpoints.len()
    }

    pub fn begin(&self, addr: SocketAddr) -> InFlight {
        let e = self.endpoint(addr);
        e.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(e)
    }

    /// Records a try's outcome for outlier detection.
    pub fn report(&self, addr: SocketAddr, outcome: Outcome, set: &[SocketAddr], now: Instant) {
        let Some(policy) = &self.config.outlier else {
            return;
        };
        let e = self.endpoint(addr);
        if !outcome.is_endpoint_failure() {
            e.consecutive.store(0, Ordering::Release);
            return;
        }
        if e.consecutive.fetch_add(1, Ordering::AcqRel) + 1 < policy.consecutive_5xx {
            return;
        }
        let ejected = set.iter().filter(|a| **a != addr && self.endpoint(**a).ejected(now)).count();
        // As Envoy does, one endpoint of a set of two or more may always be ejected, so a small
        // set is protected too; the only endpoint never is (there is nowhere else to go).
        let within = (ejected + 1) as f64 * 100.0 <= policy.max_ejection_percent * set.len() as f64;
        if set.len() < 2 || !(within || ejected == 0) {
            return;
        }
        let times = e.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
        let ejection = policy.base_ejection.saturating_mul(times).min(MAX_EJECTION);
        *e.ejected_until.lock() = Some(now + ejection);
        e.consecutive.store(0, Ordering::Release);
        (self.on_eject)(addr);
    }

    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.endpoint(addr).ejected(now)
    }
}

/// The balancing state of every endpoint set, kept while its configuration is unchanged.
pub struct Clusters {
    map: DashMap<ClusterKey, Arc<Cluster>>,
    on_eject: Arc<dyn Fn(SocketAddr) + Send + Sync>,
}

impl Clusters {
    pub fn new(on_eject: Arc<dyn Fn(SocketAddr) + Send + Sync>) -> Clusters {
        Clusters { map: DashMap::new(), on_eject }
    }

    pub fn get(&self, key: &ClusterKey, lb: LoadBalancer, outlier: Option<&OutlierPolicy>) -> Arc<Cluster> {
        let config = Config { lb, outlier: outlier.cloned() };
        if let Some(c) = self.map.get(key) {
            if c.config == config {
                return c.clone();
            }
        }
        let on_eject = self.on_eject.clone();
        let cluster = Arc::new(Cluster::new(config, Box::new(move |a| on_eject(a))));
        if self.map.len() < MAX_CLUSTERS || self.map.contains_key(key) {
            self.map.insert(key.clone(), cluster.clone());
        }
        cluster
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|i| SocketAddr::from(([127, 0, 0, 1], i))).collect()
    }

    fn cluster(lb: LoadBalancer, outlier: Option<OutlierPolicy>) -> (Cluster, Arc<AtomicUsize>) {
        let ejections = Arc::new(AtomicUsize::new(0));
        let e = ejections.clone();
        (
            Cluster::new(
                Config { lb, outlier },
                Box::new(move |_| {
                    e.fetch_add(1, Ordering::SeqCst);
                }),
            ),
            ejections,
        )
    }

    const FAIL: Outcome = Outcome::Response { status: 503, grpc: None };
    const OK: Outcome = Outcome::Response { status: 200, grpc: None };

    #[tokio::test(start_paused = true)]
    async fn endpoints_that_left_the_set_are_forgotten_and_busy_ones_kept() {
        let (c, _) = cluster(LoadBalancer::LeastRequest, None);
        let now = Instant::now();
        let busy = c.begin(SocketAddr::from(([10, 0, 0, 1], 80)));
        // A service whose three pods are replaced 1,000 times.
        for generation in 0..1000u32 {
            let set: Vec<SocketAddr> =
                (0..3u32).map(|i| SocketAddr::from(((generation * 3 + i + 100).to_be_bytes(), 8080))).collect();
            for _ in 0..2 {
                let picked = c.pick(&set, &[], now).unwrap();
                assert!(set.contains(&picked));
            }
        }
        let bound = 3 * 2 + KEEP_DEPARTED + 3 * SWEEP_EVERY;
        assert!(c.known_endpoints() <= bound, "{} endpoints remembered (bound {bound})", c.known_endpoints());
        assert!(c.endpoints.contains_key(&SocketAddr::from(([10, 0, 0, 1], 80))), "one with a request in flight stays");
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cycles_and_retries_avoid_tried_endpoints() {
        let (c, _) = cluster(LoadBalancer::RoundRobin, None);
        let set = addrs(3);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| c.pick(&set, &[], now).unwrap()).collect();
        assert_eq!(picks, [set[0], set[1], set[2], set[0], set[1], set[2]]);
        for _ in 0..10 {
            let p = c.pick(&set, &[set[0], set[1]], now).unwrap();
            assert_eq!(p, set[2], "the one not tried yet");
        }
        assert!(c.pick(&set, &set, now).is_some(), "all tried: any healthy one");
    }

    #[tokio::test(start_paused = true)]
    async fn least_request_prefers_the_less_loaded() {
        let (c, _) = cluster(LoadBalancer::LeastRequest, None);
        let set = addrs(2);
        let _busy: Vec<InFlight> = (0..5).map(|_| c.begin(set[0])).collect();
        for _ in 0..50 {
            assert_eq!(c.pick(&set, &[], Instant::now()), Some(set[1]));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_n_failures_for_base_times_n_and_caps_the_share() {
        let p =
            OutlierPolicy { consecutive_5xx: 3, base_ejection: Duration::from_secs(10), max_ejection_percent: 50.0 };
        let (c, ejections) = cluster(LoadBalancer::RoundRobin, Some(p));
        let set = addrs(2);
        let now = Instant::now();
        c.report(set[0], FAIL, &set, now);
        c.report(set[0], OK, &set, now);
        c.report(set[0], FAIL, &set, now);
        c.report(set[0], FAIL, &set, now);
        assert!(!c.is_ejected(set[0], now), "a success broke the run");
        c.report(set[0], Outcome::ConnectFailure, &set, now);
        assert!(c.is_ejected(set[0], now));
        for _ in 0..10 {
            assert_eq!(c.pick(&set, &[], now), Some(set[1]), "an ejected endpoint gets no traffic");
        }
        // The other one fails too, but ejecting it would exceed 50%.
        for _ in 0..5 {
            c.report(set[1], FAIL, &set, now);
        }
        assert!(!c.is_ejected(set[1], now));
        assert_eq!(ejections.load(Ordering::SeqCst), 1);
        // Back after 10 s; a second ejection lasts 20 s.
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = Instant::now();
        assert!(!c.is_ejected(set[0], later));
        for _ in 0..3 {
            c.report(set[0], FAIL, &set, later);
        }
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(c.is_ejected(set[0], Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!c.is_ejected(set[0], Instant::now()));
    }
}
