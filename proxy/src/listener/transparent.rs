//! The original destination of a connection captured by an iptables REDIRECT, read with
//! `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) from the accepted socket.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

/// A connection made straight to the capture port (not redirected) reports the listener's
/// own address as its original destination; forwarding it would loop back into the proxy.
pub fn is_loop(original: SocketAddr, local: SocketAddr) -> bool {
    original == local || (original.port() == local.port() && original.ip().is_loopback())
}
