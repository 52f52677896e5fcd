//! The body the proxy sends downstream: the upstream's body passed through frame by frame
//! (trailers included), optionally bounded by the route's idle timeout and, for gRPC, by the
//! call's deadline, or a body the proxy made itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::respond;
use crate::upstream::h2_watch::StreamSlot;

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
    /// Frames the proxy made, in order (a message and its trailers).
    Frames(std::collections::VecDeque<Frame<Bytes>>),
    Upstream(Incoming),
    /// The upstream's body with what bounds it, or the stream slot it holds.
    FromUpstream(Box<FromUpstream>),
}

/// What is kept with an upstream body besides the body.
#[derive(Default)]
pub struct Bounds {
    /// The route's idle timeout between frames.
    pub idle: Option<Duration>,
    /// A gRPC call's deadline (request timeout or `grpc-timeout`): the call ends there with
    /// DEADLINE_EXCEEDED in trailers, whatever the upstream is doing.
    pub deadline: Option<Instant>,
    /// The HTTP/2 stream this body arrives on, counted against its connection until dropped.
    pub stream: Option<StreamSlot>,
}

pub struct FromUpstream {
    /// None once the deadline cut it: dropping it resets the upstream stream.
    inner: Option<Incoming>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    deadline: Option<Pin<Box<Sleep>>>,
    _stream: Option<StreamSlot>,
}

impl FromUpstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
            self.deadline = None;
            self.inner = None;
            return Poll::Ready(Some(Ok(Frame::trailers(respond::deadline_exceeded_trailers()))));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some((idle, timer)) = &mut self.idle {
                    timer.as_mut().reset(Instant::now() + *idle);
                }
                if !matches!(&frame, Some(Ok(f)) if f.is_data()) {
                    // Trailers, the end or an error: the call is over, nothing left to bound.
                    self.deadline = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match &mut self.idle {
                // Ending with an error makes hyper reset the stream (h2) or close the
                // connection (h1), so the client can tell a cut stream from a complete one.
                Some((idle, timer)) => match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(IdleElapsed(*idle).into()))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Local(Full::new(Bytes::new()))
    }

    pub fn full(b: Bytes) -> Self {
        ProxyBody::Local(Full::new(b))
    }

    pub fn frames(frames: Vec<Frame<Bytes>>) -> Self {
        ProxyBody::Frames(frames.into())
    }

    pub fn upstream(inner: Incoming, bounds: Bounds) -> Self {
        if bounds.idle.is_none() && bounds.deadline.is_none() && bounds.stream.is_none() {
            return ProxyBody::Upstream(inner);
        }
        let deadline = bounds.deadline.filter(|_| !inner.is_end_stream());
        ProxyBody::FromUpstream(Box::new(FromUpstream {
            inner: Some(inner),
            idle: bounds.idle.map(|idle| (idle, Box::pin(tokio::time::sleep(idle)))),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            _stream: bounds.stream,
        }))
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
            ProxyBody::Frames(f) => Poll::Ready(f.pop_front().map(Ok)),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::FromUpstream(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Throttled(t) => t.pending.is_empty() && t.inner.is_end_stream(),
            ProxyBody::Counted(c) => c.inner.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Frames(f) => f.is_empty(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::FromUpstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Throttled(t) => t.inner.size_hint(),
            ProxyBody::Counted(c) => c.inner.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Frames(f) => {
                SizeHint::with_exact(f.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum())
            }
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::FromUpstream(b) => b.inner.as_ref().map_or(SizeHint::with_exact(0), |i| i.size_hint()),
        }
    }
}
