//! Where policy work runs: reading and compiling a configuration or snapshot, building its
//! stage state and installing it. One thread of its own, at a lower scheduling priority than
//! the workers (nice +10): with as many busy threads as cores, a reload of 10,000 routes (about
//! half a second of CPU) would otherwise take the CPU from the worker serving traffic, and
//! every request it holds would wait. Jobs run one at a time, in order, so installs never
//! interleave.

use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the policy thread (workers run at 0).
const NICE: i32 = 10;

fn sender() -> Option<&'static Sender<Job>> {
    static THREAD: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new().name("bulwark-policy".into()).spawn(move || {
                // On Linux the nice value is per thread; this one alone is lowered.
                if let Err(e) = rustix::process::setpriority_process(None, NICE) {
                    tracing::debug!(error = %e, "cannot lower the policy thread's priority");
                }
                for job in rx {
                    // A job that panics loses its own result, not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Runs `job` on the policy thread, inside the caller's runtime (stage state reads its clock
/// and spawns its timers), and waits for its result without blocking a worker. Falls back to
/// tokio's blocking pool if the thread could not be started.
pub async fn run<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let wrapped: Job = Box::new(move || {
        let _inside = runtime.enter();
        let _ = done.send(job());
    });
    match sender() {
        Some(tx) => match tx.send(wrapped) {
            Ok(()) => {}
            Err(mpsc::SendError(job)) => drop(tokio::task::spawn_blocking(job)),
        },
        None => drop(tokio::task::spawn_blocking(wrapped)),
    }
    result.await.map_err(|_| "the policy job did not finish (it panicked)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_in_order_on_a_lower_priority_thread() {
        let first =
            run(|| (std::thread::current().name().map(String::from), rustix::process::getpriority_process(None)));
        let (name, nice) = first.await.unwrap();
        assert_eq!(name.as_deref(), Some("bulwark-policy"));
        assert_eq!(nice.ok(), Some(NICE), "lowered, while this thread keeps its own");
        assert_ne!(rustix::process::getpriority_process(None).ok(), Some(NICE));
        let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let jobs: Vec<_> = (0..5)
            .map(|i| {
                let order = order.clone();
                run(move || order.lock().push(i))
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(*order.lock(), [0, 1, 2, 3, 4]);
        assert!(run(tokio::time::Instant::now).await.is_ok(), "the runtime's clock is there");
        assert!(run(|| panic!("a bad job")).await.is_err());
        assert_eq!(run(|| 7).await, Ok(7), "and the thread outlives it");
    }
}
