//! `charts/bulwark` renders to valid Kubernetes objects: every template is rendered by Helm's
//! own engine (Go's text/template with sprig, `bulwark_e2e::helm`) with the default values and
//! with the other modes; every object is strict-valid for each Kubernetes version the chart
//! claims (`kubernetes-validate --strict`), and deserializes as its k8s-openapi type and
//! serializes back to exactly what was rendered (a misspelled field would show up).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use bulwark_control::inject::Values as InjectionValues;
use bulwark_e2e::{helm, workspace_bin};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/bulwark")
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The Kubernetes versions the chart claims (Chart.yaml `kubeVersion`), each validated.
const KUBE_VERSIONS: [&str; 3] = ["1.29.0", "1.33.0", "1.35.0"];

/// Every rendered object of the chart with `overrides` on its values, and NOTES.txt, rendered
/// by Helm's engine for Kubernetes `kube`, with `cluster` what `lookup` finds. None (said why)
/// when the engine cannot be built here.
fn render_with(overrides: Value, kube: &str, cluster: Value) -> Option<(Vec<Value>, String)> {
    render_release("bulwark", overrides, kube, cluster)
}

/// As `render_with`, for a release of another name.
fn render_release(release: &str, overrides: Value, kube: &str, cluster: Value) -> Option<(Vec<Value>, String)> {
    let renderer = match helm::renderer() {
        Ok(r) => r,
        Err(why) => {
            println!("SKIPPED: the chart is rendered by Helm's template engine, and {why}");
            return None;
        }
    };
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap()).unwrap();
    let mut values = serde_json::to_value(values).unwrap();
    merge(&mut values, &overrides);
    match helm::check_values(&chart(), &values) {
        Ok(checked) => checked.unwrap_or_else(|e| panic!("the values do not fit values.schema.json: {e}")),
        Err(why) => println!("SKIPPED (values schema): {why}"),
    }
    let meta: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap()).unwrap();
    let meta = serde_json::to_value(meta).unwrap();
    let root = json!({
        "Values": values,
        "Release": { "Name": release, "Namespace": "bulwark-system", "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1 },
        "Chart": { "Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"] },
        "KubeVersion": kube,
        "Lookup": cluster,
    });
    let rendered =
        helm::render(renderer, &chart(), &root).unwrap_or_else(|e| panic!("Helm's engine refuses the chart: {e}"));
    let mut objects = Vec::new();
    let mut notes = String::new();
    for (name, text) in rendered {
        if name == "NOTES.txt" {
            notes = text;
            continue;
        }
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let v: yaml_serde::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name} is not YAML: {e}\n{text}"));
            if !v.is_null() {
                objects.push(serde_json::to_value(v).unwrap());
            }
        }
    }
    Some((objects, notes))
}

/// As `render_with`, for the newest version claimed, nothing in the cluster; and every object
/// strict-valid (kubernetes-validate) for every version the chart claims.
fn render(overrides: Value) -> Option<(Vec<Value>, String)> {
    let (objects, notes) = render_with(overrides.clone(), KUBE_VERSIONS[KUBE_VERSIONS.len() - 1], json!({}))?;
    // cert-manager's kinds are not Kubernetes' own: the validator has no schema for them.
    let core: Vec<Value> = objects.iter().filter(|o| o["apiVersion"] != "cert-manager.io/v1").cloned().collect();
    for kube in KUBE_VERSIONS {
        match helm::validate(&core, kube) {
            Ok(problems) => assert!(problems.is_empty(), "Kubernetes {kube}, values {overrides}: {problems:#?}"),
            Err(why) => {
                println!("SKIPPED (strict validation): {why}");
                break;
            }
        }
    }
    Some((objects, notes))
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> T {
    let t: T = serde_path_to_error::deserialize(object)
        .unwrap_or_else(|e| panic!("{} {}: {}: {}", object["kind"], object["metadata"]["name"], e.path(), e.inner()));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(&back, object, "{} has fields its type does not know", object["kind"]);
    t
}

/// Checks each object against its type; returns "Kind/name" of each.
fn check_types(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let kind = o["kind"].as_str().unwrap();
            match kind {
                "ServiceAccount" => drop(typed::<ServiceAccount>(o)),
                "Service" => drop(typed::<Service>(o)),
                "ConfigMap" => drop(typed::<ConfigMap>(o)),
                "Secret" => drop(typed::<Secret>(o)),
                "Deployment" => drop(typed::<Deployment>(o)),
                "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(o)),
                "PersistentVolumeClaim" => drop(typed::<PersistentVolumeClaim>(o)),
                "MutatingWebhookConfiguration" => drop(typed::<MutatingWebhookConfiguration>(o)),
                "NetworkPolicy" => drop(typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(o)),
                "Issuer" | "Certificate" => assert_eq!(o["apiVersion"], "cert-manager.io/v1"),
                other => panic!("unexpected kind {other}"),
            }
            format!("{kind}/{}", o["metadata"]["name"].as_str().unwrap())
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[test]
fn default_values_render_the_control_plane_and_the_webhook() {
    let Some((objects, notes)) = render(json!({})) else { return };
    let names = check_types(&objects);
    let expected: BTreeSet<String> = [
        "ConfigMap/bulwark-default-policies",
        "ConfigMap/bulwark-injection",
        "Deployment/bulwark-control",
        "Deployment/bulwark-injector",
        "MutatingWebhookConfiguration/bulwark-sidecar-injector",
        "PersistentVolumeClaim/bulwark-control-data",
        "Secret/bulwark-control-token",
        "Secret/bulwark-webhook-tls",
        "Service/bulwark-control",
        "Service/bulwark-injector",
        "ServiceAccount/bulwark-control",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);

    // The webhook trusts the CA that signed the served certificate, and calls the Service.
    let secret = find(&objects, "Secret", "bulwark-webhook-tls");
    let hooks = find(&objects, "MutatingWebhookConfiguration", "bulwark-sidecar-injector");
    let entries = hooks["webhooks"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "namespace and pod selection, each for allowed, baseline and restricted namespaces");
    for hook in entries {
        assert_eq!(hook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
        // The Pod Security level a namespace enforces decides the path, which the webhook reads.
        let psa = hook["namespaceSelector"]["matchExpressions"][2].clone();
        assert_eq!(psa["key"], "pod-security.kubernetes.io/enforce");
        let path = match psa["operator"].as_str().unwrap() {
            "NotIn" => "/inject".to_string(),
            _ => format!("/inject/{}", psa["values"][0].as_str().unwrap()),
        };
        assert_eq!(
            hook["clientConfig"]["service"],
            json!({"name": "bulwark-injector", "namespace": "bulwark-system", "path": path, "port": 443})
        );
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
        assert_eq!(hook["failurePolicy"], "Ignore", "the mesh never stops the cluster from creating pods");
        assert_eq!(hook["sideEffects"], "None");
    }
    assert_eq!(hooks["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["key"], "bulwark.dev/inject");
    assert_eq!(hooks["webhooks"][1]["objectSelector"]["matchLabels"]["bulwark.dev/inject"], "enabled");

    // The injection values are what the control plane accepts, pointing at the chart's Service.
    let injection = find(&objects, "ConfigMap", "bulwark-injection");
    let values =
        InjectionValues::from_yaml(injection["data"]["values.yaml"].as_str().unwrap(), "bulwark-injection").unwrap();
    assert_eq!(values.control_plane, "bulwark-control.bulwark-system.svc:15012");
    assert_eq!(
        values,
        InjectionValues { control_plane: values.control_plane.clone(), ..InjectionValues::default() },
        "the chart's proxy defaults are the injector's own"
    );

    // The default policies are valid policies.
    let policies = find(&objects, "ConfigMap", "bulwark-default-policies")["data"]["policies.yaml"].as_str().unwrap();
    let docs = bulwark_policy::parse_documents(policies, "bulwark-default-policies").unwrap();
    bulwark_policy::Snapshot::compile("1", docs).unwrap();

    // Every flag the Deployments pass is one bulwark-control has.
    let help = String::from_utf8(Command::new(workspace_bin("bulwark-control")).arg("--help").output().unwrap().stdout)
        .unwrap();
    for name in ["bulwark-control", "bulwark-injector"] {
        let container = &find(&objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0];
        for arg in container["args"].as_array().unwrap() {
            let flag = arg.as_str().unwrap().split('=').next().unwrap();
            assert!(help.contains(flag), "bulwark-control has no {flag}");
        }
    }
    // One writer for the store; the webhook is served by the injector, rolled with a surge.
    let deployment = find(&objects, "Deployment", "bulwark-control");
    assert_eq!(
        (deployment["spec"]["replicas"].as_i64(), deployment["spec"]["strategy"]["type"].as_str()),
        (Some(1), Some("Recreate"))
    );
    let injector = find(&objects, "Deployment", "bulwark-injector");
    assert_eq!(injector["spec"]["template"]["spec"]["containers"][0]["args"][0], "--webhook-only");
    assert_eq!(injector["spec"]["strategy"]["rollingUpdate"], json!({"maxSurge": 1, "maxUnavailable": 0}));
    // Both have the one discovery token: the proxies the injector injects present it.
    for d in [deployment, injector] {
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let discovery = env.iter().find(|e| e["name"] == "BULWARK_DISCOVERY_TOKEN").unwrap();
        assert_eq!(
            discovery["valueFrom"]["secretKeyRef"],
            json!({"name": "bulwark-control-token", "key": "discovery-token"})
        );
    }
    assert!(notes.contains("webhook.replicas=2"), "one injector: NOTES says what that costs\n{notes}");
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["bulwark.dev/inject"], "disabled");
    assert!(notes.contains("kubectl label namespace NAME bulwark.dev/inject=enabled"), "{notes}");
    assert!(!notes.contains("quitquitquit"));
}

#[test]
fn cert_manager_no_persistence_token_and_fallback_sidecars_render_too() {
    let Some((objects, notes)) = render(json!({
        "webhook": { "certManager": { "enabled": true } },
        "controlPlane": { "persistence": { "enabled": false }, "adminToken": "s3cret" },
        "proxy": { "nativeSidecar": false, "controlPlane": "cp.example:15012" },
    })) else {
        return;
    };
    let names = check_types(&objects);
    assert!(names.contains("Issuer/bulwark-webhook-selfsigned") && names.contains("Certificate/bulwark-webhook"));
    let certificate = find(&objects, "Certificate", "bulwark-webhook");
    assert_eq!(certificate["spec"]["dnsNames"][0], "bulwark-injector.bulwark-system.svc");
    assert!(names.contains("Secret/bulwark-control-token"));
    assert!(!names.contains("Secret/bulwark-webhook-tls"), "cert-manager writes that Secret");
    assert!(!names.contains("PersistentVolumeClaim/bulwark-control-data"));
    let hooks = find(&objects, "MutatingWebhookConfiguration", "bulwark-sidecar-injector");
    assert_eq!(hooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "bulwark-system/bulwark-webhook");
    assert!(hooks["webhooks"][0]["clientConfig"].get("caBundle").is_none());
    let deployment = find(&objects, "Deployment", "bulwark-control");
    assert_eq!(deployment["spec"]["template"]["spec"]["volumes"][0]["emptyDir"], json!({}));
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[1]["name"], "BULWARK_CONTROL_TOKEN");
    let injection = find(&objects, "ConfigMap", "bulwark-injection");
    let values =
        InjectionValues::from_yaml(injection["data"]["values.yaml"].as_str().unwrap(), "bulwark-injection").unwrap();
    assert_eq!((values.native_sidecar, values.control_plane.as_str()), (false, "cp.example:15012"));
    assert!(notes.contains("curl -X POST http://127.0.0.1:15000/quitquitquit"), "{notes}");
}

/// The values table in the chart's README names every value.
#[test]
fn the_chart_readme_documents_every_value() {
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap()).unwrap();
    fn leaves(prefix: &str, v: &yaml_serde::Value, out: &mut Vec<String>) {
        match v.as_mapping() {
            Some(m) if !prefix.ends_with("resources") || prefix.starts_with("proxy") => {
                for (k, v) in m {
                    let k = k.as_str().unwrap();
                    leaves(&if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    leaves("", &values, &mut keys);
    for key in keys {
        let last = key.rsplit('.').next().unwrap();
        let parent = key.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let documented = readme.contains(&format!("`{key}`"))
            || (readme.contains(&format!("`{parent}.")) && readme.contains(&format!(".{last}`")));
        assert!(documented, "charts/bulwark/README.md does not document {key}");
    }
}

#[test]
fn the_webhook_certificates_survive_an_upgrade() {
    let Some((first, _)) = render_with(json!({}), "1.35.0", json!({})) else { return };
    let secret = find(&first, "Secret", "bulwark-webhook-tls").clone();
    // An upgrade: the Secret of the first install is in the cluster; the CA must not change,
    // or every webhook call would fail until the caBundle caught up.
    let cluster = json!({ "v1/Secret/bulwark-system/bulwark-webhook-tls": secret });
    let (again, _) = render_with(json!({}), "1.35.0", cluster).unwrap();
    assert_eq!(find(&again, "Secret", "bulwark-webhook-tls")["data"], secret["data"]);
    let hooks = find(&again, "MutatingWebhookConfiguration", "bulwark-sidecar-injector");
    assert_eq!(hooks["webhooks"][0]["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    // The generated PolicyAdmin token is kept too.
    let token = find(&first, "Secret", "bulwark-control-token").clone();
    assert_eq!(token["data"]["token"].as_str().map(str::len), Some(64), "48 random characters, base64");
    assert_eq!(token["data"]["discovery-token"].as_str().map(str::len), Some(64));
    assert_ne!(token["data"]["token"], token["data"]["discovery-token"]);
    let cluster = json!({
        "v1/Secret/bulwark-system/bulwark-webhook-tls": secret,
        "v1/Secret/bulwark-system/bulwark-control-token": token,
    });
    let (kept, _) = render_with(json!({}), "1.35.0", cluster).unwrap();
    assert_eq!(find(&kept, "Secret", "bulwark-control-token")["data"], token["data"]);
    // Without them (a fresh install), a new CA and a new token.
    let (fresh, _) = render_with(json!({}), "1.35.0", json!({})).unwrap();
    assert_ne!(find(&fresh, "Secret", "bulwark-webhook-tls")["data"]["ca.crt"], secret["data"]["ca.crt"]);
    assert_ne!(find(&fresh, "Secret", "bulwark-control-token")["data"], token["data"]);
}

#[test]
fn a_misspelt_or_mistyped_value_fails_against_the_schema() {
    let values: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap()).unwrap();
    let values = serde_json::to_value(values).unwrap();
    let Ok(ok) = helm::check_values(&chart(), &values) else { return };
    ok.expect("the chart's own values fit its schema");
    for (over, says) in [
        (json!({"webhook": {"failurPolicy": "Fail"}}), "'failurPolicy' was unexpected"),
        (json!({"webhook": {"failurePolicy": "Sometimes"}}), "is not one of"),
        (json!({"webhook": {"replicas": "two"}}), "is not of type"),
        // The store has one writer: there is no such value.
        (json!({"controlPlane": {"replicas": 2}}), "'replicas' was unexpected"),
        (json!({"proxy": {"ports": {"admin": 70000}}}), "is greater than the maximum"),
    ] {
        let mut v = values.clone();
        merge(&mut v, &over);
        let problems = helm::check_values(&chart(), &v).unwrap().unwrap_err();
        assert!(problems.contains(says), "{over}: {problems}");
    }
}

#[test]
fn a_value_change_rolls_the_pods_and_fail_needs_two_injectors() {
    let Some((before, _)) = render(json!({})) else { return };
    let (after, _) = render(json!({"proxy": {"logLevel": "debug"}})).unwrap();
    let checksum = |objects: &[Value], name: &str| {
        find(objects, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert!(checksum(&before, "bulwark-injector").as_str().is_some_and(|c| c.len() == 64));
    assert_ne!(
        checksum(&before, "bulwark-injector"),
        checksum(&after, "bulwark-injector"),
        "an injection value changed: the injectors roll"
    );
    assert_eq!(
        checksum(&before, "bulwark-control"),
        checksum(&after, "bulwark-control"),
        "the store has no use for it"
    );
    let policies =
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: { name: p }\nspec: { target: { service: a } }\n";
    let (other, _) = render(json!({"defaultPolicies": policies})).unwrap();
    assert_ne!(
        checksum(&before, "bulwark-control"),
        checksum(&other, "bulwark-control"),
        "the default policies changed: the control plane rolls"
    );
    let (same, _) = render(json!({})).unwrap();
    assert_eq!(checksum(&before, "bulwark-injector"), checksum(&same, "bulwark-injector"));
    // Standard labels everywhere.
    for o in &before {
        let labels = &o["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{} {}", o["kind"], o["metadata"]["name"]);
        assert_eq!(labels["helm.sh/chart"], "bulwark-0.1.0");
    }

    let renderer = helm::renderer().unwrap();
    let mut values = serde_json::to_value(
        yaml_serde::from_str::<yaml_serde::Value>(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap(),
    )
    .unwrap();
    merge(&mut values, &json!({"webhook": {"failurePolicy": "Fail"}}));
    let root = json!({
        "Values": values,
        "Release": { "Name": "bulwark", "Namespace": "bulwark-system", "Service": "Helm" },
        "Chart": { "Name": "bulwark", "Version": "0.1.0", "AppVersion": "0.1.0" },
        "KubeVersion": "1.35.0",
    });
    let refused = helm::render(renderer, &chart(), &root).unwrap_err();
    assert!(refused.contains("webhook.failurePolicy=Fail needs webhook.replicas >= 2"), "{refused}");
    assert!(!before.iter().any(|o| o["kind"] == "PodDisruptionBudget"), "one injector: no budget");
    let (two, notes) = render(json!({"webhook": {"failurePolicy": "Fail", "replicas": 3}})).unwrap();
    check_types(&two);
    let hooks = find(&two, "MutatingWebhookConfiguration", "bulwark-sidecar-injector");
    assert_eq!(hooks["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(find(&two, "PodDisruptionBudget", "bulwark-injector")["spec"]["maxUnavailable"], 1);
    let injector = &find(&two, "Deployment", "bulwark-injector")["spec"];
    assert_eq!(injector["replicas"], 3);
    assert_eq!(injector["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(find(&two, "Deployment", "bulwark-control")["spec"]["replicas"], 1, "still one writer");
    assert!(!notes.contains("webhook.replicas=2"));
}

#[test]
fn the_network_policy_lets_every_pod_discover_and_only_the_named_peers_administer() {
    let Some((off, _)) = render(json!({})) else { return };
    assert!(!off.iter().any(|o| o["kind"] == "NetworkPolicy"), "value-gated");
    let ops = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}});
    let (on, _) = render(json!({"networkPolicy": {"enabled": true, "adminFrom": [ops]}})).unwrap();
    check_types(&on);
    let np = find(&on, "NetworkPolicy", "bulwark-control");
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"], json!([{"port": 15012, "protocol": "TCP"}]));
    assert!(ingress[0].get("from").is_none(), "discovery from anywhere");
    let webhook = find(&on, "NetworkPolicy", "bulwark-injector");
    assert_eq!(
        webhook["spec"]["ingress"],
        json!([{"ports": [{"port": 15017, "protocol": "TCP"}]}]),
        "the webhook from anywhere (the API server)"
    );
    assert_eq!(webhook["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "bulwark-injector");
    assert_eq!(ingress[1]["ports"], json!([{"port": 15013, "protocol": "TCP"}]));
    assert_eq!(ingress[1]["from"], json!([ops]));
    let (closed, _) = render(json!({"networkPolicy": {"enabled": true}})).unwrap();
    let ingress = find(&closed, "NetworkPolicy", "bulwark-control")["spec"]["ingress"].as_array().unwrap().clone();
    assert_eq!(ingress.len(), 1, "no adminFrom: PolicyAdmin from no pod");
}

/// With real Helm on PATH: `helm lint` passes and `helm template` renders the same objects as
/// the engine the other tests use (certificates and tokens aside: each render makes new ones).
#[test]
fn real_helm_agrees_when_it_is_installed() {
    let Ok(version) = Command::new("helm").arg("version").arg("--short").output() else {
        println!("SKIPPED: helm is not on PATH (the chart is rendered by Go's text/template and sprig instead)");
        return;
    };
    println!("helm {}", String::from_utf8_lossy(&version.stdout).trim());
    let lint = Command::new("helm").arg("lint").arg(chart()).output().unwrap();
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let out = Command::new("helm")
        .args(["template", "bulwark"])
        .arg(chart())
        .args(["--namespace", "bulwark-system", "--kube-version", "1.35.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let scrub = |mut o: Value| {
        for secret_field in ["/data", "/webhooks"] {
            if let Some(v) = o.pointer_mut(secret_field) {
                *v = Value::Null;
            }
        }
        if let Some(a) = o.pointer_mut("/spec/template/metadata/annotations") {
            *a = Value::Null;
        }
        o
    };
    let mut helm: Vec<Value> = yaml_serde::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .map(|v: yaml_serde::Value| serde_json::to_value(v).unwrap())
        .filter(|v| !v.is_null())
        .map(scrub)
        .collect();
    let Some((ours, _)) = render(json!({})) else { return };
    let mut ours: Vec<Value> = ours.into_iter().map(scrub).collect();
    let key = |o: &Value| format!("{}/{}", o["kind"], o["metadata"]["name"]);
    helm.sort_by_key(key);
    ours.sort_by_key(key);
    assert_eq!(helm, ours);
}

/// A second release beside the first (a canary control plane, selecting its own namespaces)
/// shares no object name with it, cluster-scoped or in the same namespace, and points its
/// webhook and proxies at its own Services.
#[test]
fn a_second_release_collides_with_nothing_of_the_first() {
    let Some((first, _)) = render(json!({})) else { return };
    let canary_values = json!({"webhook": {"namespaceLabel": "bulwark.dev/inject-canary"}});
    let (canary, notes) = render_release("canary", canary_values, "1.35.0", json!({})).unwrap();
    let names = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect()
    };
    let shared: Vec<String> = names(&first).intersection(&names(&canary)).cloned().collect();
    assert!(shared.is_empty(), "both releases would own {shared:?}");
    for name in names(&canary) {
        assert!(name.split('/').nth(1).unwrap().starts_with("canary-bulwark-"), "{name}");
    }
    // Selector labels differ by instance, so neither Service picks the other's pods.
    let service = find(&canary, "Service", "canary-bulwark-control");
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/instance"], "canary");
    let hooks = find(&canary, "MutatingWebhookConfiguration", "canary-bulwark-sidecar-injector");
    assert_eq!(hooks["webhooks"][0]["clientConfig"]["service"]["name"], "canary-bulwark-injector");
    assert_eq!(hooks["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["key"], "bulwark.dev/inject-canary");
    let injection = find(&canary, "ConfigMap", "canary-bulwark-injection");
    let values = InjectionValues::from_yaml(injection["data"]["values.yaml"].as_str().unwrap(), "injection").unwrap();
    assert_eq!(values.control_plane, "canary-bulwark-control.bulwark-system.svc:15012");
    assert!(notes.contains("svc/canary-bulwark-control"), "{notes}");
    // A release named for what it is keeps its name as the prefix.
    let (named, _) = render_release("bulwark-canary", json!({}), "1.35.0", json!({})).unwrap();
    assert!(names(&named).contains("Deployment/bulwark-canary-control"));
}
