//! Turns validated documents into the immutable `Snapshot` the data path reads: regexes
//! compiled, durations typed, routes ordered by specificity, defaults merged into each route.
//! A snapshot is built whole or not at all — `compile` returns every error instead.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Errors, ValidationError};
use crate::faults::{self, FaultPolicy, TcpFaultPolicy};
use crate::route::{HeaderMatch, HostPattern, PathMatch, RouteMatch};
use crate::spec::{
    self, Direction, LoadBalancer, MatchSpec, ResiliencePolicy, RouteSettings, TimeoutSpec, UpstreamProtocol,
};
use crate::stages::{self, BreakerPolicy, BulkheadPolicy, RateLimitPolicy, RetryPolicy};
use crate::validate::{self, Cidr};

/// Name of the route that requests matching no route of a policy are accounted to.
pub const DEFAULT_ROUTE: &str = "default";

/// The resolved timeouts of one route. `None` means unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub per_try: Option<Duration>,
    pub idle: Option<Duration>,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// `namespace/name` of the owning policy.
    pub policy: Arc<str>,
    /// Position of this route among every route of the snapshot (default routes included), so
    /// the proxy can keep per-route runtime state in a vector.
    pub index: usize,
    pub matcher: RouteMatch,
    pub timeouts: Timeouts,
    pub retries: Option<RetryPolicy>,
    pub breaker: Option<BreakerPolicy>,
    pub bulkhead: Option<BulkheadPolicy>,
    pub rate_limit: Option<RateLimitPolicy>,
    pub faults: Option<Arc<FaultPolicy>>,
    pub fallback: Option<Arc<crate::fallback::Fallback>>,
    pub priority: Option<Arc<crate::priority::Priority>>,
    pub adaptive: Option<crate::adaptive::AdaptivePolicy>,
}

/// A route's settings after merging `defaults`: timeouts field by field, the other blocks whole.
#[derive(Clone, Debug, Default, PartialEq)]
struct Settings {
    timeouts: Timeouts,
    retries: Option<RetryPolicy>,
    breaker: Option<BreakerPolicy>,
    bulkhead: Option<BulkheadPolicy>,
    rate_limit: Option<RateLimitPolicy>,
    faults: Option<Arc<FaultPolicy>>,
    fallback: Option<Arc<crate::fallback::Fallback>>,
    priority: Option<Arc<crate::priority::Priority>>,
    adaptive: Option<crate::adaptive::AdaptivePolicy>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamPolicy {
    pub connect_timeout: Option<Duration>,
    pub max_connections: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub outlier: Option<OutlierPolicy>,
    pub load_balancer: LoadBalancer,
    /// None: the listener's setting, else `auto`.
    pub protocol: Option<UpstreamProtocol>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_5xx: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: f64,
}

/// Outlier detection where no policy says otherwise, Envoy's defaults: 5 consecutive failures
/// eject an endpoint for 30 s (times the ejections so far), at most 10% of the set, but always
/// one endpoint of a set of two or more.
pub const DEFAULT_OUTLIER: OutlierPolicy =
    OutlierPolicy { consecutive_5xx: 5, base_ejection: Duration::from_secs(30), max_ejection_percent: 10.0 };

#[derive(Debug)]
pub struct Target {
    pub service: Option<HostPattern>,
    pub listener: Option<String>,
    pub addresses: Vec<Cidr>,
    pub ports: Vec<u16>,
    pub direction: Direction,
}

#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: Arc<str>,
    pub target: Target,
    /// Most specific first; the first that matches wins.
    pub routes: Vec<Arc<Route>>,
    /// Used when no route matches.
    pub default_route: Arc<Route>,
    pub upstream: UpstreamPolicy,
    pub tcp_faults: Option<TcpFaultPolicy>,
}

/// Where a connection or request is going, as far as policy selection cares.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    pub direction: Direction,
    /// The explicit listener it arrived on, if any.
    pub listener: Option<&'a str>,
    /// The request's host and, for explicit listeners, the configured upstream host.
    pub hosts: [Option<&'a str>; 2],
    /// The original destination (transparent) or the upstream (explicit), when it is an IP.
    pub addr: Option<SocketAddr>,
    pub port: u16,
}

/// An immutable, versioned set of compiled policies.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: String,
    pub policies: Vec<Arc<CompiledPolicy>>,
    /// The documents as accepted, for display (`/config`) and round-tripping.
    pub documents: Vec<ResiliencePolicy>,
    /// Number of routes in all policies, default routes included (`Route::index` is below it).
    pub route_count: usize,
    index: crate::select::SelectIndex,
}

impl Snapshot {
    /// Compiles `docs` into a snapshot, or returns every validation error found.
    pub fn compile(
        version: impl Into<String>,
        mut docs: Vec<ResiliencePolicy>,
    ) -> Result<Snapshot, Vec<ValidationError>> {
        let mut out = Vec::new();
        if docs.len() > validate::MAX_POLICIES {
            out.push(ValidationError {
                policy: "(snapshot)".into(),
                path: String::new(),
                message: format!("{} policies; the limit is {}", docs.len(), validate::MAX_POLICIES),
            });
            return Err(out);
        }
        // Deterministic precedence between equally specific policies: namespace, then name.
        docs.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
        let mut seen = HashSet::new();
        let mut policies = Vec::with_capacity(docs.len());
        let mut route_count = 0;
        for doc in &docs {
            let mut errs = Errors { policy: doc.id(), out: &mut out };
            if !seen.insert(doc.id()) {
                errs.push("metadata.name", "another policy with the same namespace and name is in the same set");
                continue;
            }
            if let Some(p) = compile_policy(doc, &mut errs, &mut route_count) {
                policies.push(Arc::new(p));
            }
        }
        if out.is_empty() {
            let index = crate::select::SelectIndex::build(&policies);
            Ok(Snapshot { version: version.into(), policies, documents: docs, route_count, index })
        } else {
            Err(out)
        }
    }

    /// The policy that governs traffic to `dest`: one naming its listener first, then one
    /// naming its service, then one whose addresses contain it. Ties go to namespace/name order.
    pub fn select(&self, dest: &Destination<'_>) -> Option<&Arc<CompiledPolicy>> {
        self.index.select(&self.policies, dest)
    }

    /// `select` by scanning every policy: what the index must agree with.
    #[cfg(test)]
    pub(crate) fn select_by_scan(&self, dest: &Destination<'_>) -> Option<&Arc<CompiledPolicy>> {
        let mut best: Option<(u8, &Arc<CompiledPolicy>)> = None;
        for p in &self.policies {
            let t = &p.target;
            if t.direction != dest.direction || !(t.ports.is_empty() || t.ports.contains(&dest.port)) {
                continue;
            }
            let rank = if t.listener.is_some() && t.listener.as_deref() == dest.listener {
                0
            } else if t.service.as_ref().is_some_and(|s| dest.hosts.iter().flatten().any(|h| s.matches(h))) {
                1
            } else if dest.addr.is_some_and(|a| t.addresses.iter().any(|c| c.contains(a.ip()))) {
                2
            } else {
                continue;
            };
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, p));
            }
        }
        best.map(|(_, p)| p)
    }
}

fn compile_policy(doc: &ResiliencePolicy, errs: &mut Errors<'_>, next_index: &mut usize) -> Option<CompiledPolicy> {
    let before = errs.out.len();
    if doc.api_version != spec::API_VERSION {
        errs.push("apiVersion", format!("{:?} is not supported; use {:?}", doc.api_version, spec::API_VERSION));
    }
    if doc.kind != spec::KIND {
        errs.push("kind", format!("{:?} is not supported; use {:?}", doc.kind, spec::KIND));
    }
    validate::name(errs, "metadata.name", &doc.metadata.name);
    validate::name(errs, "metadata.namespace", &doc.metadata.namespace);
    let id: Arc<str> = doc.id().into();

    let target = compile_target(&doc.spec.target, errs);
    let defaults = compile_settings(errs, "spec.defaults", &doc.spec.defaults, &Settings::default());
    let upstream = compile_upstream(errs, &doc.spec.upstream);
    let tcp_faults = doc.spec.tcp_faults.as_ref().map(|t| faults::compile_tcp(errs, "spec.tcpFaults", t));

    validate::count(errs, "spec.routes", doc.spec.routes.len(), validate::MAX_ROUTES);
    let mut names = HashSet::new();
    let mut routes: Vec<Arc<Route>> = Vec::new();
    for (i, r) in doc.spec.routes.iter().enumerate() {
        let base = format!("spec.routes[{i}]");
        if validate::name(errs, &format!("{base}.name"), &r.name) {
            if r.name == DEFAULT_ROUTE {
                errs.push(format!("{base}.name"), "\"default\" is reserved for requests that match no route");
            } else if !names.insert(r.name.as_str()) {
                errs.push(format!("{base}.name"), format!("route {:?} is defined twice", r.name));
            }
        }
        if let Some(earlier) = doc.spec.routes[..i].iter().find(|e| e.matches == r.matches) {
            errs.push(
                format!("{base}.match"),
                format!("can never match: route {:?} has the same match and comes first", earlier.name),
            );
        }
        let matcher = compile_match(errs, &format!("{base}.match"), &r.matches);
        let settings = compile_settings(errs, &base, &r.settings(), &defaults);
        if let Some(matcher) = matcher {
            routes.push(make_route(&r.name, &id, next_index, matcher, settings));
        }
    }
    // Stable sort keeps the written order among equally specific routes.
    routes.sort_by_key(|r| std::cmp::Reverse(r.matcher.specificity()));

    if errs.out.len() > before {
        return None;
    }
    Some(CompiledPolicy {
        default_route: make_route(DEFAULT_ROUTE, &id, next_index, RouteMatch::any(), defaults),
        id,
        target: target?,
        routes,
        upstream,
        tcp_faults,
    })
}

fn compile_upstream(errs: &mut Errors<'_>, u: &spec::UpstreamSpec) -> UpstreamPolicy {
    let pool = u.pool.clone().unwrap_or_default();
    if let Some(n) = pool.max_connections {
        if n == 0 || n > 1_000_000 {
            errs.push("spec.upstream.pool.maxConnections", format!("{n} is out of range 1..=1000000"));
        }
    }
    let outlier = match &u.outlier_detection {
        None => Some(DEFAULT_OUTLIER),
        Some(o) if o.enabled == Some(false) => None,
        Some(o) => {
            let consecutive_5xx = o.consecutive_5xx.unwrap_or(DEFAULT_OUTLIER.consecutive_5xx);
            if consecutive_5xx == 0 || consecutive_5xx > 10_000 {
                errs.push(
                    "spec.upstream.outlierDetection.consecutive5xx",
                    format!("{consecutive_5xx} is out of range 1..=10000 (turn detection off with enabled: false)"),
                );
            }
            let max = o.max_ejection_percent.unwrap_or(DEFAULT_OUTLIER.max_ejection_percent);
            if !(max > 0.0 && max <= 100.0) {
                errs.push(
                    "spec.upstream.outlierDetection.maxEjectionPercent",
                    format!("{max} is not a percentage in (0, 100]: 0 would never eject (set enabled: false instead)"),
                );
            }
            let base = o.base_ejection.map_or(DEFAULT_OUTLIER.base_ejection, |d| d.get());
            Some(OutlierPolicy {
                consecutive_5xx,
                base_ejection: validate::timeout(errs, "spec.upstream.outlierDetection.baseEjection", Some(base))
                    .unwrap_or_default(),
                max_ejection_percent: max,
            })
        }
    };
    UpstreamPolicy {
        connect_timeout: validate::timeout(errs, "spec.upstream.connectTimeout", u.connect_timeout.map(|d| d.get())),
        max_connections: pool.max_connections,
        idle_timeout: validate::timeout(errs, "spec.upstream.pool.idleTimeout", pool.idle_timeout.map(|d| d.get())),
        max_lifetime: validate::timeout(errs, "spec.upstream.pool.maxLifetime", pool.max_lifetime.map(|d| d.get())),
        outlier,
        load_balancer: u.load_balancer.unwrap_or_default(),
        protocol: u.protocol,
    }
}

fn make_route(name: &str, policy: &Arc<str>, next_index: &mut usize, matcher: RouteMatch, s: Settings) -> Arc<Route> {
    let index = *next_index;
    *next_index += 1;
    Arc::new(Route {
        name: name.into(),
        policy: policy.clone(),
        index,
        matcher,
        timeouts: s.timeouts,
        retries: s.retries,
        breaker: s.breaker,
        bulkhead: s.bulkhead,
        rate_limit: s.rate_limit,
        faults: s.faults,
        fallback: s.fallback,
        priority: s.priority,
        adaptive: s.adaptive,
    })
}

/// `spec` over `base`: timeouts merge field by field; any other block given replaces the base's.
fn compile_settings(errs: &mut Errors<'_>, path: &str, spec: &RouteSettings, base: &Settings) -> Settings {
    let timeouts = compile_timeouts(errs, &format!("{path}.timeout"), spec.timeout.as_ref(), base.timeouts);
    Settings {
        timeouts,
        retries: match &spec.retries {
            Some(r) => Some(stages::retry(errs, &format!("{path}.retries"), r)),
            None => base.retries.clone(),
        },
        breaker: match &spec.circuit_breaker {
            Some(b) => Some(stages::breaker(errs, &format!("{path}.circuitBreaker"), b)),
            None => base.breaker.clone(),
        },
        bulkhead: match &spec.bulkhead {
            Some(b) => Some(stages::bulkhead(errs, &format!("{path}.bulkhead"), b)),
            None => base.bulkhead.clone(),
        },
        rate_limit: match &spec.rate_limit {
            Some(r) => Some(stages::rate_limit(errs, &format!("{path}.rateLimit"), r)),
            None => base.rate_limit.clone(),
        },
        faults: match &spec.faults {
            Some(f) => {
                let fp = format!("{path}.faults");
                let headers = MatchSpec {
                    headers: f.matches.as_ref().map(|m| m.headers.clone()).unwrap_or_default(),
                    ..MatchSpec::default()
                };
                let headers =
                    compile_match(errs, &format!("{fp}.match"), &headers).map(|m| m.headers).unwrap_or_default();
                Some(Arc::new(faults::compile(errs, &fp, f, headers)))
            }
            None => base.faults.clone(),
        },
        fallback: match &spec.fallback {
            Some(f) => Some(Arc::new(crate::fallback::compile(errs, &format!("{path}.fallback"), f))),
            None => base.fallback.clone(),
        },
        priority: match &spec.priority {
            Some(p) => Some(Arc::new(crate::priority::compile(errs, &format!("{path}.priority"), p))),
            None => base.priority.clone(),
        },
        adaptive: match &spec.adaptive_concurrency {
            Some(a) => Some(crate::adaptive::compile(errs, &format!("{path}.adaptiveConcurrency"), a)),
            None => base.adaptive.clone(),
        },
    }
}

fn compile_target(t: &spec::TargetSpec, errs: &mut Errors<'_>) -> Option<Target> {
    let before = errs.out.len();
    if t.service.is_none() && t.listener.is_none() && t.addresses.is_empty() {
        errs.push("spec.target", "selects no traffic: set service, listener or addresses");
    }
    if let Some(s) = &t.service {
        validate::host(errs, "spec.target.service", s);
    }
    if let Some(l) = &t.listener {
        validate::name(errs, "spec.target.listener", l);
    }
    validate::count(errs, "spec.target.addresses", t.addresses.len(), validate::MAX_MATCH_ITEMS * 8);
    let addresses: Vec<Cidr> = t
        .addresses
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Cidr::parse(a).map_err(|m| errs.push(format!("spec.target.addresses[{i}]"), m)).ok())
        .collect();
    for (i, p) in t.ports.iter().enumerate() {
        if *p == 0 {
            errs.push(format!("spec.target.ports[{i}]"), "port 0 can never match");
        }
    }
    (errs.out.len() == before).then(|| Target {
        service: t.service.as_deref().map(HostPattern::parse),
        listener: t.listener.clone(),
        addresses,
        ports: t.ports.clone(),
        direction: t.direction,
    })
}

/// Field-by-field override of `base` by `spec`.
fn compile_timeouts(errs: &mut Errors<'_>, path: &str, spec: Option<&TimeoutSpec>, base: Timeouts) -> Timeouts {
    let Some(s) = spec else { return base };
    let t = Timeouts {
        request: validate::timeout(errs, &format!("{path}.request"), s.request.map(|d| d.get())).or(base.request),
        per_try: validate::timeout(errs, &format!("{path}.perTry"), s.per_try.map(|d| d.get())).or(base.per_try),
        idle: validate::timeout(errs, &format!("{path}.idle"), s.idle.map(|d| d.get())).or(base.idle),
    };
    if let (Some(req), Some(try_)) = (t.request, t.per_try) {
        if try_ > req {
            errs.push(
                format!("{path}.perTry"),
                format!(
                    "{} exceeds the request timeout {}; an attempt can never use it",
                    crate::duration::format(try_),
                    crate::duration::format(req)
                ),
            );
        }
    }
    t
}

pub(crate) fn compile_match(errs: &mut Errors<'_>, path: &str, m: &MatchSpec) -> Option<RouteMatch> {
    let before = errs.out.len();
    let set = [m.path.is_some(), m.path_prefix.is_some(), m.path_regex.is_some()];
    if set.iter().filter(|b| **b).count() > 1 {
        errs.push(path, "set at most one of path, pathPrefix and pathRegex");
    }
    let path_match = if let Some(p) = &m.path {
        validate::path_literal(errs, &format!("{path}.path"), p);
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        validate::path_literal(errs, &format!("{path}.pathPrefix"), p);
        PathMatch::Prefix(p.clone())
    } else if let Some(p) = &m.path_regex {
        match validate::regex(errs, &format!("{path}.pathRegex"), p) {
            Some(re) => PathMatch::Regex(re),
            None => PathMatch::Any,
        }
    } else {
        PathMatch::Any
    };

    let methods = m.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            errs.push(format!("{path}.methods"), "an empty list can never match; omit methods to match any");
        }
        validate::count(errs, &format!("{path}.methods"), ms.len(), validate::MAX_MATCH_ITEMS);
        ms.iter()
            .enumerate()
            .filter_map(|(i, s)| validate::method(errs, &format!("{path}.methods[{i}]"), s))
            .collect::<Vec<_>>()
    });

    validate::count(errs, &format!("{path}.hosts"), m.hosts.len(), validate::MAX_MATCH_ITEMS);
    let hosts = m
        .hosts
        .iter()
        .enumerate()
        .filter(|(i, h)| validate::host(errs, &format!("{path}.hosts[{i}]"), h))
        .map(|(_, h)| HostPattern::parse(h))
        .collect();

    validate::count(errs, &format!("{path}.headers"), m.headers.len(), validate::MAX_MATCH_ITEMS);
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let hp = format!("{path}.headers[{i}]");
        let Some(name) = validate::header_name(errs, &format!("{hp}.name"), &h.name) else {
            continue;
        };
        match (&h.exact, &h.regex, h.present) {
            (Some(v), None, None) => headers.push(HeaderMatch::Exact(name, v.clone())),
            (None, Some(re), None) => {
                if let Some(re) = validate::regex(errs, &format!("{hp}.regex"), re) {
                    headers.push(HeaderMatch::Regex(name, re));
                }
            }
            (None, None, Some(p)) => headers.push(HeaderMatch::Present(name, p)),
            _ => errs.push(hp, "set exactly one of exact, regex and present"),
        }
    }

    (errs.out.len() == before).then_some(RouteMatch { hosts, path: path_match, methods, headers })
}
