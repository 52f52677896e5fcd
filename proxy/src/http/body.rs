//! The body the proxy sends downstream: the upstream's body passed through frame by frame
//! (trailers included), optionally bounded by the route's idle timeout, or a body the proxy
//! made itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream fell silent for longer than the route's `idle` timeout mid-body.
#[derive(Debug, thiserror::Error)]
#[error("stream idle for longer than {0:?}")]
pub struct IdleElapsed(pub Duration);

pub enum ProxyBody {
    /// Another body, sent at most `rate` bytes per second (an injected bandwidth fault).
    Throttled(Box<Throttled>),
    /// Another body, counted, with a call when it ends (the access log).
    Counted(Box<Counted>),
    Local(Full<Bytes>),
    Upstream(Incoming),
    UpstreamIdle {
        inner: Incoming,
        idle: Duration,
        timer: Pin<Box<Sleep>>,
    },
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Local(Full::new(Bytes::new()))
    }

    pub fn full(b: Bytes) -> Self {
        ProxyBody::Local(Full::new(b))
    }

    pub fn upstream(inner: Incoming, idle: Option<Duration>) -> Self {
        match idle {
            Some(idle) => ProxyBody::UpstreamIdle { inner, idle, timer: Box::pin(tokio::time::sleep(idle)) },
            None => ProxyBody::Upstream(inner),
        }
    }
}

impl ProxyBody {
    pub fn throttled(self, bytes_per_second: u64) -> ProxyBody {
        ProxyBody::Throttled(Box::new(Throttled {
            inner: self,
            rate: bytes_per_second.max(1),
            pending: Bytes::new(),
            wait: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
        }))
    }
}

impl ProxyBody {
    /// Counts the bytes of this body and calls `on_end(bytes, complete)` once, when it ends or
    /// is dropped.
    pub fn counted(self, on_end: Box<dyn FnOnce(u64, bool) + Send + Sync>) -> ProxyBody {
        ProxyBody::Counted(Box::new(Counted { inner: self, bytes: 0, on_end: Some(on_end) }))
    }
}

pub struct Counted {
    inner: ProxyBody,
    bytes: u64,
    on_end: Option<Box<dyn FnOnce(u64, bool) + Send + Sync>>,
}

impl Counted {
    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, complete);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // A body with nothing left (HEAD, 204) may never be polled to its end.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// Frames cut into pieces of a tenth of a second's worth, each followed by the time it takes to
/// send at `rate`, so a client sees a steady slow stream rather than bursts.
pub struct Throttled {
    inner: ProxyBody,
    rate: u64,
    pending: Bytes,
    wait: Pin<Box<Sleep>>,
    waiting: bool,
}

impl Throttled {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.waiting {
                match self.wait.as_mut().poll(cx) {
                    Poll::Ready(()) => self.waiting = false,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                let n = self.pending.len().min((self.rate / 10).max(1) as usize);
                let piece = self.pending.split_to(n);
                let pause = Duration::try_from_secs_f64(n as f64 / self.rate as f64).unwrap_or(Duration::from_secs(1));
                self.wait.as_mut().reset(Instant::now() + pause);
                self.waiting = true;
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Throttled(t) => t.poll_frame(cx),
            ProxyBody::Counted(c) => {
                let polled = Pin::new(&mut c.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => c.bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Poll::Ready(None) => c.finish(true),
                    Poll::Ready(Some(Err(_))) => c.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::UpstreamIdle { inner, idle, timer } => {
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        timer.as_mut().reset(Instant::now() + *idle);
                        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                    }
                    Poll::Pending => match timer.as_mut().poll(cx) {
                        // Ending with an error makes hyper reset the stream (h2) or close the
                        // connection (h1), so the client can tell a cut stream from a complete one.
                        Poll::Ready(()) => Poll::Ready(Some(Err(IdleElapsed(*idle).into()))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Throttled(t) => t.pending.is_empty() && t.inner.is_end_stream(),
            ProxyBody::Counted(c) => c.inner.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::UpstreamIdle { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Throttled(t) => t.inner.size_hint(),
            ProxyBody::Counted(c) => c.inner.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::UpstreamIdle { inner, .. } => inner.size_hint(),
        }
    }
}
