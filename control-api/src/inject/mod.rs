//! Sidecar injection, in one place for the admission webhook (`review`) and `bulwarkctl inject`
//! (`manifest`). It works on real Kubernetes types and adds to a pod:
//!
//! - `bulwark-init`: `bulwark-proxy init` with NET_ADMIN and NET_RAW only, redirecting the pod's
//!   declared container ports inbound and all TCP outbound, minus the skip annotations;
//! - `bulwark-proxy`: a native sidecar (an init container with `restartPolicy: Always` and a
//!   startup probe, so the app starts after the proxy is ready and stops before it), or for
//!   clusters before 1.29 a regular container listed first whose postStart hook waits for ready;
//! - the app's probes rewritten through the proxy's health port where their port is captured.
//!
//! Injection is idempotent, honours the opt-out annotation and refuses pods it would break
//! (hostNetwork, Windows, the proxy's UID or ports taken, a run-to-completion pod without
//! native sidecars). `uninject` takes the proxy out again.

pub mod annotations;
pub mod manifest;
pub mod patch;
pub mod probes;
pub mod review;
pub mod uninject;
mod values;
mod yaml_doc;

use std::collections::BTreeMap;
use std::time::Duration;

use bulwark_policy::app_probe::{self, AppProbes};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use annotations::{BadAnnotation, Settings};
pub use values::{InboundCapture, Ports, Resources, Values};

pub const PROXY_CONTAINER: &str = "bulwark-proxy";
pub const INIT_CONTAINER: &str = "bulwark-init";
const XTABLES_VOLUME: &str = "bulwark-xtables";
/// The proxy's last good snapshot, in an emptyDir: it outlives a restart of the proxy's
/// container, so a proxy restarted while the control plane is away serves the policies it had.
const CACHE_VOLUME: &str = "bulwark-cache";
const CACHE_DIR: &str = "/var/lib/bulwark-proxy";
/// How long the app is held back waiting for its proxy (startup probe, or the fallback hook).
const PROXY_START_BUDGET_SECONDS: i32 = 120;
/// Kubernetes' default when the pod does not say.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What injection did to a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Was injected, and is injected anew with the values given (`inject --upgrade`).
    Reinjected,
    /// The proxy was taken out (`uninject`).
    Uninjected,
    /// Left as it was, and why.
    Unchanged(Skip),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    AlreadyInjected,
    OptedOut,
    HostNetwork,
    /// This container runs as the proxy's UID: the redirect skips that UID, so its traffic
    /// would bypass the proxy.
    RunsAsProxyUid(String),
    /// This container declares one of the proxy's ports.
    PortClash {
        container: String,
        port: u16,
    },
    /// `spec.os.name: windows`: no iptables there.
    Windows,
    /// A pod that runs to completion (restartPolicy Never or OnFailure, as a Job's) with the
    /// proxy as a regular container: the proxy would keep it running for ever.
    RunsToCompletion(String),
    /// Uninjection of a pod that has no proxy.
    NotInjected,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::AlreadyInjected => f.write_str("already injected"),
            Skip::OptedOut => f.write_str("opted out (bulwark.dev/inject: disabled, as a label or an annotation)"),
            Skip::HostNetwork => f.write_str(
                "pod uses hostNetwork: the redirect would capture the node's own traffic, so no proxy is injected",
            ),
            Skip::RunsAsProxyUid(c) => write!(
                f,
                "container {c:?} runs as the proxy's UID, whose traffic the redirect lets through uncaptured: change its runAsUser or the proxy's uid (chart value proxy.uid)"
            ),
            Skip::PortClash { container, port } => write!(
                f,
                "container {container:?} declares port {port}, one of the proxy's own: move the app's port or the proxy's (chart values proxy.ports)"
            ),
            Skip::Windows => {
                f.write_str("pod runs on Windows (spec.os.name: windows), where the redirect cannot be written")
            }
            Skip::RunsToCompletion(policy) => write!(
                f,
                "pod runs to completion (restartPolicy {policy}) and the proxy would be a regular container (native sidecars off), which keeps running after the app ends, so the pod would never complete: use native sidecars (Kubernetes 1.29+, chart value proxy.nativeSidecar), or have the app end its proxy (POST /quitquitquit on the admin port) and annotate the pod {}: \"true\"",
                annotations::APP_ENDS_PROXY
            ),
            Skip::NotInjected => f.write_str("has no Bulwark proxy"),
        }
    }
}

/// Injects the proxy into the pod described by `meta` and `spec` (a Pod, or a workload's pod
/// template). On an error or a skip, nothing is changed.
pub fn inject(values: &Values, meta: &mut ObjectMeta, spec: &mut PodSpec) -> Result<Outcome, BadAnnotation> {
    if uninject::is_injected(meta, spec) {
        return Ok(Outcome::Unchanged(Skip::AlreadyInjected));
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    // The label is what the webhook's object selector reads; offline injection honours it too.
    if annotations::opted_out(&annotations) || annotations::opted_out(&meta.labels.clone().unwrap_or_default()) {
        return Ok(Outcome::Unchanged(Skip::OptedOut));
    }
    if spec.host_network == Some(true) {
        return Ok(Outcome::Unchanged(Skip::HostNetwork));
    }
    let settings = annotations::settings(values, &annotations)?;
    let ports = settings.values.ports;
    if let Some(skip) = broken_by_injection(spec, &settings) {
        return Ok(Outcome::Unchanged(skip));
    }

    // Inbound capture: every port by default; in `declared` mode the declared TCP ports of the
    // app and its native sidecars (every port when none is declared). Empty means every port.
    let declared = settings.values.inbound_capture == InboundCapture::Declared;
    let mut inbound_ports: Vec<u16> = app_containers(spec)
        .filter(|_| declared)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    inbound_ports.sort_unstable();
    inbound_ports.dedup();
    let captured = |port: u16| {
        (inbound_ports.is_empty() || inbound_ports.contains(&port)) && !settings.skip_inbound_ports.contains(&port)
    };

    let mut restore = uninject::Restore::default();
    let mut probes = AppProbes::new();
    if settings.values.rewrite_probes {
        // The app's native sidecars (init containers that keep running) are probed like the app.
        let sidecars = spec.init_containers.iter_mut().flatten().filter(|c| is_native_sidecar(c));
        for c in spec.containers.iter_mut().chain(sidecars) {
            probes::rewrite(c, ports.health, &captured, &mut probes, &mut restore.probes);
        }
    }
    let guaranteed = all_guaranteed(spec);

    let grace = spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    let drain = drain_deadline(settings.drain_timeout, grace);
    let mut init = init_container(&settings, &inbound_ports);
    let mut proxy = proxy_container(&settings, drain, &probes);
    if guaranteed {
        // A pod is Guaranteed only if every container is: keep the app's QoS class.
        for c in [&mut init, &mut proxy] {
            if let Some(r) = c.resources.as_mut() {
                guarantee(r);
            }
        }
    }

    let default_container = spec.containers.first().map(|c| c.name.clone());
    for (created, absent) in [
        (uninject::INIT_CONTAINERS, spec.init_containers.is_none()),
        (uninject::VOLUMES, spec.volumes.is_none()),
        (uninject::ANNOTATIONS, meta.annotations.is_none()),
    ] {
        if absent {
            restore.created.push(created.into());
        }
    }
    let init_containers = spec.init_containers.get_or_insert_with(Vec::new);
    if settings.values.native_sidecar {
        // Before the app's own init containers, so that their traffic has a proxy too.
        init_containers.splice(0..0, [init, proxy]);
    } else {
        // Without a proxy running until the app starts, the redirect comes last so that the
        // app's init containers are not captured.
        init_containers.push(init);
        spec.containers.insert(0, proxy);
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for name in [XTABLES_VOLUME, CACHE_VOLUME] {
        volumes.push(Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }

    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(app) = default_container {
        // kubectl logs/exec keep choosing the app, not the proxy.
        if !annotations.contains_key(uninject::DEFAULT_CONTAINER) {
            annotations.insert(uninject::DEFAULT_CONTAINER.into(), app);
            restore.created.push(uninject::DEFAULT_CONTAINER.into());
        }
    }
    annotations.insert(annotations::STATUS.into(), "injected".into());
    annotations.insert(annotations::PROXY_VERSION.into(), proxy_version(&settings.values.image));
    annotations.insert(annotations::RESTORE.into(), restore.to_annotation());
    Ok(Outcome::Injected)
}

/// The version the image names: its tag (`…/bulwark-proxy:0.2.0` → `0.2.0`), else its digest,
/// else the injector's own version.
pub fn proxy_version(image: &str) -> String {
    let (name, digest) = image.split_once('@').map_or((image, None), |(n, d)| (n, Some(d)));
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) if !tag.is_empty() => tag.to_string(),
        (_, Some(d)) => d.to_string(),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Why a pod (or pod template) given as JSON could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a valid pod: {0}")]
    Invalid(String),
    #[error(transparent)]
    Annotation(#[from] BadAnnotation),
}

/// What to do to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Inject,
    /// Inject; a pod injected before is uninjected first, then injected with these values.
    Upgrade,
    Uninject,
}

/// Injects into a pod or pod template given as JSON (`metadata` and `spec`; other fields are
/// ignored) and returns the JSONPatch that does it, relative to that object.
pub fn inject_json(
    values: &Values,
    pod: &serde_json::Value,
) -> Result<(Outcome, Vec<json_patch::PatchOperation>), Error> {
    act_json(values, pod, Action::Inject)
}

/// `action` on a pod or pod template given as JSON, as the JSONPatch that does it.
pub fn act_json(
    values: &Values,
    pod: &serde_json::Value,
    action: Action,
) -> Result<(Outcome, Vec<json_patch::PatchOperation>), Error> {
    let mut template: PodTemplateSpec =
        serde_path_to_error::deserialize(pod).map_err(|e| Error::Invalid(format!("{}: {}", e.path(), e.inner())))?;
    let mut meta = template.metadata.take().unwrap_or_default();
    let Some(mut spec) = template.spec.take() else {
        return Err(Error::Invalid("spec: missing".into()));
    };
    let typed = |meta: &ObjectMeta, spec: &PodSpec| serde_json::json!({ "metadata": meta, "spec": spec });
    let before = typed(&meta, &spec);
    let outcome = match action {
        Action::Inject => inject(values, &mut meta, &mut spec)?,
        Action::Uninject => uninject::uninject(&mut meta, &mut spec)?,
        Action::Upgrade => match uninject::uninject(&mut meta, &mut spec)? {
            Outcome::Uninjected => match inject(values, &mut meta, &mut spec)? {
                Outcome::Injected => Outcome::Reinjected,
                // Not injectable any more with these values: left as it was.
                skipped => return Ok((skipped, Vec::new())),
            },
            _ => inject(values, &mut meta, &mut spec)?,
        },
    };
    if !matches!(outcome, Outcome::Injected | Outcome::Reinjected | Outcome::Uninjected) {
        return Ok((outcome, Vec::new()));
    }
    let after = typed(&meta, &spec);
    Ok((outcome, patch::diff(&before, &after)))
}

/// Every container of the pod, init containers included.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten())
}

/// The app's long-running containers: its containers and its native sidecars.
fn app_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(spec.init_containers.iter().flatten().filter(|c| is_native_sidecar(c)))
}

pub(crate) fn is_native_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// What would make the injected pod broken, so that it is better left as it is.
fn broken_by_injection(spec: &PodSpec, settings: &Settings) -> Option<Skip> {
    if spec.os.as_ref().is_some_and(|os| os.name.eq_ignore_ascii_case("windows")) {
        return Some(Skip::Windows);
    }
    let restart = spec.restart_policy.as_deref().unwrap_or("Always");
    if !settings.values.native_sidecar && !settings.app_ends_proxy && restart != "Always" {
        return Some(Skip::RunsToCompletion(restart.to_string()));
    }
    let uid = settings.values.uid;
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for c in all_containers(spec) {
        if c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_uid) == Some(uid) {
            return Some(Skip::RunsAsProxyUid(c.name.clone()));
        }
    }
    let p = settings.values.ports;
    let ours = [p.outbound, p.inbound, p.admin, p.health];
    for c in app_containers(spec) {
        for port in c.ports.iter().flatten().filter_map(|p| u16::try_from(p.container_port).ok()) {
            if ours.contains(&port) {
                return Some(Skip::PortClash { container: c.name.clone(), port });
            }
        }
    }
    None
}

/// Every container of the app has requests equal to limits for CPU and memory (QoS Guaranteed).
fn all_guaranteed(spec: &PodSpec) -> bool {
    let guaranteed = |c: &Container| {
        let Some(r) = &c.resources else { return false };
        ["cpu", "memory"].iter().all(|k| {
            let limit = r.limits.as_ref().and_then(|l| l.get(*k));
            let request = r.requests.as_ref().and_then(|q| q.get(*k)).or(limit);
            limit.is_some() && request == limit
        })
    };
    !spec.containers.is_empty() && all_containers(spec).all(guaranteed)
}

/// Requests and limits made equal: the limit where one is set, else the request.
fn guarantee(r: &mut ResourceRequirements) {
    let requests = r.requests.take().unwrap_or_default();
    let mut limits = r.limits.take().unwrap_or_default();
    for (k, q) in requests {
        limits.entry(k).or_insert(q);
    }
    r.requests = Some(limits.clone());
    r.limits = Some(limits);
}

fn already_has_proxy(spec: &PodSpec) -> bool {
    all_containers(spec).any(|c| c.name == PROXY_CONTAINER)
}

/// The proxy must finish draining before kubelet's SIGKILL at the end of the grace period.
pub fn drain_deadline(requested: Duration, grace_seconds: i64) -> Duration {
    let budget = Duration::from_secs(u64::try_from(grace_seconds.saturating_sub(1)).unwrap_or(0).max(1));
    requested.min(budget)
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn init_container(s: &Settings, inbound_ports: &[u16]) -> Container {
    let v = &s.values;
    let mut args: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        v.uid.to_string(),
        "--proxy-gid".into(),
        v.uid.to_string(),
        "--outbound-port".into(),
        v.ports.outbound.to_string(),
        "--inbound-port".into(),
        v.ports.inbound.to_string(),
    ];
    let mut exclude_inbound = s.skip_inbound_ports.clone();
    exclude_inbound.extend([v.ports.admin, v.ports.health]);
    exclude_inbound.sort_unstable();
    exclude_inbound.dedup();
    for (flag, value) in [
        ("--inbound-ports", join(inbound_ports)),
        ("--exclude-inbound-ports", join(&exclude_inbound)),
        ("--exclude-outbound-ports", join(&s.skip_outbound_ports)),
        ("--exclude-outbound-cidrs", join(&s.skip_outbound_cidrs)),
    ] {
        if !value.is_empty() {
            args.extend([flag.to_string(), value]);
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(v.init_image.clone().unwrap_or_else(|| v.image.clone())),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(args),
        resources: Some(resources([("cpu", "10m"), ("memory", "16Mi")], [("cpu", "100m"), ("memory", "64Mi")])),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        // iptables takes its lock in /run, which is read-only otherwise.
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn resources<const R: usize, const L: usize>(
    requests: [(&str, &str); R],
    limits: [(&str, &str); L],
) -> ResourceRequirements {
    let map = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
        let m: BTreeMap<String, Quantity> = pairs
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements { requests: map(&requests), limits: map(&limits), ..Default::default() }
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy's configuration in the pod (see `bulwark-proxy run` without `--config`); the
/// control plane's address comes from BULWARK_CONTROL_PLANE.
fn bootstrap(ports: Ports, drain: Duration, control_plane: &str) -> String {
    let config = serde_json::json!({
        "controlPlane": { "address": control_plane, "cacheFile": format!("{CACHE_DIR}/snapshot.json") },
        "admin": format!("127.0.0.1:{}", ports.admin),
        "health": format!("0.0.0.0:{}", ports.health),
        "drainTimeout": format!("{}ms", drain.as_millis()),
        "transparent": {
            "outbound": format!("0.0.0.0:{}", ports.outbound),
            "inbound": format!("0.0.0.0:{}", ports.inbound),
        },
    });
    config.to_string()
}

fn proxy_container(s: &Settings, drain: Duration, probes: &AppProbes) -> Container {
    let v = &s.values;
    let mut env_vars = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        // With the namespace, the workload's mesh identity (NAME.NAMESPACE) for fault targeting.
        field_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("BULWARK_CONTROL_PLANE", v.control_plane.clone()),
        env("BULWARK_LOG", v.log_level.clone()),
        env("BULWARK_BOOTSTRAP", bootstrap(v.ports, drain, &v.control_plane)),
    ];
    if !probes.is_empty() {
        env_vars.push(env(app_probe::ENV, serde_json::to_string(probes).unwrap_or_default()));
    }
    if let Some(token) = &v.discovery_token {
        env_vars.push(env("BULWARK_DISCOVERY_TOKEN", token.clone()));
    }
    let r = &v.resources;
    let mut c = Container {
        name: PROXY_CONTAINER.into(),
        image: Some(v.image.clone()),
        image_pull_policy: Some(v.image_pull_policy.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env_vars),
        ports: Some(vec![ContainerPort {
            name: Some("bulwark-health".into()),
            container_port: i32::from(v.ports.health),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: CACHE_VOLUME.into(),
            mount_path: CACHE_DIR.into(),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/ready", v.ports.health, 2, 3)),
        liveness_probe: Some(http_probe("/live", v.ports.health, 10, 3)),
        resources: Some(resources(
            [("cpu", r.cpu_request.as_str()), ("memory", r.memory_request.as_str())],
            [("cpu", r.cpu_limit.as_str()), ("memory", r.memory_limit.as_str())],
        )),
        security_context: Some(SecurityContext {
            run_as_user: Some(v.uid),
            run_as_group: Some(v.uid),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if v.native_sidecar {
        c.restart_policy = Some("Always".into());
        // Kubelet starts the next container only once a native sidecar's startup probe passes.
        c.startup_probe = Some(http_probe("/ready", v.ports.health, 1, PROXY_START_BUDGET_SECONDS));
    } else {
        c.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "bulwark-proxy".into(),
                        "wait-ready".into(),
                        "--url".into(),
                        format!("http://127.0.0.1:{}/ready", v.ports.health),
                        "--timeout".into(),
                        format!("{PROXY_START_BUDGET_SECONDS}s"),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    c
}

#[cfg(test)]
mod tests;
