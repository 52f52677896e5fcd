//! Reading policy documents from YAML text. One text may hold several documents (`---`).
//! Shape errors name the source, the document, the field path and the serde reason.

use serde::Deserialize;

use crate::error::ValidationError;
use crate::spec::ResiliencePolicy;

/// Upper bound on one policy text, so a runaway file cannot exhaust memory before validation.
/// The control plane holds what it stores and sends to the same bound.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Upper bound on every stored policy together: what one discovery push carries. gRPC
/// messages on both sides are allowed this much (and a little for the envelope).
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// Parses every document of `text`. `source` names where the text came from (a file path, an
/// inline list) and is used in errors until the policy's own name is known.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<ResiliencePolicy>, Vec<ValidationError>> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(vec![ValidationError {
            policy: source.to_string(),
            path: String::new(),
            message: format!("document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}", text.len()),
        }]);
    }
    let (policies, errors) = each_document(text, source, from_value);
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// Reads each document of a YAML stream with `read` (given the document and its label,
/// `SOURCE (document N)`): what was read, and every error. Empty documents are skipped.
pub fn each_document<T>(
    text: &str,
    source: &str,
    mut read: impl FnMut(yaml_serde::Value, &str) -> Result<T, Vec<ValidationError>>,
) -> (Vec<T>, Vec<ValidationError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let label = format!("{source} (document {})", index + 1);
        let value = match yaml_serde::Value::deserialize(doc) {
            Ok(yaml_serde::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(ValidationError { policy: label, path: String::new(), message: e.to_string() });
                // A syntax error leaves the stream position unknown; later documents are unreliable.
                break;
            }
        };
        match read(value, &label) {
            Ok(p) => out.push(p),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (out, errors)
}

/// A document has at most this many shape errors reported; past it, it is surely not a policy.
const MAX_SHAPE_ERRORS: usize = 64;

/// Deserializes one policy from an already parsed YAML value, or returns every error in it:
/// each shape error (an unknown field, a value of the wrong type) is recorded and the field
/// set aside, until what is left deserializes; that rest is then checked like any policy, so
/// its semantic errors are reported in the same round trip.
pub fn from_value(value: yaml_serde::Value, source: &str) -> Result<ResiliencePolicy, Vec<ValidationError>> {
    every_error(value, source, |rest: &ResiliencePolicy| {
        crate::Snapshot::compile("check", vec![rest.clone()]).err().unwrap_or_default()
    })
}

/// Deserializes a `T` from a parsed YAML document, or returns every error in it: each shape
/// error is recorded and the field set aside until what is left deserializes, and that rest is
/// then checked by `semantic`, whose errors come in the same answer. A document without shape
/// errors is returned as it is, for the caller to check.
pub fn every_error<T: serde::de::DeserializeOwned>(
    mut value: yaml_serde::Value,
    source: &str,
    semantic: impl FnOnce(&T) -> Vec<ValidationError>,
) -> Result<T, Vec<ValidationError>> {
    let name = policy_label(&value).unwrap_or_else(|| source.to_string());
    let mut errors = Vec::new();
    let error = |path: &serde_path_to_error::Path, message: String| ValidationError {
        policy: name.clone(),
        path: clean_path(&path.to_string()),
        message,
    };
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(whole) if errors.is_empty() => return Ok(whole),
            Ok(rest) => {
                errors.extend(semantic(&rest));
                return Err(errors);
            }
            Err(e) => e,
        };
        let path = e.path().clone();
        let message = e.into_inner().to_string();
        errors.push(error(&path, message.clone()));
        // A missing field cannot be set aside, and past the cap the rest is noise.
        if message.starts_with("missing field") || errors.len() >= MAX_SHAPE_ERRORS || !remove(&mut value, &path) {
            return Err(errors);
        }
    }
}

/// Removes what `path` points at from `value`; false when it points at nothing removable.
fn remove(value: &mut yaml_serde::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut at = value;
    for s in parents {
        let next = match s {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, yaml_serde::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        // An item is not removed: later items would shift and their errors name wrong indexes.
        _ => false,
    }
}

/// `namespace/name` from an untyped document, for errors raised before the shape is known.
fn policy_label(v: &yaml_serde::Value) -> Option<String> {
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(|n| n.as_str()).unwrap_or("default");
    Some(format!("{ns}/{name}"))
}

/// serde_path_to_error writes `.` for the root; an empty path reads better.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}
