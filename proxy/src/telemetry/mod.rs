//! What every request leaves behind: one [`record::Record`] per request, filled by the
//! stages and rendered once into Prometheus metrics (`metrics`), an OTLP span (`trace`) and an
//! access-log line (`access_log`).

pub mod access_log;
pub mod experiment;
pub mod metrics;
pub mod record;
pub mod route_family;
pub mod trace;
