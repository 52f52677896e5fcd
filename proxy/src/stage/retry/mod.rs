//! Retries. A failed attempt is tried again when its outcome is one of `retries.on`, retries
//! remain (`attempts`), the request can be sent again (its body was kept: see
//! `http/replay.rs`), and the route's retry budget allows it. Between tries the proxy waits a
//! full-jitter exponential backoff, or the upstream's `Retry-After` when it is shorter than the
//! maximum backoff. The overall request timeout bounds the whole loop.

pub mod backoff;
pub mod budget;

use std::time::Duration;

use bulwark_policy::RetryPolicy;
use http::HeaderMap;

use super::Outcome;

pub fn should_retry(policy: &RetryPolicy, outcome: Outcome) -> bool {
    outcome.matches_any(&policy.on)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by upstreams behind a sidecar).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}
