//! The JSONPatch between a pod before and after injection, touching only what injection
//! changed. The pod it is computed on is the typed one (what k8s-openapi knows of it), but it is
//! applied to the real object (by the API server, or offline to the YAML as written), which may
//! hold fields newer than those types: so no part of the app's objects may be replaced whole.
//! An array that grew by inserted items (the proxy prepended to the init containers, the
//! volume appended) becomes `add` operations at their places, and the items that were there
//! before — matched by `name`, or by equality — get field edits only; only an array changed in
//! some other way is replaced whole. An array that lost items (uninjection) is the same the
//! other way round: `remove` operations, and field edits of the items left.

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
        (Value::Array(b), Value::Array(a)) if a.len() > b.len() => match alignment(b, a) {
            Some(was) => {
                // Inserts first, in ascending order: each lands where it is in `after`; then
                // the edits of the items that were there, at their places in `after`.
                for (i, new) in a.iter().enumerate().filter(|(i, _)| was[*i].is_none()) {
                    at.push_back(i);
                    ops.push(PatchOperation::Add(AddOperation { path: at.clone(), value: new.clone() }));
                    at.pop_back();
                }
                for (i, old) in was.iter().enumerate().filter_map(|(i, w)| w.map(|j| (i, &b[j]))) {
                    at.push_back(i);
                    walk(old, &a[i], at, ops);
                    at.pop_back();
                }
            }
            None => ops.push(PatchOperation::Replace(ReplaceOperation { path: at.clone(), value: after.clone() })),
        },
        (Value::Array(b), Value::Array(a)) => match alignment(a, b) {
            // `after` is `before` with items removed (uninjection): removes from the last, so
            // that each index still names the item it did; then the edits of those left.
            Some(kept) => {
                for (j, _) in b.iter().enumerate().rev().filter(|(j, _)| kept[*j].is_none()) {
                    at.push_back(j);
                    ops.push(PatchOperation::Remove(RemoveOperation { path: at.clone() }));
                    at.pop_back();
                }
                for (old, i) in b.iter().zip(&kept).filter_map(|(old, k)| k.map(|i| (old, i))) {
                    at.push_back(i);
                    walk(old, &a[i], at, ops);
                    at.pop_back();
                }
            }
            None => ops.push(PatchOperation::Replace(ReplaceOperation { path: at.clone(), value: after.clone() })),
        },
        _ if before == after => {}
        _ => ops.push(PatchOperation::Replace(ReplaceOperation { path: at.clone(), value: after.clone() })),
    }
}

/// For each item of `after`, the index in `before` of the item it is (None: inserted), when
/// `after` is `before` with items inserted and the rest in the same order.
fn alignment(before: &[Value], after: &[Value]) -> Option<Vec<Option<usize>>> {
    let same = |old: &Value, new: &Value| match (old.get("name"), new.get("name")) {
        (Some(Value::String(o)), Some(Value::String(n))) => o == n,
        _ => old == new,
    };
    let mut next = 0;
    let was: Vec<Option<usize>> = after
        .iter()
        .map(|new| {
            let hit = before.get(next).is_some_and(|old| same(old, new));
            hit.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect();
    (next == before.len()).then_some(was)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn inserted_items_are_added_and_the_others_edited_in_place() {
        let before = json!({"a": [1, 2], "b": [{"x": 1}], "c": 1, "gone": true,
            "containers": [{"name": "app", "port": "http"}], "other": [1, 2], "shrunk": [1, 2]});
        let after = json!({"a": [0, 1, 2], "b": [{"x": 2}], "c": 1, "new": {"k": "v"},
            "containers": [{"name": "proxy"}, {"name": "app", "port": 15020}, {"name": "tail"}],
            "other": [2, 1, 0], "shrunk": [1]});
        let ops = serde_json::to_value(diff(&before, &after)).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/a/0", "value": 0},
                {"op": "replace", "path": "/b/0/x", "value": 2},
                {"op": "add", "path": "/containers/0", "value": {"name": "proxy"}},
                {"op": "add", "path": "/containers/2", "value": {"name": "tail"}},
                {"op": "replace", "path": "/containers/1/port", "value": 15020},
                {"op": "remove", "path": "/gone"},
                {"op": "replace", "path": "/other", "value": [2, 1, 0]},
                {"op": "remove", "path": "/shrunk/1"},
                {"op": "add", "path": "/new", "value": {"k": "v"}},
            ])
        );
        let mut patched = before.clone();
        json_patch::patch(&mut patched, &diff(&before, &after)).unwrap();
        assert_eq!(patched, after);
        // Applied to an object with fields the diff never saw, they stay.
        let mut real = before.clone();
        real["containers"][0]["restartPolicyRules"] = json!([{"action": "Restart"}]);
        json_patch::patch(&mut real, &diff(&before, &after)).unwrap();
        assert_eq!(real["containers"][1]["restartPolicyRules"], json!([{"action": "Restart"}]));

        // And back: removes of what was inserted, edits of the rest, unknown fields kept.
        let back = diff(&after, &before);
        let back_ops = serde_json::to_value(&back).unwrap();
        assert_eq!(back_ops[0], json!({"op": "remove", "path": "/a/0"}));
        assert!(back_ops.as_array().unwrap().contains(&json!({"op": "remove", "path": "/containers/2"})));
        assert!(back_ops.as_array().unwrap().contains(&json!({"op": "remove", "path": "/containers/0"})));
        json_patch::patch(&mut real, &back).unwrap();
        assert_eq!(
            real["containers"],
            json!([{"name": "app", "port": "http", "restartPolicyRules": [{"action": "Restart"}]}])
        );
    }

    #[test]
    fn keys_with_slashes_are_escaped() {
        let ops = diff(&json!({"m": {}}), &json!({"m": {"bulwark.dev/status": "injected"}}));
        assert_eq!(serde_json::to_value(ops).unwrap()[0]["path"], "/m/bulwark.dev~1status");
    }
}
