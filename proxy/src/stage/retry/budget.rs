//! Retry budget: retries may be at most `percent` of the requests seen over the last ten
//! seconds, plus `minPerSecond` per second so that low traffic can still retry. When a
//! dependency fails everything, it sees at most that share more traffic, not `attempts` times
//! the traffic (a retry storm). Counts are kept in one-second slices.

use parking_lot::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const SLICES: u64 = 10;

pub struct RetryBudget {
    percent: f64,
    min_per_second: u32,
    start: Instant,
    /// (second, requests, retries) per slice.
    slices: Mutex<[(u64, u32, u32); SLICES as usize]>,
}

impl RetryBudget {
    pub fn new(percent: f64, min_per_second: u32, now: Instant) -> RetryBudget {
        RetryBudget { percent, min_per_second, start: now, slices: Mutex::new([(u64::MAX, 0, 0); SLICES as usize]) }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// Counts a request (each request once, not each try).
    pub fn deposit(&self, now: Instant) {
        let s = self.second(now);
        let mut slices = self.slices.lock();
        let slot = &mut slices[(s % SLICES) as usize];
        if slot.0 != s {
            *slot = (s, 0, 0);
        }
        slot.1 += 1;
    }

    /// Takes one retry from the budget, or says there is none left. The retry counts from
    /// now on; if it is never sent (the request was cancelled during backoff), dropping the
    /// withdrawal unspent gives it back.
    pub fn withdraw(&self, now: Instant) -> Option<Withdrawal<'_>> {
        let s = self.second(now);
        let mut slices = self.slices.lock();
        let (requests, retries) = window(&slices, s);
        let allowed = (requests as f64 * self.percent / 100.0) as u64 + u64::from(self.min_per_second) * SLICES;
        if retries >= allowed {
            return None;
        }
        let slot = &mut slices[(s % SLICES) as usize];
        if slot.0 != s {
            *slot = (s, 0, 0);
        }
        slot.2 = slot.2.saturating_add(1);
        Some(Withdrawal { budget: self, second: s, spent: false })
    }

    /// Retries counted over the window ending at `now`.
    pub fn retries(&self, now: Instant) -> u64 {
        window(&self.slices.lock(), self.second(now)).1
    }
}

/// (requests, retries) over the slices still inside the window at second `s`.
fn window(slices: &[(u64, u32, u32); SLICES as usize], s: u64) -> (u64, u64) {
    slices
        .iter()
        .filter(|x| x.0 != u64::MAX && x.0 + SLICES > s)
        .fold((0u64, 0u64), |(r, t), x| (r + u64::from(x.1), t + u64::from(x.2)))
}

/// A retry taken from the budget, returned when dropped unless it was sent.
pub struct Withdrawal<'a> {
    budget: &'a RetryBudget,
    second: u64,
    spent: bool,
}

impl Withdrawal<'_> {
    /// The retry was sent: it stays counted.
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        let mut slices = self.budget.slices.lock();
        let slot = &mut slices[(self.second % SLICES) as usize];
        // A slice already reused for a later second has forgotten this retry by itself.
        if slot.0 == self.second {
            slot.2 = slot.2.saturating_sub(1);
        }
    }
}

/// How long the budget looks back.
pub const WINDOW: Duration = Duration::from_secs(SLICES);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let now = Instant::now();
        let b = RetryBudget::new(20.0, 1, now);
        for _ in 0..100 {
            b.deposit(now);
        }
        // 20% of 100 + 1/s × 10 s = 30.
        let granted = (0..100).filter_map(|_| b.withdraw(now).map(Withdrawal::spend)).count();
        assert_eq!(granted, 30);
        // Ten seconds later the old requests and retries are forgotten: only the floor remains.
        tokio::time::advance(WINDOW).await;
        let later = Instant::now();
        assert_eq!((0..100).filter_map(|_| b.withdraw(later).map(Withdrawal::spend)).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsent_retry_goes_back_into_the_budget() {
        let now = Instant::now();
        let b = RetryBudget::new(0.0, 1, now);
        let w = b.withdraw(now).expect("the floor allows one");
        assert_eq!(b.retries(now), 1);
        drop(w);
        assert_eq!(b.retries(now), 0, "given back");
        b.withdraw(now).unwrap().spend();
        assert_eq!(b.retries(now), 1, "a sent retry stays counted");
    }
}
