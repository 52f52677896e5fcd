//! Bulkhead: at most `maxConcurrent` requests of a route are in flight upstream (retries
//! included, since the slot is held for the whole retry loop). Up to `maxQueued` more wait for
//! a slot, each at most `queueTimeout`; beyond that a request is refused at once
//! (`bulkhead-full`). Each route has its own bulkhead, so a slow route cannot take another's
//! slots. With priority classes, each class's reserve of the slots is kept from the classes
//! below it, and a freed slot goes to the highest class waiting (`admission`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::admission::{Admission, Full, Gauges, Permit, Reserves};

use bulwark_policy::BulkheadPolicy;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::Refusal;
use crate::reason::Reason;
use crate::telemetry::metrics::StageLabels;
use crate::telemetry::record::Record;
use crate::telemetry::route_family::RouteFamily;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadFull;

/// The bulkhead families, by route.
#[derive(Clone)]
pub struct BulkheadFamilies {
    in_flight: RouteFamily<StageLabels, Gauge>,
    queued: RouteFamily<StageLabels, Gauge>,
    rejected: RouteFamily<StageLabels, Counter>,
}

impl BulkheadFamilies {
    pub fn register(r: &mut Registry) -> BulkheadFamilies {
        BulkheadFamilies {
            in_flight: RouteFamily::register(r, "bulkhead_in_flight", "Requests holding a bulkhead slot"),
            queued: RouteFamily::register(r, "bulkhead_queued", "Requests waiting for a bulkhead slot"),
            rejected: RouteFamily::register(
                r,
                "bulkhead_rejected",
                "Requests refused because the bulkhead and its queue were full",
            ),
        }
    }

    pub fn route(&self, labels: &StageLabels) -> BulkheadMetrics {
        BulkheadMetrics {
            in_flight: self.in_flight.handle(&labels.policy, &labels.route, labels),
            queued: self.queued.handle(&labels.policy, &labels.route, labels),
            rejected: self.rejected.handle(&labels.policy, &labels.route, labels),
        }
    }

    pub fn forget(&self, policy: &str, route: &str) {
        self.in_flight.forget(policy, route);
        self.queued.forget(policy, route);
        self.rejected.forget(policy, route);
    }
}

/// One route's bulkhead metrics.
#[derive(Clone, Default)]
pub struct BulkheadMetrics {
    in_flight: Gauge,
    queued: Gauge,
    rejected: Counter,
}

pub struct Bulkhead {
    policy: BulkheadPolicy,
    slots: Arc<Admission>,
    /// Dry-run: requests past the slots, standing for the queue they would have waited in.
    overflow: Arc<AtomicU32>,
    metrics: BulkheadMetrics,
}

/// A held slot, counted in the in-flight gauge; dropping it frees the slot. In dry-run, a
/// request past the slots holds a place of the queue it would have waited in instead.
pub struct Slot {
    permit: Option<Permit>,
    overflow: Option<Arc<AtomicU32>>,
}

impl Slot {
    /// Its class's reserve refused it, or would have (a priority in dry-run).
    pub fn would_shed(&self) -> bool {
        self.permit.as_ref().is_some_and(|p| p.would_shed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(q) = &self.overflow {
            q.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The stage: a slot for the request's priority class, held until its response headers are
/// sent, or `bulkhead-full`. The time spent waiting goes into the record.
pub async fn enter(bulkhead: Option<&Bulkhead>, class: usize, rec: &mut Record) -> Result<Option<Slot>, Refusal> {
    let Some(b) = bulkhead else { return Ok(None) };
    if b.dry_run() {
        return b.acquire_without_waiting(class).map(Some).map_err(|BulkheadFull| Reason::BulkheadFull.into());
    }
    let waited = Instant::now();
    let acquired = b.acquire(class).await;
    rec.bulkhead_wait = Some(waited.elapsed());
    match acquired {
        Ok(slot) => Ok(Some(slot)),
        Err(BulkheadFull) => {
            b.metrics.rejected.inc();
            Err(Reason::BulkheadFull.into())
        }
    }
}

impl Bulkhead {
    pub fn new(policy: BulkheadPolicy, reserves: Reserves, metrics: BulkheadMetrics) -> Bulkhead {
        let gauges = Gauges { in_flight: metrics.in_flight.clone(), queued: metrics.queued.clone() };
        Bulkhead {
            slots: Admission::new(policy.max_concurrent, policy.max_queued, reserves, gauges),
            policy,
            overflow: Arc::new(AtomicU32::new(0)),
            metrics,
        }
    }

    /// Refuses nothing and never waits: the caller lets what it would refuse pass.
    pub fn dry_run(&self) -> bool {
        self.policy.dry_run
    }

    /// Dry-run: a free slot if there is one, else a place among the `maxQueued` requests that
    /// would have waited (without waiting), else what would have been refused.
    pub fn acquire_without_waiting(&self, class: usize) -> Result<Slot, BulkheadFull> {
        if let Ok(p) = self.slots.try_take(class) {
            return Ok(Slot { permit: Some(p), overflow: None });
        }
        let max = self.policy.max_queued;
        self.overflow
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| (q < max).then_some(q + 1))
            .map_err(|_| BulkheadFull)?;
        Ok(Slot { permit: None, overflow: Some(self.overflow.clone()) })
    }

    pub async fn acquire(&self, class: usize) -> Result<Slot, BulkheadFull> {
        let permit = self.slots.take(class, self.policy.queue_timeout).await.map_err(|Full| BulkheadFull)?;
        Ok(Slot { permit: Some(permit), overflow: None })
    }

    pub fn in_flight(&self) -> u32 {
        self.slots.in_use()
    }

    pub fn queued(&self) -> u32 {
        self.slots.queued()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bulkhead(max: u32, queued: u32, timeout_ms: u64) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(
            BulkheadPolicy {
                dry_run: false,
                max_concurrent: max,
                max_queued: queued,
                queue_timeout: Duration::from_millis(timeout_ms),
            },
            Reserves::default(),
            BulkheadMetrics::default(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn m_run_q_wait_and_the_next_is_refused_at_once() {
        let b = bulkhead(2, 1, 100);
        let s1 = b.acquire(0).await.unwrap();
        let _s2 = b.acquire(0).await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(0).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!((b.in_flight(), b.queued()), (2, 1));
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire(0).await.err(), Some(BulkheadFull), "M+Q+1-th refused");
        assert_eq!(start.elapsed(), Duration::ZERO, "at once");
        drop(s1);
        assert_eq!(waiter.await.unwrap(), Ok(()), "the queued one gets the freed slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_after_the_queue_timeout() {
        let b = bulkhead(1, 5, 100);
        let _s = b.acquire(0).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire(0).await.err(), Some(BulkheadFull));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrency_never_exceeds_the_limit() {
        let b = bulkhead(3, 100, 5_000);
        let peak = Arc::new(AtomicU32::new(0));
        let now = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (b, peak, now) = (b.clone(), peak.clone(), now.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = b.acquire(0).await.unwrap();
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}

#[cfg(test)]
mod cancellation {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_while_queued_gives_its_queue_place_back() {
        let b = Arc::new(Bulkhead::new(
            BulkheadPolicy { dry_run: false, max_concurrent: 1, max_queued: 2, queue_timeout: Duration::from_secs(60) },
            Reserves::default(),
            BulkheadMetrics::default(),
        ));
        let _held = b.acquire(0).await.unwrap();
        for _ in 0..10 {
            let waiter = {
                let b = b.clone();
                tokio::spawn(async move { b.acquire(0).await.map(|_| ()) })
            };
            tokio::task::yield_now().await;
            assert_eq!(b.queued(), 1);
            waiter.abort();
            let _ = waiter.await;
            assert_eq!(b.queued(), 0, "the abandoned queue place is back");
        }
    }
}
