//! The proxy's side of `bulwark.v1.PolicyDiscovery`. One long-lived stream: the proxy sends
//! who it is, then validates each snapshot it receives with the same compile step as a file,
//! puts a good one in force atomically and answers ACK, or answers NACK with every error and
//! keeps the snapshot in force. Each good snapshot is also written to a cache file, so a
//! restarted proxy serves its last policies before the control plane is back.
//!
//! When the control plane is unreachable the proxy keeps serving what it has (static
//! stability) and reconnects with jittered exponential backoff (100 ms to 10 s).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bulwark_policy::{parse_documents, Snapshot, ValidationError};
use bulwark_proto::v1 as pb;
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

/// Compiles a snapshot's policies, or returns every error.
fn compile(version: &str, policies: &[(String, String)]) -> Result<Snapshot, Vec<ValidationError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (id, yaml) in policies {
        match parse_documents(yaml, id) {
            Ok(mut d) => docs.append(&mut d),
            Err(mut e) => errors.append(&mut e),
        }
    }
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
    match compile(&cached.version, &policies) {
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

/// Compiles a pushed snapshot, builds its stage state, installs it and writes the cache, on a
/// blocking thread: a large policy set takes long enough to compile that doing it on a worker
/// would hold up every request that worker serves. Returns the generation, or every error.
async fn install_off_the_data_path(
    store: &Arc<Store>,
    cache: Option<std::path::PathBuf>,
    version: String,
    policies: Vec<(String, String)>,
) -> Result<u64, Vec<ValidationError>> {
    let store = store.clone();
    let work = tokio::task::spawn_blocking(move || {
        let compiled = compile(&version, &policies)?;
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
    while let Some(snapshot) = snapshots.message().await? {
        let policies: Vec<(String, String)> =
            snapshot.policies.iter().map(|p| (format!("{}/{}", p.namespace, p.name), p.yaml.clone())).collect();
        let count = policies.len();
        let reply = match install_off_the_data_path(store, cp.cache_file.clone(), snapshot.version.clone(), policies)
            .await
        {
            Ok(generation) => {
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
