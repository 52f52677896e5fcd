//! An injected YAML document, offline: the injection's JSONPatch applied to the document as it
//! was read (key order kept, fields newer than any Kubernetes types kept), and written back so
//! that every reader means the same thing by it. Kubernetes tooling reads YAML 1.1 (kubectl,
//! client-go, Helm), where `no`, `on`, `y`, `0755`, `1_000` and `12:30` are not strings, so a
//! string that any YAML version could read as something else is double-quoted. Comments of an
//! injected document are lost (no YAML library keeps them); untouched documents are written
//! back byte for byte by the caller.

use json_patch::PatchOperation;
use yaml_serde::Value;

/// Applies the operations `patch::diff` makes (add, replace, remove) to `doc`.
pub fn apply(doc: &mut Value, ops: &[PatchOperation]) -> Result<(), String> {
    for op in ops {
        let (path, value) = match op {
            PatchOperation::Add(a) => (&a.path, Some(&a.value)),
            PatchOperation::Replace(r) => (&r.path, Some(&r.value)),
            PatchOperation::Remove(r) => (&r.path, None),
            other => return Err(format!("unexpected patch operation {other:?}")),
        };
        let tokens: Vec<String> = path.tokens().map(|t| t.decoded().into_owned()).collect();
        let Some((last, parents)) = tokens.split_last() else {
            return Err("a patch of the whole document".into());
        };
        let mut at = &mut *doc;
        for t in parents {
            at = child(at, t).ok_or_else(|| format!("{path}: no {t:?} in the document"))?;
        }
        let value = value.map(|v| yaml_serde::to_value(v).map_err(|e| e.to_string())).transpose()?;
        let insert = matches!(op, PatchOperation::Add(_));
        match (at, value) {
            (Value::Mapping(m), Some(v)) => {
                m.insert(Value::String(last.clone()), v);
            }
            (Value::Mapping(m), None) => {
                m.shift_remove(last.as_str());
            }
            (Value::Sequence(s), v) => {
                let i =
                    if last == "-" { s.len() } else { last.parse().map_err(|_| format!("{path}: not an index"))? };
                match v {
                    Some(v) if insert && i <= s.len() => s.insert(i, v),
                    Some(v) if i < s.len() => s[i] = v,
                    None if i < s.len() => drop(s.remove(i)),
                    _ => return Err(format!("{path}: index {i} out of range")),
                }
            }
            _ => return Err(format!("{path}: the parent is not a mapping or a list")),
        }
    }
    Ok(())
}

/// The value at a JSON pointer of plain tokens (`/spec/template`, `/items/3`).
pub fn at_pointer<'a>(doc: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    pointer.split('/').skip(1).try_fold(doc, |at, t| child(at, t))
}

fn child<'a>(v: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match v {
        Value::Mapping(m) => m.get_mut(token),
        Value::Sequence(s) => s.get_mut(token.parse::<usize>().ok()?),
        Value::Tagged(t) => child(&mut t.value, token),
        _ => None,
    }
}

/// `doc` as block-style YAML, every string that is not unmistakably a string quoted.
pub fn to_string(doc: &Value) -> String {
    let mut out = String::new();
    match doc {
        Value::Mapping(m) if !m.is_empty() => mapping(m, 0, &mut out),
        Value::Sequence(s) if !s.is_empty() => sequence(s, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn mapping(m: &yaml_serde::Mapping, indent: usize, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a list item follows its "- ".
        if i > 0 || !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str(&scalar(k));
        out.push(':');
        value(v, indent, out);
    }
}

fn sequence(s: &[Value], indent: usize, out: &mut String) {
    for item in s {
        if !out.ends_with("- ") {
            pad(out, indent);
        }
        out.push_str("- ");
        match untagged(item) {
            Value::Mapping(m) if !m.is_empty() => mapping(m, indent + 2, out),
            Value::Sequence(inner) if !inner.is_empty() => sequence(inner, indent + 2, out),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// What follows `key:`.
fn value(v: &Value, indent: usize, out: &mut String) {
    match untagged(v) {
        Value::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            mapping(m, indent + 2, out);
        }
        // Kubernetes style: a list's items at the indentation of its key.
        Value::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            sequence(s, indent, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn untagged(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untagged(&t.value),
        other => other,
    }
}

fn scalar(v: &Value) -> String {
    match untagged(v) {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain(s) => s.clone(),
        // Single quotes escape nothing but themselves; what needs escapes goes double-quoted.
        Value::String(s) if !s.chars().any(char::is_control) => format!("'{}'", s.replace('\'', "''")),
        Value::String(s) => serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()),
        Value::Mapping(_) => "{}".into(),
        Value::Sequence(_) => "[]".into(),
        Value::Tagged(t) => scalar(&t.value),
    }
}

/// Words YAML 1.1 reads as booleans or null (YAML 1.2 reads fewer).
const NOT_STRINGS: [&str; 11] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "="];

/// A string every YAML reader takes as this string when written bare: only characters with no
/// YAML meaning where they stand, none of YAML 1.1's boolean or null words, and nothing a YAML
/// version reads as a number, a time or a date. Anything else is quoted — harmless when not
/// needed.
fn plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    let chars_ok = s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./@=+:".contains(c) || c == ' ');
    let first_ok = first.is_ascii_alphanumeric() || first == '/' || (first == '-' && s.len() > 1);
    // Numbers (1_000, 0755, 0x1f, 1e3, -2), sexagesimals (12:30) and dates (2001-12-14T...)
    // start with a digit or a sign and hold no other letter than these.
    let numeric_like = (first.is_ascii_digit() || first == '-')
        && !s.chars().any(|c| c.is_ascii_alphabetic() && !"eExXoObBtTaAcCdDfF".contains(c));
    chars_ok
        && first_ok
        && !numeric_like
        && !NOT_STRINGS.contains(&s.to_ascii_lowercase().as_str())
        && !s.ends_with(' ')
        && !s.ends_with(':')
        && !s.contains(": ")
        && !s.contains("  ")
        && !s.contains(" #")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_yaml_1_1_reads_otherwise_are_quoted() {
        let doc: Value = yaml_serde::from_str(
            "args: [\"--appendonly\", \"no\", \"on\", \"Off\", \"y\", \"0755\", \"1_000\", \"12:30\", \"1e3\", \".inf\", \"\", \"a: b\", \"x #y\", \"multi\\nline\", \"plain text\", \"redis-server\", \"250m\", \"-1\", \"2001-12-14t21:59\", \"registry.example/a:1.2\", \"it's\"]\nn: 3\nb: false\nempty: {}\nnone: []\n",
        )
        .unwrap();
        let text = to_string(&doc);
        assert_eq!(
            text,
            "args:\n- --appendonly\n- 'no'\n- 'on'\n- 'Off'\n- 'y'\n- '0755'\n- '1_000'\n- '12:30'\n- '1e3'\n- '.inf'\n- ''\n- 'a: b'\n- 'x #y'\n- \"multi\\nline\"\n- plain text\n- redis-server\n- 250m\n- '-1'\n- '2001-12-14t21:59'\n- registry.example/a:1.2\n- 'it''s'\n'n': 3\nb: false\nempty: {}\nnone: []\n"
        );
        let back: Value = yaml_serde::from_str(&text).unwrap();
        assert_eq!(back, doc, "what is written reads back as the same document");
    }

    #[test]
    fn nested_lists_and_maps_keep_their_order_and_shape() {
        let text = "b: 1\na:\n- name: x\n  ports:\n  - 80\n  - 81\n- - inner\nz:\n  k: v\n";
        let doc: Value = yaml_serde::from_str(text).unwrap();
        assert_eq!(to_string(&doc), text);
    }
}
