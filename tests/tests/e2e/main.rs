//! Bulwark end to end: the real `bulwark-proxy` binary between real clients and upstreams
//! that misbehave on command. One test binary, a module per scenario family.

mod access_log;
mod adaptive;
mod admin;
mod auth;
mod balance;
mod bulwarkctl;
mod cancellation;
mod chart;
mod churn;
mod cli;
mod control;
mod dashboard;
mod defaults;
mod discovery;
mod drain;
mod dry_run;
mod edge;
mod experiments;
mod fallback;
mod faults;
mod grpc;
mod http1;
mod http2;
mod kubernetes;
mod passthrough;
mod priority;
mod protocols;
mod python;
mod reload;
mod stages;
mod tcp;
mod timeouts;
mod tracing;
mod transparent;

/// A policy selecting the explicit listener `web`, with the given `spec` lines after `target`.
pub fn web_policy(rest: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: web }}\nspec:\n  target: {{ listener: web }}\n{rest}"
    )
}

/// How many of `statuses` are `status`.
pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}
