//! `bulwark-control`: stores policies durably and serves the bulwark.v1 gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bulwark_control::experiments::Experiments;
use bulwark_control::inject::Values;
use bulwark_control::published::Publisher;
use bulwark_control::server::discovery::{Discovery, Proxies};
use bulwark_control::server::{admin::Admin, token, RequireToken};
use bulwark_control::store::Store;
use bulwark_proto::v1 as pb;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "bulwark-control", version, about = "Bulwark control plane: policy store and gRPC API")]
struct Cli {
    /// gRPC address (PolicyAdmin, PolicyDiscovery, reflection).
    #[arg(long, default_value = "0.0.0.0:15012", env = "BULWARK_CONTROL_LISTEN")]
    listen: SocketAddr,
    /// Serve PolicyAdmin on this separate address instead of on --listen (which then serves
    /// discovery and reflection only).
    #[arg(long, env = "BULWARK_CONTROL_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Where policies are stored durably.
    #[arg(long, default_value = "/var/lib/bulwark", env = "BULWARK_CONTROL_DATA")]
    data_dir: PathBuf,
    /// YAML policies applied at start (every *.yaml / *.yml file).
    #[arg(long, env = "BULWARK_CONTROL_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// The token PolicyAdmin calls must bear ("authorization: Bearer TOKEN"). Without it, one
    /// is generated on first start into DATA_DIR/admin-token (owner-only) and kept.
    #[arg(long, env = "BULWARK_CONTROL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve PolicyAdmin and discovery without tokens (unless --token or --discovery-token is
    /// given): anyone who reaches the port may change or read policy. For demos and tests on
    /// one machine.
    #[arg(long, conflicts_with = "token")]
    insecure_no_auth: bool,
    /// The token proxies must bear on discovery streams (a bootstrap token, not the admin
    /// token). Without it, one is generated on first start into DATA_DIR/discovery-token and
    /// kept; the injection webhook passes it to the proxies it injects.
    #[arg(long, env = "BULWARK_DISCOVERY_TOKEN", hide_env_values = true)]
    discovery_token: Option<String>,
    #[arg(long, env = "BULWARK_LOG", default_value = "info")]
    log: String,
    /// Serve the sidecar-injection admission webhook over HTTPS (needs --webhook-cert and
    /// --webhook-key).
    #[arg(long, env = "BULWARK_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key"])]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate chain of the webhook; re-read when the file changes.
    #[arg(long, env = "BULWARK_WEBHOOK_CERT")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook; re-read when the file changes.
    #[arg(long, env = "BULWARK_WEBHOOK_KEY")]
    webhook_key: Option<PathBuf>,
    /// Injection defaults (the chart's proxy values) as YAML; built-in defaults when absent.
    #[arg(long, env = "BULWARK_INJECTION_VALUES")]
    injection_values: Option<PathBuf>,
    /// Serve the injection webhook alone: no store, no gRPC API. Any number of these can run
    /// beside the one control plane (the chart's injector Deployment); the discovery token the
    /// injected proxies are given must then be the control plane's (--discovery-token).
    #[arg(long, requires = "webhook_listen", conflicts_with_all = ["admin_listen", "policy_dir", "token"])]
    webhook_only: bool,
    /// Serve Prometheus metrics (experiments) on this address, at /metrics.
    #[arg(long, env = "BULWARK_CONTROL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The longest a ChaosExperiment may run (its `duration`).
    #[arg(long, default_value = "1h", env = "BULWARK_MAX_EXPERIMENT_DURATION")]
    max_experiment_duration: bulwark_policy::duration::Dur,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A policy's bodyFile is on a proxy's disk, not this one's.
    bulwark_policy::fallback::refuse_body_files();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Checked before anything is served, so that a bad certificate or values file stops the
    // start with its reason.
    let webhook = match &cli.webhook_listen {
        Some(addr) => {
            let (cert, key) = cli
                .webhook_cert
                .as_deref()
                .zip(cli.webhook_key.as_deref())
                .context("--webhook-cert and --webhook-key")?;
            let certs = bulwark_control::webhook::CertFiles::load(cert, key)?;
            let values = match &cli.injection_values {
                Some(path) => Values::from_file(path).map_err(|e| anyhow::anyhow!("--injection-values {e}"))?,
                None => Values::default(),
            };
            let socket =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--webhook-listen {addr}"))?;
            Some((socket, certs, values))
        }
        None => None,
    };
    if cli.webhook_only {
        let Some((socket, certs, mut values)) = webhook else {
            anyhow::bail!("--webhook-only needs --webhook-listen");
        };
        if cli.discovery_token.is_none() && !cli.insecure_no_auth {
            anyhow::bail!(
                "--webhook-only needs --discovery-token (BULWARK_DISCOVERY_TOKEN): the control plane's, which the proxies it injects must present; or --insecure-no-auth"
            );
        }
        values.discovery_token = cli.discovery_token.clone();
        tracing::info!(listen = ?socket.local_addr().ok(), "injection webhook serving (webhook only)");
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            () = bulwark_control::webhook::serve(socket, certs, Arc::new(values)) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }
    let mut store =
        Store::open(&cli.data_dir).with_context(|| format!("opening the store in {}", cli.data_dir.display()))?;
    if let Some(dir) = &cli.policy_dir {
        let mut texts = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("--policy-dir {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for f in files {
            texts.push(std::fs::read_to_string(&f).with_context(|| f.display().to_string())?);
        }
        store.apply(&texts, false).map_err(|e| anyhow::anyhow!("--policy-dir {}: {e}", dir.display()))?;
    }
    let admin_token = token::resolve(
        cli.token.as_deref(),
        cli.insecure_no_auth,
        &cli.data_dir,
        token::ADMIN,
        "PolicyAdmin (bulwarkctl on this host reads the generated file)",
    )?;
    let discovery_token = token::resolve(
        cli.discovery_token.as_deref(),
        cli.insecure_no_auth,
        &cli.data_dir,
        token::DISCOVERY,
        "discovery streams (proxies: controlPlane.tokenFile or BULWARK_DISCOVERY_TOKEN; injected proxies are given it)",
    )?;
    let changed = Arc::new(Publisher::new(&store));
    tracing::info!(revision = store.revision(), data_dir = %cli.data_dir.display(), "store open");
    let store = Arc::new(tokio::sync::Mutex::new(store));
    let experiments = Experiments::open(store.clone(), changed.clone(), cli.max_experiment_duration.get())
        .await
        .context("opening the experiment records")?;

    if let Some(addr) = cli.metrics_listen {
        let socket = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
        tokio::spawn(bulwark_control::server::metrics::serve(socket, experiments.clone()));
    }
    let (reflection, reflection_alpha) = reflection()?;
    let proxies = Arc::new(Proxies::default());
    let discovery = tonic::service::interceptor::InterceptedService::new(
        pb::policy_discovery_server::PolicyDiscoveryServer::new(Discovery::new(
            changed.subscribe(),
            proxies.clone(),
            experiments.clone(),
        ))
        .max_encoding_message_size(bulwark_policy::document::MAX_SNAPSHOT_BYTES + (1 << 20)),
        RequireToken { token: discovery_token.clone(), what: "discovery token" },
    );
    let admin = pb::policy_admin_server::PolicyAdminServer::with_interceptor(
        Admin::new(store, changed, proxies, experiments),
        RequireToken { token: admin_token.clone(), what: "admin token" },
    );
    let mut term = signal(SignalKind::terminate())?;
    let stop = shutdown_signal();
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = term.recv().await;
        let _ = stopper.send(true);
    });
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some((socket, certs, mut values)) = webhook {
        values.discovery_token = discovery_token.clone();
        let values = Arc::new(values);
        tracing::info!(listen = ?socket.local_addr().ok(), "injection webhook serving");
        tokio::spawn(bulwark_control::webhook::serve(socket, certs, values));
    }
    tracing::info!(listen = %cli.listen, admin_listen = ?cli.admin_listen, admin_auth = admin_token.is_some(), discovery_auth = discovery_token.is_some(), "bulwark-control serving");
    match cli.admin_listen {
        None => {
            tonic::transport::Server::builder()
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(admin)
                .add_service(discovery)
                .serve_with_shutdown(cli.listen, shutdown(stop.subscribe()))
                .await
                .context("serving")?;
        }
        Some(admin_addr) => {
            let discovery_server = tonic::transport::Server::builder()
                .add_service(reflection.clone())
                .add_service(reflection_alpha.clone())
                .add_service(discovery)
                .serve_with_shutdown(cli.listen, shutdown(stop.subscribe()));
            let admin_server = tonic::transport::Server::builder()
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(admin)
                .serve_with_shutdown(admin_addr, shutdown(stop.subscribe()));
            let (d, a) = tokio::join!(discovery_server, admin_server);
            d.context("serving discovery")?;
            a.context("serving admin")?;
        }
    }
    Ok(())
}

/// A shutdown signal every server can wait on.
fn shutdown_signal() -> tokio::sync::watch::Sender<bool> {
    tokio::sync::watch::channel(false).0
}

/// Server reflection in both versions clients use: `grpc.reflection.v1`, and `v1alpha`, which
/// grpc's own Python reflection client and older grpcurl speak.
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let builder =
        || tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET);
    Ok((
        builder().build_v1().context("reflection service (v1)")?,
        builder().build_v1alpha().context("reflection service (v1alpha)")?,
    ))
}
