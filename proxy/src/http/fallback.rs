//! A route's fallback upstream: another target (a cache, a read replica, a degraded service)
//! a refused request is sent to once, within what remains of its request timeout, before the
//! route's static fallback answers. Only a request that can be sent whole goes: one refused
//! before any try (its body untouched), or one whose body was never sent or was kept whole
//! (as retries keep it). Its answer goes back marked as a fallback; a 5xx or no answer leaves
//! the refusal to the static fallback, else to the proxy's own answer.

use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::compile::DEFAULT_OUTLIER;
use bulwark_policy::fallback::FallbackUpstream;
use bulwark_policy::{Direction, LoadBalancer, UpstreamProtocol};
use http::{Request, Response};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::attempt::Attempt;
use super::body::{Bounds, ProxyBody};
use super::headers;
use crate::control::config::ListenerProtocol;
use crate::downstream::{Downstream, ExplicitUpstream, Upstream};
use crate::shared::Shared;
use crate::stage::retry::replay::UpstreamBody;
use crate::stage::retry::SendTry;
use crate::telemetry::record::Record;
use crate::upstream::pool::Limits;
use crate::upstream::resolve::Resolver;

/// A host name's addresses are looked up again when older than this, at the next use.
const REFRESH: Duration = Duration::from_secs(30);

/// A route's fallback upstream, kept with the route's stage state.
pub struct FallbackTarget {
    upstream: Arc<ExplicitUpstream>,
    timeout: Duration,
    resolved: Mutex<Option<Instant>>,
}

impl FallbackTarget {
    /// `name` labels its cluster (`fallback/POLICY/ROUTE`).
    pub fn new(name: String, f: &FallbackUpstream) -> FallbackTarget {
        FallbackTarget {
            upstream: Arc::new(ExplicitUpstream {
                listener: name.into(),
                resolver: Arc::new(Resolver::new(vec![f.target.clone()])),
                protocol: ListenerProtocol::Http,
                upstream_protocol: UpstreamProtocol::Auto,
                // Read by listeners only; requests keep their own connection's direction.
                direction: Direction::Outbound,
            }),
            timeout: f.timeout,
            resolved: Mutex::new(None),
        }
    }

    /// Looks a host name up again when its addresses are older than `REFRESH`; a failed
    /// lookup keeps the last good addresses.
    async fn refresh(&self) {
        let now = Instant::now();
        let stale = self.resolved.lock().is_none_or(|at| now.saturating_duration_since(at) >= REFRESH);
        if stale && self.upstream.resolver.targets.iter().any(|t| t.ip().is_none()) {
            *self.resolved.lock() = Some(now);
            let _ = self.upstream.resolver.refresh().await;
        }
    }
}

/// Sends `req` once to the fallback upstream, bounded by `left` of the request timeout (or,
/// when that leaves nothing or there is none, by the fallback's own `timeout`). `None`: no
/// answer below 500 came back.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    shared: &Shared,
    down: &Downstream,
    target: &FallbackTarget,
    mut req: Request<UpstreamBody>,
    left: Option<Duration>,
    grpc: bool,
    idle: Option<Duration>,
    rec: &mut Record,
) -> Option<Response<ProxyBody>> {
    let bound = left.filter(|d| !d.is_zero()).unwrap_or(target.timeout);
    target.refresh().await;
    let elsewhere =
        Downstream::new(down.direction, down.label.clone(), Upstream::Explicit(target.upstream.clone()), down.client);
    // Read out of the view in force, which is not held across an await.
    let (pool_idle, connect_timeout) = {
        let installed = shared.store.installed();
        let u = &installed.config.upstream;
        (u.pool_idle_timeout.get(), u.connect_timeout.get())
    };
    headers::for_upstream(&mut req);
    let attempt = Attempt {
        shared,
        downstream: &elsewhere,
        cluster: shared.clusters.get(&elsewhere.cluster, LoadBalancer::default(), Some(&DEFAULT_OUTLIER)),
        limits: Limits { max_connections: None, idle_timeout: pool_idle, max_lifetime: None },
        connect_timeout: connect_timeout.min(bound),
        protocol: UpstreamProtocol::Auto,
        grpc,
        upgrade: false,
    };
    let sent = tokio::time::timeout(bound, attempt.send(req, rec)).await;
    rec.end_try(match &sent {
        Ok(result) => crate::stage::retry::outcome(result),
        Err(_) => crate::upstream::Outcome::Timeout,
    });
    let resp = match sent {
        Ok(Ok(resp)) if !resp.status().is_server_error() => resp,
        Ok(Ok(resp)) => {
            tracing::debug!(status = %resp.status(), "the fallback upstream failed too");
            return None;
        }
        Ok(Err(f)) => {
            tracing::debug!(reason = %f.reason, "the fallback upstream could not be reached");
            return None;
        }
        Err(_) => {
            tracing::debug!(?bound, "the fallback upstream did not answer in time");
            return None;
        }
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let bounds = Bounds { idle, deadline: None, stream: parts.extensions.remove() };
    Some(Response::from_parts(parts, ProxyBody::upstream(body, bounds)))
}
