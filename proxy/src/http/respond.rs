//! The only place a `Reason` becomes a response. HTTP clients get a status, the
//! `x-bulwark-reason` header and a short plain-text body; gRPC clients get a trailers-only
//! response (HTTP 200, `grpc-status`, `grpc-message`) because a gRPC client cannot read an
//! HTTP error status.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, DATE};
use http::{HeaderMap, Response, StatusCode};
use http_body::Frame;

use super::body::ProxyBody;
use crate::reason::Reason;
use crate::stage::{ratelimit, Refusal};
use bulwark_policy::faults::AbortWith;

pub const REASON_HEADER: &str = "x-bulwark-reason";
/// On a route's fallback answer: the refusal it stands in for.
pub const FALLBACK_HEADER: &str = "x-bulwark-fallback";

/// gRPC status codes used by the proxy (see grpc/doc/statuscodes.md).
pub mod grpc_code {
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
}

pub fn status_of(reason: Reason) -> StatusCode {
    match reason {
        Reason::Timeout | Reason::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
        Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Reason::FaultAbort => StatusCode::SERVICE_UNAVAILABLE,
        Reason::BadRequest => StatusCode::BAD_REQUEST,
        Reason::CircuitOpen
        | Reason::BulkheadFull
        | Reason::ConcurrencyLimited
        | Reason::UpstreamConnectFailure
        | Reason::UpstreamReset
        | Reason::NoHealthyUpstream
        | Reason::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
    }
}

pub fn grpc_status_of(reason: Reason) -> u16 {
    match reason {
        Reason::Timeout | Reason::PerTryTimeout => grpc_code::DEADLINE_EXCEEDED,
        Reason::RateLimited | Reason::BulkheadFull | Reason::ConcurrencyLimited => grpc_code::RESOURCE_EXHAUSTED,
        Reason::BadRequest => grpc_code::INTERNAL,
        _ => grpc_code::UNAVAILABLE,
    }
}

fn message_of(reason: Reason) -> &'static str {
    match reason {
        Reason::Timeout => "upstream request timeout",
        Reason::PerTryTimeout => "upstream attempt timeout",
        Reason::CircuitOpen => "circuit breaker open",
        Reason::BulkheadFull => "too many concurrent requests",
        Reason::ConcurrencyLimited => "over the adaptive concurrency limit",
        Reason::RateLimited => "rate limited",
        Reason::FaultAbort => "fault injected",
        Reason::UpstreamConnectFailure => "upstream connect failure",
        Reason::UpstreamReset => "upstream reset before response",
        Reason::NoHealthyUpstream => "no healthy upstream",
        Reason::RetryBudgetExhausted => "retry budget exhausted",
        Reason::BadRequest => "bad request",
    }
}

/// Asks a client whose request came as `version` to close the connection after this response
/// when it is HTTP/1 (HTTP/2 has GOAWAY for that, and no such header).
pub fn close_after<B>(resp: &mut Response<B>, version: http::Version) {
    if version != http::Version::HTTP_2 {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// True when the request is gRPC and must be answered in gRPC's terms.
/// A `Date` for the proxy's own answers (hyper adds none: proxied answers keep the upstream's).
fn now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's own answer to a request a stage refused: the injected abort's status, or the
/// reason's, with `Retry-After` when the stage said when to come back.
pub fn refusal(r: Refusal, grpc: bool) -> Response<ProxyBody> {
    let mut resp = match r.abort {
        Some(with) => abort(with, grpc),
        None => refuse(r.reason, grpc),
    };
    if let Some(after) = r.retry_after {
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(ratelimit::retry_after_secs(after)));
    }
    resp
}

/// Marks a fallback's answer (static or from the fallback upstream) as one, for the refusal
/// `reason`, which stays visible in `x-bulwark-reason`.
pub fn mark_fallback(resp: &mut Response<ProxyBody>, reason: Reason) {
    let h = resp.headers_mut();
    h.insert(REASON_HEADER, HeaderValue::from_static(reason.as_str()));
    h.insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
}

/// The route's static fallback answer, when it has one for this kind of client.
pub fn fallback(f: &bulwark_policy::fallback::Fallback, grpc: bool) -> Option<Response<ProxyBody>> {
    let mut builder = Response::builder().header(DATE, now());
    let resp = if grpc {
        let g = f.grpc.as_ref()?;
        builder = builder.status(StatusCode::OK).header(CONTENT_TYPE, "application/grpc");
        let mut status = HeaderMap::new();
        status.insert("grpc-status", HeaderValue::from(g.status));
        if !g.message.is_empty() {
            status.insert("grpc-message", HeaderValue::from_str(&g.message).ok()?);
        }
        match &g.response {
            // A message, then the status in trailers.
            Some(message) => {
                builder.body(ProxyBody::frames(vec![Frame::data(grpc_frame(message)?), Frame::trailers(status)]))
            }
            // Trailers-only: the status in the headers.
            None => {
                for (name, value) in &status {
                    builder = builder.header(name, value);
                }
                builder.body(ProxyBody::empty())
            }
        }
    } else {
        let h = f.http.as_ref()?;
        builder = builder.status(h.status);
        for (name, value) in &h.headers {
            builder = builder.header(name, value);
        }
        builder.body(ProxyBody::full(h.body.clone()))
    };
    resp.ok()
}

/// One gRPC length-prefixed message, uncompressed; None past 4 GiB.
pub fn grpc_frame(message: &Bytes) -> Option<Bytes> {
    let len = u32::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(Bytes::from(framed))
}

/// The proxy's own answer for `reason`.
pub fn refuse(reason: Reason, grpc: bool) -> Response<ProxyBody> {
    let mut builder =
        Response::builder().header(REASON_HEADER, HeaderValue::from_static(reason.as_str())).header(DATE, now());
    let resp = if grpc {
        builder = builder
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", grpc_status_of(reason))
            .header("grpc-message", message_of(reason));
        builder.body(ProxyBody::empty())
    } else {
        builder
            .status(status_of(reason))
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(ProxyBody::full(Bytes::from(format!("{}\n", message_of(reason)))))
    };
    resp.expect("static response parts are valid")
}

/// Trailers that end a gRPC call whose deadline passed mid-stream, as `refuse` would have
/// answered before response headers.
pub fn deadline_exceeded_trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(grpc_status_of(Reason::Timeout)));
    t.insert("grpc-message", HeaderValue::from_static(message_of(Reason::Timeout)));
    t.insert(REASON_HEADER, HeaderValue::from_static(Reason::Timeout.as_str()));
    t
}

/// An injected abort: the configured status, as HTTP or as gRPC (each mapped to the other when
/// the request is of the other kind, as gRPC's HTTP mapping defines).
pub fn abort(with: AbortWith, grpc: bool) -> Response<ProxyBody> {
    let (http, code) = match with {
        AbortWith::Http(s) => (s, grpc_of_http(s)),
        AbortWith::Grpc(g) => (http_of_grpc(g), g),
    };
    let mut resp = refuse(Reason::FaultAbort, grpc);
    if grpc {
        resp.headers_mut().insert("grpc-status", HeaderValue::from(code));
    } else {
        *resp.status_mut() = StatusCode::from_u16(http).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    resp
}

fn grpc_of_http(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => grpc_code::UNAVAILABLE,
        _ => 2,
    }
}

fn http_of_grpc(code: u16) -> u16 {
    match code {
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A plain answer for a malformed request the proxy will not forward.
pub fn bad_request(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(DATE, now())
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONNECTION, "close")
        .body(ProxyBody::full(Bytes::from(format!("{message}\n"))))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_refusals_are_trailers_only_with_status() {
        let r = refuse(Reason::Timeout, true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()[REASON_HEADER], "timeout");
        assert!(http_body::Body::is_end_stream(r.body()));
    }

    #[test]
    fn aborts_answer_in_the_requests_own_terms() {
        let r = abort(AbortWith::Grpc(14), true);
        assert_eq!((r.status(), &r.headers()["grpc-status"]), (StatusCode::OK, &HeaderValue::from_static("14")));
        assert_eq!(r.headers()[REASON_HEADER], "fault-abort");
        assert_eq!(abort(AbortWith::Http(418), false).status().as_u16(), 418);
        assert_eq!(abort(AbortWith::Http(503), true).headers()["grpc-status"], "14");
        assert_eq!(abort(AbortWith::Grpc(8), false).status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn http_refusals_carry_status_reason_and_body() {
        let r = refuse(Reason::UpstreamConnectFailure, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[REASON_HEADER], "upstream-connect-failure");
        assert_eq!(refuse(Reason::PerTryTimeout, false).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(refuse(Reason::RateLimited, false).status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
