//! Where replaced snapshots are freed. Requests in flight keep the snapshot they started with,
//! and the last of them to finish would otherwise free it on its worker: with 10,000 routes that
//! is milliseconds of deallocation in the middle of serving traffic. A replaced snapshot is
//! handed to one background thread instead, which waits until nothing else holds it (or a
//! minute has passed: a long stream may keep it for hours) and frees it there.

use std::any::Any;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

type Retired = Arc<dyn Any + Send + Sync>;

/// How long the thread waits for the last request of a replaced snapshot.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const THREAD: &str = "bulwark-retire";

/// Hands `old` to the retiring thread; frees it here if that thread cannot be had.
pub fn later(old: Retired) {
    static RETIRE: OnceLock<Option<Sender<Retired>>> = OnceLock::new();
    let sender = RETIRE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Retired>();
        let spawned = std::thread::Builder::new().name(THREAD.into()).spawn(move || {
            let mut waiting: Vec<(Instant, Retired)> = Vec::new();
            loop {
                // Block when idle; poll while some snapshot is still in use.
                let next = if waiting.is_empty() { rx.recv().ok() } else { rx.recv_timeout(POLL).ok() };
                if let Some(old) = next {
                    waiting.push((Instant::now(), old));
                } else if waiting.is_empty() {
                    return;
                }
                waiting.retain(|(since, s)| Arc::strong_count(s) > 1 && since.elapsed() < PATIENCE);
            }
        });
        spawned.ok().map(|_| tx)
    });
    match sender {
        Some(tx) => {
            if let Err(mpsc::SendError(old)) = tx.send(old) {
                drop(old);
            }
        }
        None => drop(old),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records which thread freed it.
    struct Probe(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(String::from));
        }
    }

    #[test]
    fn a_replaced_snapshot_is_freed_on_the_retiring_thread_once_its_last_request_is_done() {
        let (tx, freed) = std::sync::mpsc::channel();
        let snapshot = Arc::new(Probe(tx));
        let in_flight = snapshot.clone();
        later(snapshot);
        std::thread::sleep(POLL * 5);
        assert!(freed.try_recv().is_err(), "kept while a request holds it");
        drop(in_flight);
        let by = freed.recv_timeout(Duration::from_secs(5)).expect("freed");
        assert_eq!(by.as_deref(), Some(THREAD), "not by the request that finished last");
    }
}
