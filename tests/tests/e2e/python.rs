//! A client in another language: Python grpcio, with stubs generated from the repo's protos,
//! applies and lists policies on a real control plane. `make test` prepares the virtualenv
//! (scripts/deps.sh); without it the test says why it skips.

use std::path::PathBuf;
use std::process::Command;

use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::TempDir;

const CLIENT: &str = r#"
import sys
import grpc
from bulwark.v1 import policy_pb2, policy_pb2_grpc

stub = policy_pb2_grpc.PolicyAdminStub(grpc.insecure_channel(sys.argv[1]))
applied = stub.Apply(policy_pb2.ApplyRequest(documents=[sys.argv[2]]))
assert applied.applied and not applied.errors, applied
refused = stub.Apply(policy_pb2.ApplyRequest(documents=[sys.argv[2].replace("1s", "0s")]))
assert not refused.applied
print("refused:", refused.errors[0].path)
listed = stub.List(policy_pb2.ListRequest())
print("listed:", ",".join(p.namespace + "/" + p.name for p in listed.policies))
"#;

#[tokio::test]
async fn a_python_grpcio_client_applies_and_lists_policies() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    let ready =
        Command::new(&python).args(["-c", "import grpc, grpc_tools"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "SKIP python client: {} with grpcio is missing (make test creates it: scripts/deps.sh)",
            python.display()
        );
        return;
    }
    let out = TempDir::new("pystubs");
    let gen = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .arg(root.join("proto/bulwark/v1/policy.proto"))
        .output()
        .unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));

    let cp = ControlPlane::start(None).await;
    let policy = "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: { name: py, namespace: shop }\nspec:\n  target: { service: py.shop }\n  defaults: { timeout: { request: 1s } }\n";
    let script = out.path().join("client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let run = Command::new(&python)
        .arg(&script)
        .arg(cp.admin_addr.to_string())
        .arg(policy)
        .env("PYTHONPATH", out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("refused: spec.defaults.timeout.request"), "{stdout}");
    assert!(stdout.contains("listed: shop/py"), "{stdout}");
}
