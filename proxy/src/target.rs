//! Where a downstream connection's traffic goes, fixed when the connection is accepted: an
//! explicit listener's upstream, or the original destination of captured traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use bulwark_policy::{Destination, Direction};

use crate::config::ListenerProtocol;
use crate::upstream::resolve::Resolver;

/// An upstream endpoint set: what breakers, retry budgets and load balancers are kept per.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetKey {
    /// Transparent traffic: the original destination.
    Addr(SocketAddr),
    /// Explicit listener: its upstreams, whichever addresses they resolve to.
    Listener(Arc<str>),
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetKey::Addr(a) => write!(f, "{a}"),
            TargetKey::Listener(l) => f.write_str(l),
        }
    }
}

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
    pub target_key: TargetKey,
}

impl ConnTarget {
    pub fn new(direction: Direction, label: Arc<str>, upstream: Upstream, client: SocketAddr) -> ConnTarget {
        let target_key = match &upstream {
            Upstream::Explicit(e) => TargetKey::Listener(
                format!(
                    "{}={}",
                    e.listener,
                    e.resolver.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                )
                .into(),
            ),
            Upstream::OriginalDst(a) => TargetKey::Addr(*a),
        };
        ConnTarget { direction, label, upstream, client, target_key }
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

    /// The authority to send as `Host` when an HTTP/1.0 client sent none.
    pub fn authority(&self) -> String {
        match &self.upstream {
            Upstream::Explicit(e) => e.resolver.primary().to_string(),
            Upstream::OriginalDst(a) => a.to_string(),
        }
    }
}
