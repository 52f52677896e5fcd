//! Header rules for forwarding (RFC 9110 §7.6.1): connection-specific headers belong to one
//! hop and are removed in both directions, except what an HTTP/1.1 upgrade needs and
//! `te: trailers`, which gRPC relies on. `x-request-id` is added when absent.

use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Version};

use crate::upstream::pool::Proto;

pub const REQUEST_ID: &str = "x-request-id";

const HOP_BY_HOP: [&str; 5] =
    ["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "trailer"];

/// Removes hop-by-hop headers, keeping every other header where it was (a proxy passes
/// messages through in their order). Returns true when the message asks for a protocol
/// upgrade, in which case `Connection: upgrade` and `Upgrade` are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    fn tokens(h: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
        h.get_all(name).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
    }
    let upgrade = keep_upgrade
        && headers.contains_key(UPGRADE)
        && tokens(headers, CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = tokens(headers, CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(upgrade && n == UPGRADE))
        .collect();
    let trailers = tokens(headers, TE).any(|t| t.eq_ignore_ascii_case("trailers"));
    let goes = |n: &HeaderName| {
        HOP_BY_HOP.contains(&n.as_str())
            || n == TRANSFER_ENCODING
            || n == CONNECTION
            || n == TE
            || (n == UPGRADE && !upgrade)
            || named.contains(n)
    };
    if !headers.keys().any(goes) {
        return upgrade;
    }
    // Rebuilt rather than removed from: `HeaderMap::remove` moves the last header into the gap.
    let mut kept = HeaderMap::with_capacity(headers.len());
    let mut name = None;
    for (n, value) in std::mem::take(headers) {
        let first = n.is_some();
        if let Some(n) = n {
            name = Some(n);
        }
        let Some(n) = name.clone() else { continue };
        // What is rewritten takes the place of its first occurrence.
        if n == CONNECTION && upgrade && first {
            kept.append(CONNECTION, HeaderValue::from_static("upgrade"));
        } else if n == TE && trailers && first {
            kept.append(TE, HeaderValue::from_static("trailers"));
        } else if !goes(&n) {
            kept.append(n, value);
        }
    }
    *headers = kept;
    upgrade
}

/// Readies a request that passed every stage for the upstream: hop-by-hop headers off.
/// Returns true when an HTTP/1.1 client asks for an upgrade, which then goes through.
pub fn for_upstream<B>(req: &mut Request<B>) -> bool {
    let h1 = req.version() != Version::HTTP_2;
    strip_hop_by_hop(req.headers_mut(), h1)
}

/// Shapes a request for the protocol it goes upstream in, whatever the client spoke (RFC 9113
/// §8.3.1): HTTP/1.1 gets version 1.1, an origin-form target and a `Host` (from `:authority`,
/// or `authority` when an HTTP/1.0 client sent neither); HTTP/2 gets an absolute target whose
/// authority is the `Host`, which then goes (`:authority` carries it).
pub fn for_protocol<B>(req: &mut Request<B>, proto: Proto, authority: impl FnOnce() -> String) {
    let connect = req.method() == Method::CONNECT;
    match proto {
        Proto::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            // The usual request (origin-form target, a Host) needs nothing more.
            if !req.headers().contains_key(HOST) {
                let a = req.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_else(authority);
                let value = HeaderValue::from_str(&a).unwrap_or(HeaderValue::from_static("localhost"));
                req.headers_mut().insert(HOST, value);
            }
            if !connect && req.uri().authority().is_some() {
                let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(origin) = origin.parse() {
                    *req.uri_mut() = origin;
                }
            }
        }
        Proto::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            if !connect {
                let host = req.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
                let a = host.or_else(|| req.uri().authority().map(|a| a.as_str().to_owned())).unwrap_or_else(authority);
                let scheme = req.uri().scheme_str().unwrap_or("http");
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(uri) = format!("{scheme}://{a}{target}").parse() {
                    *req.uri_mut() = uri;
                    req.headers_mut().remove(HOST);
                }
            }
        }
    }
}

/// Decides the request's one authority, before anything reads it (RFC 9112 §3.2, §3.2.2): an
/// absolute-form target's authority wins and `Host` is rewritten to it, and the target
/// becomes origin-form, so route matching and the upstream see the same authority. More than
/// one `Host`, or one that is not an authority, is refused with what was wrong. Returns the
/// host to route on, from the one authority parsed once.
pub fn settle_authority<B>(req: &mut Request<B>) -> Result<Option<String>, &'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let given = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let given = match given {
        Some(h) => {
            let parsed = h.to_str().ok().and_then(|h| h.parse::<http::uri::Authority>().ok());
            Some(parsed.ok_or("Host is not a valid authority")?)
        }
        None => None,
    };
    let h1 = req.version() != Version::HTTP_2;
    let authority = match req.uri().authority().cloned() {
        Some(authority) => {
            let value =
                HeaderValue::from_str(authority.as_str()).map_err(|_| "the request target's authority is invalid")?;
            // HTTP/2 carries it in `:authority`; a `Host` beside it is made to agree.
            if h1 || given.is_some() {
                req.headers_mut().insert(HOST, value);
            }
            if h1 && req.method() != Method::CONNECT {
                let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = origin.parse().map_err(|_| "the request target is invalid")?;
            }
            Some(authority)
        }
        None => given,
    };
    // The host to route on: without port or IPv6 brackets, lower case.
    Ok(authority.map(|a| a.host().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()))
}

/// Ensures the request carries an `x-request-id`, generating a random UUIDv4 when absent.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    // A version-4 UUID written straight into its 36 bytes: on every request, so no formatting
    // machinery and no allocation beyond the header value's own.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let hi = (a & 0xffff_ffff_ffff_0fff) | 0x4000; // version nibble
    let lo = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant bits
    let mut id = [b'-'; 36];
    let mut digits = (0..16).rev().map(|i| (hi >> (i * 4)) & 0xf).chain((0..16).rev().map(|i| (lo >> (i * 4)) & 0xf));
    for (pos, slot) in id.iter_mut().enumerate() {
        if ![8, 13, 18, 23].contains(&pos) {
            *slot = HEX[digits.next().unwrap_or(0) as usize];
        }
    }
    headers.insert(REQUEST_ID, HeaderValue::from_bytes(&id).expect("hex is a valid header value"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "close"),
            ("te", "trailers, deflate"),
            ("x-kept", "yes"),
        ]);
        assert!(!strip_hop_by_hop(&mut h, true));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(strip_hop_by_hop(&mut h, true));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let mut h2 = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(!strip_hop_by_hop(&mut h2, false));
        assert!(h2.is_empty());
    }

    fn h1(target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_absolute_form_authority_wins_and_rewrites_host() {
        let mut req = h1("http://Other.Example:8080/abs?q=1", &["guarded.example"]);
        assert_eq!(settle_authority(&mut req), Ok(Some("other.example".into())));
        assert_eq!(req.headers()[HOST], "Other.Example:8080");
        assert_eq!(req.uri(), "/abs?q=1", "origin-form upstream");
        assert_eq!(req.headers().get_all(HOST).iter().count(), 1);

        let mut plain = h1("/x", &["guarded.example"]);
        assert_eq!(settle_authority(&mut plain), Ok(Some("guarded.example".into())));
        assert_eq!(plain.uri(), "/x");
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        assert_eq!(settle_authority(&mut h1("/", &["a.example", "b.example"])), Err("more than one Host header"));
        assert_eq!(settle_authority(&mut h1("/", &["a b"])), Err("Host is not a valid authority"));
        assert_eq!(settle_authority(&mut h1("/", &[])), Ok(None));
    }

    #[test]
    fn requests_are_shaped_for_the_upstream_protocol() {
        // HTTP/2 client (absolute target, no Host) to HTTP/1.1.
        let mut req =
            Request::builder().uri("http://svc.example:8080/p?q=1").version(Version::HTTP_2).body(()).unwrap();
        for_protocol(&mut req, Proto::Http1, || unreachable!());
        assert_eq!((req.version(), req.uri().to_string()), (Version::HTTP_11, "/p?q=1".to_string()));
        assert_eq!(req.headers()[HOST], "svc.example:8080");
        // HTTP/1.1 client (origin form, Host) to HTTP/2.
        let mut req = h1("/p", &["svc.example"]);
        for_protocol(&mut req, Proto::Http2, || unreachable!());
        assert_eq!((req.version(), req.uri().to_string()), (Version::HTTP_2, "http://svc.example/p".to_string()));
        assert!(!req.headers().contains_key(HOST), ":authority carries it");
        // HTTP/1.0 client without Host: the destination's authority.
        let mut req = h1("/", &[]);
        for_protocol(&mut req, Proto::Http1, || "10.0.0.1:80".into());
        assert_eq!(req.headers()[HOST], "10.0.0.1:80");
    }

    #[test]
    fn request_id_is_generated_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[REQUEST_ID].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        ensure_request_id(&mut h);
        assert_eq!(h[REQUEST_ID], id.as_str());
    }
}
