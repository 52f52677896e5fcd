//! Clients that ask for a large body and never read it: the proxy holds a bounded buffer per
//! connection and lets TCP push back on the upstream, so its memory does not grow with what
//! the upstream sends.

use std::time::Duration;

use bulwark_e2e::legit::{rss_kib, Legit};
use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::upstream::Upstream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const READERS: usize = 200;
/// What 200 stalled readers may add to the proxy's resident memory at the default 128 KiB
/// connection buffer (docs/limits.md): each holds about three buffers (the upstream read
/// buffer, and the downstream write queue with the read buffer it still points into) and
/// ~70 KiB of connection state: ~450 KiB, measured +90 MiB for 200. The bound leaves room for
/// allocator slack; without the buffer limit it was +525 MiB.
const BOUND_MIB: u64 = 160;

#[tokio::test]
async fn never_reading_clients_of_a_50_mb_body_keep_memory_bounded() {
    let up = Upstream::start().await;
    let proxy = ProxyBuilder::new().listener("web", up.addr).start().await;
    let web = proxy.listener("web");
    let legit = Legit::start(web, "/");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(proxy.child.id());

    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut s = TcpStream::connect(web).await.unwrap();
        // A small receive buffer, as a stalled mobile client has.
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4096);
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nx-body-bytes: 50000000\r\n\r\n").await.unwrap();
        readers.push(s);
    }
    // Let every response fill what it can fill.
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(proxy.child.id()));
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    println!("{READERS} stalled readers: proxy RSS {} -> {} MiB (+{grown_mib} MiB)", before / 1024, peak / 1024);
    assert!(grown_mib < BOUND_MIB, "{READERS} stalled readers grew the proxy by {grown_mib} MiB");
    super::assert_unharmed(legit.finish().await);
    drop(readers);
}
