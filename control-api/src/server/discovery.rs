//! `bulwark.v1.PolicyDiscovery`: each proxy opens one stream, says who it is (Node), and is
//! sent a full snapshot at once and after every change to the store. Each stream has a buffer
//! of one snapshot and watches the store's revision, so a slow or dead proxy only ever gets the
//! newest snapshot and never delays the others. Acks and Nacks are kept per proxy for
//! `ListProxies`.
//!
//! What is sent comes from `Published`, the store's revision parsed once; a stream never
//! takes the store's lock.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bulwark_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::published::Published;

/// A proxy that left is listed this long, then forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// At most this many proxies that left are remembered (the oldest departures go first), so a
/// fleet that churns its ids cannot grow the control plane without bound.
pub const MAX_DEPARTED: usize = 10_000;

/// What the control plane knows about each proxy, by Node.id.
#[derive(Default)]
pub struct Proxies {
    inner: Mutex<Known>,
    sessions: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Known {
    by_id: BTreeMap<String, Entry>,
    /// Proxies that left, oldest departure first: (when, session) → id.
    departures: BTreeMap<(Instant, u64), String>,
}

struct Entry {
    status: pb::ProxyStatus,
    /// The stream this record belongs to: a reconnect with the same id replaces the record,
    /// and the old stream's end must not mark the new one disconnected.
    session: u64,
    departed: Option<Instant>,
}

impl Proxies {
    pub fn list(&self) -> Vec<pb::ProxyStatus> {
        self.inner.lock().by_id.values().map(|e| e.status.clone()).collect()
    }

    /// Records a new stream of proxy `id`; returns its session.
    fn connected(&self, id: &str, status: pb::ProxyStatus, now: Instant) -> u64 {
        let session = self.sessions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut known = self.inner.lock();
        let entry = Entry { status, session, departed: None };
        if let Some(old) = known.by_id.insert(id.to_string(), entry) {
            if let Some(t) = old.departed {
                known.departures.remove(&(t, old.session));
            }
        }
        known.forget(now);
        session
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut pb::ProxyStatus)) {
        if let Some(e) = self.inner.lock().by_id.get_mut(id).filter(|e| e.session == session) {
            f(&mut e.status);
        }
    }

    fn departed(&self, id: &str, session: u64, now: Instant) {
        let mut known = self.inner.lock();
        let Some(e) = known.by_id.get_mut(id).filter(|e| e.session == session) else { return };
        e.status.connected = false;
        e.departed = Some(now);
        known.departures.insert((now, session), id.to_string());
        known.forget(now);
    }
}

impl Known {
    /// Drops records of proxies gone longer than `FORGET_AFTER`, and the oldest departures
    /// beyond `MAX_DEPARTED`; each costs O(log n).
    fn forget(&mut self, now: Instant) {
        while let Some((&(when, _), _)) = self.departures.first_key_value() {
            if now.saturating_duration_since(when) < FORGET_AFTER && self.departures.len() <= MAX_DEPARTED {
                return;
            }
            if let Some((_, id)) = self.departures.pop_first() {
                self.by_id.remove(&id);
            }
        }
    }
}

pub struct Discovery {
    published: watch::Receiver<Arc<Published>>,
    proxies: Arc<Proxies>,
    experiments: Arc<crate::experiments::Experiments>,
}

impl Discovery {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        proxies: Arc<Proxies>,
        experiments: Arc<crate::experiments::Experiments>,
    ) -> Discovery {
        Discovery { published, proxies, experiments }
    }
}

/// How long a new discovery stream may take to send its Node message.
pub const FIRST_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl pb::policy_discovery_server::PolicyDiscovery for Discovery {
    type StreamStream = SnapshotStream;

    async fn stream(&self, req: Request<Streaming<pb::DiscoveryRequest>>) -> Result<Response<SnapshotStream>, Status> {
        let mut inbound = req.into_inner();
        // A stream that never says who it is would hold its slot for good.
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, inbound.message()).await.map_err(|_| {
            Status::deadline_exceeded(format!("no Node message within {FIRST_MESSAGE_TIMEOUT:?} of opening the stream"))
        })?;
        let node = match first? {
            Some(pb::DiscoveryRequest { kind: Some(pb::discovery_request::Kind::Node(n)) }) if !n.id.is_empty() => n,
            _ => return Err(Status::invalid_argument("the first message must be a Node with an id")),
        };
        let id = node.id.clone();
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let session = self.proxies.connected(
            &id,
            pb::ProxyStatus { node: Some(node.clone()), connected_since: since, connected: true, ..Default::default() },
            Instant::now(),
        );
        tracing::info!(proxy = %id, service = %node.service, "proxy connected");

        let (tx, rx) = mpsc::channel(1);
        let (proxies, mut published) = (self.proxies.clone(), self.published.clone());
        let experiments = self.experiments.clone();
        // Pushes: the newest snapshot whenever the store changes; never more than one queued.
        let push_node = node.clone();
        let pusher = tokio::spawn(async move {
            loop {
                let current = published.borrow_and_update().clone();
                if tx.send(Ok(current.snapshot_for(&push_node))).await.is_err() {
                    return;
                }
                if published.changed().await.is_err() {
                    return;
                }
            }
        });
        // Acks and Nacks, until the proxy goes away.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.kind {
                    Some(pb::discovery_request::Kind::Ack(a)) => {
                        proxies.update(&id, session, |s| s.acked_version = a.version)
                    }
                    Some(pb::discovery_request::Kind::Nack(n)) => {
                        let error = n
                            .errors
                            .iter()
                            .map(|e| format!("{}: {}: {}", e.policy, e.path, e.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        tracing::warn!(proxy = %id, version = %n.version, %error, "proxy rejected a snapshot");
                        proxies.update(&id, session, |s| {
                            s.nacked_version = n.version;
                            s.last_error = error;
                        });
                    }
                    Some(pb::discovery_request::Kind::Measurements(m)) => experiments.measured(&id, &m),
                    _ => {}
                }
            }
            pusher.abort();
            proxies.departed(&id, session, Instant::now());
            tracing::info!(proxy = %id, "proxy disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::ProxyStatus {
        pb::ProxyStatus { connected: true, ..Default::default() }
    }

    #[test]
    fn proxies_that_left_are_forgotten_after_an_hour_and_beyond_the_cap() {
        let proxies = Proxies::default();
        let t0 = Instant::now();
        let gone = proxies.connected("gone", status(), t0);
        proxies.departed("gone", gone, t0);
        proxies.connected("here", status(), t0);
        assert_eq!(proxies.list().len(), 2, "a departed proxy is listed for a while");
        proxies.connected("late", status(), t0 + FORGET_AFTER);
        let ids: Vec<String> = proxies.inner.lock().by_id.keys().cloned().collect();
        assert_eq!(ids, ["here", "late"], "forgotten an hour after it left; connected ones stay");

        for i in 0..MAX_DEPARTED + 5 {
            let id = format!("churn-{i:05}");
            let s = proxies.connected(&id, status(), t0 + Duration::from_millis(i as u64));
            proxies.departed(&id, s, t0 + Duration::from_millis(i as u64));
        }
        proxies.connected("trigger", status(), t0 + Duration::from_secs(20));
        let known = proxies.inner.lock();
        assert_eq!(known.by_id.values().filter(|e| e.departed.is_some()).count(), MAX_DEPARTED);
        assert_eq!(known.departures.len(), MAX_DEPARTED);
        assert!(!known.by_id.contains_key("churn-00000"), "the oldest departures go first");
    }

    #[test]
    fn an_old_stream_ending_does_not_mark_its_reconnected_proxy_gone() {
        let proxies = Proxies::default();
        let now = Instant::now();
        let old = proxies.connected("p", status(), now);
        let new = proxies.connected("p", status(), now);
        proxies.departed("p", old, now);
        proxies.update("p", old, |s| s.acked_version = "stale".into());
        let listed = proxies.list();
        assert!(listed[0].connected, "the reconnected stream is still connected");
        assert_eq!(listed[0].acked_version, "", "and the old stream's acks do not land on it");
        proxies.departed("p", new, now);
        assert!(!proxies.list()[0].connected);
    }
}
