//! Where the proxy actually listens. Every address may be configured with port 0 (tests and
//! laptops do): the proxy binds, then reports what it got in the `--ready-file`, a JSON
//! document written atomically (temporary file, then rename) once every listener is bound and
//! a snapshot is in force, and again after each reload that changes the explicit listeners.
//! Whoever waits for the file can connect at once; no port is guessed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Bound {
    pub admin: Option<SocketAddr>,
    pub health: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    /// Explicit listeners by name.
    pub listeners: BTreeMap<String, SocketAddr>,
}

impl Bound {
    /// Writes the addresses to `path` whole, or logs why not (the proxy serves either way).
    pub fn write(&self, path: &Path) {
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the ready file");
        }
    }
}
