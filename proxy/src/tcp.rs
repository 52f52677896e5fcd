//! Opaque TCP forwarding: bytes both ways until both sides are done, half-close respected (an
//! EOF from one side is passed on as a write shutdown to the other while the reverse
//! direction keeps flowing). A connection silent in both directions for the idle timeout is
//! closed.

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
pub async fn forward<D, U>(down: D, up: U, idle: Duration) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut down = Activity {
        inner: down,
        start,
        last: last.clone(),
    };
    let mut up = Activity {
        inner: up,
        start,
        last: last.clone(),
    };
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

/// Records the time of the last byte read, for the idle timer.
struct Activity<S> {
    inner: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now().duration_since(self.start).as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, down) = tokio::io::duplex(1024);
        let (up, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(forward(down, up, Duration::from_secs(30)));
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
    async fn idle_pair_is_closed_after_the_idle_timeout() {
        let (_client, down) = tokio::io::duplex(64);
        let (up, _server) = tokio::io::duplex(64);
        let start = Instant::now();
        let err = forward(down, up, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(5));
    }
}
