//! The proxy's bootstrap file (`bulwark-proxy run --config proxy.yaml`): where to listen,
//! where explicit listeners forward to, and the policies to enforce (inline, or every
//! `*.yaml`/`*.yml` file of `policyDir`). `load` returns the whole config or every error found,
//! each naming the file and field path; `examples/proxy.yaml` documents every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_policy::duration::Dur;
use bulwark_policy::{Direction, ResiliencePolicy, Snapshot, UpstreamProtocol, ValidationError};
use serde::{Deserialize, Serialize};

use crate::upstream::resolve::HostPort;

/// Ports whose servers speak first or whose protocols are binary; detection would only add a
/// delay before their first byte.
pub const DEFAULT_SERVER_FIRST_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default = "default_health")]
    pub health: SocketAddr,
    /// SIGTERM to exit, at most: the drain period, then the wait for in-flight work.
    #[serde(default = "default_drain")]
    pub drain_timeout: Dur,
    /// After SIGTERM, readiness fails at once but listeners keep accepting and serving this
    /// long (capped at `drainTimeout`), as Kubernetes takes seconds to stop sending new
    /// clients; HTTP/1 responses say `Connection: close` and HTTP/2 clients get GOAWAY.
    #[serde(default = "default_drain_period")]
    pub drain_period: Dur,
    #[serde(default)]
    pub detection: Detection,
    #[serde(default)]
    pub transparent: Transparent,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstream: UpstreamDefaults,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// OTLP tracing; off unless given.
    #[serde(default)]
    pub tracing: Option<crate::telemetry::trace::TracingConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub policies: Vec<yaml_serde::Value>,
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    /// Policies from a control plane instead of this file (`policies` and `policyDir` must be
    /// empty then).
    #[serde(default)]
    pub control_plane: Option<ControlPlane>,
    /// This workload's mesh identity, `NAME.NAMESPACE`, stated on its outbound HTTP requests in
    /// `x-bulwark-client-id` so that the callee's faults can target it. Default, in a pod:
    /// `POD_SERVICE_ACCOUNT.POD_NAMESPACE` when both are set. Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl ProxyConfig {
    /// The identity this proxy states, as the header value it sends.
    pub fn identity_header(&self) -> Option<http::HeaderValue> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let id = self
            .identity
            .clone()
            .or_else(|| Some(format!("{}.{}", env("POD_SERVICE_ACCOUNT")?, env("POD_NAMESPACE")?)))?;
        match bulwark_policy::faults::IdentityPattern::parse(&id) {
            Ok(bulwark_policy::faults::IdentityPattern::Exact(_)) => http::HeaderValue::from_str(&id).ok(),
            _ => {
                tracing::warn!(identity = %id, "not a mesh identity (NAME.NAMESPACE); requests go out without one");
                None
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlane {
    /// `host:port` of bulwark-control's discovery service.
    pub address: String,
    /// Where the last good snapshot is kept, so a restarted proxy serves before the control
    /// plane is back.
    #[serde(default)]
    pub cache_file: Option<PathBuf>,
    /// Who this proxy is; unset fields come from POD_NAME, POD_NAMESPACE and BULWARK_SERVICE.
    #[serde(default)]
    pub node: NodeIdentity,
    /// A file holding the discovery token bulwark-control requires; `BULWARK_DISCOVERY_TOKEN`
    /// gives it directly. Without either, the token a control plane generated on this host is
    /// used when readable ($BULWARK_CONTROL_DATA/discovery-token, else
    /// /var/lib/bulwark/discovery-token). Read at every connect, so a rotated secret is
    /// picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl ControlPlane {
    /// The discovery token to present, if any.
    pub fn token(&self) -> std::io::Result<Option<String>> {
        if let Some(t) = std::env::var("BULWARK_DISCOVERY_TOKEN").ok().filter(|t| !t.is_empty()) {
            return Ok(Some(t));
        }
        match &self.token_file {
            Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim().to_string())),
            None => {
                let data =
                    std::env::var_os("BULWARK_CONTROL_DATA").map_or_else(|| "/var/lib/bulwark".into(), PathBuf::from);
                Ok(std::fs::read_to_string(data.join("discovery-token"))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty()))
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_admin() -> SocketAddr {
    "127.0.0.1:15000".parse().expect("literal")
}
fn default_health() -> SocketAddr {
    "0.0.0.0:15020".parse().expect("literal")
}
fn default_drain() -> Dur {
    Dur(Duration::from_secs(20))
}
fn default_drain_period() -> Dur {
    Dur(Duration::from_secs(5))
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Detection {
    /// How long to wait for the client's first bytes before treating the connection as TCP.
    pub timeout: Dur,
    /// Destination ports forwarded as TCP without waiting for detection.
    pub server_first_ports: Vec<u16>,
    /// Destination ports of captured traffic that are HTTP: never forwarded as TCP (bytes
    /// that are not HTTP are answered 400).
    pub http_ports: Vec<u16>,
}

impl Default for Detection {
    fn default() -> Self {
        Detection {
            timeout: Dur(Duration::from_secs(1)),
            server_first_ports: DEFAULT_SERVER_FIRST_PORTS.to_vec(),
            http_ports: Vec::new(),
        }
    }
}

/// Transparent capture listeners; each is off unless given. `bulwark-proxy init` redirects to
/// 15001 (outbound) and 15006 (inbound) by default.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Transparent {
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Downstream connections per listener. At the cap the oldest connection that has sent
    /// nothing is shed for a newcomer; with none idle, the newcomer is closed at once.
    pub max_connections_per_listener: usize,
    /// Downstream connections of the whole process, over every listener; at the cap the same
    /// shedding and refusal apply. Read at start.
    pub max_connections: usize,
    /// HTTP/1: slowloris guard on reading request headers.
    pub header_read_timeout: Dur,
    /// Bytes the proxy buffers per connection and direction (HTTP/1), and per stream (HTTP/2
    /// flow-control windows and send buffers), downstream and upstream. A slow reader holds
    /// at most this much; beyond it TCP or HTTP/2 flow control pushes back on the sender.
    /// Read at start.
    pub connection_buffer_bytes: usize,
}

/// 128 KiB: Envoy's per-connection buffer limit is 1 MiB; a sidecar per pod keeps less.
pub const DEFAULT_CONNECTION_BUFFER: usize = 128 * 1024;
/// Below this, HTTP/2 frames (16 KiB) and HTTP/1 reads are too small to move data well.
pub const MIN_CONNECTION_BUFFER: usize = 16 * 1024;
/// HTTP/2's largest window (RFC 9113 §6.9.1).
pub const MAX_CONNECTION_BUFFER: usize = (1 << 31) - 1;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_listener: 10_000,
            max_connections: 100_000,
            header_read_timeout: Dur(Duration::from_secs(10)),
            connection_buffer_bytes: DEFAULT_CONNECTION_BUFFER,
        }
    }
}

/// One JSON line per request on stdout.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// Share of requests logged, 0 to 1.
    pub sample: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig { enabled: false, sample: 1.0 }
    }
}

/// Used where no policy says otherwise.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamDefaults {
    pub connect_timeout: Dur,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Dur,
    /// Opaque TCP connections silent in both directions this long are closed.
    pub tcp_idle_timeout: Dur,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout: Dur(Duration::from_secs(5)),
            pool_idle_timeout: Dur(Duration::from_secs(90)),
            tcp_idle_timeout: Dur(Duration::from_secs(3600)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Detect HTTP/1.1, HTTP/2 (h2c, gRPC) or fall back to TCP.
    #[default]
    Auto,
    /// Detect HTTP/1.1 or HTTP/2; never TCP.
    Http,
    Http1,
    Http2,
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerConfig {
    pub name: String,
    pub listen: ListenAddr,
    /// `host:port`, or a list of them (the endpoints to balance over); a host name is
    /// re-resolved every `dnsRefresh`.
    pub upstream: UpstreamList,
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// What the proxy speaks to the upstream (a policy's `upstream.protocol` overrides it).
    #[serde(default, skip_serializing_if = "is_auto")]
    pub upstream_protocol: UpstreamProtocol,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
}

/// Where an explicit listener listens: an address (`127.0.0.1:8000`, `[::]:8000`), or a host
/// name and port (`localhost:8000`), resolved when the listener starts and listened on at every
/// address it resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ListenAddr {
    Addr(SocketAddr),
    Name(HostPort),
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<ListenAddr, String> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Ok(ListenAddr::Addr(a)),
            Err(_) => HostPort::parse(&text)
                .map(ListenAddr::Name)
                .map_err(|e| format!("{e}: write ADDRESS:PORT or HOST:PORT")),
        }
    }
}

impl From<ListenAddr> for String {
    fn from(a: ListenAddr) -> String {
        a.to_string()
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Addr(a) => write!(f, "{a}"),
            ListenAddr::Name(h) => write!(f, "{h}"),
        }
    }
}

impl ListenAddr {
    /// Every address to listen on, deduplicated, in the resolver's order.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            ListenAddr::Addr(a) => Ok(vec![*a]),
            ListenAddr::Name(h) => crate::upstream::resolve::lookup(h).await,
        }
    }
}

fn is_auto(p: &UpstreamProtocol) -> bool {
    *p == UpstreamProtocol::Auto
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UpstreamList {
    One(String),
    Many(Vec<String>),
}

impl UpstreamList {
    pub fn items(&self) -> Vec<&str> {
        match self {
            UpstreamList::One(s) => vec![s.as_str()],
            UpstreamList::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// Parsed targets, or the first error.
    pub fn parse(&self) -> Result<Vec<HostPort>, String> {
        let items = self.items();
        if items.is_empty() {
            return Err("an empty list has no endpoint".into());
        }
        items.into_iter().map(HostPort::parse).collect()
    }
}

impl std::fmt::Display for UpstreamList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.items().join(","))
    }
}

fn default_dns_refresh() -> Dur {
    Dur(Duration::from_secs(5))
}

/// A loaded bootstrap: the config, and the policy snapshot compiled from it.
#[derive(Debug)]
pub struct Loaded {
    pub config: ProxyConfig,
    pub snapshot: Snapshot,
}

/// Reads and validates `path`. Errors are complete: every problem in the file and in its
/// policies, each with its location.
pub fn load(path: &Path, version: &str) -> Result<Loaded, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    load_text(&text, &path.display().to_string(), path.parent().unwrap_or(Path::new(".")), version)
}

/// The sidecar's bootstrap when no file is given: transparent capture on the standard ports,
/// everything else at its default. The injector passes its own in `BULWARK_BOOTSTRAP`.
pub const SIDECAR_BOOTSTRAP: &str = "transparent: { outbound: \"0.0.0.0:15001\", inbound: \"0.0.0.0:15006\" }\n";

/// Where the configuration comes from: a file (watched and reloaded) or, in a pod, a bootstrap
/// text from the environment.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Bootstrap(String),
}

impl Source {
    /// `--config` when given, else `BULWARK_BOOTSTRAP`, else [`SIDECAR_BOOTSTRAP`].
    pub fn from_args(config: Option<PathBuf>) -> Self {
        match config {
            Some(path) => Source::File(path),
            None => Source::Bootstrap(
                std::env::var("BULWARK_BOOTSTRAP")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| SIDECAR_BOOTSTRAP.to_string()),
            ),
        }
    }

    pub fn load(&self, version: &str) -> Result<Loaded, Vec<String>> {
        match self {
            Source::File(path) => load(path, version),
            Source::Bootstrap(text) => load_text(text, "BULWARK_BOOTSTRAP", Path::new("."), version),
        }
    }

    /// The file, or `None` for a bootstrap text (nothing to watch).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File(path) => Some(path),
            Source::Bootstrap(_) => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Bootstrap(_) => f.write_str("the bootstrap (BULWARK_BOOTSTRAP or the built-in sidecar default)"),
        }
    }
}

/// Validates a configuration text; `file` names it in errors, `base` anchors a relative
/// `policyDir`.
pub fn load_text(text: &str, file: &str, base: &Path, version: &str) -> Result<Loaded, Vec<String>> {
    let file = file.to_string();
    let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|e| vec![format!("{file}: {e}")])?;
    let config: ProxyConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let at = e.path().to_string();
        vec![format!("{file}: {at}: {}", e.into_inner())]
    })?;
    let mut errors = check_listeners(&config, &file);

    let mut docs: Vec<ResiliencePolicy> = Vec::new();
    let mut policy_errors: Vec<ValidationError> = Vec::new();
    for (i, v) in config.policies.iter().enumerate() {
        match bulwark_policy::document::from_value(v.clone(), &format!("{file} policies[{i}]")) {
            Ok(p) => docs.push(p),
            Err(mut e) => policy_errors.append(&mut e),
        }
    }
    if let Some(dir) = &config.policy_dir {
        let dir = if dir.is_relative() { base.join(dir) } else { dir.clone() };
        match policy_files(&dir) {
            Ok(files) => {
                for f in files {
                    match std::fs::read_to_string(&f) {
                        Ok(t) => match bulwark_policy::parse_documents(&t, &f.display().to_string()) {
                            Ok(mut d) => docs.append(&mut d),
                            Err(mut e) => policy_errors.append(&mut e),
                        },
                        Err(e) => errors.push(format!("{}: cannot read: {e}", f.display())),
                    }
                }
            }
            Err(e) => errors.push(format!("{file}: policyDir {}: {e}", dir.display())),
        }
    }
    let snapshot = if policy_errors.is_empty() {
        match Snapshot::compile(version, docs) {
            Ok(s) => Some(s),
            Err(e) => {
                policy_errors = e;
                None
            }
        }
    } else {
        None
    };
    errors.extend(policy_errors.iter().map(|e| e.to_string()));
    match snapshot {
        Some(snapshot) if errors.is_empty() => Ok(Loaded { config, snapshot }),
        _ => Err(errors),
    }
}

/// `*.yaml` and `*.yml` files of `dir`, sorted, so load order does not depend on the file system.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn check_listeners(c: &ProxyConfig, file: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut addrs = std::collections::HashSet::new();
    // Port 0 asks for any free port, so two such listeners never clash.
    for own in [Some(c.admin), Some(c.health), c.transparent.outbound, c.transparent.inbound].into_iter().flatten() {
        if own.port() != 0 {
            addrs.insert(own);
        }
    }
    if let Some(id) = &c.identity {
        match bulwark_policy::faults::IdentityPattern::parse(id) {
            Ok(bulwark_policy::faults::IdentityPattern::Exact(_)) => {}
            Ok(_) => {
                errors.push(format!("{file}: identity: {id:?} is a pattern; write this workload's NAME.NAMESPACE"))
            }
            Err(e) => errors.push(format!("{file}: identity: {e}")),
        }
    }
    for (i, l) in c.listeners.iter().enumerate() {
        let at = format!("{file}: listeners[{i}]");
        if l.name.is_empty()
            || !l.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            errors.push(format!("{at}.name: {:?} must be non-empty letters, digits, '-', '_' or '.'", l.name));
        } else if !names.insert(l.name.clone()) {
            errors.push(format!("{at}.name: {:?} is used by another listener", l.name));
        }
        if let Err(e) = l.upstream.parse() {
            errors.push(format!("{at}.upstream: {e}"));
        }
        if let ListenAddr::Addr(a) = l.listen {
            if a.port() != 0 && !addrs.insert(a) {
                errors.push(format!("{at}.listen: {a} is already used by another listener or port of the proxy"));
            }
        }
        if l.dns_refresh.get() < Duration::from_millis(100) {
            errors.push(format!("{at}.dnsRefresh: must be at least 100ms"));
        }
    }
    if let Some(cp) = &c.control_plane {
        if let Err(e) = HostPort::parse(&cp.address) {
            errors.push(format!("{file}: controlPlane.address: {e}"));
        }
        if !c.policies.is_empty() || c.policy_dir.is_some() {
            errors.push(format!(
                "{file}: controlPlane: policies come from the control plane; remove policies and policyDir"
            ));
        }
    }
    if let Some(t) = &c.tracing {
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            errors.push(format!("{file}: tracing.sampleRatio: {} is not a share between 0 and 1", t.sample_ratio));
        }
        if !(t.endpoint.starts_with("http://") || t.endpoint.starts_with("https://")) {
            errors.push(format!(
                "{file}: tracing.endpoint: {:?} must be a URL such as http://collector:4317",
                t.endpoint
            ));
        }
    }
    if !(0.0..=1.0).contains(&c.access_log.sample) {
        errors.push(format!("{file}: accessLog.sample: {} is not a share between 0 and 1", c.access_log.sample));
    }
    if !(MIN_CONNECTION_BUFFER..=MAX_CONNECTION_BUFFER).contains(&c.limits.connection_buffer_bytes) {
        errors.push(format!(
            "{file}: limits.connectionBufferBytes: {} is out of range: {MIN_CONNECTION_BUFFER} to {MAX_CONNECTION_BUFFER}",
            c.limits.connection_buffer_bytes
        ));
    }
    if c.limits.max_connections == 0 || c.limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
        errors.push(format!(
            "{file}: limits.maxConnections: {} is out of range: 1 to {}",
            c.limits.max_connections,
            tokio::sync::Semaphore::MAX_PERMITS
        ));
    }
    if c.limits.max_connections_per_listener == 0 {
        errors.push(format!("{file}: limits.maxConnectionsPerListener: must be at least 1"));
    }
    for (name, d) in [
        ("detection.timeout", c.detection.timeout),
        ("upstream.connectTimeout", c.upstream.connect_timeout),
        ("upstream.poolIdleTimeout", c.upstream.pool_idle_timeout),
        ("upstream.tcpIdleTimeout", c.upstream.tcp_idle_timeout),
        ("limits.headerReadTimeout", c.limits.header_read_timeout),
    ] {
        if d.get().is_zero() {
            errors.push(format!("{file}: {name}: must be greater than zero"));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input `make fuzz` found crashing the bootstrap reader (committed with its fix) is
    /// read again, as the fuzz target reads it.
    #[test]
    fn recorded_fuzz_inputs_are_read_without_panicking() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/artifacts/bootstrap_config");
        for entry in std::fs::read_dir(&dir).expect("fuzz/artifacts/bootstrap_config") {
            if let Ok(text) = std::fs::read_to_string(entry.expect("entry").path()) {
                let _ = load_text(&text, "fuzz.yaml", Path::new("/nonexistent"), "1");
            }
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_inline_and_directory_policies() {
        let d = tempdir("ok");
        std::fs::create_dir_all(d.join("policies")).unwrap();
        write(&d.join("policies"), "a.yaml", "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {name: a}\nspec: {target: {listener: web}}\n");
        let cfg = write(&d, "proxy.yaml", "listeners:\n- {name: web, listen: 127.0.0.1:0, upstream: localhost:80}\npolicyDir: policies\npolicies:\n- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {name: b}\n  spec: {target: {service: b.local}}\n");
        let loaded = load(&cfg, "1").map_err(|e| e.join("\n")).unwrap();
        assert_eq!(loaded.snapshot.policies.len(), 2);
        assert_eq!(loaded.config.drain_timeout.get(), Duration::from_secs(20));
    }

    #[test]
    fn reports_every_error_with_its_location() {
        let d = tempdir("bad");
        let cfg = write(&d, "proxy.yaml", "listeners:\n- {name: web, listen: 127.0.0.1:7000, upstream: nowhere}\n- {name: web, listen: 127.0.0.1:7000, upstream: a:1}\npolicies:\n- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {name: b}\n  spec: {target: {service: b.local}, defaults: {timeout: {request: 0s}}}\n");
        let errs = load(&cfg, "1").unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("listeners[0].upstream: \"nowhere\" must be host:port"), "{all}");
        assert!(all.contains("listeners[1].name: \"web\" is used by another listener"), "{all}");
        assert!(all.contains("listeners[1].listen: 127.0.0.1:7000 is already used"), "{all}");
        assert!(all.contains("policy default/b: spec.defaults.timeout.request: must be greater than zero"), "{all}");
    }

    #[test]
    fn unknown_bootstrap_field_is_named() {
        let d = tempdir("unknown");
        let cfg =
            write(&d, "proxy.yaml", "listeners:\n- {name: web, listen: 127.0.0.1:0, upstream: a:1, upstrem: b}\n");
        let errs = load(&cfg, "1").unwrap_err();
        assert!(errs[0].contains("listeners[0].upstrem: unknown field `upstrem`"), "{errs:?}");
    }
}
