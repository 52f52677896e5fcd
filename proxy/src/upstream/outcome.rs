//! What an attempt at the upstream gave, in the terms retries, breakers and outlier detection
//! judge it by.

use bulwark_policy::Condition;

/// What happened to an attempt (or, for the breaker, to the whole request: `Timeout` is the
/// overall timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived; `grpc` is the status of a trailers-only gRPC response.
    Response {
        status: u16,
        grpc: Option<u16>,
    },
    ConnectFailure,
    /// The upstream provably never processed the request (an HTTP/2 stream refused, or the
    /// endpoint does not speak HTTP/2): safe to send again anywhere.
    Refused,
    Reset,
    PerTryTimeout,
    Timeout,
}

impl Outcome {
    /// The outcome of response headers that arrived (a trailers-only gRPC answer carries its
    /// status in them).
    pub fn of<B>(resp: &http::Response<B>) -> Outcome {
        let grpc = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Outcome::Response { status: resp.status().as_u16(), grpc }
    }

    /// What outlier detection counts against an endpoint: its own errors, not timeouts the
    /// policy chose. A gRPC error comes as HTTP 200; its status counts as the HTTP status
    /// Envoy maps it to when that is a 5xx (UNKNOWN, INTERNAL, DATA_LOSS: 500; UNAVAILABLE:
    /// 503; DEADLINE_EXCEEDED: 504), so a failing gRPC endpoint is ejected like any other.
    pub fn is_endpoint_failure(self) -> bool {
        match self {
            Outcome::Response { status, grpc } => {
                (500..=599).contains(&status) || grpc.is_some_and(|g| matches!(g, 2 | 4 | 13 | 14 | 15))
            }
            Outcome::ConnectFailure | Outcome::Reset => true,
            // A server rotating its connections is not failing.
            Outcome::Refused => false,
            Outcome::PerTryTimeout | Outcome::Timeout => false,
        }
    }

    pub fn matches(self, c: Condition) -> bool {
        match (self, c) {
            (Outcome::ConnectFailure, Condition::ConnectFailure) => true,
            (Outcome::Reset | Outcome::Refused, Condition::Reset) => true,
            (Outcome::Refused, Condition::RefusedStream) => true,
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

/// As a try's event in a trace.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Response { status, grpc: Some(g) } => write!(f, "{status} grpc-status {g}"),
            Outcome::Response { status, grpc: None } => write!(f, "{status}"),
            Outcome::ConnectFailure => f.write_str("connect-failure"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::PerTryTimeout => f.write_str("per-try-timeout"),
            Outcome::Timeout => f.write_str("timeout"),
        }
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

    #[test]
    fn grpc_errors_an_endpoint_makes_count_against_it_as_envoy_maps_them() {
        let grpc = |code| Outcome::Response { status: 200, grpc: Some(code) };
        for code in [2, 4, 13, 14, 15] {
            assert!(grpc(code).is_endpoint_failure(), "grpc-status {code}");
        }
        for code in [0, 1, 3, 5, 8, 12, 16] {
            assert!(!grpc(code).is_endpoint_failure(), "grpc-status {code}: the caller's or the request's doing");
        }
    }
}
