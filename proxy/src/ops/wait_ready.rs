//! `bulwark-proxy wait-ready`: polls the proxy's `/ready` until it answers 200. Run as the
//! proxy container's postStart hook where native sidecars are not available: kubelet starts the
//! next container only when the hook returns, so the app never starts before its proxy.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(200);

/// Waits for `url` (plain `http://host:port/path`) to answer 200 within `timeout`.
pub fn wait(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("--url {url:?}: only http:// is supported"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get(authority, path) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("answered {status}"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("{url} not ready after {timeout:?}: {last}"));
        }
        std::thread::sleep(POLL);
    }
}

fn get(authority: &str, path: &str) -> Result<u16, String> {
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| "malformed answer".to_string())
}
