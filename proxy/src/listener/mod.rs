//! Accepting downstream connections. Each listener — explicit (`listen` → fixed `upstream`) or
//! transparent (outbound 15001, inbound 15006) — runs an accept loop that caps its open
//! connections, finds where the connection goes, detects its protocol, and hands it to the
//! HTTP server or the TCP forwarder.

pub mod detect;
pub mod transparent;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulwark_policy::Direction;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerProtocol;
use crate::proxy::Proxy;
use crate::target::{ConnTarget, ExplicitUpstream, Upstream};
use detect::Protocol;

pub enum Kind {
    /// The upstream may be replaced by a reload while the listener keeps its socket.
    Explicit(Arc<ArcSwap<ExplicitUpstream>>),
    Transparent(Direction),
}

pub struct Listener {
    pub label: Arc<str>,
    pub kind: Kind,
}

/// Everything an accept loop needs to stop: `stop_accept` closes the socket, `drain` asks
/// open connections to finish, `tracker` counts them.
#[derive(Clone)]
pub struct Lifecycle {
    pub stop_accept: CancellationToken,
    pub drain: CancellationToken,
    pub tracker: TaskTracker,
}

pub async fn run(socket: TcpListener, listener: Arc<Listener>, proxy: Arc<Proxy>, life: Lifecycle) {
    let cap = proxy.store.config().limits.max_connections_per_listener;
    let slots = Arc::new(Semaphore::new(cap));
    let active = proxy.metrics.connections_active(&listener.label);
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.stop_accept.cancelled() => return,
            r = socket.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %listener.label, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            proxy.metrics.connection_rejected(&listener.label);
            drop(stream);
            continue;
        };
        let (listener, proxy, drain, active) = (listener.clone(), proxy.clone(), life.drain.clone(), active.clone());
        life.tracker.spawn(async move {
            active.inc();
            handle(stream, peer, &listener, proxy, drain).await;
            active.dec();
            drop(permit);
        });
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, listener: &Listener, proxy: Arc<Proxy>, drain: CancellationToken) {
    let config = proxy.store.config();
    let (direction, upstream, forced) = match &listener.kind {
        Kind::Explicit(upstream) => {
            let u = upstream.load_full();
            let skip = config.detection.server_first_ports.contains(&u.resolver.primary().port);
            let forced = match u.protocol {
                ListenerProtocol::Auto if skip => Some(Protocol::Opaque),
                ListenerProtocol::Auto => None,
                ListenerProtocol::Http1 => Some(Protocol::Http1),
                ListenerProtocol::Http2 => Some(Protocol::Http2),
                ListenerProtocol::Tcp => Some(Protocol::Opaque),
            };
            (u.direction, Upstream::Explicit(u), forced)
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
            let skip = config.detection.server_first_ports.contains(&dst.port());
            (*direction, Upstream::OriginalDst(dst), skip.then_some(Protocol::Opaque))
        }
    };
    let target = Arc::new(ConnTarget::new(direction, listener.label.clone(), upstream, peer));
    let _ = stream.set_nodelay(true);

    let (protocol, io) = match forced {
        Some(p) => (p, detect::Prefixed::new(bytes::Bytes::new(), stream)),
        None => match detect::detect(stream, config.detection.timeout.get()).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "connection failed during detection");
                return;
            }
        },
    };
    proxy.metrics.connection_opened(&listener.label, protocol.as_str());
    match protocol {
        Protocol::Http1 | Protocol::Http2 => crate::http::server::serve(io, protocol, target, proxy, drain).await,
        Protocol::Opaque => forward_tcp(io, &target, &proxy).await,
    }
}

async fn forward_tcp(mut down: detect::Prefixed<TcpStream>, target: &ConnTarget, proxy: &Proxy) {
    let config = proxy.store.config();
    let (connect_timeout, idle, policy_id, tcp_faults) = {
        let installed = proxy.store.installed();
        let policy = installed.snapshot.select(&target.destination(None));
        (
            policy.and_then(|p| p.upstream.connect_timeout).unwrap_or(config.upstream.connect_timeout.get()),
            policy.and_then(|p| p.default_route.timeouts.idle).unwrap_or(config.upstream.tcp_idle_timeout.get()),
            policy.map(|p| p.id.clone()),
            policy.and_then(|p| p.tcp_faults),
        )
    };
    let drawn = tcp_faults.map(|f| draw_tcp_faults(&f)).unwrap_or_default();
    let count = |kind| {
        if let Some(id) = &policy_id {
            proxy.metrics.fault_counter(id, "tcp", kind).inc();
        }
    };
    if drawn.reset_now {
        count("tcp-reset");
        reset(down.inner());
        return;
    }
    if drawn.blackhole {
        count("tcp-blackhole");
        // Accept and never answer: read and drop until the client gives up or goes idle.
        let mut sink = tokio::io::sink();
        let _ = tokio::time::timeout(idle, tokio::io::copy(&mut down, &mut sink)).await;
        return;
    }
    for (hit, kind) in [
        (drawn.faults.delay.is_some(), "tcp-delay"),
        (drawn.faults.bandwidth.is_some(), "tcp-bandwidth"),
        (drawn.faults.reset_after.is_some(), "tcp-reset"),
    ] {
        if hit {
            count(kind);
        }
    }
    let addrs = match target.addrs().await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(upstream = %target.authority(), error = %e, "tcp: resolution failed; closing");
            return;
        }
    };
    let mut up = match crate::upstream::connect::connect(&addrs, connect_timeout).await {
        Ok((up, _)) => {
            proxy.metrics.upstream_connection("opened");
            up
        }
        Err(e) => {
            proxy.metrics.upstream_connection("failed");
            tracing::info!(error = %e, "tcp: upstream connect failed; closing");
            return;
        }
    };
    match crate::tcp::forward(&mut down, &mut up, idle, drawn.faults).await {
        Ok((sent, received)) => tracing::debug!(client = %target.client, sent, received, "tcp connection closed"),
        Err(e) => {
            tracing::debug!(client = %target.client, error = %e, "tcp connection ended");
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                reset(down.inner());
                reset(&up);
            }
        }
    }
}

#[derive(Default)]
struct DrawnTcpFaults {
    reset_now: bool,
    blackhole: bool,
    faults: crate::tcp::Faults,
}

/// Each TCP fault drawn on its own for this connection.
fn draw_tcp_faults(f: &bulwark_policy::faults::TcpFaultPolicy) -> DrawnTcpFaults {
    let hit = |c: bulwark_policy::faults::Chance| c.hit(fastrand::u64(..));
    let reset = f.reset.filter(|(_, c)| hit(*c));
    DrawnTcpFaults {
        reset_now: reset.is_some_and(|(after, _)| after.is_none()),
        blackhole: f.blackhole.is_some_and(hit),
        faults: crate::tcp::Faults {
            delay: f.delay.filter(|(_, c)| hit(*c)).map(|(d, _)| d),
            bandwidth: f.bandwidth.filter(|b| hit(b.chance)).map(|b| b.bytes_per_second),
            reset_after: reset.and_then(|(after, _)| after),
        },
    }
}

/// Closes with RST rather than FIN: zero linger, then the caller drops the socket.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
