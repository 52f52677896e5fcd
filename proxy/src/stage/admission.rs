//! Slots by priority class: at most `limit` requests hold a slot at once, and up to `maxQueued`
//! more wait for one. Each class may keep a share of the slots (its reserve) that no lower
//! class can take: a request of class `c` is admitted only while the free slots, after it,
//! still cover the unused reserves of every class above `c`. A higher class takes anything
//! free. A freed slot goes to the highest class waiting, first come first served within a
//! class. Without classes this is a plain counting limit with a FIFO queue.
//!
//! The bulkhead (a fixed limit) and the adaptive limit (one that moves) are both this.
//! Everything a request holds here (its slot, its queue place, a slot granted to it while it
//! was leaving) is given back by a guard's `Drop`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// The gauges kept exact under the pool's lock.
#[derive(Clone, Default)]
pub struct Gauges {
    pub in_flight: Gauge,
    pub queued: Gauge,
}

/// What a route's priority classes keep of a stage's capacity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reserves {
    /// Percent of the capacity each class keeps from the classes below it, in class order
    /// (empty: no classes).
    pub percent: Vec<f64>,
    /// The priority is in dry-run: reserves are judged, not applied, and the queue is one FIFO.
    pub judge_only: bool,
}

impl Reserves {
    /// Percent of the capacity that `class` must leave to the classes above it.
    pub fn kept_above(&self, class: usize) -> f64 {
        self.percent.iter().take(class).sum()
    }
}

pub struct Admission {
    state: Mutex<State>,
    reserves: Reserves,
    max_queued: u32,
    gauges: Gauges,
}

struct State {
    limit: u32,
    in_use: u32,
    by_class: Vec<u32>,
    /// Per class (one queue in dry-run): waiter id, its class, where to say it got a slot.
    queues: Vec<VecDeque<(u64, usize, oneshot::Sender<bool>)>>,
    queued: u32,
    next_id: u64,
}

/// A held slot; dropping it frees the slot for the highest class waiting.
pub struct Permit {
    pool: Arc<Admission>,
    class: usize,
    /// The class's reserves refused it, or in dry-run would have.
    pub would_shed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.release(self.class);
    }
}

/// A place in the queue. Dropped unserved, it leaves the queue; dropped after a slot was
/// granted to it but before it was taken, it gives the slot back.
struct Waiting<'a> {
    pool: &'a Arc<Admission>,
    class: usize,
    id: u64,
    taken: bool,
    /// Owned here so that it outlives `Drop::drop`: a grant made while the place is being
    /// dropped still finds its receiver, and the place knows to give that slot back.
    granted: oneshot::Receiver<bool>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut st = self.pool.state.lock();
        let queue = st.queues.get_mut(self.pool.queue_of(self.class));
        if let Some(at) = queue.as_ref().and_then(|q| q.iter().position(|(id, _, _)| *id == self.id)) {
            queue.and_then(|q| q.remove(at));
            st.queued = st.queued.saturating_sub(1);
            self.pool.publish(&st);
        } else {
            // Granted while leaving: the slot is ours to give back.
            self.pool.release_locked(&mut st, self.class);
        }
    }
}

impl Admission {
    pub fn new(limit: u32, max_queued: u32, reserves: Reserves, gauges: Gauges) -> Arc<Admission> {
        let classes = reserves.percent.len().max(1);
        Arc::new(Admission {
            state: Mutex::new(State {
                limit,
                in_use: 0,
                by_class: vec![0; classes],
                queues: (0..classes).map(|_| VecDeque::new()).collect(),
                queued: 0,
                next_id: 0,
            }),
            reserves,
            max_queued,
            gauges,
        })
    }

    fn queue_of(&self, class: usize) -> usize {
        if self.reserves.judge_only {
            0
        } else {
            class
        }
    }

    fn class_of(&self, class: usize) -> usize {
        class.min(self.reserves.percent.len().saturating_sub(1))
    }

    /// Slots the classes above `class` keep and are not using.
    fn kept_above(&self, st: &State, class: usize) -> u32 {
        let limit = f64::from(st.limit);
        self.reserves
            .percent
            .iter()
            .zip(&st.by_class)
            .take(class)
            .map(|(pct, used)| ((limit * pct / 100.0).ceil() as u32).saturating_sub(*used))
            .fold(0u32, u32::saturating_add)
    }

    fn fits(&self, st: &State, class: usize, reserves: bool) -> bool {
        st.in_use < st.limit && (!reserves || st.limit - st.in_use > self.kept_above(st, class))
    }

    fn admits(&self, st: &State, class: usize) -> bool {
        self.fits(st, class, !self.reserves.judge_only)
    }

    /// Takes a slot `admits` allowed, telling whether the reserves refuse it (dry-run).
    fn admit_locked(self: &Arc<Self>, st: &mut State, class: usize) -> Permit {
        let would_shed = self.reserves.judge_only && !self.fits(st, class, true);
        self.take_locked(st, class);
        self.publish(st);
        Permit { pool: self.clone(), class, would_shed }
    }

    fn take_locked(&self, st: &mut State, class: usize) {
        st.in_use += 1;
        if let Some(n) = st.by_class.get_mut(class) {
            *n += 1;
        }
    }

    fn publish(&self, st: &State) {
        self.gauges.in_flight.set(i64::from(st.in_use));
        self.gauges.queued.set(i64::from(st.queued));
    }

    /// A slot now, or `Full`.
    pub fn try_take(self: &Arc<Self>, class: usize) -> Result<Permit, Full> {
        let class = self.class_of(class);
        let mut st = self.state.lock();
        if !self.admits(&st, class) {
            return Err(Full);
        }
        Ok(self.admit_locked(&mut st, class))
    }

    /// A slot now, or after waiting in the queue at most `wait`, or `Full` (queue full, or the
    /// wait ran out).
    pub async fn take(self: &Arc<Self>, class: usize, wait: Duration) -> Result<Permit, Full> {
        let class = self.class_of(class);
        let mut place = {
            let mut st = self.state.lock();
            if self.admits(&st, class) {
                return Ok(self.admit_locked(&mut st, class));
            }
            if st.queued >= self.max_queued {
                return Err(Full);
            }
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(1);
            let (tx, rx) = oneshot::channel();
            if let Some(q) = st.queues.get_mut(self.queue_of(class)) {
                q.push_back((id, class, tx));
            }
            st.queued += 1;
            self.publish(&st);
            Waiting { pool: self, class, id, taken: false, granted: rx }
        };
        match tokio::time::timeout(wait, &mut place.granted).await {
            Ok(Ok(shed)) => {
                place.taken = true;
                Ok(Permit { pool: self.clone(), class, would_shed: shed })
            }
            // Out of time (the place's Drop leaves the queue or gives back a late grant).
            _ => Err(Full),
        }
    }

    /// Moves the limit; waiters the new limit admits are served at once.
    pub fn set_limit(&self, limit: u32) {
        let mut st = self.state.lock();
        st.limit = limit;
        self.grant(&mut st);
        self.publish(&st);
    }

    fn release(&self, class: usize) {
        let mut st = self.state.lock();
        self.release_locked(&mut st, class);
    }

    fn release_locked(&self, st: &mut State, class: usize) {
        st.in_use = st.in_use.saturating_sub(1);
        if let Some(n) = st.by_class.get_mut(class) {
            *n = n.saturating_sub(1);
        }
        self.grant(st);
        self.publish(st);
    }

    /// Serves waiters, highest class first, while the limit admits them. A class that is not
    /// admitted means no lower class is either (what they must leave free only grows).
    fn grant(&self, st: &mut State) {
        for queue in 0..st.queues.len() {
            while let Some(&(_, class, _)) = st.queues.get(queue).and_then(VecDeque::front) {
                if !self.admits(st, class) {
                    return;
                }
                let Some((_, _, tx)) = st.queues.get_mut(queue).and_then(VecDeque::pop_front) else { break };
                st.queued = st.queued.saturating_sub(1);
                let would_shed = self.reserves.judge_only && !self.fits(st, class, true);
                // A waiter drops its place (under this lock) before its receiver, so the send
                // finds it; the slot is its from here.
                if tx.send(would_shed).is_ok() {
                    self.take_locked(st, class);
                }
            }
        }
    }

    pub fn in_use(&self) -> u32 {
        self.state.lock().in_use
    }

    pub fn queued(&self) -> u32 {
        self.state.lock().queued
    }

    pub fn limit(&self) -> u32 {
        self.state.lock().limit
    }

    /// Slots held by `class`.
    pub fn held_by(&self, class: usize) -> u32 {
        self.state.lock().by_class.get(class).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(limit: u32, queued: u32, reserves: &[f64]) -> Arc<Admission> {
        Admission::new(limit, queued, Reserves { percent: reserves.to_vec(), judge_only: false }, Gauges::default())
    }

    #[test]
    fn a_lower_class_cannot_take_what_a_higher_one_keeps_and_the_reverse_holds() {
        // 10 slots; critical keeps 4, standard keeps 2, best-effort keeps nothing.
        let p = pool(10, 0, &[40.0, 20.0, 0.0]);
        let best: Vec<_> = std::iter::from_fn(|| p.try_take(2).ok()).collect();
        assert_eq!(best.len(), 4, "best-effort stops where critical's 4 and standard's 2 begin");
        let standard: Vec<_> = std::iter::from_fn(|| p.try_take(1).ok()).collect();
        assert_eq!(standard.len(), 2, "standard takes its own 2, not critical's");
        let critical: Vec<_> = std::iter::from_fn(|| p.try_take(0).ok()).collect();
        assert_eq!(critical.len(), 4);
        drop((best, standard, critical));
        let critical: Vec<_> = std::iter::from_fn(|| p.try_take(0).ok()).collect();
        assert_eq!(critical.len(), 10, "a higher class takes what the lower ones are not using");
        drop(critical);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn in_dry_run_reserves_are_judged_not_applied() {
        let p = Admission::new(10, 0, Reserves { percent: vec![40.0, 0.0], judge_only: true }, Gauges::default());
        let low: Vec<_> = std::iter::from_fn(|| p.try_take(1).ok()).collect();
        assert_eq!(low.len(), 10, "nothing kept back");
        assert_eq!(low.iter().filter(|p| p.would_shed).count(), 4, "the 4 that critical keeps would have been refused");
    }

    #[test]
    fn held_reserve_counts_as_used_so_lower_classes_get_the_rest() {
        let p = pool(10, 0, &[40.0, 0.0]);
        let _c: Vec<_> = (0..4).map(|_| p.try_take(0).unwrap()).collect();
        let low: Vec<_> = std::iter::from_fn(|| p.try_take(1).ok()).collect();
        assert_eq!(low.len(), 6, "critical uses its reserve: the other 6 are free for all");
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_the_highest_class_waiting() {
        let p = pool(1, 10, &[0.0, 0.0, 0.0]);
        let held = p.try_take(0).unwrap();
        let mut waiters = Vec::new();
        for class in [2, 1, 2, 0] {
            let p = p.clone();
            waiters.push(tokio::spawn(async move {
                let permit = p.take(class, Duration::from_secs(60)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
                (class, tokio::time::Instant::now())
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(p.queued(), 4);
        drop(held);
        let mut served = Vec::new();
        for w in waiters {
            served.push(w.await.unwrap());
        }
        served.sort_by_key(|(_, at)| *at);
        assert_eq!(served.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [0, 1, 2, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_or_times_out_gives_everything_back() {
        let p = pool(1, 2, &[]);
        let held = p.try_take(0).unwrap();
        assert_eq!(p.take(0, Duration::from_millis(50)).await.err(), Some(Full));
        assert_eq!(p.queued(), 0, "timed out: out of the queue");
        let w = {
            let p = p.clone();
            tokio::spawn(async move { p.take(0, Duration::from_secs(60)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        assert_eq!(p.queued(), 1);
        w.abort();
        let _ = w.await;
        assert_eq!(p.queued(), 0, "abandoned: out of the queue");
        drop(held);
        assert_eq!(p.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_granted_to_a_waiter_that_is_leaving_is_given_back() {
        let p = pool(1, 1, &[]);
        let held = p.try_take(0).unwrap();
        let taking = p.take(0, Duration::from_secs(60));
        let mut taking = Box::pin(taking);
        assert!(futures_poll_once(&mut taking).await.is_none(), "queued");
        drop(held); // granted to the queued one...
        drop(taking); // ...which leaves before it looks
        assert_eq!((p.in_use(), p.queued()), (0, 0));
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn a_raised_limit_serves_the_queue_and_a_lowered_one_admits_nobody_new() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let p = pool(1, 5, &[]);
            let _held = p.try_take(0).unwrap();
            let w = {
                let p = p.clone();
                tokio::spawn(async move { p.take(0, Duration::from_secs(5)).await.map(drop) })
            };
            tokio::task::yield_now().await;
            p.set_limit(2);
            assert_eq!(w.await.unwrap(), Ok(()));
            p.set_limit(1);
            assert_eq!(p.try_take(0).err(), Some(Full), "one held, limit one");
        });
    }
}
