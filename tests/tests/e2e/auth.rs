//! The control plane is closed by default: PolicyAdmin needs a token and discovery another one
//! (each generated when none is given; bulwarkctl and proxies on the same host find them, the
//! webhook gives injected proxies theirs); a stream that never says who it is does not stay
//! open.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::workspace_bin;
use bulwark_proto::v1 as pb;

fn ctl(cp: &ControlPlane, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let o = Command::new(workspace_bin("bulwarkctl"))
        .arg("--server")
        .arg(cp.admin_addr.to_string())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("BULWARK_TOKEN")
        .output()
        .expect("run bulwarkctl");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[tokio::test]
async fn policy_admin_requires_a_token_by_default_and_bulwarkctl_finds_the_generated_one() {
    let cp = ControlPlane::start_default_auth(Vec::new()).await;
    let file = cp.generated_token_file();
    let mode = std::fs::metadata(&file).expect("the token file was generated").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    let elsewhere = cp.data.path().join("nowhere");
    let elsewhere = elsewhere.to_str().unwrap();

    let (ok, out) = ctl(&cp, &[("BULWARK_CONTROL_DATA", elsewhere)], &["list"]);
    assert!(!ok, "no token, no answer: {out}");
    assert!(out.contains("admin token") && out.contains("--token-file"), "says which token and how: {out}");
    let (ok, out) = ctl(&cp, &[("BULWARK_CONTROL_DATA", elsewhere)], &["--token", "guess", "list"]);
    assert!(!ok && out.contains("invalid admin token"), "{out}");

    let (ok, out) = ctl(&cp, &[("BULWARK_CONTROL_DATA", elsewhere)], &["--token-file", file.to_str().unwrap(), "list"]);
    assert!(ok, "{out}");
    let data = file.parent().unwrap().to_str().unwrap();
    let (ok, out) = ctl(&cp, &[("BULWARK_CONTROL_DATA", data)], &["list"]);
    assert!(ok, "bulwarkctl on the same host reads the generated token: {out}");
    assert!(cp.logs().contains(&file.display().to_string()), "the log says where the token is");
}

fn hello(id: &str) -> pb::DiscoveryRequest {
    pb::DiscoveryRequest {
        kind: Some(pb::discovery_request::Kind::Node(pb::Node { id: id.into(), ..Default::default() })),
    }
}

async fn open_stream(
    cp: &ControlPlane,
    token: Option<&str>,
    first: Option<pb::DiscoveryRequest>,
) -> (tokio::sync::mpsc::Sender<pb::DiscoveryRequest>, Result<tonic::Streaming<pb::Snapshot>, tonic::Status>) {
    let mut client = pb::policy_discovery_client::PolicyDiscoveryClient::new(cp.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if let Some(m) = first {
        tx.send(m).await.unwrap();
    }
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let stream = client.stream(req).await.map(tonic::Response::into_inner);
    (tx, stream)
}

#[tokio::test]
async fn discovery_requires_the_discovery_token_when_one_is_set() {
    let cp = ControlPlane::start_default_auth(vec!["--discovery-token".into(), "bootstrap-secret".into()]).await;
    let (_tx, none) = open_stream(&cp, None, Some(hello("anonymous"))).await;
    let Err(status) = none else { panic!("a stream without the token is refused") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("discovery token"), "{status:?}");
    let admin_token = std::fs::read_to_string(cp.generated_token_file()).unwrap();
    let (_tx, wrong) = open_stream(&cp, Some(admin_token.trim()), Some(hello("admin"))).await;
    assert_eq!(
        wrong.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated),
        "the admin token is not the discovery token"
    );

    let (_tx, good) = open_stream(&cp, Some("bootstrap-secret"), Some(hello("proxy-1"))).await;
    let mut good = good.expect("the discovery token opens the stream");
    let first = tokio::time::timeout(Duration::from_secs(10), good.message()).await.unwrap().unwrap();
    assert!(first.is_some(), "and the snapshot comes");
}

#[tokio::test]
async fn discovery_requires_the_generated_token_by_default() {
    let cp = ControlPlane::start_default_auth(Vec::new()).await;
    let (_tx, none) = open_stream(&cp, None, Some(hello("anonymous"))).await;
    let Err(status) = none else { panic!("a stream without a token is refused by default") };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let file = cp.data.path().join("store/discovery-token");
    let mode = std::fs::metadata(&file).expect("the discovery token was generated").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only");
    let token = std::fs::read_to_string(&file).unwrap();
    let admin = std::fs::read_to_string(cp.generated_token_file()).unwrap();
    assert_ne!(token.trim(), admin.trim(), "a bootstrap token distinct from the admin token");
    assert!(cp.logs().contains(&file.display().to_string()), "the log says where it is");

    // A real proxy given the file (as on a laptop); its policy arrives, so it becomes ready.
    let up = bulwark_e2e::upstream::Upstream::start().await;
    let cache = bulwark_e2e::TempDir::new("auth-proxy");
    let proxy = bulwark_e2e::proxy::ProxyBuilder::new()
        .listener("web", up.addr)
        .control_plane(cp.addr, &cache.path().join("cache.json"), "with-token")
        .env("BULWARK_CONTROL_DATA", cp.data.path().join("store").to_str().unwrap())
        .start()
        .await;
    let r = bulwark_e2e::client::get(proxy.listener("web"), "/", &[]).await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK);
}

#[tokio::test]
async fn a_stream_that_never_says_who_it_is_is_closed() {
    let cp = ControlPlane::start(None).await;
    let (_tx, stream) = tokio::time::timeout(Duration::from_secs(30), open_stream(&cp, None, None)).await.unwrap();
    let status = match stream {
        Err(s) => s,
        Ok(mut s) => tokio::time::timeout(Duration::from_secs(30), s.message()).await.unwrap().unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}
