//! Accepting downstream connections. Each listener — explicit (`listen` → fixed `upstream`) or
//! transparent (outbound 15001, inbound 15006) — runs an accept loop that caps its open
//! connections, finds where the connection goes, detects its protocol, and hands it to the
//! HTTP server or the TCP forwarder.

pub mod detect;
pub mod idle;
pub mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulwark_policy::Direction;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::config::ListenerProtocol;
use crate::downstream::{Downstream, ExplicitUpstream, Upstream};
use crate::shared::Shared;
use crate::telemetry::metrics::single;
use detect::{Mode, Protocol};

/// How a connection's protocol is decided: fixed by the listener, or detected.
enum Decide {
    Fixed(Protocol),
    Detect(Mode),
}

pub enum Kind {
    /// The upstream may be replaced by a reload while the listener keeps its socket.
    Explicit(Arc<ArcSwap<ExplicitUpstream>>),
    Transparent(Direction),
}

pub struct Listener {
    pub label: Arc<str>,
    pub kind: Kind,
}

/// Everything an accept loop needs to stop, in the order a drain uses it: `drain` starts the
/// drain period (HTTP/2 connections get GOAWAY, HTTP/1 responses `Connection: close`, new
/// connections are still served), `stop_accept` closes the socket at its end, `close` asks
/// HTTP/1 connections to finish their exchange and close, `tracker` counts connections.
#[derive(Clone)]
pub struct Lifecycle {
    pub drain: CancellationToken,
    pub stop_accept: CancellationToken,
    pub close: CancellationToken,
    pub tracker: TaskTracker,
}

impl Lifecycle {
    pub fn new(tracker: TaskTracker) -> Lifecycle {
        Lifecycle {
            drain: CancellationToken::new(),
            stop_accept: CancellationToken::new(),
            close: CancellationToken::new(),
            tracker,
        }
    }
}

pub async fn run(socket: TcpListener, listener: Arc<Listener>, shared: Arc<Shared>, life: Lifecycle) {
    let cap = shared.store.config().limits.max_connections_per_listener;
    let slots = Arc::new(Semaphore::new(cap));
    let idle = Arc::new(idle::Idle::default());
    let active = shared.metrics.listeners.active(&listener.label);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.stop_accept.cancelled() => return,
            r = socket.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the same accept fails again
                    // at once, so wait, longer each time, while open connections go on.
                    shared.metrics.listeners.accept_failed(&listener.label);
                    let wait = backoff.next();
                    tracing::warn!(listener = %listener.label, error = %e, ?wait, "accept failed; backing off");
                    tokio::select! {
                        _ = life.stop_accept.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        backoff = AcceptBackoff::default();
        let caps = Caps { listener: &slots, process: &shared.connections };
        let permits = match caps.try_take() {
            Some(p) => Some(p),
            // At a cap: a connection that never spoke makes room for this one...
            None if idle.shed_oldest() => {
                shared.metrics.listeners.shed(&listener.label);
                caps.take_within(SHED_WAIT).await
            }
            None => None,
        };
        // ...else the newcomer is refused.
        let Some(permits) = permits else {
            shared.metrics.listeners.rejected(&listener.label);
            drop(stream);
            continue;
        };
        let (listener, shared, lifecycle, active, idle) =
            (listener.clone(), shared.clone(), life.clone(), active.clone(), idle.clone());
        life.tracker.spawn(async move {
            active.inc();
            handle(stream, peer, &listener, shared, &lifecycle, &idle).await;
            active.dec();
            drop(permits);
        });
    }
}

/// The two connection caps a new connection must fit under: its listener's and the process's.
struct Caps<'a> {
    listener: &'a Arc<Semaphore>,
    process: &'a Arc<Semaphore>,
}

type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Caps<'_> {
    fn try_take(&self) -> Option<Permits> {
        let listener = self.listener.clone().try_acquire_owned().ok()?;
        let process = self.process.clone().try_acquire_owned().ok()?;
        Some((listener, process))
    }

    /// A shed connection's task gives its permits back as it ends, on another worker.
    async fn take_within(&self, wait: std::time::Duration) -> Option<Permits> {
        let retry = async {
            loop {
                if let Some(p) = self.try_take() {
                    return p;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(wait, retry).await.ok()
    }
}

/// Waits after failed accepts: 5 ms, doubling to 1 s.
#[derive(Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    fn next(&mut self) -> std::time::Duration {
        let wait =
            std::time::Duration::from_millis(5u64.saturating_mul(1 << self.failures.min(8))).min(MAX_ACCEPT_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        wait
    }
}

const MAX_ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// A shed connection's task gives its slot back at once; this only bounds a stuck one.
const SHED_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &Listener,
    shared: Arc<Shared>,
    life: &Lifecycle,
    idle: &Arc<idle::Idle>,
) {
    let config = shared.store.config();
    let (direction, upstream, decide) = match &listener.kind {
        Kind::Explicit(upstream) => {
            let u = upstream.load_full();
            let skip = config.detection.server_first_ports.contains(&u.resolver.primary().port);
            let decide = match u.protocol {
                ListenerProtocol::Auto if skip => Decide::Fixed(Protocol::Opaque),
                ListenerProtocol::Auto => Decide::Detect(Mode::Auto),
                ListenerProtocol::Http => Decide::Detect(Mode::HttpOnly),
                ListenerProtocol::Http1 => Decide::Fixed(Protocol::Http1),
                ListenerProtocol::Http2 => Decide::Fixed(Protocol::Http2),
                ListenerProtocol::Tcp => Decide::Fixed(Protocol::Opaque),
            };
            (u.direction, Upstream::Explicit(u), decide)
        }
        Kind::Transparent(direction) => {
            let dst = match transparent::original_dst(&stream) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(listener = %listener.label, client = %peer, error = %e, "no original destination; was the connection redirected?");
                    return;
                }
            };
            let local = stream.local_addr().unwrap_or(dst);
            if transparent::is_loop(dst, local) {
                tracing::warn!(listener = %listener.label, client = %peer, "refusing a connection addressed to the capture port itself");
                return;
            }
            let decide = if config.detection.http_ports.contains(&dst.port()) {
                Decide::Detect(Mode::HttpOnly)
            } else if config.detection.server_first_ports.contains(&dst.port()) {
                Decide::Fixed(Protocol::Opaque)
            } else {
                Decide::Detect(Mode::Auto)
            };
            (*direction, Upstream::OriginalDst(dst), decide)
        }
    };
    let downstream = Arc::new(Downstream::new(direction, listener.label.clone(), upstream, peer));
    let _ = stream.set_nodelay(true);

    // A connection that has sent nothing can be shed at a cap, until it or its upstream speaks.
    let mut waiting = None;
    let detecting = std::time::Instant::now();
    let (protocol, io) = match decide {
        Decide::Fixed(p) => (p, detect::Prefixed::new(bytes::Bytes::new(), stream)),
        Decide::Detect(mode) => {
            let w = waiting.insert(idle.enter());
            let detected = tokio::select! {
                d = detect::detect(stream, config.detection.timeout.get(), mode) => d,
                _ = w.shed.cancelled() => {
                    tracing::debug!(client = %peer, "idle connection shed for a new one at the connection cap");
                    return;
                }
            };
            match detected {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "connection failed during detection");
                    return;
                }
            }
        }
    };
    // Only silence stays idle: as TCP it waits for the first byte of either side.
    if io.has_prefix() || protocol != Protocol::Opaque {
        waiting = None;
    } else if waiting.is_some() && detecting.elapsed() >= config.detection.timeout.get() {
        let port = downstream.destination(None).port;
        if shared.metrics.listeners.detection_timeout(&listener.label, port) {
            tracing::warn!(
                listener = %listener.label,
                port,
                timeout = ?config.detection.timeout.get(),
                "clients of port {port} send nothing first and wait out protocol detection on every connection before \
                 going through as TCP (a server-first protocol: MySQL/MariaDB, SMTP, ...): add {port} to \
                 detection.serverFirstPorts, or set protocol: tcp on the listener"
            );
        }
    }
    shared.metrics.listeners.opened(&listener.label, protocol.as_str());
    // Boxed: a connection's task is allocated for its largest state, and an idle connection
    // still detecting its protocol should cost a few hundred bytes, not a served request's.
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            Box::pin(crate::http::server::serve(io, protocol, downstream, shared, life)).await
        }
        Protocol::Opaque => Box::pin(crate::tcp::forward(io, &downstream, &shared, waiting)).await,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    listener: String,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    listener: String,
    port: String,
}

/// Downstream connections by listener.
pub struct ListenerMetrics {
    opened: Family<ConnLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    rejected: Family<ListenerLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    shed: Family<ListenerLabels, Counter>,
    reset_floods: Family<ListenerLabels, Counter>,
    detection_timeouts: Family<PortLabels, Counter>,
    /// Destination ports whose detection wait was already explained in the log.
    explained: parking_lot::Mutex<std::collections::HashSet<u16>>,
}

impl ListenerMetrics {
    pub fn register(r: &mut Registry) -> ListenerMetrics {
        ListenerMetrics {
            opened: single(r, "downstream_connections", "Downstream connections accepted, by detected protocol"),
            active: single(r, "downstream_connections_active", "Downstream connections open now"),
            rejected: single(
                r,
                "downstream_connections_rejected",
                "Downstream connections closed at once because the listener or the process was at its connection cap",
            ),
            reset_floods: single(
                r,
                "downstream_h2_reset_floods",
                "HTTP/2 connections told to go away because the client reset most of its streams before their answer",
            ),
            shed: single(
                r,
                "downstream_connections_shed",
                "Connections that had sent nothing, closed to make room for a new one at the connection cap",
            ),
            accept_errors: single(
                r,
                "downstream_accept_errors",
                "Failed accepts (out of file descriptors or memory); the listener backs off up to 1 s",
            ),
            detection_timeouts: single(
                r,
                "detection_timeouts",
                "Connections whose client sent nothing within detection.timeout (forwarded as TCP after the wait), by destination port",
            ),
            explained: parking_lot::Mutex::default(),
        }
    }

    /// Counts a wait; true the first time for `port` (so the log explains it once).
    fn detection_timeout(&self, listener: &str, port: u16) -> bool {
        self.detection_timeouts.get_or_create(&PortLabels { listener: listener.into(), port: port.to_string() }).inc();
        self.explained.lock().insert(port)
    }

    fn opened(&self, listener: &str, protocol: &'static str) {
        self.opened.get_or_create(&ConnLabels { listener: listener.into(), protocol }).inc();
    }

    fn active(&self, listener: &str) -> Gauge {
        self.active.get_or_create(&ListenerLabels { listener: listener.into() }).clone()
    }

    pub(crate) fn reset_flood(&self, listener: &str) {
        self.reset_floods.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    fn shed(&self, listener: &str) {
        self.shed.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    fn accept_failed(&self, listener: &str) {
        self.accept_errors.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    fn rejected(&self, listener: &str) {
        self.rejected.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u64> = (0..12).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
    }
}
