//! What the data path reads: the policy snapshot in force (an `ArcSwap`, loaded once per
//! request or connection without a lock) and the bootstrap settings. Reloads swap both
//! atomically; a request keeps the snapshot it started with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bulwark_policy::Snapshot;

use crate::config::ProxyConfig;

pub struct Store {
    snapshot: ArcSwap<Snapshot>,
    config: ArcSwap<ProxyConfig>,
    generation: AtomicU64,
    draining: AtomicBool,
}

impl Store {
    pub fn new(config: ProxyConfig, snapshot: Snapshot) -> Store {
        Store {
            snapshot: ArcSwap::from_pointee(snapshot),
            config: ArcSwap::from_pointee(config),
            generation: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.load_full()
    }

    /// Puts a new config and snapshot in force; returns the new generation.
    pub fn replace(&self, config: ProxyConfig, snapshot: Snapshot) -> u64 {
        self.config.store(Arc::new(config));
        self.snapshot.store(Arc::new(snapshot));
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
