//! Kubernetes injection end to end: the admission webhook of the real `bulwark-control` over
//! HTTPS with real AdmissionReview JSON, `bulwarkctl inject` on manifests, and the injected
//! proxy's side of the contract (the app's probes, the Job shutdown endpoint, wait-ready).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use bulwark_e2e::control::ControlPlane;
use bulwark_e2e::grpc::GrpcUpstream;
use bulwark_e2e::health_pb::health_check_response::ServingStatus;
use bulwark_e2e::proxy::{free_port, ProxyBuilder};
use bulwark_e2e::upstream::Upstream;
use bulwark_e2e::{client, tls, workspace_bin, TempDir};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    format!("{}/../control-api/tests/fixtures/inject/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": format!("{name}-"), "namespace": "shop", "labels": { "app": name }, "annotations": annotations },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example.com/shop/web:1",
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "readinessProbe": { "httpGet": { "path": "/ready", "port": "http" } },
            }],
        },
    })
}

fn review(uid: &str, object: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": object,
            "dryRun": false,
        },
    }))
    .unwrap()
}

struct Webhook {
    cp: ControlPlane,
    addr: SocketAddr,
    certs: tls::Certs,
    _dir: TempDir,
}

async fn start_webhook() -> Webhook {
    let dir = TempDir::new("webhook");
    let certs = tls::issue(dir.path(), "webhook");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "image: registry.local/bulwark-proxy:e2e\ndrainTimeout: 15s\n").unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cp = ControlPlane::start_with_args(
        [
            "--webhook-listen",
            &addr.to_string(),
            "--webhook-cert",
            &certs.cert.display().to_string(),
            "--webhook-key",
            &certs.key.display().to_string(),
            "--injection-values",
            &values.display().to_string(),
            "--discovery-token",
            "webhook-bootstrap",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    Webhook { cp, addr, certs, _dir: dir }
}

impl Webhook {
    async fn review(&self, body: Vec<u8>) -> Value {
        self.review_at("/inject", body).await
    }

    async fn review_at(&self, path: &str, body: Vec<u8>) -> Value {
        let reply = tls::request(self.addr, &self.certs.ca, "POST", path, body).await.expect("webhook answers");
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let v: Value = serde_json::from_slice(&reply.body).expect("JSON answer");
        assert_eq!(
            (v["apiVersion"].as_str(), v["kind"].as_str()),
            (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
        );
        v
    }
}

/// Applies the answer's patch to `object`, as the API server does.
fn apply(answer: &Value, object: &Value) -> Value {
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod");
    patched
}

#[tokio::test]
async fn webhook_answers_every_review_over_https() {
    if !tls::available() {
        return;
    }
    let w = start_webhook().await;

    // Accepted: the patch makes a pod with the native sidecar, from the chart values.
    let web = pod("web", json!({}));
    let answer = w.review(review("uid-accept", &web)).await;
    assert_eq!(answer["response"]["uid"], "uid-accept");
    assert_eq!(answer["response"]["allowed"], true);
    let injected = apply(&answer, &web);
    let typed: Pod = serde_json::from_value(injected.clone()).expect("the injected pod is a valid Pod");
    let spec = typed.spec.unwrap();
    let inits: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(inits, ["bulwark-init", "bulwark-proxy"]);
    let proxy = &spec.init_containers.as_ref().unwrap()[1];
    assert_eq!(proxy.image.as_deref(), Some("registry.local/bulwark-proxy:e2e"));
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let token = proxy.env.iter().flatten().find(|e| e.name == "BULWARK_DISCOVERY_TOKEN");
    assert_eq!(
        token.and_then(|e| e.value.as_deref()),
        Some("webhook-bootstrap"),
        "the injected proxy is given the control plane's discovery token"
    );
    let bootstrap = proxy.env.iter().flatten().find(|e| e.name == "BULWARK_BOOTSTRAP").unwrap();
    assert!(bootstrap.value.as_deref().unwrap().contains(r#""drainTimeout":"15000ms""#));
    assert_eq!(
        spec.containers[0].readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/app-health/web/readyz")
    );

    // Through the entry for a namespace enforcing Pod Security baseline: not injected, and the
    // warning says why and what to do.
    for level in ["baseline", "restricted"] {
        let answer = w.review_at(&format!("/inject/{level}"), review("uid-psa", &web)).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none(), "{answer}");
        let warning = answer["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains(&format!("Pod Security level \"{level}\"")) && warning.contains("exempt"),
            "{warning}"
        );
    }

    // Already injected: allowed, unchanged.
    let again = w.review(review("uid-again", &injected)).await;
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
    assert!(again["response"]["warnings"][0].as_str().unwrap().contains("already injected"), "{again}");

    // Opted out.
    let out = w.review(review("uid-optout", &pod("batch", json!({ "bulwark.dev/inject": "disabled" })))).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none(), "{out}");
    assert!(out["response"]["warnings"][0].as_str().unwrap().contains("opted out"), "{out}");

    // hostNetwork: allowed without a proxy, and the reason said.
    let mut host = pod("node-agent", json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    let answer = w.review(review("uid-host", &host)).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("hostNetwork"), "{answer}");

    // A bad annotation: denied, naming it.
    let bad = pod("typo", json!({ "bulwark.dev/skip-outbound-ports": "5432,postgres" }));
    let answer = w.review(review("uid-bad", &bad)).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["uid"], "uid-bad");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("bulwark.dev/skip-outbound-ports") && message.contains("\"postgres\""), "{message}");

    // Malformed bodies: a well-formed denial each, and the server keeps serving.
    for (body, says) in [
        (b"{ not json".to_vec(), "not JSON"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"old"}}"#.to_vec(),
            "expected admission.k8s.io/v1",
        ),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
        (review("uid-garbage", &json!({"metadata": {"name": "x"}, "spec": {"containers": "nope"}})), "not a valid pod"),
    ] {
        let answer = w.review(body).await;
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert_eq!(answer["response"]["status"]["code"], 400);
        assert!(answer["response"]["status"]["message"].as_str().unwrap().contains(says), "{answer}");
    }
    let health = tls::request(w.addr, &w.certs.ca, "GET", "/healthz", Vec::new()).await.unwrap();
    assert_eq!(health.status, 200);

    // Failures are logged with the pod's name.
    let logs = w.cp.logs();
    assert!(logs.contains("pod shop/typo-") && logs.contains("skip-outbound-ports"), "{logs}");
    assert!(logs.contains("pod shop/web-: injected"), "{logs}");
}

/// The chart's injector Deployment: `--webhook-only` serves the webhook without a store, and
/// gives injected proxies the control plane's discovery token; without one it refuses to start.
#[tokio::test]
async fn a_webhook_only_injector_needs_no_store_and_hands_out_the_control_planes_token() {
    if !tls::available() {
        return;
    }
    let dir = TempDir::new("injector");
    let certs = tls::issue(dir.path(), "webhook");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let injector = |extra: &[&str]| {
        let mut cmd = Command::new(workspace_bin("bulwark-control"));
        cmd.arg("--webhook-only")
            .args(["--webhook-listen", &addr.to_string()])
            .arg("--webhook-cert")
            .arg(&certs.cert)
            .arg("--webhook-key")
            .arg(&certs.key)
            // Never created: the injector has no store.
            .arg("--data-dir")
            .arg(dir.path().join("no-store"))
            .args(extra)
            .env_remove("BULWARK_DISCOVERY_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let refused = injector(&[]).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--webhook-only needs --discovery-token"), "{err}");

    let mut child = injector(&["--discovery-token", "shared-bootstrap"]).stderr(Stdio::null()).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tls::request(addr, &certs.ca, "GET", "/healthz", Vec::new()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the injector did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let web = pod("web", json!({}));
    let reply = tls::request(addr, &certs.ca, "POST", "/inject", review("uid-only", &web)).await.unwrap();
    let answer: Value = serde_json::from_slice(&reply.body).unwrap();
    let typed: Pod = serde_json::from_value(apply(&answer, &web)).unwrap();
    let proxy = typed.spec.unwrap().init_containers.unwrap().into_iter().find(|c| c.name == "bulwark-proxy").unwrap();
    let token = proxy.env.unwrap().into_iter().find(|e| e.name == "BULWARK_DISCOVERY_TOKEN").and_then(|e| e.value);
    assert_eq!(token.as_deref(), Some("shared-bootstrap"));
    assert!(!dir.path().join("no-store").exists(), "a webhook-only process keeps no store");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn webhook_reloads_its_certificate_when_the_files_change() {
    if !tls::available() {
        return;
    }
    let w = start_webhook().await;
    let first = tls::request(w.addr, &w.certs.ca, "GET", "/healthz", Vec::new()).await.unwrap();
    assert_eq!(first.server_cert, tls::der(&w.certs.cert));

    // A renewed pair from another CA, written over the served files.
    let renewed = tls::issue(w.cp.data.path(), "renewed");
    std::fs::copy(&renewed.key, &w.certs.key).unwrap();
    std::fs::copy(&renewed.cert, &w.certs.cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = tls::request(w.addr, &renewed.ca, "GET", "/healthz", Vec::new()).await {
            assert_eq!(r.server_cert, tls::der(&renewed.cert));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was not served:\n{}", w.cp.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken file is refused and the renewed pair stays in use.
    std::fs::write(&w.certs.cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !w.cp.logs().contains("webhook certificate not reloaded") {
        assert!(tokio::time::Instant::now() < deadline, "no word of the broken file:\n{}", w.cp.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still = tls::request(w.addr, &renewed.ca, "GET", "/healthz", Vec::new()).await.unwrap();
    assert_eq!(still.server_cert, tls::der(&renewed.cert));
}

fn bulwarkctl_inject(args: &[&str], stdin: &str) -> std::process::Output {
    bulwarkctl_offline("inject", args, stdin)
}

fn bulwarkctl_offline(command: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(workspace_bin("bulwarkctl"))
        .arg(command)
        .args(args)
        // Offline: no control plane is needed.
        .env("BULWARK_SERVER", "127.0.0.1:1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn bulwarkctl_inject_rewrites_workloads_and_leaves_the_rest() {
    let out = bulwarkctl_inject(&["-f", &fixture("deployment.yaml")], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let golden = std::fs::read_to_string(fixture("deployment.injected.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "configmap/web-config unchanged: not a workload",
            "deployment/web injected",
            "service/web unchanged: not a workload"
        ]
    );

    // From standard input, with the image from the command line; piping the result back in
    // changes nothing.
    let input = std::fs::read_to_string(fixture("cronjob.yaml")).unwrap();
    let out = bulwarkctl_inject(&["-f", "-", "--proxy-image", "registry.local/proxy:7"], &input);
    assert!(out.status.success());
    let injected = String::from_utf8(out.stdout).unwrap();
    assert!(injected.contains("image: registry.local/proxy:7"), "{injected}");
    let again = bulwarkctl_inject(&["-f", "-", "--proxy-image", "registry.local/proxy:7"], &injected);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), injected);
    assert!(String::from_utf8_lossy(&again.stderr).contains("cronjob/nightly-report skipped: already injected"));

    // A bad annotation: exit 1, nothing on stdout, the document and annotation named.
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    bulwark.dev/drain-timeout: forever\nspec:\n  containers:\n  - name: a\n    image: a\n";
    let out =
        bulwarkctl_inject(&["-f", "-"], &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n{bad}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 2: pod/p: annotation bulwark.dev/drain-timeout=\"forever\""), "{err}");
}

/// The lifecycle of an offline-injected manifest: injected, upgraded to another proxy image,
/// uninjected back to what it was.
#[test]
fn bulwarkctl_upgrade_and_uninject_round_trip() {
    let original = std::fs::read_to_string(fixture("deployment.yaml")).unwrap();
    let docs = |text: &[u8]| -> Vec<Value> {
        yaml_serde::Deserializer::from_slice(text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
    };
    let injected = bulwarkctl_inject(&["-f", "-"], &original);
    assert!(injected.status.success(), "{}", String::from_utf8_lossy(&injected.stderr));
    let text = String::from_utf8(injected.stdout).unwrap();
    assert!(text.contains("bulwark.dev/proxy-version: '0.1.0'"), "{text}");

    let upgraded =
        bulwarkctl_inject(&["-f", "-", "--upgrade", "--proxy-image", "registry.local/bulwark-proxy:0.2.0"], &text);
    assert!(upgraded.status.success(), "{}", String::from_utf8_lossy(&upgraded.stderr));
    assert!(String::from_utf8_lossy(&upgraded.stderr).contains("deployment/web re-injected"));
    let fresh = bulwarkctl_inject(&["-f", "-", "--proxy-image", "registry.local/bulwark-proxy:0.2.0"], &original);
    assert_eq!(docs(&upgraded.stdout), docs(&fresh.stdout), "an upgrade is a fresh injection with the new values");
    let upgraded_text = String::from_utf8(upgraded.stdout).unwrap();
    assert!(upgraded_text.contains("bulwark.dev/proxy-version: '0.2.0'"));
    assert!(!upgraded_text.contains(":0.1.0"), "no trace of the old proxy:\n{upgraded_text}");

    let uninjected = bulwarkctl_offline("uninject", &["-f", "-"], &upgraded_text);
    assert!(uninjected.status.success(), "{}", String::from_utf8_lossy(&uninjected.stderr));
    assert_eq!(
        String::from_utf8_lossy(&uninjected.stderr).lines().collect::<Vec<_>>(),
        [
            "configmap/web-config unchanged: not a workload",
            "deployment/web uninjected",
            "service/web unchanged: not a workload"
        ]
    );
    assert_eq!(docs(&uninjected.stdout), docs(original.as_bytes()), "uninjected is the manifest as it was");
    let again = bulwarkctl_offline("uninject", &["-f", "-"], &String::from_utf8_lossy(&uninjected.stdout));
    assert!(String::from_utf8_lossy(&again.stderr).contains("deployment/web skipped: has no Bulwark proxy"));
    assert_eq!(again.stdout, uninjected.stdout);
}

/// The injector's probe rewrite and the proxy's `/app-health/` agree: an injected pod's
/// BULWARK_APP_PROBES, handed to a real proxy, checks the real app.
#[tokio::test]
async fn injected_probes_are_run_by_the_proxy_against_the_app() {
    let web = Upstream::start().await;
    let grpc = GrpcUpstream::start().await;
    let closed = free_port();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers:\n  - name: web\n    image: web\n    ports: [{{name: http, containerPort: {}}}, {{containerPort: {}}}]\n    readinessProbe: {{httpGet: {{path: /ready, port: http}}}}\n    livenessProbe: {{tcpSocket: {{port: {closed}}}}}\n  - name: rpc\n    image: rpc\n    ports: [{{containerPort: {}}}]\n    readinessProbe: {{grpc: {{port: {}}}}}\n",
        web.addr.port(),
        closed,
        grpc.addr.port(),
        grpc.addr.port()
    );
    let out = bulwarkctl_inject(&["-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod: Pod = yaml_serde::from_slice(&out.stdout).unwrap();
    let proxy = pod.spec.unwrap().init_containers.unwrap().into_iter().find(|c| c.name == "bulwark-proxy").unwrap();
    let probes = proxy.env.unwrap().into_iter().find(|e| e.name == "BULWARK_APP_PROBES").unwrap().value.unwrap();

    let p = ProxyBuilder::new().as_sidecar().env("BULWARK_APP_PROBES", &probes).start().await;
    let status = |path: &'static str| {
        let health = p.health;
        async move { client::get(health, path, &[]).await.unwrap().status.as_u16() }
    };
    assert_eq!(status("/app-health/web/readyz").await, 200);
    web.set_status(503);
    assert_eq!(status("/app-health/web/readyz").await, 503, "the app's own status reaches kubelet");
    assert_eq!(status("/app-health/web/livez").await, 503, "nothing listens on the TCP probe's port");
    assert_eq!(status("/app-health/rpc/readyz").await, 200);
    grpc.health.set(ServingStatus::NotServing);
    assert_eq!(status("/app-health/rpc/readyz").await, 503);
    assert_eq!(status("/app-health/rpc/livez").await, 404);
    assert_eq!(web.requests(), 2, "probes bypass the proxy's listeners: only the two HTTP checks reached the app");
}

#[tokio::test]
async fn a_malformed_bootstrap_or_probe_list_stops_the_start_with_its_reason() {
    for (var, value, says) in [
        ("BULWARK_BOOTSTRAP", "drainTimeout: forever\n", "BULWARK_BOOTSTRAP"),
        ("BULWARK_APP_PROBES", "{not json", "BULWARK_APP_PROBES"),
    ] {
        let mut cmd = Command::new(workspace_bin("bulwark-proxy"));
        cmd.arg("run").env(var, value);
        if var == "BULWARK_APP_PROBES" {
            cmd.env("BULWARK_BOOTSTRAP", "admin: 127.0.0.1:0\nhealth: 127.0.0.1:0\n");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{var}: {err}");
    }
}

/// A Job on a cluster without native sidecars: the app asks its proxy to finish.
#[tokio::test]
async fn quitquitquit_drains_and_exits() {
    let mut p = ProxyBuilder::new().as_sidecar().start().await;
    let req = client::request(http::Method::POST, "/quitquitquit", &[]);
    let reply = client::send(p.admin, req).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = p.wait_exit(Duration::from_secs(15)).await.expect("the proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(p.logs().contains("shutdown requested on the admin port"));
}

#[tokio::test]
async fn wait_ready_returns_once_the_proxy_is_ready_and_fails_after_its_timeout() {
    let p = ProxyBuilder::new().start().await;
    let url = format!("http://{}/ready", p.health);
    let out = Command::new(workspace_bin("bulwark-proxy"))
        .args(["wait-ready", "--url", &url, "--timeout", "10s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let nobody = format!("http://127.0.0.1:{}/ready", free_port());
    let out = Command::new(workspace_bin("bulwark-proxy"))
        .args(["wait-ready", "--url", &nobody, "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready after 1s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The init container's arguments are ones the real `bulwark-proxy init` accepts, and they
/// write the redirect the network-namespace tests prove: printed here with --dry-run.
#[test]
fn the_injected_init_container_runs_bulwark_proxy_init() {
    let out = bulwarkctl_inject(&["-f", &fixture("statefulset.yaml")], "");
    assert!(out.status.success());
    let set: k8s_openapi::api::apps::v1::StatefulSet = yaml_serde::from_slice(&out.stdout).unwrap();
    let pod = set.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.unwrap().into_iter().find(|c| c.name == "bulwark-init").unwrap();
    let out = Command::new(workspace_bin("bulwark-proxy"))
        .args(init.args.unwrap())
        .args(["--dry-run", "--ipv6", "off"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules = String::from_utf8_lossy(&out.stdout);
    for want in [
        // Every inbound port but the skipped one and the proxy's own.
        "-A BULWARK_INBOUND -p tcp --dport 5433 -j RETURN",
        "-A BULWARK_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A BULWARK_INBOUND -p tcp -j BULWARK_IN_REDIRECT",
        "-A BULWARK_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A BULWARK_OUTPUT -d 10.20.0.0/16 -j RETURN",
        "-A BULWARK_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(rules.contains(want), "missing {want:?} in:\n{rules}");
    }
}

/// A pod using fields newer than the Kubernetes types Bulwark is built with (1.34/1.35).
fn pod_with_newer_fields() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "redis", "namespace": "shop" },
        "spec": {
            "initContainers": [{
                "name": "secret-init",
                "image": "quay.io/argoproj/argocd:v3.1.0",
                "restartPolicy": "Never",
                "restartPolicyRules": [{ "action": "Restart", "exitCodes": { "operator": "In", "values": [42] } }],
            }],
            "containers": [{
                "name": "redis",
                "image": "redis:7.2.7-alpine",
                "args": ["--appendonly", "no"],
                "env": [{ "name": "P", "valueFrom": { "fileKeyRef": { "volumeName": "config", "path": "redis.env", "key": "password" } } }],
                "ports": [{ "containerPort": 6379 }],
            }],
            "volumes": [
                { "name": "config", "emptyDir": {} },
                { "name": "certs", "projected": { "sources": [{ "podCertificate": { "signerName": "example.com/redis", "keyType": "ED25519", "credentialBundlePath": "c.pem" } }] } },
            ],
        },
    })
}

#[tokio::test]
async fn the_webhooks_patch_applied_by_another_implementation_keeps_what_bulwark_does_not_own() {
    if !tls::available() {
        return;
    }
    let python = bulwark_e2e::venv_bin("python");
    let ready =
        std::process::Command::new(&python).args(["-c", "import jsonpatch"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        println!("SKIPPED: Python's jsonpatch is not in .venv (scripts/deps.sh installs it)");
        return;
    }
    let w = start_webhook().await;
    let original = pod_with_newer_fields();
    let answer = w.review(review("uid-newer", &original)).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let dir = TempDir::new("jsonpatch");
    std::fs::write(dir.path().join("pod.json"), serde_json::to_vec(&original).unwrap()).unwrap();
    std::fs::write(dir.path().join("patch.json"), &patch).unwrap();
    let run = std::process::Command::new(&python)
        .arg("-c")
        .arg("import json, sys, jsonpatch\nd = sys.argv[1]\npod = json.load(open(d + '/pod.json'))\nout = jsonpatch.JsonPatch(json.load(open(d + '/patch.json'))).apply(pod)\njson.dump(out, open(d + '/injected.json', 'w'))\n")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let injected: Value = serde_json::from_slice(&std::fs::read(dir.path().join("injected.json")).unwrap()).unwrap();
    let spec = &injected["spec"];
    let app_init = spec["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "secret-init").unwrap();
    assert_eq!(app_init, &original["spec"]["initContainers"][0], "restartPolicyRules kept");
    assert_eq!(spec["containers"][0]["env"], original["spec"]["containers"][0]["env"], "fileKeyRef kept");
    assert_eq!(spec["volumes"][1], original["spec"]["volumes"][1], "podCertificate kept");
    assert_eq!(spec["containers"][0]["args"], json!(["--appendonly", "no"]));
    let names: Vec<&str> =
        spec["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bulwark-init", "bulwark-proxy", "secret-init"]);
    // And the result is a valid Pod of the Kubernetes that has these fields.
    let validator = bulwark_e2e::venv_bin("kubernetes-validate");
    if validator.exists() {
        let v = std::process::Command::new(&validator)
            .args(["--strict", "--quiet", "-k", "1.35.0"])
            .arg(dir.path().join("injected.json"))
            .output()
            .unwrap();
        assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    } else {
        println!("SKIPPED (strict validation): kubernetes-validate is not in .venv");
    }
}
