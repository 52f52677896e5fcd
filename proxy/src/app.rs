//! Wiring and lifecycle: the one place long-lived tasks are started. `run` loads the config,
//! binds every listener, serves, reloads on SIGHUP or file change, and drains on SIGTERM.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bulwark_policy::Direction;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::config::{self, ListenAddr, ListenerConfig, ProxyConfig};
use crate::control::store::Store;
use crate::downstream::ExplicitUpstream;
use crate::listener::{self, Kind, Lifecycle, Listener};
use crate::ops::admin::LogControl;
use crate::ops::bound::Bound;
use crate::shared::Shared;
use crate::telemetry::metrics::Metrics;

/// How often the config file and policy directory are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(
    source: config::Source,
    control_plane: Option<String>,
    ready_file: Option<PathBuf>,
    log: Arc<dyn LogControl>,
) -> anyhow::Result<()> {
    // Signals first: a SIGHUP or SIGTERM that arrives while the proxy starts is handled, not
    // fatal.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut bound = Bound::default();
    let mut loaded =
        source.load("1").map_err(|errors| anyhow::anyhow!("{source} is invalid:\n  {}", errors.join("\n  ")))?;
    let app_health = Arc::new(crate::ops::app_health::AppHealth::from_env()?);
    with_control_plane(&mut loaded.config, &control_plane);
    let config = loaded.config.clone();
    let metrics = Arc::new(Metrics::new());
    // With a control plane, serve the cached snapshot (if any) until the first push arrives.
    let (snapshot, ready) = match &config.control_plane {
        Some(cp) => match cp.cache_file.as_deref().and_then(crate::control::discovery::load_cache) {
            Some(cached) => {
                tracing::info!(version = %cached.version, "serving the cached snapshot until the control plane answers");
                (cached, true)
            }
            None => (loaded.snapshot, false),
        },
        None => (loaded.snapshot, true),
    };
    let store = Arc::new(Store::new(loaded.config, snapshot, metrics.clone(), ready));
    let background = CancellationToken::new();
    let life = Lifecycle::new(TaskTracker::new());
    let shared = Arc::new(Shared::new(store.clone(), metrics.clone(), life.tracker.clone())?);
    shared.pool.spawn_sweeper(Duration::from_secs(1), background.child_token());

    let health = bind(config.health, "health").await?;
    bound.health = health.local_addr().ok();
    tokio::spawn(crate::ops::server::serve(
        health,
        crate::ops::health::handler(store.clone(), metrics.clone(), app_health),
        background.child_token(),
    ));
    let admin = bind(config.admin, "admin").await?;
    bound.admin = admin.local_addr().ok();
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::ops::server::serve(
        admin,
        crate::ops::admin::handler(store.clone(), log, shutdown.clone()),
        background.child_token(),
    ));

    for (addr, direction) in
        [(config.transparent.outbound, Direction::Outbound), (config.transparent.inbound, Direction::Inbound)]
    {
        let Some(addr) = addr else { continue };
        let socket = bind(addr, direction.as_str()).await?;
        let at = socket.local_addr().ok();
        match direction {
            Direction::Outbound => bound.outbound = at,
            Direction::Inbound => bound.inbound = at,
        }
        let l = Arc::new(Listener { label: direction.as_str().into(), kind: Kind::Transparent(direction) });
        tokio::spawn(listener::run(socket, l, shared.clone(), life.clone()));
        tracing::info!(%addr, direction = direction.as_str(), "transparent listener ready");
    }

    if let Some(cp) = config.control_plane.clone() {
        tokio::spawn(crate::control::discovery::run(cp, store.clone(), metrics.clone(), background.child_token()));
    }

    let mut explicit = ExplicitListeners::default();
    explicit.reconcile(&config.listeners, &shared, &life).await.map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let mut report = |explicit: &ExplicitListeners| {
        bound.listeners = explicit.addresses();
        if let Some(path) = &ready_file {
            bound.write(path);
        }
    };
    report(&explicit);

    let mut seen = fingerprint(&source, &config);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tracing::info!(config = %source, policies = store.installed().snapshot.policies.len(), "bulwark-proxy serving");
    let stop = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                reload(&source, &control_plane, &shared, &mut explicit, &life).await;
                report(&explicit);
                seen = fingerprint_off_the_worker(&source, store.config()).await.unwrap_or(seen);
            }
            _ = tick.tick(), if source.path().is_some() => {
                let now = fingerprint_off_the_worker(&source, store.config()).await.unwrap_or(seen);
                if now != seen {
                    tracing::info!("configuration changed on disk: reloading");
                    reload(&source, &control_plane, &shared, &mut explicit, &life).await;
                    report(&explicit);
                    seen = now;
                }
            }
            _ = term.recv() => break Stop::Terminate,
            _ = int.recv() => break Stop::Now,
            _ = shutdown.cancelled() => break Stop::Now,
        }
    };

    let config = store.config();
    let period = match stop {
        Stop::Terminate => config.drain_period.get(),
        Stop::Now => Duration::ZERO,
    };
    drain(&store, &life, period, config.drain_timeout.get()).await;
    background.cancel();
    Ok(())
}

/// `--control-plane` wins over the file's `controlPlane.address`, at start and on every reload.
fn with_control_plane(config: &mut ProxyConfig, address: &Option<String>) {
    if let Some(address) = address {
        let cp = config.control_plane.get_or_insert_with(|| config::ControlPlane {
            address: address.clone(),
            cache_file: None,
            node: Default::default(),
            token_file: None,
        });
        cp.address = address.clone();
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// How the proxy was asked to stop.
enum Stop {
    /// SIGTERM: the pod is going away, and clients may still arrive for a while.
    Terminate,
    /// SIGINT or `/quitquitquit`: nobody else is coming.
    Now,
}

/// Fail readiness at once, keep accepting and serving for `period` (HTTP/1 responses say
/// `Connection: close`, HTTP/2 clients get GOAWAY), then stop accepting and let connections
/// finish — HTTP/1 after the in-flight exchange — until `deadline` from the start.
async fn drain(store: &Store, life: &Lifecycle, period: Duration, deadline: Duration) {
    let period = period.min(deadline);
    tracing::info!(?period, ?deadline, "draining");
    let started = tokio::time::Instant::now();
    store.start_draining();
    life.drain.cancel();
    tokio::time::sleep(period).await;
    life.stop_accept.cancel();
    life.close.cancel();
    life.tracker.close();
    if tokio::time::timeout_at(started + deadline, life.tracker.wait()).await.is_err() {
        tracing::warn!(open = life.tracker.len(), "drain deadline reached; closing remaining connections");
    } else {
        tracing::info!("drained");
    }
}

/// Re-reads the config; applies it whole or not at all.
async fn reload(
    source: &config::Source,
    control_plane: &Option<String>,
    shared: &Arc<Shared>,
    explicit: &mut ExplicitListeners,
    life: &Lifecycle,
) {
    let next = shared.store.generation() + 1;
    // Parsing and compiling a large policy set takes a while: on the policy thread, so the
    // workers keep serving (the same for installing it below).
    let read = source.clone();
    let loaded = crate::control::policy_thread::run(move || read.load(&next.to_string()))
        .await
        .unwrap_or_else(|e| Err(vec![format!("reading the configuration failed: {e}")]));
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(errors) => {
            tracing::error!(config = %source, errors = %errors.join("\n  "), "reload rejected; the configuration in force is kept");
            shared.metrics.control.reload(false);
            return;
        }
    };
    with_control_plane(&mut loaded.config, control_plane);
    let current = shared.store.config();
    for (what, old, new) in [
        ("admin", Some(current.admin), Some(loaded.config.admin)),
        ("health", Some(current.health), Some(loaded.config.health)),
        ("transparent.outbound", current.transparent.outbound, loaded.config.transparent.outbound),
        ("transparent.inbound", current.transparent.inbound, loaded.config.transparent.inbound),
    ] {
        if old != new {
            tracing::warn!(field = what, "changed address takes effect at the next restart");
        }
    }
    if current.access_log != loaded.config.access_log || current.tracing != loaded.config.tracing {
        tracing::warn!("changed accessLog or tracing settings take effect at the next restart");
    }
    if let Err(errors) = explicit.reconcile(&loaded.config.listeners, shared, life).await {
        tracing::error!(errors = %errors.join("; "), "reload rejected; the configuration in force is kept");
        shared.metrics.control.reload(false);
        return;
    }
    // With a control plane the policies are its; the file only brings the rest of the config.
    let store = shared.store.clone();
    let installed = crate::control::policy_thread::run(move || {
        if loaded.config.control_plane.is_some() {
            store.replace_config(loaded.config)
        } else {
            store.replace(loaded.config, loaded.snapshot)
        }
    })
    .await;
    match installed {
        Ok(generation) => {
            shared.metrics.control.reload(true);
            tracing::info!(generation, "configuration reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "installing the reloaded configuration failed; the one in force is kept");
            shared.metrics.control.reload(false);
        }
    }
}

/// `fingerprint` on the policy thread: the files may be megabytes, read every second.
async fn fingerprint_off_the_worker(source: &config::Source, config: Arc<ProxyConfig>) -> Result<u64, String> {
    let source = source.clone();
    crate::control::policy_thread::run(move || fingerprint(&source, &config)).await
}

/// Content hash of the config file and every policy file, so that edits, `kubectl`'s
/// symlink swaps and touched-but-unchanged files are told apart.
fn fingerprint(source: &config::Source, config: &ProxyConfig) -> u64 {
    let mut h = DefaultHasher::new();
    let Some(path) = source.path() else { return 0 };
    std::fs::read(path).ok().hash(&mut h);
    if let Some(dir) = &config.policy_dir {
        let dir = if dir.is_relative() { path.parent().unwrap_or(Path::new(".")).join(dir) } else { dir.clone() };
        for f in config::policy_files(&dir).unwrap_or_default() {
            f.hash(&mut h);
            std::fs::read(&f).ok().hash(&mut h);
        }
    }
    h.finish()
}

struct Running {
    listen: ListenAddr,
    /// The first address `listen` bound to (its port when `listen` says 0).
    bound: SocketAddr,
    config: ListenerConfig,
    upstream: Arc<ArcSwap<ExplicitUpstream>>,
    stop: CancellationToken,
    resolver_stop: CancellationToken,
}

/// Explicit listeners by name. A reload keeps the socket of a listener whose name and address
/// are unchanged and swaps its upstream; new addresses are bound before old ones close, and a
/// failed bind rejects the reload.
#[derive(Default)]
struct ExplicitListeners {
    running: HashMap<String, Running>,
}

/// A socket on every address `listen` names (a host name may resolve to IPv4 and IPv6 both);
/// all or nothing.
async fn bind_all(listen: &ListenAddr) -> std::io::Result<Vec<TcpListener>> {
    let addrs = listen.resolve().await?;
    if addrs.is_empty() {
        return Err(std::io::Error::other("the name resolves to no address"));
    }
    let mut sockets = Vec::with_capacity(addrs.len());
    for a in addrs {
        sockets.push(TcpListener::bind(a).await.map_err(|e| std::io::Error::new(e.kind(), format!("{a}: {e}")))?);
    }
    Ok(sockets)
}

impl ExplicitListeners {
    fn addresses(&self) -> std::collections::BTreeMap<String, SocketAddr> {
        self.running.iter().map(|(name, r)| (name.clone(), r.bound)).collect()
    }

    async fn reconcile(
        &mut self,
        wanted: &[ListenerConfig],
        shared: &Arc<Shared>,
        life: &Lifecycle,
    ) -> Result<(), Vec<String>> {
        // Bind every new socket first, so a failure changes nothing.
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        for l in wanted {
            let keep = self.running.get(&l.name).is_some_and(|r| r.listen == l.listen);
            if keep {
                continue;
            }
            match bind_all(&l.listen).await {
                Ok(sockets) => fresh.push((l.clone(), sockets)),
                Err(e) => errors.push(format!("listener {}: cannot listen on {}: {e}", l.name, l.listen)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Stop listeners that are gone or moved.
        let names: HashMap<&str, &ListenerConfig> = wanted.iter().map(|l| (l.name.as_str(), l)).collect();
        self.running.retain(|name, r| {
            let keep = names.get(name.as_str()).is_some_and(|l| l.listen == r.listen);
            if !keep {
                r.stop.cancel();
                r.resolver_stop.cancel();
                tracing::info!(listener = %name, "listener stopped");
            }
            keep
        });
        // Swap upstreams of kept listeners whose settings changed.
        for l in wanted {
            if let Some(r) = self.running.get_mut(&l.name) {
                if r.config != *l {
                    r.resolver_stop.cancel();
                    r.resolver_stop = CancellationToken::new();
                    r.upstream.store(ExplicitUpstream::start(l, &r.resolver_stop));
                    r.config = l.clone();
                    tracing::info!(listener = %l.name, upstream = %l.upstream, "listener updated");
                }
            }
        }
        for (l, sockets) in fresh {
            let resolver_stop = CancellationToken::new();
            let upstream = Arc::new(ArcSwap::new(ExplicitUpstream::start(&l, &resolver_stop)));
            let stop = life.stop_accept.child_token();
            let bound: Vec<SocketAddr> = sockets.iter().filter_map(|s| s.local_addr().ok()).collect();
            let lifecycle = Lifecycle { stop_accept: stop.clone(), ..life.clone() };
            let listener = Arc::new(Listener { label: l.name.as_str().into(), kind: Kind::Explicit(upstream.clone()) });
            for socket in sockets {
                tokio::spawn(listener::run(socket, listener.clone(), shared.clone(), lifecycle.clone()));
            }
            tracing::info!(listener = %l.name, listen = ?bound, upstream = %l.upstream, "explicit listener ready");
            let Some(first) = bound.first().copied() else { continue };
            self.running.insert(
                l.name.clone(),
                Running { listen: l.listen.clone(), bound: first, config: l, upstream, stop, resolver_stop },
            );
        }
        Ok(())
    }
}
