//! What the data path reads: the policy snapshot in force (an `ArcSwap`, loaded once per
//! request or connection without a lock) and the bootstrap settings. Reloads swap both
//! atomically; a request keeps the snapshot it started with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulwark_policy::Snapshot;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::stage::registry::{self, RouteState};

/// A snapshot and the runtime state of its routes, swapped in together so that
/// `states[route.index]` always belongs to `snapshot`.
pub struct Installed {
    pub snapshot: Snapshot,
    pub states: Vec<Arc<RouteState>>,
}

pub struct Store {
    installed: ArcSwap<Installed>,
    metrics: Arc<Metrics>,
    config: ArcSwap<ProxyConfig>,
    generation: AtomicU64,
    draining: AtomicBool,
}

impl Store {
    pub fn new(config: ProxyConfig, snapshot: Snapshot, metrics: Arc<Metrics>) -> Store {
        let states = registry::build(&snapshot, &[], &metrics);
        Store {
            installed: ArcSwap::from_pointee(Installed { snapshot, states }),
            metrics,
            config: ArcSwap::from_pointee(config),
            generation: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        }
    }

    pub fn installed(&self) -> arc_swap::Guard<Arc<Installed>> {
        self.installed.load()
    }

    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.load_full()
    }

    /// Puts a new config and snapshot in force; returns the new generation.
    pub fn replace(&self, config: ProxyConfig, snapshot: Snapshot) -> u64 {
        let states = registry::build(&snapshot, &self.installed.load().states, &self.metrics);
        self.config.store(Arc::new(config));
        self.installed
            .store(Arc::new(Installed { snapshot, states }));
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready means "serving under a loaded snapshot and not draining"; a static config is
    /// loaded before any listener opens, so only draining turns it off here.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }
}
