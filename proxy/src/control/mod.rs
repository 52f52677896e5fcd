//! Configuration on its way to the data path: the bootstrap file (`config`), policies streamed
//! from the control plane (`discovery`), and the one view of both that requests read
//! (`store`).

pub mod config;
pub mod discovery;
pub mod policy_thread;
mod retire;
pub mod store;

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::{single, ResultLabels};

/// Reloads, the generation in force, and the discovery stream.
pub struct ControlMetrics {
    reloads: Family<ResultLabels, Counter>,
    pub generation: Gauge<i64, AtomicI64>,
    snapshots: Family<ResultLabels, Counter>,
    connected: Gauge,
}

impl ControlMetrics {
    pub fn register(r: &mut Registry) -> ControlMetrics {
        let m = ControlMetrics {
            reloads: single(r, "config_reloads", "Configuration reloads, applied or rejected"),
            generation: single(
                r,
                "config_generation",
                "Generation of the policy snapshot in force (1 at start, +1 per applied reload or runtime fault change)",
            ),
            snapshots: single(
                r,
                "discovery_snapshots",
                "Control-plane snapshots acknowledged (ack) or rejected (nack)",
            ),
            connected: single(r, "control_plane_connected", "1 while the discovery stream to the control plane is open"),
        };
        m.generation.set(1);
        m
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn snapshot(&self, acked: bool) {
        let result = if acked { "ack" } else { "nack" };
        self.snapshots.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }
}
