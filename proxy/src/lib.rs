//! Bulwark's sidecar proxy. The binary (`main.rs`) is thin; this library holds the data path
//! so that its pieces are unit tested where they are defined.
//!
//! The folders read in the order configuration becomes traffic: `control` (the bootstrap
//! file, the discovery client and the store of what is in force) → `stage` (each resilience
//! stage's state and decision) → the data path: `listener` (accept, original destination,
//! protocol detection) → `http` (server, the stage chain, responses) or `tcp` (opaque
//! forwarding) → `upstream` (resolution, connect, balancing, pool). `telemetry` is what every
//! request leaves behind (metrics, spans, access log); `ops` is what operators and the kubelet
//! talk to (admin, health, app probes); `app` wires everything and owns the lifecycle; `init`
//! writes the iptables redirect.

pub mod app;
pub mod buffers;
pub mod control;
pub mod downstream;
pub mod http;
pub mod init;
mod io;
pub mod listener;
pub mod ops;
pub mod reason;
pub mod shared;
pub mod stage;
pub mod tcp;
pub mod telemetry;
pub mod upstream;
