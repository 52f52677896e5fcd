//! Rewrites an app container's probes through the proxy's health port when the probed port is
//! captured, and returns the originals for the proxy to run (`bulwark_policy::app_probe`).
//! Exec probes, HTTPS probes and probes of another host are left alone: they never cross the
//! pod's redirect (exec) or pass through it as opaque TLS / off-pod traffic.
//!
//! What a probe pointed at before is kept (`Originals`) for `bulwarkctl uninject`.

use std::collections::BTreeMap;

use bulwark_policy::app_probe::{self, AppProbe, AppProbes, Check};
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `CONTAINER/FIELD` (`web/readinessProbe`) → the handler of the probe before it was rewritten
/// (a probe with only `httpGet`, `tcpSocket` or `grpc` set).
pub type Originals = BTreeMap<String, Probe>;

/// `captured(port)` says whether inbound traffic to `port` goes through the proxy.
pub fn rewrite(
    container: &mut Container,
    health_port: u16,
    captured: &dyn Fn(u16) -> bool,
    out: &mut AppProbes,
    originals: &mut Originals,
) {
    let ports = container.ports.clone().unwrap_or_default();
    let resolve = |port: &IntOrString| -> Option<u16> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
    };
    let name = container.name.clone();
    for (kind, field, probe) in [
        ("livez", "livenessProbe", &mut container.liveness_probe),
        ("readyz", "readinessProbe", &mut container.readiness_probe),
        ("startupz", "startupProbe", &mut container.startup_probe),
    ] {
        let Some(probe) = probe.as_mut() else { continue };
        let Some(check) = original(probe, &resolve) else { continue };
        let port = match &check {
            Check::HttpGet { port, .. } | Check::TcpSocket { port } | Check::Grpc { port, .. } => *port,
        };
        if !captured(port) {
            continue;
        }
        let path = app_probe::path(&name, kind);
        let timeout_seconds = probe.timeout_seconds.and_then(|t| u32::try_from(t).ok()).unwrap_or(1);
        out.insert(path.clone(), AppProbe { check, timeout_seconds });
        originals.insert(format!("{name}/{field}"), handler(probe));
        probe.http_get = Some(HTTPGetAction {
            path: Some(path),
            port: IntOrString::Int(i32::from(health_port)),
            scheme: Some("HTTP".into()),
            ..Default::default()
        });
        probe.tcp_socket = None;
        probe.grpc = None;
    }
}

/// The probe's handler alone.
fn handler(probe: &Probe) -> Probe {
    Probe {
        http_get: probe.http_get.clone(),
        tcp_socket: probe.tcp_socket.clone(),
        grpc: probe.grpc.clone(),
        ..Default::default()
    }
}

/// Puts back the handlers `rewrite` replaced in `container`; the probes' other fields (period,
/// thresholds) stay as they are now.
pub fn restore(container: &mut Container, originals: &Originals) {
    let name = container.name.clone();
    for (field, probe) in [
        ("livenessProbe", &mut container.liveness_probe),
        ("readinessProbe", &mut container.readiness_probe),
        ("startupProbe", &mut container.startup_probe),
    ] {
        let (Some(probe), Some(before)) = (probe.as_mut(), originals.get(&format!("{name}/{field}"))) else {
            continue;
        };
        probe.http_get = before.http_get.clone();
        probe.tcp_socket = before.tcp_socket.clone();
        probe.grpc = before.grpc.clone();
    }
}

fn original(probe: &Probe, resolve: &dyn Fn(&IntOrString) -> Option<u16>) -> Option<Check> {
    if let Some(h) = &probe.http_get {
        let https = h.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        if https || h.host.is_some() {
            return None;
        }
        return Some(Check::HttpGet {
            path: h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into()),
            port: resolve(&h.port)?,
            headers: h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect(),
        });
    }
    if let Some(t) = &probe.tcp_socket {
        if t.host.is_some() {
            return None;
        }
        return Some(Check::TcpSocket { port: resolve(&t.port)? });
    }
    if let Some(g) = &probe.grpc {
        return Some(Check::Grpc {
            port: u16::try_from(g.port).ok()?,
            service: g.service.clone().filter(|s| !s.is_empty()),
        });
    }
    None
}
