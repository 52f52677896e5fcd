//! Injection defaults: what the chart's `proxy` values become, read by the webhook from its
//! ConfigMap and by `bulwarkctl inject --values`. Annotations on a pod override them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Values {
    /// The proxy's image; also runs the init container unless `initImage` is set.
    pub image: String,
    pub init_image: Option<String>,
    pub image_pull_policy: String,
    /// UID and GID the proxy runs as; the redirect never captures its connections.
    pub uid: i64,
    pub log_level: String,
    /// Drain deadline on shutdown; lowered to fit the pod's terminationGracePeriodSeconds.
    pub drain_timeout: String,
    /// The control plane's gRPC address, host:port.
    pub control_plane: String,
    /// Run the proxy as a native sidecar (Kubernetes 1.29+); false for older clusters.
    pub native_sidecar: bool,
    /// Rewrite the app's HTTP, TCP and gRPC probes through the proxy's health port.
    pub rewrite_probes: bool,
    pub resources: Resources,
    pub ports: Ports,
    /// Which inbound ports the redirect captures: `all` (every port but the proxy's own and
    /// the skipped ones, as Istio and Linkerd do), or only the app's `declared` container ports.
    pub inbound_capture: InboundCapture,
    /// The discovery token the webhook's control plane requires, given to each injected proxy
    /// (BULWARK_DISCOVERY_TOKEN). Never read from a values file: it is the running control
    /// plane's own.
    #[serde(skip)]
    pub discovery_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    /// Empty: no limit.
    pub cpu_limit: String,
    pub memory_limit: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundCapture {
    #[default]
    All,
    Declared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Ports {
    pub outbound: u16,
    pub inbound: u16,
    pub admin: u16,
    pub health: u16,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/bulwark-mesh/bulwark-proxy:{}", env!("CARGO_PKG_VERSION")),
            init_image: None,
            image_pull_policy: "IfNotPresent".into(),
            uid: 1337,
            log_level: "info".into(),
            drain_timeout: "20s".into(),
            control_plane: "bulwark-control.bulwark-system.svc:15012".into(),
            native_sidecar: true,
            rewrite_probes: true,
            resources: Resources::default(),
            ports: Ports::default(),
            inbound_capture: InboundCapture::All,
            discovery_token: None,
        }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "256Mi".into(),
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self { outbound: 15001, inbound: 15006, admin: 15000, health: 15020 }
    }
}

impl Values {
    /// Parses a values document; the error names the field.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, String> {
        let de = yaml_serde::Deserializer::from_str(text);
        let values: Values =
            serde_path_to_error::deserialize(de).map_err(|e| format!("{origin}: {}: {}", e.path(), e.inner()))?;
        values.check().map_err(|e| format!("{origin}: {e}"))?;
        Ok(values)
    }

    /// Reads and parses a values file; the error names the file (and the field).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    pub fn check(&self) -> Result<(), String> {
        if self.image.is_empty() {
            return Err("image: must not be empty".into());
        }
        bulwark_policy::duration::parse(&self.drain_timeout).map_err(|e| format!("drainTimeout: {e}"))?;
        for (field, q) in [
            ("resources.cpuRequest", &self.resources.cpu_request),
            ("resources.memoryRequest", &self.resources.memory_request),
            ("resources.cpuLimit", &self.resources.cpu_limit),
            ("resources.memoryLimit", &self.resources.memory_limit),
        ] {
            if !q.is_empty() {
                super::annotations::check_quantity(q).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        Ok(())
    }
}
