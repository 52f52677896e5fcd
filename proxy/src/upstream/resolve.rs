//! Upstream addresses for explicit listeners. An IP literal is used as is; a host name is
//! resolved at start and re-resolved every `refresh`, so an upstream that moves is followed
//! without a restart. A failed re-resolution keeps the last good answer (static stability).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// `host:port` as written in config; IPv6 literals in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: port must be 1-65535"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{text:?}: host is empty"));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
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

pub struct Resolver {
    pub target: HostPort,
    addrs: ArcSwap<Vec<SocketAddr>>,
}

impl Resolver {
    pub fn new(target: HostPort) -> Resolver {
        let initial = target
            .ip()
            .map(|ip| vec![SocketAddr::new(ip, target.port)])
            .unwrap_or_default();
        Resolver {
            target,
            addrs: ArcSwap::from_pointee(initial),
        }
    }

    /// Current addresses; resolves now if nothing is known yet.
    pub async fn addrs(&self) -> io::Result<Arc<Vec<SocketAddr>>> {
        let current = self.addrs.load_full();
        if !current.is_empty() {
            return Ok(current);
        }
        self.refresh().await
    }

    async fn refresh(&self) -> io::Result<Arc<Vec<SocketAddr>>> {
        let found: Vec<SocketAddr> =
            tokio::net::lookup_host((self.target.host.as_str(), self.target.port))
                .await?
                .collect();
        if found.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolved to no address", self.target),
            ));
        }
        let found = Arc::new(found);
        if **self.addrs.load() != *found {
            tracing::info!(upstream = %self.target, addrs = ?found, "upstream addresses changed");
        }
        self.addrs.store(found.clone());
        Ok(found)
    }

    /// Re-resolves every `every` until `stop`; nothing to do for IP literals.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        if self.target.ip().is_some() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.refresh().await {
                    tracing::warn!(upstream = %this.target, error = %e, "re-resolution failed; keeping the last addresses");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_forms() {
        assert_eq!(
            HostPort::parse("Example.com:80").unwrap(),
            HostPort {
                host: "example.com".into(),
                port: 80
            }
        );
        assert_eq!(
            HostPort::parse("[::1]:9000").unwrap().ip(),
            Some("::1".parse().unwrap())
        );
        assert_eq!(
            HostPort::parse("[::1]:9000").unwrap().to_string(),
            "[::1]:9000"
        );
        assert!(HostPort::parse("example.com").is_err());
        assert!(HostPort::parse("example.com:0").is_err());
        assert!(HostPort::parse(":80").is_err());
    }

    #[tokio::test]
    async fn resolves_names_and_keeps_literals() {
        let lit = Resolver::new(HostPort::parse("127.0.0.1:9").unwrap());
        assert_eq!(
            *lit.addrs().await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let named = Resolver::new(HostPort::parse("localhost:9").unwrap());
        assert!(named
            .addrs()
            .await
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }
}
