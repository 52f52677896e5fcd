//! The control plane through a real gRPC client generated from the public protos.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_e2e::control::ControlPlane;
use bulwark_proto::v1 as pb;
use tonic::{Code, Request};

fn policy(name: &str, timeout: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  target: {{ service: {name}.shop.svc }}\n  defaults: {{ timeout: {{ request: {timeout} }} }}\n  routes:\n  - name: pay\n    match: {{ pathPrefix: /pay }}\n"
    )
}

fn apply(docs: &[String]) -> pb::ApplyRequest {
    pb::ApplyRequest { documents: docs.to_vec(), dry_run: false }
}

#[tokio::test]
async fn apply_get_list_and_delete() {
    let cp = ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    let r = admin.apply(apply(&[policy("a", "1s"), policy("b", "2s")])).await.unwrap().into_inner();
    assert!(r.applied && r.errors.is_empty(), "{r:?}");
    assert_eq!(r.changes.iter().map(|c| c.kind).collect::<Vec<_>>(), [pb::change::Kind::Created as i32; 2]);
    let got = admin.get(pb::GetRequest { namespace: "shop".into(), name: "b".into() }).await.unwrap().into_inner();
    assert!(got.yaml.contains("request: 2s"), "{}", got.yaml);
    let again = admin.apply(apply(&[policy("a", "1s")])).await.unwrap().into_inner();
    assert!(!again.applied, "unchanged: nothing stored");
    assert_eq!(again.changes[0].kind, pb::change::Kind::Unchanged as i32);
    let list = admin.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    admin.delete(pb::DeleteRequest { namespace: "shop".into(), name: "a".into() }).await.unwrap();
    let err = admin.get(pb::GetRequest { namespace: "shop".into(), name: "a".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_bad_policy_is_refused_with_field_paths_and_nothing_changes() {
    let cp = ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    admin.apply(apply(&[policy("a", "1s")])).await.unwrap();
    let r = admin.apply(apply(&[policy("a", "0s"), policy("c", "3x")])).await.unwrap().into_inner();
    assert!(!r.applied);
    assert!(
        r.errors.iter().any(|e| e.policy == "shop/a" && e.path == "spec.defaults.timeout.request"),
        "{:?}",
        r.errors
    );
    assert!(r.errors.iter().any(|e| e.policy == "shop/c" && e.message.contains("unknown unit")), "{:?}", r.errors);
    let list = admin.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.policies.len(), 1);
    assert!(list.policies[0].yaml.contains("request: 1s"));
    assert_eq!(list.revision, r.revision);
}

#[tokio::test]
async fn an_apply_with_no_policy_in_it_says_so() {
    let cp = ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    let r = admin.apply(apply(&["".into(), "---\n# nothing\n---\n".into(), policy("a", "1s")])).await.unwrap();
    let r = r.into_inner();
    assert!(!r.applied, "{r:?}");
    for doc in ["document 1", "document 2"] {
        assert!(r.errors.iter().any(|e| e.policy == doc && e.message.contains("no policy in it")), "{doc}: {r:?}");
    }
    let listed = admin.list(pb::ListRequest::default()).await.unwrap().into_inner();
    assert!(listed.policies.is_empty(), "nothing was applied: {listed:?}");
}

#[tokio::test]
async fn every_acknowledged_apply_survives_kill_9_mid_stream() {
    let mut cp = ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("p{i}");
                match admin.apply(apply(&[policy(&name, "1s")])).await {
                    Ok(r) if r.get_ref().applied => acked.lock().unwrap().push(name),
                    _ => return,
                }
            }
        })
    };
    // Killed mid-stream of applies, once some were acknowledged.
    let some = || async { acked.lock().unwrap().len() >= 5 };
    bulwark_e2e::wait_for("five acknowledged applies", Duration::from_secs(30), some).await;
    cp.kill9_and_restart().await;
    let _ = writer.await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 5, "some applies were acknowledged before the kill: {}", acked.len());
    let stored = cp.admin().await.list(pb::ListRequest::default()).await.unwrap().into_inner();
    let names: std::collections::HashSet<String> = stored.policies.into_iter().map(|p| p.name).collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test]
async fn the_admin_api_requires_the_token_when_one_is_set() {
    let cp = ControlPlane::start(Some("s3cret")).await;
    let mut admin = cp.admin().await;
    let err = admin.list(pb::ListRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = Request::new(pb::ListRequest::default());
    wrong.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(admin.list(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    let mut right = Request::new(pb::ListRequest::default());
    right.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(admin.list(right).await.is_ok());
}

#[tokio::test]
async fn set_and_clear_fault_edit_the_stored_policy() {
    let cp = ControlPlane::start(None).await;
    let mut admin = cp.admin().await;
    admin.apply(apply(&[policy("a", "1s")])).await.unwrap();
    let set = pb::SetFaultRequest {
        namespace: "shop".into(),
        name: "a".into(),
        route: "pay".into(),
        faults_yaml: "abort: { httpStatus: 503, percent: 10 }".into(),
        for_seconds: 300,
        for_milliseconds: 0,
    };
    assert!(admin.set_fault(set.clone()).await.unwrap().into_inner().applied);
    let yaml =
        admin.get(pb::GetRequest { namespace: "shop".into(), name: "a".into() }).await.unwrap().into_inner().yaml;
    assert!(yaml.contains("httpStatus: 503") && yaml.contains("expiresAt:"), "{yaml}");
    let bad = pb::SetFaultRequest { faults_yaml: "abort: { httpStatus: 503, percent: 150 }".into(), ..set.clone() };
    let r = admin.set_fault(bad).await.unwrap().into_inner();
    assert!(!r.applied && r.errors.iter().any(|e| e.path == "spec.routes[0].faults.abort.percent"), "{r:?}");
    // A duration past any sane fault (or past the end of time) is refused, never a crash.
    for for_seconds in [u64::MAX, 8 * 24 * 3600] {
        let long = pb::SetFaultRequest { for_seconds, ..set.clone() };
        let e = admin.set_fault(long).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("for_seconds"), "{e:?}");
        let long = pb::SetFaultRequest { for_milliseconds: for_seconds.saturating_mul(1000), ..set.clone() };
        let e = admin.set_fault(long).await.unwrap_err();
        assert!(e.message().contains("for_milliseconds"), "{e:?}");
    }
    let missing = pb::SetFaultRequest { route: "nope".into(), ..set };
    assert_eq!(admin.set_fault(missing).await.unwrap_err().code(), Code::NotFound);
    let clear = pb::ClearFaultRequest { namespace: "shop".into(), name: "a".into(), route: "pay".into() };
    assert!(admin.clear_fault(clear).await.unwrap().into_inner().applied);
    let yaml =
        admin.get(pb::GetRequest { namespace: "shop".into(), name: "a".into() }).await.unwrap().into_inner().yaml;
    assert!(!yaml.contains("abort"), "the route has no faults again: {yaml}");
}

#[tokio::test]
async fn reflection_lists_the_public_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cp = ControlPlane::start(None).await;
    let mut client = ServerReflectionClient::new(cp.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"bulwark.v1.PolicyAdmin".to_string()), "{names:?}");
}
