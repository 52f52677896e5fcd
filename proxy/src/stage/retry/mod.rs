//! Retries. A failed attempt is tried again when its outcome is one of `retries.on`, retries
//! remain (`attempts`), the request can be sent again (its body was kept: see
//! `http/replay.rs`), and the route's retry budget allows it. Between tries the proxy waits a
//! full-jitter exponential backoff, or the upstream's `Retry-After` when it is shorter than the
//! maximum backoff. Each try is bounded by `perTry` (stage `timeout`); the overall request
//! timeout bounds the whole loop. A retry taken from the budget and never sent (the request
//! was cancelled during backoff) is given back.
//!
//! A try the upstream provably never processed (`Outcome::Refused`: an HTTP/2 stream refused,
//! a connection going away, an endpoint that does not speak HTTP/2) goes again at once, up to
//! `MAX_REFUSED` times, counted against no attempt, budget or backoff: that is a server rotating
//! its connections, not a failure. So the body is always kept (up to `maxBufferedBytes`, or
//! `KEPT_WITHOUT_RETRIES` on a route without retries) while it streams.

pub mod backoff;
pub mod budget;
pub mod replay;

use std::time::Duration;

use bulwark_policy::{RetryPolicy, Timeouts};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::timeout::{self, Elapsed};
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::record::Record;
use crate::telemetry::route_family::RouteFamily;
use crate::upstream::Outcome;
use budget::RetryBudget;
use replay::{Kept, UpstreamBody};

/// Tries refused unprocessed that go again before the refusal is the answer.
const MAX_REFUSED: u32 = 2;

/// Body kept for a resend of a refused try on a route without retries.
const KEPT_WITHOUT_RETRIES: u64 = 64 * 1024;

/// A failed try: how it failed, and the body if it was never sent.
pub struct Failed {
    pub outcome: Outcome,
    pub reason: Reason,
    pub unsent: Option<UpstreamBody>,
}

impl From<Elapsed> for Failed {
    fn from(e: Elapsed) -> Failed {
        Failed { outcome: e.outcome, reason: e.reason, unsent: None }
    }
}

/// How a try (or the whole request) ended.
pub fn outcome(result: &Result<Response<Incoming>, Failed>) -> Outcome {
    match result {
        Ok(resp) => Outcome::of(resp),
        Err(f) => f.outcome,
    }
}

/// What sends one try upstream (`http::attempt`): it names the try's endpoint in the record.
pub trait SendTry {
    fn send(
        &self,
        req: Request<UpstreamBody>,
        rec: &mut Record,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, Failed>>;
}

/// Retries sent and refused by the budget, by route.
#[derive(Clone)]
pub struct RetryFamilies {
    retries: RouteFamily<StageLabels, Counter>,
    exhausted: RouteFamily<StageLabels, Counter>,
}

impl RetryFamilies {
    pub fn register(r: &mut Registry) -> RetryFamilies {
        RetryFamilies {
            retries: RouteFamily::register(r, "retries", "Retries sent upstream"),
            exhausted: RouteFamily::register(
                r,
                "retry_budget_exhausted",
                "Retries not sent because the retry budget was spent",
            ),
        }
    }

    pub fn route(&self, labels: &StageLabels) -> RetryMetrics {
        RetryMetrics {
            retries: self.retries.handle(&labels.policy, &labels.route, labels),
            exhausted: self.exhausted.handle(&labels.policy, &labels.route, labels),
        }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.retries.forget(policy, route);
        self.exhausted.forget(policy, route);
    }
}

#[derive(Clone, Default)]
pub struct RetryMetrics {
    retries: Counter,
    exhausted: Counter,
}

impl RetryMetrics {
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }
}

/// What the loop needs of the route.
pub struct Retries<'a> {
    /// None: one try, the body streamed through untouched.
    pub policy: Option<&'a RetryPolicy>,
    pub budget: Option<&'a RetryBudget>,
    pub metrics: Option<&'a RetryMetrics>,
    pub timeouts: &'a Timeouts,
}

/// The request as the tries send it: its head, its body streaming through, and the copy kept
/// of it (which outlives the loop, so a fallback can still send the request elsewhere).
pub struct Tee {
    pub parts: Parts,
    first: Option<UpstreamBody>,
    pub kept: Kept,
}

impl Tee {
    pub fn of(r: &Retries<'_>, req: Request<Incoming>) -> Tee {
        let (parts, body) = req.into_parts();
        let (first, kept) = UpstreamBody::tee(body, r.policy.map_or(KEPT_WITHOUT_RETRIES, |p| p.max_buffered_bytes));
        Tee { parts, first: Some(first), kept }
    }
}

/// The stage: tries the request until an attempt is final, each bounded by the per-try
/// timeout. Every try is told to the record (`Attempt::send` names its endpoint; its outcome
/// is set here, also when the per-try timeout cut it). A final failure carries the body when
/// it was never sent.
pub async fn run(
    r: &Retries<'_>,
    tee: &mut Tee,
    attempt: &impl SendTry,
    rec: &mut Record,
) -> Result<Response<Incoming>, Failed> {
    if let (Some(_), Some(b)) = (r.policy, r.budget) {
        b.deposit(Instant::now());
    }
    let (parts, kept) = (&tee.parts, &tee.kept);
    let mut body = tee.first.take();
    let max_retries = r.policy.map_or(0, |p| p.attempts);
    let (mut retry, mut refused) = (0, 0);
    loop {
        // A try is only decided when a body is available, so this always finds one.
        let Some(this_body) = body.take().or_else(|| kept.replay()) else {
            return Err(Failed { outcome: Outcome::Reset, reason: Reason::UpstreamReset, unsent: None });
        };
        let result = match timeout::per_try(r.timeouts, attempt.send(rebuild(parts, this_body), rec)).await {
            Ok(result) => result,
            Err(elapsed) => Err(Failed::from(elapsed)),
        };
        let outcome = outcome(&result);
        rec.end_try(outcome);
        // The next try needs the body: the unsent one, or the whole kept copy.
        let (unsent, result) = match result {
            Err(Failed { unsent: Some(b), outcome, reason }) => {
                (Some(b), Err(Failed { outcome, reason, unsent: None }))
            }
            r => (None, r),
        };
        let resendable = || unsent.is_some() || kept.resendable();
        if outcome == Outcome::Refused && refused < MAX_REFUSED && resendable() {
            refused += 1;
            body = unsent;
            continue;
        }
        let Some(policy) = r.policy else {
            return result.map_err(|f| Failed { unsent, ..f });
        };
        if retry >= max_retries || !should_retry(policy, outcome) || !resendable() {
            return result.map_err(|f| Failed { unsent, ..f });
        }
        let retry_after = result.as_ref().ok().and_then(|r| retry_after(r.headers()));
        let withdrawal = match r.budget.map(|b| b.withdraw(Instant::now())) {
            Some(None) => {
                if let Some(m) = r.metrics {
                    m.exhausted.inc();
                }
                return result.map_err(|f| Failed { reason: Reason::RetryBudgetExhausted, unsent, ..f });
            }
            Some(w) => w,
            None => None,
        };
        tokio::time::sleep(backoff::delay(policy, retry, retry_after, fastrand::f64())).await;
        if let Some(w) = withdrawal {
            w.spend();
        }
        if let Some(m) = r.metrics {
            m.retries.inc();
        }
        body = unsent;
        retry += 1;
    }
}

pub fn rebuild(parts: &Parts, body: UpstreamBody) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // hyper keeps the HTTP/1.1 header names' case there, for the upstream to get it too.
    *req.extensions_mut() = parts.extensions.clone();
    req
}

pub fn should_retry(policy: &RetryPolicy, outcome: Outcome) -> bool {
    outcome.matches_any(&policy.on)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by upstreams behind a sidecar).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}
