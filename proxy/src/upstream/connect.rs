//! Opening a TCP connection to an upstream within the connect timeout, trying each resolved
//! address in turn, with the socket options every upstream connection gets.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Elapsed { addr: String, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("no address to connect to: {0}")]
    NoAddress(String),
}

pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                configure(&stream);
                return Ok((stream, *addr));
            }
            Ok(Err(source)) => last = Some(ConnectError::Io { addr: addr.to_string(), source }),
            Err(_) => return Err(ConnectError::Elapsed { addr: addr.to_string(), timeout }),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoAddress("resolution returned nothing".into())))
}

/// No Nagle delay (the proxy writes whole messages), and keepalive probes so a silently
/// vanished peer is noticed even on an idle pooled connection.
pub fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka =
        TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10)).with_retries(3);
    let _ = SockRef::from(stream).set_tcp_keepalive(&ka);
}
