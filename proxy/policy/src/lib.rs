//! Bulwark's policy model: the YAML schema users write, its validation (every error with its
//! field path), and compilation into the immutable `Snapshot` the proxy's data path reads.
//! The proxy and the control plane both depend on this crate so that they accept and refuse
//! exactly the same documents.

pub mod adaptive;
pub mod app_probe;
pub mod compile;
pub mod document;
pub mod duration;
mod error;
pub mod experiment;
pub mod fallback;
pub mod faults;
pub mod hostport;
pub mod priority;
pub mod route;
mod select;
pub mod spec;
pub mod stages;
pub mod validate;

pub use compile::{
    CompiledPolicy, Destination, OutlierPolicy, Route, Snapshot, Timeouts, UpstreamPolicy, DEFAULT_ROUTE,
};
pub use document::parse_documents;
pub use error::ValidationError;
pub use route::RequestInfo;
pub use spec::{Direction, LoadBalancer, ResiliencePolicy, UpstreamProtocol};
pub use stages::{BreakerPolicy, BulkheadPolicy, ClientKey, Condition, RateLimitPolicy, RetryPolicy};

#[cfg(test)]
mod tests;
