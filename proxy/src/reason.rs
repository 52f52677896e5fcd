//! Why the proxy answered a request itself. One `Copy` value is the `x-bulwark-reason` header,
//! the `reason` metric label and the log field, so an operator can follow one word from a
//! client's error to the dashboard.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Timeout,
    PerTryTimeout,
    CircuitOpen,
    BulkheadFull,
    /// Over the adaptive concurrency limit (and its queue).
    ConcurrencyLimited,
    RateLimited,
    FaultAbort,
    UpstreamConnectFailure,
    UpstreamReset,
    NoHealthyUpstream,
    RetryBudgetExhausted,
    /// The request is malformed or ambiguous (RFC 9112 §3.2): never forwarded.
    BadRequest,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::PerTryTimeout => "per-try-timeout",
            Reason::CircuitOpen => "circuit-open",
            Reason::BulkheadFull => "bulkhead-full",
            Reason::ConcurrencyLimited => "concurrency-limited",
            Reason::RateLimited => "rate-limited",
            Reason::FaultAbort => "fault-abort",
            Reason::UpstreamConnectFailure => "upstream-connect-failure",
            Reason::UpstreamReset => "upstream-reset",
            Reason::NoHealthyUpstream => "no-healthy-upstream",
            Reason::RetryBudgetExhausted => "retry-budget-exhausted",
            Reason::BadRequest => "bad-request",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}
