//! Bulwark's control plane: a durable policy store (`store`) served over gRPC
//! (`server::admin`), validated with the proxies' own policy code.

pub mod experiments;
pub mod inject;
pub mod published;
pub mod server;
pub mod store;
pub mod webhook;
