//! Servers nobody here wrote, started for a test on a free port: nginx (as an HTTP/2 cleartext
//! upstream) and Python's `http.server` (a plain HTTP/1.1-only upstream). Each start returns
//! None, after printing why, when the program is not installed, so the test can skip.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TempDir;

/// A child process killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::proxy::free_port()))
}

async fn started(addr: SocketAddr, child: Child, dir: TempDir, what: &str) -> Server {
    let server = Server { addr, child, _dir: dir };
    crate::wait_for(&format!("{what} listening on {addr}"), Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    server
}

/// nginx serving h2c (HTTP/2 with prior knowledge) with its defaults otherwise — notably
/// `keepalive_requests 1000` (a GOAWAY after every 1,000 requests on a connection) and
/// `http2_max_concurrent_streams 128`. `/` answers 200 "hello from nginx"; `/slow.bin` is
/// 64 KiB sent at 32 KiB/s, so its stream stays open about two seconds.
pub async fn nginx_h2c() -> Option<Server> {
    if !have("nginx") {
        println!("SKIPPED: nginx is not installed (scripts/deps.sh installs it as root)");
        return None;
    }
    let dir = TempDir::new("nginx");
    let addr = free_addr();
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  server {{\n    listen {addr} http2;\n    \
         location / {{ return 200 \"hello from nginx\\n\"; }}\n    \
         location = /slow.bin {{ root {d}; limit_rate 32k; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.path().join("slow.bin"), vec![b'x'; 64 * 1024]).expect("write slow.bin");
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Some(started(addr, child, dir, "nginx").await)
}

/// Python's `http.server` speaking HTTP/1.1 (keep-alive) and nothing else: it answers an
/// HTTP/2 preface with 400 and serves `dir`'s files.
pub async fn python_http1(files: &[(&str, &str)]) -> Option<Server> {
    if !have("python3") {
        println!("SKIPPED: python3 is not installed");
        return None;
    }
    let dir = TempDir::new("pyhttp");
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).expect("write served file");
    }
    let addr = free_addr();
    let script = "import http.server, sys\n\
        class H(http.server.SimpleHTTPRequestHandler):\n    protocol_version = 'HTTP/1.1'\n    \
        def log_message(self, *a): pass\n\
        http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), \
        lambda *a: H(*a, directory=sys.argv[2])).serve_forever()\n";
    let child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(addr.port().to_string())
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3");
    Some(started(addr, child, dir, "python http.server").await)
}
