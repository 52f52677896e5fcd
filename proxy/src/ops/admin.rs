//! 127.0.0.1:15000 — operator endpoints, loopback only because they reveal and change
//! configuration: `/config` (listeners and policies in force, as YAML), `/faults`, `/breakers`,
//! `/bulkheads`, `/logging` (read or set the log filter) and `POST /quitquitquit` (drain and exit).

use std::sync::Arc;

use bulwark_policy::ResiliencePolicy;
use http::{Method, StatusCode};
use serde::Serialize;

use crate::control::config::ListenerConfig;
use crate::control::store::Store;
use crate::ops::server::{self, Handler};
use tokio_util::sync::CancellationToken;

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

/// `shutdown` is cancelled by `POST /quitquitquit`: the proxy then drains and exits as on
/// SIGTERM. A Job's app calls it when done on clusters without native sidecars, so the pod can
/// complete.
///
/// Setting or clearing a fault compiles the policy set: those requests are answered on a
/// blocking thread, so a worker that serves traffic is not held up. The others are answered
/// at once, on the connection's task (`/quitquitquit`'s reply must be written before the
/// drain it starts can end the process).
pub fn handler(store: Arc<Store>, log: Arc<dyn LogControl>, shutdown: CancellationToken) -> Handler {
    Arc::new(move |req| {
        if let Some(refused) = cross_site(&req) {
            return server::ready(refused);
        }
        let compiles = req.uri().path() == "/faults" && req.method() != Method::GET;
        if !compiles {
            return server::ready(route(&store, &*log, &shutdown, req));
        }
        let (store, log, shutdown) = (store.clone(), log.clone(), shutdown.clone());
        Box::pin(async move {
            crate::control::policy_thread::run(move || route(&store, &*log, &shutdown, req)).await.unwrap_or_else(|e| {
                server::text(StatusCode::INTERNAL_SERVER_ERROR, format!("the admin request failed: {e}\n"))
            })
        })
    })
}

/// A browser on this host can reach the admin port: a page elsewhere can make it send a
/// request (CSRF) or, through a name that resolves to 127.0.0.1, read the answer (DNS
/// rebinding). Refused, with why:
/// - a `Host` that is neither an IP address nor `localhost` (a rebinding name);
/// - a write carrying an `Origin` other than the admin port's own (browsers send `Origin` on
///   every write, command-line clients send none);
/// - a write with a content type a cross-site form or `fetch` may send without asking
///   (`text/plain`, form encodings) and no `x-bulwark-admin` header. Command-line clients
///   send no content type, or a real one (`application/yaml`, `application/json`).
pub fn cross_site<B>(req: &http::Request<B>) -> Option<http::Response<http_body_util::Full<bytes::Bytes>>> {
    let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = header("host");
    if let Some(host) = host {
        let name = host.parse::<http::uri::Authority>().map(|a| a.host().trim_matches(['[', ']']).to_ascii_lowercase());
        let local = name.is_ok_and(|n| n == "localhost" || n.parse::<std::net::IpAddr>().is_ok());
        if !local {
            return Some(server::text(
                StatusCode::FORBIDDEN,
                format!("Host {host:?} is not this admin port: use its address or localhost\n"),
            ));
        }
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    if let Some(origin) = header("origin") {
        if host.is_none_or(|h| origin != format!("http://{h}")) {
            return Some(server::text(
                StatusCode::FORBIDDEN,
                format!("Origin {origin:?} may not change this proxy (a page in a browser?)\n"),
            ));
        }
    }
    let essence = header("content-type").map(|t| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let simple = essence
        .as_deref()
        .is_some_and(|t| matches!(t, "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"));
    if simple && !req.headers().contains_key(ADMIN_HEADER) {
        return Some(server::text(
            StatusCode::FORBIDDEN,
            format!(
                "a write with Content-Type {:?} needs the {ADMIN_HEADER} header (or send application/yaml or application/json)\n",
                essence.unwrap_or_default()
            ),
        ));
    }
    None
}

/// Marks a write as coming from a tool, not from a form a browser submitted.
pub const ADMIN_HEADER: &str = "x-bulwark-admin";

fn route(
    store: &Store,
    log: &dyn LogControl,
    shutdown: &CancellationToken,
    req: http::Request<bytes::Bytes>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/quitquitquit") => {
            // Loopback only, even when the admin port is bound wider: anyone who can reach it
            // could otherwise stop the pod's traffic.
            match req.extensions().get::<server::Peer>() {
                Some(peer) if peer.0.ip().is_loopback() => {
                    tracing::info!(peer = %peer.0, "shutdown requested on the admin port");
                    shutdown.cancel();
                    server::text(StatusCode::OK, "draining, then exiting\n")
                }
                _ => server::text(StatusCode::FORBIDDEN, "/quitquitquit is accepted from loopback only\n"),
            }
        }
        (&Method::GET, "/config") => {
            let config = store.config();
            let installed = store.installed();
            let view = ConfigView {
                generation: store.generation(),
                listeners: &config.listeners,
                policies: &installed.snapshot.documents,
            };
            match yaml_serde::to_string(&view) {
                Ok(y) => server::typed(StatusCode::OK, "application/yaml", y),
                Err(e) => server::text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render config: {e}\n")),
            }
        }
        (&Method::GET, "/faults") => json(&faults(store)),
        (&Method::POST | &Method::PUT, "/faults") => set_fault(store, &req),
        (&Method::DELETE, "/faults") => match query(&req, "policy").zip(query(&req, "route")) {
            Some((policy, route)) => match store.clear_fault(&policy, &route) {
                Ok(generation) => json(&serde_json::json!({ "cleared": true, "generation": generation })),
                Err(e) => server::text(StatusCode::NOT_FOUND, format!("{e}\n")),
            },
            None => server::text(StatusCode::BAD_REQUEST, "DELETE /faults?policy=NAMESPACE/NAME&route=ROUTE\n"),
        },
        (&Method::GET, "/breakers") => json(&breakers(store)),
        (&Method::GET, "/bulkheads") => json(&bulkheads(store)),
        (&Method::GET, "/logging") => server::text(StatusCode::OK, format!("{}\n", log.current())),
        (&Method::POST | &Method::PUT, "/logging") => {
            let level = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(req.body()).trim().to_string());
            match log.set(&level) {
                Ok(()) => server::text(StatusCode::OK, format!("log filter set to {level}\n")),
                Err(e) => server::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => server::text(
            StatusCode::NOT_FOUND,
            "endpoints: GET /config, GET|POST|DELETE /faults, GET /breakers, GET /bulkheads, GET|POST /logging?level=FILTER, POST /quitquitquit\n",
        ),
    }
}

fn json<T: Serialize>(v: &T) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(body) => server::typed(StatusCode::OK, "application/json", body + "\n"),
        Err(e) => server::text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render: {e}\n")),
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
        .flatten()
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
        .flatten()
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

fn query(req: &http::Request<bytes::Bytes>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// POST /faults?policy=NS/NAME&route=ROUTE with a `faults` block (YAML or JSON) as the body.
fn set_fault(store: &Store, req: &http::Request<bytes::Bytes>) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (Some(policy), Some(route)) = (query(req, "policy"), query(req, "route")) else {
        return server::text(
            StatusCode::BAD_REQUEST,
            "POST /faults?policy=NAMESPACE/NAME&route=ROUTE with the faults as the body\n",
        );
    };
    let text = String::from_utf8_lossy(req.body());
    let spec: Result<bulwark_policy::spec::FaultSpec, String> =
        yaml_serde::from_str::<yaml_serde::Value>(&text).map_err(|e| e.to_string()).and_then(|v| {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                format!("{path}: {}", e.into_inner())
            })
        });
    match spec.and_then(|spec| store.set_fault(&policy, &route, spec)) {
        Ok(generation) => json(&serde_json::json!({ "set": true, "generation": generation })),
        Err(e) => server::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

#[derive(Serialize)]
struct FaultRow {
    policy: String,
    route: String,
    /// `runtime` (set on this port) or `policy` (from the configuration file).
    source: &'static str,
    active: bool,
    expires_in_seconds: Option<f64>,
    faults: bulwark_policy::spec::FaultSpec,
}

fn faults(store: &Store) -> Vec<FaultRow> {
    let now = tokio::time::Instant::now();
    store
        .installed()
        .faults
        .iter()
        .flatten()
        .map(|f| FaultRow {
            policy: f.policy.to_string(),
            route: f.route.to_string(),
            source: if f.runtime { "runtime" } else { "policy" },
            active: f.active(now),
            expires_in_seconds: f.deadline.map(|d| d.saturating_duration_since(now).as_secs_f64()),
            faults: f.faults.spec.clone(),
        })
        .collect()
}
