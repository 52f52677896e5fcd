//! Where a downstream connection's traffic goes, fixed when the connection is accepted: an
//! explicit listener's upstream, or the original destination of captured traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use bulwark_policy::{Destination, Direction, UpstreamProtocol};

use tokio_util::sync::CancellationToken;

use crate::control::config::{ListenerConfig, ListenerProtocol};
use crate::upstream::resolve::Resolver;
use crate::upstream::ClusterKey;

/// What an explicit listener forwards to, replaced as a whole when a reload changes it while
/// the listener keeps its socket.
pub struct ExplicitUpstream {
    pub listener: Arc<str>,
    pub resolver: Arc<Resolver>,
    pub protocol: ListenerProtocol,
    pub upstream_protocol: UpstreamProtocol,
    pub direction: Direction,
}

impl ExplicitUpstream {
    /// The upstream of listener `l`, its addresses re-resolved every `dnsRefresh` until `stop`.
    pub fn start(l: &ListenerConfig, stop: &CancellationToken) -> Arc<ExplicitUpstream> {
        let targets = l.upstream.parse().expect("validated at load");
        let resolver = Arc::new(Resolver::new(targets));
        resolver.spawn_refresh(l.dns_refresh.get(), stop.clone());
        Arc::new(ExplicitUpstream {
            listener: l.name.as_str().into(),
            resolver,
            protocol: l.protocol,
            upstream_protocol: l.upstream_protocol,
            direction: l.direction,
        })
    }
}

pub enum Upstream {
    Explicit(Arc<ExplicitUpstream>),
    OriginalDst(SocketAddr),
}

pub struct Downstream {
    pub direction: Direction,
    /// Listener name for metrics: the explicit listener's name, or `outbound`/`inbound`.
    pub label: Arc<str>,
    pub upstream: Upstream,
    pub client: SocketAddr,
    /// The endpoint set this connection's traffic goes to.
    pub cluster: ClusterKey,
}

impl Downstream {
    pub fn new(direction: Direction, label: Arc<str>, upstream: Upstream, client: SocketAddr) -> Downstream {
        let cluster = match &upstream {
            Upstream::Explicit(e) => ClusterKey::Listener(
                format!(
                    "{}={}",
                    e.listener,
                    e.resolver.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                )
                .into(),
            ),
            Upstream::OriginalDst(a) => ClusterKey::Addr(*a),
        };
        Downstream { direction, label, upstream, client, cluster }
    }

    /// Policy selection input; `host` is the request's host when there is one.
    pub fn destination<'a>(&'a self, host: Option<&'a str>) -> Destination<'a> {
        match &self.upstream {
            Upstream::Explicit(e) => Destination {
                direction: self.direction,
                listener: Some(&e.listener),
                hosts: [host, Some(&e.resolver.primary().host)],
                addr: e.resolver.primary().ip().map(|ip| SocketAddr::new(ip, e.resolver.primary().port)),
                port: e.resolver.primary().port,
            },
            Upstream::OriginalDst(a) => Destination {
                direction: self.direction,
                listener: None,
                hosts: [host, None],
                addr: Some(*a),
                port: a.port(),
            },
        }
    }

    pub async fn addrs(&self) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        match &self.upstream {
            Upstream::Explicit(e) => e.resolver.addrs().await,
            Upstream::OriginalDst(a) => Ok(Arc::new(vec![*a])),
        }
    }

    /// The listener's upstream protocol (captured traffic: `auto`).
    pub fn upstream_protocol(&self) -> UpstreamProtocol {
        match &self.upstream {
            Upstream::Explicit(e) => e.upstream_protocol,
            Upstream::OriginalDst(_) => UpstreamProtocol::Auto,
        }
    }

    /// The authority to send as `Host` when an HTTP/1.0 client sent none.
    pub fn authority(&self) -> String {
        match &self.upstream {
            Upstream::Explicit(e) => e.resolver.primary().to_string(),
            Upstream::OriginalDst(a) => a.to_string(),
        }
    }
}
