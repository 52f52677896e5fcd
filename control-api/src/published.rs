//! What discovery serves: every stored policy at one revision, parsed once when the revision
//! is made, shared by every stream through a watch channel. A stream selects its proxy's
//! policies from it and sends them without touching the store or its lock, so a change is
//! parsed once however many proxies are connected, and an apply never waits for pushes.

use std::sync::Arc;

use bulwark_policy::route::HostPattern;
use bulwark_policy::{Direction, ResiliencePolicy};
use bulwark_proto::v1 as pb;

/// One revision of the store, as discovery sends it, with what running experiments observe.
#[derive(Default)]
pub struct Published {
    pub revision: u64,
    entries: Vec<Entry>,
    observations: Vec<pb::Observation>,
    /// Counts changes of the observations alone, so that each makes a new version.
    observed_generation: u64,
}

struct Entry {
    policy: pb::Policy,
    /// An inbound policy with a service goes only to proxies serving that service; every other
    /// policy goes to every proxy, since any of them may call the service it protects.
    only_for: Option<HostPattern>,
}

impl Published {
    /// `policies` yields each stored policy's id ("namespace/name"), its stored text, the
    /// revision it was stored at and its parsed form.
    pub fn new<'a>(
        revision: u64,
        policies: impl IntoIterator<Item = (&'a str, &'a str, u64, &'a ResiliencePolicy)>,
    ) -> Published {
        let entries = policies
            .into_iter()
            .map(|(id, yaml, stored_at, doc)| {
                let (namespace, name) = id.split_once('/').unwrap_or(("default", id));
                let only_for = match (&doc.spec.target.direction, &doc.spec.target.service) {
                    (Direction::Inbound, Some(service)) => Some(HostPattern::parse(service)),
                    _ => None,
                };
                let policy = pb::Policy {
                    namespace: namespace.into(),
                    name: name.into(),
                    yaml: yaml.into(),
                    revision: stored_at,
                };
                Entry { policy, only_for }
            })
            .collect();
        Published { revision, entries, observations: Vec::new(), observed_generation: 0 }
    }

    /// The version proxies ack: the store's revision, and the observations' generation once
    /// an experiment has observed anything.
    pub fn version(&self) -> String {
        if self.observed_generation == 0 {
            self.revision.to_string()
        } else {
            format!("{}.{}", self.revision, self.observed_generation)
        }
    }

    /// The snapshot proxy `node` is sent.
    pub fn snapshot_for(&self, node: &pb::Node) -> pb::Snapshot {
        let policies = self
            .entries
            .iter()
            .filter(|e| e.only_for.as_ref().is_none_or(|p| p.matches(&node.service)))
            .map(|e| e.policy.clone())
            .collect::<Vec<pb::Policy>>();
        // Only what this proxy can measure: observations of the policies it has.
        let observations = self
            .observations
            .iter()
            .filter(|o| policies.iter().any(|p| format!("{}/{}", p.namespace, p.name) == o.policy))
            .cloned()
            .collect();
        pb::Snapshot { version: self.version(), policies, observations }
    }
}

/// The sending side, held by whoever changes the store or what experiments observe: every
/// publication carries both.
pub struct Publisher {
    tx: tokio::sync::watch::Sender<Arc<Published>>,
    observed: parking_lot::Mutex<(u64, Vec<pb::Observation>)>,
}

impl Publisher {
    pub fn new(store: &crate::store::Store) -> Publisher {
        let (tx, _) = tokio::sync::watch::channel(Arc::new(store.published()));
        Publisher { tx, observed: parking_lot::Mutex::new((0, Vec::new())) }
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    /// Publishes the store as it is now.
    pub fn publish(&self, store: &crate::store::Store) {
        let observed = self.observed.lock();
        let mut p = store.published();
        p.observed_generation = observed.0;
        p.observations = observed.1.clone();
        self.tx.send_replace(Arc::new(p));
    }

    /// Publishes new observations with the store as it is now.
    pub fn observe(&self, store: &crate::store::Store, observations: Vec<pb::Observation>) {
        {
            let mut observed = self.observed.lock();
            observed.0 += 1;
            observed.1 = observations;
        }
        self.publish(store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, direction: &str, service: &str) -> (String, ResiliencePolicy) {
        let yaml = format!("apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name} }}\nspec:\n  target: {{ service: \"{service}\", direction: {direction} }}\n");
        let doc = bulwark_policy::parse_documents(&yaml, "test").unwrap().remove(0);
        (yaml, doc)
    }

    #[test]
    fn inbound_policies_go_only_to_their_service_and_others_to_everyone() {
        let stored = [
            ("default/in", policy("in", "inbound", "payments")),
            ("default/wild", policy("wild", "inbound", "*.shop.svc")),
            ("default/out", policy("out", "outbound", "payments")),
        ];
        let published = Published::new(7, stored.iter().map(|(id, (yaml, doc))| (*id, yaml.as_str(), 3, doc)));
        let names = |service: &str| -> Vec<String> {
            let node = pb::Node { id: "n".into(), service: service.into(), ..Default::default() };
            let snap = published.snapshot_for(&node);
            assert_eq!(snap.version, "7");
            snap.policies.into_iter().map(|p| p.name).collect()
        };
        assert_eq!(names("payments"), ["in", "out"]);
        assert_eq!(names("checkout"), ["out"], "any proxy may call payments");
        assert_eq!(names("payments.shop.svc"), ["wild", "out"]);
    }
}
