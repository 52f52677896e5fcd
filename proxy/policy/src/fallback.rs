//! Fallbacks: what a route answers instead of the proxy's refusal, for the refusals it names.
//! The refusal stays visible (`x-bulwark-reason`); the answer says it is a fallback
//! (`x-bulwark-fallback: REASON`).

use http::{HeaderName, HeaderValue, StatusCode};

use crate::error::Errors;
use crate::spec::FallbackSpec;

/// The refusals a fallback can stand in for (the proxy's words for them).
pub const REASONS: [&str; 6] = [
    "circuit-open",
    "bulkhead-full",
    "concurrency-limited",
    "timeout",
    "no-healthy-upstream",
    "upstream-connect-failure",
];
/// An inline body larger than this belongs in the upstream it stands in for.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    /// Of [`REASONS`].
    pub on: Vec<&'static str>,
    pub http: Option<HttpFallback>,
    /// gRPC status and message.
    pub grpc: Option<(u16, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpFallback {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: bytes::Bytes,
}

impl Fallback {
    pub fn covers(&self, reason: &str) -> bool {
        self.on.contains(&reason)
    }
}

pub(crate) fn compile(errs: &mut Errors<'_>, path: &str, s: &FallbackSpec) -> Fallback {
    let on = match &s.on {
        None => REASONS.to_vec(),
        Some(list) => {
            if list.is_empty() {
                errs.push(format!("{path}.on"), "an empty list matches nothing; omit it for every reason");
            }
            list.iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    let found = REASONS.iter().find(|r| **r == t.0).copied();
                    if found.is_none() {
                        errs.push(
                            format!("{path}.on[{i}]"),
                            format!("{:?} is not a refusal a fallback answers ({})", t.0, REASONS.join(", ")),
                        );
                    }
                    found
                })
                .collect()
        }
    };
    if s.response.is_none() && s.grpc.is_none() {
        errs.push(path, "set response (HTTP), grpc, or both");
    }
    let http = s.response.as_ref().map(|r| {
        let at = format!("{path}.response");
        let status = match StatusCode::from_u16(r.status) {
            Ok(st) if (200..600).contains(&r.status) => st,
            _ => {
                errs.push(format!("{at}.status"), format!("{} is not a status in 200..=599", r.status));
                StatusCode::OK
            }
        };
        if r.body.len() > MAX_BODY {
            errs.push(format!("{at}.body"), format!("{} bytes; at most {MAX_BODY}", r.body.len()));
        }
        let headers = r
            .headers
            .iter()
            .filter_map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| errs.push(format!("{at}.headers.{k}"), "not a header name"))
                    .ok()?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| errs.push(format!("{at}.headers.{k}"), "not a header value"))
                    .ok()?;
                Some((name, value))
            })
            .collect();
        HttpFallback { status, headers, body: bytes::Bytes::from(r.body.clone()) }
    });
    let grpc = s.grpc.as_ref().map(|g| {
        if g.status > 16 {
            errs.push(format!("{path}.grpc.status"), format!("{} is not a gRPC status (0..=16)", g.status));
        }
        if g.message.len() > 1024 || g.message.contains(['\r', '\n']) {
            errs.push(format!("{path}.grpc.message"), "at most 1024 bytes, on one line");
        }
        (g.status, g.message.clone())
    });
    Fallback { on, http, grpc }
}
