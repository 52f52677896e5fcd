//! The proxy's side of `bulwark.v1.PolicyDiscovery`. One long-lived stream: the proxy sends
//! who it is, then validates each snapshot it receives with the same compile step as a file,
//! puts a good one in force atomically and answers ACK, or answers NACK with every error and
//! keeps the snapshot in force. Each good snapshot is also written to a cache file, so a
//! restarted proxy serves its last policies before the control plane is back.
//!
//! When the control plane is unreachable the proxy keeps serving what it has (static
//! stability) and reconnects with jittered exponential backoff (100 ms to 10 s).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::{parse_documents, ResiliencePolicy, Snapshot, ValidationError};
use bulwark_proto::v1 as pb;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::config::ControlPlane;
use crate::control::store::Store;
use crate::telemetry::metrics::Metrics;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The cache file's content.
#[derive(Serialize, Deserialize)]
struct Cached {
    version: String,
    policies: Vec<CachedPolicy>,
}

#[derive(Serialize, Deserialize)]
struct CachedPolicy {
    id: String,
    yaml: String,
}

/// The policies of the last snapshot compiled, parsed, by id with their text: a push carries
/// every policy of the proxy, usually all but one unchanged, and parsing is most of the cost
/// of compiling.
#[derive(Default)]
pub struct Parsed(HashMap<String, (String, Vec<ResiliencePolicy>)>);

/// Compiles a snapshot's policies, or returns every error. Texts `parsed` already holds are
/// not parsed again; `parsed` is left holding exactly this snapshot's policies.
fn compile(
    version: &str,
    policies: &[(String, String)],
    parsed: &mut Parsed,
) -> Result<Snapshot, Vec<ValidationError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut next = HashMap::with_capacity(policies.len());
    for (id, yaml) in policies {
        let reused = parsed.0.remove(id).filter(|(text, _)| text == yaml);
        let result = match reused {
            Some((_, d)) => Ok(d),
            None => parse_documents(yaml, id),
        };
        match result {
            Ok(d) => {
                docs.extend(d.iter().cloned());
                next.insert(id.clone(), (yaml.clone(), d));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    parsed.0 = next;
    if !errors.is_empty() {
        return Err(errors);
    }
    Snapshot::compile(version, docs)
}

/// The last good snapshot from the cache file, if there is a usable one.
pub fn load_cache(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    let cached: Cached = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(cache = %path.display(), error = %e, "ignoring an unreadable snapshot cache");
            return None;
        }
    };
    let policies: Vec<(String, String)> = cached.policies.into_iter().map(|p| (p.id, p.yaml)).collect();
    match compile(&cached.version, &policies, &mut Parsed::default()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(cache = %path.display(), errors = e.len(), "ignoring a snapshot cache this proxy cannot use");
            None
        }
    }
}

fn write_cache(path: &Path, version: &str, policies: &[(String, String)]) -> std::io::Result<()> {
    let cached = Cached {
        version: version.to_string(),
        policies: policies.iter().map(|(id, yaml)| CachedPolicy { id: id.clone(), yaml: yaml.clone() }).collect(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&cached).expect("cache serializes"))?;
    std::fs::rename(tmp, path)
}

/// Who this proxy is, from the config and the pod's environment.
fn node(cp: &ControlPlane) -> pb::Node {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let n = &cp.node;
    let pod = n.pod.clone().or_else(|| env("POD_NAME")).unwrap_or_default();
    let namespace = n.namespace.clone().or_else(|| env("POD_NAMESPACE")).unwrap_or_default();
    let host = env("HOSTNAME").unwrap_or_else(|| format!("proxy-{}", std::process::id()));
    let id = n.id.clone().unwrap_or_else(|| if pod.is_empty() { host } else { format!("{pod}.{namespace}") });
    pb::Node {
        id,
        pod,
        namespace,
        service: n.service.clone().or_else(|| env("BULWARK_SERVICE")).unwrap_or_default(),
        labels: n.labels.clone().into_iter().collect(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Compiles a pushed snapshot, builds its stage state, installs it and writes the cache, on the
/// policy thread: a large policy set takes long enough to compile that doing it on a worker
/// would hold up every request that worker serves. Returns the generation, or every error.
async fn install_off_the_data_path(
    store: &Arc<Store>,
    cache: Option<std::path::PathBuf>,
    version: String,
    policies: Vec<(String, String)>,
    parsed: &Arc<Mutex<Parsed>>,
) -> Result<u64, Vec<ValidationError>> {
    let (store, parsed) = (store.clone(), parsed.clone());
    let work = super::policy_thread::run(move || {
        let compiled = compile(&version, &policies, &mut parsed.lock())?;
        let generation = store.replace_policies(compiled);
        if let Some(path) = &cache {
            if let Err(e) = write_cache(path, &version, &policies) {
                tracing::warn!(cache = %path.display(), error = %e, "cannot write the snapshot cache");
            }
        }
        Ok(generation)
    });
    work.await.unwrap_or_else(|e| {
        Err(vec![ValidationError {
            policy: String::new(),
            path: String::new(),
            message: format!("compile failed: {e}"),
        }])
    })
}

/// Keeps a discovery stream open until `stop`, reconnecting after any failure.
pub async fn run(cp: ControlPlane, store: Arc<Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
    // An experiment's guard is judged here whether or not the control plane is reachable.
    tokio::spawn(crate::telemetry::experiment::judge_every_interval(metrics.clone(), stop.clone()));
    let mut backoff = MIN_BACKOFF;
    loop {
        let session = tokio::select! {
            _ = stop.cancelled() => return,
            r = session(&cp, &store, &metrics) => r,
        };
        metrics.control.connected(false);
        match session {
            // The stream worked for a while: start the backoff over.
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                tracing::warn!(control_plane = %cp.address, error = %e, "discovery stream failed; serving the policies in force")
            }
        }
        let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(cp: &ControlPlane, store: &Arc<Store>, metrics: &Metrics) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.address))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    // A push carries every policy for this proxy: up to the store's limit, not gRPC's 4 MiB.
    let mut client = pb::policy_discovery_client::PolicyDiscoveryClient::new(channel)
        .max_decoding_message_size(bulwark_policy::document::MAX_SNAPSHOT_BYTES + (1 << 20));
    let (tx, rx) = mpsc::channel(4);
    let me = node(cp);
    tx.send(pb::DiscoveryRequest { kind: Some(pb::discovery_request::Kind::Node(me.clone())) }).await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(token) = cp.token()? {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    }
    let mut snapshots = client.stream(request).await?.into_inner();
    metrics.control.connected(true);
    tracing::info!(control_plane = %cp.address, node = %me.id, "discovery stream open");
    let parsed = Arc::new(Mutex::new(Parsed::default()));
    // Each interval of the experiments observed here, their measurements go back on the stream.
    let mut next_report: Option<tokio::time::Instant> = None;
    loop {
        let report_at = next_report;
        let report = async move {
            match report_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let snapshot = tokio::select! {
            s = snapshots.message() => s?,
            () = report => {
                let measurements = metrics.experiments.report();
                tx.send(pb::DiscoveryRequest { kind: Some(pb::discovery_request::Kind::Measurements(measurements)) }).await?;
                next_report = metrics.experiments.interval().map(|every| tokio::time::Instant::now() + every);
                continue;
            }
        };
        let Some(snapshot) = snapshot else { break };
        let policies: Vec<(String, String)> =
            snapshot.policies.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.yaml.clone())).collect();
        let count = policies.len();
        let reply = match install_off_the_data_path(
            store,
            cp.cache_file.clone(),
            snapshot.version.clone(),
            policies,
            &parsed,
        )
        .await
        {
            Ok(generation) => {
                metrics.experiments.install(&snapshot.observations);
                if next_report.is_none() {
                    next_report = metrics.experiments.interval().map(|every| tokio::time::Instant::now() + every);
                }
                metrics.control.snapshot(true);
                tracing::info!(version = %snapshot.version, policies = count, generation, "snapshot in force");
                pb::discovery_request::Kind::Ack(pb::Ack { version: snapshot.version })
            }
            Err(errors) => {
                metrics.control.snapshot(false);
                tracing::error!(version = %snapshot.version, errors = %errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "), "snapshot rejected; the one in force is kept");
                pb::discovery_request::Kind::Nack(pb::Nack {
                    version: snapshot.version,
                    errors: errors
                        .into_iter()
                        .map(|e| pb::ValidationError { policy: e.policy, path: e.path, message: e.message })
                        .collect(),
                })
            }
        };
        tx.send(pb::DiscoveryRequest { kind: Some(reply) }).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, timeout: &str) -> (String, String) {
        let yaml = format!(
            "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name} }}\nspec:\n  target: {{ service: {name}.svc }}\n  defaults: {{ timeout: {{ request: {timeout} }} }}\n"
        );
        (format!("default/{name}"), yaml)
    }

    fn request_timeout(s: &Snapshot, id: &str) -> Option<Duration> {
        s.policies.iter().find(|p| &*p.id == id).and_then(|p| p.default_route.timeouts.request)
    }

    #[test]
    fn unchanged_texts_are_reused_changed_ones_parsed_and_departed_ones_forgotten() {
        let mut parsed = Parsed::default();
        let first = compile("1", &[policy("a", "1s"), policy("b", "1s")], &mut parsed).unwrap();
        assert_eq!(request_timeout(&first, "default/b"), Some(Duration::from_secs(1)));
        let second = compile("2", &[policy("a", "1s"), policy("b", "2s")], &mut parsed).unwrap();
        assert_eq!(request_timeout(&second, "default/a"), Some(Duration::from_secs(1)), "reused as it was");
        assert_eq!(request_timeout(&second, "default/b"), Some(Duration::from_secs(2)), "the new text is read");
        compile("3", &[policy("a", "1s")], &mut parsed).unwrap();
        assert_eq!(parsed.0.len(), 1, "only this snapshot's policies are kept");
        let bad = compile("4", &[policy("a", "1s"), policy("c", "3x")], &mut parsed);
        assert!(bad.is_err());
        assert!(!parsed.0.contains_key("default/c"), "a text that does not parse is not kept");
    }
}
