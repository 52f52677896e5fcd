//! Reuse of upstream connections, per endpoint. HTTP/1.1 connections carry one exchange at a
//! time: one is handed out only when hyper says it is ready for the next request, so a
//! connection still streaming a response is never reused early. HTTP/2 connections are shared:
//! a request goes on the least busy one that has room under the peer's concurrent-stream limit,
//! and another is opened when none has; a connection whose peer sent GOAWAY (a server rotating
//! its connections) gets no new streams, so its replacement is opened while it drains (what
//! `h2_watch` reads off the wire). The pool also remembers, per endpoint, whether HTTP/2
//! worked there (`speaks_h2`), for `upstream.protocol: auto`. A policy's `upstream.pool` bounds this:
//! `maxConnections` open to one endpoint at once (a request beyond it waits, within the connect
//! timeout, for a connection to be returned or closed), `maxLifetime` after which a connection
//! is not reused (so an upstream that moved is followed), and `idleTimeout` after which an unused
//! connection is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use crate::buffers::{Buffers, MAX_HEADER_BYTES};
use bytes::Bytes;
use http_body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{self, ConnectError};
use super::h2_watch::{Peer, StreamSlot, Watched};
use super::UpstreamMetrics;

/// Bound on pooled HTTP/1.1 connections per endpoint when no `maxConnections` is set.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Endpoints whose HTTP/2 support is remembered; past it the memory starts over (it is
/// relearned on the next request to each).
const MAX_REMEMBERED: usize = 4096;

/// What the pool can send: any request body hyper can write on both protocols.
pub trait SendBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}
impl<B> SendBody for B where
    B: Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

pub enum Conn<B> {
    H1(http1::SendRequest<B>),
    /// A shared connection, and this request's stream on it (kept with the response body).
    H2(http2::SendRequest<B>, StreamSlot),
}

struct H2Conn<B> {
    send: http2::SendRequest<B>,
    peer: Arc<Peer>,
}

impl<B> H2Conn<B> {
    fn usable(&self) -> bool {
        !self.send.is_closed() && !self.peer.going_away() && !self.peer.refused()
    }
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

struct Entry<B> {
    h1: Vec<Pooled<http1::SendRequest<B>>>,
    h2: Vec<Pooled<H2Conn<B>>>,
}

impl<B> Default for Entry<B> {
    fn default() -> Self {
        Entry { h1: Vec::new(), h2: Vec::new() }
    }
}

/// Open connections to one endpoint, and a wake-up for requests waiting for one.
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// A connection slot of an endpoint, taken before connecting and given back when dropped:
/// by the connect that failed or was abandoned (a timeout fired, the client left), or, once
/// the connection is up, by its task when the connection ends.
struct Reservation(Arc<Slots>);

impl Reservation {
    /// A slot when the endpoint has fewer than `max` open.
    fn take(slots: &Arc<Slots>, max: usize) -> Option<Reservation> {
        slots
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Reservation(slots.clone()))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

pub struct Pool<B> {
    entries: Mutex<HashMap<(SocketAddr, Proto), Entry<B>>>,
    slots: Mutex<HashMap<SocketAddr, Arc<Slots>>>,
    speaks_h2: Mutex<HashMap<SocketAddr, bool>>,
    metrics: UpstreamMetrics,
    buffers: Buffers,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("all {0} connections to the endpoint are busy")]
    Exhausted(u32),
}

impl<B: SendBody> Pool<B> {
    pub fn new(metrics: UpstreamMetrics, buffers: Buffers) -> Arc<Pool<B>> {
        Arc::new(Pool {
            entries: Mutex::default(),
            slots: Mutex::default(),
            speaks_h2: Mutex::default(),
            metrics,
            buffers,
        })
    }

    /// Whether HTTP/2 worked at `ep` (true), or `ep` refused it (false); None: never tried.
    pub fn speaks_h2(&self, ep: SocketAddr) -> Option<bool> {
        self.speaks_h2.lock().get(&ep).copied()
    }

    pub fn learned(&self, ep: SocketAddr, h2: bool) {
        let mut known = self.speaks_h2.lock();
        if known.get(&ep) == Some(&h2) {
            return;
        }
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(ep, h2);
    }

    fn slots(&self, ep: SocketAddr) -> Arc<Slots> {
        self.slots.lock().entry(ep).or_default().clone()
    }

    /// Connections open (or being opened) to `ep`.
    pub fn open(&self, ep: SocketAddr) -> usize {
        self.slots.lock().get(&ep).map_or(0, |s| s.open.load(Ordering::Acquire))
    }

    /// A ready pooled connection to `ep`, if any, and when it was made. An HTTP/2 one must have
    /// room for another stream unless `crowd` (no new connection may be opened).
    fn checkout(&self, ep: SocketAddr, proto: Proto, crowd: bool) -> Option<(Conn<B>, Instant)> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let entry = entries.get_mut(&(ep, proto))?;
        let found = match proto {
            Proto::Http2 => {
                entry.h2.retain(|p| p.conn.usable() && !p.too_old(now));
                let p = entry
                    .h2
                    .iter_mut()
                    .filter(|p| crowd || p.conn.peer.has_room())
                    .min_by_key(|p| p.conn.peer.streams());
                p.map(|p| {
                    p.last_used = now;
                    (Conn::H2(p.conn.send.clone(), p.conn.peer.slot()), p.created)
                })
            }
            // Newest first, stopping at the first ready one: a full pass over every pooled
            // connection on each request made the cost of a request grow with the number of
            // connections. Closed and expired ones met on the way are dropped; the sweeper
            // takes the rest.
            Proto::Http1 => {
                let mut found = None;
                let mut i = entry.h1.len();
                while let Some(at) = i.checked_sub(1) {
                    i = at;
                    let Some(p) = entry.h1.get(at) else { break };
                    if p.conn.is_closed() || p.too_old(now) {
                        entry.h1.swap_remove(at);
                    } else if p.conn.is_ready() {
                        let p = entry.h1.swap_remove(at);
                        found = Some((Conn::H1(p.conn), p.created));
                        break;
                    }
                }
                found
            }
        };
        if found.is_some() {
            self.metrics.connection("reused");
        }
        found
    }

    /// Returns an HTTP/1.1 connection once its response headers arrived; it becomes
    /// eligible again when hyper marks it ready (response body finished).
    pub fn checkin(&self, ep: SocketAddr, conn: http1::SendRequest<B>, created: Instant, limits: Limits) {
        if conn.is_closed() {
            return;
        }
        let cap = limits.max_connections.map_or(MAX_IDLE_PER_ENDPOINT, |m| m as usize);
        {
            let mut entries = self.entries.lock();
            let entry = entries.entry((ep, Proto::Http1)).or_default();
            // Checkouts drop only the closed connections they meet; at the cap the others must
            // not keep a live one out.
            if entry.h1.len() >= cap {
                entry.h1.retain(|p| !p.conn.is_closed());
            }
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
    ) -> Result<(Conn<B>, Instant), PoolError> {
        let deadline = Instant::now() + timeout;
        let slots = self.slots(ep);
        let max = limits.max_connections.map_or(usize::MAX, |m| m as usize);
        loop {
            if let Some(found) = self.checkout(ep, proto, false) {
                return Ok(found);
            }
            let freed = slots.freed.notified();
            if let Some(slot) = Reservation::take(&slots, max) {
                let created = Instant::now();
                let left = deadline.saturating_duration_since(created);
                return Ok((self.connect(ep, proto, limits, left, slot).await?, created));
            }
            // Every allowed HTTP/2 connection is open and full: the stream waits in one of them
            // for the peer to allow it, as it would behind a single connection.
            if let Some(found) = self.checkout(ep, proto, true) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(PoolError::Exhausted(limits.max_connections.unwrap_or_default()));
            }
        }
    }

    /// Opens a new connection to `ep` regardless of pooled ones (for a request a stale pooled
    /// connection refused). Counts against `maxConnections` like any other, but may go one
    /// over it: the stale connection it replaces is closing.
    pub async fn fresh(
        &self,
        ep: SocketAddr,
        proto: Proto,
        limits: Limits,
        timeout: Duration,
    ) -> Result<(Conn<B>, Instant), PoolError> {
        let slot = Reservation::take(&self.slots(ep), usize::MAX).ok_or(PoolError::Exhausted(u32::MAX))?;
        let created = Instant::now();
        Ok((self.connect(ep, proto, limits, timeout, slot).await?, created))
    }

    /// Connects with `slot` reserved; the slot is handed to the connection's task, which
    /// drops it when the connection ends, however it ends.
    async fn connect(
        &self,
        ep: SocketAddr,
        proto: Proto,
        limits: Limits,
        timeout: Duration,
        slot: Reservation,
    ) -> Result<Conn<B>, ConnectError> {
        let (stream, addr) = match connect::connect(&[ep], timeout).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.connection("failed");
                return Err(e);
            }
        };
        let handshake_failed =
            |e: hyper::Error| ConnectError::Io { addr: addr.to_string(), source: std::io::Error::other(e) };
        let conn = match proto {
            Proto::Http1 => {
                let (send, conn) = http1::Builder::new()
                    .max_buf_size(self.buffers.h1_max_buf())
                    .preserve_header_case(true)
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
                    drop(slot);
                });
                Conn::H1(send)
            }
            Proto::Http2 => {
                let (watched, peer) = Watched::new(stream);
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .initial_stream_window_size(self.buffers.h2_stream_window())
                    .initial_connection_window_size(self.buffers.h2_connection_window())
                    .max_send_buf_size(self.buffers.h2_send_buf())
                    .handshake(TokioIo::new(watched))
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
                    drop(slot);
                });
                let now = Instant::now();
                let slot = peer.slot();
                let conn = H2Conn { send: send.clone(), peer };
                let mut entries = self.entries.lock();
                entries.entry((ep, Proto::Http2)).or_default().h2.push(Pooled {
                    conn,
                    created: now,
                    last_used: now,
                    limits,
                });
                Conn::H2(send, slot)
            }
        };
        self.metrics.connection("opened");
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
        let mut entries = self.entries.lock();
        entries.retain(|_, e| {
            e.h1.retain(|p| {
                let idle = p.conn.is_ready() && now.duration_since(p.last_used) > p.limits.idle_timeout;
                !(p.conn.is_closed() || idle || (p.conn.is_ready() && p.too_old(now)))
            });
            e.h2.retain(|p| {
                let idle = p.conn.peer.streams() == 0 && now.duration_since(p.last_used) > p.limits.idle_timeout;
                p.conn.usable() && !p.too_old(now) && !idle
            });
            !e.h1.is_empty() || !e.h2.is_empty()
        });
        drop(entries);
        // An endpoint's slot count is kept only while something holds it (a connection's
        // reservation, a request waiting or connecting): a proxy that talks to ever new
        // destinations must not keep one for each of them.
        self.slots.lock().retain(|_, s| Arc::strong_count(s) > 1 || s.open.load(Ordering::Acquire) > 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::config::DEFAULT_CONNECTION_BUFFER;

    /// A listener whose accept queue is full: further connects hang in SYN_SENT.
    /// Also used by the stage-chain tests (`http/stack/tests.rs`).
    pub(crate) fn blackhole() -> (std::net::SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let fill = (0..2)
            .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect();
        (addr, fill, s)
    }

    #[tokio::test]
    async fn the_sweep_forgets_endpoints_nothing_holds() {
        let pool = Pool::<http_body_util::Empty<Bytes>>::new(
            UpstreamMetrics::default(),
            Buffers::new(DEFAULT_CONNECTION_BUFFER),
        );
        let held: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let reservation = Reservation::take(&pool.slots(held), 1).unwrap();
        for port in 2..1002u16 {
            let _ = pool.slots(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(pool.slots.lock().len(), 1001);
        pool.sweep(Instant::now());
        assert_eq!(pool.slots.lock().len(), 1, "only the endpoint with a live reservation is kept");
        assert_eq!(pool.open(held), 1);
        drop(reservation);
        pool.sweep(Instant::now());
        assert!(pool.slots.lock().is_empty());
    }

    #[tokio::test]
    async fn a_connect_abandoned_midway_gives_its_slot_back() {
        let (ep, _fill, _socket) = blackhole();
        let pool = Pool::<http_body_util::Empty<Bytes>>::new(
            UpstreamMetrics::default(),
            Buffers::new(DEFAULT_CONNECTION_BUFFER),
        );
        let limits = Limits { max_connections: Some(2), idle_timeout: Duration::from_secs(60), max_lifetime: None };
        for _ in 0..5 {
            let r = tokio::time::timeout(
                Duration::from_millis(50),
                pool.get(ep, Proto::Http1, limits, Duration::from_secs(30)),
            )
            .await;
            assert!(r.is_err(), "the connect hangs, and the caller gives up");
            let r = tokio::time::timeout(
                Duration::from_millis(50),
                pool.fresh(ep, Proto::Http1, limits, Duration::from_secs(30)),
            )
            .await;
            assert!(r.is_err());
        }
        assert_eq!(pool.open(ep), 0, "every abandoned connect released its slot");
    }
}
