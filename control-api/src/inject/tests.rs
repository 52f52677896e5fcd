//! Golden tests on real-world manifests: the injected output is compared whole with
//! `tests/fixtures/inject/NAME.injected.yaml` (rewrite them with BULWARK_BLESS=1 after a
//! deliberate change and review the diff), every injected object must deserialize as its
//! Kubernetes type, and the additions are checked one by one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::manifest::inject_stream;
use super::*;

fn fixture(name: &str) -> (String, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject");
    (std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap(), dir.join(format!("{name}.injected.yaml")))
}

/// Injects the fixture with the default values and checks the golden file.
fn golden(name: &str) -> (String, Vec<manifest::Line>) {
    let (input, golden) = fixture(name);
    let (out, lines) = inject_stream(&Values::default(), &input).unwrap();
    if std::env::var_os("BULWARK_BLESS").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; run with BULWARK_BLESS=1 to write it", golden.display()));
    assert_eq!(out, expected, "{name}: injected output differs from {}", golden.display());
    // Injecting twice changes nothing.
    let (again, again_lines) = inject_stream(&Values::default(), &out).unwrap();
    assert_eq!(again, out, "{name}: second injection changed the output");
    for l in again_lines.iter().filter(|l| l.outcome.is_some()) {
        assert_eq!(l.outcome, Some(Outcome::Unchanged(Skip::AlreadyInjected)), "{}", l.object);
    }
    (out, lines)
}

fn docs(stream: &str) -> Vec<yaml_serde::Value> {
    yaml_serde::Deserializer::from_str(stream).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn env_of(c: &Container, name: &str) -> Option<String> {
    c.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone())
}

fn arg_after(c: &Container, flag: &str) -> Option<String> {
    let args = c.args.as_ref()?;
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1).cloned())
}

/// The additions every injected pod has, whatever the mode.
fn common(spec: &PodSpec) -> (Container, Container) {
    let init = spec.init_containers.iter().flatten().find(|c| c.name == INIT_CONTAINER).cloned().unwrap();
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == PROXY_CONTAINER)
        .cloned()
        .unwrap();
    let sc = init.security_context.clone().unwrap();
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.add.unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(init.args.as_ref().unwrap()[0], "init");
    assert_eq!(arg_after(&init, "--proxy-uid").as_deref(), Some("1337"));
    let psc = proxy.security_context.clone().unwrap();
    assert_eq!((psc.run_as_user, psc.run_as_non_root), (Some(1337), Some(true)));
    assert!(spec.volumes.iter().flatten().any(|v| v.name == "bulwark-xtables"));
    // The snapshot cache lives in an emptyDir the proxy writes, so it outlives the container.
    let cache = spec.volumes.iter().flatten().find(|v| v.name == "bulwark-cache").unwrap();
    assert!(cache.empty_dir.is_some());
    let mount = proxy.volume_mounts.iter().flatten().find(|m| m.name == "bulwark-cache").unwrap();
    let boot: serde_json::Value = serde_json::from_str(&env_of(&proxy, "BULWARK_BOOTSTRAP").unwrap()).unwrap();
    let cache_file = boot["controlPlane"]["cacheFile"].as_str().unwrap();
    assert!(cache_file.starts_with(&format!("{}/", mount.mount_path)), "{cache_file}");
    (init, proxy)
}

#[test]
fn deployment_native_sidecar_with_rewritten_probes() {
    let (out, lines) = golden("deployment");
    let objects: Vec<_> = lines.iter().map(|l| (l.object.as_str(), l.outcome.clone())).collect();
    assert_eq!(
        objects,
        [("configmap/web-config", None), ("deployment/web", Some(Outcome::Injected)), ("service/web", None)]
    );
    let (input, _) = fixture("deployment");
    let d = docs(&out);
    // Documents other than workloads come back exactly as written, comments included.
    assert!(out.starts_with(input.split("---\n").next().unwrap()));
    assert!(out.ends_with(input.split("---\n").last().unwrap()));

    let deployment: Deployment = yaml_serde::from_value(d[1].clone()).unwrap();
    let template = deployment.spec.unwrap().template;
    let spec = template.spec.unwrap();
    let init_names: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init_names, [INIT_CONTAINER, PROXY_CONTAINER], "redirect first, then the native sidecar");
    let (init, proxy) = common(&spec);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.startup_probe.clone().unwrap().http_get.unwrap().path.as_deref(), Some("/ready"));
    assert_eq!(arg_after(&init, "--inbound-ports"), None, "every inbound port is captured by default");
    // Drain deadline inside the 60 s grace period: the default 20 s.
    assert!(env_of(&proxy, "BULWARK_BOOTSTRAP").unwrap().contains(r#""drainTimeout":"20000ms""#));

    let web = &spec.containers[0];
    let ready = web.readiness_probe.clone().unwrap();
    let get = ready.http_get.unwrap();
    assert_eq!((get.path.as_deref(), &get.port), (Some("/app-health/web/readyz"), &IntOrString::Int(15020)));
    assert_eq!((ready.period_seconds, ready.timeout_seconds), (Some(5), Some(2)), "timing kept");
    let live = web.liveness_probe.clone().unwrap();
    assert!(live.tcp_socket.is_none());
    assert_eq!(live.http_get.unwrap().path.as_deref(), Some("/app-health/web/livez"));
    assert!(web.startup_probe.clone().unwrap().exec.is_some(), "exec probes are left alone");

    let probes = bulwark_policy::app_probe::parse(&env_of(&proxy, "BULWARK_APP_PROBES").unwrap()).unwrap();
    use bulwark_policy::app_probe::Check;
    assert_eq!(
        probes["/app-health/web/readyz"].check,
        Check::HttpGet {
            path: "/healthz/ready".into(),
            port: 8080,
            headers: vec![("X-Probe".into(), "kubelet".into())]
        },
        "named port resolved, headers kept"
    );
    assert_eq!(probes["/app-health/web/readyz"].timeout_seconds, 2);
    assert_eq!(probes["/app-health/web/livez"].check, Check::TcpSocket { port: 8080 });
    assert_eq!(probes.len(), 2);

    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["bulwark.dev/status"], "injected");
    assert_eq!(annotations["kubectl.kubernetes.io/default-container"], "web");
    assert_eq!(spec.containers.len(), 1, "the app's containers are not touched in native mode");
}

#[test]
fn statefulset_annotations_skip_ports_and_cidrs() {
    let (out, _) = golden("statefulset");
    let set: StatefulSet = yaml_serde::from_value(docs(&out)[0].clone()).unwrap();
    let spec = set.spec.unwrap();
    assert_eq!(spec.volume_claim_templates.unwrap().len(), 1, "volumeClaimTemplates kept");
    let pod = spec.template.spec.unwrap();
    let (init, proxy) = common(&pod);
    assert_eq!(arg_after(&init, "--inbound-ports"), None);
    assert_eq!(arg_after(&init, "--exclude-inbound-ports").as_deref(), Some("5433,15000,15020"));
    assert_eq!(arg_after(&init, "--exclude-outbound-cidrs").as_deref(), Some("10.20.0.0/16"));
    assert_eq!(proxy.resources.clone().unwrap().limits.unwrap()["memory"].0, "128Mi");
    // The liveness probe's port is skipped, so kubelet reaches the app directly as before.
    let pg = &pod.containers[0];
    assert_eq!(pg.liveness_probe.clone().unwrap().tcp_socket.unwrap().port, IntOrString::String("replication".into()));
    assert!(env_of(&proxy, "BULWARK_APP_PROBES").is_none());
    // Default grace period (30 s) leaves the default drain deadline as it is.
    assert!(env_of(&proxy, "BULWARK_BOOTSTRAP").unwrap().contains(r#""drainTimeout":"20000ms""#));
}

#[test]
fn cronjob_pod_template_is_injected() {
    let (out, lines) = golden("cronjob");
    assert_eq!(lines[0].object, "cronjob/nightly-report");
    let job: CronJob = yaml_serde::from_value(docs(&out)[0].clone()).unwrap();
    let pod = job.spec.unwrap().job_template.spec.unwrap().template.spec.unwrap();
    let (init, proxy) = common(&pod);
    // A native sidecar ends with the Job's last app container, so the Job completes.
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(arg_after(&init, "--inbound-ports"), None, "no declared port: every port is captured");
    assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
}

#[test]
fn pod_fallback_without_native_sidecars() {
    let (out, _) = golden("pod");
    let pod: Pod = yaml_serde::from_value(docs(&out)[0].clone()).unwrap();
    let spec = pod.spec.unwrap();
    let (init, proxy) = common(&spec);
    let init_names: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init_names, ["fetch-index", INIT_CONTAINER], "the redirect comes after the app's init containers");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [PROXY_CONTAINER, "api", "log-shipper"], "the proxy is listed first");
    assert_eq!(proxy.restart_policy, None);
    let hook = proxy.lifecycle.clone().unwrap().post_start.unwrap().exec.unwrap().command.unwrap();
    assert_eq!(&hook[..2], ["bulwark-proxy", "wait-ready"]);
    assert_eq!(env_of(&proxy, "BULWARK_LOG").as_deref(), Some("debug"));
    assert_eq!(arg_after(&init, "--inbound-ports"), None);

    let probes = bulwark_policy::app_probe::parse(&env_of(&proxy, "BULWARK_APP_PROBES").unwrap()).unwrap();
    use bulwark_policy::app_probe::Check;
    assert_eq!(
        probes["/app-health/api/readyz"].check,
        Check::Grpc { port: 50051, service: Some("search.v1.Search".into()) }
    );
    assert_eq!(
        probes["/app-health/api/livez"].check,
        Check::HttpGet { path: "/live".into(), port: 8081, headers: vec![] }
    );
    assert_eq!(probes.len(), 2, "the HTTPS probe of the log shipper is left alone");
    let shipper = &spec.containers[2];
    assert_eq!(shipper.liveness_probe.clone().unwrap().http_get.unwrap().scheme.as_deref(), Some("HTTPS"));
    assert_eq!(pod.metadata.annotations.unwrap()["kubectl.kubernetes.io/default-container"], "api");
}

fn pod_spec(grace: Option<i64>) -> (ObjectMeta, PodSpec) {
    let spec = PodSpec {
        containers: vec![Container { name: "app".into(), image: Some("app:1".into()), ..Default::default() }],
        termination_grace_period_seconds: grace,
        ..Default::default()
    };
    (ObjectMeta { name: Some("p".into()), ..Default::default() }, spec)
}

#[test]
fn drain_deadline_fits_the_grace_period() {
    assert_eq!(drain_deadline(Duration::from_secs(20), 30), Duration::from_secs(20));
    assert_eq!(drain_deadline(Duration::from_secs(20), 10), Duration::from_secs(9));
    assert_eq!(drain_deadline(Duration::from_secs(20), 0), Duration::from_secs(1));
    let (mut meta, mut spec) = pod_spec(Some(5));
    inject(&Values::default(), &mut meta, &mut spec).unwrap();
    let proxy = spec.init_containers.unwrap().into_iter().find(|c| c.name == PROXY_CONTAINER).unwrap();
    assert!(env_of(&proxy, "BULWARK_BOOTSTRAP").unwrap().contains(r#""drainTimeout":"4000ms""#));
}

#[test]
fn opt_out_host_network_and_bad_annotations_change_nothing() {
    let (mut meta, mut spec) = pod_spec(None);
    meta.annotations = Some(BTreeMap::from([(annotations::INJECT.to_string(), "disabled".to_string())]));
    let before = (meta.clone(), spec.clone());
    assert_eq!(inject(&Values::default(), &mut meta, &mut spec).unwrap(), Outcome::Unchanged(Skip::OptedOut));
    assert_eq!((meta, spec), before);

    let (mut meta, mut spec) = pod_spec(None);
    meta.labels = Some(BTreeMap::from([(annotations::INJECT.to_string(), "disabled".to_string())]));
    assert_eq!(inject(&Values::default(), &mut meta, &mut spec).unwrap(), Outcome::Unchanged(Skip::OptedOut));

    let (mut meta, mut spec) = pod_spec(None);
    spec.host_network = Some(true);
    let before = (meta.clone(), spec.clone());
    let outcome = inject(&Values::default(), &mut meta, &mut spec).unwrap();
    assert_eq!(outcome, Outcome::Unchanged(Skip::HostNetwork));
    assert!(Skip::HostNetwork.to_string().contains("hostNetwork"));
    assert_eq!((meta, spec), before);

    let (mut meta, mut spec) = pod_spec(None);
    meta.annotations = Some(BTreeMap::from([(annotations::SKIP_OUTBOUND_PORTS.to_string(), "53,dns".to_string())]));
    let before = (meta.clone(), spec.clone());
    let e = inject(&Values::default(), &mut meta, &mut spec).unwrap_err();
    assert!(e.to_string().contains("bulwark.dev/skip-outbound-ports"), "{e}");
    assert_eq!((meta, spec), before);
}

#[test]
fn stream_errors_name_the_document_and_object() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  replicas: many\n";
    let e = inject_stream(&Values::default(), text).unwrap_err();
    assert!(e.starts_with("document 2: deployment/broken: spec.replicas"), "{e}");
    let e = inject_stream(&Values::default(), "kind: [unclosed\n").unwrap_err();
    assert!(e.starts_with("document 1:"), "{e}");
}

#[test]
fn values_file_errors_name_the_field() {
    let e = Values::from_yaml("image: x\nresources: {cpuLimt: 1}\n", "values.yaml").unwrap_err();
    assert!(e.starts_with("values.yaml: resources"), "{e}");
    let e = Values::from_yaml("drainTimeout: soon\n", "values.yaml").unwrap_err();
    assert!(e.contains("drainTimeout"), "{e}");
    let v = Values::from_yaml("image: registry.local/proxy:1\nnativeSidecar: false\n", "values.yaml").unwrap();
    assert_eq!((v.image.as_str(), v.native_sidecar, v.uid), ("registry.local/proxy:1", false, 1337));
}

#[test]
fn fields_newer_than_the_kubernetes_types_survive_and_yaml_1_1_strings_stay_strings() {
    let (out, lines) = golden("newer-fields");
    assert_eq!(lines[0].outcome, Some(Outcome::Injected));
    let (input, _) = fixture("newer-fields");
    let before: yaml_serde::Value = yaml_serde::from_str(&input).unwrap();
    let after: yaml_serde::Value = yaml_serde::from_str(&out).unwrap();
    let spec = |v: &yaml_serde::Value| v["spec"]["template"]["spec"].clone();
    let (was, now) = (spec(&before), spec(&after));
    // The app's own init container, container and volumes are exactly as they were.
    let app_init = now["initContainers"].as_sequence().unwrap().iter().find(|c| c["name"] == "secret-init").unwrap();
    assert_eq!(app_init, &was["initContainers"][0], "restartPolicyRules kept");
    assert_eq!(now["containers"][0]["env"], was["containers"][0]["env"], "valueFrom.fileKeyRef kept");
    assert_eq!(now["volumes"][1], was["volumes"][1], "the podCertificate projection kept");
    assert_eq!(now["volumes"][0], was["volumes"][0]);
    // A YAML 1.1 reader (kubectl) reads the same strings: "no" is quoted, not a boolean.
    assert!(out.contains("- 'no'\n"), "{out}");
    assert!(out.contains("- ''\n"), "{out}");
    assert_eq!(now["containers"][0]["args"], was["containers"][0]["args"]);
    // Key order of what was there is kept.
    let keys = |v: &yaml_serde::Value| -> Vec<String> {
        v.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(keys(&now["containers"][0]), keys(&was["containers"][0]));
    assert_eq!(&keys(&after)[..4], ["apiVersion", "kind", "metadata", "spec"]);
}

#[test]
fn pods_injection_would_break_are_left_alone_with_the_reason() {
    use k8s_openapi::api::core::v1::{ContainerPort, PodOS, PodSecurityContext, SecurityContext};
    let refused = |change: &dyn Fn(&mut PodSpec)| {
        let (mut meta, mut spec) = pod_spec(None);
        change(&mut spec);
        let before = (meta.clone(), spec.clone());
        let outcome = inject(&Values::default(), &mut meta, &mut spec).unwrap();
        assert_eq!((meta, spec), before, "nothing changed");
        match outcome {
            Outcome::Unchanged(skip) => skip,
            other => panic!("injected: {other:?}"),
        }
    };
    let skip =
        refused(&|s| s.security_context = Some(PodSecurityContext { run_as_user: Some(1337), ..Default::default() }));
    assert_eq!(skip, Skip::RunsAsProxyUid("app".into()));
    assert!(skip.to_string().contains("runs as the proxy's UID"), "{skip}");
    let skip = refused(&|s| {
        s.containers[0].security_context = Some(SecurityContext { run_as_user: Some(1337), ..Default::default() })
    });
    assert_eq!(skip, Skip::RunsAsProxyUid("app".into()));
    let skip =
        refused(&|s| s.containers[0].ports = Some(vec![ContainerPort { container_port: 15001, ..Default::default() }]));
    assert_eq!(skip, Skip::PortClash { container: "app".into(), port: 15001 });
    assert!(skip.to_string().contains("port 15001"), "{skip}");
    let skip = refused(&|s| s.os = Some(PodOS { name: "windows".into() }));
    assert_eq!(skip, Skip::Windows);
    // Another UID, or a port of its own, is fine.
    let (mut meta, mut spec) = pod_spec(None);
    spec.security_context = Some(PodSecurityContext { run_as_user: Some(1000), ..Default::default() });
    assert_eq!(inject(&Values::default(), &mut meta, &mut spec).unwrap(), Outcome::Injected);
}

#[test]
fn a_guaranteed_pod_stays_guaranteed() {
    let exact = |cpu: &str, mem: &str| ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), Quantity(cpu.into())), ("memory".into(), Quantity(mem.into()))])),
        limits: Some(BTreeMap::from([("cpu".into(), Quantity(cpu.into())), ("memory".into(), Quantity(mem.into()))])),
        ..Default::default()
    };
    let (mut meta, mut spec) = pod_spec(None);
    spec.containers[0].resources = Some(exact("2", "4Gi"));
    inject(&Values::default(), &mut meta, &mut spec).unwrap();
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        let r = c.resources.clone().unwrap();
        assert_eq!(r.requests, r.limits, "{}", c.name);
        let limits = r.limits.unwrap();
        assert!(limits.contains_key("cpu") && limits.contains_key("memory"), "{}: {limits:?}", c.name);
    }
    // A Burstable pod keeps the proxy's own requests and limits.
    let (mut meta, mut spec) = pod_spec(None);
    inject(&Values::default(), &mut meta, &mut spec).unwrap();
    let proxy = spec.init_containers.unwrap().into_iter().find(|c| c.name == PROXY_CONTAINER).unwrap();
    let r = proxy.resources.unwrap();
    assert_ne!(r.requests, r.limits);
}

#[test]
fn an_apps_native_sidecar_is_captured_and_probed_like_the_app() {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction};
    let (mut meta, mut spec) = pod_spec(None);
    spec.init_containers = Some(vec![Container {
        name: "envoy-like".into(),
        image: Some("sidecar:1".into()),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort { container_port: 9901, name: Some("admin".into()), ..Default::default() }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("admin".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    spec.containers[0].ports = Some(vec![ContainerPort { container_port: 8080, ..Default::default() }]);
    // Only the declared ports, the sidecar's included.
    let declared = Values { inbound_capture: InboundCapture::Declared, ..Values::default() };
    inject(&declared, &mut meta, &mut spec).unwrap();
    let inits = spec.init_containers.unwrap();
    let sidecar = inits.iter().find(|c| c.name == "envoy-like").unwrap();
    let get = sidecar.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!((get.path.as_deref(), get.port), (Some("/app-health/envoy-like/readyz"), IntOrString::Int(15020)));
    let init = inits.iter().find(|c| c.name == INIT_CONTAINER).unwrap();
    assert_eq!(arg_after(init, "--inbound-ports").as_deref(), Some("8080,9901"));
    let proxy = inits.iter().find(|c| c.name == PROXY_CONTAINER).unwrap();
    assert!(env_of(proxy, "BULWARK_APP_PROBES").unwrap().contains("/app-health/envoy-like/readyz"));
}

#[test]
fn declared_inbound_capture_is_a_mode_of_its_own() {
    use k8s_openapi::api::core::v1::ContainerPort;
    let (mut meta, mut spec) = pod_spec(None);
    spec.containers[0].ports = Some(vec![ContainerPort { container_port: 8080, ..Default::default() }]);
    meta.annotations = Some(BTreeMap::from([(annotations::INBOUND_CAPTURE.to_string(), "declared".to_string())]));
    inject(&Values::default(), &mut meta, &mut spec).unwrap();
    let init = spec.init_containers.unwrap().into_iter().find(|c| c.name == INIT_CONTAINER).unwrap();
    assert_eq!(arg_after(&init, "--inbound-ports").as_deref(), Some("8080"));

    let (mut meta, mut spec) = pod_spec(None);
    meta.annotations = Some(BTreeMap::from([(annotations::INBOUND_CAPTURE.to_string(), "some".to_string())]));
    let e = inject(&Values::default(), &mut meta, &mut spec).unwrap_err();
    assert!(e.to_string().contains("bulwark.dev/inbound-capture") && e.to_string().contains("all or declared"), "{e}");
}

const FIXTURES: [&str; 5] = ["cronjob", "deployment", "pod", "newer-fields", "statefulset"];

#[test]
fn uninject_gives_every_fixture_back_as_it_was() {
    for name in FIXTURES {
        let (input, _) = fixture(name);
        let (injected, _) = inject_stream(&Values::default(), &input).unwrap();
        let (out, lines) = manifest::act_stream(&Values::default(), &injected, Action::Uninject).unwrap();
        assert_eq!(docs(&out), docs(&input), "{name}: uninjected differs from the original:\n{out}");
        let injected_objects = lines.iter().filter(|l| l.outcome == Some(Outcome::Uninjected)).count();
        assert!(injected_objects >= 1, "{name}: {lines:?}");
        // Uninjecting what has no proxy changes no byte.
        let (again, lines) = manifest::act_stream(&Values::default(), &out, Action::Uninject).unwrap();
        assert_eq!(again, out, "{name}");
        assert!(lines.iter().all(|l| matches!(l.outcome, None | Some(Outcome::Unchanged(Skip::NotInjected)))));
    }
}

#[test]
fn uninject_keeps_edits_made_since_injection() {
    let (input, _) = fixture("deployment");
    let (injected, _) = inject_stream(&Values::default(), &input).unwrap();
    // The app's image moves on and a probe gets a longer period after injection.
    let edited = injected.replace("periodSeconds: 5", "periodSeconds: 7");
    assert_ne!(edited, injected, "the fixture has a probe period of 5");
    let (out, _) = manifest::act_stream(&Values::default(), &edited, Action::Uninject).unwrap();
    let expected = input.replace("periodSeconds: 5", "periodSeconds: 7");
    assert_eq!(docs(&out), docs(&expected));
}

#[test]
fn upgrade_reinjects_with_the_new_values_and_records_the_version() {
    let newer = Values { image: "registry.local/bulwark-proxy:0.2.0".into(), ..Values::default() };
    for name in FIXTURES {
        let (input, _) = fixture(name);
        let (old, _) = inject_stream(&Values::default(), &input).unwrap();
        assert!(old.contains("bulwark.dev/proxy-version: '0.1.0'"), "{name}: {old}");
        let (upgraded, lines) = manifest::act_stream(&newer, &old, Action::Upgrade).unwrap();
        let (fresh, _) = inject_stream(&newer, &input).unwrap();
        assert_eq!(docs(&upgraded), docs(&fresh), "{name}: upgrade differs from a fresh injection");
        assert!(upgraded.contains("bulwark.dev/proxy-version: '0.2.0'"), "{name}");
        assert!(lines.iter().any(|l| l.outcome == Some(Outcome::Reinjected)), "{name}: {lines:?}");
        // Without --upgrade an injected pod is left as it is.
        let (kept, _) = inject_stream(&newer, &old).unwrap();
        assert_eq!(kept, old);
    }
    // Upgrade of a pod never injected injects it.
    let (input, _) = fixture("deployment");
    let (out, lines) = manifest::act_stream(&newer, &input, Action::Upgrade).unwrap();
    assert_eq!(out, inject_stream(&newer, &input).unwrap().0);
    assert!(lines.iter().any(|l| l.outcome == Some(Outcome::Injected)));
}

#[test]
fn proxy_version_is_the_images_tag() {
    assert_eq!(proxy_version("ghcr.io/bulwark-mesh/bulwark-proxy:0.3.1"), "0.3.1");
    assert_eq!(proxy_version("registry:5000/bulwark-proxy"), env!("CARGO_PKG_VERSION"));
    assert_eq!(proxy_version("registry:5000/bulwark-proxy:v2@sha256:abc"), "v2");
    assert_eq!(proxy_version("bulwark-proxy@sha256:abc"), "sha256:abc");
}

#[test]
fn a_run_to_completion_pod_without_native_sidecars_is_refused_unless_its_app_ends_the_proxy() {
    let fallback = Values { native_sidecar: false, ..Values::default() };
    for policy in ["Never", "OnFailure"] {
        let (mut meta, mut spec) = pod_spec(None);
        spec.restart_policy = Some(policy.into());
        let before = (meta.clone(), spec.clone());
        let outcome = inject(&fallback, &mut meta, &mut spec).unwrap();
        assert_eq!(outcome, Outcome::Unchanged(Skip::RunsToCompletion(policy.into())));
        assert_eq!((meta.clone(), spec.clone()), before);
        let why = Skip::RunsToCompletion(policy.into()).to_string();
        assert!(why.contains("never complete") && why.contains(annotations::APP_ENDS_PROXY), "{why}");
        // Native sidecars end with the app: injected.
        assert_eq!(inject(&Values::default(), &mut meta.clone(), &mut spec.clone()).unwrap(), Outcome::Injected);
        // The app says it ends its proxy: injected.
        meta.annotations = Some(BTreeMap::from([(annotations::APP_ENDS_PROXY.into(), "true".into())]));
        assert_eq!(inject(&fallback, &mut meta, &mut spec).unwrap(), Outcome::Injected);
    }
    // A Job through bulwarkctl inject: the line says why.
    let (input, _) = fixture("cronjob");
    let (out, lines) = inject_stream(&fallback, &input).unwrap();
    assert_eq!(out.trim_end(), input.trim_end(), "nothing injected");
    let skipped = lines.iter().find(|l| l.object.starts_with("cronjob/")).unwrap();
    assert!(matches!(skipped.outcome, Some(Outcome::Unchanged(Skip::RunsToCompletion(_)))), "{skipped:?}");
}

#[test]
fn uninject_refuses_rewritten_probes_it_cannot_put_back() {
    let (input, _) = fixture("deployment");
    let (injected, _) = inject_stream(&Values::default(), &input).unwrap();
    let mut doc: serde_json::Value = serde_json::to_value(docs(&injected).remove(1)).unwrap();
    let annotations = doc.pointer_mut("/spec/template/metadata/annotations").unwrap().as_object_mut().unwrap();
    annotations.remove(annotations::RESTORE).unwrap();
    let text = yaml_serde::to_string(&doc).unwrap();
    let err = manifest::act_stream(&Values::default(), &text, Action::Uninject).unwrap_err();
    assert!(err.contains("deployment/web") && err.contains("bulwark.dev/restore"), "{err}");
}
