use std::time::Duration;

use http::{HeaderMap, Method};

use crate::{parse_documents, Destination, Direction, RequestInfo, Snapshot};

const GOOD: &str = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: payments, namespace: shop }
spec:
  target: { service: payments.shop.svc.cluster.local, ports: [8080] }
  defaults:
    timeout: { request: 3s, idle: 60s }
  routes:
  - name: any-charge
    match: { pathPrefix: /charge }
    timeout: { request: 5s }
  - name: charge
    match: { pathPrefix: /charge/card, methods: [POST] }
    timeout: { request: 2s, perTry: 800ms }
  - name: health
    match: { path: /charge/health }
"#;

fn compile(text: &str) -> Result<Snapshot, Vec<String>> {
    let docs = parse_documents(text, "test.yaml").map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Snapshot::compile("1", docs).map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

fn route_for(s: &Snapshot, method: Method, path: &str) -> String {
    let p = &s.policies[0];
    let headers = HeaderMap::new();
    let info = RequestInfo { method: &method, path, host: None, headers: &headers };
    p.routes.iter().find(|r| r.matcher.matches(&info)).unwrap_or(&p.default_route).name.to_string()
}

#[test]
fn most_specific_route_wins_and_defaults_are_inherited() {
    let s = compile(GOOD).unwrap();
    assert_eq!(route_for(&s, Method::GET, "/charge/health"), "health");
    assert_eq!(route_for(&s, Method::POST, "/charge/card/1"), "charge");
    assert_eq!(route_for(&s, Method::GET, "/charge/card/1"), "any-charge");
    assert_eq!(route_for(&s, Method::GET, "/other"), "default");
    let charge = s.policies[0].routes.iter().find(|r| &*r.name == "charge").unwrap();
    assert_eq!(charge.timeouts.request, Some(Duration::from_secs(2)));
    assert_eq!(charge.timeouts.per_try, Some(Duration::from_millis(800)));
    // Not set on the route: inherited from defaults.
    assert_eq!(charge.timeouts.idle, Some(Duration::from_secs(60)));
}

#[test]
fn unknown_field_is_named_with_its_path() {
    let bad = GOOD.replace("timeout: { request: 5s }", "timout: { request: 5s }");
    let errs = compile(&bad).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("policy shop/payments: spec.routes[0].timout: unknown field `timout`"), "{}", errs[0]);
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let bad = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: p }
spec:
  target: { service: "bad host!", ports: [0] }
  defaults: { timeout: { request: 1s, perTry: 2s } }
  routes:
  - name: a
    match: { pathPrefix: nope, methods: [] }
  - name: b
    match: { pathRegex: "(", headers: [{ name: x, exact: "1", present: true }] }
    timeout: { idle: 0s }
  - name: a
    match: { pathPrefix: nope, methods: [] }
"#;
    let errs = compile(bad).unwrap_err();
    let want = [
        "spec.target.service: \"bad host!\" is not a host name",
        "spec.target.ports[0]: port 0 can never match",
        "spec.defaults.timeout.perTry: 2s exceeds the request timeout 1s",
        "spec.routes[0].match.pathPrefix: \"nope\" can never match",
        "spec.routes[0].match.methods: an empty list can never match",
        "spec.routes[1].match.pathRegex: invalid regex",
        "spec.routes[1].match.headers[0]: set exactly one of exact, regex and present",
        "spec.routes[1].timeout.idle: must be greater than zero",
        "spec.routes[2].name: route \"a\" is defined twice",
        "spec.routes[2].match: can never match: route \"a\" has the same match and comes first",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.contains(w) && e.starts_with("policy default/p: ")),
            "missing {w:?} in {errs:#?}"
        );
    }
}

#[test]
fn shape_and_semantic_errors_are_reported_together_across_documents() {
    let bad = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: one }
spec:
  target: { listener: web }
  defaults:
    retrys: 3
    timeout: { request: soon, perTry: 2s, idle: 0s }
  routes:
  - name: a
    match: { pathPrefix: /a, methodz: [GET] }
    breaker: { failureRatio: 2 }
---
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: two }
spec:
  target: { listener: web, ports: [0] }
  defaults: { timeout: { request: 1 } }
"#;
    let errs = compile(bad).unwrap_err();
    let want = [
        "policy default/one: spec.defaults.retrys: unknown field `retrys`",
        "policy default/one: spec.defaults.timeout.request: ",
        "policy default/one: spec.routes[0].match.methodz: unknown field `methodz`",
        "policy default/one: spec.defaults.timeout.idle: must be greater than zero",
        "policy default/two: spec.defaults.timeout.request: ",
        "policy default/two: spec.target.ports[0]: port 0 can never match",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
    }
}

#[test]
fn unit_less_duration_is_refused_with_path() {
    let bad = GOOD.replace("request: 3s", "request: 3");
    let errs = compile(&bad).unwrap_err();
    assert!(errs[0].contains("spec.defaults.timeout.request") && errs[0].contains("missing unit"), "{errs:?}");
}

#[test]
fn wrong_api_version_and_duplicate_policies_are_refused() {
    let twice = format!("{GOOD}\n---\n{}", GOOD.replace("bulwark.dev/v1", "bulwark.dev/v2"));
    let errs = compile(&twice).unwrap_err();
    assert!(errs.iter().any(|e| e.contains("metadata.name: another policy")), "{errs:?}");
    let v2 = compile(&GOOD.replace("bulwark.dev/v1", "bulwark.dev/v2")).unwrap_err();
    assert!(v2[0].contains("apiVersion: \"bulwark.dev/v2\" is not supported"), "{v2:?}");
}

#[test]
fn yaml_syntax_error_names_the_source() {
    let errs = compile("apiVersion: [").unwrap_err();
    assert!(errs[0].starts_with("policy test.yaml (document 1): "), "{errs:?}");
}

#[test]
fn selection_prefers_listener_then_service_then_address() {
    let text = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: by-address }
spec: { target: { addresses: [10.0.0.0/8] } }
---
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: by-service }
spec: { target: { service: "*.shop.svc", ports: [80] } }
---
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: by-listener }
spec: { target: { listener: edge } }
---
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: inbound }
spec: { target: { addresses: [0.0.0.0/0], direction: inbound } }
"#;
    let s = compile(text).unwrap();
    let addr = Some("10.1.2.3:80".parse().unwrap());
    let pick = |listener, host, port, direction| {
        s.select(&Destination { direction, listener, hosts: [host, None], addr, port }).map(|p| p.id.to_string())
    };
    let out = Direction::Outbound;
    assert_eq!(pick(Some("edge"), Some("a.shop.svc"), 80, out).as_deref(), Some("default/by-listener"));
    assert_eq!(pick(None, Some("a.shop.svc"), 80, out).as_deref(), Some("default/by-service"));
    assert_eq!(pick(None, Some("a.shop.svc"), 81, out).as_deref(), Some("default/by-address"));
    assert_eq!(pick(None, None, 80, Direction::Inbound).as_deref(), Some("default/inbound"));
    let none = s.select(&Destination {
        direction: out,
        listener: None,
        hosts: [None, None],
        addr: Some("192.168.0.1:80".parse().unwrap()),
        port: 80,
    });
    assert!(none.is_none());
}

#[test]
fn documents_round_trip_through_yaml() {
    let s = compile(GOOD).unwrap();
    let text = yaml_serde::to_string(&s.documents[0]).unwrap();
    assert!(text.contains("perTry: 800ms"), "{text}");
    let again = parse_documents(&text, "again").unwrap();
    assert_eq!(again[0], s.documents[0]);
}

#[test]
fn stage_blocks_compile_and_replace_defaults_whole() {
    let text = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: p }
spec:
  target: { listener: web }
  defaults:
    retries: { attempts: 2, on: [reset, 503, unavailable] }
    bulkhead: { maxConcurrent: 5 }
    rateLimit: { perSecond: 100, perClient: { header: x-api-key, perSecond: 2 } }
  routes:
  - name: a
    match: { pathPrefix: /a }
    retries: { attempts: 1, backoff: { base: 10ms, max: 40ms }, budget: { percent: 50 } }
    circuitBreaker: { consecutiveFailures: 3, openFor: 5s }
"#;
    let s = compile(text).unwrap();
    let p = &s.policies[0];
    let a = &p.routes[0];
    let r = a.retries.as_ref().unwrap();
    assert_eq!(r.attempts, 1);
    assert_eq!(r.on, crate::stages::DEFAULT_RETRY_ON.to_vec(), "a route's block replaces the defaults' whole");
    assert_eq!((r.backoff_base, r.backoff_max), (Duration::from_millis(10), Duration::from_millis(40)));
    assert_eq!((r.budget_percent, r.budget_min_per_second), (50.0, 10));
    assert_eq!(a.bulkhead.as_ref().unwrap().max_concurrent, 5, "inherited");
    let b = a.breaker.as_ref().unwrap();
    assert_eq!((b.consecutive_failures, b.open_for, b.half_open_requests), (Some(3), Duration::from_secs(5), 3));
    let d = p.default_route.retries.as_ref().unwrap();
    assert_eq!(d.on, vec![crate::Condition::Reset, crate::Condition::Status(503), crate::Condition::Grpc(14)]);
    let rl = p.default_route.rate_limit.as_ref().unwrap();
    assert_eq!((rl.route.per_second, rl.route.burst), (100.0, 100));
    assert!(
        matches!(&rl.per_client, Some((crate::ClientKey::Header(h), b, 10_000)) if h == "x-api-key" && b.burst == 2)
    );
    assert_eq!(s.route_count, 2);
    assert_ne!(a.index, p.default_route.index);
}

#[test]
fn stage_errors_name_their_fields() {
    let text = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: p }
spec:
  target: { listener: web }
  defaults:
    retries: { attempts: 20, on: [flaky, timeout], backoff: { base: 100ms, max: 10ms }, budget: { percent: 120 } }
    circuitBreaker: { window: 0s }
    bulkhead: { maxConcurrent: 0, maxQueued: 3 }
    rateLimit: { perSecond: 0, perClient: { perSecond: 1 } }
"#;
    let errs = compile(text).unwrap_err();
    for want in [
        "spec.defaults.retries.attempts: 20 is out of range 0..=10",
        "spec.defaults.retries.on[0]: \"flaky\" is not a condition",
        "spec.defaults.retries.on: \"timeout\" ends the whole request",
        "spec.defaults.retries.backoff.max: must not be smaller than backoff.base",
        "spec.defaults.retries.budget.percent: 120 is not a percentage",
        "spec.defaults.circuitBreaker: sets no trip rule",
        "spec.defaults.circuitBreaker.window: must be greater than zero",
        "spec.defaults.bulkhead.maxConcurrent: 0 is out of range",
        "spec.defaults.bulkhead.queueTimeout: required when maxQueued is set",
        "spec.defaults.rateLimit.perSecond: 0 is out of range",
        "spec.defaults.rateLimit.perClient: set exactly one of header and sourceIp",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "missing {want:?} in {errs:#?}");
    }
}

#[test]
fn fault_errors_name_their_fields() {
    let text = r#"
apiVersion: bulwark.dev/v1
kind: ResiliencePolicy
metadata: { name: p }
spec:
  target: { listener: web }
  defaults:
    faults:
      delay: { fixed: 1s, range: { min: 1s, max: 2s }, percent: 10 }
      abort: { httpStatus: 700, percent: 0.00001 }
      responseBandwidth: { bytesPerSecond: 0 }
      match: { clientPercent: 101, identities: ["web.shop", "*.canary", "Web.Shop"] }
      expiresAt: "next tuesday"
  tcpFaults:
    reset: { percent: -1 }
"#;
    let errs = compile(text).unwrap_err();
    for want in [
        "spec.defaults.faults.delay: set exactly one of fixed, range, normal, lognormal and pareto",
        "spec.defaults.faults.abort.httpStatus: 700 is not an HTTP status",
        "spec.defaults.faults.abort.percent: 0.00001 is finer than the smallest percentage",
        "spec.defaults.faults.responseBandwidth.bytesPerSecond: 0 is below the slowest, 100",
        "spec.defaults.faults.match.clientPercent: 101 is not a percentage",
        "spec.defaults.faults.match.identities[2]: \"Web.Shop\" is not a mesh identity",
        "spec.defaults.faults.expiresAt: \"next tuesday\" is not an RFC 3339 time",
        "spec.tcpFaults.reset.percent: -1 is not a percentage",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "missing {want:?} in {errs:#?}");
    }
    let soon = crate::faults::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600));
    let ok = compile(
        &text
            .replace("range: { min: 1s, max: 2s }, ", "")
            .replace("700", "503")
            .replace("0.00001", "0.0001")
            .replace("bytesPerSecond: 0", "bytesPerSecond: 1000")
            .replace("101", "50")
            .replace(", \"Web.Shop\"", "")
            .replace("-1", "100")
            // Last: the time has dashes the replacement above would take.
            .replace("\"next tuesday\"", &format!("\"{soon}\"")),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

/// A policy whose defaults are `defaults` (YAML flow lines, indented four spaces) and whose
/// spec continues with `rest`.
fn with_defaults(defaults: &str, rest: &str) -> Result<Snapshot, Vec<String>> {
    compile(&format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: p, namespace: ns }}\nspec:\n  target: {{ listener: web }}\n  defaults:\n{defaults}{rest}"
    ))
}

/// Each value is refused, with the field path and what is wrong, and nothing panics.
#[test]
fn absurd_values_are_refused_with_their_field_path() {
    let cases: &[(&str, &str, &str)] = &[
        ("    circuitBreaker: { consecutiveFailures: 5, openFor: 1ns }\n", "spec.defaults.circuitBreaker.openFor", "at least 1ms"),
        ("    circuitBreaker: { failureRatePercent: 50, window: 1ns }\n", "spec.defaults.circuitBreaker.window", "at least 1ms"),
        ("    bulkhead: { maxConcurrent: 1, maxQueued: 1, queueTimeout: 1ns }\n", "spec.defaults.bulkhead.queueTimeout", "at least 1ms"),
        ("    rateLimit: { perSecond: 1e-20 }\n", "spec.defaults.rateLimit.perSecond", "out of range"),
        ("    rateLimit: { perSecond: 1e-300 }\n", "spec.defaults.rateLimit.perSecond", "out of range"),
        ("    rateLimit: { perSecond: 10, perClient: { header: x-k, perSecond: 1e-9 } }\n", "spec.defaults.rateLimit.perClient.perSecond", "out of range"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, expiresAt: \"2026-11-23T10:00:00+\u{e9}\u{e9}0\" }\n", "spec.defaults.faults.expiresAt", "not an RFC 3339 time"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, expiresAt: \"1970-01-01T00:00:00Z\" }\n", "spec.defaults.faults.expiresAt", "before the year 2000"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, expiresAt: \"2027-02-30T10:00:00Z\" }\n", "spec.defaults.faults.expiresAt", "not an RFC 3339 time"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, expiresAt: \"2027-01-01T10:00:00+99:99\" }\n", "spec.defaults.faults.expiresAt", "not an RFC 3339 time"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, expiresAt: \"2999-01-01T10:00:00Z\" }\n", "spec.defaults.faults.expiresAt", "at most 7 days"),
        ("    faults: { abort: { httpStatus: 503, percent: 1 }, for: 87600h }\n", "spec.defaults.faults.for", "at most 7 days"),
        ("    faults: { responseBandwidth: { bytesPerSecond: 1, percent: 100 } }\n", "spec.defaults.faults.responseBandwidth.bytesPerSecond", "below the slowest"),
        ("    faults: { abort: { httpStatus: 204, percent: 1 } }\n", "spec.defaults.faults.abort.httpStatus", "cannot carry"),
        ("    faults: { abort: { httpStatus: 304, percent: 1 } }\n", "spec.defaults.faults.abort.httpStatus", "cannot carry"),
        ("    faults: { abort: { httpStatus: 101, percent: 1 } }\n", "spec.defaults.faults.abort.httpStatus", "200..=599"),
    ];
    for (defaults, path, says) in cases {
        let errs = with_defaults(defaults, "").expect_err(defaults);
        assert!(
            errs.iter().any(|e| e.contains(&format!("policy ns/p: {path}: ")) && e.contains(says)),
            "{defaults}: {errs:?}"
        );
    }
    let tcp =
        with_defaults("    {}\n", "  tcpFaults: { bandwidth: { bytesPerSecond: 1, percent: 100 } }\n").unwrap_err();
    assert!(tcp.iter().any(|e| e.contains("spec.tcpFaults.bandwidth.bytesPerSecond")), "{tcp:?}");
    let outlier = with_defaults(
        "    {}\n",
        "  upstream: { outlierDetection: { consecutive5xx: 5, baseEjection: 30s, maxEjectionPercent: 0 } }\n",
    )
    .unwrap_err();
    assert!(outlier.iter().any(|e| e.contains("spec.upstream.outlierDetection.maxEjectionPercent")), "{outlier:?}");
}

#[test]
fn sane_limits_still_pass() {
    let ok = with_defaults(
        "    circuitBreaker: { consecutiveFailures: 5, openFor: 1ms, window: 1ms }\n    rateLimit: { perSecond: 0.001 }\n    faults: { responseBandwidth: { bytesPerSecond: 100, percent: 1 }, for: 168h }\n",
        "",
    );
    assert!(ok.is_ok(), "{ok:?}");
    let soon = crate::faults::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600));
    let at = with_defaults(
        &format!("    faults: {{ abort: {{ httpStatus: 503, percent: 1 }}, expiresAt: \"{soon}\" }}\n"),
        "",
    );
    assert!(at.is_ok(), "{at:?}");
}

#[test]
fn the_selection_index_picks_what_a_scan_of_every_policy_picks() {
    // 300 policies with targets drawn from a small set, so that many compete for the same
    // destinations: listeners, exact and wildcard services, address ranges, ports, directions.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut docs = String::new();
    for i in 0..300 {
        let mut target = Vec::new();
        // Each kind of selector with its own odds, so that some policies carry several.
        if next(3) == 0 {
            target.push(format!("listener: {}", ["a", "b"][next(2) as usize]));
        }
        if next(2) == 0 {
            target.push(format!("service: \"{}\"", ["pay.shop", "Cart.Shop", "*.shop", "*.other"][next(4) as usize]));
        }
        if target.is_empty() || next(3) == 0 {
            target.push(format!(
                "addresses: [\"{}\"]",
                ["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24"][next(3) as usize]
            ));
        }
        if next(2) == 0 {
            target.push(format!("ports: [{}]", [80, 443][next(2) as usize]));
        }
        target.push(format!("direction: {}", ["outbound", "inbound"][next(2) as usize]));
        docs.push_str(&format!(
            "---\napiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: p{i:03}, namespace: n{} }}\nspec:\n  target: {{ {} }}\n",
            next(3),
            target.join(", ")
        ));
    }
    let snapshot = Snapshot::compile("1", parse_documents(&docs, "generated").unwrap()).unwrap();
    let mut checked = 0;
    for direction in [Direction::Outbound, Direction::Inbound] {
        for listener in [None, Some("a"), Some("b"), Some("c")] {
            for host in
                [None, Some("pay.shop"), Some("cart.shop"), Some("CART.SHOP"), Some("x.other"), Some("none.example")]
            {
                for addr in
                    [None, Some("10.1.2.3:80"), Some("10.9.9.9:443"), Some("192.168.0.7:80"), Some("8.8.8.8:443")]
                {
                    for port in [80, 443] {
                        let dest = Destination {
                            direction,
                            listener,
                            hosts: [host, None],
                            addr: addr.map(|a| a.parse().unwrap()),
                            port,
                        };
                        let by_index = snapshot.select(&dest).map(|p| p.id.clone());
                        let by_scan = snapshot.select_by_scan(&dest).map(|p| p.id.clone());
                        assert_eq!(by_index, by_scan, "{dest:?}");
                        checked += usize::from(by_scan.is_some());
                    }
                }
            }
        }
    }
    assert!(checked > 100, "most destinations are governed by some policy: {checked}");
}
