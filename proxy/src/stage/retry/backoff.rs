//! Full-jitter exponential backoff: before retry `n` (0 for the first), wait a uniformly random
//! time in `[0, min(max, base × 2^n))`. Jitter spreads the retries of many clients so they do
//! not arrive together. An upstream's `Retry-After` replaces the draw when it is within `max`.

use std::time::Duration;

use bulwark_policy::RetryPolicy;

/// `unit` is a uniform draw in [0, 1), passed in so tests can fix it.
pub fn delay(policy: &RetryPolicy, retry: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    if let Some(ra) = retry_after {
        if ra <= policy.backoff_max {
            return ra;
        }
    }
    let cap =
        policy.backoff_base.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX)).min(policy.backoff_max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on: vec![],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_percent: 20.0,
            budget_min_per_second: 10,
            max_buffered_bytes: 1024,
        }
    }

    #[test]
    fn grows_exponentially_up_to_the_max_with_full_jitter() {
        let p = policy();
        let ms = Duration::from_millis;
        assert_eq!(delay(&p, 0, None, 0.999_999_9).as_millis(), 24);
        assert_eq!(delay(&p, 1, None, 0.5), ms(25));
        assert_eq!(delay(&p, 2, None, 0.5), ms(50));
        assert_eq!(delay(&p, 10, None, 0.5), ms(125), "capped at max");
        assert_eq!(delay(&p, 3, None, 0.0), Duration::ZERO, "full jitter reaches zero");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_max() {
        let p = policy();
        assert_eq!(delay(&p, 0, Some(Duration::from_millis(200)), 0.1), Duration::from_millis(200));
        // Longer than max: the normal draw, not the upstream's wish.
        assert_eq!(delay(&p, 0, Some(Duration::from_secs(30)), 0.5), Duration::from_micros(12_500));
    }
}
