//! Rapid Reset (CVE-2023-44487) and its kin: a client that opens HTTP/2 streams and resets
//! them before their answer makes the proxy start work (a route, an upstream request) that
//! nobody will read, at no cost to itself. The h2 library bounds resets of streams not yet
//! handed to the proxy; this counts the ones that were: once a connection has opened
//! `MIN_STREAMS` streams and the client reset at least half of them before their response,
//! it is told to go away (GOAWAY) and its streams in flight finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Below this many streams a connection is never judged: cancelling a few requests is normal.
pub const MIN_STREAMS: u64 = 200;

#[derive(Default)]
pub struct Resets {
    opened: AtomicU64,
    premature: AtomicU64,
    flood: CancellationToken,
}

/// One stream's request; dropped before `answered`, the client reset it (or left).
pub struct Opened {
    resets: Arc<Resets>,
    answered: bool,
}

impl Resets {
    pub fn open(self: &Arc<Self>) -> Opened {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Opened { resets: self.clone(), answered: false }
    }

    /// Completes when the connection has been judged a reset flood.
    pub fn flood(&self) -> WaitForCancellationFuture<'_> {
        self.flood.cancelled()
    }

    pub fn is_flood(&self) -> bool {
        self.flood.is_cancelled()
    }
}

impl Opened {
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let r = &self.resets;
        let premature = r.premature.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let opened = r.opened.load(Ordering::Relaxed);
        if opened >= MIN_STREAMS && premature.saturating_mul(2) >= opened {
            r.flood.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_streams_reset_before_their_answer_is_a_flood_and_few_are_not() {
        let resets = Arc::new(Resets::default());
        for i in 0..MIN_STREAMS * 2 {
            let s = resets.open();
            if i % 3 == 0 {
                drop(s); // a third cancelled: a client changing its mind
            } else {
                s.answered();
            }
        }
        assert!(!resets.is_flood());
        for _ in 0..MIN_STREAMS * 2 {
            drop(resets.open());
        }
        assert!(resets.is_flood(), "most streams reset before their answer");
    }
}
