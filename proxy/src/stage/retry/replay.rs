//! The request body sent upstream, and what a retry can send again. The first try streams the
//! client's body through as it arrives (so streaming requests and gRPC bidi calls are never
//! held back) while keeping a copy of up to `maxBufferedBytes`. A retry is possible only when
//! the copy holds the whole body, trailers included; a larger body is sent once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

#[derive(Default)]
struct Copy {
    chunks: Vec<Bytes>,
    size: u64,
    trailers: Option<HeaderMap>,
    complete: bool,
    overflow: bool,
}

/// The copy kept of a request body while it streams upstream.
#[derive(Clone)]
pub struct Kept {
    copy: Arc<Mutex<Copy>>,
    limit: u64,
}

impl Kept {
    /// The whole original body was kept.
    pub fn resendable(&self) -> bool {
        let c = self.copy.lock();
        c.complete && !c.overflow
    }

    /// A body to send again, when the whole original body was kept.
    pub fn replay(&self) -> Option<UpstreamBody> {
        let c = self.copy.lock();
        (c.complete && !c.overflow)
            .then(|| UpstreamBody::Replay { chunks: c.chunks.iter().cloned().collect(), trailers: c.trailers.clone() })
    }
}

pub enum UpstreamBody {
    /// The client's body, passed through while a copy is kept.
    Tee { inner: Incoming, kept: Kept },
    /// A kept copy, sent again.
    Replay { chunks: VecDeque<Bytes>, trailers: Option<HeaderMap> },
}

impl UpstreamBody {
    /// Wraps `inner` so that up to `limit` bytes of it are kept for retries.
    pub fn tee(inner: Incoming, limit: u64) -> (UpstreamBody, Kept) {
        let complete = inner.is_end_stream();
        let kept = Kept { copy: Arc::new(Mutex::new(Copy { complete, ..Copy::default() })), limit };
        (UpstreamBody::Tee { inner, kept: kept.clone() }, kept)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Tee { inner, kept } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                let mut c = kept.copy.lock();
                // hyper stops polling a body once its Content-Length is written, so the end is
                // known from the body's own state, not only from a final `None`.
                if inner.is_end_stream() {
                    c.complete = true;
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            c.size += data.len() as u64;
                            if c.size > kept.limit {
                                c.overflow = true;
                                c.chunks.clear();
                            } else if !c.overflow {
                                c.chunks.push(data.clone());
                            }
                        } else if let Some(t) = frame.trailers_ref() {
                            c.trailers = Some(t.clone());
                        }
                    }
                    Poll::Ready(None) => c.complete = true,
                    Poll::Ready(Some(Err(_))) => c.overflow = true,
                    Poll::Pending => {}
                }
                polled
            }
            UpstreamBody::Replay { chunks, trailers } => Poll::Ready(match chunks.pop_front() {
                Some(c) => Some(Ok(Frame::data(c))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Tee { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Replay { chunks, trailers } => chunks.is_empty() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Tee { inner, .. } => inner.size_hint(),
            UpstreamBody::Replay { chunks, .. } => SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum()),
        }
    }
}
