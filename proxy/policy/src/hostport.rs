//! `host:port` as written in config and policies (IPv6 literals in brackets), parsed the same
//! way by the proxy, which connects to it, and the control plane, which validates it.

use std::net::IpAddr;

/// `host:port` as written in config; IPv6 literals in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} must be host:port"))?;
        let port: u16 =
            port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{text:?}: port must be 1-65535"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{text:?}: host is empty"));
        }
        Ok(HostPort { host: host.to_ascii_lowercase(), port })
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(_)) => write!(f, "[{}]:{}", self.host, self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_forms() {
        assert_eq!(HostPort::parse("Example.com:80").unwrap(), HostPort { host: "example.com".into(), port: 80 });
        assert_eq!(HostPort::parse("[::1]:9000").unwrap().ip(), Some("::1".parse().unwrap()));
        assert_eq!(HostPort::parse("[::1]:9000").unwrap().to_string(), "[::1]:9000");
        assert!(HostPort::parse("example.com").is_err());
        assert!(HostPort::parse("example.com:0").is_err());
        assert!(HostPort::parse(":80").is_err());
    }
}
