//! Connections that have not sent a byte yet, oldest first. A listener at its connection cap
//! sheds the oldest of them for a new client instead of refusing the newcomer, so a flood of
//! connections that never speak cannot lock out clients that do.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Idle {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<u64, CancellationToken>,
}

/// One connection's place among the idle; leaving the set (its first bytes came, or it ended)
/// is the guard's drop.
pub struct Waiting {
    idle: Arc<Idle>,
    id: u64,
    /// Cancelled when this connection is shed.
    pub shed: CancellationToken,
}

impl Idle {
    pub fn enter(self: &Arc<Self>) -> Waiting {
        let shed = CancellationToken::new();
        let mut inner = self.inner.lock();
        let id = inner.next;
        inner.next = inner.next.wrapping_add(1);
        inner.waiting.insert(id, shed.clone());
        Waiting { idle: self.clone(), id, shed }
    }

    /// Sheds the connection idle the longest; false when none is idle.
    pub fn shed_oldest(&self) -> bool {
        let oldest = self.inner.lock().waiting.pop_first();
        oldest.map(|(_, shed)| shed.cancel()).is_some()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.idle.inner.lock().waiting.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_shed_and_leaving_removes() {
        let idle = Arc::new(Idle::default());
        let first = idle.enter();
        let second = idle.enter();
        let third = idle.enter();
        drop(second);
        assert_eq!(idle.len(), 2);
        assert!(idle.shed_oldest());
        assert!(first.shed.is_cancelled());
        assert!(!third.shed.is_cancelled());
        drop(first);
        drop(third);
        assert!(idle.is_empty());
        assert!(!idle.shed_oldest(), "nothing to shed");
    }
}
