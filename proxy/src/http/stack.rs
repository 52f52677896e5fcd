//! One HTTP request's life through the proxy. `handle` selects the route, starts the
//! request's record, runs the stage chain and renders the record; `chain` is the request path
//! itself, top to bottom, one line per stage (the order is the design's "Why this order").
//!
//! Every stage is entered through one function that answers a `Refusal` or what the stage
//! holds (a breaker permit, a bulkhead slot, a budget withdrawal): a guard that gives it back
//! when dropped. A request cancelled at any `.await` below — the client left, a timeout fired —
//! drops its guards, and nothing stays taken.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::compile::DEFAULT_OUTLIER;
use bulwark_policy::stages::default_retries;
use bulwark_policy::{Direction, RequestInfo, Route, Timeouts, UpstreamProtocol};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::attempt::Attempt;
use super::body::{Bounds, ProxyBody};
use super::{fallback, headers, respond, upgrade};
use crate::downstream::Downstream;
use crate::reason::Reason;
use crate::shared::Shared;
use crate::stage::fault::{Decision, FaultState};
use crate::stage::registry::ClusterState;
use crate::stage::registry::RouteState;
use crate::stage::retry::replay::UpstreamBody;
use crate::stage::retry::{outcome, Failed, Retries, Tee};
use crate::stage::{adaptive, breaker, bulkhead, fault, ratelimit, retry, timeout, Refusal};
use crate::telemetry::metrics::RouteLabels;
use crate::telemetry::record::Record;
use crate::upstream::balance::Cluster;
use crate::upstream::h2_watch::StreamSlot;
use crate::upstream::pool::Limits;

pub async fn handle(
    shared: Arc<Shared>,
    downstream: Arc<Downstream>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let grpc = respond::is_grpc(req.headers());
    let version = req.version();
    headers::ensure_request_id(req.headers_mut());
    if let (Direction::Outbound, Some(id)) = (downstream.direction, &shared.identity) {
        // Replaces whatever the app wrote: an app cannot pass for another workload through
        // its own proxy.
        req.headers_mut().insert(bulwark_policy::faults::CLIENT_ID_HEADER, id.clone());
    }
    let host = match headers::settle_authority(&mut req) {
        Ok(host) => host,
        Err(why) => return Ok(bad_request(&shared, &downstream, req, why, grpc)),
    };
    let selected = Selected::of(&shared, &downstream, &req, host.as_deref());
    let mut rec = Record::start(&shared, selected.labels(&downstream), &mut req, host.as_deref(), downstream.client);
    if let Some(p) = selected.route.as_ref().and_then(|r| r.priority.as_ref()) {
        if let Some(counter) = selected.state.as_ref().and_then(|s| s.class_requests.get(selected.class)) {
            counter.inc();
        }
        rec.class = Some(p.name(selected.class));
    }
    let started = Instant::now();
    let mut resend = None;
    let resp = match chain(&shared, &downstream, &selected, req, grpc, &mut rec, &mut resend).await {
        Ok(resp) => resp,
        Err(refusal) => {
            rec.reason = Some(refusal.reason);
            shared.metrics.stages.class_refused(&rec, refusal.reason);
            // An injected abort is the experiment's answer: never covered by a fallback.
            let fallback = selected
                .route
                .as_ref()
                .and_then(|r| r.fallback.as_deref())
                .filter(|f| refusal.abort.is_none() && f.covers(refusal.reason.as_str()));
            let answer = match fallback {
                Some(f) => {
                    let elsewhere = match (selected.state.as_ref().and_then(|s| s.fallback.as_ref()), resend) {
                        (Some(target), Some(req)) => {
                            let left = selected.timeouts.request.and_then(|t| t.checked_sub(started.elapsed()));
                            let idle = selected.timeouts.idle;
                            fallback::send(&shared, &downstream, target, req, left, grpc, idle, &mut rec).await
                        }
                        _ => None,
                    };
                    elsewhere.or_else(|| respond::fallback(f, grpc)).map(|mut resp| {
                        respond::mark_fallback(&mut resp, refusal.reason);
                        shared.metrics.stages.fallback(&mut rec, refusal.reason);
                        resp
                    })
                }
                None => None,
            };
            answer.unwrap_or_else(|| respond::refusal(refusal, grpc))
        }
    };
    let mut resp = rec.finish(&shared, resp);
    if shared.store.is_draining() {
        // This client's next request goes to a new connection, and so elsewhere.
        respond::close_after(&mut resp, version);
    }
    Ok(resp)
}

/// A request that must not be forwarded: answered 400 on no route, and its connection closed
/// (what follows it on the wire cannot be trusted either).
fn bad_request(
    shared: &Arc<Shared>,
    down: &Downstream,
    mut req: Request<Incoming>,
    why: &str,
    grpc: bool,
) -> Response<ProxyBody> {
    tracing::debug!(client = %down.client, why, "bad request refused");
    let labels = RouteLabels {
        direction: down.direction.as_str(),
        listener: down.label.clone(),
        policy: "".into(),
        route: "".into(),
    };
    let mut rec = Record::start(shared, labels, &mut req, None, down.client);
    rec.reason = Some(Reason::BadRequest);
    let mut resp = rec.finish(shared, respond::refuse(Reason::BadRequest, grpc));
    respond::close_after(&mut resp, req.version());
    resp
}

/// What the admitting stages hold for a request until its response headers.
struct Admitted {
    faults: Decision,
    cluster: Option<Arc<ClusterState>>,
    trial: Option<breaker::Permit>,
    _slot: Option<bulkhead::Slot>,
    within: Option<adaptive::Admitted>,
}

/// The request path, in the order the stages run. A refused request that could still be sent
/// elsewhere is left in `resend` (for a fallback upstream): whole when it was refused before
/// any try, else when its body was never sent or was kept whole.
async fn chain(
    shared: &Shared,
    down: &Downstream,
    sel: &Selected,
    mut req: Request<Incoming>,
    grpc: bool,
    rec: &mut Record,
    resend: &mut Option<Request<UpstreamBody>>,
) -> Result<Response<ProxyBody>, Refusal> {
    let wants_resend = sel.state.as_ref().is_some_and(|s| s.fallback.is_some());
    let admitted = match admit(shared, down, sel, req.headers(), rec).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if wants_resend {
                let (parts, body) = req.into_parts();
                *resend = Some(Request::from_parts(parts, UpstreamBody::tee(body, 0).0));
            }
            return Err(refusal);
        }
    };
    let state = sel.state.as_deref();
    let Admitted { faults, cluster, trial, _slot, within } = admitted;
    // Past every refusal: hop-by-hop headers go, an upgrade is noted.
    let tunnel = headers::for_upstream(&mut req).then(|| hyper::upgrade::on(&mut req));
    // The overall timeout bounds the whole retry loop, backoff included...
    let limit = timeout::request_limit(&sel.timeouts, req.headers());
    let retries = Retries {
        // An upgrade is one exchange; it is never replayed. A route without retries still
        // retries what never reached an upstream (`retries: {attempts: 0}` turns that off).
        policy: Some(sel.route.as_ref().and_then(|r| r.retries.as_ref()).unwrap_or(default_retries()))
            .filter(|p| tunnel.is_none() && p.attempts > 0),
        budget: cluster.as_ref().and_then(|c| c.budget.as_ref()),
        metrics: state.map(|s| &s.retry_metrics),
        timeouts: &sel.timeouts,
    };
    // ...whose every try picks an endpoint and a connection under the per-try timeout.
    let attempt = sel.attempt(shared, down, tunnel.is_some(), grpc);
    let mut tee = Tee::of(&retries, req);
    let started = Instant::now();
    let result = match timeout::overall(limit, retry::run(&retries, &mut tee, &attempt, rec)).await {
        Ok(result) => result,
        Err(elapsed) => {
            rec.end_try(elapsed.outcome);
            Err(Failed::from(elapsed))
        }
    };
    // The breaker learns how the whole request went, adaptive concurrency how long it took.
    let (how, now) = (outcome(&result), Instant::now());
    if let Some(trial) = trial {
        trial.record(how, started.elapsed(), now);
    }
    if let (Some(a), Some(within)) = (state.and_then(|s| s.adaptive.as_ref()), &within) {
        a.done(within, how, now);
    }
    let resp = result.map_err(|f| {
        if wants_resend && tunnel.is_none() {
            *resend = f.unsent.or_else(|| tee.kept.replay()).map(|body| retry::rebuild(&tee.parts, body));
        }
        Refusal::from(f.reason)
    })?;
    // A gRPC deadline bounds the whole call, not only until response headers.
    let deadline = limit.filter(|_| attempt.grpc).map(|l| started + l);
    // What the upstream answered goes back as the faults drawn above shape it.
    Ok(pass_back(shared, resp, tunnel, faults, deadline, sel).await)
}

/// The admitting stages, in order; each refuses before anything downstream of it is spent.
async fn admit(
    shared: &Shared,
    down: &Downstream,
    sel: &Selected,
    headers: &http::HeaderMap,
    rec: &mut Record,
) -> Result<Admitted, Refusal> {
    let state = sel.state.as_deref();
    // A guarding stage in dry-run counts what it would refuse and lets the request pass.
    let guarded = |stage: &'static str, dry_run: bool, refusal: Refusal, rec: &mut Record| {
        if dry_run {
            shared.metrics.stages.would_refuse(rec, stage, refusal.reason);
            Ok(())
        } else {
            Err(refusal)
        }
    };
    // A priority in dry-run lets through what its class's reserve would refuse, and counts it.
    let shed = |would: bool, reason: Reason, rec: &mut Record| {
        if would {
            shared.metrics.stages.would_refuse(rec, "priority", reason);
        }
    };
    let class = sel.class;
    // A rate-limited request costs nothing downstream: no fault draw, no trial, no slot.
    let limiter = state.and_then(|s| s.rate_limit.as_ref());
    match ratelimit::admit(limiter, headers, down.client.ip(), class) {
        Ok(would) => shed(would, Reason::RateLimited, rec),
        Err(r) => guarded("rate-limit", limiter.is_some_and(|l| l.dry_run()), r, rec)?,
    }
    // An injected abort answers before any stage state is taken...
    let faults = fault::draw(sel.fault.as_deref(), headers, down.client.ip(), rec)?;
    // ...and an injected delay holds the request before it takes a breaker trial or a slot.
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    // An open breaker fails fast, before a bulkhead slot is taken (one breaker per cluster).
    let cluster = state.map(|s| s.cluster(&down.cluster));
    let breaker = cluster.as_ref().and_then(|c| c.breaker.as_ref());
    let trial = match breaker::admit(breaker, rec) {
        Ok(trial) => trial,
        Err(r) => guarded("breaker", breaker.is_some_and(|b| b.dry_run()), r, rec).map(|()| None)?,
    };
    // The bulkhead bounds what is in flight upstream, retries included, until response headers.
    let bulkhead = state.and_then(|s| s.bulkhead.as_ref());
    let slot = match bulkhead::enter(bulkhead, class, rec).await {
        Ok(slot) => {
            shed(slot.as_ref().is_some_and(|s| s.would_shed()), Reason::BulkheadFull, rec);
            slot
        }
        Err(r) => guarded("bulkhead", bulkhead.is_some_and(|b| b.dry_run()), r, rec).map(|()| None)?,
    };
    // Within it, the limit adaptive concurrency measures; it learns from every admitted request.
    let adaptive = state.and_then(|s| s.adaptive.as_ref());
    let within = match adaptive::enter(adaptive, class).await {
        Ok(within) => {
            shed(within.as_ref().is_some_and(|a| a.would_shed), Reason::ConcurrencyLimited, rec);
            within
        }
        Err(r) => {
            guarded("adaptive", adaptive.is_some_and(|a| a.dry_run()), r, rec)?;
            adaptive.map(|a| a.unlimited())
        }
    };
    Ok(Admitted { faults, cluster, trial, _slot: slot, within })
}

/// The upstream's answer, downstream: hop-by-hop headers off, an accepted upgrade becomes a
/// tunnel, an injected response delay holds the headers and a bandwidth fault slows the body,
/// which the route's idle timeout (and a gRPC call's `deadline`) bounds.
async fn pass_back(
    shared: &Shared,
    mut resp: Response<Incoming>,
    tunnel: Option<hyper::upgrade::OnUpgrade>,
    faults: Decision,
    deadline: Option<Instant>,
    sel: &Selected,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && tunnel.is_some());
    if let (true, Some(down)) = (switching, tunnel) {
        let up = hyper::upgrade::on(&mut resp);
        upgrade::tunnel(shared, down, up, sel.timeouts.idle.unwrap_or(sel.tunnel_idle));
    }
    if let Some(delay) = faults.response_delay {
        tokio::time::sleep(delay).await;
    }
    let bounds = Bounds { idle: sel.timeouts.idle, deadline, stream: resp.extensions_mut().remove::<StreamSlot>() };
    resp.map(|b| match faults.bandwidth {
        Some(rate) => ProxyBody::upstream(b, bounds).throttled(rate),
        None => ProxyBody::upstream(b, bounds),
    })
}

/// What one request takes from the view in force, read from one load of it: the route, its
/// stage state, the upstream settings. Nothing here is a guard of the view.
struct Selected {
    route: Option<Arc<Route>>,
    state: Option<Arc<RouteState>>,
    fault: Option<Arc<FaultState>>,
    /// The request's priority class (0 when its route has none).
    class: usize,
    timeouts: Timeouts,
    cluster: Arc<Cluster>,
    limits: Limits,
    connect_timeout: Duration,
    tunnel_idle: Duration,
    protocol: UpstreamProtocol,
}

impl Selected {
    fn of(shared: &Shared, down: &Downstream, req: &Request<Incoming>, host: Option<&str>) -> Selected {
        let installed = shared.store.installed();
        let defaults = &installed.config.upstream;
        let policy = installed.snapshot.select(&down.destination(host));
        let upstream = policy.map(|p| &p.upstream);
        let limits = Limits {
            max_connections: upstream.and_then(|u| u.max_connections),
            idle_timeout: upstream.and_then(|u| u.idle_timeout).unwrap_or(defaults.pool_idle_timeout.get()),
            max_lifetime: upstream.and_then(|u| u.max_lifetime),
        };
        let cluster = shared.clusters.get(
            &down.cluster,
            upstream.map(|u| u.load_balancer).unwrap_or_default(),
            // Without a policy, the defaults a policy would compile to.
            upstream.map_or(Some(&DEFAULT_OUTLIER), |u| u.outlier.as_ref()),
        );
        let info = RequestInfo { method: req.method(), path: req.uri().path(), host, headers: req.headers() };
        let route =
            policy.map(|p| p.routes.iter().find(|r| r.matcher.matches(&info)).unwrap_or(&p.default_route).clone());
        let class = route.as_ref().and_then(|r| r.priority.as_ref()).map_or(0, |p| p.classify(&info));
        Selected {
            state: route.as_ref().and_then(|r| installed.states.get(r.index).cloned().flatten()),
            fault: route.as_ref().and_then(|r| installed.faults.get(r.index).cloned().flatten()),
            timeouts: route.as_ref().map(|r| r.timeouts).unwrap_or_default(),
            class,
            route,
            cluster,
            limits,
            connect_timeout: upstream.and_then(|u| u.connect_timeout).unwrap_or(defaults.connect_timeout.get()),
            tunnel_idle: defaults.tcp_idle_timeout.get(),
            protocol: upstream.and_then(|u| u.protocol).unwrap_or_else(|| down.upstream_protocol()),
        }
    }

    fn labels(&self, down: &Downstream) -> RouteLabels {
        let (policy, route) = match &self.route {
            Some(r) => (r.policy.clone(), r.name.clone()),
            None => (Arc::from(""), Arc::from("")),
        };
        RouteLabels { direction: down.direction.as_str(), listener: down.label.clone(), policy, route }
    }

    fn attempt<'a>(&self, shared: &'a Shared, down: &'a Downstream, upgrade: bool, grpc: bool) -> Attempt<'a> {
        Attempt {
            shared,
            downstream: down,
            cluster: self.cluster.clone(),
            limits: self.limits,
            connect_timeout: self.connect_timeout,
            protocol: self.protocol,
            grpc,
            upgrade,
        }
    }
}

#[cfg(test)]
mod tests;
