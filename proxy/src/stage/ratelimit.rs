//! Rate limiting with token buckets. A route's bucket holds `burst` tokens and refills at
//! `perSecond`; each request takes one or is refused with 429 and a `Retry-After` saying when
//! a token will be there. With `perClient`, each client (a header's value or the source IP) also
//! has its own bucket, so one noisy client exhausts only its own share. Per-client buckets are
//! bounded: a bucket that has refilled completely is identical to a new one and is forgotten;
//! when `maxClients` are tracked, the least recently seen eighth of them is forgotten at once,
//! so many clients passing through cost a constant each.

use parking_lot::Mutex;
use std::net::IpAddr;
use std::time::Duration;

use bulwark_policy::stages::Bucket;
use bulwark_policy::{ClientKey, RateLimitPolicy};
use dashmap::DashMap;
use http::HeaderMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::admission::Reserves;
use super::Refusal;
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::route_family::RouteFamily;

/// Longest client key kept; longer header values are cut (they still key a bucket of their own
/// prefix, which errs on the side of limiting).
const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub retry_after: Duration,
    /// True when the client's own bucket refused, false for the route's.
    pub per_client: bool,
}

#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(b: &Bucket, now: Instant) -> TokenBucket {
        TokenBucket { rate: b.per_second, burst: f64::from(b.burst), state: Mutex::new((f64::from(b.burst), now)) }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        self.take_above(now, 0.0)
    }

    /// Takes one token if `floor` tokens (kept for higher priority classes) remain after it,
    /// or says how long until that is so.
    pub fn take_above(&self, now: Instant, floor: f64) -> Result<(), Duration> {
        let mut s = self.state.lock();
        let (tokens, last) = *s;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens - floor >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            // Validation bounds the rate, but the arithmetic must not be able to panic either.
            Err(Duration::try_from_secs_f64((1.0 + floor - tokens) / self.rate)
                .unwrap_or(Duration::from_secs(u32::MAX.into())))
        }
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// True when the bucket would be full at `now`: forgetting it changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let (tokens, last) = *self.state.lock();
        tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate >= self.burst
    }

    fn last_seen(&self) -> Instant {
        self.state.lock().1
    }
}

struct PerClient {
    key: ClientKey,
    bucket: Bucket,
    max_clients: usize,
    buckets: DashMap<String, TokenBucket>,
    /// Buckets looked at while making room, so tests can check eviction stays cheap.
    scanned: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    policy: String,
    route: String,
    scope: &'static str,
}

/// Refusals by route and bucket.
#[derive(Clone)]
pub struct RateLimitFamilies {
    limited: RouteFamily<ScopeLabels, Counter>,
}

impl RateLimitFamilies {
    pub fn register(r: &mut Registry) -> RateLimitFamilies {
        RateLimitFamilies {
            limited: RouteFamily::register(
                r,
                "rate_limited",
                "Requests refused by a rate limit, by bucket (route or client)",
            ),
        }
    }

    pub fn route(&self, l: &StageLabels) -> RateLimitMetrics {
        let scope = |scope| {
            self.limited.handle(
                &l.policy,
                &l.route,
                &ScopeLabels { policy: l.policy.clone(), route: l.route.clone(), scope },
            )
        };
        RateLimitMetrics { route: scope("route"), client: scope("client") }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.limited.forget(policy, route);
    }
}

/// One route's refusals, by the bucket that refused.
#[derive(Clone, Default)]
pub struct RateLimitMetrics {
    route: Counter,
    client: Counter,
}

pub struct RateLimiter {
    dry_run: bool,
    reserves: Reserves,
    route: TokenBucket,
    per_client: Option<PerClient>,
    metrics: RateLimitMetrics,
}

/// The stage: a token for the request, or `rate-limited` with the time until one is there.
/// A token is spent, not held, so nothing is given back. `Ok(true)`: the request's priority
/// class would have been refused (a priority in dry-run).
pub fn admit(
    limiter: Option<&RateLimiter>,
    headers: &HeaderMap,
    client: IpAddr,
    class: usize,
) -> Result<bool, Refusal> {
    let Some(rl) = limiter else { return Ok(false) };
    rl.check_class(headers, client, Instant::now(), class).map_err(|limited| {
        let counter = if limited.per_client { &rl.metrics.client } else { &rl.metrics.route };
        // In dry-run the caller counts it as what would have been refused.
        if !rl.dry_run {
            counter.inc();
        }
        Refusal { reason: Reason::RateLimited, retry_after: Some(limited.retry_after), abort: None }
    })
}

impl RateLimiter {
    /// Refuses nothing: the caller lets what it would refuse pass.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn new(p: &RateLimitPolicy, now: Instant, metrics: RateLimitMetrics) -> RateLimiter {
        Self::with_reserves(p, Reserves::default(), now, metrics)
    }

    /// A limiter whose route bucket keeps each priority class's reserve of `burst` from the
    /// classes below it: a lower class is refused while the bucket is down to what the classes
    /// above it keep.
    pub fn with_reserves(
        p: &RateLimitPolicy,
        reserves: Reserves,
        now: Instant,
        metrics: RateLimitMetrics,
    ) -> RateLimiter {
        RateLimiter {
            dry_run: p.dry_run,
            reserves,
            metrics,
            route: TokenBucket::new(&p.route, now),
            per_client: p.per_client.as_ref().map(|(key, bucket, max)| PerClient {
                key: key.clone(),
                bucket: bucket.clone(),
                max_clients: *max as usize,
                buckets: DashMap::new(),
                scanned: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn check(&self, headers: &HeaderMap, client: IpAddr, now: Instant) -> Result<(), RateLimited> {
        self.check_class(headers, client, now, 0).map(drop)
    }

    /// The client's bucket is checked first, so a noisy client's refused requests do not drain
    /// the route's bucket that quiet clients share. `Ok(true)`: admitted, though the class's
    /// floor would have refused it (a priority in dry-run).
    pub fn check_class(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        now: Instant,
        class: usize,
    ) -> Result<bool, RateLimited> {
        if let Some(pc) = &self.per_client {
            let key = match &pc.key {
                ClientKey::Header(h) => headers.get(h).map(|v| {
                    let b = v.as_bytes();
                    String::from_utf8_lossy(&b[..b.len().min(MAX_KEY_BYTES)]).into_owned()
                }),
                ClientKey::SourceIp => Some(client.to_canonical().to_string()),
            };
            // A request without the key header is limited by the route bucket alone.
            if let Some(key) = key {
                pc.take(key, now).map_err(|retry_after| RateLimited { retry_after, per_client: true })?;
            }
        }
        let floor = self.route.burst() * self.reserves.kept_above(class) / 100.0;
        let refused = |retry_after| RateLimited { retry_after, per_client: false };
        match self.route.take_above(now, floor) {
            Ok(()) => Ok(false),
            Err(_) if self.reserves.judge_only && floor > 0.0 => self.route.take(now).map(|()| true).map_err(refused),
            Err(wait) => Err(refused(wait)),
        }
    }

    pub fn tracked_clients(&self) -> usize {
        self.per_client.as_ref().map_or(0, |pc| pc.buckets.len())
    }

    /// Buckets visited while making room for new clients, in all.
    pub fn eviction_work(&self) -> u64 {
        self.per_client.as_ref().map_or(0, |pc| pc.scanned.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl PerClient {
    fn take(&self, key: String, now: Instant) -> Result<(), Duration> {
        if let Some(b) = self.buckets.get(&key) {
            return b.take(now);
        }
        if self.buckets.len() >= self.max_clients {
            self.make_room(now);
        }
        let b = TokenBucket::new(&self.bucket, now);
        let r = b.take(now);
        self.buckets.insert(key, b);
        r
    }

    /// Forgets full buckets and, if that is not enough, the least recently seen eighth of
    /// the clients at once: one pass over the buckets buys room for an eighth of
    /// `maxClients` new ones, so the cost per new client stays constant however many rotate
    /// through.
    fn make_room(&self, now: Instant) {
        let seen = self.buckets.len() as u64;
        self.buckets.retain(|_, b| !b.is_full(now));
        if self.buckets.len() >= self.max_clients {
            let evict = (self.max_clients / 8).max(1).min(self.buckets.len());
            let mut ages: Vec<(Instant, String)> =
                self.buckets.iter().map(|e| (e.value().last_seen(), e.key().clone())).collect();
            if evict < ages.len() {
                ages.select_nth_unstable_by_key(evict, |(t, _)| *t);
                ages.truncate(evict);
            }
            for (_, key) in ages {
                self.buckets.remove(&key);
            }
        }
        self.scanned.fetch_add(seen.saturating_mul(2), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Seconds for `Retry-After`: whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_policy::stages::Bucket;

    fn policy(rate: f64, burst: u32, per_client: Option<(f64, u32, u32)>) -> RateLimitPolicy {
        RateLimitPolicy {
            dry_run: false,
            route: Bucket { per_second: rate, burst },
            per_client: per_client.map(|(r, b, max)| {
                (ClientKey::Header(http::HeaderName::from_static("x-key")), Bucket { per_second: r, burst: b }, max)
            }),
        }
    }

    fn with_key(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-key", k.parse().unwrap());
        h
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_at_the_rate() {
        let now = Instant::now();
        let rl = RateLimiter::new(&policy(10.0, 3, None), now, RateLimitMetrics::default());
        for _ in 0..3 {
            assert!(rl.check(&HeaderMap::new(), IP, now).is_ok());
        }
        let refused = rl.check(&HeaderMap::new(), IP, now).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert!(!refused.per_client);
        assert!(rl.check(&HeaderMap::new(), IP, now + Duration::from_millis(99)).is_err());
        assert!(rl.check(&HeaderMap::new(), IP, now + Duration::from_millis(200)).is_ok());
    }

    /// Validation refuses such rates; the bucket must not panic on them either (it once did,
    /// with its lock held, failing every later request of the route).
    #[tokio::test(start_paused = true)]
    async fn an_absurd_rate_refuses_without_panicking() {
        let now = Instant::now();
        let rl = RateLimiter::new(&policy(1e-20, 1, None), now, RateLimitMetrics::default());
        assert!(rl.check(&HeaderMap::new(), IP, now).is_ok());
        let refused = rl.check(&HeaderMap::new(), IP, now).unwrap_err();
        assert!(refused.retry_after >= Duration::from_secs(u32::MAX.into()));
        assert!(rl.check(&HeaderMap::new(), IP, now).is_err(), "and the next one too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_noisy_client_does_not_starve_a_quiet_one() {
        let now = Instant::now();
        let rl = RateLimiter::new(&policy(1000.0, 1000, Some((1.0, 2, 100))), now, RateLimitMetrics::default());
        assert!(rl.check(&with_key("noisy"), IP, now).is_ok());
        assert!(rl.check(&with_key("noisy"), IP, now).is_ok());
        for _ in 0..50 {
            let e = rl.check(&with_key("noisy"), IP, now).unwrap_err();
            assert!(e.per_client);
        }
        assert!(rl.check(&with_key("quiet"), IP, now).is_ok());
        assert!(rl.check(&HeaderMap::new(), IP, now).is_ok(), "no key: route bucket only");
    }

    /// 100,000 clients that each come once, at a rate whose buckets never refill: the table
    /// stays bounded and making room costs a constant per new client (it was a full scan for
    /// each: 100,000 × 1,000).
    #[tokio::test(start_paused = true)]
    async fn rotating_clients_cost_a_constant_each() {
        let now = Instant::now();
        let rl = RateLimiter::new(&policy(1e6, 1_000_000, Some((0.001, 1, 1000))), now, RateLimitMetrics::default());
        for i in 0..100_000u64 {
            let at = now + Duration::from_micros(i);
            assert!(rl.check(&with_key(&format!("c{i}")), IP, at).is_ok(), "a new client's first request");
        }
        assert!(rl.tracked_clients() <= 1000, "{}", rl.tracked_clients());
        let per_client = rl.eviction_work() / 100_000;
        assert!(per_client <= 32, "{per_client} buckets visited per new client");
        // The most recent clients are remembered: their second request is limited.
        assert!(rl.check(&with_key("c99999"), IP, now + Duration::from_millis(100)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_clients_are_bounded() {
        let now = Instant::now();
        let rl = RateLimiter::new(&policy(1e6, 1_000_000, Some((1.0, 5, 10))), now, RateLimitMetrics::default());
        for i in 0..100 {
            let _ = rl.check(&with_key(&format!("c{i}")), IP, now + Duration::from_millis(i));
        }
        assert!(rl.tracked_clients() <= 10, "{}", rl.tracked_clients());
        // Refilled buckets are forgotten first when room is needed.
        let later = now + Duration::from_secs(60);
        let _ = rl.check(&with_key("fresh"), IP, later);
        assert_eq!(rl.tracked_clients(), 1);
    }

    /// Burst 10, critical keeps 50% and standard 20%: best-effort stops at 7 tokens left,
    /// standard at 5, critical drains the bucket; a priority in dry-run refuses none of them
    /// but says which it would have.
    #[tokio::test(start_paused = true)]
    async fn lower_classes_stop_at_the_floors_the_classes_above_them_keep() {
        let now = Instant::now();
        let reserves = |judge_only| Reserves { percent: vec![50.0, 20.0, 0.0], judge_only };
        let rl =
            RateLimiter::with_reserves(&policy(0.001, 10, None), reserves(false), now, RateLimitMetrics::default());
        let admitted = |class| std::iter::from_fn(|| rl.check_class(&HeaderMap::new(), IP, now, class).ok()).count();
        assert_eq!(admitted(2), 3, "best-effort leaves the 7 that critical and standard keep");
        assert_eq!(admitted(1), 2, "standard leaves critical's 5");
        assert_eq!(admitted(0), 5);
        let refused = rl.check_class(&HeaderMap::new(), IP, now, 2).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(7000), "until 8 tokens are back: {:?}", refused.retry_after);

        let rl = RateLimiter::with_reserves(&policy(0.001, 10, None), reserves(true), now, RateLimitMetrics::default());
        let judged: Vec<bool> = (0..10).map(|_| rl.check_class(&HeaderMap::new(), IP, now, 2).unwrap()).collect();
        assert_eq!(judged.iter().filter(|w| **w).count(), 7, "dry-run: all 10 admitted, 7 past the floor");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
