//! Serving one downstream HTTP connection with every limit set explicitly (hyper's defaults
//! are not a stable contract): header count and size, header read timeout, HTTP/2 stream and
//! reset caps, bounded windows. When the drain period starts HTTP/2 gets GOAWAY (HTTP/1
//! responses then carry `Connection: close`, see `stack`); when it ends, HTTP/1 closes after
//! the in-flight exchange.
//!
//! Ambiguous HTTP/1 framing is hyper's to judge, before a request reaches the proxy: duplicate
//! or non-numeric Content-Length and a final transfer coding other than chunked are answered
//! 400; Content-Length together with Transfer-Encoding: chunked is framed by the chunked
//! coding, Content-Length is dropped and the connection is closed after the response (RFC 9112
//! §6.3), so the upstream never sees two framings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::half_close::{Announced, HalfClose};
use super::resets::Resets;
use crate::buffers::{Buffers, MAX_HEADER_BYTES};
use crate::downstream::Downstream;
use crate::listener::detect::Protocol;
use crate::listener::Lifecycle;
use crate::shared::Shared;

pub const MAX_HEADERS: usize = 100;
const H2_MAX_STREAMS: u32 = 100;
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

pub async fn serve<I>(io: I, protocol: Protocol, downstream: Arc<Downstream>, shared: Arc<Shared>, life: &Lifecycle)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.store.config().limits;
    let header_read_timeout = limits.header_read_timeout.get();
    let buffers = Buffers::new(limits.connection_buffer_bytes);
    let announced = Announced::default();
    let resets = Arc::new(Resets::default());
    let label = downstream.label.clone();
    let svc = {
        let (shared, announced, resets) = (shared.clone(), announced.clone(), resets.clone());
        service_fn(move |req| {
            // Before hyper reads on: an end of stream after this request may be a half-close.
            announced.note(&req);
            let stream = resets.open();
            // Boxed per request: hyper keeps room for the service's future in every connection
            // for as long as it lives, and a request's future is about 7 KB; an idle keep-alive
            // connection then costs its buffers alone (5,000 idle connections: 92 MiB, not 163).
            let answer = Box::pin(super::stack::handle(shared.clone(), downstream.clone(), req));
            async move {
                let r = answer.await;
                stream.answered();
                r
            }
        })
    };
    let result = match protocol {
        Protocol::Http2 => {
            let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
                .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
                .initial_stream_window_size(buffers.h2_stream_window())
                .initial_connection_window_size(buffers.h2_downstream_connection_window())
                .max_send_buf_size(buffers.h2_send_buf())
                // A response passes through as the upstream wrote it: no Date of our own.
                .auto_date_header(false)
                .keep_alive_interval(Duration::from_secs(60))
                .keep_alive_timeout(Duration::from_secs(20))
                .serve_connection(TokioIo::new(io), svc);
            let stop = async {
                tokio::select! {
                    _ = life.drain.cancelled() => {}
                    _ = resets.flood() => {
                        tracing::info!(listener = %label, "a client reset most of its streams before their answer: GOAWAY");
                        shared.metrics.listeners.reset_flood(&label);
                    }
                }
            };
            until_done(c, stop, |c| c.graceful_shutdown()).await
        }
        _ => {
            let c = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .max_headers(MAX_HEADERS)
                .max_header_size(MAX_HEADER_BYTES)
                .max_buf_size(buffers.h1_max_buf())
                .header_read_timeout(header_read_timeout)
                .keep_alive(true)
                // Header names keep the case they came with, in both directions (the upstream
                // side keeps it too), and no Date is added to what the upstream answered.
                .preserve_header_case(true)
                .auto_date_header(false)
                .serve_connection(TokioIo::new(HalfClose::new(io, announced)), svc)
                .with_upgrades();
            until_done(c, life.close.cancelled(), |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

/// Runs `conn` to completion; when `stop` completes first, asks it to shut down gracefully and
/// keeps running it until it has.
async fn until_done<C: Future>(conn: C, stop: impl Future, shutdown: impl FnOnce(Pin<&mut C>)) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stop => {
            shutdown(conn.as_mut());
            conn.await
        }
    }
}
