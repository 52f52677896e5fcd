//! One HTTP request's life through the proxy, as named phases:
//!
//! 1. `select_route` — load the snapshot once, pick the policy for the destination and the
//!    most specific route; the snapshot guard is dropped before any await.
//! 2. `deadline` — the earliest of the request timeout (shortened by a smaller `grpc-timeout`),
//!    the per-try timeout and the idle timeout, with the reason each one answers.
//! 3. `attempt` — a pooled or new upstream connection; a request a stale pooled connection
//!    refused without sending is tried once more on a fresh connection.
//! 4. `respond` — the upstream response passes through unaltered but for hop-by-hop headers;
//!    a refusal becomes the proxy's own answer (`respond.rs`); metrics are recorded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::{RequestInfo, Route, Timeouts};
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::{headers, respond};
use crate::metrics::RouteLabels;
use crate::proxy::Proxy;
use crate::reason::Reason;
use crate::target::ConnTarget;
use crate::upstream::pool::{Conn, Proto};

pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnTarget>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = respond::is_grpc(req.headers());
    headers::ensure_request_id(req.headers_mut());

    let (route, connect_timeout) = select_route(&proxy, &conn, &req);
    let labels = RouteLabels {
        direction: conn.direction.as_str(),
        listener: conn.label.to_string(),
        policy: route
            .as_ref()
            .map(|r| r.policy.to_string())
            .unwrap_or_default(),
        route: route
            .as_ref()
            .map(|r| r.name.to_string())
            .unwrap_or_default(),
    };
    let timeouts = route.as_ref().map(|r| r.timeouts).unwrap_or_default();
    let (limit, limit_reason) = deadline(&timeouts, headers::grpc_timeout(req.headers()));

    let exchange = forward(&proxy, &conn, req, connect_timeout, timeouts.idle);
    let result = match limit {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or(Err(limit_reason)),
        None => exchange.await,
    };
    let (resp, reason) = match result {
        Ok(resp) => (resp, None),
        Err(reason) => (respond::refuse(reason, grpc), Some(reason)),
    };
    proxy
        .metrics
        .request(&labels, resp.status().as_u16(), reason, start.elapsed());
    Ok(resp)
}

/// Phase 1. Returns the route (None when no policy selects this traffic) and the connect
/// timeout in force.
fn select_route(
    proxy: &Proxy,
    conn: &ConnTarget,
    req: &Request<Incoming>,
) -> (Option<Arc<Route>>, Duration) {
    let host = request_host(req);
    let snapshot = proxy.store.snapshot();
    let default_connect = proxy.store.config().upstream.connect_timeout.get();
    let Some(policy) = snapshot.select(&conn.destination(host.as_deref())) else {
        return (None, default_connect);
    };
    let info = RequestInfo {
        method: req.method(),
        path: req.uri().path(),
        host: host.as_deref(),
        headers: req.headers(),
    };
    let route = policy
        .routes
        .iter()
        .find(|r| r.matcher.matches(&info))
        .unwrap_or(&policy.default_route);
    (
        Some(route.clone()),
        policy.upstream.connect_timeout.unwrap_or(default_connect),
    )
}

/// Authority host without port, lower case: from the URI (HTTP/2, absolute form) or `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = req.headers().get(HOST)?.to_str().ok()?;
            let h = h.parse::<http::uri::Authority>().ok()?;
            h.host().to_string()
        }
    };
    let raw = raw.trim_start_matches('[').trim_end_matches(']');
    Some(raw.to_ascii_lowercase())
}

/// Phase 2. The earliest bound on waiting for response headers and what it answers.
/// Without retries one attempt is the whole exchange, so per-try and request bounds coincide
/// in scope; the tighter one decides the reason.
fn deadline(t: &Timeouts, grpc_timeout: Option<Duration>) -> (Option<Duration>, Reason) {
    let request = match (t.request, grpc_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    [
        (request, Reason::Timeout),
        (t.per_try, Reason::PerTryTimeout),
        (t.idle, Reason::Timeout),
    ]
    .into_iter()
    .filter_map(|(d, r)| d.map(|d| (d, r)))
    .min_by_key(|(d, _)| *d)
    .map_or((None, Reason::Timeout), |(d, r)| (Some(d), r))
}

async fn forward(
    proxy: &Proxy,
    conn: &ConnTarget,
    mut req: Request<Incoming>,
    connect_timeout: Duration,
    idle: Option<Duration>,
) -> Result<Response<ProxyBody>, Reason> {
    let proto = if req.version() == Version::HTTP_2 {
        Proto::Http2
    } else {
        Proto::Http1
    };
    let upgrade = headers::strip_hop_by_hop(req.headers_mut(), proto == Proto::Http1);
    if proto == Proto::Http1 {
        // Upstream keep-alive needs HTTP/1.1, which needs a Host.
        req.headers_mut().entry(HOST).or_insert_with(|| {
            HeaderValue::from_str(&conn.authority())
                .unwrap_or(HeaderValue::from_static("localhost"))
        });
        *req.version_mut() = Version::HTTP_11;
    }
    let downstream_upgrade: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));

    let mut resp = attempt(proxy, conn, proto, req, connect_timeout, upgrade).await?;

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(d), &mut TokioIo::new(u))
                            .await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    Ok(resp.map(|b| ProxyBody::upstream(b, idle)))
}

/// Phase 3. One attempt upstream, from connection to response headers.
async fn attempt(
    proxy: &Proxy,
    conn: &ConnTarget,
    proto: Proto,
    mut req: Request<Incoming>,
    connect_timeout: Duration,
    upgrade: bool,
) -> Result<Response<Incoming>, Reason> {
    for fresh in [false, true] {
        let pooled = if fresh {
            None
        } else {
            proxy.pool.checkout(&conn.pool_key, proto)
        };
        let c = match pooled {
            Some(c) => c,
            None => {
                let addrs = conn.addrs().await.map_err(|e| {
                    tracing::debug!(upstream = %conn.authority(), error = %e, "resolution failed");
                    Reason::UpstreamConnectFailure
                })?;
                proxy
                    .pool
                    .connect(&conn.pool_key, proto, &addrs, connect_timeout)
                    .await
                    .map_err(|e| {
                        tracing::debug!(error = %e, "upstream connect failed");
                        Reason::UpstreamConnectFailure
                    })?
            }
        };
        let sent = match c {
            Conn::H1(mut s) => {
                if fresh && s.ready().await.is_err() {
                    return Err(Reason::UpstreamConnectFailure);
                }
                let r = s.try_send_request(req).await;
                // An upgraded connection belongs to the tunnel; never pool it.
                if r.is_ok() && !upgrade {
                    proxy.pool.checkin(conn.pool_key.clone(), s);
                }
                r
            }
            Conn::H2(mut s) => {
                if s.ready().await.is_err() && fresh {
                    return Err(Reason::UpstreamConnectFailure);
                }
                s.try_send_request(req).await
            }
        };
        match sent {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never written upstream: safe to send again on a new connection.
                Some(unsent) if !fresh => {
                    tracing::debug!(error = %e.error(), "pooled connection refused the request; retrying on a new one");
                    req = unsent;
                }
                _ => {
                    tracing::debug!(error = %e.error(), "upstream failed before response headers");
                    return Err(Reason::UpstreamReset);
                }
            },
        }
    }
    Err(Reason::UpstreamReset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_picks_the_tightest_bound_and_its_reason() {
        let s = Duration::from_secs;
        let t = Timeouts {
            request: Some(s(3)),
            per_try: Some(s(1)),
            idle: Some(s(60)),
        };
        assert_eq!(deadline(&t, None), (Some(s(1)), Reason::PerTryTimeout));
        assert_eq!(
            deadline(&t, Some(Duration::from_millis(500))),
            (Some(Duration::from_millis(500)), Reason::Timeout)
        );
        let only_idle = Timeouts {
            idle: Some(s(2)),
            ..Timeouts::default()
        };
        assert_eq!(deadline(&only_idle, None), (Some(s(2)), Reason::Timeout));
        assert_eq!(
            deadline(&Timeouts::default(), None),
            (None, Reason::Timeout)
        );
        assert_eq!(
            deadline(&Timeouts::default(), Some(s(4))),
            (Some(s(4)), Reason::Timeout)
        );
    }
}
