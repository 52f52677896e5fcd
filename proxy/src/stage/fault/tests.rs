use std::sync::Arc;

use bulwark_policy::faults::{AbortFault, Chance, Delay, DelayFault};
use bulwark_policy::spec::FaultSpec;

use super::*;

fn metrics() -> FaultMetrics {
    FaultMetrics {
        abort: Counter::default(),
        delay: Counter::default(),
        response_delay: Counter::default(),
        bandwidth: Counter::default(),
        expired: Counter::default(),
    }
}

fn policy(abort: f64, delay: f64) -> FaultPolicy {
    FaultPolicy {
        delay: Some(DelayFault {
            delay: Delay::Fixed(Duration::from_millis(100)),
            chance: Chance::from_percent(delay),
        }),
        abort: Some(AbortFault { with: AbortWith::Http(503), chance: Chance::from_percent(abort) }),
        response_delay: None,
        response_bandwidth: None,
        headers: Vec::new(),
        clients: None,
        identities: Vec::new(),
        expiry: None,
        spec: FaultSpec::default(),
    }
}

fn state(p: FaultPolicy) -> Arc<FaultState> {
    FaultState::new("default/p".into(), "r".into(), Arc::new(p), false, metrics(), None)
}

/// xorshift64*, seeded: a deterministic uniform source.
fn seeded(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

#[tokio::test]
async fn rates_hold_and_the_edges_are_exact() {
    let s = state(policy(10.0, 0.0));
    let mut draw = seeded(7);
    let n = 100_000;
    let aborts = (0..n).filter(|_| s.decide(&HeaderMap::new(), CLIENT, &mut draw).abort.is_some()).count();
    // 99.9% binomial interval for n = 100000, p = 0.1: 10000 ± 312.
    assert!((9688..=10312).contains(&aborts), "{aborts}");
    assert!((0..n).all(|_| s.decide(&HeaderMap::new(), CLIENT, &mut draw).delay.is_none()), "0% never fires");
    let always = state(policy(100.0, 100.0));
    assert!((0..10_000).all(|_| {
        let d = always.decide(&HeaderMap::new(), CLIENT, &mut draw);
        d.abort.is_some() && d.delay == Some(Duration::from_millis(100))
    }));
}

#[tokio::test]
async fn abort_and_delay_are_drawn_independently() {
    let s = state(policy(50.0, 50.0));
    let mut draw = seeded(11);
    let (mut both, mut abort, mut delay, n) = (0, 0, 0, 40_000);
    for _ in 0..n {
        let d = s.decide(&HeaderMap::new(), CLIENT, &mut draw);
        abort += usize::from(d.abort.is_some());
        delay += usize::from(d.delay.is_some());
        both += usize::from(d.abort.is_some() && d.delay.is_some());
    }
    // Independent: P(both) = P(abort) × P(delay) = 25%; 99.9% interval ± 285.
    assert!((9715..=10285).contains(&both), "both {both} (abort {abort}, delay {delay})");
}

#[tokio::test]
async fn targeting_by_header_and_by_a_stable_share_of_clients() {
    let mut p = policy(100.0, 0.0);
    p.headers =
        vec![bulwark_policy::route::HeaderMatch::Exact(http::HeaderName::from_static("x-bulwark-fault"), "on".into())];
    let s = state(p);
    let mut draw = seeded(3);
    let mut on = HeaderMap::new();
    on.insert("x-bulwark-fault", "on".parse().unwrap());
    assert!(s.decide(&on, CLIENT, &mut draw).abort.is_some());
    assert!(s.decide(&HeaderMap::new(), CLIENT, &mut draw).abort.is_none());

    let mut p = policy(100.0, 0.0);
    p.clients = Some(Chance::from_percent(30.0));
    let s = state(p);
    let hit: Vec<bool> = (0..1000u32)
        .map(|i| s.decide(&HeaderMap::new(), IpAddr::from((i << 8).to_be_bytes()), &mut draw).abort.is_some())
        .collect();
    let share = hit.iter().filter(|h| **h).count();
    assert!((230..=370).contains(&share), "about 30% of clients: {share}");
    let again: Vec<bool> = (0..1000u32)
        .map(|i| s.decide(&HeaderMap::new(), IpAddr::from((i << 8).to_be_bytes()), &mut draw).abort.is_some())
        .collect();
    assert_eq!(hit, again, "the same clients every time");
}

#[tokio::test]
async fn targeting_by_the_callers_mesh_identity() {
    use bulwark_policy::faults::IdentityPattern;
    let mut p = policy(100.0, 0.0);
    p.identities = vec![IdentityPattern::parse("web.shop").unwrap(), IdentityPattern::parse("*.canary").unwrap()];
    let s = state(p);
    let mut draw = seeded(5);
    let from = |id: &str| {
        let mut h = HeaderMap::new();
        h.insert(bulwark_policy::faults::CLIENT_ID_HEADER, id.parse().unwrap());
        h
    };
    assert!(s.decide(&from("web.shop"), CLIENT, &mut draw).abort.is_some());
    assert!(s.decide(&from("checkout.canary"), CLIENT, &mut draw).abort.is_some());
    assert!(s.decide(&from("web.shop-eu"), CLIENT, &mut draw).abort.is_none());
    assert!(s.decide(&from("worker.shop"), CLIENT, &mut draw).abort.is_none());
    assert!(s.decide(&HeaderMap::new(), CLIENT, &mut draw).abort.is_none(), "no identity, no fault");
}

#[tokio::test(start_paused = true)]
async fn faults_expire_by_themselves_and_say_so() {
    let mut p = policy(100.0, 0.0);
    p.expiry = Some(Expiry::After(Duration::from_secs(1)));
    let s = state(p);
    assert!(s.active(Instant::now()));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(s.active(Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    assert!(!s.active(Instant::now()));
    assert_eq!(s.metrics.expired.get(), 1, "the expiry is counted without any request");
}
