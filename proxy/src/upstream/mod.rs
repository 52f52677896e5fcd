//! Everything about reaching an upstream: where it is (`resolve`), opening a connection
//! (`connect`), choosing an endpoint of the set (`balance`), reusing connections (`pool`), and
//! what an attempt gave (`outcome`).
//!
//! Vocabulary: an *endpoint* is one upstream address; a *cluster* is the endpoint set a
//! downstream connection's traffic goes to (an explicit listener's upstreams, or a captured
//! connection's original destination), which breakers, retry budgets and balancers are kept per.

pub mod balance;
pub mod connect;
pub mod h2_watch;
pub mod outcome;
pub mod pool;
pub mod resolve;

use std::net::SocketAddr;
use std::sync::Arc;

pub use outcome::Outcome;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::{single, ResultLabels};

/// Upstream connections and endpoint ejections.
#[derive(Clone, Default)]
pub struct UpstreamMetrics {
    connections: Family<ResultLabels, Counter>,
    pub ejections: Counter,
}

impl UpstreamMetrics {
    pub fn register(r: &mut Registry) -> UpstreamMetrics {
        UpstreamMetrics {
            connections: single(
                r,
                "upstream_connections",
                "Upstream connections opened, reused from the pool, or failed",
            ),
            ejections: single(r, "outlier_ejections", "Upstream endpoints ejected by outlier detection"),
        }
    }

    /// `result`: opened, reused or failed.
    pub fn connection(&self, result: &'static str) {
        self.connections.get_or_create(&ResultLabels { result }).inc();
    }
}

/// A cluster: what breakers, retry budgets and load balancers are kept per.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterKey {
    /// Transparent traffic: the original destination.
    Addr(SocketAddr),
    /// Explicit listener: its upstreams, whichever addresses they resolve to.
    Listener(Arc<str>),
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterKey::Addr(a) => write!(f, "{a}"),
            ClusterKey::Listener(l) => f.write_str(l),
        }
    }
}
