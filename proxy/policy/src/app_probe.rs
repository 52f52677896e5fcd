//! The app's probes as the injector hands them to the proxy. When the app's ports are
//! captured, kubelet's probes are rewritten to `GET :15020/app-health/CONTAINER/KIND` and the
//! proxy runs the original check against the app over loopback, so that a probe never passes
//! through the resilience stages (a fault experiment must not get pods restarted) and a TCP probe
//! reflects the app rather than the proxy that accepted the connection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Environment variable of the proxy container holding the [`AppProbes`] as JSON.
pub const ENV: &str = "BULWARK_APP_PROBES";

/// Path prefix of the rewritten probes on the proxy's health port.
pub const PATH_PREFIX: &str = "/app-health/";

/// Rewritten path → the check it stands for.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// The path kubelet is given for `kind` (`livez`, `readyz`, `startupz`) of `container`.
pub fn path(container: &str, kind: &str) -> String {
    format!("{PATH_PREFIX}{container}/{kind}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    #[serde(flatten)]
    pub check: Check,
    /// Kubelet's own timeout for the probe; the proxy gives up on the app a little earlier.
    pub timeout_seconds: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Check {
    HttpGet {
        path: String,
        port: u16,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    TcpSocket {
        port: u16,
    },
    Grpc {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
}

/// Parses the proxy's environment value; the error names what is wrong.
pub fn parse(json: &str) -> Result<AppProbes, String> {
    serde_json::from_str(json).map_err(|e| format!("{ENV}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let mut probes = AppProbes::new();
        probes.insert(
            path("web", "readyz"),
            AppProbe {
                check: Check::HttpGet {
                    path: "/healthz".into(),
                    port: 8080,
                    headers: vec![("x-probe".into(), "1".into())],
                },
                timeout_seconds: 2,
            },
        );
        probes.insert(path("web", "livez"), AppProbe { check: Check::TcpSocket { port: 8080 }, timeout_seconds: 1 });
        probes.insert(
            path("rpc", "startupz"),
            AppProbe { check: Check::Grpc { port: 9090, service: Some("ledger".into()) }, timeout_seconds: 1 },
        );
        let json = serde_json::to_string(&probes).unwrap();
        assert_eq!(parse(&json).unwrap(), probes);
        assert!(json.contains(r#""/app-health/web/readyz":{"httpGet":{"path":"/healthz","port":8080"#), "{json}");
    }

    #[test]
    fn bad_json_names_the_variable() {
        let e = parse(r#"{"/app-health/a/livez": {"tcpSocket": {"port": 70000}, "timeoutSeconds": 1}}"#).unwrap_err();
        assert!(e.starts_with("BULWARK_APP_PROBES:"), "{e}");
    }
}
