//! Replays every input `make fuzz` ever found crashing the policy reader (fuzz/artifacts,
//! committed with its fix), plus the seed examples, through the same calls as the fuzz target.

use std::path::Path;

#[test]
fn every_recorded_fuzz_input_is_read_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut inputs = 0;
    for dir in ["fuzz/artifacts/policy_documents", "examples/policies"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let path = entry.expect("entry").path();
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            if let Ok(docs) = bulwark_policy::parse_documents(&text, "replay") {
                let _ = bulwark_policy::Snapshot::compile("replay", docs);
            }
            let _ = bulwark_policy::duration::parse(&text);
            let _ = bulwark_policy::faults::parse_rfc3339(&text);
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no input found: the corpus folders moved?");
}
