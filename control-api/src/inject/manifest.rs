//! `bulwarkctl inject` / `uninject`: injection into a multi-document YAML stream, offline. Pods and the pod
//! templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers,
//! Jobs and CronJobs (and `List`s of them) are injected; every other document is written back
//! byte for byte. An injected document gets the injection's JSONPatch applied to it as read
//! (`yaml_doc`), so its key order and fields Bulwark does not know survive, and is written so
//! that YAML 1.1 readers (kubectl) read the same strings.

use json_patch::PatchOperation;
use serde_json::Value;

use super::{act_json, yaml_doc, Action, Outcome, Values};

/// What happened to one object of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `deployment/web`, `pod/debug`.
    pub object: String,
    /// None: not a workload, left untouched.
    pub outcome: Option<Outcome>,
}

/// The injected stream and a line per object; an error names the document and the object.
pub fn inject_stream(values: &Values, text: &str) -> Result<(String, Vec<Line>), String> {
    act_stream(values, text, Action::Inject)
}

/// `action` on every workload of the stream: the stream as changed and a line per object.
pub fn act_stream(values: &Values, text: &str, action: Action) -> Result<(String, Vec<Line>), String> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for (index, doc) in split(text).into_iter().enumerate() {
        let at = |e: String| format!("document {}: {e}", index + 1);
        let yaml: yaml_serde::Value = yaml_serde::from_str(doc).map_err(|e| at(e.to_string()))?;
        if yaml.is_null() {
            out.push(doc.to_string());
            continue;
        }
        let value: Value = serde_json::to_value(&yaml).map_err(|e| at(e.to_string()))?;
        let before = lines.len();
        let mut patches = Vec::new();
        act_object(values, action, &value, String::new(), &mut lines, &mut patches).map_err(at)?;
        let changed =
            |o: &Option<Outcome>| matches!(o, Some(Outcome::Injected | Outcome::Reinjected | Outcome::Uninjected));
        if lines[before..].iter().any(|l| changed(&l.outcome)) {
            let mut yaml = yaml;
            for (pod, ops) in patches {
                let Some(target) = yaml_doc::at_pointer(&mut yaml, &pod) else {
                    return Err(at(format!("{pod}: not in the document")));
                };
                if let yaml_serde::Value::Mapping(m) = target {
                    if !m.contains_key("metadata") {
                        m.insert("metadata".into(), yaml_serde::Value::Mapping(Default::default()));
                    }
                }
                yaml_doc::apply(target, &ops).map_err(|e| at(format!("{pod}{e}")))?;
                if let yaml_serde::Value::Mapping(m) = target {
                    // Injection may have created it to hold its annotations; empty, it says
                    // nothing to Kubernetes either way.
                    let empty = m.get("metadata").is_some_and(|v| v.as_mapping().is_some_and(|m| m.is_empty()));
                    if action == Action::Uninject && empty {
                        m.remove("metadata");
                    }
                }
            }
            out.push(yaml_doc::to_string(&yaml));
        } else {
            out.push(doc.to_string());
        }
    }
    Ok((join(&out), lines))
}

/// `action` on the workload at `at` (a JSON pointer into the document: "" or `/items/N`),
/// recording its line and the patch of its pod (`at` + the pod's place in the object).
fn act_object(
    values: &Values,
    action: Action,
    object: &Value,
    at: String,
    lines: &mut Vec<Line>,
    patches: &mut Vec<(String, Vec<PatchOperation>)>,
) -> Result<(), String> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string();
    let label = format!("{}/{name}", kind.to_ascii_lowercase());
    if kind == "List" {
        for (i, item) in object.get("items").and_then(Value::as_array).into_iter().flatten().enumerate() {
            act_object(values, action, item, format!("{at}/items/{i}"), lines, patches)?;
        }
        return Ok(());
    }
    let template = match kind.as_str() {
        "Pod" => "",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => {
            lines.push(Line { object: label, outcome: None });
            return Ok(());
        }
    };
    typed_check(&kind, object).map_err(|e| format!("{label}: {e}"))?;
    let Some(pod) = object.pointer(template) else {
        return Err(format!("{label}: {} is missing", template.trim_start_matches('/').replace('/', ".")));
    };
    let mut pod = pod.clone();
    if let Value::Object(map) = &mut pod {
        map.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
    }
    let (outcome, patch) = act_json(values, &pod, action).map_err(|e| format!("{label}: {e}"))?;
    // Checked here on JSON, so that applying it to the YAML cannot fail halfway.
    json_patch::patch(&mut pod, &patch).map_err(|e| format!("{label}: {e}"))?;
    patches.push((format!("{at}{template}"), patch));
    lines.push(Line { object: label, outcome: Some(outcome) });
    Ok(())
}

/// Refuses an object that is not a valid instance of its kind, naming the field.
fn typed_check(kind: &str, object: &Value) -> Result<(), String> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    fn check<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), String> {
        serde_path_to_error::deserialize::<_, T>(object).map(drop).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }
    match kind {
        "Pod" => check::<core::Pod>(object),
        "ReplicationController" => check::<core::ReplicationController>(object),
        "Deployment" => check::<apps::Deployment>(object),
        "StatefulSet" => check::<apps::StatefulSet>(object),
        "DaemonSet" => check::<apps::DaemonSet>(object),
        "ReplicaSet" => check::<apps::ReplicaSet>(object),
        "Job" => check::<batch::Job>(object),
        "CronJob" => check::<batch::CronJob>(object),
        _ => Ok(()),
    }
}

/// The documents of a YAML stream, as written (separator lines excluded).
fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            if offset > start || !docs.is_empty() {
                docs.push(&text[start..offset]);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    if start < text.len() || docs.is_empty() {
        docs.push(&text[start..]);
    }
    docs
}

fn join(docs: &[String]) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(d);
        if !d.is_empty() && !d.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
