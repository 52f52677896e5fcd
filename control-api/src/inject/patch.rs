//! The JSONPatch between a pod before and after injection. Unlike an element-by-element array
//! diff, an array whose length changed is replaced whole: prepending the proxy to a list must
//! not turn into field edits of the app's containers, which the API server would apply to
//! fields this diff never saw.

use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::Value;

pub fn diff(before: &Value, after: &Value) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    walk(before, after, &mut PointerBuf::new(), &mut ops);
    ops
}

fn walk(before: &Value, after: &Value, at: &mut PointerBuf, ops: &mut Vec<PatchOperation>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, old) in b {
                at.push_back(key.as_str());
                match a.get(key) {
                    Some(new) => walk(old, new, at, ops),
                    None => ops.push(PatchOperation::Remove(RemoveOperation { path: at.clone() })),
                }
                at.pop_back();
            }
            for (key, new) in a.iter().filter(|(k, _)| !b.contains_key(*k)) {
                at.push_back(key.as_str());
                ops.push(PatchOperation::Add(AddOperation { path: at.clone(), value: new.clone() }));
                at.pop_back();
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (old, new)) in b.iter().zip(a).enumerate() {
                at.push_back(i);
                walk(old, new, at, ops);
                at.pop_back();
            }
        }
        _ if before == after => {}
        _ => ops.push(PatchOperation::Replace(ReplaceOperation { path: at.clone(), value: after.clone() })),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn arrays_of_new_length_are_replaced_whole_and_equal_ones_diffed() {
        let before = json!({"a": [1, 2], "b": [{"x": 1}], "c": 1, "gone": true});
        let after = json!({"a": [0, 1, 2], "b": [{"x": 2}], "c": 1, "new": {"k": "v"}});
        let ops = serde_json::to_value(diff(&before, &after)).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/a", "value": [0, 1, 2]},
                {"op": "replace", "path": "/b/0/x", "value": 2},
                {"op": "remove", "path": "/gone"},
                {"op": "add", "path": "/new", "value": {"k": "v"}},
            ])
        );
        let mut patched = before.clone();
        json_patch::patch(&mut patched, &diff(&before, &after)).unwrap();
        assert_eq!(patched, after);
    }

    #[test]
    fn keys_with_slashes_are_escaped() {
        let ops = diff(&json!({"m": {}}), &json!({"m": {"bulwark.dev/status": "injected"}}));
        assert_eq!(serde_json::to_value(ops).unwrap()[0]["path"], "/m/bulwark.dev~1status");
    }
}
