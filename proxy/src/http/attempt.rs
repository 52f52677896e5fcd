//! One try upstream: pick an endpoint of the cluster (`upstream::balance`), choose the protocol
//! to speak to it, get a pooled or new connection (`upstream::pool`), send the request, and
//! tell outlier detection how it went. A request that a stale pooled HTTP/1.1 connection
//! refused without sending a byte goes once more on a fresh connection here. A request the
//! upstream provably never processed — an HTTP/2 stream refused (REFUSED_STREAM, or above a
//! GOAWAY's last stream), or an endpoint that turned out not to speak HTTP/2 — comes back as
//! `Outcome::Refused`, which the retry stage sends again at once, counted against nothing.
//! A request that may have reached the upstream is not resent here (that is the retry
//! stage's decision).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::UpstreamProtocol;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::headers;
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
    pub protocol: UpstreamProtocol,
    /// The client speaks gRPC, which needs HTTP/2 upstream.
    pub grpc: bool,
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
    /// The protocol for `endpoint`: what the policy or listener says, else HTTP/2 only where
    /// the upstream is known to speak it. An upgrade is an HTTP/1.1 mechanism.
    fn protocol(&self, endpoint: SocketAddr) -> Proto {
        match self.protocol {
            _ if self.upgrade => Proto::Http1,
            UpstreamProtocol::Http1 => Proto::Http1,
            UpstreamProtocol::Http2 => Proto::Http2,
            UpstreamProtocol::Auto => match self.shared.pool.speaks_h2(endpoint) {
                Some(false) => Proto::Http1,
                Some(true) => Proto::Http2,
                None if self.grpc => Proto::Http2,
                None => Proto::Http1,
            },
        }
    }

    async fn send_to(
        &self,
        endpoint: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let pool = &self.shared.pool;
        let proto = self.protocol(endpoint);
        headers::for_protocol(&mut req, proto, || self.downstream.authority());
        for fresh in [false, true] {
            let got = if fresh {
                pool.fresh(endpoint, proto, self.limits, self.connect_timeout).await
            } else {
                pool.get(endpoint, proto, self.limits, self.connect_timeout).await
            };
            let (c, created) = match got {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "no upstream connection");
                    return Err(not_sent(req, Reason::UpstreamConnectFailure));
                }
            };
            let (mut s, slot) = match c {
                Conn::H1(mut s) => {
                    if s.ready().await.is_err() {
                        if fresh {
                            return Err(not_sent(req, Reason::UpstreamConnectFailure));
                        }
                        continue;
                    }
                    let sent = s.try_send_request(req).await;
                    if sent.is_ok() && !self.upgrade {
                        pool.checkin(endpoint, s, created, self.limits);
                    }
                    match sent {
                        Ok(resp) => return Ok(resp),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if !fresh => {
                                tracing::debug!(error = %e.error(), "pooled connection refused the request; retrying on a new one");
                                req = unsent;
                                continue;
                            }
                            unsent => {
                                tracing::debug!(error = %e.error(), "upstream failed before response headers");
                                return Err(reset(unsent.map(Request::into_body)));
                            }
                        },
                    }
                }
                Conn::H2(s, slot) => (s, slot),
            };
            // HTTP/2: the connection is shared, so a failure here is this stream's or the whole
            // connection's; which one, and whether the upstream processed anything, decides.
            let (error, unsent) = match s.ready().await {
                Ok(()) => match s.try_send_request(req).await {
                    Ok(mut resp) => {
                        pool.learned(endpoint, true);
                        // The stream counts against the connection until its body is done.
                        resp.extensions_mut().insert(slot);
                        return Ok(resp);
                    }
                    Err(mut e) => {
                        let unsent = e.take_message().map(Request::into_body);
                        (e.into_error(), unsent)
                    }
                },
                // The connection closed before this request was handed to it.
                Err(e) => (e, Some(req.into_body())),
            };
            let peer = slot.peer();
            if !peer.speaks_h2() {
                // Nothing came back that an HTTP/2 server says first: it never saw a request.
                peer.retire();
                pool.learned(endpoint, false);
                tracing::debug!(%endpoint, error = %error, "upstream does not speak HTTP/2");
                if self.protocol == UpstreamProtocol::Auto {
                    return Err(refused(unsent));
                }
                return Err(reset(unsent));
            }
            // hyper gives a request back only when none of it was written to the connection
            // (one queued behind a GOAWAY when the connection closed: "operation was canceled").
            if unsent.is_some() || never_processed(&error) {
                tracing::debug!(%endpoint, error = %error, "upstream refused the stream unprocessed");
                return Err(refused(unsent));
            }
            tracing::debug!(%endpoint, error = %error, "upstream failed before response headers");
            return Err(reset(unsent));
        }
        // The fresh pass returns on every path; a request is never lost here either way.
        Err(reset(None))
    }
}

/// RFC 9113 §8.7: a stream refused with REFUSED_STREAM, or above the last stream id of a
/// GOAWAY, was not processed and may go again anywhere.
fn never_processed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote() && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        source = e.source();
    }
    false
}

fn refused(unsent: Option<UpstreamBody>) -> Failed {
    Failed { outcome: Outcome::Refused, reason: Reason::UpstreamReset, unsent }
}

fn reset(unsent: Option<UpstreamBody>) -> Failed {
    Failed { outcome: Outcome::Reset, reason: Reason::UpstreamReset, unsent }
}

/// A try that never reached the upstream: its body can go on the next try.
fn not_sent(req: Request<UpstreamBody>, reason: Reason) -> Failed {
    Failed { outcome: Outcome::ConnectFailure, reason, unsent: Some(req.into_body()) }
}
