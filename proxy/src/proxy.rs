//! The long-lived state every connection shares.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::upstream::balance::Clusters;
use crate::upstream::pool::Pool;

pub struct Proxy {
    pub store: Arc<Store>,
    /// Set when `accessLog.enabled`.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Set when `tracing` is configured.
    pub tracing: Option<crate::trace::Tracing>,
    pub pool: Arc<Pool>,
    pub clusters: Clusters,
    pub metrics: Arc<Metrics>,
    /// This workload's mesh identity, set on outbound HTTP requests (`x-bulwark-client-id`).
    pub identity: Option<http::HeaderValue>,
}
