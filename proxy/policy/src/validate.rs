//! Field checks shared by compilation. Each check pushes an error naming the field path and
//! returns `None`, so one pass reports every problem in a document.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderName, Method};
use regex::{Regex, RegexBuilder};

use crate::error::Errors;

/// Bounds on untrusted input, checked at validation so the data path never sees more.
pub const MAX_POLICIES: usize = 1000;
pub const MAX_ROUTES: usize = 256;
pub const MAX_MATCH_ITEMS: usize = 32;
pub const MAX_REGEX_BYTES: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn name(errs: &mut Errors<'_>, path: &str, value: &str) -> bool {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        errs.push(
            path,
            format!("{value:?} is not a valid name (lower-case letters, digits, '-', '.', '_'; starts with a letter or digit; at most 253 characters)"),
        );
    }
    ok
}

/// A timeout must be positive and at most a day; zero would refuse every request.
pub(crate) fn timeout(errs: &mut Errors<'_>, path: &str, d: Option<Duration>) -> Option<Duration> {
    let d = d?;
    if d.is_zero() {
        errs.push(path, "must be greater than zero");
        None
    } else if d > MAX_TIMEOUT {
        errs.push(path, "must be at most 24h");
        None
    } else {
        Some(d)
    }
}

pub(crate) fn regex(errs: &mut Errors<'_>, path: &str, pattern: &str) -> Option<Regex> {
    if pattern.len() > MAX_REGEX_BYTES {
        errs.push(path, format!("regex is {} bytes; the limit is {MAX_REGEX_BYTES}", pattern.len()));
        return None;
    }
    // Anchored: a route regex describes the whole value, as in Envoy's safe_regex.
    match RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            errs.push(path, format!("invalid regex: {e}"));
            None
        }
    }
}

pub(crate) fn path_literal(errs: &mut Errors<'_>, path: &str, value: &str) -> bool {
    if !value.starts_with('/') {
        errs.push(path, format!("{value:?} can never match: request paths start with '/'"));
        false
    } else if value.contains('?') || value.contains('#') {
        errs.push(path, format!("{value:?} can never match: paths are matched without query or fragment"));
        false
    } else {
        true
    }
}

pub(crate) fn method(errs: &mut Errors<'_>, path: &str, value: &str) -> Option<Method> {
    match Method::from_bytes(value.as_bytes()) {
        Ok(m) if value.bytes().all(|b| b.is_ascii_uppercase()) => Some(m),
        _ => {
            errs.push(path, format!("{value:?} is not an HTTP method (write it in upper case, e.g. GET)"));
            None
        }
    }
}

pub(crate) fn header_name(errs: &mut Errors<'_>, path: &str, value: &str) -> Option<HeaderName> {
    match HeaderName::from_bytes(value.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            errs.push(path, format!("{value:?} is not a valid header name"));
            None
        }
    }
}

pub(crate) fn host(errs: &mut Errors<'_>, path: &str, value: &str) -> bool {
    let body = value.strip_prefix("*.").unwrap_or(value);
    let ok = !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        errs.push(path, format!("{value:?} is not a host name (a wildcard is allowed only as a leading '*.')"));
    }
    ok
}

pub(crate) fn count(errs: &mut Errors<'_>, path: &str, len: usize, max: usize) -> bool {
    if len > max {
        errs.push(path, format!("has {len} entries; the limit is {max}"));
        false
    } else {
        true
    }
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("banana").is_err());
    }
}
