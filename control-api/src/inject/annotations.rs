//! The pod annotations injection reads, and the settings they resolve to over the values.

use std::collections::BTreeMap;
use std::time::Duration;

use super::values::Values;

pub const PREFIX: &str = "bulwark.dev/";
/// `disabled` (or `false`) keeps a pod out of the mesh even in an injected namespace.
pub const INJECT: &str = "bulwark.dev/inject";
/// Written on injection; its presence makes injection a no-op.
pub const STATUS: &str = "bulwark.dev/status";
pub const PROXY_IMAGE: &str = "bulwark.dev/proxy-image";
pub const PROXY_CPU_REQUEST: &str = "bulwark.dev/proxy-cpu-request";
pub const PROXY_MEMORY_REQUEST: &str = "bulwark.dev/proxy-memory-request";
pub const PROXY_CPU_LIMIT: &str = "bulwark.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "bulwark.dev/proxy-memory-limit";
pub const LOG_LEVEL: &str = "bulwark.dev/log-level";
pub const DRAIN_TIMEOUT: &str = "bulwark.dev/drain-timeout";
pub const CONTROL_PLANE: &str = "bulwark.dev/control-plane";
pub const NATIVE_SIDECAR: &str = "bulwark.dev/native-sidecar";
pub const REWRITE_PROBES: &str = "bulwark.dev/rewrite-probes";
pub const SKIP_INBOUND_PORTS: &str = "bulwark.dev/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS: &str = "bulwark.dev/skip-outbound-ports";
pub const SKIP_OUTBOUND_CIDRS: &str = "bulwark.dev/skip-outbound-cidrs";
pub const INBOUND_CAPTURE: &str = "bulwark.dev/inbound-capture";
/// `true`: the pod's app ends the proxy itself when it is done (`POST /quitquitquit` on the
/// proxy's admin port), which lets a run-to-completion pod be injected without native sidecars.
pub const APP_ENDS_PROXY: &str = "bulwark.dev/app-ends-proxy";
/// Written on injection: the version of the proxy injected (the image's tag, else the
/// injector's own version), so that pods still running an old proxy can be found.
pub const PROXY_VERSION: &str = "bulwark.dev/proxy-version";
/// Written on injection: what `bulwarkctl uninject` puts back (the app's probes as they were,
/// and which collections injection created).
pub const RESTORE: &str = "bulwark.dev/restore";

const KNOWN: [&str; 19] = [
    INJECT,
    STATUS,
    PROXY_IMAGE,
    PROXY_CPU_REQUEST,
    PROXY_MEMORY_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    DRAIN_TIMEOUT,
    CONTROL_PLANE,
    NATIVE_SIDECAR,
    REWRITE_PROBES,
    SKIP_INBOUND_PORTS,
    SKIP_OUTBOUND_PORTS,
    SKIP_OUTBOUND_CIDRS,
    INBOUND_CAPTURE,
    APP_ENDS_PROXY,
    PROXY_VERSION,
    RESTORE,
];

/// An annotation whose value cannot be used; names the annotation, its value and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {name}={value:?}: {reason}")]
pub struct BadAnnotation {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Everything injection needs for one pod: the values with the pod's annotations applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub values: Values,
    pub drain_timeout: Duration,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<String>,
    pub app_ends_proxy: bool,
}

pub fn opted_out(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(INJECT).is_some_and(|v| matches!(v.trim(), "disabled" | "false"))
}

/// Resolves the settings; every misspelled `bulwark.dev/` annotation or bad value is an error.
pub fn settings(values: &Values, annotations: &BTreeMap<String, String>) -> Result<Settings, BadAnnotation> {
    let mut v = values.clone();
    let mut app_ends_proxy = false;
    let bad = |name: &str, value: &str, reason: String| BadAnnotation {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    };
    for (name, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        let value = value.trim();
        match name.as_str() {
            INJECT | STATUS | PROXY_VERSION | RESTORE | SKIP_INBOUND_PORTS | SKIP_OUTBOUND_PORTS
            | SKIP_OUTBOUND_CIDRS => {}
            PROXY_IMAGE if value.is_empty() => return Err(bad(name, value, "must not be empty".into())),
            PROXY_IMAGE => v.image = value.into(),
            PROXY_CPU_REQUEST => v.resources.cpu_request = quantity(name, value)?,
            PROXY_MEMORY_REQUEST => v.resources.memory_request = quantity(name, value)?,
            PROXY_CPU_LIMIT => v.resources.cpu_limit = quantity(name, value)?,
            PROXY_MEMORY_LIMIT => v.resources.memory_limit = quantity(name, value)?,
            LOG_LEVEL if value.is_empty() || value.contains(char::is_whitespace) => {
                return Err(bad(name, value, "expected a log filter such as info or bulwark_proxy=debug".into()))
            }
            LOG_LEVEL => v.log_level = value.into(),
            DRAIN_TIMEOUT => {
                bulwark_policy::duration::parse(value).map_err(|e| bad(name, value, e))?;
                v.drain_timeout = value.into();
            }
            CONTROL_PLANE if !value.contains(':') => {
                return Err(bad(name, value, "expected host:port".into()));
            }
            CONTROL_PLANE => v.control_plane = value.into(),
            NATIVE_SIDECAR => v.native_sidecar = boolean(name, value)?,
            REWRITE_PROBES => v.rewrite_probes = boolean(name, value)?,
            APP_ENDS_PROXY => app_ends_proxy = boolean(name, value)?,
            INBOUND_CAPTURE => {
                v.inbound_capture = match value {
                    "all" => super::values::InboundCapture::All,
                    "declared" => super::values::InboundCapture::Declared,
                    _ => return Err(bad(name, value, "expected all or declared".into())),
                }
            }
            _ => {
                let known = KNOWN.join(", ");
                return Err(bad(name, value, format!("unknown Bulwark annotation; known: {known}")));
            }
        }
    }
    let drain_timeout = bulwark_policy::duration::parse(&v.drain_timeout)
        .map_err(|e| bad("values drainTimeout", &v.drain_timeout, e))?;
    let get = |name: &str| annotations.get(name).map(|s| s.trim()).unwrap_or_default();
    Ok(Settings {
        values: v,
        drain_timeout,
        skip_inbound_ports: ports(SKIP_INBOUND_PORTS, get(SKIP_INBOUND_PORTS))?,
        skip_outbound_ports: ports(SKIP_OUTBOUND_PORTS, get(SKIP_OUTBOUND_PORTS))?,
        skip_outbound_cidrs: cidrs(SKIP_OUTBOUND_CIDRS, get(SKIP_OUTBOUND_CIDRS))?,
        app_ends_proxy,
    })
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(name: &str, value: &str) -> Result<Vec<u16>, BadAnnotation> {
    items(value)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(BadAnnotation {
                name: name.into(),
                value: value.into(),
                reason: format!("{p:?} is not a port (1-65535); write e.g. 3306,6379"),
            }),
        })
        .collect()
}

fn cidrs(name: &str, value: &str) -> Result<Vec<String>, BadAnnotation> {
    items(value)
        .map(|c| {
            bulwark_policy::validate::Cidr::parse(c).map(|c| c.to_string()).map_err(|e| BadAnnotation {
                name: name.into(),
                value: value.into(),
                reason: e,
            })
        })
        .collect()
}

fn boolean(name: &str, value: &str) -> Result<bool, BadAnnotation> {
    match value {
        "true" | "enabled" => Ok(true),
        "false" | "disabled" => Ok(false),
        _ => Err(BadAnnotation { name: name.into(), value: value.into(), reason: "expected true or false".into() }),
    }
}

fn quantity(name: &str, value: &str) -> Result<String, BadAnnotation> {
    check_quantity(value).map(|()| value.to_string()).map_err(|reason| BadAnnotation {
        name: name.into(),
        value: value.into(),
        reason,
    })
}

/// A Kubernetes resource quantity: a decimal number with an optional suffix (`100m`, `1.5`,
/// `64Mi`, `1G`, `2e3`).
pub fn check_quantity(q: &str) -> Result<(), String> {
    let digits = q.trim_start_matches(['+', '-']);
    let number_end = digits.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(number_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
                let exp = exp.trim_start_matches(['+', '-']);
                !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
            });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!("{q:?} is not a Kubernetes quantity; write e.g. 100m, 0.5, 64Mi"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_override_values() {
        let s = settings(
            &Values::default(),
            &ann(&[
                (PROXY_IMAGE, "registry.local/bulwark-proxy:dev"),
                (PROXY_MEMORY_LIMIT, "128Mi"),
                (DRAIN_TIMEOUT, "45s"),
                (NATIVE_SIDECAR, "false"),
                (SKIP_INBOUND_PORTS, "9901, 9902"),
                (SKIP_OUTBOUND_CIDRS, "10.96.0.0/12,fd00::/8"),
                ("app.kubernetes.io/name", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.values.image, "registry.local/bulwark-proxy:dev");
        assert_eq!(s.values.resources.memory_limit, "128Mi");
        assert_eq!(s.drain_timeout, Duration::from_secs(45));
        assert!(!s.values.native_sidecar);
        assert_eq!(s.skip_inbound_ports, vec![9901, 9902]);
        assert_eq!(s.skip_outbound_cidrs, vec!["10.96.0.0/12", "fd00::/8"]);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (name, value, says) in [
            (SKIP_INBOUND_PORTS, "80,http", "\"http\" is not a port"),
            (SKIP_OUTBOUND_PORTS, "0", "\"0\" is not a port"),
            (SKIP_OUTBOUND_CIDRS, "10.0.0.0/33", "10.0.0.0/33"),
            (PROXY_CPU_LIMIT, "lots", "not a Kubernetes quantity"),
            (DRAIN_TIMEOUT, "soon", "soon"),
            (NATIVE_SIDECAR, "maybe", "expected true or false"),
            ("bulwark.dev/proxy-imag", "x", "unknown Bulwark annotation"),
        ] {
            let e = settings(&Values::default(), &ann(&[(name, value)])).unwrap_err();
            assert_eq!(e.name, name);
            let text = e.to_string();
            assert!(text.starts_with(&format!("annotation {name}=")), "{text}");
            assert!(text.contains(says), "{text}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "0.5", "64Mi", "1G", "2e3", "+1"] {
            check_quantity(ok).unwrap();
        }
        for bad in ["", "m", "1.2.3", "64MB", "1e", "abc"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn opt_out() {
        assert!(opted_out(&ann(&[(INJECT, "disabled")])));
        assert!(opted_out(&ann(&[(INJECT, "false")])));
        assert!(!opted_out(&ann(&[(INJECT, "enabled")])));
        assert!(!opted_out(&ann(&[])));
    }
}
