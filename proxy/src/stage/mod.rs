//! The resilience stages a request passes, in the order `http/forward.rs` applies them:
//! rate limit, circuit breaker, bulkhead, then the retry loop under the overall timeout.
//! Each module holds one stage's runtime state and decisions; `registry` keeps that state
//! across policy updates.

pub mod breaker;
pub mod bulkhead;
pub mod fault;
pub mod ratelimit;
pub mod registry;
pub mod retry;

use bulwark_policy::Condition;

/// What happened to an attempt (or, for the breaker, to the whole request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived; `grpc` is the status of a trailers-only gRPC response.
    Response {
        status: u16,
        grpc: Option<u16>,
    },
    ConnectFailure,
    Reset,
    PerTryTimeout,
    Timeout,
}

impl Outcome {
    pub fn matches(self, c: Condition) -> bool {
        match (self, c) {
            (Outcome::ConnectFailure, Condition::ConnectFailure) => true,
            (Outcome::Reset, Condition::Reset) => true,
            (Outcome::PerTryTimeout, Condition::PerTryTimeout) => true,
            // For the breaker, "timeout" covers both kinds.
            (Outcome::Timeout | Outcome::PerTryTimeout, Condition::Timeout) => true,
            (Outcome::Response { status, .. }, Condition::Any5xx) => (500..=599).contains(&status),
            (Outcome::Response { status, .. }, Condition::GatewayError) => {
                matches!(status, 502..=504)
            }
            (Outcome::Response { status, .. }, Condition::Status(s)) => status == s,
            (Outcome::Response { grpc: Some(g), .. }, Condition::Grpc(code)) => g == code,
            _ => false,
        }
    }

    pub fn matches_any(self, conditions: &[Condition]) -> bool {
        conditions.iter().any(|c| self.matches(*c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_match_their_conditions() {
        let r503 = Outcome::Response { status: 503, grpc: None };
        assert!(
            r503.matches(Condition::Any5xx)
                && r503.matches(Condition::GatewayError)
                && r503.matches(Condition::Status(503))
        );
        assert!(!Outcome::Response { status: 500, grpc: None }.matches(Condition::GatewayError));
        assert!(Outcome::Response { status: 200, grpc: Some(14) }.matches(Condition::Grpc(14)));
        assert!(Outcome::PerTryTimeout.matches(Condition::Timeout));
        assert!(!Outcome::Timeout.matches(Condition::PerTryTimeout));
        assert!(!Outcome::Reset.matches(Condition::ConnectFailure));
    }
}
