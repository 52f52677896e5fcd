//! Property tests: whatever a policy says, reading and compiling it never panics, and what is
//! accepted lies inside the ranges docs/policy.md documents. `make test` runs a bounded number
//! of cases; `make fuzz` runs many more (PROPTEST_CASES) before coverage-guided fuzzing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulwark_policy::{parse_documents, Snapshot};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn usual_duration() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["1ms", "250ms", "3s", "1.5s", "1m30s", "5m", "1h"]).prop_map(String::from)
}

fn usual_number() -> impl Strategy<Value = String> {
    (1u32..10).prop_map(|n| n.to_string())
}

/// Durations as users write them, and as they mistype them.
fn duration_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0.0f64..1e6).prop_map(|f| format!("{f}")),
        Just("1e-300".to_string()),
        Just("1e300".to_string()),
        Just("".to_string()),
        Just(".".to_string()),
        Just("-5".to_string()),
    ];
    let unit = prop::sample::select(vec!["ns", "us", "µs", "ms", "s", "m", "h", "", "d", "é", "sms"]);
    prop_oneof![
        2 => usual_duration(),
        2 => prop::collection::vec((number, unit), 1..4)
            .prop_map(|parts| parts.into_iter().map(|(n, u)| format!("{n}{u}")).collect::<String>()),
        1 => ".{0,12}",
    ]
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => usual_number(),
        1 => (0u32..1000).prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["1e-20", "1e-300", "0.0005", ".nan", ".inf", "-.inf", "0", "-1", "100.0001", "\"x\""])
            .prop_map(String::from),
    ]
}

/// RFC 3339 look-alikes: right shape, any digits, odd offsets and characters.
fn timestamp_text() -> impl Strategy<Value = String> {
    let offset = prop_oneof![
        Just("Z".to_string()),
        (0u32..100, 0u32..100).prop_map(|(h, m)| format!("+{h:02}:{m:02}")),
        "[+-][0-9é]{0,4}",
    ];
    prop_oneof![
        (2026u32..2027, 1u32..13, 1u32..29, 0u32..24, 0u32..60, 0u32..60)
            .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")),
        (0u32..10_000, 0u32..14, 0u32..33, 0u32..25, 0u32..61, 0u32..62, offset)
            .prop_map(|(y, mo, d, h, mi, s, off)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{off}")),
        ".{0,30}",
    ]
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A policy whose every resilience field takes a value from the strategies above: half of
/// them written as a careful user would, half with any value in any field.
fn policy_text() -> impl Strategy<Value = String> {
    let careful = (
        prop::collection::vec(usual_duration(), 8),
        prop::collection::vec(usual_number(), 10),
        Just("2026-12-31T00:00:00Z".to_string()),
        Just(503u32),
        prop::sample::select(vec![100u64, 1024, 1 << 20]),
        any::<bool>(),
    );
    let wild = (
        prop::collection::vec(duration_text(), 8),
        prop::collection::vec(number_text(), 10),
        timestamp_text(),
        prop::sample::select(vec![503u32, 100, 199, 200, 204, 205, 304, 418, 599, 600, 0]),
        prop::sample::select(vec![0u64, 1, 99, 100, 1024, u64::MAX]),
        any::<bool>(),
    );
    prop_oneof![careful, wild].prop_map(|(d, n, ts, status, bandwidth, expires)| {
        let expiry = if expires { format!("expiresAt: {}", quoted(&ts)) } else { format!("for: {}", quoted(&d[7])) };
        format!(
            "apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: {{ name: prop }}
spec:
  target: {{ listener: web }}
  routes:
  - name: r
    match: {{ pathPrefix: /r }}
    timeout: {{ request: {d0}, perTry: {d1}, idle: {d2} }}
    retries: {{ attempts: {n0}, backoff: {{ base: {d3}, max: {d4} }}, budget: {{ percent: {n1} }} }}
    circuitBreaker: {{ consecutiveFailures: {n2}, failureRatePercent: {n3}, window: {d5}, openFor: {d6} }}
    bulkhead: {{ maxConcurrent: {n4}, maxQueued: {n5}, queueTimeout: {d3} }}
    rateLimit: {{ perSecond: {n6}, burst: {n7} }}
    faults:
      abort: {{ httpStatus: {status}, percent: {n8} }}
      delay: {{ fixed: {d1}, percent: {n9} }}
      responseBandwidth: {{ bytesPerSecond: {bandwidth} }}
      {expiry}
  upstream: {{ outlierDetection: {{ consecutive5xx: {n0}, baseEjection: {d6}, maxEjectionPercent: {n3} }} }}
",
            d0 = quoted(&d[0]),
            d1 = quoted(&d[1]),
            d2 = quoted(&d[2]),
            d3 = quoted(&d[3]),
            d4 = quoted(&d[4]),
            d5 = quoted(&d[5]),
            d6 = quoted(&d[6]),
            n0 = n[0],
            n1 = n[1],
            n2 = n[2],
            n3 = n[3],
            n4 = n[4],
            n5 = n[5],
            n6 = n[6],
            n7 = n[7],
            n8 = n[8],
            n9 = n[9],
        )
    })
}

/// The generator is worth something only if it reaches both answers often.
#[test]
fn generated_policies_are_both_accepted_and_refused() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = policy_text();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..400 {
        let text = strategy.new_tree(&mut runner).expect("a value").current();
        match parse_documents(&text, "prop").map(|d| Snapshot::compile("prop", d)) {
            Ok(Ok(_)) => accepted += 1,
            _ => refused += 1,
        }
    }
    eprintln!("accepted {accepted}, refused {refused} of 400");
    assert!(accepted >= 20 && refused >= 20, "accepted {accepted}, refused {refused} of 400");
}

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_parse_or_are_refused_with_the_text(text in duration_text()) {
        match bulwark_policy::duration::parse(&text) {
            Ok(d) => prop_assert!(d <= Duration::from_secs(u64::MAX / 2)),
            Err(e) => prop_assert!(e.contains(&format!("{text:?}")) || text.trim().is_empty(), "{e}"),
        }
    }

    #[test]
    fn timestamps_parse_or_are_refused_with_the_text(text in timestamp_text()) {
        match bulwark_policy::faults::parse_rfc3339(&text) {
            Ok(t) => {
                // What is accepted can be written back and read again.
                let again = bulwark_policy::faults::format_rfc3339(t);
                let back = bulwark_policy::faults::parse_rfc3339(&again);
                prop_assert!(t < UNIX_EPOCH || back.is_ok(), "{again}");
            }
            Err(e) => prop_assert!(e.contains("RFC 3339"), "{e}"),
        }
    }

    #[test]
    fn whole_policies_compile_or_are_refused_with_a_path(text in policy_text()) {
        let docs = match parse_documents(&text, "prop") {
            Ok(docs) => docs,
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(!e.message.is_empty() && !e.policy.is_empty(), "{e:?}");
                }
                return Ok(());
            }
        };
        let snapshot = match Snapshot::compile("prop", docs) {
            Ok(s) => s,
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(e.path.starts_with("spec."), "an error without a field path: {e:?}\n{text}");
                }
                return Ok(());
            }
        };
        // Accepted: every value is inside its documented range.
        for p in &snapshot.policies {
            for r in p.routes.iter().chain(std::iter::once(&p.default_route)) {
                for t in [r.timeouts.request, r.timeouts.per_try, r.timeouts.idle].into_iter().flatten() {
                    prop_assert!(t > Duration::ZERO && t <= DAY, "timeout {t:?}\n{text}");
                }
                if let Some(b) = &r.breaker {
                    prop_assert!(b.window >= MS && b.open_for >= MS, "{b:?}\n{text}");
                    if let Some(rate) = b.failure_rate_percent {
                        prop_assert!((0.0..=100.0).contains(&rate), "{b:?}");
                    }
                }
                if let Some(b) = &r.bulkhead {
                    prop_assert!(b.max_queued == 0 || b.queue_timeout >= MS, "{b:?}\n{text}");
                }
                if let Some(l) = &r.rate_limit {
                    prop_assert!(l.route.per_second >= 0.001 && l.route.per_second.is_finite(), "{l:?}\n{text}");
                }
                if let Some(retry) = &r.retries {
                    prop_assert!((1..=10).contains(&retry.attempts), "{retry:?}");
                    prop_assert!((0.0..=100.0).contains(&retry.budget_percent), "{retry:?}");
                }
                if let Some(f) = &r.faults {
                    if let Some(a) = &f.abort {
                        prop_assert!((0.0..=100.0).contains(&a.chance.percent()), "{a:?}");
                    }
                    if let Some(b) = &f.response_bandwidth {
                        prop_assert!(b.bytes_per_second >= bulwark_policy::faults::MIN_BANDWIDTH, "{b:?}");
                    }
                    let longest = bulwark_policy::faults::MAX_FAULT_DURATION;
                    match f.expiry {
                        Some(bulwark_policy::faults::Expiry::After(d)) => prop_assert!(d <= longest, "{d:?}\n{text}"),
                        Some(bulwark_policy::faults::Expiry::At(t)) => {
                            prop_assert!(t <= SystemTime::now() + longest + DAY, "a fault for longer than 7 days\n{text}")
                        }
                        None => {}
                    }
                }
            }
        }
    }
}
