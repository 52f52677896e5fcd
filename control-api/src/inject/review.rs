//! The admission webhook's logic: an AdmissionReview (admission.k8s.io/v1) in, an
//! AdmissionReview with a JSONPatch out. Every input gets a well-formed answer: a review that
//! cannot be read is denied with the reason, never dropped.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{inject_json, Outcome, Values};

#[derive(Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// The answer, and a line for the log.
pub struct Answer {
    pub body: Value,
    pub log: String,
    /// False when the review was denied.
    pub allowed: bool,
}

/// Answers one AdmissionReview body. `pod_security` is the Pod Security level the pod's
/// namespace enforces, when the webhook entry that called says so (`/inject/baseline`).
pub fn answer(values: &Values, body: &[u8], pod_security: Option<&str>) -> Answer {
    let raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return deny("", format!("the body is not JSON: {e}"), "unreadable review".into()),
    };
    let uid_hint = raw.pointer("/request/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let review: Review = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return deny(&uid_hint, format!("not an AdmissionReview: {e}"), "malformed review".into()),
    };
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return deny(
            &uid_hint,
            format!("expected admission.k8s.io/v1 AdmissionReview, got {} {}", review.api_version, review.kind),
            "malformed review".into(),
        );
    }
    let Some(request) = review.request else {
        return deny("", "the AdmissionReview has no request".into(), "malformed review".into());
    };
    let Some(object) = request.object else {
        return deny(&request.uid, "the request has no object".into(), "malformed review".into());
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or(request.name.as_deref())
        .or_else(|| object.pointer("/metadata/generateName").and_then(Value::as_str))
        .unwrap_or("<unnamed>");
    let pod = format!("{namespace}/{name}");
    let is_pod = request.kind.as_ref().is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    if !is_pod || request.operation.as_deref().is_some_and(|op| op != "CREATE") {
        return allow(&request.uid, None, None, format!("{pod}: not a pod creation; allowed unchanged"));
    }
    if let Some(level) = pod_security.filter(|l| matches!(*l, "baseline" | "restricted")) {
        // The API server would refuse the injected pod; uninjected, the app at least runs.
        let why = format!(
            "namespace {namespace} enforces Pod Security level {level:?}, which refuses bulwark-init (root, NET_ADMIN, NET_RAW): exempt the namespace or label it privileged to mesh it (docs/kubernetes.md, Pod Security Admission)"
        );
        let warning = Some(format!("bulwark: pod {pod} not injected: {why}"));
        return allow(&request.uid, None, warning, format!("pod {pod}: not injected: {why}"));
    }
    match inject_json(values, &object) {
        Ok((Outcome::Injected, patch)) => {
            let patch = serde_json::to_vec(&patch).unwrap_or_default();
            allow(&request.uid, Some(patch), None, format!("pod {pod}: injected"))
        }
        Ok((Outcome::Reinjected | Outcome::Uninjected, _)) => {
            allow(&request.uid, None, None, format!("pod {pod}: unchanged"))
        }
        Ok((Outcome::Unchanged(skip), _)) => {
            let warning = Some(format!("bulwark: pod {pod} not injected: {skip}"));
            allow(&request.uid, None, warning, format!("pod {pod}: not injected: {skip}"))
        }
        Err(e) => deny(&request.uid, format!("bulwark: pod {pod}: {e}"), format!("pod {pod}")),
    }
}

fn allow(uid: &str, patch: Option<Vec<u8>>, warning: Option<String>, log: String) -> Answer {
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if let Some(w) = warning {
        response["warnings"] = json!([w]);
    }
    Answer { body: review(response), log, allowed: true }
}

fn deny(uid: &str, message: String, log: String) -> Answer {
    let response = json!({
        "uid": uid,
        "allowed": false,
        "status": { "code": 400, "message": message },
    });
    Answer { body: review(response), log: format!("{log}: {message}"), allowed: false }
}

fn review(response: Value) -> Value {
    json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response })
}
