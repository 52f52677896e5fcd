//! Bulwark's sidecar proxy. The binary (`main.rs`) is thin; this library holds the data path
//! so that its pieces are unit tested where they are defined.
//!
//! Layout, in the order a connection meets it: `listener` (accept, original destination,
//! protocol detection) → `http` (server, request path, responses) or `tcp` (opaque
//! forwarding) → `upstream` (resolution, connect, pool). `store` holds the policy snapshot the
//! data path reads; `app` wires everything and owns the lifecycle; `admin`, `health` and
//! `metrics` are what operators see; `init` writes the iptables redirect.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod app_health;
pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod health;
pub mod http;
pub mod init;
mod io;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod reason;
pub mod stage;
pub mod store;
pub mod target;
pub mod tcp;
pub mod trace;
pub mod upstream;
pub mod wait_ready;
