//! The access log: one JSON line per request on stdout, off by default, sampled. Lines are
//! handed to a writer thread through a bounded queue; when stdout cannot keep up, lines are
//! dropped and counted (`bulwark_access_log_dropped_total`), never waited for, so logging
//! cannot slow traffic. A line is written when the response body ends, so its duration and
//! byte count are the whole exchange's.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

const QUEUE: usize = 4096;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub direction: &'static str,
    pub listener: String,
    pub policy: String,
    pub route: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub bytes: u64,
    pub retries: u32,
    /// What stages in dry-run would have refused, comma-separated reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_refuse: Option<String>,
    /// The refusal answered with the route's fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'static str>,
    /// The request's priority class, when its route has classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// The client went away before the response body ended.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

pub struct AccessLog {
    tx: SyncSender<String>,
    sample: f64,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread. `sample` is the share of requests logged, in [0, 1].
    pub fn start(sample: f64, dropped: Counter) -> AccessLog {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush when the queue is drained, not per line.
                    while let Ok(more) = rx.try_recv() {
                        let _ = writeln!(out, "{more}");
                    }
                    let _ = out.flush();
                }
            })
            .expect("spawn the access-log thread");
        AccessLog { tx, sample: sample.clamp(0.0, 1.0), dropped }
    }

    /// Whether this request is logged (drawn per request).
    pub fn sampled(&self) -> bool {
        self.sample >= 1.0 || fastrand::f64() < self.sample
    }

    pub fn write(&self, entry: &Entry) {
        let line = serde_json::to_string(entry).expect("an entry serializes");
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// Now, as RFC 3339 with milliseconds.
pub fn now() -> String {
    bulwark_policy::faults::format_rfc3339(SystemTime::now())
}

/// The trace id of an incoming W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "00000000000000000000000000000000")
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trace_id_of_a_traceparent() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        h.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_id(&h), None, "the all-zero id is invalid");
        h.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(trace_id(&h), None);
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = now();
        assert_eq!(t.len(), "2026-11-23T10:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z'));
    }
}
