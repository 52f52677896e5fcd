//! The edge under attack: what hostile or broken clients send, each case measured against a
//! legitimate client running alongside (its success rate is what "costs nobody anything"
//! means) and against what the upstream received, byte for byte.

mod admin;
mod descriptors;
mod detection;
mod h2_floods;
mod h2_isolation;
mod half_close;
mod idle;
mod signals;
mod slow_readers;
mod smuggling;

use bulwark_e2e::legit::{Legit, Tally};
use bulwark_e2e::proxy::{ProxyBuilder, ProxyProcess};
use bulwark_e2e::raw::RawUpstream;
use bulwark_e2e::upstream::Upstream;

/// A proxy with listener `web` in front of a recording raw upstream (with `policy` on it) and
/// listener `legit` in front of an ordinary upstream, for the legitimate client.
pub struct Edge {
    pub raw: RawUpstream,
    pub proxy: ProxyProcess,
    _legit_upstream: Upstream,
}

impl Edge {
    pub async fn start(policy: &str, extra: &str) -> Edge {
        let raw = RawUpstream::start().await;
        let legit_upstream = Upstream::start().await;
        let proxy = ProxyBuilder::new()
            .listener("web", raw.addr)
            .listener("legit", legit_upstream.addr)
            .policies(&crate::web_policy(policy))
            .extra(extra)
            .start()
            .await;
        Edge { raw, proxy, _legit_upstream: legit_upstream }
    }

    pub fn web(&self) -> std::net::SocketAddr {
        self.proxy.listener("web")
    }

    pub fn legit(&self) -> Legit {
        Legit::start(self.proxy.listener("legit"), "/")
    }

    /// From now until `Watch::end`: the legitimate client runs and the proxy's costs are
    /// measured.
    pub fn watch(&self) -> Watch {
        Watch { legit: self.legit(), meter: bulwark_e2e::legit::Meter::start(self.proxy.child.id()) }
    }
}

/// What an attack is measured by: a legitimate client alongside, and the proxy's memory and
/// CPU.
pub struct Watch {
    legit: Legit,
    meter: bulwark_e2e::legit::Meter,
}

impl Watch {
    /// Reports and bounds what attack `what` cost, and requires the legitimate client unharmed.
    pub async fn end(self, what: &str) {
        self.meter.report(what);
        assert_unharmed(self.legit.finish().await);
    }
}

/// The legitimate client must not have lost a single request.
pub fn assert_unharmed(t: Tally) {
    assert!(t.sent >= 5, "the legitimate client barely ran: {t:?}");
    assert_eq!(t.ok, t.sent, "the legitimate client lost requests: {t:?}");
}
