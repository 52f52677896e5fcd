//! Route matching. A request is matched against a policy's routes in order of specificity:
//! exact path over prefix (longer prefix first) over regex over no path condition; then a
//! host condition, a method condition and more header conditions each win; then the order
//! written. The ordering is `Specificity`'s `Ord`, applied once at compile time.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

/// What matching needs to know about a request.
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// Authority host without port, lower case.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> HostPattern {
        let p = pattern.to_ascii_lowercase();
        match p.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(p),
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Suffix(s) => {
                host.len() > s.len() && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

#[derive(Debug)]
pub enum HeaderMatch {
    Exact(HeaderName, String),
    Regex(HeaderName, Regex),
    Present(HeaderName, bool),
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        match self {
            HeaderMatch::Exact(name, want) => headers.get_all(name).iter().any(|v| v.as_bytes() == want.as_bytes()),
            HeaderMatch::Regex(name, re) => {
                headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|s| re.is_match(s)))
            }
            HeaderMatch::Present(name, want) => headers.contains_key(name) == *want,
        }
    }
}

#[derive(Debug)]
pub struct RouteMatch {
    pub hosts: Vec<HostPattern>,
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    pub fn any() -> RouteMatch {
        RouteMatch { hosts: Vec::new(), path: PathMatch::Any, methods: None, headers: Vec::new() }
    }

    pub fn matches(&self, req: &RequestInfo<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(req.path),
        };
        path_ok
            && (self.hosts.is_empty() || req.host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h))))
            && self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
    }

    pub fn specificity(&self) -> Specificity {
        let (path_rank, path_len) = match &self.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Regex(_) => (1, 0),
            PathMatch::Any => (0, 0),
        };
        Specificity {
            path_rank,
            path_len,
            has_hosts: !self.hosts.is_empty(),
            has_methods: self.methods.is_some(),
            headers: self.headers.len(),
        }
    }
}

/// Greater is more specific. Field order is the precedence order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    path_rank: u8,
    path_len: usize,
    has_hosts: bool,
    has_methods: bool,
    headers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
        RequestInfo { method, path, host: Some("api.example.com"), headers }
    }

    fn with_path(path: PathMatch) -> RouteMatch {
        RouteMatch { path, ..RouteMatch::any() }
    }

    #[test]
    fn exact_beats_longer_prefix_beats_shorter_prefix_beats_regex_beats_any() {
        let exact = with_path(PathMatch::Exact("/a".into())).specificity();
        let long = with_path(PathMatch::Prefix("/a/b/c".into())).specificity();
        let short = with_path(PathMatch::Prefix("/a".into())).specificity();
        let re = with_path(PathMatch::Regex(Regex::new("^/a.*$").unwrap())).specificity();
        let any = RouteMatch::any().specificity();
        assert!(exact > long && long > short && short > re && re > any);
    }

    #[test]
    fn method_and_header_conditions_break_path_ties() {
        let plain = with_path(PathMatch::Prefix("/a".into()));
        let mut with_method = with_path(PathMatch::Prefix("/a".into()));
        with_method.methods = Some(vec![Method::POST]);
        let mut with_header = with_path(PathMatch::Prefix("/a".into()));
        with_header.headers = vec![HeaderMatch::Present(HeaderName::from_static("x-a"), true)];
        assert!(with_method.specificity() > plain.specificity());
        assert!(with_header.specificity() > plain.specificity());
    }

    #[test]
    fn matches_every_condition() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "42".parse().unwrap());
        let m = RouteMatch {
            hosts: vec![HostPattern::parse("*.example.com")],
            path: PathMatch::Prefix("/charge".into()),
            methods: Some(vec![Method::POST]),
            headers: vec![
                HeaderMatch::Exact(HeaderName::from_static("x-user"), "42".into()),
                HeaderMatch::Present(HeaderName::from_static("x-debug"), false),
            ],
        };
        assert!(m.matches(&info(&Method::POST, "/charge/1", &h)));
        assert!(!m.matches(&info(&Method::GET, "/charge/1", &h)));
        assert!(!m.matches(&info(&Method::POST, "/refund", &h)));
        h.insert("x-debug", "1".parse().unwrap());
        assert!(!m.matches(&info(&Method::POST, "/charge/1", &h)));
    }

    #[test]
    fn host_patterns() {
        assert!(HostPattern::parse("*.example.com").matches("a.EXAMPLE.com"));
        assert!(!HostPattern::parse("*.example.com").matches("example.com"));
        assert!(HostPattern::parse("Payments").matches("payments"));
        assert!(!HostPattern::parse("payments").matches("payments2"));
    }
}
