//! One HTTP request's life through the proxy, as named phases in the order they run:
//!
//! 1. `select_route` — load the installed snapshot once, pick the policy for the destination,
//!    the most specific route and that route's stage state; no guard is held across an await.
//! 2. rate limit — the route's (and the client's) token bucket; refused: 429 `rate-limited`.
//!    Then faults (see `stage::fault`): an injected abort answers here; an injected delay
//!    holds the request here, before it takes a breaker trial or a bulkhead slot.
//! 3. circuit breaker — per (route, upstream target); open: 503 `circuit-open`, at once.
//! 4. bulkhead — a slot of the route, held for the whole retry loop; full: 503 `bulkhead-full`.
//! 5. overall timeout — `request` (or a shorter `grpc-timeout`) bounds everything below.
//! 6. `Tries::run` — per try: an endpoint (`upstream::balance`), a pooled or new connection,
//!    bounded by `perTry` and `idle`; a failed try is retried as `retries` allows
//!    (`stage::retry`).
//! 7. respond — an injected response delay or bandwidth limit applies; the upstream response
//!    passes through but for hop-by-hop headers; a refusal becomes the proxy's own answer
//!    (`respond.rs`); the breaker and metrics record the result.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_policy::faults::AbortWith;
use bulwark_policy::{RequestInfo, RetryPolicy, Route, Timeouts, UpstreamPolicy};
use http::header::{HeaderValue, HOST, RETRY_AFTER};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::replay::{Kept, UpstreamBody};
use super::{headers, respond};
use crate::access_log;
use crate::metrics::RouteLabels;
use crate::proxy::Proxy;
use crate::reason::Reason;
use crate::stage::fault::{Decision, FaultState};
use crate::stage::registry::RouteState;
use crate::stage::{ratelimit, retry, Outcome};
use crate::target::ConnTarget;
use crate::upstream::balance::Cluster;
use crate::upstream::pool::{Conn, Limits, Proto};

/// Why the proxy answers itself, and what it tells the client to wait.
struct Refusal {
    reason: Reason,
    retry_after: Option<Duration>,
    /// The status an injected abort answers with.
    abort: Option<AbortWith>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Refusal {
        Refusal { reason, retry_after: None, abort: None }
    }
}

/// A failed try: how it failed, and the body if it was never sent.
struct Failed {
    outcome: Outcome,
    reason: Reason,
    unsent: Option<UpstreamBody>,
}

struct Selected {
    route: Option<Arc<Route>>,
    state: Option<Arc<RouteState>>,
    fault: Option<Arc<FaultState>>,
    connect_timeout: Duration,
    upstream: UpstreamPolicy,
}

pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnTarget>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = respond::is_grpc(req.headers());
    headers::ensure_request_id(req.headers_mut());
    if let (bulwark_policy::Direction::Outbound, Some(id)) = (conn.direction, &proxy.identity) {
        // Replaces whatever the app wrote: an app cannot pass for another workload through
        // its own proxy.
        req.headers_mut().insert(bulwark_policy::faults::CLIENT_ID_HEADER, id.clone());
    }

    let host = request_host(&req);
    let selected = select_route(&proxy, &conn, &req, host.as_deref());
    let labels = RouteLabels {
        direction: conn.direction.as_str(),
        listener: conn.label.clone(),
        policy: selected.route.as_ref().map_or_else(|| Arc::from(""), |r| r.policy.clone()),
        route: selected.route.as_ref().map_or_else(|| Arc::from(""), |r| r.name.clone()),
    };
    let logged = proxy.access_log.as_ref().is_some_and(|l| l.sampled()).then(|| access_log::Entry {
        time: access_log::now(),
        request_id: req
            .headers()
            .get(headers::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        trace_id: access_log::trace_id(req.headers()),
        direction: conn.direction.as_str(),
        listener: labels.listener.to_string(),
        policy: labels.policy.to_string(),
        route: labels.route.to_string(),
        method: req.method().to_string(),
        authority: host.clone().unwrap_or_default(),
        path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        ..Default::default()
    });
    let span = proxy.tracing.as_ref().map(|t| {
        let describe = || {
            let name =
                format!("{} {}", req.method(), if labels.route.is_empty() { "(no route)" } else { &labels.route });
            let attributes = vec![
                KeyValue::new("http.request.method", req.method().to_string()),
                KeyValue::new("url.path", req.uri().path().to_string()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("server.address", host.clone().unwrap_or_default()),
                KeyValue::new("network.protocol.version", if req.version() == Version::HTTP_2 { "2" } else { "1.1" }),
                KeyValue::new("client.address", conn.client.ip().to_string()),
                KeyValue::new("bulwark.listener", labels.listener.to_string()),
                KeyValue::new("bulwark.policy", labels.policy.to_string()),
                KeyValue::new("bulwark.route", labels.route.to_string()),
            ];
            (name, attributes)
        };
        let cx = t.start_span(req.headers(), conn.direction == bulwark_policy::Direction::Inbound, describe);
        t.inject(&cx, req.headers_mut());
        cx
    });
    let mut exchange = Exchange::default();
    let (resp, reason) = match run_stages(&proxy, &conn, &selected, req, &mut exchange).await {
        Ok(resp) => (resp, None),
        Err(refusal) => {
            let mut resp = match refusal.abort {
                Some(with) => respond::abort(with, grpc),
                None => respond::refuse(refusal.reason, grpc),
            };
            if let Some(after) = refusal.retry_after {
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(ratelimit::retry_after_secs(after)));
            }
            (resp, Some(refusal.reason))
        }
    };
    proxy.metrics.request(&labels, resp.status().as_u16(), reason, start.elapsed());
    if let Some(cx) = span.filter(crate::trace::recording) {
        let mut attributes = vec![KeyValue::new("bulwark.retries", i64::from(exchange.retries))];
        attributes.extend(reason.map(|r| KeyValue::new("bulwark.reason", r.as_str())));
        attributes.extend(exchange.fault.clone().map(|f| KeyValue::new("bulwark.fault", f)));
        attributes.extend(exchange.breaker.map(|b| KeyValue::new("bulwark.breaker.state", b)));
        attributes.extend(
            exchange.bulkhead_wait.map(|w| KeyValue::new("bulwark.bulkhead.wait_ms", w.as_secs_f64() * 1000.0)),
        );
        attributes.extend(exchange.upstream.map(|u| KeyValue::new("network.peer.address", u.to_string())));
        let status = resp.status().as_u16();
        let tries = exchange.tries.iter().enumerate().map(|(i, (endpoint, outcome))| {
            vec![
                KeyValue::new("bulwark.try", i as i64 + 1),
                KeyValue::new("network.peer.address", endpoint.to_string()),
                KeyValue::new("bulwark.outcome", outcome.clone()),
            ]
        });
        crate::trace::finish(cx, status, attributes, tries.collect(), status >= 500 || reason.is_some());
    }
    let Some(mut entry) = logged else { return Ok(resp) };
    entry.status = resp.status().as_u16();
    entry.reason = reason.map(Reason::as_str);
    entry.upstream = exchange.upstream.map(|a| a.to_string());
    entry.retries = exchange.retries;
    let log = proxy.clone();
    Ok(resp.map(move |body| {
        body.counted(Box::new(move |bytes, complete| {
            entry.bytes = bytes;
            entry.incomplete = !complete;
            entry.duration_ms = start.elapsed().as_secs_f64() * 1000.0;
            if let Some(l) = &log.access_log {
                l.write(&entry);
            }
        }))
    }))
}

/// What the access log and the trace want to know about how an exchange went.
#[derive(Default)]
struct Exchange {
    upstream: Option<SocketAddr>,
    retries: u32,
    /// Injected fault kinds, comma separated.
    fault: Option<String>,
    breaker: Option<&'static str>,
    bulkhead_wait: Option<Duration>,
    /// Every try: its endpoint and how it ended.
    tries: Vec<(SocketAddr, String)>,
}

fn describe(o: Outcome) -> String {
    match o {
        Outcome::Response { status, grpc: Some(g) } => format!("{status} grpc-status {g}"),
        Outcome::Response { status, grpc: None } => status.to_string(),
        Outcome::ConnectFailure => "connect-failure".into(),
        Outcome::Reset => "reset".into(),
        Outcome::PerTryTimeout => "per-try-timeout".into(),
        Outcome::Timeout => "timeout".into(),
    }
}

/// Phase 1.
fn select_route(proxy: &Proxy, conn: &ConnTarget, req: &Request<Incoming>, host: Option<&str>) -> Selected {
    let installed = proxy.store.installed();
    let default_connect = proxy.store.config().upstream.connect_timeout.get();
    let Some(policy) = installed.snapshot.select(&conn.destination(host)) else {
        return Selected {
            route: None,
            state: None,
            fault: None,
            connect_timeout: default_connect,
            upstream: UpstreamPolicy::default(),
        };
    };
    let info = RequestInfo { method: req.method(), path: req.uri().path(), host, headers: req.headers() };
    let route = policy.routes.iter().find(|r| r.matcher.matches(&info)).unwrap_or(&policy.default_route);
    Selected {
        state: installed.states.get(route.index).cloned(),
        fault: installed.faults.get(route.index).cloned().flatten(),
        route: Some(route.clone()),
        connect_timeout: policy.upstream.connect_timeout.unwrap_or(default_connect),
        upstream: policy.upstream.clone(),
    }
}

/// Authority host without port, lower case: from the URI (HTTP/2, absolute form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = req.headers().get(HOST)?.to_str().ok()?;
            h.parse::<http::uri::Authority>().ok()?.host().to_string()
        }
    };
    Some(raw.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
}

/// Phases 2 to 7.
async fn run_stages(
    proxy: &Proxy,
    conn: &ConnTarget,
    sel: &Selected,
    mut req: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, Refusal> {
    let timeouts = sel.route.as_ref().map(|r| r.timeouts).unwrap_or_default();
    let retries = sel.route.as_ref().and_then(|r| r.retries.as_ref());
    let state = sel.state.as_deref();

    if let Some(s) = state {
        if let Some(rl) = &s.rate_limit {
            if let Err(limited) = rl.check(req.headers(), conn.client.ip(), Instant::now()) {
                let counter =
                    if limited.per_client { &s.metrics.rate_limited_client } else { &s.metrics.rate_limited_route };
                counter.inc();
                return Err(Refusal {
                    reason: Reason::RateLimited,
                    retry_after: Some(limited.retry_after),
                    abort: None,
                });
            }
        }
    }

    let faults = match &sel.fault {
        Some(f) if f.active(Instant::now()) => {
            let d = f.decide(req.headers(), conn.client.ip(), || fastrand::u64(..));
            let m = &f.metrics;
            // An aborted request is only an abort: it is never delayed or slowed.
            if d.abort.is_some() {
                m.abort.inc();
            } else {
                for (hit, counter) in [
                    (d.delay.is_some(), &m.delay),
                    (d.response_delay.is_some(), &m.response_delay),
                    (d.bandwidth.is_some(), &m.bandwidth),
                ] {
                    if hit {
                        counter.inc();
                    }
                }
            }
            d
        }
        _ => Decision::default(),
    };
    let kinds: Vec<&str> = [
        (faults.abort.is_some(), "abort"),
        (faults.abort.is_none() && faults.delay.is_some(), "delay"),
        (faults.abort.is_none() && faults.response_delay.is_some(), "response-delay"),
        (faults.abort.is_none() && faults.bandwidth.is_some(), "bandwidth"),
    ]
    .into_iter()
    .filter_map(|(hit, kind)| hit.then_some(kind))
    .collect();
    if !kinds.is_empty() {
        exchange.fault = Some(kinds.join(","));
    }
    if let Some(with) = faults.abort {
        return Err(Refusal { reason: Reason::FaultAbort, retry_after: None, abort: Some(with) });
    }
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }

    let target = state.map(|s| s.target(&conn.target_key));
    let permit = match target.as_ref().and_then(|t| t.breaker.as_ref()) {
        Some(b) => match b.admit(Instant::now()) {
            Ok(p) => {
                exchange.breaker = Some(if p.is_trial() { "half-open" } else { "closed" });
                Some(p)
            }
            Err(_) => {
                exchange.breaker = Some("open");
                return Err(Reason::CircuitOpen.into());
            }
        },
        None => None,
    };

    let _slot = match state.and_then(|s| s.bulkhead.as_ref().map(|b| (s, b))) {
        Some((s, b)) => {
            let waited = Instant::now();
            let acquired = b.acquire().await;
            exchange.bulkhead_wait = Some(waited.elapsed());
            match acquired {
                Ok(slot) => Some(InFlight::new(slot, &s.metrics.bulkhead_in_flight)),
                Err(_) => {
                    s.metrics.bulkhead_rejected.inc();
                    return Err(Reason::BulkheadFull.into());
                }
            }
        }
        None => None,
    };
    if let (Some(t), Some(_)) = (&target, retries) {
        if let Some(b) = &t.budget {
            b.deposit(Instant::now());
        }
    }

    let proto = if req.version() == Version::HTTP_2 { Proto::Http2 } else { Proto::Http1 };
    let upgrade = headers::strip_hop_by_hop(req.headers_mut(), proto == Proto::Http1);
    if proto == Proto::Http1 {
        // Upstream keep-alive needs HTTP/1.1, which needs a Host.
        req.headers_mut().entry(HOST).or_insert_with(|| {
            HeaderValue::from_str(&conn.authority()).unwrap_or(HeaderValue::from_static("localhost"))
        });
        *req.version_mut() = Version::HTTP_11;
    }
    let downstream_upgrade: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));
    let request_limit = match (timeouts.request, headers::grpc_timeout(req.headers())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    let started = Instant::now();
    let defaults = &proxy.store.config().upstream;
    let limits = Limits {
        max_connections: sel.upstream.max_connections,
        idle_timeout: sel.upstream.idle_timeout.unwrap_or(defaults.pool_idle_timeout.get()),
        max_lifetime: sel.upstream.max_lifetime,
    };
    let cluster = proxy.clusters.get(&conn.target_key, sel.upstream.load_balancer, sel.upstream.outlier.as_ref());
    let tries = Tries {
        proxy,
        conn,
        state,
        retries: if upgrade { None } else { retries },
        timeouts,
        connect_timeout: sel.connect_timeout,
        limits,
        cluster,
        tried: Mutex::new(Vec::new()),
        outcomes: Mutex::new(Vec::new()),
        proto,
        upgrade,
    };
    let result = match request_limit {
        Some(limit) => tokio::time::timeout(limit, tries.run(req)).await.unwrap_or(Err(Failed {
            outcome: Outcome::Timeout,
            reason: Reason::Timeout,
            unsent: None,
        })),
        None => tries.run(req).await,
    };
    {
        let tried = tries.tried.lock().expect("tried lock");
        exchange.upstream = tried.last().copied();
        exchange.retries = tried.len().saturating_sub(1) as u32;
        exchange.tries = std::mem::take(&mut *tries.outcomes.lock().expect("outcomes lock"));
    }
    let outcome = match &result {
        Ok(resp) => response_outcome(resp),
        Err(f) => f.outcome,
    };
    if let Some(p) = permit {
        p.record(outcome, started.elapsed(), Instant::now());
    }
    let mut resp = result.map_err(|f| Refusal::from(f.reason))?;

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(d), &mut TokioIo::new(u)).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    if let Some(delay) = faults.response_delay {
        tokio::time::sleep(delay).await;
    }
    let body = |b| match faults.bandwidth {
        Some(rate) => ProxyBody::upstream(b, timeouts.idle).throttled(rate),
        None => ProxyBody::upstream(b, timeouts.idle),
    };
    Ok(resp.map(body))
}

/// A held bulkhead slot, counted in the in-flight gauge while held.
struct InFlight {
    _slot: crate::stage::bulkhead::Slot,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl InFlight {
    fn new(slot: crate::stage::bulkhead::Slot, gauge: &prometheus_client::metrics::gauge::Gauge) -> InFlight {
        gauge.inc();
        InFlight { _slot: slot, gauge: gauge.clone() }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn response_outcome(resp: &Response<Incoming>) -> Outcome {
    let grpc = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    Outcome::Response { status: resp.status().as_u16(), grpc }
}

/// Phase 6: everything one request's tries share.
struct Tries<'a> {
    proxy: &'a Proxy,
    conn: &'a ConnTarget,
    state: Option<&'a RouteState>,
    retries: Option<&'a RetryPolicy>,
    timeouts: Timeouts,
    connect_timeout: Duration,
    limits: Limits,
    cluster: Arc<Cluster>,
    /// Endpoints this request already tried; a retry prefers another.
    tried: Mutex<Vec<SocketAddr>>,
    /// Each try's endpoint and outcome, for the trace.
    outcomes: Mutex<Vec<(SocketAddr, String)>>,
    proto: Proto,
    upgrade: bool,
}

impl Tries<'_> {
    async fn run(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Failed> {
        let (parts, body) = req.into_parts();
        let (mut body, kept): (Option<UpstreamBody>, Option<Kept>) = match self.retries {
            Some(r) => {
                let (b, k) = UpstreamBody::tee(body, r.max_buffered_bytes);
                (Some(b), Some(k))
            }
            None => (Some(UpstreamBody::Stream(body)), None),
        };
        let max_retries = self.retries.map_or(0, |r| r.attempts);
        let mut retry = 0;
        loop {
            let Some(this_body) = body.take().or_else(|| kept.as_ref().and_then(Kept::replay)) else {
                unreachable!("a retry is only decided when a body is available");
            };
            let mut req = Request::new(this_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();

            let result = self.one_try(req).await;
            let outcome = match &result {
                Ok(resp) => response_outcome(resp),
                Err(f) => f.outcome,
            };
            let Some(policy) = self.retries else {
                return result;
            };
            if retry >= max_retries || !retry::should_retry(policy, outcome) {
                return result;
            }
            let retry_after = result.as_ref().ok().and_then(|r| retry::retry_after(r.headers()));
            // The next try needs the body: the unsent one, or the whole kept copy.
            let (unsent, result) = match result {
                Err(Failed { unsent: Some(b), outcome, reason }) => {
                    (Some(b), Err(Failed { outcome, reason, unsent: None }))
                }
                r => (None, r),
            };
            if unsent.is_none() && kept.as_ref().and_then(Kept::replay).is_none() {
                return result;
            }
            let budget = self
                .state
                .and_then(|s| s.target(&self.conn.target_key).budget.as_ref().map(|b| b.withdraw(Instant::now())));
            if budget == Some(false) {
                if let Some(s) = self.state {
                    s.metrics.retry_budget_exhausted.inc();
                }
                return result.map_err(|f| Failed { reason: Reason::RetryBudgetExhausted, ..f });
            }
            tokio::time::sleep(retry::backoff::delay(policy, retry, retry_after, fastrand::f64())).await;
            if let Some(s) = self.state {
                s.metrics.retries.inc();
            }
            body = unsent;
            retry += 1;
        }
    }

    /// One try, bounded by `perTry` and `idle` (for the response headers).
    async fn one_try(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, Failed> {
        let t = self.timeouts;
        let bound =
            [(t.per_try, Outcome::PerTryTimeout, Reason::PerTryTimeout), (t.idle, Outcome::Timeout, Reason::Timeout)]
                .into_iter()
                .filter_map(|(d, o, r)| d.map(|d| (d, o, r)))
                .min_by_key(|(d, _, _)| *d);
        match bound {
            Some((limit, outcome, reason)) => tokio::time::timeout(limit, self.send(req))
                .await
                .unwrap_or(Err(Failed { outcome, reason, unsent: None })),
            None => self.send(req).await,
        }
    }

    /// Picks an endpoint and sends to it, telling outlier detection how it went.
    async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, Failed> {
        let conn = self.conn;
        let set = match conn.addrs().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(upstream = %conn.authority(), error = %e, "resolution failed");
                return Err(not_sent(req, Reason::UpstreamConnectFailure));
            }
        };
        let avoid = self.tried.lock().expect("tried lock").clone();
        let Some(endpoint) = self.cluster.pick(&set, &avoid, Instant::now()) else {
            return Err(not_sent(req, Reason::NoHealthyUpstream));
        };
        self.tried.lock().expect("tried lock").push(endpoint);
        let _in_flight = self.cluster.begin(endpoint);
        let result = self.send_to(endpoint, req).await;
        let outcome = match &result {
            Ok(resp) => response_outcome(resp),
            Err(f) => f.outcome,
        };
        self.cluster.report(endpoint, outcome, &set, Instant::now());
        self.outcomes.lock().expect("outcomes lock").push((endpoint, describe(outcome)));
        result
    }

    /// A pooled or new connection to `endpoint`, then the request; a request a stale pooled
    /// connection refused without sending goes once more on a fresh connection.
    async fn send_to(
        &self,
        endpoint: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let pool = &self.proxy.pool;
        for fresh in [false, true] {
            let got = if fresh {
                pool.fresh(endpoint, self.proto, self.limits, self.connect_timeout).await
            } else {
                pool.get(endpoint, self.proto, self.limits, self.connect_timeout).await
            };
            let (c, created) = match got {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "no upstream connection");
                    return Err(not_sent(req, Reason::UpstreamConnectFailure));
                }
            };
            let sent = match c {
                Conn::H1(mut s) => {
                    if s.ready().await.is_err() {
                        if fresh {
                            return Err(not_sent(req, Reason::UpstreamConnectFailure));
                        }
                        continue;
                    }
                    let r = s.try_send_request(req).await;
                    // An upgraded connection belongs to the tunnel; never pool it.
                    if r.is_ok() && !self.upgrade {
                        pool.checkin(endpoint, s, created, self.limits);
                    }
                    r
                }
                Conn::H2(mut s) => {
                    if s.ready().await.is_err() && fresh {
                        return Err(not_sent(req, Reason::UpstreamConnectFailure));
                    }
                    s.try_send_request(req).await
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        tracing::debug!(error = %e.error(), "pooled connection refused the request; retrying on a new one");
                        req = unsent;
                    }
                    unsent => {
                        tracing::debug!(error = %e.error(), "upstream failed before response headers");
                        return Err(Failed {
                            outcome: Outcome::Reset,
                            reason: Reason::UpstreamReset,
                            unsent: unsent.map(Request::into_body),
                        });
                    }
                },
            }
        }
        unreachable!("the fresh-connection pass always returns")
    }
}

/// A try that never reached the upstream: its body can go on the next try.
fn not_sent(req: Request<UpstreamBody>, reason: Reason) -> Failed {
    Failed { outcome: Outcome::ConnectFailure, reason, unsent: Some(req.into_body()) }
}
