//! The control plane's durable policy store. Every accepted change is written whole to a new
//! file, flushed to disk, and renamed over the previous one (then the directory is flushed),
//! so a crash or `kill -9` at any moment leaves either the old state or the new one, never a
//! torn file, and a change is acknowledged only once it is on disk.
//!
//! Changes are validated with `bulwark-policy`, the proxies' own code, against every policy
//! already stored (so duplicate names and cross-policy conflicts are caught too); a refused
//! change leaves the store as it was and returns every error with its field path.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulwark_policy::document::{MAX_DOCUMENT_BYTES, MAX_SNAPSHOT_BYTES};
use bulwark_policy::{parse_documents, ResiliencePolicy, Snapshot, ValidationError};
use serde::{Deserialize, Serialize};

use crate::published::Published;

const FILE: &str = "policies.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub yaml: String,
    pub revision: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    revision: u64,
    /// By "namespace/name".
    policies: BTreeMap<String, Stored>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    pub kind: ChangeKind,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("refused: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("cannot write the store: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Store {
    dir: PathBuf,
    state: State,
    /// Every stored policy parsed, by id: each text is parsed once, when it is stored (or when
    /// the store is opened), not again for every later change or every proxy.
    parsed: BTreeMap<String, Arc<ResiliencePolicy>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        let mut parsed = BTreeMap::new();
        for (id, stored) in &state.policies {
            // Kept on disk but not served: every apply names it until it is deleted or replaced
            // (a newer release may check what an older one accepted).
            match parse_one(&stored.yaml, id) {
                Ok(doc) => {
                    parsed.insert(id.clone(), Arc::new(doc));
                }
                Err(errors) => {
                    for e in errors {
                        tracing::error!(policy = %id, error = %e, "a stored policy does not validate; it is not served");
                    }
                }
            }
        }
        Ok(Store { dir: dir.to_path_buf(), state, parsed })
    }

    pub fn revision(&self) -> u64 {
        self.state.revision
    }

    /// A stored policy as it is served, parsed.
    pub fn doc(&self, id: &str) -> Option<&ResiliencePolicy> {
        self.parsed.get(id).map(|d| &**d)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, id: &str) -> Option<&Stored> {
        self.state.policies.get(id)
    }

    pub fn list(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.state.policies.iter()
    }

    /// The current revision, as discovery serves it.
    pub fn published(&self) -> Published {
        Published::new(
            self.state.revision,
            self.state.policies.iter().filter_map(|(id, s)| {
                self.parsed.get(id).map(|doc| (id.as_str(), s.yaml.as_str(), s.revision, &**doc))
            }),
        )
    }

    /// Creates or replaces the policies of `texts`. With `dry_run`, only reports.
    pub fn apply(&mut self, texts: &[String], dry_run: bool) -> Result<Vec<Change>, StoreError> {
        let mut incoming = Vec::new();
        let mut errors = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let label = format!("document {}", i + 1);
            match parse_documents(t, &label) {
                // Applying nothing is a mistake (the wrong file, an empty pipe), not a no-op.
                Ok(d) if d.is_empty() => errors.push(ValidationError {
                    policy: label,
                    path: String::new(),
                    message: "there is no policy in it (it is empty, or only comments and `---`)".into(),
                }),
                Ok(mut d) => incoming.append(&mut d),
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut next = self.state.clone();
        let mut changes = Vec::new();
        let revision = self.state.revision + 1;
        for doc in incoming {
            let id = doc.id();
            let yaml = match stored_text(&doc, &id) {
                Ok(y) => y,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let kind = match next.policies.get(&id) {
                None => ChangeKind::Created,
                Some(_) if self.parsed.get(&id).is_some_and(|old| **old == doc) => ChangeKind::Unchanged,
                Some(_) => ChangeKind::Updated,
            };
            if kind != ChangeKind::Unchanged {
                next.policies.insert(id.clone(), Stored { yaml, revision });
            }
            changes.retain(|c: &Change| c.id != id);
            changes.push(Change { id, kind });
        }
        if !errors.is_empty() {
            // Report the documents that did parse too, so one round trip shows every problem.
            if let Err(StoreError::Invalid(mut more)) = self.commit(next, changes, true) {
                errors.append(&mut more);
            }
            return Err(StoreError::Invalid(errors));
        }
        self.commit(next, changes, dry_run)
    }

    pub fn delete(&mut self, id: &str) -> Result<Vec<Change>, StoreError> {
        let mut next = self.state.clone();
        if next.policies.remove(id).is_none() {
            return Err(StoreError::NotFound(format!("policy {id}")));
        }
        self.commit(next, vec![Change { id: id.to_string(), kind: ChangeKind::Deleted }], false)
    }

    /// Replaces a stored policy's document with `edit` applied to it.
    pub fn edit(
        &mut self,
        id: &str,
        edit: impl FnOnce(&mut ResiliencePolicy) -> Result<(), String>,
    ) -> Result<Vec<Change>, StoreError> {
        let mut doc =
            ResiliencePolicy::clone(self.parsed.get(id).ok_or_else(|| StoreError::NotFound(format!("policy {id}")))?);
        edit(&mut doc).map_err(StoreError::NotFound)?;
        let text = stored_text(&doc, id).map_err(|e| StoreError::Invalid(vec![e]))?;
        self.apply(&[text], false)
    }

    fn commit(&mut self, mut next: State, changes: Vec<Change>, dry_run: bool) -> Result<Vec<Change>, StoreError> {
        // What is stored is what every proxy receives: it must obey the limits as stored (YAML
        // aliases and flow style expand when a policy is written back), or every later push
        // would fail at the proxies.
        let mut errors = Vec::new();
        let mut parsed = BTreeMap::new();
        let mut total = 0usize;
        for (id, stored) in &next.policies {
            total = total.saturating_add(stored.yaml.len());
            if stored.yaml.len() > MAX_DOCUMENT_BYTES {
                errors.push(ValidationError {
                    policy: id.clone(),
                    path: String::new(),
                    message: format!(
                        "stored, it is {} bytes (aliases and flow style expanded); the limit is {MAX_DOCUMENT_BYTES}",
                        stored.yaml.len()
                    ),
                });
                continue;
            }
            // A text already stored was parsed when it was; only new texts are parsed here.
            let known =
                self.state.policies.get(id).filter(|old| old.yaml == stored.yaml).and_then(|_| self.parsed.get(id));
            match known {
                Some(doc) => {
                    parsed.insert(id.clone(), doc.clone());
                }
                None => match parse_one(&stored.yaml, id) {
                    Ok(doc) => {
                        parsed.insert(id.clone(), Arc::new(doc));
                    }
                    Err(mut e) => errors.append(&mut e),
                },
            }
        }
        if total > MAX_SNAPSHOT_BYTES {
            errors.push(ValidationError {
                policy: "(store)".into(),
                path: String::new(),
                message: format!("every policy together would be {total} bytes; the limit is {MAX_SNAPSHOT_BYTES}"),
            });
        }
        if let Err(mut e) = Snapshot::compile("check", parsed.values().map(|d| ResiliencePolicy::clone(d)).collect()) {
            errors.append(&mut e);
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        if dry_run || changes.iter().all(|c| c.kind == ChangeKind::Unchanged) {
            return Ok(changes);
        }
        next.revision = self.state.revision + 1;
        self.write(&next)?;
        self.state = next;
        self.parsed = parsed;
        Ok(changes)
    }

    /// Write-ahead to a temporary file, flush, rename over the store, flush the directory.
    fn write(&self, state: &State) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

/// The text a policy is stored as.
fn stored_text(doc: &ResiliencePolicy, id: &str) -> Result<String, ValidationError> {
    yaml_serde::to_string(doc).map_err(|e| ValidationError {
        policy: id.into(),
        path: String::new(),
        message: format!("cannot be stored: {e}"),
    })
}

/// A stored text holds exactly one policy.
fn parse_one(yaml: &str, id: &str) -> Result<ResiliencePolicy, Vec<ValidationError>> {
    let mut docs = parse_documents(yaml, id)?;
    match (docs.pop(), docs.is_empty()) {
        (Some(doc), true) => Ok(doc),
        _ => Err(vec![ValidationError {
            policy: id.into(),
            path: String::new(),
            message: "a stored policy must be exactly one document".into(),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, timeout: &str) -> String {
        format!("apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  target: {{ service: {name}.shop }}\n  defaults: {{ timeout: {{ request: {timeout} }} }}\n")
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn applies_survive_reopening_and_report_what_changed() {
        let d = dir("reopen");
        let mut s = Store::open(&d).unwrap();
        let c = s.apply(&[policy("a", "1s"), policy("b", "1s")], false).unwrap();
        assert_eq!(c.iter().map(|c| c.kind).collect::<Vec<_>>(), [ChangeKind::Created, ChangeKind::Created]);
        let c = s.apply(&[policy("a", "2s"), policy("b", "1s")], false).unwrap();
        assert_eq!(c.iter().map(|c| c.kind).collect::<Vec<_>>(), [ChangeKind::Updated, ChangeKind::Unchanged]);
        assert_eq!(s.revision(), 2);
        let again = Store::open(&d).unwrap();
        assert_eq!(again.revision(), 2);
        assert!(again.get("shop/a").unwrap().yaml.contains("request: 2s"));
        assert_eq!(again.get("shop/a").unwrap().revision, 2);
        assert_eq!(again.get("shop/b").unwrap().revision, 1);
    }

    #[test]
    fn a_refused_apply_changes_nothing_and_names_every_field() {
        let d = dir("refused");
        let mut s = Store::open(&d).unwrap();
        s.apply(&[policy("a", "1s")], false).unwrap();
        let err = s.apply(&[policy("a", "0s"), policy("b", "3x")], false).unwrap_err();
        let StoreError::Invalid(errors) = err else { panic!("{err}") };
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|e| e.contains("spec.defaults.timeout.request")), "{text:?}");
        assert_eq!(s.revision(), 1);
        assert!(Store::open(&d).unwrap().get("shop/a").unwrap().yaml.contains("request: 1s"));
    }

    /// Small as written, over the limit as stored: one header list anchored once and
    /// referenced by every route.
    fn expanding(name: &str) -> String {
        let value = "v".repeat(4000);
        let mut p = format!(
            "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  target: {{ service: {name}.shop }}\n  routes:\n"
        );
        let headers: Vec<String> = (0..4).map(|i| format!("{{ name: x-{i}, exact: \"{value}\" }}")).collect();
        p.push_str(&format!("  - name: r0\n    match: {{ pathPrefix: /r0, headers: &h [{}] }}\n", headers.join(", ")));
        for i in 1..100 {
            p.push_str(&format!("  - name: r{i}\n    match: {{ pathPrefix: /r{i}, headers: *h }}\n"));
        }
        p
    }

    #[test]
    fn a_policy_over_the_limit_as_stored_is_refused_and_later_applies_still_work() {
        let d = dir("expanding");
        let mut s = Store::open(&d).unwrap();
        let text = expanding("big");
        assert!(text.len() < 64 * 1024, "written small: {} bytes", text.len());
        let err = s.apply(&[text], false).unwrap_err();
        let StoreError::Invalid(errors) = err else { panic!("{err}") };
        assert!(
            errors.iter().any(|e| e.policy == "shop/big"
                && e.message.contains("stored, it is")
                && e.message.contains("the limit is 1048576")),
            "{errors:?}"
        );
        assert!(s.get("shop/big").is_none(), "nothing was stored");
        s.apply(&[policy("a", "1s")], false).unwrap();
        let served = s.published().snapshot_for(&bulwark_proto::v1::Node::default());
        assert_eq!(served.policies.len(), 1, "a later apply is stored and served");
    }

    #[test]
    fn dry_runs_store_nothing_and_deletes_are_durable() {
        let d = dir("dry");
        let mut s = Store::open(&d).unwrap();
        let c = s.apply(&[policy("a", "1s")], true).unwrap();
        assert_eq!(c[0].kind, ChangeKind::Created);
        assert_eq!(s.revision(), 0);
        s.apply(&[policy("a", "1s")], false).unwrap();
        s.delete("shop/a").unwrap();
        assert!(matches!(s.delete("shop/a"), Err(StoreError::NotFound(_))));
        assert!(Store::open(&d).unwrap().get("shop/a").is_none());
    }
}
