//! One try upstream: pick an endpoint of the cluster (`upstream::balance`), get a pooled or
//! new connection (`upstream::pool`), send the request, and tell outlier detection how it
//! went. A request that a stale pooled connection refused without sending a byte goes once
//! more on a fresh connection; a request that may have reached the upstream is not resent
//! here (that is the retry stage's decision).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::downstream::Downstream;
use crate::reason::Reason;
use crate::shared::Shared;
use crate::stage::retry::replay::UpstreamBody;
use crate::stage::retry::{outcome, Failed, SendTry};
use crate::telemetry::record::Record;
use crate::upstream::balance::Cluster;
use crate::upstream::pool::{Conn, Limits, Proto};
use crate::upstream::Outcome;

/// Everything a request's tries share.
pub struct Attempt<'a> {
    pub shared: &'a Shared,
    pub downstream: &'a Downstream,
    pub cluster: Arc<Cluster>,
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub proto: Proto,
    /// An upgrade (WebSocket): the connection belongs to the tunnel and is never pooled.
    pub upgrade: bool,
}

impl SendTry for Attempt<'_> {
    /// Picks an endpoint (avoiding those already tried when another is healthy), tells the
    /// record, and sends to it.
    async fn send(&self, req: Request<UpstreamBody>, rec: &mut Record) -> Result<Response<Incoming>, Failed> {
        let set = match self.downstream.addrs().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(upstream = %self.downstream.authority(), error = %e, "resolution failed");
                return Err(not_sent(req, Reason::UpstreamConnectFailure));
            }
        };
        let avoid: Vec<SocketAddr> = rec.tried().collect();
        let Some(endpoint) = self.cluster.pick(&set, &avoid, Instant::now()) else {
            return Err(not_sent(req, Reason::NoHealthyUpstream));
        };
        rec.begin_try(endpoint);
        let _in_flight = self.cluster.begin(endpoint);
        let result = self.send_to(endpoint, req).await;
        self.cluster.report(endpoint, outcome(&result), &set, Instant::now());
        result
    }
}

impl Attempt<'_> {
    async fn send_to(
        &self,
        endpoint: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let pool = &self.shared.pool;
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
        // The fresh pass returns on every path; a request is never lost here either way.
        Err(Failed { outcome: Outcome::Reset, reason: Reason::UpstreamReset, unsent: None })
    }
}

/// A try that never reached the upstream: its body can go on the next try.
fn not_sent(req: Request<UpstreamBody>, reason: Reason) -> Failed {
    Failed { outcome: Outcome::ConnectFailure, reason, unsent: Some(req.into_body()) }
}
