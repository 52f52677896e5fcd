//! An experiment's measurements over every proxy that observes its traffic. Each proxy reports
//! cumulative counts; what happened between two moments is, per proxy, the difference of its
//! last reports before them, summed over proxies. A proxy that begins reporting late counts from
//! zero, and one that restarted (its counts went down) counts from its restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bulwark_policy::experiment::Counts;
use tokio::time::Instant;

/// Per proxy, the cumulative counts at a moment.
pub type Checkpoint = HashMap<String, Counts>;

#[derive(Default)]
struct Series {
    samples: VecDeque<(Instant, Counts)>,
}

pub struct Aggregate {
    series: HashMap<String, Series>,
    /// Samples older than this are dropped (windows reach no further back).
    keep: Duration,
    /// Faults injected, by proxy and kind (cumulative, as the proxies count them).
    pub injected: BTreeMap<String, BTreeMap<String, u64>>,
    /// The first proxy that reported a local breach, and its words.
    pub local_abort: Option<(String, String)>,
}

impl Aggregate {
    pub fn new(keep: Duration) -> Aggregate {
        Aggregate { series: HashMap::new(), keep, injected: BTreeMap::new(), local_abort: None }
    }

    pub fn record(&mut self, proxy: &str, now: Instant, counts: Counts) {
        let s = self.series.entry(proxy.to_string()).or_default();
        s.samples.push_back((now, counts));
        // Keep one sample at or before the oldest moment a window may start from.
        while s.samples.get(1).is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.keep) {
            s.samples.pop_front();
        }
    }

    /// Proxies that reported.
    pub fn proxies(&self) -> Vec<String> {
        let mut p: Vec<String> = self.series.keys().cloned().collect();
        p.sort();
        p
    }

    /// Every proxy's last counts at or before `t`.
    pub fn checkpoint(&self, t: Instant) -> Checkpoint {
        self.series
            .iter()
            .filter_map(|(p, s)| s.samples.iter().rev().find(|(at, _)| *at <= t).map(|(_, c)| (p.clone(), c.clone())))
            .collect()
    }

    /// What happened since `from`, to now.
    pub fn since(&self, from: &Checkpoint) -> Counts {
        let mut total = Counts::default();
        for (p, s) in &self.series {
            let Some((_, last)) = s.samples.back() else { continue };
            total.add(&from.get(p).map_or_else(|| last.clone(), |c| last.since(c)));
        }
        total
    }

    /// What happened between `from` and now.
    pub fn window(&self, from: Instant) -> Counts {
        self.since(&self.checkpoint(from))
    }

    /// What happened between two checkpoints.
    pub fn between(&self, from: &Checkpoint, to: &Checkpoint) -> Counts {
        let mut total = Counts::default();
        for (p, c) in to {
            total.add(&from.get(p).map_or_else(|| c.clone(), |f| c.since(f)));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> Counts {
        Counts { requests, errors, buckets: vec![requests] }
    }

    #[tokio::test(start_paused = true)]
    async fn windows_sum_over_proxies_that_come_late_or_restart() {
        let mut a = Aggregate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        a.record("a", t0, counts(10, 1));
        let cp = a.checkpoint(t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        a.record("a", t1, counts(30, 2));
        a.record("b", t1, counts(5, 5));
        let w = a.since(&cp);
        assert_eq!((w.requests, w.errors), (25, 6), "a's 20 since, and late b's 5 from zero");
        tokio::time::advance(Duration::from_secs(1)).await;
        a.record("a", Instant::now(), counts(3, 0));
        assert_eq!(a.window(t1).requests, 3, "a restarted: its 3; b sent nothing new");
        assert_eq!(a.between(&cp, &a.checkpoint(t1)).requests, 25);
        assert_eq!(a.proxies(), ["a", "b"]);
    }
}
