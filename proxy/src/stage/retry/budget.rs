//! Retry budget: retries may be at most `percent` of the requests seen over the last ten
//! seconds, plus `minPerSecond` per second so that low traffic can still retry. When a
//! dependency fails everything, it sees at most that share more traffic, not `attempts` times
//! the traffic (a retry storm). Counts are kept in one-second slices.

use std::sync::Mutex;
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
        let mut slices = self.slices.lock().expect("budget lock");
        let slot = &mut slices[(s % SLICES) as usize];
        if slot.0 != s {
            *slot = (s, 0, 0);
        }
        slot.1 += 1;
    }

    /// Takes one retry from the budget, or says there is none left.
    pub fn withdraw(&self, now: Instant) -> bool {
        let s = self.second(now);
        let mut slices = self.slices.lock().expect("budget lock");
        let (requests, retries) = slices
            .iter()
            .filter(|x| x.0 != u64::MAX && x.0 + SLICES > s)
            .fold((0u64, 0u64), |(r, t), x| (r + u64::from(x.1), t + u64::from(x.2)));
        let allowed = (requests as f64 * self.percent / 100.0) as u64 + u64::from(self.min_per_second) * SLICES;
        if retries >= allowed {
            return false;
        }
        let slot = &mut slices[(s % SLICES) as usize];
        if slot.0 != s {
            *slot = (s, 0, 0);
        }
        slot.2 += 1;
        true
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
        let granted = (0..100).filter(|_| b.withdraw(now)).count();
        assert_eq!(granted, 30);
        // Ten seconds later the old requests and retries are forgotten: only the floor remains.
        tokio::time::advance(WINDOW).await;
        let later = Instant::now();
        assert_eq!((0..100).filter(|_| b.withdraw(later)).count(), 10);
    }
}
