//! What discovery serves: every stored policy at one revision, parsed once when the revision
//! is made, shared by every stream through a watch channel. A stream selects its proxy's
//! policies from it and sends them without touching the store or its lock, so a change is
//! parsed once however many proxies are connected, and an apply never waits for pushes.

use std::sync::Arc;

use bulwark_policy::route::HostPattern;
use bulwark_policy::{Direction, ResiliencePolicy};
use bulwark_proto::v1 as pb;

/// One revision of the store, as discovery sends it.
#[derive(Default)]
pub struct Published {
    pub revision: u64,
    entries: Vec<Entry>,
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
        Published { revision, entries }
    }

    /// The snapshot proxy `node` is sent.
    pub fn snapshot_for(&self, node: &pb::Node) -> pb::Snapshot {
        let policies = self
            .entries
            .iter()
            .filter(|e| e.only_for.as_ref().is_none_or(|p| p.matches(&node.service)))
            .map(|e| e.policy.clone())
            .collect();
        pb::Snapshot { version: self.revision.to_string(), policies }
    }
}

/// The sending side, held by whoever changes the store.
pub type Publisher = tokio::sync::watch::Sender<Arc<Published>>;

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
