//! The client every adversarial test measures alongside the attack: it sends a request every
//! few milliseconds over its own keep-alive connection (reconnecting when it has to) and
//! counts how many were answered 200. One client must never cost another anything, so the
//! figure a test asserts is this client's success rate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;

#[derive(Default)]
struct Counts {
    sent: AtomicUsize,
    ok: AtomicUsize,
    stop: AtomicBool,
}

pub struct Legit {
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

/// What the legitimate client saw.
#[derive(Clone, Copy, Debug)]
pub struct Tally {
    pub sent: usize,
    pub ok: usize,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.ok as f64 / self.sent as f64
    }
}

impl Legit {
    /// Starts sending `GET path` to `addr`, each request bounded by a generous 5 s.
    pub fn start(addr: SocketAddr, path: &str) -> Legit {
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let path = path.to_string();
        let task = tokio::spawn(async move {
            let mut conn = None;
            while !c.stop.load(Ordering::SeqCst) {
                c.sent.fetch_add(1, Ordering::SeqCst);
                if conn.is_none() {
                    conn = crate::client::connect_h1(addr).await.ok();
                }
                let ok = match conn.as_mut() {
                    Some(send) => {
                        let req = crate::client::request(Method::GET, &path, &[("host", "legit.example")]);
                        let exchange = async {
                            let r = send.send_request(req).await.ok()?;
                            let status = r.status();
                            r.into_body().collect().await.ok()?;
                            Some(status)
                        };
                        tokio::time::timeout(Duration::from_secs(5), exchange).await == Ok(Some(StatusCode::OK))
                    }
                    None => false,
                };
                if ok {
                    c.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    conn = None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Legit { counts, task }
    }

    /// Stops the client, once it has sent at least 20 requests (waiting up to 10 s for them),
    /// and says how it went.
    pub async fn finish(self) -> Tally {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.counts.sent.load(Ordering::SeqCst) < 20 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.counts.stop.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        Tally { sent: self.counts.sent.load(Ordering::SeqCst), ok: self.counts.ok.load(Ordering::SeqCst) }
    }
}

/// Resident memory of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds process `pid` used so far (user + system), from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// What an attack cost the proxy: resident memory and CPU from `start` to `report`.
pub struct Meter {
    pid: u32,
    rss_kib: u64,
    cpu: f64,
    since: std::time::Instant,
}

impl Meter {
    pub fn start(pid: u32) -> Meter {
        Meter { pid, rss_kib: rss_kib(pid), cpu: cpu_seconds(pid), since: std::time::Instant::now() }
    }

    /// Prints what `what` cost and asserts it stayed under generous bounds: 64 MiB more
    /// memory, and CPU for at most 90% of the time it ran.
    pub fn report(&self, what: &str) {
        let grown_mib = rss_kib(self.pid).saturating_sub(self.rss_kib) / 1024;
        let cpu = cpu_seconds(self.pid) - self.cpu;
        let wall = self.since.elapsed().as_secs_f64();
        println!("{what}: proxy +{grown_mib} MiB, {cpu:.2} CPU s in {wall:.2} s");
        assert!(grown_mib < 64, "{what} grew the proxy by {grown_mib} MiB");
        assert!(cpu <= wall * 0.9 + 0.5, "{what} kept the proxy busy: {cpu:.2} CPU s in {wall:.2} s");
    }
}
