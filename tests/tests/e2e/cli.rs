//! `bulwark-proxy check`: every error with its location, exit 1; a good file, exit 0.

use std::process::Command;

use bulwark_e2e::{workspace_bin, TempDir};

#[test]
fn check_reports_every_error_and_exit_code() {
    let dir = TempDir::new("check");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners:\n- { name: web, listen: 127.0.0.1:7000, upstream: nowhere }\npolicies:\n- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: { name: p }\n  spec:\n    target: { listener: web }\n    routes:\n    - name: a\n      match: { pathPrefix: nope }\n      timeout: { request: 2x }\n",
    )
    .unwrap();
    let out = Command::new(workspace_bin("bulwark-proxy")).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].upstream: \"nowhere\" must be host:port"), "{err}");
    assert!(err.contains("policy default/p: spec.routes[0].timeout.request"), "{err}");

    let bad_identity = dir.path().join("identity.yaml");
    std::fs::write(&bad_identity, "identity: \"*.shop\"\n").unwrap();
    let out =
        Command::new(workspace_bin("bulwark-proxy")).args(["check", "--config"]).arg(&bad_identity).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("identity: \"*.shop\" is a pattern"), "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proxy.yaml");
    let out = Command::new(workspace_bin("bulwark-proxy")).args(["check", "--config", example]).output().unwrap();
    assert!(out.status.success(), "examples/proxy.yaml must stay valid: {}", String::from_utf8_lossy(&out.stderr));
}
