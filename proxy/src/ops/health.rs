//! :15020 — what kubelet and Prometheus read: `/live` (the process answers), `/ready` (a
//! snapshot is in force and the proxy is not draining), `/metrics`, and the app's own probes
//! under `/app-health/` when the injector rewrote them (see `app_health`).

use std::sync::Arc;

use http::{Method, StatusCode};

use crate::control::store::Store;
use crate::ops::app_health::AppHealth;
use crate::ops::server::{self, Handler};
use crate::telemetry::metrics::Metrics;

pub fn handler(store: Arc<Store>, metrics: Arc<Metrics>, app_health: Arc<AppHealth>) -> Handler {
    Arc::new(move |req| {
        if let Some(check) = req.uri().path().strip_prefix(bulwark_policy::app_probe::PATH_PREFIX) {
            return app_health.check(check);
        }
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            // With many routes the text runs to megabytes and takes tens of milliseconds to
            // write: on a blocking thread, so the worker serving traffic is not held up.
            let metrics = metrics.clone();
            return Box::pin(async move {
                let text = tokio::task::spawn_blocking(move || {
                    metrics.refresh_process();
                    metrics.encode()
                })
                .await
                .unwrap_or_default();
                server::typed(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", text)
            });
        }
        server::ready(match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/live") => server::text(StatusCode::OK, "live\n"),
            (&Method::GET | &Method::HEAD, "/ready") => {
                if store.is_ready() {
                    server::text(StatusCode::OK, "ready\n")
                } else {
                    server::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                }
            }
            _ => server::text(StatusCode::NOT_FOUND, "endpoints: /live /ready /metrics /app-health/CONTAINER/KIND\n"),
        })
    })
}
