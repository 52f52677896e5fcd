//! `bulwark-proxy init`: writes the pod's traffic redirect in the nat table, in chains of its
//! own so that `--cleanup` removes exactly what was written and nothing else.
//!
//! Inbound: TCP arriving for the app's ports is redirected to the inbound listener (15006),
//! except the proxy's own ports and any excluded. Outbound: TCP the app sends is redirected to
//! the outbound listener (15001), except traffic from the proxy's UID/GID (its own upstream
//! connections), loopback traffic (the app reaching itself), and excluded ports and CIDRs.
//! Running it twice leaves the same rules as running it once: it removes its chains first.

use std::process::Command;

use anyhow::{bail, Context as _};

const CHAINS: [&str; 4] = ["BULWARK_INBOUND", "BULWARK_IN_REDIRECT", "BULWARK_OUTPUT", "BULWARK_REDIRECT"];
/// The proxy's own ports, never redirected inbound.
const OWN_PORTS: [u16; 4] = [15000, 15001, 15006, 15020];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Ports redirected inbound; empty means every port.
    pub inbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// CIDRs never redirected outbound (either family; each is applied to its own).
    pub exclude_outbound_cidrs: Vec<String>,
    /// Redirect inbound only, leaving outbound traffic alone.
    pub inbound_only: bool,
}

/// One iptables invocation, written as its command line (no argument contains a space).
fn rule(line: impl AsRef<str>) -> Vec<String> {
    line.as_ref().split_whitespace().map(str::to_string).collect()
}

/// The commands (arguments to iptables/ip6tables) that write the redirect.
pub fn rules(o: &Options, family: Family) -> anyhow::Result<Vec<Vec<String>>> {
    let mut r: Vec<Vec<String>> = CHAINS.iter().map(|c| rule(format!("-t nat -N {c}"))).collect();
    r.push(rule(format!("-t nat -A BULWARK_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", o.inbound_port)));
    r.push(rule(format!("-t nat -A BULWARK_REDIRECT -p tcp -j REDIRECT --to-ports {}", o.outbound_port)));

    // Inbound.
    r.push(rule("-t nat -A PREROUTING -p tcp -j BULWARK_INBOUND"));
    let mut excluded: Vec<u16> = OWN_PORTS
        .iter()
        .copied()
        .chain([o.inbound_port, o.outbound_port])
        .chain(o.exclude_inbound_ports.iter().copied())
        .collect();
    excluded.sort_unstable();
    excluded.dedup();
    for p in excluded {
        r.push(rule(format!("-t nat -A BULWARK_INBOUND -p tcp --dport {p} -j RETURN")));
    }
    if o.inbound_ports.is_empty() {
        r.push(rule("-t nat -A BULWARK_INBOUND -p tcp -j BULWARK_IN_REDIRECT"));
    }
    for p in &o.inbound_ports {
        r.push(rule(format!("-t nat -A BULWARK_INBOUND -p tcp --dport {p} -j BULWARK_IN_REDIRECT")));
    }
    if o.inbound_only {
        return Ok(r);
    }

    // Outbound.
    r.push(rule("-t nat -A OUTPUT -p tcp -j BULWARK_OUTPUT"));
    r.push(rule(format!("-t nat -A BULWARK_OUTPUT -m owner --uid-owner {} -j RETURN", o.proxy_uid)));
    if let Some(gid) = o.proxy_gid {
        r.push(rule(format!("-t nat -A BULWARK_OUTPUT -m owner --gid-owner {gid} -j RETURN")));
    }
    r.push(rule("-t nat -A BULWARK_OUTPUT -o lo -j RETURN"));
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    r.push(rule(format!("-t nat -A BULWARK_OUTPUT -d {loopback} -j RETURN")));
    for p in &o.exclude_outbound_ports {
        r.push(rule(format!("-t nat -A BULWARK_OUTPUT -p tcp --dport {p} -j RETURN")));
    }
    for c in &o.exclude_outbound_cidrs {
        let cidr =
            bulwark_policy::validate::Cidr::parse(c).map_err(anyhow::Error::msg).context("--exclude-outbound-cidrs")?;
        if cidr.addr.is_ipv4() == (family == Family::V4) {
            r.push(rule(format!("-t nat -A BULWARK_OUTPUT -d {cidr} -j RETURN")));
        }
    }
    r.push(rule("-t nat -A BULWARK_OUTPUT -p tcp -j BULWARK_REDIRECT"));
    Ok(r)
}

/// Removes the jumps into our chains, then the chains. Each step may find nothing to remove.
fn cleanup_rules() -> Vec<Vec<String>> {
    let mut r =
        vec![rule("-t nat -D PREROUTING -p tcp -j BULWARK_INBOUND"), rule("-t nat -D OUTPUT -p tcp -j BULWARK_OUTPUT")];
    r.extend(CHAINS.iter().map(|c| rule(format!("-t nat -F {c}"))));
    r.extend(CHAINS.iter().map(|c| rule(format!("-t nat -X {c}"))));
    r
}

fn run(family: Family, args: &[String]) -> anyhow::Result<std::process::Output> {
    // -w: wait for the xtables lock instead of failing when another writer holds it.
    Command::new(family.command())
        .arg("-w")
        .args(args)
        .output()
        .with_context(|| format!("cannot run {} (is iptables installed?)", family.command()))
}

fn cleanup(family: Family) -> anyhow::Result<()> {
    for args in cleanup_rules() {
        // A jump may have been added more than once by hand; remove every copy.
        let repeat = args[2] == "-D";
        for _ in 0..if repeat { 64 } else { 1 } {
            if !run(family, &args)?.status.success() {
                break;
            }
        }
    }
    Ok(())
}

pub fn families(ipv6: &str) -> anyhow::Result<Vec<Family>> {
    let v6_present = std::path::Path::new("/proc/net/if_inet6").exists()
        && Command::new("ip6tables").arg("--version").output().is_ok_and(|o| o.status.success());
    Ok(match ipv6 {
        "auto" if v6_present => vec![Family::V4, Family::V6],
        "auto" | "off" => vec![Family::V4],
        "on" => vec![Family::V4, Family::V6],
        other => bail!("--ipv6 must be auto, on or off, not {other:?}"),
    })
}

/// Writes (or with `remove`, removes) the redirect for each family. With `dry_run`, prints the
/// commands instead.
pub fn apply(o: &Options, families: &[Family], remove: bool, dry_run: bool) -> anyhow::Result<()> {
    for &family in families {
        let cmds = if remove { cleanup_rules() } else { rules(o, family)? };
        if dry_run {
            for c in cmds {
                println!("{} {}", family.command(), c.join(" "));
            }
            continue;
        }
        cleanup(family)?;
        if remove {
            println!("{}: bulwark redirect removed", family.command());
            continue;
        }
        for args in &cmds {
            let out = run(family, args)?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                // Leave nothing half-written behind.
                let _ = cleanup(family);
                bail!("{} {} failed: {}", family.command(), args.join(" "), err.trim());
            }
        }
        println!("{}: bulwark redirect written ({} rules)", family.command(), cmds.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            proxy_uid: 1337,
            proxy_gid: None,
            outbound_port: 15001,
            inbound_port: 15006,
            inbound_ports: vec![],
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".into(), "fd00::/8".into()],
            inbound_only: false,
        }
    }

    fn text(r: &[Vec<String>]) -> Vec<String> {
        r.iter().map(|a| a.join(" ")).collect()
    }

    #[test]
    fn skips_the_proxy_uid_before_redirecting_outbound() {
        let r = text(&rules(&opts(), Family::V4).unwrap());
        let uid = r.iter().position(|l| l.contains("--uid-owner 1337 -j RETURN")).unwrap();
        let lo = r.iter().position(|l| l.contains("-o lo -j RETURN")).unwrap();
        let redirect = r.iter().position(|l| l.ends_with("-j BULWARK_REDIRECT")).unwrap();
        assert!(uid < redirect && lo < redirect);
        assert!(r.contains(&"-t nat -A BULWARK_OUTPUT -d 10.96.0.0/12 -j RETURN".to_string()));
        assert!(!r.iter().any(|l| l.contains("fd00::/8")), "v6 CIDR stays out of v4 rules");
        assert!(r.contains(&"-t nat -A BULWARK_OUTPUT -p tcp --dport 5432 -j RETURN".to_string()));
    }

    #[test]
    fn never_redirects_the_proxys_own_ports_inbound() {
        let r = text(&rules(&opts(), Family::V4).unwrap());
        for p in [15000, 15001, 15006, 15020, 22] {
            assert!(r.contains(&format!("-t nat -A BULWARK_INBOUND -p tcp --dport {p} -j RETURN")), "{p}");
        }
        assert!(r.contains(&"-t nat -A BULWARK_INBOUND -p tcp -j BULWARK_IN_REDIRECT".to_string()));
    }

    #[test]
    fn v6_uses_v6_loopback_and_cidrs() {
        let r = text(&rules(&opts(), Family::V6).unwrap());
        assert!(r.contains(&"-t nat -A BULWARK_OUTPUT -d ::1/128 -j RETURN".to_string()));
        assert!(r.contains(&"-t nat -A BULWARK_OUTPUT -d fd00::/8 -j RETURN".to_string()));
    }

    #[test]
    fn inbound_only_writes_no_output_jump_and_bad_cidr_is_refused() {
        let r = text(&rules(&Options { inbound_only: true, ..opts() }, Family::V4).unwrap());
        assert!(!r.iter().any(|l| l.contains("-A OUTPUT") || l.contains("-A BULWARK_OUTPUT")));
        let bad = Options { exclude_outbound_cidrs: vec!["10.0.0.0/99".into()], ..opts() };
        assert!(rules(&bad, Family::V4).is_err());
    }
}
