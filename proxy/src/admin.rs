//! 127.0.0.1:15000 — operator endpoints, loopback only because they reveal and change
//! configuration: `/config` (listeners and policies in force, as YAML) and `/logging`
//! (read or set the log filter).

use std::sync::Arc;

use bulwark_policy::ResiliencePolicy;
use http::{Method, StatusCode};
use serde::Serialize;

use crate::config::ListenerConfig;
use crate::endpoint::{self, Handler};
use crate::store::Store;

/// Reads and replaces the process's log filter (`info`, `bulwark_proxy=debug`, ...).
pub trait LogControl: Send + Sync {
    fn current(&self) -> String;
    fn set(&self, filter: &str) -> Result<(), String>;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigView<'a> {
    generation: u64,
    listeners: &'a [ListenerConfig],
    policies: &'a [ResiliencePolicy],
}

pub fn handler(store: Arc<Store>, log: Arc<dyn LogControl>) -> Handler {
    Arc::new(move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/config") => {
            let config = store.config();
            let installed = store.installed();
            let view = ConfigView {
                generation: store.generation(),
                listeners: &config.listeners,
                policies: &installed.snapshot.documents,
            };
            match serde_yaml::to_string(&view) {
                Ok(y) => endpoint::typed(StatusCode::OK, "application/yaml", y),
                Err(e) => endpoint::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render config: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/breakers") => json(&breakers(&store)),
        (&Method::GET, "/bulkheads") => json(&bulkheads(&store)),
        (&Method::GET, "/logging") => {
            endpoint::text(StatusCode::OK, format!("{}\n", log.current()))
        }
        (&Method::POST | &Method::PUT, "/logging") => {
            let level = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(req.body()).trim().to_string());
            match log.set(&level) {
                Ok(()) => endpoint::text(StatusCode::OK, format!("log filter set to {level}\n")),
                Err(e) => endpoint::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => endpoint::text(
            StatusCode::NOT_FOUND,
            "endpoints: GET /config, GET|POST /logging?level=FILTER\n",
        ),
    })
}

fn json<T: Serialize>(v: &T) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(body) => endpoint::typed(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => endpoint::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render: {e}\n"),
        ),
    }
}

#[derive(Serialize)]
struct BreakerRow {
    policy: String,
    route: String,
    target: String,
    #[serde(flatten)]
    view: crate::stage::breaker::View,
}

/// Every breaker in force: one per (route, upstream target) that has seen traffic.
fn breakers(store: &Store) -> Vec<BreakerRow> {
    let now = tokio::time::Instant::now();
    let installed = store.installed();
    installed
        .states
        .iter()
        .flat_map(|s| {
            s.breakers().into_iter().map(move |(target, b)| BreakerRow {
                policy: s.policy.to_string(),
                route: s.route.to_string(),
                target,
                view: b.view(now),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct BulkheadRow {
    policy: String,
    route: String,
    in_flight: u32,
    queued: u32,
}

fn bulkheads(store: &Store) -> Vec<BulkheadRow> {
    let installed = store.installed();
    installed
        .states
        .iter()
        .filter_map(|s| {
            s.bulkhead.as_ref().map(|b| BulkheadRow {
                policy: s.policy.to_string(),
                route: s.route.to_string(),
                in_flight: b.in_flight(),
                queued: b.queued(),
            })
        })
        .collect()
}
