//! Network namespaces for transparent-capture tests: a "pod" namespace where the proxy, its
//! iptables redirect and the app live, and a "remote" namespace joined by a veth pair, where
//! other services live. Needs root, `ip` and `iptables`; `skip_reason` says why not.

use std::net::IpAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why namespaced tests cannot run here, or None when they can.
pub fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces and iptables need root)".into());
    }
    for tool in ["ip", "iptables", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (make test installs iptables and iproute2 when root)"));
        }
    }
    let probe = format!("bwprobe{}", std::process::id());
    let ok = Command::new("ip").args(["netns", "add", &probe]).status().is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Some("cannot create network namespaces here (ip netns add failed)".into());
    }
    None
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    fn new(name: String) -> Netns {
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside the namespace; panics with its output if it fails.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.command(args[0]);
        c.args(&args[1..]);
        run(&mut c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces on one link: `pod` (x.x.x.1, fd..::1) and `remote` (x.x.x.2, fd..::2).
pub struct PodAndRemote {
    pub pod: Netns,
    pub remote: Netns,
    pub pod_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub pod_ip6: IpAddr,
    pub remote_ip6: IpAddr,
}

impl PodAndRemote {
    pub fn new() -> PodAndRemote {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let pod = Netns::new(format!("bw-pod-{id}"));
        let remote = Netns::new(format!("bw-remote-{id}"));
        let (a, b) = (format!("bwa{id}"), format!("bwb{id}"));
        run(Command::new("ip").args(["link", "add", &a, "type", "veth", "peer", "name", &b]));
        run(Command::new("ip").args(["link", "set", &a, "netns", &pod.name]));
        run(Command::new("ip").args(["link", "set", &b, "netns", &remote.name]));
        let net = 10 + (std::process::id() % 200) as u8;
        let sub = n as u8;
        let (pod_ip, remote_ip) = (format!("10.{net}.{sub}.1"), format!("10.{net}.{sub}.2"));
        let (pod_ip6, remote_ip6) = (format!("fd00:b:{net:x}:{sub:x}::1"), format!("fd00:b:{net:x}:{sub:x}::2"));
        for (ns, dev, ip4, ip6) in [(&pod, &a, &pod_ip, &pod_ip6), (&remote, &b, &remote_ip, &remote_ip6)] {
            ns.run(&["ip", "addr", "add", &format!("{ip4}/24"), "dev", dev]);
            ns.run(&["ip", "-6", "addr", "add", &format!("{ip6}/64"), "dev", dev, "nodad"]);
            ns.run(&["ip", "link", "set", dev, "up"]);
        }
        PodAndRemote {
            pod,
            remote,
            pod_ip: pod_ip.parse().expect("ip"),
            remote_ip: remote_ip.parse().expect("ip"),
            pod_ip6: pod_ip6.parse().expect("ip"),
            remote_ip6: remote_ip6.parse().expect("ip"),
        }
    }
}

impl Default for PodAndRemote {
    fn default() -> Self {
        Self::new()
    }
}

/// A child process that is killed when dropped.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
