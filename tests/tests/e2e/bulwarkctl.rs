//! `bulwarkctl` against a real control plane whose admin API is on a port of its own.

use std::process::{Command, Output};

use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::{workspace_bin, TempDir};

fn ctl(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(workspace_bin("bulwarkctl"))
        .arg("--server")
        .arg(cp.admin_addr.to_string())
        .args(args)
        .output()
        .expect("run bulwarkctl")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn policy(name: &str, timeout: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  target: {{ service: {name}.shop }}\n  defaults: {{ timeout: {{ request: {timeout} }} }}\n  routes:\n  - name: pay\n    match: {{ pathPrefix: /pay }}\n"
    )
}

#[tokio::test]
async fn the_policy_workflow_from_the_command_line() {
    let cp = ControlPlane::start_with(None, true).await;
    let dir = TempDir::new("ctl");
    std::fs::write(dir.path().join("a.yaml"), policy("a", "1s")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), policy("b", "2s")).unwrap();

    let o = ctl(&cp, &["apply", "-f", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("policy shop/a created") && text(&o).contains("policy shop/b created"), "{}", text(&o));

    let o = ctl(&cp, &["list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed["policies"].as_array().unwrap().len(), 2, "{listed}");

    let o = ctl(&cp, &["get", "shop/b"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("request: 2s"), "{}", text(&o));

    std::fs::write(dir.path().join("b.yaml"), policy("b", "4s")).unwrap();
    let o = ctl(&cp, &["diff", "-f", dir.path().to_str().unwrap()]);
    let diff = text(&o);
    assert!(diff.contains("policy shop/a unchanged") && diff.contains("policy shop/b updated"), "{diff}");
    assert!(
        diff.contains("- ") && diff.contains("request: 2s") && diff.contains("+ ") && diff.contains("request: 4s"),
        "{diff}"
    );
    assert!(
        String::from_utf8_lossy(&ctl(&cp, &["get", "shop/b"]).stdout).contains("request: 2s"),
        "diff changes nothing"
    );

    std::fs::write(dir.path().join("bad.yaml"), policy("c", "3x")).unwrap();
    let o = ctl(&cp, &["apply", "-f", dir.path().join("bad.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("policy shop/c: spec.defaults.timeout.request: invalid duration"), "{}", text(&o));

    let o = ctl(&cp, &["fault", "set", "shop/a/pay", "--abort", "503", "--percent", "10", "--for", "5m"]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = String::from_utf8_lossy(&ctl(&cp, &["get", "shop/a"]).stdout).into_owned();
    assert!(yaml.contains("httpStatus: 503") && yaml.contains("percent: 10") && yaml.contains("expiresAt"), "{yaml}");
    assert!(ctl(&cp, &["fault", "clear", "shop/a/pay"]).status.success());
    assert!(!String::from_utf8_lossy(&ctl(&cp, &["get", "shop/a"]).stdout).contains("abort"));

    let o = ctl(&cp, &["status"]);
    assert!(o.status.success() && text(&o).contains("PROXY"), "{}", text(&o));
    assert!(ctl(&cp, &["delete", "shop/a"]).status.success());
    let o = ctl(&cp, &["get", "shop/a"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not found"), "{}", text(&o));
}

#[tokio::test]
async fn clear_errors_when_the_control_plane_is_unreachable_or_the_file_is_missing() {
    let cp = ControlPlane::start(None).await;
    let o = Command::new(workspace_bin("bulwarkctl"))
        .args(["--server", &format!("127.0.0.1:{}", bulwark_e2e::proxy::free_port()), "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).contains("cannot reach the control plane"), "{}", text(&o));
    let o = ctl(&cp, &["apply", "-f", "/nonexistent/policy.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/nonexistent/policy.yaml"), "{}", text(&o));
}

#[tokio::test]
async fn a_fault_set_for_a_time_lasts_that_time_to_the_millisecond_and_shows_when_expired() {
    let cp = ControlPlane::start_with(None, true).await;
    let dir = TempDir::new("ctl-expiry");
    std::fs::write(dir.path().join("a.yaml"), policy("a", "1s")).unwrap();
    assert!(ctl(&cp, &["apply", "-f", dir.path().join("a.yaml").to_str().unwrap()]).status.success());
    for (given, wanted) in [("1500ms", 1500u64), ("1s", 1000), ("10s", 10_000)] {
        let before = std::time::SystemTime::now();
        let o = ctl(&cp, &["fault", "set", "shop/a/pay", "--abort", "503", "--for", given]);
        let after = std::time::SystemTime::now();
        assert!(o.status.success(), "{}", text(&o));
        let yaml = String::from_utf8_lossy(&ctl(&cp, &["get", "shop/a"]).stdout).into_owned();
        let at = yaml.lines().find_map(|l| l.trim().strip_prefix("expiresAt: ")).expect("expiresAt").trim_matches('\'');
        let at = bulwark_policy::faults::parse_rfc3339(at.trim_matches('"')).unwrap();
        let wanted = std::time::Duration::from_millis(wanted);
        assert!(at >= before + wanted, "--for {given} ends no earlier than asked: {yaml}");
        assert!(at <= after + wanted + std::time::Duration::from_millis(1), "--for {given}: {yaml}");
    }
    // Once past, `get` says so.
    let o = ctl(&cp, &["fault", "set", "shop/a/pay", "--abort", "503", "--for", "50ms"]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let shown = text(&ctl(&cp, &["get", "shop/a"]));
    assert!(shown.contains("# faults of route pay expired at"), "{shown}");
}

#[tokio::test]
async fn aimed_at_the_wrong_port_bulwarkctl_says_what_it_tried_and_where_to_go() {
    let cp = ControlPlane::start_with(None, true).await;
    // The discovery port of a control plane whose admin service is on a port of its own.
    let o =
        Command::new(workspace_bin("bulwarkctl")).args(["--server", &cp.addr.to_string(), "list"]).output().unwrap();
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(said.contains(&cp.addr.to_string()) && said.contains("PolicyAdmin/List"), "names address and RPC: {said}");
    assert!(said.contains("Unimplemented") || said.contains("UNIMPLEMENTED"), "names the status: {said}");
    assert!(said.contains("--admin-listen"), "hints at the admin port: {said}");

    // Something that is not gRPC at all: a plain HTTP/1.1 server.
    let Some(up) = bulwark_e2e::thirdparty::python_http1(&[]).await else { return };
    let o =
        Command::new(workspace_bin("bulwarkctl")).args(["--server", &up.addr.to_string(), "list"]).output().unwrap();
    let said = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(said.contains(&up.addr.to_string()) && said.contains("PolicyAdmin/List"), "{said}");
    assert!(said.contains("is it bulwark-control"), "{said}");
    assert!(!said.trim_end().ends_with("bulwarkctl:"), "{said}");
}
