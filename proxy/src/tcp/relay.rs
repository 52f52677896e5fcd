//! Opaque TCP forwarding: bytes both ways until both sides are done, half-close respected (an
//! EOF from one side is passed on as a write shutdown to the other while the reverse
//! direction keeps flowing). A connection silent in both directions for the idle timeout is
//! closed.
//!
//! Injected TCP faults (a policy's `tcpFaults`) act on what is read from either side: each
//! chunk is held `delay` (plus its time at `bandwidth` bytes per second) before it is passed
//! on, and after `resetAfter` bytes in all the connection ends with an error, which the caller
//! turns into a reset.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Forwards until both directions end or the pair is idle for `idle`. Returns bytes copied
/// (downstream→upstream, upstream→downstream) or the error that ended it.
pub async fn forward<D, U>(down: &mut D, up: &mut U, idle: Duration, faults: Faults) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut down = Activity { inner: Faulty::new(down, faults, total.clone()), start, last: last.clone() };
    let mut up = Activity { inner: Faulty::new(up, faults, total), start, last: last.clone() };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(copy);
    loop {
        let quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep_until(quiet_until) => {
                let since = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now().duration_since(since) >= idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}")));
                }
            }
        }
    }
}

/// The TCP faults drawn for one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub delay: Option<Duration>,
    pub bandwidth: Option<u64>,
    pub reset_after: Option<u64>,
}

/// Applies `Faults` to what is read from one side. `total` counts bytes of both sides.
struct Faulty<S> {
    inner: S,
    faults: Faults,
    total: Arc<AtomicU64>,
    held: bytes::Bytes,
    timer: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
    /// This side passed the last allowed byte: after what it holds, it resets.
    exhausted: bool,
}

impl<S> Faulty<S> {
    fn new(inner: S, faults: Faults, total: Arc<AtomicU64>) -> Faulty<S> {
        Faulty {
            inner,
            faults,
            total,
            held: bytes::Bytes::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
            exhausted: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Faulty<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let f = self.faults;
        if f == Faults::default() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        loop {
            if self.waiting {
                std::task::ready!(self.timer.as_mut().poll(cx));
                self.waiting = false;
            }
            if !self.held.is_empty() {
                let n = self.held.len().min(buf.remaining());
                let chunk = self.held.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.exhausted {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "injected reset")));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut tmp);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            let mut data = read.filled();
            if data.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(limit) = f.reset_after {
                // Only the bytes that may still pass are counted and passed on.
                let mut take = 0;
                let _ = self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    take = (limit.saturating_sub(t) as usize).min(data.len());
                    Some(t + take as u64)
                });
                if take < data.len() || self.total.load(Ordering::Acquire) >= limit {
                    self.exhausted = true;
                }
                data = &data[..take];
                if data.is_empty() {
                    continue;
                }
            }
            let pause = f.delay.unwrap_or_default()
                + f.bandwidth.map_or(Duration::ZERO, |b| Duration::from_secs_f64(data.len() as f64 / b as f64));
            self.held = bytes::Bytes::copy_from_slice(data);
            if !pause.is_zero() {
                let deadline = Instant::now() + pause;
                self.timer.as_mut().reset(deadline);
                self.waiting = true;
            }
        }
    }
}

crate::io::delegate_async_write!(Faulty);

/// Records the time of the last byte read, for the idle timer.
struct Activity<S> {
    inner: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now().duration_since(self.start).as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        r
    }
}

crate::io::delegate_async_write!(Activity);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, down) = tokio::io::duplex(1024);
        let (up, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let (mut down, mut up) = (down, up);
            forward(&mut down, &mut up, Duration::from_secs(30), Faults::default()).await
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "client EOF reaches the server");
        // The reverse direction still works after the client's half-close.
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        assert_eq!(task.await.unwrap().unwrap(), (4, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn injected_delay_bandwidth_and_reset_after_bytes() {
        let (mut client, mut down) = tokio::io::duplex(1 << 16);
        let (mut up, mut server) = tokio::io::duplex(1 << 16);
        let faults = Faults { delay: Some(Duration::from_millis(100)), bandwidth: Some(1000), reset_after: Some(1500) };
        let task = tokio::spawn(async move { forward(&mut down, &mut up, Duration::from_secs(30), faults).await });
        let start = Instant::now();
        client.write_all(&[7u8; 1000]).await.unwrap();
        let mut got = vec![0u8; 1000];
        server.read_exact(&mut got).await.unwrap();
        // 100 ms per chunk plus 1000 bytes at 1000 B/s.
        assert_eq!(start.elapsed(), Duration::from_millis(1100));
        client.write_all(&[7u8; 1000]).await.unwrap();
        let mut rest = vec![0u8; 500];
        server.read_exact(&mut rest).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "reset after exactly 1500 bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pair_is_closed_after_the_idle_timeout() {
        let (_client, mut down) = tokio::io::duplex(64);
        let (mut up, _server) = tokio::io::duplex(64);
        let start = Instant::now();
        let err = forward(&mut down, &mut up, Duration::from_secs(5), Faults::default()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
