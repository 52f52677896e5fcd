//! Upstream addresses for explicit listeners. An IP literal is used as is; a host name is
//! resolved at start and re-resolved every `refresh`, so an upstream that moves is followed
//! without a restart. A failed re-resolution keeps the last good answer (static stability).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

pub use bulwark_policy::hostport::HostPort;

/// The addresses `target` resolves to now, each once, in the resolver's order.
pub async fn lookup(target: &HostPort) -> io::Result<Vec<SocketAddr>> {
    let mut found: Vec<SocketAddr> = Vec::new();
    for a in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
        if !found.contains(&a) {
            found.push(a);
        }
    }
    Ok(found)
}

/// The addresses of one or more `host:port` upstreams; the endpoint set is their union.
pub struct Resolver {
    pub targets: Vec<HostPort>,
    /// Last good answer per target, so one failing name does not drop the others.
    per_target: Vec<ArcSwap<Vec<SocketAddr>>>,
    all: ArcSwap<Vec<SocketAddr>>,
}

impl Resolver {
    pub fn new(targets: Vec<HostPort>) -> Resolver {
        assert!(!targets.is_empty(), "an upstream has at least one target");
        let per_target: Vec<ArcSwap<Vec<SocketAddr>>> = targets
            .iter()
            .map(|t| ArcSwap::from_pointee(t.ip().map(|ip| vec![SocketAddr::new(ip, t.port)]).unwrap_or_default()))
            .collect();
        let r = Resolver { targets, per_target, all: ArcSwap::from_pointee(Vec::new()) };
        r.merge();
        r
    }

    /// The first target: its host and port are what policy selection matches.
    pub fn primary(&self) -> &HostPort {
        &self.targets[0]
    }

    /// Current addresses; resolves now if nothing is known yet.
    pub async fn addrs(&self) -> io::Result<Arc<Vec<SocketAddr>>> {
        let current = self.all.load_full();
        if !current.is_empty() {
            return Ok(current);
        }
        self.refresh().await
    }

    fn merge(&self) {
        let mut all: Vec<SocketAddr> =
            self.per_target.iter().flat_map(|a| a.load().iter().copied().collect::<Vec<_>>()).collect();
        all.dedup();
        self.all.store(Arc::new(all));
    }

    pub async fn refresh(&self) -> io::Result<Arc<Vec<SocketAddr>>> {
        let mut last_error = None;
        for (t, slot) in self.targets.iter().zip(&self.per_target) {
            if t.ip().is_some() {
                continue;
            }
            match lookup(t).await {
                Ok(found) => {
                    if found.is_empty() {
                        continue;
                    }
                    if **slot.load() != found {
                        tracing::info!(upstream = %t, addrs = ?found, "upstream addresses changed");
                    }
                    slot.store(Arc::new(found));
                }
                Err(e) => {
                    tracing::warn!(upstream = %t, error = %e, "re-resolution failed; keeping the last addresses");
                    last_error = Some(e);
                }
            }
        }
        self.merge();
        let all = self.all.load_full();
        match (all.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(io::Error::new(io::ErrorKind::NotFound, "upstream resolved to no address")),
            _ => Ok(all),
        }
    }

    /// Re-resolves every `every` until `stop`; nothing to do when every target is an IP.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        if self.targets.iter().all(|t| t.ip().is_some()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let _ = this.refresh().await;
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

    #[tokio::test]
    async fn resolves_names_and_keeps_literals() {
        let lit = Resolver::new(vec![HostPort::parse("127.0.0.1:9").unwrap()]);
        assert_eq!(*lit.addrs().await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let named = Resolver::new(vec![HostPort::parse("localhost:9").unwrap()]);
        assert!(named.addrs().await.unwrap().iter().all(|a| a.ip().is_loopback()));
        let both =
            Resolver::new(vec![HostPort::parse("127.0.0.1:1").unwrap(), HostPort::parse("127.0.0.2:2").unwrap()]);
        assert_eq!(both.addrs().await.unwrap().len(), 2, "the endpoint set is the union");
    }
}
