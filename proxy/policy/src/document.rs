//! Reading policy documents from YAML text. One text may hold several documents (`---`).
//! Shape errors name the source, the document, the field path and the serde reason.

use serde::Deserialize;

use crate::error::ValidationError;
use crate::spec::ResiliencePolicy;

/// Upper bound on one policy text, so a runaway file cannot exhaust memory before validation.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

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
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let label = format!("{source} (document {})", index + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(ValidationError { policy: label, path: String::new(), message: e.to_string() });
                // A syntax error leaves the stream position unknown; later documents are unreliable.
                break;
            }
        };
        match from_value(value, &label) {
            Ok(p) => policies.push(p),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// Deserializes one policy from an already parsed YAML value.
pub fn from_value(value: serde_yaml::Value, source: &str) -> Result<ResiliencePolicy, ValidationError> {
    let name = policy_label(&value).unwrap_or_else(|| source.to_string());
    serde_path_to_error::deserialize(value).map_err(|e| ValidationError {
        policy: name,
        path: clean_path(&e.path().to_string()),
        message: e.into_inner().to_string(),
    })
}

/// `namespace/name` from an untyped document, for errors raised before the shape is known.
fn policy_label(v: &serde_yaml::Value) -> Option<String> {
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
