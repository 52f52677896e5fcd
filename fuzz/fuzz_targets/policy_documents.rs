//! Any text as a policy file: read every document, compile what was read, and select a
//! policy for a destination. None of it may panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(docs) = bulwark_policy::parse_documents(text, "fuzz") {
        let _ = bulwark_policy::Snapshot::compile("fuzz", docs);
    }
    let _ = bulwark_policy::duration::parse(text);
    let _ = bulwark_policy::faults::parse_rfc3339(text);
});
