//! Taking the proxy out again: what `bulwarkctl uninject` and `inject --upgrade` do to a pod
//! injected before. Injection records in the `bulwark.dev/restore` annotation what it cannot
//! tell from the pod afterwards (the probes as they were, the collections it created), so that
//! uninjecting gives back the app's pod as it was, while edits made to it since are kept.

use serde::{Deserialize, Serialize};

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{annotations, is_native_sidecar, probes, Error, Outcome, Skip};
use super::{CACHE_VOLUME, INIT_CONTAINER, PROXY_CONTAINER, XTABLES_VOLUME};

/// Created by injection, removed whole by uninjection when nothing else is left in it.
pub const ANNOTATIONS: &str = "metadata.annotations";
pub const INIT_CONTAINERS: &str = "spec.initContainers";
pub const VOLUMES: &str = "spec.volumes";
/// The annotation injection added (it keeps one the app set itself).
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The `bulwark.dev/restore` record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restore {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub probes: probes::Originals,
    /// Which of [`ANNOTATIONS`], [`INIT_CONTAINERS`], [`VOLUMES`], [`DEFAULT_CONTAINER`]
    /// injection created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
}

impl Restore {
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn created(&self, what: &str) -> bool {
        self.created.iter().any(|c| c == what)
    }
}

/// Whether the pod carries Bulwark's sidecar (or the mark of injection).
pub fn is_injected(meta: &ObjectMeta, spec: &PodSpec) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(annotations::STATUS)) || super::already_has_proxy(spec)
}

/// Removes what injection added. On an error, nothing is changed.
pub fn uninject(meta: &mut ObjectMeta, spec: &mut PodSpec) -> Result<Outcome, Error> {
    if !is_injected(meta, spec) {
        return Ok(Outcome::Unchanged(Skip::NotInjected));
    }
    let record = meta.annotations.as_ref().and_then(|a| a.get(annotations::RESTORE));
    let restore: Restore = match record {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("annotation {}: {e}", annotations::RESTORE)))?,
        None => Restore::default(),
    };
    let rewritten = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| {
        [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().flatten().any(|p| {
            p.http_get.as_ref().and_then(|h| h.path.as_deref()).is_some_and(|path| {
                path.starts_with(bulwark_policy::app_probe::PATH_PREFIX)
                    && !restore.probes.keys().any(|k| k.starts_with(&format!("{}/", c.name)))
            })
        })
    });
    if let Some(c) = rewritten {
        return Err(Error::Invalid(format!(
            "container {:?} has probes rewritten through the proxy and no {} record of what they were",
            c.name,
            annotations::RESTORE
        )));
    }

    let ours = |name: &str| name == PROXY_CONTAINER || name == INIT_CONTAINER;
    spec.containers.retain(|c| !ours(&c.name));
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| !ours(&c.name));
    }
    let sidecars = spec.init_containers.iter_mut().flatten().filter(|c| is_native_sidecar(c));
    for c in spec.containers.iter_mut().chain(sidecars) {
        probes::restore(c, &restore.probes);
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| v.name != XTABLES_VOLUME && v.name != CACHE_VOLUME);
    }
    if restore.created(INIT_CONTAINERS) && spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    if restore.created(VOLUMES) && spec.volumes.as_ref().is_some_and(Vec::is_empty) {
        spec.volumes = None;
    }
    if let Some(a) = meta.annotations.as_mut() {
        for key in [annotations::STATUS, annotations::PROXY_VERSION, annotations::RESTORE] {
            a.remove(key);
        }
        if restore.created(DEFAULT_CONTAINER) {
            a.remove(DEFAULT_CONTAINER);
        }
        if restore.created(ANNOTATIONS) && a.is_empty() {
            meta.annotations = None;
        }
    }
    Ok(Outcome::Uninjected)
}
