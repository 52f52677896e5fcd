//! What the data path reads: the bootstrap settings, the policy snapshot in force and the
//! runtime state of its routes, as one [`Installed`] behind one `ArcSwap`, loaded once per
//! request or connection without a lock. Everything is swapped in together, so a request never
//! sees the settings of one generation with the policies of another; it keeps what it loaded.
//!
//! Faults set at runtime (admin `/faults`) are an overlay on the file's policies: setting or
//! clearing one compiles a new snapshot from the file's policies plus the overlay, validated
//! like any other, so a toggle never disturbs other settings, and a file reload keeps the
//! overlay (entries whose policy or route disappeared are dropped, with a log line).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use arc_swap::ArcSwap;
use bulwark_policy::spec::FaultSpec;
use bulwark_policy::{ResiliencePolicy, Snapshot};

use crate::control::config::ProxyConfig;
use crate::stage::fault::FaultState;
use crate::stage::registry::{self, RouteState};
use crate::telemetry::metrics::Metrics;

/// The settings, a snapshot and the runtime state of its routes, swapped in together so that
/// `states[route.index]` always belongs to `snapshot` and `config` to the same generation.
pub struct Installed {
    pub config: Arc<ProxyConfig>,
    pub snapshot: Snapshot,
    pub states: Vec<Option<Arc<RouteState>>>,
    pub faults: Vec<Option<Arc<FaultState>>>,
}

/// (policy `namespace/name`, route name) → faults set at runtime.
type Overlay = BTreeMap<(String, String), FaultSpec>;

struct Sources {
    /// The policies as the configuration file has them.
    base: Vec<ResiliencePolicy>,
    overlay: Overlay,
}

pub struct Store {
    installed: ArcSwap<Installed>,
    sources: Mutex<Sources>,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
    draining: AtomicBool,
    /// A snapshot is in force (always, with a static config; with a control plane, once the
    /// cache or the first snapshot was loaded).
    loaded: AtomicBool,
}

impl Store {
    pub fn new(config: ProxyConfig, snapshot: Snapshot, metrics: Arc<Metrics>, loaded: bool) -> Store {
        let sources = Sources { base: snapshot.documents.clone(), overlay: Overlay::new() };
        let installed = install(Arc::new(config), snapshot, None, &sources.overlay, &metrics);
        Store {
            installed: ArcSwap::from_pointee(installed),
            sources: Mutex::new(sources),
            metrics,
            generation: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            loaded: AtomicBool::new(loaded),
        }
    }

    pub fn installed(&self) -> arc_swap::Guard<Arc<Installed>> {
        self.installed.load()
    }

    /// The settings in force; a request that also needs the policies loads [`Store::installed`]
    /// once instead.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.installed.load().config.clone()
    }

    /// Puts a new config and the file's new policies in force (with the runtime overlay on
    /// top); returns the new generation.
    pub fn replace(&self, config: ProxyConfig, snapshot: Snapshot) -> u64 {
        self.put(Some(Arc::new(config)), snapshot)
    }

    /// The file's (or control plane's) new policies with the overlay on top, and `config` or,
    /// without one, the settings in force, read under the same lock.
    fn put(&self, config: Option<Arc<ProxyConfig>>, snapshot: Snapshot) -> u64 {
        let mut guard = self.sources.lock();
        let sources = &mut *guard;
        sources.base = snapshot.documents.clone();
        let version = snapshot.version.clone();
        let snapshot = if sources.overlay.is_empty() {
            snapshot
        } else {
            let base = &sources.base;
            sources.overlay.retain(|(policy, route), _| {
                let found = check_route(base, policy, route).is_ok();
                if !found {
                    tracing::warn!(%policy, %route, "runtime fault dropped: its policy or route is gone");
                }
                found
            });
            match compile(&sources.base, &sources.overlay, &version) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(errors = %e, "runtime faults no longer fit the new policies and were dropped");
                    sources.overlay.clear();
                    snapshot
                }
            }
        };
        self.install_locked(sources, config, snapshot)
    }

    /// Puts a new policy snapshot in force (from the control plane), keeping the config.
    pub fn replace_policies(&self, snapshot: Snapshot) -> u64 {
        let generation = self.put(None, snapshot);
        self.loaded.store(true, Ordering::Release);
        generation
    }

    /// Puts a new config in force, keeping the policies (they come from the control plane).
    pub fn replace_config(&self, config: ProxyConfig) -> u64 {
        let base = self.sources.lock().base.clone();
        let version = (self.generation() + 1).to_string();
        let snapshot = Snapshot::compile(version, base).unwrap_or_default();
        self.replace(config, snapshot)
    }

    /// Sets faults on a route at runtime, replacing any set before; returns the generation.
    pub fn set_fault(&self, policy: &str, route: &str, spec: FaultSpec) -> Result<u64, String> {
        let mut sources = self.sources.lock();
        check_route(&sources.base, policy, route)?;
        let mut overlay = sources.overlay.clone();
        overlay.insert((policy.to_string(), route.to_string()), spec);
        let snapshot = compile(&sources.base, &overlay, &(self.generation() + 1).to_string())?;
        sources.overlay = overlay;
        Ok(self.install_locked(&sources, None, snapshot))
    }

    /// Removes runtime faults from a route; what the file says applies again.
    pub fn clear_fault(&self, policy: &str, route: &str) -> Result<u64, String> {
        let mut sources = self.sources.lock();
        let mut overlay = sources.overlay.clone();
        if overlay.remove(&(policy.to_string(), route.to_string())).is_none() {
            return Err(format!("no runtime fault on route {route:?} of policy {policy:?}"));
        }
        let snapshot = compile(&sources.base, &overlay, &(self.generation() + 1).to_string())?;
        sources.overlay = overlay;
        Ok(self.install_locked(&sources, None, snapshot))
    }

    /// Installs `snapshot` with `config` (or the settings in force). Callers hold the sources
    /// lock, so installs never interleave.
    fn install_locked(&self, sources: &Sources, config: Option<Arc<ProxyConfig>>, snapshot: Snapshot) -> u64 {
        let old = self.installed.load_full();
        let config = config.unwrap_or_else(|| old.config.clone());
        self.installed.store(Arc::new(install(config, snapshot, Some(&old), &sources.overlay, &self.metrics)));
        super::retire::later(old);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.control.generation.set(generation as i64);
        generation
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// After SIGTERM: HTTP/1 responses then ask the client to reconnect elsewhere.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready means "a snapshot is in force and the proxy is not draining" — not whether the
    /// control plane is reachable.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

/// The route exists, or what does: the policies here, or the policy's routes.
fn check_route(docs: &[ResiliencePolicy], policy: &str, route: &str) -> Result<(), String> {
    fn listed<'a>(names: impl Iterator<Item = &'a str>) -> String {
        let names: Vec<&str> = names.collect();
        let shown = names.iter().take(20).copied().collect::<Vec<_>>().join(", ");
        match names.len() {
            0 => "none".into(),
            n if n > 20 => format!("{shown} and {} more", n - 20),
            _ => shown,
        }
    }
    let Some(doc) = docs.iter().find(|d| d.id() == policy) else {
        let ids: Vec<String> = docs.iter().map(|d| d.id()).collect();
        return Err(format!(
            "there is no policy {policy:?}; the policies here: {}",
            listed(ids.iter().map(String::as_str))
        ));
    };
    if doc.has_route(route) {
        return Ok(());
    }
    let routes =
        std::iter::once(bulwark_policy::compile::DEFAULT_ROUTE).chain(doc.spec.routes.iter().map(|r| r.name.as_str()));
    Err(format!("no route {route:?} in policy {policy:?}; its routes: {}", listed(routes)))
}

/// The file's policies with the overlay's faults written into their routes, compiled.
fn compile(base: &[ResiliencePolicy], overlay: &Overlay, version: &str) -> Result<Snapshot, String> {
    let mut docs = base.to_vec();
    for ((policy, route), spec) in overlay {
        if let Some(doc) = docs.iter_mut().find(|d| d.id() == *policy) {
            // Entries whose route disappeared were dropped when the file changed.
            let _ = doc.set_route_faults(route, Some(spec.clone()));
        }
    }
    Snapshot::compile(version, docs)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

fn install(
    config: Arc<ProxyConfig>,
    snapshot: Snapshot,
    old: Option<&Installed>,
    overlay: &Overlay,
    metrics: &Metrics,
) -> Installed {
    let states = registry::build(&snapshot, old.map_or(&[][..], |o| &o.states[..]), &metrics.stages);
    if let Some(old) = old {
        forget_departed_routes(&old.snapshot, &snapshot, metrics);
    }
    let old_faults: HashMap<(&str, &str), &Arc<FaultState>> =
        old.iter().flat_map(|o| o.faults.iter().flatten()).map(|s| ((&*s.policy, &*s.route), s)).collect();
    let mut faults = vec![None; snapshot.route_count];
    for p in &snapshot.policies {
        for r in p.routes.iter().chain(std::iter::once(&p.default_route)) {
            let Some(f) = &r.faults else { continue };
            // Unchanged faults keep their state, so a `for` expiry is not restarted.
            let kept = old_faults.get(&(&*r.policy, &*r.name)).filter(|s| *s.faults == **f).map(|s| Arc::clone(s));
            let runtime = overlay.contains_key(&(r.policy.to_string(), r.name.to_string()));
            faults[r.index] = Some(kept.unwrap_or_else(|| {
                FaultState::new(
                    r.policy.clone(),
                    r.name.clone(),
                    f.clone(),
                    runtime,
                    metrics.stages.fault.route(&r.policy, &r.name),
                    f.spec.experiment.as_deref().map(|x| metrics.experiments.handle(x)),
                )
            }));
        }
    }
    Installed { config, snapshot, states, faults }
}

/// Removes the metric series of routes (and policies' TCP series) the new snapshot no longer has.
fn forget_departed_routes(old: &Snapshot, new: &Snapshot, metrics: &Metrics) {
    let routes = |s: &Snapshot| -> HashSet<(Arc<str>, Arc<str>)> {
        s.policies
            .iter()
            .flat_map(|p| p.routes.iter().chain(std::iter::once(&p.default_route)))
            .map(|r| (r.policy.clone(), r.name.clone()))
            .collect()
    };
    let kept = routes(new);
    for (policy, route) in routes(old).difference(&kept) {
        metrics.forget_route(policy, route);
    }
    let policies: HashSet<&str> = new.policies.iter().map(|p| &*p.id).collect();
    for p in old.policies.iter().filter(|p| !policies.contains(&*p.id)) {
        metrics.forget_route(&p.id, crate::tcp::FAULT_ROUTE);
    }
}
