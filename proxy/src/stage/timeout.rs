//! Timeouts, as users of Envoy read them:
//!
//! - `request` bounds the whole exchange, retries and backoff included, from the request's
//!   arrival to its response headers; a gRPC `grpc-timeout` shorter than the policy wins.
//!   When it fires the proxy answers 504 `timeout` (gRPC: DEADLINE_EXCEEDED).
//! - `perTry` bounds one attempt (`per-try-timeout`); the retry policy may try again.
//! - `idle` bounds silence: waiting for one attempt's response headers when it is shorter than
//!   `perTry`, and between body frames afterwards (`http/body.rs`).
//!
//! A timeout holds nothing: when it fires, the future it bounds is dropped and every guard
//! inside gives back what it held.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bulwark_policy::Timeouts;
use http::HeaderMap;
use pin_project_lite::pin_project;

use crate::reason::Reason;
use crate::upstream::Outcome;

/// The bound fired before the future finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed {
    pub outcome: Outcome,
    pub reason: Reason,
}

/// The stage: the limit of the whole exchange, the shorter of `request` and `grpc-timeout`.
pub fn request_limit(timeouts: &Timeouts, headers: &HeaderMap) -> Option<Duration> {
    match (timeouts.request, grpc_timeout(headers)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Runs `f` under the overall limit.
pub fn overall<F: Future>(limit: Option<Duration>, f: F) -> Bounded<F> {
    Bounded::new(limit.map(|d| (d, Elapsed { outcome: Outcome::Timeout, reason: Reason::Timeout })), f)
}

/// Runs one attempt under the shorter of `perTry` and `idle`, each failing with its own reason.
pub fn per_try<F: Future>(timeouts: &Timeouts, f: F) -> Bounded<F> {
    let bound = [
        (timeouts.per_try, Elapsed { outcome: Outcome::PerTryTimeout, reason: Reason::PerTryTimeout }),
        (timeouts.idle, Elapsed { outcome: Outcome::Timeout, reason: Reason::Timeout }),
    ]
    .into_iter()
    .filter_map(|(d, e)| d.map(|d| (d, e)))
    .min_by_key(|(d, _)| *d);
    Bounded::new(bound, f)
}

pin_project! {
    /// `F` under a bound, or unbounded (no timer at all then). A plain future rather than an
    /// `async fn`: the bounded future (the whole retry loop, or one attempt) is stored once,
    /// in place, not copied into each wrapper's state.
    #[project = BoundedProj]
    pub enum Bounded<F> {
        Timed { #[pin] inner: tokio::time::Timeout<F>, elapsed: Elapsed },
        Free { #[pin] inner: F },
    }
}

impl<F: Future> Bounded<F> {
    fn new(bound: Option<(Duration, Elapsed)>, f: F) -> Bounded<F> {
        match bound {
            Some((limit, elapsed)) => Bounded::Timed { inner: tokio::time::timeout(limit, f), elapsed },
            None => Bounded::Free { inner: f },
        }
    }
}

impl<F: Future> Future for Bounded<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BoundedProj::Timed { inner, elapsed } => inner.poll(cx).map(|r| r.map_err(|_| *elapsed)),
            BoundedProj::Free { inner } => inner.poll(cx).map(Ok),
        }
    }
}

/// Parses gRPC's `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(request: Option<u64>, per_try: Option<u64>, idle: Option<u64>) -> Timeouts {
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        Timeouts { request: ms(request), per_try: ms(per_try), idle: ms(idle) }
    }

    #[test]
    fn a_shorter_grpc_timeout_wins() {
        let mut h = HeaderMap::new();
        let t = timeouts(Some(3000), None, None);
        assert_eq!(request_limit(&t, &h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(request_limit(&t, &h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", "10S".parse().unwrap());
        assert_eq!(request_limit(&t, &h), Some(Duration::from_secs(3)));
        assert_eq!(request_limit(&timeouts(None, None, None), &h), Some(Duration::from_secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shorter_of_per_try_and_idle_bounds_an_attempt_with_its_own_reason() {
        let never = std::future::pending::<()>;
        let e = per_try(&timeouts(None, Some(100), Some(50)), never()).await.unwrap_err();
        assert_eq!(e.reason, Reason::Timeout);
        let e = per_try(&timeouts(None, Some(100), Some(500)), never()).await.unwrap_err();
        assert_eq!((e.reason, e.outcome), (Reason::PerTryTimeout, Outcome::PerTryTimeout));
        assert_eq!(per_try(&timeouts(None, None, None), async { 7 }).await, Ok(7));
        let start = tokio::time::Instant::now();
        assert_eq!(overall(Some(Duration::from_secs(2)), never()).await.unwrap_err().reason, Reason::Timeout);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    fn map(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        h
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout(&map("250m")), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout(&map("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&map("x")), None);
        assert_eq!(grpc_timeout(&map("10Q")), None);
    }
}
