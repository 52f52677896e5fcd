//! Opaque TCP servers: an echo server (client speaks first) and a greeter that speaks first,
//! as MySQL, SMTP and Redis-sentinel style servers do.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const GREETING: &[u8] = b"220 bulwark-test ready\r\n";

pub struct TcpServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpServer {
    /// Echoes every byte; after the client's EOF, writes `bye` and closes (proves half-close).
    pub async fn echo() -> TcpServer {
        Self::start(false).await
    }

    /// Sends `GREETING` on connect, then echoes like `echo`.
    pub async fn server_first() -> TcpServer {
        Self::start(true).await
    }

    async fn start(greet: bool) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp server");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    if greet && s.write_all(GREETING).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.write_all(b"bye").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        TcpServer { addr, task }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
