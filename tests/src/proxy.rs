//! Starts the real `bulwark-proxy` binary with a config the test describes, waits until it is
//! ready, and offers what tests need: listener addresses, signals, metrics, logs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::TempDir;

/// A port on 127.0.0.1 that nothing listens on at the time of the call: for tests that need a
/// closed port. Servers, the proxy included, bind port 0 and report what they got.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub struct ProxyBuilder {
    /// name, upstream, protocol, more fields
    listeners: Vec<(String, String, String, String)>,
    policies: String,
    extra: String,
    prefix: Vec<String>,
    control_plane: Option<(SocketAddr, PathBuf, String)>,
    env: Vec<(String, String)>,
    bootstrap: bool,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> ProxyBuilder {
        ProxyBuilder {
            listeners: Vec::new(),
            policies: String::new(),
            extra: String::new(),
            prefix: Vec::new(),
            control_plane: None,
            env: Vec::new(),
            bootstrap: false,
        }
    }

    /// An environment variable of the proxy process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Starts it as the injector does in a pod: `run` without `--config`, the configuration in
    /// `BULWARK_BOOTSTRAP` (so it is not watched for changes).
    pub fn as_sidecar(mut self) -> Self {
        self.bootstrap = true;
        self
    }

    /// An explicit listener on a free port forwarding to `upstream` (`host:port`).
    pub fn listener(self, name: &str, upstream: impl ToString) -> Self {
        self.listener_with_protocol(name, upstream, "auto")
    }

    pub fn listener_with_protocol(mut self, name: &str, upstream: impl ToString, protocol: &str) -> Self {
        self.listeners.push((name.into(), format!("\"{}\"", upstream.to_string()), protocol.into(), String::new()));
        self
    }

    /// An explicit listener that speaks `upstream_protocol` (auto, http1, http2) to `upstream`.
    pub fn listener_speaking(mut self, name: &str, upstream: impl ToString, upstream_protocol: &str) -> Self {
        let extra = format!(", upstreamProtocol: {upstream_protocol}");
        self.listeners.push((name.into(), format!("\"{}\"", upstream.to_string()), "auto".into(), extra));
        self
    }

    /// An explicit listener balancing over several upstream endpoints.
    pub fn listener_many(mut self, name: &str, upstreams: &[std::net::SocketAddr]) -> Self {
        let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
        self.listeners.push((name.into(), format!("[{}]", list.join(", ")), "auto".into(), String::new()));
        self
    }

    /// Takes policies from the control plane at `addr`, identifying as `node_id`, caching
    /// snapshots in `cache` (no policy directory then).
    pub fn control_plane(mut self, addr: SocketAddr, cache: &std::path::Path, node_id: &str) -> Self {
        self.control_plane = Some((addr, cache.to_path_buf(), node_id.to_string()));
        self
    }

    /// Runs the proxy under this command (which must exec its remaining arguments).
    pub fn command_prefix(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Policy documents (YAML, `---` separated), written to the policy directory.
    pub fn policies(mut self, yaml: &str) -> Self {
        self.policies = yaml.to_string();
        self
    }

    /// Extra top-level YAML for the bootstrap file (e.g. `drainTimeout: 5s`).
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    pub async fn start(self) -> ProxyProcess {
        let dir = TempDir::new("proxy");
        let (admin, health) = ("127.0.0.1:0", "127.0.0.1:0");
        let mut yaml = match &self.control_plane {
            Some((cp, cache, id)) => format!(
                "admin: {admin}\nhealth: {health}\ncontrolPlane: {{ address: \"{cp}\", cacheFile: \"{}\", node: {{ id: {id}, service: web }} }}\n{}",
                cache.display(),
                self.extra
            ),
            None => format!(
                "admin: {admin}\nhealth: {health}\npolicyDir: \"{}\"\n{}",
                dir.path().join("policies").display(),
                self.extra
            ),
        };
        if !self.listeners.is_empty() {
            yaml.push_str("listeners:\n");
        }
        for (name, upstream, protocol, extra) in &self.listeners {
            let _ = writeln!(yaml, "- {{ name: {name}, listen: \"127.0.0.1:0\", upstream: {upstream}, protocol: {protocol}, dnsRefresh: 200ms{extra} }}");
        }
        std::fs::create_dir_all(dir.path().join("policies")).expect("policy dir");
        std::fs::write(dir.path().join("policies/policies.yaml"), &self.policies).expect("write policies");
        let config_path = dir.path().join("proxy.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let bin = crate::workspace_bin("bulwark-proxy");
        let mut command = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
        command.arg("run");
        if self.bootstrap {
            command.env("BULWARK_BOOTSTRAP", std::fs::read_to_string(&config_path).expect("config"));
        } else {
            command.arg("--config").arg(&config_path);
        }
        let ready_file = dir.path().join("ready.json");
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("BULWARK_READY_FILE", &ready_file)
            .env("BULWARK_LOG", "info,bulwark_proxy=debug")
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn bulwark-proxy");
        let unbound: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        let mut p = ProxyProcess {
            child,
            dir,
            config_path,
            admin: unbound,
            health: unbound,
            listeners: HashMap::new(),
            log_path,
            ready_file,
        };
        if !p.read_addresses(Duration::from_secs(15)).await {
            let status = p.child.try_wait().ok().flatten();
            panic!("bulwark-proxy never reported its addresses (exit: {status:?}); log:\n{}", p.logs());
        }
        if !crate::client::wait_ok(p.health, "/ready", Duration::from_secs(15)).await {
            let status = p.child.try_wait().ok().flatten();
            panic!("bulwark-proxy did not become ready (exit: {status:?}); log:\n{}", p.logs());
        }
        p
    }
}

pub struct ProxyProcess {
    pub child: Child,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
    log_path: PathBuf,
    ready_file: PathBuf,
}

/// The proxy's `--ready-file`: the addresses it bound.
#[derive(serde::Deserialize)]
struct Bound {
    admin: SocketAddr,
    health: SocketAddr,
    listeners: HashMap<String, SocketAddr>,
}

impl ProxyProcess {
    /// Reads the addresses from the ready file once the proxy wrote it (false if it never did
    /// within `within`, or exited).
    async fn read_addresses(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let bound = std::fs::read(&self.ready_file).ok().and_then(|b| serde_json::from_slice::<Bound>(&b).ok());
            if let Some(b) = bound {
                (self.admin, self.health, self.listeners) = (b.admin, b.health, b.listeners);
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// What the proxy wrote on stdout (the access log).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Waits for the process to exit, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn metrics(&self) -> String {
        crate::client::get(self.health, "/metrics", &[]).await.expect("scrape").text()
    }

    /// Sum of the samples of `name` whose labels contain every `key="value"` in `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        metric_sum(&text, name, labels)
    }

    /// Rewrites the policy file (a reload follows through the file watcher or SIGHUP).
    pub fn write_policies(&self, yaml: &str) {
        let tmp = self.dir.path().join("policies/.next");
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, self.dir.path().join("policies/policies.yaml")).expect("rename");
    }
}

pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // An empty f64 sum is -0.0; +0.0 keeps "0" printing as "0".
        .sum::<f64>()
        + 0.0
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- bulwark-proxy log ---\n{}", self.logs());
        }
    }
}
