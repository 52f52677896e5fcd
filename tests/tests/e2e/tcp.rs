//! Opaque TCP: detected when the first bytes are not HTTP, or when the client stays silent
//! (server-speaks-first protocols), with half-close passed through.

use std::time::Duration;

use bulwark_e2e::proxy::ProxyBuilder;
use bulwark_e2e::tcp::{TcpServer, GREETING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn tcp_echo_with_half_close() {
    let server = TcpServer::echo().await;
    let proxy = ProxyBuilder::new().listener("db", server.addr).start().await;
    let mut s = TcpStream::connect(proxy.listener("db")).await.unwrap();
    s.write_all(b"\x00\x01binary hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"\x00\x01binary hellobye", "echo, then the server's reply after our EOF");
    assert_eq!(proxy.metric("bulwark_downstream_connections_total", &[("protocol", "tcp")]).await, 1.0);
}

#[tokio::test]
async fn server_first_protocol_does_not_hang() {
    let server = TcpServer::server_first().await;
    let proxy = ProxyBuilder::new()
        .listener("smtp", server.addr)
        .extra("detection: { timeout: 300ms, serverFirstPorts: [] }")
        .start()
        .await;
    let mut s = TcpStream::connect(proxy.listener("smtp")).await.unwrap();
    let mut buf = vec![0u8; GREETING.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("greeting arrives after detection gives up")
        .unwrap();
    assert_eq!(buf, GREETING);
    s.write_all(b"EHLO x\r\n").await.unwrap();
    let mut echo = vec![0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(echo, b"EHLO x\r\n");

    // Every wait is counted by port; the log says once what to change.
    let mut again = TcpStream::connect(proxy.listener("smtp")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), again.read_exact(&mut buf)).await.unwrap().unwrap();
    let port = server.addr.port().to_string();
    let waits = proxy.metric("bulwark_detection_timeouts_total", &[("listener", "smtp"), ("port", &port)]).await;
    assert_eq!(waits, 2.0);
    let logs = proxy.logs();
    assert_eq!(logs.matches(&format!("add {port} to detection.serverFirstPorts")).count(), 1, "{logs}");
}

#[tokio::test]
async fn server_first_port_skips_detection() {
    let server = TcpServer::server_first().await;
    let proxy = ProxyBuilder::new()
        .listener("mysql", server.addr)
        // A long detection timeout that the skip list must bypass.
        .extra(&format!("detection: {{ timeout: 30s, serverFirstPorts: [{}] }}", server.addr.port()))
        .start()
        .await;
    let mut s = TcpStream::connect(proxy.listener("mysql")).await.unwrap();
    let mut buf = vec![0u8; GREETING.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await.expect("no detection wait").unwrap();
    assert_eq!(buf, GREETING);
}
