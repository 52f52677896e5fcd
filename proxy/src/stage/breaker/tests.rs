use std::sync::atomic::{AtomicUsize, Ordering};

use bulwark_policy::Condition;

use super::*;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        dry_run: false,
        consecutive_failures: Some(3),
        failure_rate_percent: None,
        slow_call: None,
        window: Duration::from_secs(10),
        minimum_requests: 4,
        open_for: Duration::from_secs(5),
        half_open_requests: 2,
        failure_on: vec![Condition::Any5xx, Condition::ConnectFailure, Condition::Reset, Condition::Timeout],
    }
}

const OK: Outcome = Outcome::Response { status: 200, grpc: None };
const FAIL: Outcome = Outcome::Response { status: 503, grpc: None };
const MS: Duration = Duration::from_millis(1);

fn breaker(p: BreakerPolicy) -> (Arc<Breaker>, Arc<AtomicUsize>) {
    let transitions = Arc::new(AtomicUsize::new(0));
    let t = transitions.clone();
    (
        Breaker::new(
            p,
            Instant::now(),
            Box::new(move |_, _| {
                t.fetch_add(1, Ordering::SeqCst);
            }),
        ),
        transitions,
    )
}

fn call(b: &Arc<Breaker>, outcome: Outcome) -> Result<(), CircuitOpen> {
    let now = Instant::now();
    b.admit(now)?.record(outcome, MS, now);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn opens_after_exactly_n_consecutive_failures() {
    let (b, transitions) = breaker(policy());
    call(&b, FAIL).unwrap();
    call(&b, FAIL).unwrap();
    call(&b, OK).unwrap(); // resets the run
    call(&b, FAIL).unwrap();
    call(&b, FAIL).unwrap();
    assert_eq!(b.state(Instant::now()), State::Closed, "two in a row: still closed");
    call(&b, FAIL).unwrap();
    assert_eq!(b.state(Instant::now()), State::Open);
    assert_eq!(call(&b, OK), Err(CircuitOpen), "open refuses at once");
    assert_eq!(transitions.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_k_and_closes_when_all_succeed() {
    let (b, _) = breaker(policy());
    for _ in 0..3 {
        call(&b, FAIL).unwrap();
    }
    tokio::time::advance(Duration::from_secs(5) - MS).await;
    assert_eq!(call(&b, OK), Err(CircuitOpen), "not before openFor");
    tokio::time::advance(MS).await;
    let now = Instant::now();
    let t1 = b.admit(now).unwrap();
    let t2 = b.admit(now).unwrap();
    assert!(b.admit(now).is_err(), "only halfOpenRequests trials");
    t1.record(OK, MS, now);
    assert_eq!(b.state(now), State::HalfOpen);
    t2.record(OK, MS, now);
    assert_eq!(b.state(now), State::Closed);
    call(&b, OK).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_reopens_and_an_abandoned_one_gives_its_slot_back() {
    let (b, _) = breaker(policy());
    for _ in 0..3 {
        call(&b, FAIL).unwrap();
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    let now = Instant::now();
    let abandoned = b.admit(now).unwrap();
    let _held = b.admit(now).unwrap();
    assert!(b.admit(now).is_err());
    drop(abandoned);
    let t = b.admit(now).expect("slot given back");
    t.record(Outcome::Reset, MS, now);
    assert_eq!(b.state(now), State::Open, "any failed trial re-opens");
    assert_eq!(b.view(now).half_open_in_seconds, Some(5.0));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_needs_the_minimum_requests_and_forgets_old_slices() {
    let mut p = policy();
    p.consecutive_failures = None;
    p.failure_rate_percent = Some(50.0);
    let (b, _) = breaker(p);
    call(&b, FAIL).unwrap();
    call(&b, OK).unwrap();
    call(&b, FAIL).unwrap();
    assert_eq!(b.state(Instant::now()), State::Closed, "3 < minimumRequests");
    // The window moves on: those three are forgotten.
    tokio::time::advance(Duration::from_secs(11)).await;
    call(&b, OK).unwrap();
    call(&b, OK).unwrap();
    call(&b, FAIL).unwrap();
    assert_eq!(b.state(Instant::now()), State::Closed, "1 of 3 in the window");
    call(&b, FAIL).unwrap();
    assert_eq!(b.state(Instant::now()), State::Open, "2 of 4 = 50%");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_by_rate_and_only_listed_outcomes_are_failures() {
    let mut p = policy();
    p.consecutive_failures = None;
    p.slow_call = Some((Duration::from_millis(100), 75.0));
    p.failure_on = vec![Condition::Status(500)];
    let (b, _) = breaker(p);
    let now = Instant::now();
    for _ in 0..3 {
        b.admit(now).unwrap().record(FAIL, Duration::from_millis(200), now); // 503: not a listed failure, but slow
    }
    b.admit(now).unwrap().record(OK, MS, now);
    assert_eq!(b.state(now), State::Open, "3 of 4 slow = 75%");
}
