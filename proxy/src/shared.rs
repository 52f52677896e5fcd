//! The long-lived state every connection shares.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::task::TaskTracker;

use crate::control::store::Store;
use crate::stage::retry::replay::UpstreamBody;
use crate::telemetry::metrics::Metrics;
use crate::upstream::balance::Clusters;
use crate::upstream::pool::Pool;

pub struct Shared {
    /// Downstream connections of the whole process (`limits.maxConnections`), over every
    /// listener.
    pub connections: Arc<tokio::sync::Semaphore>,
    pub store: Arc<Store>,
    /// Set when `accessLog.enabled`.
    pub access_log: Option<crate::telemetry::access_log::AccessLog>,
    /// Set when `tracing` is configured.
    pub tracing: Option<crate::telemetry::trace::Tracing>,
    pub pool: Arc<Pool<UpstreamBody>>,
    pub clusters: Clusters,
    pub metrics: Arc<Metrics>,
    /// This workload's mesh identity, set on outbound HTTP requests (`x-bulwark-client-id`).
    pub identity: Option<http::HeaderValue>,
    /// Every task that serves a client (connections, upgrade tunnels): a drain waits for them.
    pub tasks: TaskTracker,
}

impl Shared {
    /// The shared state for `store`'s settings: the upstream pool, the clusters' balancing
    /// state, and the access log and span exporter when configured (started here, so this needs
    /// a Tokio runtime).
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, tasks: TaskTracker) -> anyhow::Result<Shared> {
        let config = store.config();
        let ejections = metrics.upstream.ejections.clone();
        let clusters = Clusters::new(Arc::new(move |endpoint| {
            tracing::info!(%endpoint, "outlier detection ejected an endpoint");
            ejections.inc();
        }));
        let access_log = config.access_log.enabled.then(|| {
            crate::telemetry::access_log::AccessLog::start(
                config.access_log.sample,
                metrics.export.access_log_dropped.clone(),
            )
        });
        let tracing = match &config.tracing {
            Some(t) => Some(
                crate::telemetry::trace::Tracing::start(
                    t,
                    metrics.export.spans_dropped.clone(),
                    metrics.export.spans_exported.clone(),
                )
                .context("starting the OTLP span exporter")?,
            ),
            None => None,
        };
        Ok(Shared {
            connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            pool: Pool::new(
                metrics.upstream.clone(),
                crate::buffers::Buffers::new(store.config().limits.connection_buffer_bytes),
            ),
            identity: config.identity_header(),
            store,
            access_log,
            tracing,
            clusters,
            metrics,
            tasks,
        })
    }
}
