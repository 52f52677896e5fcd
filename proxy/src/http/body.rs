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
            Some(idle) => ProxyBody::UpstreamIdle {
                inner,
                idle,
                timer: Box::pin(tokio::time::sleep(idle)),
            },
            None => ProxyBody::Upstream(inner),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
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
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::UpstreamIdle { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::UpstreamIdle { inner, .. } => inner.size_hint(),
        }
    }
}
