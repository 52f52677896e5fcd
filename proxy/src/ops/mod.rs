//! What operators and the kubelet talk to: the admin port (`admin`), liveness, readiness and
//! metrics (`health`), the app's own probes run by the proxy (`app_health`), the small HTTP
//! server both ports use (`server`), and `wait-ready` for pods without native sidecars.

pub mod admin;
pub mod app_health;
pub mod bound;
pub mod health;
pub mod server;
pub mod wait_ready;
