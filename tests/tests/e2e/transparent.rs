//! Transparent capture in network namespaces the test builds: `bulwark-proxy init` writes the
//! redirect in a "pod" namespace; an app process under another UID calls a "remote" address
//! and its traffic reaches the proxy, which finds the original destination and applies the
//! policy selected by it. Inbound likewise, from a client in the remote namespace. Needs root;
//! prints why it skips otherwise.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bulwark_e2e::netns::{self, Background, Netns, PodAndRemote};
use bulwark_e2e::{workspace_bin, TempDir};

fn skip(test: &str) -> bool {
    match netns::skip_reason() {
        Some(why) => {
            eprintln!("SKIP {test}: {why}");
            true
        }
        None => false,
    }
}

/// Binaries copied where an unprivileged app UID may execute them, whatever the checkout's
/// permissions are.
struct Bins {
    _dir: TempDir,
    client: PathBuf,
    upstream: PathBuf,
    proxy: PathBuf,
}

fn bins() -> Bins {
    let dir = TempDir::new("bins");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |src: PathBuf, name: &str| {
        let dst = dir.path().join(name);
        std::fs::copy(&src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    };
    Bins {
        client: copy(env!("CARGO_BIN_EXE_bulwark-test-client").into(), "client"),
        upstream: copy(env!("CARGO_BIN_EXE_bulwark-test-upstream").into(), "upstream"),
        proxy: copy(workspace_bin("bulwark-proxy"), "bulwark-proxy"),
        _dir: dir,
    }
}

#[derive(Debug, serde::Deserialize)]
struct Answer {
    status: u16,
    reason: Option<String>,
    body: String,
}

/// One GET from inside `ns`, optionally as the unprivileged app UID.
fn call(ns: &Netns, bins: &Bins, as_app: bool, addr: SocketAddr, path: &str, headers: &[&str]) -> Answer {
    let mut cmd = if as_app {
        let mut c = ns.command("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(&bins.client);
        c
    } else {
        ns.command(bins.client.to_str().unwrap())
    };
    let out = cmd.arg(addr.to_string()).arg(path).args(headers).output().unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes the redirect and starts the proxy in the pod namespace with `policies`.
fn start_proxy(pod: &Netns, bins: &Bins, dir: &TempDir, policies: &str) -> Background {
    let out =
        pod.command(bins.proxy.to_str().unwrap()).args(["init", "--proxy-uid", "0", "--ipv6", "on"]).output().unwrap();
    assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
    let config = dir.path().join("proxy.yaml");
    std::fs::write(dir.path().join("policies.yaml"), policies).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::rename(dir.path().join("policies.yaml"), dir.path().join("policies/p.yaml")).unwrap();
    std::fs::write(
        &config,
        "admin: 127.0.0.1:15000\nhealth: 0.0.0.0:15020\ntransparent: { outbound: \"[::]:15001\", inbound: \"[::]:15006\" }\npolicyDir: policies\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let child = pod
        .command(bins.proxy.to_str().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .env("BULWARK_LOG", "info,bulwark_proxy=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proxy = Background(child);
    let ready = pod
        .command(bins.client.to_str().unwrap())
        .env("BULWARK_RETRY_FOR", "15")
        .args(["127.0.0.1:15020", "/ready"])
        .output()
        .unwrap();
    assert!(
        ready.status.success(),
        "proxy not ready: {}\n{}",
        String::from_utf8_lossy(&ready.stderr),
        std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
    );
    proxy
}

/// The call went through the proxy (the upstream saw the request id the proxy adds) and the
/// policy's slow route answered with its timeout.
fn assert_captured(ns: &Netns, bins: &Bins, as_app: bool, addr: SocketAddr) {
    let ok = call(ns, bins, as_app, addr, "/", &[]);
    assert_eq!(ok.status, 200, "{addr}: {ok:?}");
    assert!(ok.body.contains("x-request-id"), "{addr}: not proxied: {ok:?}");
    let slow = call(ns, bins, as_app, addr, "/slow", &["x-delay:1s"]);
    assert_eq!(
        (slow.status, slow.reason.as_deref()),
        (504, Some("timeout")),
        "{addr}: route timeout not applied: {slow:?}"
    );
}

/// A policy for `target` whose route /slow times out after 300ms.
fn slow_route_policy(name: &str, target: &str) -> String {
    format!(
        "apiVersion: bulwark.dev/v1\nkind: ResiliencePolicy\nmetadata: {{ name: {name} }}\nspec:\n  target: {target}\n  routes:\n  - name: slow\n    match: {{ pathPrefix: /slow }}\n    timeout: {{ request: 300ms }}\n"
    )
}

/// Starts the test upstream in `ns` on `addr` (`[::]:PORT` or `0.0.0.0:PORT`) and waits until
/// it answers on loopback.
fn start_upstream(ns: &Netns, bins: &Bins, addr: &str) -> Background {
    let child = ns
        .command(bins.upstream.to_str().unwrap())
        .arg(addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Background(child);
    let port = addr.rsplit(':').next().unwrap();
    let ready = ns
        .command(bins.client.to_str().unwrap())
        .env("BULWARK_RETRY_FOR", "10")
        .args([&format!("127.0.0.1:{port}"), "/"])
        .output()
        .unwrap();
    assert!(ready.status.success(), "upstream on {addr} not answering: {}", String::from_utf8_lossy(&ready.stderr));
    up
}

#[test]
fn outbound_capture_applies_policy_by_original_destination_v4_and_v6() {
    if skip("outbound capture") {
        return;
    }
    let bins = bins();
    let net = PodAndRemote::new();
    let dir = TempDir::new("outbound");
    let _up = start_upstream(&net.remote, &bins, "[::]:8080");
    let target = format!("{{ addresses: [\"{}/32\", \"{}/128\"], ports: [8080] }}", net.remote_ip, net.remote_ip6);
    let _proxy = start_proxy(&net.pod, &bins, &dir, &slow_route_policy("remote", &target));
    let v4 = SocketAddr::new(net.remote_ip, 8080);
    assert_captured(&net.pod, &bins, true, v4);
    assert_captured(&net.pod, &bins, true, SocketAddr::new(net.remote_ip6, 8080));

    // The proxy's own UID is never captured: same call as root goes straight through.
    let direct = call(&net.pod, &bins, false, v4, "/slow", &["x-delay:1s"]);
    assert_eq!(direct.status, 200, "{direct:?}");
    assert!(!direct.body.contains("x-request-id"), "not proxied");

    // The app can still reach itself over loopback.
    let own = call(&net.pod, &bins, true, "127.0.0.1:15020".parse().unwrap(), "/live", &[]);
    assert_eq!(own.status, 200);
}

#[test]
fn inbound_capture_applies_inbound_policy() {
    if skip("inbound capture") {
        return;
    }
    let bins = bins();
    let net = PodAndRemote::new();
    let dir = TempDir::new("inbound");
    let _app = start_upstream(&net.pod, &bins, "0.0.0.0:8080");
    let target = "{ addresses: [0.0.0.0/0], ports: [8080], direction: inbound }";
    let _proxy = start_proxy(&net.pod, &bins, &dir, &slow_route_policy("app-inbound", target));
    assert_captured(&net.remote, &bins, false, SocketAddr::new(net.pod_ip, 8080));
}

fn nat_rules(ns: &Netns, cmd: &str) -> String {
    let out = ns.run(&[cmd, "-t", "nat"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
}

#[test]
fn init_is_idempotent_and_cleanup_removes_exactly_its_rules() {
    if skip("init idempotence") {
        return;
    }
    let bins = bins();
    let net = PodAndRemote::new();
    let ns = &net.pod;
    ns.run(&["iptables", "-t", "nat", "-N", "OTHER"]);
    ns.run(&["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "OTHER"]);
    let proxy = bins.proxy.to_str().unwrap();

    ns.run(&[proxy, "init", "--ipv6", "on", "--exclude-outbound-ports", "5432"]);
    let once = nat_rules(ns, "iptables-save");
    let once6 = nat_rules(ns, "ip6tables-save");
    ns.run(&[proxy, "init", "--ipv6", "on", "--exclude-outbound-ports", "5432"]);
    assert_eq!(nat_rules(ns, "iptables-save"), once, "second init changes nothing");
    assert_eq!(nat_rules(ns, "ip6tables-save"), once6);
    assert!(once.contains("-A BULWARK_OUTPUT -m owner --uid-owner 1337 -j RETURN"), "{once}");
    assert!(once.contains("-A BULWARK_REDIRECT -p tcp -j REDIRECT --to-ports 15001"), "{once}");
    assert!(once.contains("-A BULWARK_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN"), "{once}");
    assert!(once6.contains("-A BULWARK_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"), "{once6}");

    ns.run(&[proxy, "init", "--cleanup", "--ipv6", "on"]);
    let after = nat_rules(ns, "iptables-save");
    assert!(!after.contains("BULWARK"), "{after}");
    assert!(!nat_rules(ns, "ip6tables-save").contains("BULWARK"));
    assert!(after.contains("-A OUTPUT -p udp -j OTHER"), "unrelated rules are kept: {after}");

    let dry = Command::new(&bins.proxy).args(["init", "--dry-run", "--ipv6", "off"]).output().unwrap();
    assert!(String::from_utf8_lossy(&dry.stdout).contains("iptables -t nat -A PREROUTING -p tcp -j BULWARK_INBOUND"));
}
