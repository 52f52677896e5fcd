//! Any text as the proxy's bootstrap file (with its inline policies). Must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = bulwark_proxy::control::config::load_text(text, "fuzz.yaml", std::path::Path::new("/nonexistent"), "1");
});
