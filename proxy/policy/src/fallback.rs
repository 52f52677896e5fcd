//! Fallbacks: what a route answers instead of the proxy's refusal, for the refusals it names.
//! The refusal stays visible (`x-bulwark-reason`); the answer says it is a fallback
//! (`x-bulwark-fallback: REASON`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::error::Errors;
use crate::hostport::HostPort;
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
    pub grpc: Option<GrpcFallback>,
    pub upstream: Option<FallbackUpstream>,
}

/// Where a refused request without a body is sent once instead.
#[derive(Clone, Debug, PartialEq)]
pub struct FallbackUpstream {
    pub target: HostPort,
    /// The try's bound when the request timeout leaves nothing.
    pub timeout: Duration,
}

/// A fallback upstream's try, when the route's request timeout leaves nothing to bound it.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq)]
pub struct GrpcFallback {
    pub status: u16,
    pub message: String,
    /// The response message's encoding (status 0 only), sent as one length-prefixed message.
    pub response: Option<bytes::Bytes>,
}

/// Whether this process reads `bodyFile`s. A proxy does (the file is on its disk); a control
/// plane turns it off at start and refuses policies that name one.
static READ_BODY_FILES: AtomicBool = AtomicBool::new(true);

/// Called by a control plane at start: it cannot read the proxies' disks.
pub fn refuse_body_files() {
    READ_BODY_FILES.store(false, Ordering::Relaxed);
}

fn body_file(errs: &mut Errors<'_>, at: &str, path: &str) -> bytes::Bytes {
    if !READ_BODY_FILES.load(Ordering::Relaxed) {
        errs.push(
            at,
            "a control plane cannot read files on the proxies' disks: put the body inline (body:), or use bodyFile in a proxy's own policy file",
        );
        return bytes::Bytes::new();
    }
    if !path.starts_with('/') {
        errs.push(at, format!("{path:?} is not an absolute path"));
        return bytes::Bytes::new();
    }
    let read = std::fs::File::open(path).and_then(|f| {
        use std::io::Read as _;
        let mut buf = Vec::new();
        // One byte past the limit tells a file that is too large without reading all of it.
        f.take(MAX_BODY as u64 + 1).read_to_end(&mut buf).map(|_| buf)
    });
    match read {
        Ok(buf) if buf.len() > MAX_BODY => {
            errs.push(at, format!("{path}: larger than {MAX_BODY} bytes"));
            bytes::Bytes::new()
        }
        Ok(buf) => bytes::Bytes::from(buf),
        Err(e) => {
            errs.push(at, format!("cannot read {path}: {e}"));
            bytes::Bytes::new()
        }
    }
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
    if s.response.is_none() && s.grpc.is_none() && s.upstream.is_none() {
        errs.push(path, "set upstream, response (HTTP), grpc, or several of them");
    }
    let upstream = s.upstream.as_ref().and_then(|u| {
        let target = HostPort::parse(u).map_err(|e| errs.push(format!("{path}.upstream"), e)).ok()?;
        if target.host.starts_with('*') {
            errs.push(format!("{path}.upstream"), format!("{u:?}: a fallback upstream is one host, not a pattern"));
        } else if target.ip().is_none() {
            crate::validate::host(errs, &format!("{path}.upstream"), &target.host);
        }
        let timeout = crate::validate::timeout(errs, &format!("{path}.timeout"), s.timeout.map(|d| d.get()))
            .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT);
        Some(FallbackUpstream { target, timeout })
    });
    if s.upstream.is_none() && s.timeout.is_some() {
        errs.push(format!("{path}.timeout"), "bounds the try to upstream, which is not set");
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
        let body = match &r.body_file {
            Some(_) if !r.body.is_empty() => {
                errs.push(format!("{at}.bodyFile"), "set body or bodyFile, not both");
                bytes::Bytes::new()
            }
            Some(file) => body_file(errs, &format!("{at}.bodyFile"), file),
            None => bytes::Bytes::from(r.body.clone()),
        };
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
        HttpFallback { status, headers, body }
    });
    let grpc = s.grpc.as_ref().map(|g| {
        if g.status > 16 {
            errs.push(format!("{path}.grpc.status"), format!("{} is not a gRPC status (0..=16)", g.status));
        }
        if g.message.len() > 1024 || g.message.contains(['\r', '\n']) {
            errs.push(format!("{path}.grpc.message"), "at most 1024 bytes, on one line");
        }
        let response = g.response_base64.as_ref().and_then(|b64| {
            let at = format!("{path}.grpc.responseBase64");
            if g.status != 0 {
                errs.push(&at, "only an OK answer (status: 0) carries a response message");
            }
            match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                Ok(bytes) if bytes.len() > MAX_BODY => {
                    errs.push(&at, format!("{} bytes; at most {MAX_BODY}", bytes.len()));
                    None
                }
                Ok(bytes) => Some(bytes::Bytes::from(bytes)),
                Err(e) => {
                    errs.push(&at, format!("not base64: {e}"));
                    None
                }
            }
        });
        GrpcFallback { status: g.status, message: g.message.clone(), response }
    });
    Fallback { on, http, grpc, upstream }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let spec: FallbackSpec = yaml_serde::from_str(yaml).unwrap();
        let mut out = Vec::new();
        compile(&mut Errors { policy: "t/p".into(), out: &mut out }, "f", &spec);
        out.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect()
    }

    #[test]
    fn a_fallback_upstream_is_one_host_and_port() {
        assert!(errors("{upstream: \"cache.shop.svc:8080\"}").is_empty());
        assert!(errors("{upstream: \"[::1]:80\", timeout: 250ms}").is_empty());
        assert_eq!(errors("{upstream: cache}"), ["f.upstream: \"cache\" must be host:port"]);
        assert_eq!(
            errors("{upstream: \"*.shop:80\"}"),
            ["f.upstream: \"*.shop:80\": a fallback upstream is one host, not a pattern"]
        );
        assert_eq!(
            errors("{timeout: 1s, response: {body: x}}"),
            ["f.timeout: bounds the try to upstream, which is not set"]
        );
        assert_eq!(errors("{on: [timeout]}"), ["f: set upstream, response (HTTP), grpc, or several of them"]);
    }
}
