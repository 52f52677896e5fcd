//! :15020 — what kubelet and Prometheus read: `/live` (the process answers), `/ready` (a
//! snapshot is in force and the proxy is not draining) and `/metrics`.

use std::sync::Arc;

use http::{Method, StatusCode};

use crate::endpoint::{self, Handler};
use crate::metrics::Metrics;
use crate::store::Store;

pub fn handler(store: Arc<Store>, metrics: Arc<Metrics>) -> Handler {
    Arc::new(move |req| match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/live") => endpoint::text(StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") => {
            if store.is_ready() {
                endpoint::text(StatusCode::OK, "ready\n")
            } else {
                endpoint::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        (&Method::GET, "/metrics") => {
            endpoint::typed(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", {
                metrics.refresh_process();
                metrics.encode()
            })
        }
        _ => endpoint::text(StatusCode::NOT_FOUND, "endpoints: /live /ready /metrics\n"),
    })
}
