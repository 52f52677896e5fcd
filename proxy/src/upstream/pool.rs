//! Reuse of upstream connections. HTTP/1.1 connections carry one exchange at a time: one is
//! handed out only when hyper says it is ready for the next request, so a connection still
//! streaming a response is never reused early. HTTP/2 connections are shared by every request
//! to the same target. Idle HTTP/1.1 connections are closed after `idle_timeout`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::replay::UpstreamBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{self, ConnectError};
use crate::metrics::Metrics;

/// Bound on pooled HTTP/1.1 connections per target; extra ones close after their exchange.
const MAX_IDLE_PER_TARGET: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PoolKey {
    /// Transparent traffic: the original destination.
    Addr(SocketAddr),
    /// Explicit listener: its upstream, whichever address it resolves to.
    Listener(Arc<str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

pub enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

#[derive(Default)]
struct Entry {
    h1: Vec<(http1::SendRequest<UpstreamBody>, Instant)>,
    h2: Option<http2::SendRequest<UpstreamBody>>,
}

pub struct Pool {
    entries: Mutex<HashMap<(PoolKey, Proto), Entry>>,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(idle_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            entries: Mutex::default(),
            idle_timeout,
            metrics,
        })
    }

    /// A ready pooled connection, if any.
    pub fn checkout(&self, key: &PoolKey, proto: Proto) -> Option<Conn> {
        let mut entries = self.entries.lock().expect("pool lock");
        let entry = entries.get_mut(&(key.clone(), proto))?;
        let found = match proto {
            Proto::Http2 => match &entry.h2 {
                Some(c) if !c.is_closed() => Some(Conn::H2(c.clone())),
                _ => {
                    entry.h2 = None;
                    None
                }
            },
            Proto::Http1 => {
                entry.h1.retain(|(c, _)| !c.is_closed());
                let pos = entry.h1.iter().rposition(|(c, _)| c.is_ready());
                pos.map(|i| Conn::H1(entry.h1.swap_remove(i).0))
            }
        };
        if found.is_some() {
            self.metrics.upstream_connection("reused");
        }
        found
    }

    /// Returns an HTTP/1.1 connection once its response headers arrived; it becomes
    /// eligible again when hyper marks it ready (response body finished).
    pub fn checkin(&self, key: PoolKey, conn: http1::SendRequest<UpstreamBody>) {
        if conn.is_closed() {
            return;
        }
        let mut entries = self.entries.lock().expect("pool lock");
        let entry = entries.entry((key, Proto::Http1)).or_default();
        if entry.h1.len() < MAX_IDLE_PER_TARGET {
            entry.h1.push((conn, Instant::now()));
        }
    }

    /// Opens a new connection and, for HTTP/2, shares it for later requests.
    pub async fn connect(
        &self,
        key: &PoolKey,
        proto: Proto,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Conn, ConnectError> {
        let (stream, addr) = match connect::connect(addrs, timeout).await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.upstream_connection("failed");
                return Err(e);
            }
        };
        let io = TokioIo::new(stream);
        let handshake_failed = |e: hyper::Error| ConnectError::Io {
            addr: addr.to_string(),
            source: std::io::Error::other(e),
        };
        let conn = match proto {
            Proto::Http1 => {
                let (send, conn) = http1::Builder::new()
                    .max_buf_size(1 << 20)
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
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
                });
                let mut entries = self.entries.lock().expect("pool lock");
                entries.entry((key.clone(), Proto::Http2)).or_default().h2 = Some(send.clone());
                Conn::H2(send)
            }
        };
        self.metrics.upstream_connection("opened");
        Ok(conn)
    }

    /// Closes idle connections older than the idle timeout, periodically, until `stop`.
    pub fn spawn_sweeper(self: &Arc<Self>, stop: CancellationToken) {
        let this = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_secs(1));
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
            e.h1.retain(|(c, since)| {
                let expired = c.is_ready() && now.duration_since(*since) > self.idle_timeout;
                !(c.is_closed() || expired)
            });
            if e.h2.as_ref().is_some_and(|c| c.is_closed()) {
                e.h2 = None;
            }
            !e.h1.is_empty() || e.h2.is_some()
        });
    }
}
