//! The configurations compared: Bulwark and Envoy doing the same job (route timeout, fault
//! filter at 0%, circuit breaking, outlier detection, one worker thread), Bulwark bare, Bulwark
//! with every stage on, and nginx as a second upstream.

use std::net::SocketAddr;

/// What each proxy forwards to.
#[derive(Clone, Copy)]
pub struct Upstreams {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub nginx: Option<SocketAddr>,
}

/// A proxy's listening addresses, one per upstream.
#[derive(Clone, Copy, Debug)]
pub struct Listens {
    pub http: SocketAddr,
    /// h2c, on a listener (Envoy's and Bulwark's) that speaks HTTP/2 upstream.
    pub h2: SocketAddr,
    pub grpc: SocketAddr,
    pub nginx: SocketAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    /// No policy at all.
    Bare,
    /// What the Envoy configuration does.
    EnvoyEquivalent,
    /// Breaker, bulkhead, retries, a rate limit never reached, 0% faults, tracing at 1%.
    All,
    /// The Envoy-equivalent policies among 1,000 policies of 10 routes each: what selecting a
    /// policy costs when there are many.
    ManyPolicies,
    /// 10,000 routes in 40 policies of 250; the traffic's own policy has 250 routes and its
    /// requests match none of them (the default route): matching at its most expensive.
    ManyRoutes,
    /// The Envoy-equivalent policies plus a per-client rate limit keyed by `x-api-key`,
    /// tracking at most `CLIENT_KEYS_TRACKED` clients, while the load rotates through ten
    /// times as many keys.
    ClientKeys,
    /// The Envoy-equivalent policies plus adaptive concurrency with a floor above the load's
    /// concurrency: what measuring every request's latency and moving the limit costs.
    Adaptive,
}

/// Routes per policy in `ManyRoutes` (the per-policy limit is 256).
pub const ROUTES_PER_POLICY: usize = 250;
/// Policies in `ManyRoutes`, the traffic's own included.
pub const ROUTE_POLICIES: usize = 40;
pub const CLIENT_KEYS_TRACKED: usize = 10_000;
pub const CLIENT_KEYS_SENT: usize = 100_000;

/// Policies beside the four that govern the traffic (web, web-h2, grpc, nginx) in
/// `ManyPolicies`: 1,000 in all, the most a proxy takes.
pub const OTHER_POLICIES: usize = 996;

/// A policy for a service nobody calls, with 10 routes.
fn other_policy(i: usize) -> String {
    let routes: String = (0..10)
        .map(|r| format!("    - {{ name: r{r}, match: {{ pathPrefix: /r{r} }}, timeout: {{ request: 2s }} }}\n"))
        .collect();
    format!(
        "- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {{ name: other-{i}, namespace: bench }}\n  spec:\n    target: {{ service: svc-{i}.bench.svc }}\n    routes:\n{routes}"
    )
}

/// 250 routes none of the benchmark's requests match; `generation` changes one timeout, so a
/// reload of a new generation compiles something new.
fn many_routes(indent: &str, generation: u32) -> String {
    (0..ROUTES_PER_POLICY)
        .map(|r| {
            let timeout = if r == 0 { 2 + generation % 5 } else { 2 };
            format!("{indent}- {{ name: r{r}, match: {{ pathPrefix: /r{r}/ }}, timeout: {{ request: {timeout}s }} }}\n")
        })
        .collect()
}

/// A policy for a service nobody calls, with 250 routes.
fn route_policy(i: usize, generation: u32) -> String {
    format!(
        "- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {{ name: routes-{i}, namespace: bench }}\n  spec:\n    target: {{ service: routes-{i}.bench.svc }}\n    routes:\n{}",
        many_routes("    ", generation)
    )
}

fn policy(listener: &str, stages: Stages) -> String {
    let mut defaults = String::from(
        "    timeout: { request: 3s }\n    faults: { abort: { httpStatus: 503, percent: 0 }, delay: { fixed: 300ms, percent: 0 } }\n    circuitBreaker: { consecutiveFailures: 1000, window: 30s, openFor: 30s }\n",
    );
    if stages == Stages::All {
        defaults.push_str(
            "    bulkhead: { maxConcurrent: 10000, maxQueued: 1000, queueTimeout: 1s }\n    retries: { attempts: 2, on: [connect-failure, reset, 503] }\n    rateLimit: { perSecond: 10000000, burst: 10000000 }\n",
        );
    }
    if stages == Stages::ClientKeys {
        defaults.push_str(&format!(
            "    rateLimit: {{ perSecond: 10000000, burst: 10000000, perClient: {{ header: x-api-key, perSecond: 1000, burst: 1000, maxClients: {CLIENT_KEYS_TRACKED} }} }}\n"
        ));
    }
    if stages == Stages::Adaptive {
        defaults.push_str(
            "    adaptiveConcurrency: { minLimit: 1024, maxLimit: 10000, maxQueued: 1000, queueTimeout: 1s }\n",
        );
    }
    let routes =
        if stages == Stages::ManyRoutes { format!("  routes:\n{}", many_routes("  ", 0)) } else { String::new() };
    format!(
        "- apiVersion: bulwark.dev/v1\n  kind: ResiliencePolicy\n  metadata: {{ name: {listener} }}\n  spec:\n    target: {{ listener: {listener} }}\n    defaults:\n{}{}    upstream:\n      connectTimeout: 1s\n      pool: {{ maxConnections: 1024 }}\n      outlierDetection: {{ consecutive5xx: 5, baseEjection: 30s, maxEjectionPercent: 50 }}\n",
        defaults.lines().map(|l| format!("  {l}\n")).collect::<String>(),
        routes.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

/// Bulwark's bootstrap file. `generation` changes one route of `ManyRoutes`' other policies,
/// for the reload measure.
pub fn bulwark(
    listen: &Listens,
    up: &Upstreams,
    stages: Stages,
    admin: SocketAddr,
    health: SocketAddr,
    otlp: Option<SocketAddr>,
    generation: u32,
) -> String {
    let mut yaml = format!("admin: \"{admin}\"\nhealth: \"{health}\"\nlisteners:\n");
    yaml.push_str(&format!("- {{ name: web, listen: \"{}\", upstream: \"{}\" }}\n", listen.http, up.http));
    yaml.push_str(&format!(
        "- {{ name: web-h2, listen: \"{}\", upstream: \"{}\", upstreamProtocol: http2 }}\n",
        listen.h2, up.http
    ));
    yaml.push_str(&format!("- {{ name: grpc, listen: \"{}\", upstream: \"{}\" }}\n", listen.grpc, up.grpc));
    if let Some(nginx) = up.nginx {
        yaml.push_str(&format!("- {{ name: nginx, listen: \"{}\", upstream: \"{nginx}\" }}\n", listen.nginx));
    }
    if let (Stages::All, Some(otlp)) = (stages, otlp) {
        yaml.push_str(&format!("tracing: {{ endpoint: \"http://{otlp}\", sampleRatio: 0.01 }}\n"));
    }
    if stages != Stages::Bare {
        yaml.push_str("policies:\n");
        for l in ["web", "web-h2", "grpc"].into_iter().chain(up.nginx.map(|_| "nginx")) {
            yaml.push_str(&policy(l, stages));
        }
        if stages == Stages::ManyPolicies {
            for i in 0..OTHER_POLICIES {
                yaml.push_str(&other_policy(i));
            }
        }
        if stages == Stages::ManyRoutes {
            // web, web-h2, grpc (and nginx) have 250 routes each; the rest make 40 policies.
            for i in 0..ROUTE_POLICIES.saturating_sub(3 + usize::from(up.nginx.is_some())) {
                yaml.push_str(&route_policy(i, generation));
            }
        }
    }
    yaml
}

fn envoy_listener(name: &str, addr: SocketAddr, cluster: &str) -> String {
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster}, timeout: 3s }}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {{ http_status: 503, percentage: {{ numerator: 0, denominator: HUNDRED }} }}
              delay: {{ fixed_delay: 0.3s, percentage: {{ numerator: 0, denominator: HUNDRED }} }}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

fn envoy_cluster(name: &str, addr: SocketAddr, http2: bool) -> String {
    let h2 = if http2 {
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n"
    } else {
        ""
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {port} }} }} }} }}] }}]
    circuit_breakers: {{ thresholds: [{{ max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }}] }}
    outlier_detection: {{ consecutive_5xx: 5, base_ejection_time: 30s, max_ejection_percent: 50 }}
{h2}"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

/// Envoy's bootstrap doing what Bulwark's EnvoyEquivalent does.
pub fn envoy(listen: &Listens, up: &Upstreams, admin: SocketAddr) -> String {
    let mut yaml = format!(
        "admin:\n  address: {{ socket_address: {{ address: {}, port_value: {} }} }}\nstatic_resources:\n  listeners:\n",
        admin.ip(),
        admin.port()
    );
    yaml.push_str(&envoy_listener("web", listen.http, "http1"));
    yaml.push_str(&envoy_listener("web_h2", listen.h2, "http2"));
    yaml.push_str(&envoy_listener("grpc", listen.grpc, "grpc"));
    if up.nginx.is_some() {
        yaml.push_str(&envoy_listener("nginx", listen.nginx, "nginx"));
    }
    yaml.push_str("  clusters:\n");
    yaml.push_str(&envoy_cluster("http1", up.http, false));
    yaml.push_str(&envoy_cluster("http2", up.http, true));
    yaml.push_str(&envoy_cluster("grpc", up.grpc, true));
    if let Some(nginx) = up.nginx {
        yaml.push_str(&envoy_cluster("nginx", nginx, false));
    }
    yaml
}

/// nginx answering 200 itself, one worker.
pub fn nginx(listen: SocketAddr, dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n  server {{\n    listen {listen};\n    location / {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n"
    )
}
