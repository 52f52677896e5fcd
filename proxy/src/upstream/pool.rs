//! Reuse of upstream connections, per endpoint. HTTP/1.1 connections carry one exchange at a
//! time: one is handed out only when hyper says it is ready for the next request, so a
//! connection still streaming a response is never reused early. One HTTP/2 connection per
//! endpoint is shared by every request. A policy's `upstream.pool` bounds this:
//! `maxConnections` open to one endpoint at once (a request beyond it waits, within the connect
//! timeout, for a connection to be returned or closed), `maxLifetime` after which a connection
//! is not reused (so an upstream that moved is followed), and `idleTimeout` after which an unused
//! connection is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{self, ConnectError};
use crate::http::replay::UpstreamBody;
use crate::metrics::Metrics;

/// Bound on pooled HTTP/1.1 connections per endpoint when no `maxConnections` is set.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

pub enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// The pool settings in force for a request (policy, else bootstrap defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub idle_timeout: Duration,
    pub max_lifetime: Option<Duration>,
}

struct Pooled<C> {
    conn: C,
    created: Instant,
    last_used: Instant,
    limits: Limits,
}

impl<C> Pooled<C> {
    fn too_old(&self, now: Instant) -> bool {
        self.limits.max_lifetime.is_some_and(|l| now.duration_since(self.created) >= l)
    }
}

#[derive(Default)]
struct Entry {
    h1: Vec<Pooled<http1::SendRequest<UpstreamBody>>>,
    h2: Option<Pooled<http2::SendRequest<UpstreamBody>>>,
}

/// Open connections to one endpoint, and a wake-up for requests waiting for one.
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

pub struct Pool {
    entries: Mutex<HashMap<(SocketAddr, Proto), Entry>>,
    slots: Mutex<HashMap<SocketAddr, Arc<Slots>>>,
    metrics: Arc<Metrics>,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("all {0} connections to the endpoint are busy")]
    Exhausted(u32),
}

impl Pool {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool { entries: Mutex::default(), slots: Mutex::default(), metrics })
    }

    fn slots(&self, ep: SocketAddr) -> Arc<Slots> {
        self.slots.lock().expect("pool lock").entry(ep).or_default().clone()
    }

    /// A ready pooled connection to `ep`, if any, and when it was made.
    pub fn checkout(&self, ep: SocketAddr, proto: Proto) -> Option<(Conn, Instant)> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("pool lock");
        let entry = entries.get_mut(&(ep, proto))?;
        let found = match proto {
            Proto::Http2 => match &entry.h2 {
                Some(p) if !p.conn.is_closed() && !p.too_old(now) => Some((Conn::H2(p.conn.clone()), p.created)),
                _ => {
                    entry.h2 = None;
                    None
                }
            },
            Proto::Http1 => {
                entry.h1.retain(|p| !p.conn.is_closed() && !p.too_old(now));
                let pos = entry.h1.iter().rposition(|p| p.conn.is_ready());
                pos.map(|i| {
                    let p = entry.h1.swap_remove(i);
                    (Conn::H1(p.conn), p.created)
                })
            }
        };
        if found.is_some() {
            self.metrics.upstream_connection("reused");
        }
        found
    }

    /// Returns an HTTP/1.1 connection once its response headers arrived; it becomes
    /// eligible again when hyper marks it ready (response body finished).
    pub fn checkin(&self, ep: SocketAddr, conn: http1::SendRequest<UpstreamBody>, created: Instant, limits: Limits) {
        if conn.is_closed() {
            return;
        }
        let cap = limits.max_connections.map_or(MAX_IDLE_PER_ENDPOINT, |m| m as usize);
        {
            let mut entries = self.entries.lock().expect("pool lock");
            let entry = entries.entry((ep, Proto::Http1)).or_default();
            if entry.h1.len() < cap {
                entry.h1.push(Pooled { conn, created, last_used: Instant::now(), limits });
            }
        }
        self.slots(ep).freed.notify_waiters();
    }

    /// A pooled connection, or a new one when the endpoint has room; waits (up to `timeout`)
    /// while every allowed connection is busy. Returns the connection and when it was made.
    pub async fn get(
        &self,
        ep: SocketAddr,
        proto: Proto,
        limits: Limits,
        timeout: Duration,
    ) -> Result<(Conn, Instant), PoolError> {
        let deadline = Instant::now() + timeout;
        let slots = self.slots(ep);
        loop {
            if let Some(found) = self.checkout(ep, proto) {
                return Ok(found);
            }
            let freed = slots.freed.notified();
            let max = limits.max_connections.map_or(usize::MAX, |m| m as usize);
            let reserved =
                slots.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok();
            if reserved {
                let created = Instant::now();
                return match self
                    .connect(ep, proto, limits, deadline.saturating_duration_since(created), slots.clone())
                    .await
                {
                    Ok(c) => Ok((c, created)),
                    Err(e) => {
                        slots.open.fetch_sub(1, Ordering::AcqRel);
                        slots.freed.notify_waiters();
                        Err(e.into())
                    }
                };
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(PoolError::Exhausted(limits.max_connections.unwrap_or_default()));
            }
        }
    }

    /// Opens a new connection to `ep` regardless of pooled ones (for a request a stale pooled
    /// connection refused). Counts against `maxConnections` like any other.
    pub async fn fresh(
        &self,
        ep: SocketAddr,
        proto: Proto,
        limits: Limits,
        timeout: Duration,
    ) -> Result<(Conn, Instant), PoolError> {
        let slots = self.slots(ep);
        slots.open.fetch_add(1, Ordering::AcqRel);
        let created = Instant::now();
        match self.connect(ep, proto, limits, timeout, slots.clone()).await {
            Ok(c) => Ok((c, created)),
            Err(e) => {
                slots.open.fetch_sub(1, Ordering::AcqRel);
                Err(e.into())
            }
        }
    }

    async fn connect(
        &self,
        ep: SocketAddr,
        proto: Proto,
        limits: Limits,
        timeout: Duration,
        slots: Arc<Slots>,
    ) -> Result<Conn, ConnectError> {
        let (stream, addr) = match connect::connect(&[ep], timeout).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.upstream_connection("failed");
                return Err(e);
            }
        };
        let io = TokioIo::new(stream);
        let handshake_failed =
            |e: hyper::Error| ConnectError::Io { addr: addr.to_string(), source: std::io::Error::other(e) };
        // The connection's task frees its slot when the connection ends, however it ends.
        let release = move || {
            slots.open.fetch_sub(1, Ordering::AcqRel);
            slots.freed.notify_waiters();
        };
        let conn = match proto {
            Proto::Http1 => {
                let (send, conn) =
                    http1::Builder::new().max_buf_size(1 << 20).handshake(io).await.map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
                    release();
                });
                Conn::H1(send)
            }
            Proto::Http2 => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .max_header_list_size(60 * 1024)
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
                    release();
                });
                let now = Instant::now();
                let mut entries = self.entries.lock().expect("pool lock");
                entries.entry((ep, Proto::Http2)).or_default().h2 =
                    Some(Pooled { conn: send.clone(), created: now, last_used: now, limits });
                Conn::H2(send)
            }
        };
        self.metrics.upstream_connection("opened");
        Ok(conn)
    }

    /// Closes idle and expired connections periodically, until `stop`.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(pool) = this.upgrade() else { return };
                pool.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        let mut entries = self.entries.lock().expect("pool lock");
        entries.retain(|_, e| {
            e.h1.retain(|p| {
                let idle = p.conn.is_ready() && now.duration_since(p.last_used) > p.limits.idle_timeout;
                !(p.conn.is_closed() || idle || (p.conn.is_ready() && p.too_old(now)))
            });
            if e.h2.as_ref().is_some_and(|p| p.conn.is_closed() || p.too_old(now)) {
                e.h2 = None;
            }
            !e.h1.is_empty() || e.h2.is_some()
        });
    }
}
