//! Every YAML example the docs and `examples/` show is read and written exactly as it was when
//! the fixture was recorded: what each block parses to, how it is written back, and, for whole
//! policies, the stored form the control plane keeps. A change of YAML library (or of its
//! version) that changes any of these fails here. Re-record with `BULWARK_BLESS=1` only when a
//! change is intended, and say why in the commit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fenced ```yaml blocks of a Markdown file, each named by file and its place among them
/// (not its line, so editing prose around a block does not change the fixture).
fn yaml_blocks(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") => {
                current = Some((format!("{file}, yaml block {}", blocks.len() + 1), String::new()))
            }
            (Some(_), l) if l.starts_with("```") => blocks.extend(current.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

fn examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["docs/policy.md", "README.md", "docs/kubernetes.md", "docs/limits.md"] {
        out.extend(yaml_blocks(file));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples/policies"))
        .expect("examples/policies")
        .map(|e| e.expect("entry").path())
        .collect();
    files.push(root().join("examples/proxy.yaml"));
    files.sort();
    for path in files {
        let name = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
        out.push((name, std::fs::read_to_string(&path).expect("example file")));
    }
    out
}

/// What the YAML library makes of one example: every document's value, its written form,
/// and the stored form of every whole policy in it.
fn describe(name: &str, text: &str) -> String {
    let mut out = format!("=== {name}\n");
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = match <yaml_serde::Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(out, "document {}: error: {e}", i + 1);
                break;
            }
        };
        let _ = writeln!(out, "document {}: {value:?}", i + 1);
        let _ = writeln!(out, "written:\n{}", yaml_serde::to_string(&value).unwrap_or_else(|e| format!("error: {e}")));
    }
    if let Ok(policies) = bulwark_policy::parse_documents(text, name) {
        for p in policies {
            let _ = writeln!(out, "stored:\n{}", yaml_serde::to_string(&p).unwrap_or_else(|e| format!("error: {e}")));
        }
    }
    out
}

#[test]
fn documented_examples_read_and_write_as_recorded() {
    let actual: String = examples().iter().map(|(n, t)| describe(n, t)).collect();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yaml_compat.txt");
    if std::env::var_os("BULWARK_BLESS").is_some() {
        std::fs::write(&fixture, &actual).expect("write fixture");
        return;
    }
    let expected = std::fs::read_to_string(&fixture).expect("fixture recorded with BULWARK_BLESS=1");
    if actual != expected {
        let line = actual.lines().zip(expected.lines()).position(|(a, e)| a != e).unwrap_or(0);
        let a: Vec<&str> = actual.lines().skip(line).take(3).collect();
        let e: Vec<&str> = expected.lines().skip(line).take(3).collect();
        panic!("YAML behaviour changed at fixture line {}:\n  now: {a:?}\n  was: {e:?}", line + 1);
    }
    // The fixture covers whole policies, not only fragments.
    assert!(expected.matches("stored:").count() >= 2, "expected at least two whole policies among the examples");
}
