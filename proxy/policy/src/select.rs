//! Which policy governs a destination, found through an index on the policies' targets
//! rather than a scan of every policy on every request: listener names and exact service
//! hosts are hash lookups; wildcard services and address ranges, which cannot be hashed, are
//! the only lists scanned. The answer is the scan's: the lowest rank wins (listener, then
//! service, then address), ties go to the first policy in namespace/name order.

use std::collections::HashMap;
use std::sync::Arc;

use crate::compile::{CompiledPolicy, Destination};
use crate::route::HostPattern;

#[derive(Debug, Default)]
pub struct SelectIndex {
    /// Policy positions, ascending, by listener name.
    by_listener: HashMap<String, Vec<usize>>,
    /// By exact service host (lower case).
    by_host: HashMap<String, Vec<usize>>,
    /// Wildcard services, ascending.
    suffixes: Vec<usize>,
    /// Policies with address ranges, ascending.
    addresses: Vec<usize>,
}

impl SelectIndex {
    pub fn build(policies: &[Arc<CompiledPolicy>]) -> SelectIndex {
        let mut index = SelectIndex::default();
        for (i, p) in policies.iter().enumerate() {
            let t = &p.target;
            if let Some(l) = &t.listener {
                index.by_listener.entry(l.clone()).or_default().push(i);
            }
            match &t.service {
                Some(HostPattern::Exact(h)) => index.by_host.entry(h.to_ascii_lowercase()).or_default().push(i),
                Some(HostPattern::Suffix(_)) => index.suffixes.push(i),
                None => {}
            }
            if !t.addresses.is_empty() {
                index.addresses.push(i);
            }
        }
        index
    }

    pub fn select<'p>(
        &self,
        policies: &'p [Arc<CompiledPolicy>],
        dest: &Destination<'_>,
    ) -> Option<&'p Arc<CompiledPolicy>> {
        let eligible = |i: &usize| {
            policies.get(*i).filter(|p| {
                let t = &p.target;
                t.direction == dest.direction && (t.ports.is_empty() || t.ports.contains(&dest.port))
            })
        };
        // Rank 0: the listener.
        if let Some(p) = dest.listener.and_then(|l| self.by_listener.get(l)).and_then(|c| c.iter().find_map(eligible)) {
            return Some(p);
        }
        // Rank 1: the service, exact or wildcard: the first in order among both.
        let mut best: Option<usize> = None;
        let mut consider = |i: usize| {
            if best.is_none_or(|b| i < b) {
                best = Some(i);
            }
        };
        for host in dest.hosts.iter().flatten() {
            let lower;
            let key = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = host.to_ascii_lowercase();
                lower.as_str()
            } else {
                host
            };
            if let Some(i) = self.by_host.get(key).and_then(|c| c.iter().copied().find(|i| eligible(i).is_some())) {
                consider(i);
            }
        }
        let wildcard = self.suffixes.iter().copied().find(|i| {
            eligible(i).is_some_and(|p| {
                p.target.service.as_ref().is_some_and(|s| dest.hosts.iter().flatten().any(|h| s.matches(h)))
            })
        });
        if let Some(i) = wildcard {
            consider(i);
        }
        if let Some(i) = best {
            return policies.get(i);
        }
        // Rank 2: the address.
        let ip = dest.addr?.ip();
        self.addresses.iter().find_map(|i| eligible(i).filter(|p| p.target.addresses.iter().any(|c| c.contains(ip))))
    }
}
