//! Compiled resilience settings of a route: retries, circuit breaker, bulkhead and rate limit,
//! validated with field paths. The runtime state of each lives in the proxy; these are only
//! the immutable parameters. In a route, each of these blocks replaces the one in `defaults`
//! as a whole (unlike `timeout`, which merges field by field).

use std::time::Duration;

use crate::error::Errors;
use crate::spec::{BreakerSpec, BulkheadSpec, RateLimitSpec, RetrySpec, Token};

/// An attempt's result, in the vocabulary of `retries.on` and `circuitBreaker.failureOn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// No connection to the upstream (never sent).
    ConnectFailure,
    /// The upstream closed or reset before response headers.
    Reset,
    /// The upstream refused the request without processing it (an HTTP/2 stream refused or
    /// beyond a GOAWAY). The proxy already sends such a request again at once, up to twice,
    /// counted against nothing; this condition retries it further.
    RefusedStream,
    /// The per-try timeout passed.
    PerTryTimeout,
    /// The request (or idle) timeout passed; a breaker-only condition.
    Timeout,
    /// Any 5xx response.
    Any5xx,
    /// 502, 503 or 504.
    GatewayError,
    /// This exact HTTP status.
    Status(u16),
    /// This gRPC status code, read from a trailers-only response.
    Grpc(u16),
}

const GRPC_NAMES: [(&str, u16); 8] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("aborted", 10),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
];

impl Condition {
    pub fn parse(s: &str) -> Result<Condition, String> {
        Ok(match s {
            "connect-failure" => Condition::ConnectFailure,
            "reset" => Condition::Reset,
            "refused-stream" => Condition::RefusedStream,
            "per-try-timeout" => Condition::PerTryTimeout,
            "timeout" => Condition::Timeout,
            "5xx" => Condition::Any5xx,
            "gateway-error" => Condition::GatewayError,
            _ => {
                if let Ok(code) = s.parse::<u16>() {
                    if !(400..=599).contains(&code) {
                        return Err(format!("{s:?}: only 4xx and 5xx statuses can be conditions"));
                    }
                    Condition::Status(code)
                } else if let Some((_, code)) = GRPC_NAMES.iter().find(|(n, _)| *n == s) {
                    Condition::Grpc(*code)
                } else {
                    return Err(format!(
                        "{s:?} is not a condition (connect-failure, reset, refused-stream, per-try-timeout, timeout, 5xx, gateway-error, an HTTP status, or a gRPC status: {})",
                        GRPC_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        })
    }
}

pub(crate) fn conditions(
    errs: &mut Errors<'_>,
    path: &str,
    list: Option<&Vec<Token>>,
    default: &[Condition],
) -> Vec<Condition> {
    let Some(list) = list else {
        return default.to_vec();
    };
    if list.is_empty() {
        errs.push(path, "an empty list matches nothing; omit it for the default");
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| Condition::parse(&s.0).map_err(|m| errs.push(format!("{path}[{i}]"), m)).ok())
        .collect()
}

fn percent(errs: &mut Errors<'_>, path: &str, v: f64) -> f64 {
    if !(v > 0.0 && v <= 100.0) {
        errs.push(path, format!("{v} is not a percentage in (0, 100]"));
    }
    v
}

/// Below this a stage's window, open time or queue wait is a typo, not a setting.
const MIN_STAGE_DURATION: Duration = Duration::from_millis(1);

fn positive(errs: &mut Errors<'_>, path: &str, d: Duration, max: Duration) -> Duration {
    if d.is_zero() {
        errs.push(path, "must be greater than zero");
    } else if d < MIN_STAGE_DURATION {
        errs.push(path, format!("{} is too short: at least 1ms", crate::duration::format(d)));
    } else if d > max {
        errs.push(path, format!("must be at most {}", crate::duration::format(max)));
    }
    d
}

pub(crate) fn range(errs: &mut Errors<'_>, path: &str, v: u64, min: u64, max: u64) -> u64 {
    if v < min || v > max {
        errs.push(path, format!("{v} is out of range {min}..={max}"));
    }
    v
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: Vec<Condition>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget_percent: f64,
    pub budget_min_per_second: u32,
    pub max_buffered_bytes: u64,
}

pub const DEFAULT_RETRY_ON: [Condition; 3] = [Condition::ConnectFailure, Condition::Reset, Condition::GatewayError];

/// What a route without `retries` does: one more try, on another endpoint when there is one,
/// of a request that never reached an upstream (no connection, or a stream the upstream
/// refused unprocessed), within the request timeout. Nothing the upstream may have processed
/// is resent.
pub fn default_retries() -> &'static RetryPolicy {
    static DEFAULT: std::sync::LazyLock<RetryPolicy> = std::sync::LazyLock::new(|| RetryPolicy {
        attempts: 1,
        on: vec![Condition::ConnectFailure, Condition::RefusedStream],
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
        budget_percent: 20.0,
        budget_min_per_second: 10,
        max_buffered_bytes: 64 * 1024,
    });
    &DEFAULT
}

pub(crate) fn retry(errs: &mut Errors<'_>, path: &str, s: &RetrySpec) -> RetryPolicy {
    // 0: no retries at all, not even the default ones.
    let attempts = range(errs, &format!("{path}.attempts"), u64::from(s.attempts), 0, 10) as u32;
    let on = conditions(errs, &format!("{path}.on"), s.on.as_ref(), &DEFAULT_RETRY_ON);
    if on.contains(&Condition::Timeout) {
        errs.push(
            format!("{path}.on"),
            "\"timeout\" ends the whole request and cannot be retried; use per-try-timeout",
        );
    }
    let (base, max) = match &s.backoff {
        Some(b) => (
            positive(errs, &format!("{path}.backoff.base"), b.base.get(), HOUR),
            positive(errs, &format!("{path}.backoff.max"), b.max.get(), HOUR),
        ),
        None => (Duration::from_millis(25), Duration::from_millis(250)),
    };
    if max < base {
        errs.push(format!("{path}.backoff.max"), "must not be smaller than backoff.base");
    }
    let (budget_percent, budget_min_per_second) = match &s.budget {
        Some(b) => (
            percent(errs, &format!("{path}.budget.percent"), b.percent),
            range(errs, &format!("{path}.budget.minPerSecond"), u64::from(b.min_per_second.unwrap_or(10)), 0, 100_000)
                as u32,
        ),
        None => (20.0, 10),
    };
    let max_buffered_bytes =
        range(errs, &format!("{path}.maxBufferedBytes"), s.max_buffered_bytes.unwrap_or(64 * 1024), 0, 16 << 20);
    RetryPolicy {
        attempts,
        on,
        backoff_base: base,
        backoff_max: max,
        budget_percent,
        budget_min_per_second,
        max_buffered_bytes,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// Judges and counts, never refuses (`mode: dry-run`).
    pub dry_run: bool,
    pub consecutive_failures: Option<u32>,
    pub failure_rate_percent: Option<f64>,
    pub slow_call: Option<(Duration, f64)>,
    pub window: Duration,
    pub minimum_requests: u32,
    pub open_for: Duration,
    pub half_open_requests: u32,
    pub failure_on: Vec<Condition>,
}

/// What the breaker counts when `failureOn` is not set: for HTTP, 5xx, connect failures, resets
/// and timeouts; for gRPC (whose failures come as status 200 with `grpc-status`) also
/// UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN and RESOURCE_EXHAUSTED.
pub const DEFAULT_FAILURE_ON: [Condition; 9] = [
    Condition::Any5xx,
    Condition::ConnectFailure,
    Condition::Reset,
    Condition::Timeout,
    Condition::Grpc(14),
    Condition::Grpc(4),
    Condition::Grpc(13),
    Condition::Grpc(2),
    Condition::Grpc(8),
];

pub(crate) fn breaker(errs: &mut Errors<'_>, path: &str, s: &BreakerSpec) -> BreakerPolicy {
    if s.consecutive_failures.is_none() && s.failure_rate_percent.is_none() && s.slow_call.is_none() {
        errs.push(path, "sets no trip rule: set consecutiveFailures, failureRatePercent or slowCall");
    }
    let consecutive_failures = s
        .consecutive_failures
        .map(|n| range(errs, &format!("{path}.consecutiveFailures"), u64::from(n), 1, 1_000_000) as u32);
    let failure_rate_percent = s.failure_rate_percent.map(|p| percent(errs, &format!("{path}.failureRatePercent"), p));
    let slow_call = s.slow_call.as_ref().map(|sc| {
        (
            positive(errs, &format!("{path}.slowCall.over"), sc.over.get(), HOUR),
            percent(errs, &format!("{path}.slowCall.ratePercent"), sc.rate_percent),
        )
    });
    BreakerPolicy {
        dry_run: s.mode == Some(crate::spec::StageMode::DryRun),
        consecutive_failures,
        failure_rate_percent,
        slow_call,
        window: positive(errs, &format!("{path}.window"), s.window.map_or(Duration::from_secs(30), |d| d.get()), HOUR),
        minimum_requests: range(
            errs,
            &format!("{path}.minimumRequests"),
            u64::from(s.minimum_requests.unwrap_or(20)),
            1,
            1_000_000,
        ) as u32,
        open_for: positive(
            errs,
            &format!("{path}.openFor"),
            s.open_for.map_or(Duration::from_secs(30), |d| d.get()),
            HOUR,
        ),
        half_open_requests: range(
            errs,
            &format!("{path}.halfOpenRequests"),
            u64::from(s.half_open_requests.unwrap_or(3)),
            1,
            1000,
        ) as u32,
        failure_on: conditions(errs, &format!("{path}.failureOn"), s.failure_on.as_ref(), &DEFAULT_FAILURE_ON),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BulkheadPolicy {
    /// Never waits or refuses; counts what it would refuse (`mode: dry-run`).
    pub dry_run: bool,
    pub max_concurrent: u32,
    pub max_queued: u32,
    pub queue_timeout: Duration,
}

/// A stage's queue: `maxQueued` waiters (default none), each at most `queueTimeout`, which is
/// required once there is a queue.
pub(crate) fn queue(
    errs: &mut Errors<'_>,
    path: &str,
    max_queued: Option<u32>,
    queue_timeout: Option<crate::duration::Dur>,
) -> (u32, Duration) {
    let max_queued = range(errs, &format!("{path}.maxQueued"), u64::from(max_queued.unwrap_or(0)), 0, 1_000_000) as u32;
    let queue_timeout = match queue_timeout {
        Some(d) => positive(errs, &format!("{path}.queueTimeout"), d.get(), HOUR),
        None if max_queued > 0 => {
            errs.push(format!("{path}.queueTimeout"), "required when maxQueued is set: how long may a request wait?");
            Duration::ZERO
        }
        None => Duration::ZERO,
    };
    (max_queued, queue_timeout)
}

pub(crate) fn bulkhead(errs: &mut Errors<'_>, path: &str, s: &BulkheadSpec) -> BulkheadPolicy {
    let (max_queued, queue_timeout) = queue(errs, path, s.max_queued, s.queue_timeout);
    BulkheadPolicy {
        dry_run: s.mode == Some(crate::spec::StageMode::DryRun),
        max_concurrent: range(errs, &format!("{path}.maxConcurrent"), u64::from(s.max_concurrent), 1, 1_000_000) as u32,
        max_queued,
        queue_timeout,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClientKey {
    Header(http::HeaderName),
    SourceIp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitPolicy {
    /// Takes tokens and counts what it would refuse, refusing nothing (`mode: dry-run`).
    pub dry_run: bool,
    pub route: Bucket,
    pub per_client: Option<(ClientKey, Bucket, u32)>,
}

/// The slowest rate a limit may have, in tokens per second.
pub const MIN_RATE: f64 = 0.001;

fn bucket(errs: &mut Errors<'_>, path: &str, per_second: f64, burst: Option<u32>) -> Bucket {
    // At least one token in 1000 s: below that a limit refuses everything for good, and the
    // time until the next token no longer fits a Retry-After.
    if !(MIN_RATE..=1e9).contains(&per_second) {
        errs.push(format!("{path}.perSecond"), format!("{per_second} is out of range [0.001, 1e9]"));
    }
    // Without an explicit burst, one second's worth (at least one token).
    let burst = burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32);
    Bucket { per_second, burst: range(errs, &format!("{path}.burst"), u64::from(burst), 1, 1_000_000_000) as u32 }
}

pub(crate) fn rate_limit(errs: &mut Errors<'_>, path: &str, s: &RateLimitSpec) -> RateLimitPolicy {
    let route = bucket(errs, path, s.per_second, s.burst);
    let per_client = s.per_client.as_ref().and_then(|c| {
        let p = format!("{path}.perClient");
        let key = match (&c.header, c.source_ip) {
            (Some(h), None | Some(false)) => {
                crate::validate::header_name(errs, &format!("{p}.header"), h).map(ClientKey::Header)
            }
            (None, Some(true)) => Some(ClientKey::SourceIp),
            _ => {
                errs.push(p.clone(), "set exactly one of header and sourceIp: true");
                None
            }
        };
        let b = bucket(errs, &p, c.per_second, c.burst);
        let max =
            range(errs, &format!("{p}.maxClients"), u64::from(c.max_clients.unwrap_or(10_000)), 1, 1_000_000) as u32;
        key.map(|k| (k, b, max))
    });
    RateLimitPolicy { dry_run: s.mode == Some(crate::spec::StageMode::DryRun), route, per_client }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_condition_vocabulary() {
        assert_eq!(Condition::parse("503").unwrap(), Condition::Status(503));
        assert_eq!(Condition::parse("unavailable").unwrap(), Condition::Grpc(14));
        assert_eq!(Condition::parse("gateway-error").unwrap(), Condition::GatewayError);
        assert!(Condition::parse("200").is_err());
        assert!(Condition::parse("flaky").unwrap_err().contains("is not a condition"));
    }
}
