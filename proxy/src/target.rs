//! Where a downstream connection's traffic goes, fixed when the connection is accepted: an
//! explicit listener's upstream, or the original destination of captured traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use bulwark_policy::{Destination, Direction};

use crate::config::ListenerProtocol;
use crate::upstream::pool::PoolKey;
use crate::upstream::resolve::Resolver;

/// What an explicit listener forwards to, replaced as a whole when a reload changes it while
/// the listener keeps its socket.
pub struct ExplicitUpstream {
    pub listener: Arc<str>,
    pub resolver: Arc<Resolver>,
    pub protocol: ListenerProtocol,
    pub direction: Direction,
}

pub enum Upstream {
    Explicit(Arc<ExplicitUpstream>),
    OriginalDst(SocketAddr),
}

pub struct ConnTarget {
    pub direction: Direction,
    /// Listener name for metrics: the explicit listener's name, or `outbound`/`inbound`.
    pub label: Arc<str>,
    pub upstream: Upstream,
    pub client: SocketAddr,
    pub pool_key: PoolKey,
}

impl ConnTarget {
    pub fn new(
        direction: Direction,
        label: Arc<str>,
        upstream: Upstream,
        client: SocketAddr,
    ) -> ConnTarget {
        let pool_key = match &upstream {
            Upstream::Explicit(e) => {
                PoolKey::Listener(format!("{}={}", e.listener, e.resolver.target).into())
            }
            Upstream::OriginalDst(a) => PoolKey::Addr(*a),
        };
        ConnTarget {
            direction,
            label,
            upstream,
            client,
            pool_key,
        }
    }

    /// Policy selection input; `host` is the request's host when there is one.
    pub fn destination<'a>(&'a self, host: Option<&'a str>) -> Destination<'a> {
        match &self.upstream {
            Upstream::Explicit(e) => Destination {
                direction: self.direction,
                listener: Some(&e.listener),
                hosts: [host, Some(&e.resolver.target.host)],
                addr: e
                    .resolver
                    .target
                    .ip()
                    .map(|ip| SocketAddr::new(ip, e.resolver.target.port)),
                port: e.resolver.target.port,
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

    /// The authority to send as `Host` when an HTTP/1.0 client sent none.
    pub fn authority(&self) -> String {
        match &self.upstream {
            Upstream::Explicit(e) => e.resolver.target.to_string(),
            Upstream::OriginalDst(a) => a.to_string(),
        }
    }
}
