//! Bulkhead: at most `maxConcurrent` requests of a route are in flight upstream (retries
//! included, since the slot is held for the whole retry loop). Up to `maxQueued` more wait for
//! a slot, each at most `queueTimeout`; beyond that a request is refused at once
//! (`bulkhead-full`). Each route has its own bulkhead, so a slow route cannot take another's
//! slots.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bulwark_policy::BulkheadPolicy;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkheadFull;

pub struct Bulkhead {
    policy: BulkheadPolicy,
    slots: Arc<Semaphore>,
    queued: AtomicU32,
    /// Mirrors `queued` for metrics.
    queued_gauge: Gauge,
}

/// A held slot; dropping it frees the slot.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Bulkhead {
    pub fn new(policy: BulkheadPolicy, queued_gauge: Gauge) -> Bulkhead {
        Bulkhead {
            slots: Arc::new(Semaphore::new(policy.max_concurrent as usize)),
            policy,
            queued: AtomicU32::new(0),
            queued_gauge,
        }
    }

    pub async fn acquire(&self) -> Result<Slot, BulkheadFull> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot(p));
        }
        // Take a queue place only if one is free; never more than maxQueued waiters.
        let took = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| (q < self.policy.max_queued).then_some(q + 1))
            .is_ok();
        if !took {
            return Err(BulkheadFull);
        }
        self.queued_gauge.inc();
        let waited = tokio::time::timeout(self.policy.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.queued_gauge.dec();
        match waited {
            Ok(Ok(p)) => Ok(Slot(p)),
            _ => Err(BulkheadFull),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.policy.max_concurrent - self.slots.available_permits() as u32
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bulkhead(max: u32, queued: u32, timeout_ms: u64) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(
            BulkheadPolicy {
                max_concurrent: max,
                max_queued: queued,
                queue_timeout: Duration::from_millis(timeout_ms),
            },
            Gauge::default(),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn m_run_q_wait_and_the_next_is_refused_at_once() {
        let b = bulkhead(2, 1, 100);
        let s1 = b.acquire().await.unwrap();
        let _s2 = b.acquire().await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!((b.in_flight(), b.queued()), (2, 1));
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.err(), Some(BulkheadFull), "M+Q+1-th refused");
        assert_eq!(start.elapsed(), Duration::ZERO, "at once");
        drop(s1);
        assert_eq!(waiter.await.unwrap(), Ok(()), "the queued one gets the freed slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gives_up_after_the_queue_timeout() {
        let b = bulkhead(1, 5, 100);
        let _s = b.acquire().await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.err(), Some(BulkheadFull));
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
                let _slot = b.acquire().await.unwrap();
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
