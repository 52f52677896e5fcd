//! `bulwark.v1.PolicyDiscovery`: each proxy opens one stream, says who it is (Node), and is
//! sent a full snapshot at once and after every change to the store. Each stream has a buffer
//! of one snapshot and watches the store's revision, so a slow or dead proxy only ever gets the
//! newest snapshot and never delays the others. Acks and Nacks are kept per proxy for
//! `ListProxies`.
//!
//! Which policies a proxy receives: an inbound policy with a `service` goes only to proxies
//! serving that service (their Node.service); every other policy goes to every proxy, since
//! any of them may call the service it protects.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_policy::route::HostPattern;
use bulwark_policy::Direction;
use bulwark_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::store::Store;

/// What the control plane knows about each proxy, by Node.id.
#[derive(Default)]
pub struct Proxies {
    by_id: Mutex<BTreeMap<String, pb::ProxyStatus>>,
}

impl Proxies {
    pub fn list(&self) -> Vec<pb::ProxyStatus> {
        self.by_id.lock().values().cloned().collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut pb::ProxyStatus)) {
        if let Some(s) = self.by_id.lock().get_mut(id) {
            f(s);
        }
    }
}

pub struct Discovery {
    store: Arc<tokio::sync::Mutex<Store>>,
    changed: watch::Receiver<u64>,
    proxies: Arc<Proxies>,
}

impl Discovery {
    pub fn new(
        store: Arc<tokio::sync::Mutex<Store>>,
        changed: watch::Receiver<u64>,
        proxies: Arc<Proxies>,
    ) -> Discovery {
        Discovery { store, changed, proxies }
    }
}

/// The snapshot for `node` at the store's current revision.
async fn snapshot_for(store: &tokio::sync::Mutex<Store>, node: &pb::Node) -> pb::Snapshot {
    let store = store.lock().await;
    let policies = store
        .list()
        .filter(|(_, s)| selects(&s.yaml, node))
        .map(|(id, s)| {
            let (namespace, name) = id.split_once('/').unwrap_or(("default", id));
            pb::Policy { namespace: namespace.into(), name: name.into(), yaml: s.yaml.clone(), revision: s.revision }
        })
        .collect();
    pb::Snapshot { version: store.revision().to_string(), policies }
}

fn selects(yaml: &str, node: &pb::Node) -> bool {
    let Ok(docs) = bulwark_policy::parse_documents(yaml, "store") else { return true };
    docs.iter().all(|d| match (&d.spec.target.direction, &d.spec.target.service) {
        (Direction::Inbound, Some(service)) => HostPattern::parse(service).matches(&node.service),
        _ => true,
    })
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
        self.proxies.by_id.lock().insert(
            id.clone(),
            pb::ProxyStatus { node: Some(node.clone()), connected_since: since, connected: true, ..Default::default() },
        );
        tracing::info!(proxy = %id, service = %node.service, "proxy connected");

        let (tx, rx) = mpsc::channel(1);
        let (store, proxies, mut changed) = (self.store.clone(), self.proxies.clone(), self.changed.clone());
        // Pushes: the newest snapshot whenever the store changes; never more than one queued.
        let push_node = node.clone();
        let pusher = tokio::spawn(async move {
            loop {
                changed.borrow_and_update();
                if tx.send(Ok(snapshot_for(&store, &push_node).await)).await.is_err() {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
        // Acks and Nacks, until the proxy goes away.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.kind {
                    Some(pb::discovery_request::Kind::Ack(a)) => proxies.update(&id, |s| s.acked_version = a.version),
                    Some(pb::discovery_request::Kind::Nack(n)) => {
                        let error = n
                            .errors
                            .iter()
                            .map(|e| format!("{}: {}: {}", e.policy, e.path, e.message))
                            .collect::<Vec<_>>()
                            .join("; ");
                        tracing::warn!(proxy = %id, version = %n.version, %error, "proxy rejected a snapshot");
                        proxies.update(&id, |s| {
                            s.nacked_version = n.version;
                            s.last_error = error;
                        });
                    }
                    _ => {}
                }
            }
            pusher.abort();
            proxies.update(&id, |s| s.connected = false);
            tracing::info!(proxy = %id, "proxy disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(direction: &str, service: &str) -> String {
        format!("apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: p }}\nspec:\n  target: {{ service: \"{service}\", direction: {direction} }}\n")
    }

    #[test]
    fn inbound_policies_go_only_to_their_service_and_others_to_everyone() {
        let node = |service: &str| pb::Node { id: "n".into(), service: service.into(), ..Default::default() };
        assert!(selects(&policy("inbound", "payments"), &node("payments")));
        assert!(!selects(&policy("inbound", "payments"), &node("checkout")));
        assert!(selects(&policy("inbound", "*.shop.svc"), &node("payments.shop.svc")));
        assert!(selects(&policy("outbound", "payments"), &node("checkout")), "any proxy may call payments");
    }
}
