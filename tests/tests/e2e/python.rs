//! A client in another language: Python grpcio, with stubs generated from the repo's protos,
//! applies and lists policies on a real control plane. `make test` prepares the virtualenv
//! (scripts/deps.sh); without it the test says why it skips.

use std::path::PathBuf;
use std::process::Command;

use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::TempDir;

const CLIENT: &str = r#"
import json
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
bad = stub.RunExperiment(policy_pb2.RunExperimentRequest(yaml=sys.argv[3].replace("duration: 1s", "duration: 2h")))
assert not bad.HasField("experiment"), bad
print("experiment refused:", bad.errors[0].path)
ok = stub.RunExperiment(policy_pb2.RunExperimentRequest(yaml=sys.argv[3]))
print("experiment admitted:", ok.experiment.namespace + "/" + ok.experiment.name, ok.experiment.state)
got = stub.GetExperiment(policy_pb2.GetExperimentRequest(namespace="shop", name="py-chaos"))
print("report of:", json.loads(got.report_json)["experiment"])
"#;

#[tokio::test]
async fn a_python_grpcio_client_applies_and_lists_policies_and_runs_an_experiment() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = bulwark_e2e::venv_bin("python");
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
        .arg("apiVersion: bulwark.dev/v1\nkind: ChaosExperiment\nmetadata: { name: py-chaos, namespace: shop }\nspec:\n  hypothesis: py holds\n  faults:\n    - target: { policy: shop/py }\n      delay: { fixed: 1ms, percent: 1 }\n  duration: 1s\n  steadyState:\n    observe: { policy: shop/py }\n    maxErrorRate: 1%\n")
        .env("PYTHONPATH", out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("refused: spec.defaults.timeout.request"), "{stdout}");
    assert!(stdout.contains("listed: shop/py"), "{stdout}");
    // The experiment RPCs, from the same generated stubs.
    assert!(stdout.contains("experiment refused: spec.duration"), "{stdout}");
    assert!(stdout.contains("experiment admitted: shop/py-chaos pending"), "{stdout}");
    assert!(stdout.contains("report of: shop/py-chaos"), "{stdout}");
}

const REFLECTION_CLIENT: &str = r#"
import sys
import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

channel = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(channel)
print("services:", ",".join(sorted(db.get_services())))
pool = descriptor_pool.DescriptorPool(db)
service = pool.FindServiceByName("bulwark.v1.PolicyAdmin")
apply = service.FindMethodByName("Apply")
request_class = message_factory.GetMessageClass(apply.input_type)
reply_class = message_factory.GetMessageClass(apply.output_type)
call = channel.unary_unary(
    "/bulwark.v1.PolicyAdmin/Apply",
    request_serializer=lambda m: m.SerializeToString(),
    response_deserializer=reply_class.FromString,
)
reply = call(request_class(documents=[sys.argv[2]]))
print("applied:", reply.applied)
"#;

#[tokio::test]
async fn grpcs_own_python_reflection_client_lists_services_and_calls_apply_from_reflection_alone() {
    let python = bulwark_e2e::venv_bin("python");
    let ready = Command::new(&python)
        .args(["-c", "import grpc, grpc_reflection.v1alpha.proto_reflection_descriptor_database"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "SKIP python reflection client: {} with grpcio-reflection is missing (make test installs it: scripts/deps.sh)",
            python.display()
        );
        return;
    }
    let cp = ControlPlane::start(None).await;
    let policy = "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: { name: refl, namespace: shop }\nspec:\n  target: { service: refl.shop }\n";
    let run = Command::new(&python)
        .arg("-c")
        .arg(REFLECTION_CLIENT)
        .arg(cp.admin_addr.to_string())
        .arg(policy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("bulwark.v1.PolicyAdmin"), "{stdout}");
    assert!(stdout.contains("grpc.reflection.v1alpha.ServerReflection"), "{stdout}");
    assert!(stdout.contains("applied: True"), "{stdout}");
    let listed = cp.admin().await.list(bulwark_proto::v1::ListRequest::default()).await.unwrap().into_inner();
    assert!(listed.policies.iter().any(|p| p.name == "refl"), "the policy is stored");
}
