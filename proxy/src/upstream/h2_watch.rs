//! What the far end of an upstream HTTP/2 connection has said, read off its bytes as they
//! arrive: whether it speaks HTTP/2 at all (a server's first frame is SETTINGS; an HTTP/1.1
//! server answers the preface with text or closes), how many streams it allows at once
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`), and whether it has sent GOAWAY. hyper keeps all three to
//! itself; the pool needs them to stop handing out a connection that is going away before its
//! refusals arrive, to open another connection when this one is full, and to fall back to
//! HTTP/1.1 for an endpoint that does not speak HTTP/2. Only frame headers are parsed (and
//! SETTINGS payloads); everything else is skipped by length.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const UNKNOWN: u8 = 0;
const SPEAKS_H2: u8 = 1;
const NOT_H2: u8 = 2;

const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// What one connection's peer said, shared between the connection's reader and the pool.
#[derive(Debug)]
pub struct Peer {
    spoke: AtomicU8,
    max_streams: AtomicU32,
    going_away: AtomicBool,
    /// Streams of ours open on the connection (`StreamSlot`s alive).
    streams: AtomicUsize,
}

impl Default for Peer {
    fn default() -> Self {
        Peer {
            spoke: AtomicU8::new(UNKNOWN),
            // RFC 9113 §6.5.2: unlimited until the peer says otherwise.
            max_streams: AtomicU32::new(u32::MAX),
            going_away: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
        }
    }
}

impl Peer {
    /// The peer's first frame was SETTINGS.
    pub fn speaks_h2(&self) -> bool {
        self.spoke.load(Ordering::Acquire) == SPEAKS_H2
    }

    /// The peer answered the preface with something else, or closed before its first frame.
    pub fn refused(&self) -> bool {
        self.spoke.load(Ordering::Acquire) == NOT_H2
    }

    pub fn going_away(&self) -> bool {
        self.going_away.load(Ordering::Acquire)
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// Room for one more stream under the peer's concurrency limit.
    pub fn has_room(&self) -> bool {
        self.streams() < self.max_streams.load(Ordering::Acquire) as usize
    }

    /// Marks the connection as not to be used for new streams (it failed, or was found dead).
    pub fn retire(&self) {
        self.going_away.store(true, Ordering::Release);
    }

    /// Counts a stream of ours until the slot is dropped.
    pub fn slot(self: &Arc<Self>) -> StreamSlot {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamSlot(self.clone())
    }
}

/// One stream of ours on a connection, counted while it lives: held by the request until its
/// response body is done.
#[derive(Debug)]
pub struct StreamSlot(Arc<Peer>);

impl StreamSlot {
    pub fn peer(&self) -> &Arc<Peer> {
        &self.0
    }
}

/// A clone counts as a stream of its own, so a slot can travel in a response's extensions.
impl Clone for StreamSlot {
    fn clone(&self) -> Self {
        self.0.slot()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Frame boundaries of what the peer sent so far.
#[derive(Default)]
struct Frames {
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current payload is a SETTINGS frame's: its 6-byte entries are read.
    settings: bool,
    entry: [u8; 6],
    entry_have: usize,
    seen_first: bool,
    /// Not HTTP/2: nothing more is parsed.
    done: bool,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8], peer: &Peer) {
        while !data.is_empty() && !self.done {
            if self.left > 0 {
                let n = self.left.min(data.len());
                let (payload, rest) = data.split_at(n);
                if self.settings {
                    self.settings_bytes(payload, peer);
                }
                self.left -= n;
                data = rest;
                continue;
            }
            let n = (9 - self.have).min(data.len());
            let (part, rest) = data.split_at(n);
            self.head[self.have..self.have + n].copy_from_slice(part);
            self.have += n;
            data = rest;
            if self.have < 9 {
                return;
            }
            self.have = 0;
            let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
            let (kind, flags) = (self.head[3], self.head[4]);
            if !self.seen_first {
                self.seen_first = true;
                if kind != FRAME_SETTINGS || flags & FLAG_ACK != 0 {
                    peer.spoke.store(NOT_H2, Ordering::Release);
                    self.done = true;
                    return;
                }
                peer.spoke.store(SPEAKS_H2, Ordering::Release);
            }
            if kind == FRAME_GOAWAY {
                peer.going_away.store(true, Ordering::Release);
            }
            self.settings = kind == FRAME_SETTINGS && flags & FLAG_ACK == 0;
            self.entry_have = 0;
            self.left = len;
        }
    }

    fn settings_bytes(&mut self, mut payload: &[u8], peer: &Peer) {
        while !payload.is_empty() {
            let n = (6 - self.entry_have).min(payload.len());
            self.entry[self.entry_have..self.entry_have + n].copy_from_slice(&payload[..n]);
            self.entry_have += n;
            payload = &payload[n..];
            if self.entry_have == 6 {
                self.entry_have = 0;
                let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                    let v = u32::from_be_bytes([self.entry[2], self.entry[3], self.entry[4], self.entry[5]]);
                    peer.max_streams.store(v, Ordering::Release);
                }
            }
        }
    }
}

/// An upstream connection's I/O, read through `Frames`.
pub struct Watched<T> {
    inner: T,
    peer: Arc<Peer>,
    frames: Frames,
}

impl<T> Watched<T> {
    pub fn new(inner: T) -> (Watched<T>, Arc<Peer>) {
        let peer = Arc::new(Peer::default());
        (Watched { inner, peer: peer.clone(), frames: Frames::default() }, peer)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().get(before..).unwrap_or_default();
            if read.is_empty() && !this.frames.seen_first {
                // Closed before saying anything: not a server that speaks HTTP/2 here.
                this.peer.spoke.store(NOT_H2, Ordering::Release);
            }
            this.frames.feed(read, &this.peer);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn fed_one_byte_at_a_time(bytes: &[u8]) -> Peer {
        let peer = Peer::default();
        let mut frames = Frames::default();
        for b in bytes {
            frames.feed(std::slice::from_ref(b), &peer);
        }
        peer
    }

    #[test]
    fn settings_then_goaway_are_read_across_reads() {
        let mut wire = frame(FRAME_SETTINGS, 0, &[0, 3, 0, 0, 0, 7, 0, 4, 0, 1, 0, 0]);
        wire.extend(frame(0x0, 0, &[FRAME_GOAWAY; 40])); // DATA whose payload looks like GOAWAY
        let peer = fed_one_byte_at_a_time(&wire);
        assert!(peer.speaks_h2());
        assert_eq!(peer.max_streams.load(Ordering::Acquire), 7);
        assert!(!peer.going_away(), "payload bytes are skipped, not read as frames");
        wire.extend(frame(FRAME_GOAWAY, 0, &[0, 0, 0, 5, 0, 0, 0, 0]));
        assert!(fed_one_byte_at_a_time(&wire).going_away());
    }

    #[test]
    fn an_http1_answer_to_the_preface_is_not_h2() {
        let peer = fed_one_byte_at_a_time(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        assert!(!peer.speaks_h2());
        assert_eq!(peer.spoke.load(Ordering::Acquire), NOT_H2);
    }

    #[test]
    fn slots_count_streams_against_the_limit() {
        let peer = Arc::new(Peer::default());
        peer.max_streams.store(1, Ordering::Release);
        let slot = peer.slot();
        assert!(!peer.has_room());
        drop(slot);
        assert!(peer.has_room());
    }
}
