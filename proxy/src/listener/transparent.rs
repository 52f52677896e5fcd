//! The original destination of a connection captured by an iptables REDIRECT, read with
//! `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6) from the accepted socket.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::SockRef;
use tokio::net::TcpStream;

pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    // A dual-stack `[::]` listener sees IPv4 clients as v4-mapped; their NAT entry is IPv4.
    let v4 = match stream.local_addr()?.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let addr = if v4 { sock.original_dst_v4()? } else { sock.original_dst_v6()? };
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not an IP address"))
}

/// A connection made straight to the capture port (not redirected) reports the listener's
/// own address as its original destination; forwarding it would loop back into the proxy.
pub fn is_loop(original: SocketAddr, local: SocketAddr) -> bool {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (original, local) = (canonical(original), canonical(local));
    original == local || (original.port() == local.port() && original.ip().is_loopback())
}
