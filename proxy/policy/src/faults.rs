//! Compiled fault injection settings. Percentages become precomputed thresholds over a 64-bit
//! uniform draw, so a request's decision is one comparison; 0% never fires and 100% always
//! does. Expiry is kept as written (an absolute time, or a duration counted from when the proxy
//! first applies the faults); the proxy turns it into a deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Errors;
use crate::route::HeaderMatch;
use crate::spec::{DelaySpec, FaultSpec, TcpFaultSpec};

/// The finest percentage accepted: one in a million.
pub const MIN_PERCENT: f64 = 0.0001;
/// The longest a fault may be set for (`for`, `expiresAt` from now, a runtime toggle): a
/// fault is an experiment, not a configuration, and one forgotten must end by itself.
pub const MAX_FAULT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The slowest bandwidth fault, bytes per second: slower holds a connection for hours per
/// kilobyte, which is a blackhole (say so with `blackhole`).
pub const MIN_BANDWIDTH: u64 = 100;
/// `expiresAt` before this is a mistake, not a time (1 January 2000).
const EARLIEST_EXPIRY_SECS: u64 = 946_684_800;
const MAX_DELAY: Duration = Duration::from_secs(3600);

/// A probability, as a threshold a uniform `u64` draw must fall below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chance(u64);

impl Chance {
    pub const ALWAYS: Chance = Chance(u64::MAX);

    pub fn from_percent(p: f64) -> Chance {
        if p >= 100.0 {
            Chance::ALWAYS
        } else {
            Chance((p / 100.0 * u64::MAX as f64) as u64)
        }
    }

    pub fn hit(self, draw: u64) -> bool {
        self == Chance::ALWAYS || draw < self.0
    }

    pub fn percent(self) -> f64 {
        if self == Chance::ALWAYS {
            100.0
        } else {
            self.0 as f64 / u64::MAX as f64 * 100.0
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Delay {
    Fixed(Duration),
    /// Uniform in [min, max].
    Range(Duration, Duration),
    /// Normal around the median, with the spread that puts p99 where it was given; never
    /// below zero.
    Normal {
        median_s: f64,
        sigma_s: f64,
    },
    /// Log-normal: `exp(mu + sigma * z)` seconds, from the median and p99 given.
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    /// Pareto (a long tail): `scale_s / u^(1/alpha)` seconds, from the median and p99 given.
    Pareto {
        scale_s: f64,
        alpha: f64,
    },
}

/// The standard normal's 0.99 quantile.
const Z99: f64 = 2.326_347_874;

impl Delay {
    /// One delay; `draw` gives uniform 64-bit values. Never more than an hour.
    pub fn sample(&self, draw: &mut dyn FnMut() -> u64) -> Duration {
        // In (0, 1], so that logarithms and powers stay finite.
        let mut unit = || (draw() as f64 + 1.0) / (u64::MAX as f64 + 1.0);
        let seconds = match *self {
            Delay::Fixed(d) => return d,
            Delay::Range(lo, hi) => return lo + hi.saturating_sub(lo).mul_f64(unit().min(1.0)),
            Delay::Normal { median_s, sigma_s } => median_s + sigma_s * standard_normal(&mut unit),
            Delay::LogNormal { mu, sigma } => (mu + sigma * standard_normal(&mut unit)).exp(),
            Delay::Pareto { scale_s, alpha } => scale_s / unit().powf(1.0 / alpha),
        };
        Duration::try_from_secs_f64(seconds.clamp(0.0, MAX_DELAY.as_secs_f64())).unwrap_or(MAX_DELAY)
    }
}

/// A standard normal draw (Box–Muller) from two uniforms in (0, 1].
fn standard_normal(unit: &mut dyn FnMut() -> f64) -> f64 {
    let (u1, u2) = (unit(), unit());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelayFault {
    pub delay: Delay,
    pub chance: Chance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortWith {
    Http(u16),
    Grpc(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortFault {
    pub with: AbortWith,
    pub chance: Chance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandwidthFault {
    pub bytes_per_second: u64,
    pub chance: Chance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    At(SystemTime),
    After(Duration),
}

#[derive(Debug)]
pub struct FaultPolicy {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
    pub response_delay: Option<DelayFault>,
    pub response_bandwidth: Option<BandwidthFault>,
    pub headers: Vec<HeaderMatch>,
    /// A stable share of clients, by source address.
    pub clients: Option<Chance>,
    /// Calling workloads, by mesh identity; empty: any caller.
    pub identities: Vec<IdentityPattern>,
    pub expiry: Option<Expiry>,
    /// As written, for equality across snapshots and for display.
    pub spec: FaultSpec,
}

impl PartialEq for FaultPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFaultPolicy {
    pub delay: Option<(Duration, Chance)>,
    pub bandwidth: Option<BandwidthFault>,
    /// `None` bytes: reset at once.
    pub reset: Option<(Option<u64>, Chance)>,
    pub blackhole: Option<Chance>,
}

fn chance(errs: &mut Errors<'_>, path: &str, p: f64) -> Chance {
    if !(0.0..=100.0).contains(&p) {
        errs.push(path, format!("{p} is not a percentage in [0, 100]"));
    } else if p > 0.0 && p < MIN_PERCENT {
        errs.push(path, format!("{p} is finer than the smallest percentage, {MIN_PERCENT} (one in a million)"));
    }
    Chance::from_percent(p)
}

fn delay(errs: &mut Errors<'_>, path: &str, d: &DelaySpec) -> DelayFault {
    let bounded = |errs: &mut Errors<'_>, at: &str, v: Duration| {
        if v > MAX_DELAY {
            errs.push(at, "must be at most 1h");
        }
        v
    };
    let shapes = [d.fixed.is_some(), d.range.is_some(), d.normal.is_some(), d.lognormal.is_some(), d.pareto.is_some()];
    if shapes.iter().filter(|s| **s).count() != 1 {
        errs.push(path, "set exactly one of fixed, range, normal, lognormal and pareto");
        return DelayFault {
            delay: Delay::Fixed(Duration::ZERO),
            chance: chance(errs, &format!("{path}.percent"), d.percent),
        };
    }
    let distribution = |errs: &mut Errors<'_>, name: &str, q: &crate::spec::QuantilesSpec, tail: bool| {
        let at = format!("{path}.{name}");
        let (median, p99) = (q.median.get(), q.p99.get());
        bounded(errs, &format!("{at}.p99"), p99);
        if median.is_zero() && tail {
            errs.push(format!("{at}.median"), "must be greater than zero");
        }
        if p99 <= median {
            errs.push(format!("{at}.p99"), "must be greater than the median");
        }
        (median.as_secs_f64(), p99.as_secs_f64())
    };
    let delay = match (&d.fixed, &d.range) {
        (Some(f), None) => Delay::Fixed(bounded(errs, &format!("{path}.fixed"), f.get())),
        _ if d.normal.is_some() => {
            let (m, p99) = d.normal.as_ref().map_or((0.0, 0.0), |q| distribution(errs, "normal", q, false));
            Delay::Normal { median_s: m, sigma_s: ((p99 - m) / Z99).max(0.0) }
        }
        _ if d.lognormal.is_some() => {
            let (m, p99) = d.lognormal.as_ref().map_or((1.0, 2.0), |q| distribution(errs, "lognormal", q, true));
            let (m, p99) = (m.max(1e-9), p99.max(m.max(1e-9) * (1.0 + 1e-9)));
            Delay::LogNormal { mu: m.ln(), sigma: (p99 / m).ln() / Z99 }
        }
        _ if d.pareto.is_some() => {
            let (m, p99) = d.pareto.as_ref().map_or((1.0, 2.0), |q| distribution(errs, "pareto", q, true));
            let (m, p99) = (m.max(1e-9), p99.max(m.max(1e-9) * (1.0 + 1e-9)));
            // Q(p) = scale * (1 - p)^(-1/alpha): p99 / median = 50^(1/alpha).
            let alpha = 50f64.ln() / (p99 / m).ln();
            Delay::Pareto { scale_s: m / 2f64.powf(1.0 / alpha), alpha }
        }
        (None, Some(r)) => {
            let (min, max) = (
                bounded(errs, &format!("{path}.range.min"), r.min.get()),
                bounded(errs, &format!("{path}.range.max"), r.max.get()),
            );
            if max < min {
                errs.push(format!("{path}.range.max"), "must not be smaller than range.min");
            }
            Delay::Range(min, max)
        }
        // One shape is set (checked above).
        _ => Delay::Fixed(Duration::ZERO),
    };
    DelayFault { delay, chance: chance(errs, &format!("{path}.percent"), d.percent) }
}

/// Where a proxy states the mesh identity of the workload it sends for. A proxy with an identity
/// sets it on every outbound request, replacing whatever the app wrote; it is asserted by the
/// calling proxy, not proven (there is no mTLS), so it chooses an experiment's blast radius and
/// is no access control.
pub const CLIENT_ID_HEADER: &str = "x-bulwark-client-id";

/// A mesh identity as faults match it: `NAME.NAMESPACE` exactly, or `*.NAMESPACE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(String),
    Namespace(String),
}

impl IdentityPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (wild, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let shape_ok = if wild { labels.len() == 1 } else { labels.len() == 2 };
        if text.len() > 253 || !shape_ok || !labels.iter().all(label_ok) {
            return Err(format!(
                "{text:?} is not a mesh identity; write NAME.NAMESPACE (a service account and its namespace) or *.NAMESPACE"
            ));
        }
        Ok(if wild { IdentityPattern::Namespace(rest.to_string()) } else { IdentityPattern::Exact(text.to_string()) })
    }

    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityPattern::Exact(id) => id == identity,
            IdentityPattern::Namespace(ns) => {
                identity.split_once('.').is_some_and(|(name, rest)| !name.is_empty() && rest == ns)
            }
        }
    }
}

/// The identity patterns of a `match.identities` list at `path`.
pub(crate) fn identities(errs: &mut Errors<'_>, path: &str, written: &[String]) -> Vec<IdentityPattern> {
    crate::validate::count(errs, path, written.len(), crate::validate::MAX_MATCH_ITEMS);
    written
        .iter()
        .enumerate()
        .filter_map(|(i, id)| IdentityPattern::parse(id).map_err(|e| errs.push(format!("{path}[{i}]"), e)).ok())
        .collect()
}

fn bandwidth(errs: &mut Errors<'_>, at: &str, b: &crate::spec::BandwidthSpec) -> BandwidthFault {
    if b.bytes_per_second < MIN_BANDWIDTH {
        errs.push(
            format!("{at}.bytesPerSecond"),
            format!("{} is below the slowest, {MIN_BANDWIDTH}", b.bytes_per_second),
        );
    }
    BandwidthFault {
        bytes_per_second: b.bytes_per_second.max(MIN_BANDWIDTH),
        chance: chance(errs, &format!("{at}.percent"), b.percent),
    }
}

pub(crate) fn compile(errs: &mut Errors<'_>, path: &str, s: &FaultSpec, headers: Vec<HeaderMatch>) -> FaultPolicy {
    let abort = s.abort.as_ref().map(|a| {
        let p = format!("{path}.abort");
        let with = match (a.http_status, a.grpc_status) {
            (Some(h), None) => {
                if !(200..=599).contains(&h) {
                    errs.push(format!("{p}.httpStatus"), format!("{h} is not an HTTP status in 200..=599"));
                } else if matches!(h, 204 | 205 | 304) {
                    // These forbid a body, and the proxy's answer carries one saying why.
                    errs.push(
                        format!("{p}.httpStatus"),
                        format!("{h} cannot carry the abort's body; use an error status"),
                    );
                }
                AbortWith::Http(h)
            }
            (None, Some(g)) => {
                if !(1..=16).contains(&g) {
                    errs.push(format!("{p}.grpcStatus"), format!("{g} is not a gRPC error status (1..=16)"));
                }
                AbortWith::Grpc(g)
            }
            _ => {
                errs.push(p.clone(), "set exactly one of httpStatus and grpcStatus");
                AbortWith::Http(503)
            }
        };
        AbortFault { with, chance: chance(errs, &format!("{p}.percent"), a.percent) }
    });
    let expiry = match (&s.expires_at, &s.for_) {
        (Some(_), Some(_)) => {
            errs.push(path, "set at most one of expiresAt and for");
            None
        }
        (Some(t), None) => match parse_rfc3339(t) {
            Ok(at) if at < UNIX_EPOCH + Duration::from_secs(EARLIEST_EXPIRY_SECS) => {
                errs.push(format!("{path}.expiresAt"), format!("{t:?} is before the year 2000"));
                None
            }
            Ok(at) if at.duration_since(SystemTime::now()).is_ok_and(|ahead| ahead > MAX_FAULT_DURATION) => {
                errs.push(
                    format!("{path}.expiresAt"),
                    format!("{t:?} is more than 7 days ahead; faults last at most 7 days"),
                );
                None
            }
            Ok(at) => Some(Expiry::At(at)),
            Err(e) => {
                errs.push(format!("{path}.expiresAt"), e);
                None
            }
        },
        (None, Some(d)) => {
            if d.get().is_zero() {
                errs.push(format!("{path}.for"), "must be greater than zero");
            } else if d.get() > MAX_FAULT_DURATION {
                errs.push(format!("{path}.for"), "must be at most 7 days (168h)");
            }
            Some(Expiry::After(d.get()))
        }
        (None, None) => None,
    };
    let clients = s
        .matches
        .as_ref()
        .and_then(|m| m.client_percent)
        .map(|p| chance(errs, &format!("{path}.match.clientPercent"), p));
    let written = s.matches.as_ref().map(|m| m.identities.as_slice()).unwrap_or_default();
    let identities = identities(errs, &format!("{path}.match.identities"), written);
    FaultPolicy {
        delay: s.delay.as_ref().map(|d| delay(errs, &format!("{path}.delay"), d)),
        abort,
        response_delay: s.response_delay.as_ref().map(|d| delay(errs, &format!("{path}.responseDelay"), d)),
        response_bandwidth: s
            .response_bandwidth
            .as_ref()
            .map(|b| bandwidth(errs, &format!("{path}.responseBandwidth"), b)),
        headers,
        clients,
        identities,
        expiry,
        spec: s.clone(),
    }
}

pub(crate) fn compile_tcp(errs: &mut Errors<'_>, path: &str, s: &TcpFaultSpec) -> TcpFaultPolicy {
    TcpFaultPolicy {
        delay: s.delay.as_ref().map(|d| {
            if d.per_chunk.get() > MAX_DELAY {
                errs.push(format!("{path}.delay.perChunk"), "must be at most 1h");
            }
            (d.per_chunk.get(), chance(errs, &format!("{path}.delay.percent"), d.percent))
        }),
        bandwidth: s.bandwidth.as_ref().map(|b| bandwidth(errs, &format!("{path}.bandwidth"), b)),
        reset: s.reset.as_ref().map(|r| (r.after_bytes, chance(errs, &format!("{path}.reset.percent"), r.percent))),
        blackhole: s.blackhole.as_ref().map(|b| chance(errs, &format!("{path}.blackhole.percent"), b.percent)),
    }
}

/// An RFC 3339 time, `2026-11-23T10:00:00Z` or with a fraction and a `+hh:mm` offset, parsed
/// by jiff (which also accepts the other ISO 8601 extended forms, and refuses impossible dates
/// and offsets such as Feb 30 or `+99:99`).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let bad =
        |why: &dyn std::fmt::Display| format!("{text:?} is not an RFC 3339 time such as 2026-11-23T10:00:00Z: {why}");
    let ts: jiff::Timestamp = text.parse().map_err(|e: jiff::Error| bad(&e))?;
    Ok(SystemTime::from(ts))
}

/// `2026-11-23T10:00:00.250Z` (UTC, to the millisecond, rounded up so that an expiry written
/// this way is never earlier than `t`); times before 1970 are written as 1970.
pub fn format_rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = since.as_nanos().div_ceil(1_000_000);
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::MAX).strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chances_are_exact_at_the_edges() {
        assert!(!Chance::from_percent(0.0).hit(0));
        assert!(Chance::from_percent(100.0).hit(u64::MAX));
        let one_in_a_million = Chance::from_percent(0.0001);
        assert!(one_in_a_million.hit(0));
        assert!(!one_in_a_million.hit(u64::MAX / 1_000_000 + 1));
        assert!((Chance::from_percent(12.5).percent() - 12.5).abs() < 1e-9);
    }

    #[test]
    fn seeded_draws_fire_at_the_configured_rate() {
        let c = Chance::from_percent(10.0);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut hits = 0;
        for _ in 0..100_000 {
            // xorshift64*: deterministic and uniform enough for a rate check.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            hits += u32::from(c.hit(rng.wrapping_mul(0x2545_f491_4f6c_dd1d)));
        }
        // 99.9% binomial interval for n=100000, p=0.1: 10000 ± 311.
        assert!((9689..=10311).contains(&hits), "{hits}");
    }

    #[test]
    fn parses_rfc3339() {
        let t = parse_rfc3339("2026-11-23T10:00:00Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_795_428_000);
        assert_eq!(parse_rfc3339("2026-11-23T12:00:00+02:00").unwrap(), t);
        assert_eq!(parse_rfc3339("2026-11-23T10:00:00.5Z").unwrap(), t + Duration::from_millis(500));
        assert!(parse_rfc3339("2026-11-23 10:00:00").is_err());
        assert!(parse_rfc3339("tomorrow").is_err());
        for bad in [
            "2026-02-30T10:00:00Z",
            "2026-11-23T10:00:00+99:99",
            "2026-11-23T10:00:00+\u{e9}\u{e9}0",
            "2026-11-23T10:00:00\u{e9}",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        for text in ["2026-11-23T10:00:00.000Z", "2000-02-29T23:59:59.250Z", "1970-01-01T00:00:00.000Z"] {
            assert_eq!(format_rfc3339(parse_rfc3339(text).unwrap()), text);
        }
        // Rounded up to the millisecond: written, it is never earlier than the time it stands for.
        let t = parse_rfc3339("2026-11-23T10:00:00Z").unwrap() + Duration::from_nanos(1);
        assert_eq!(format_rfc3339(t), "2026-11-23T10:00:00.001Z");
        assert!(parse_rfc3339(&format_rfc3339(t)).unwrap() >= t);
    }
}

#[cfg(test)]
mod distributions {
    use super::*;

    /// A seeded generator (splitmix64), so the draws are the same on every run.
    fn seeded(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn quantiles(delay: &str) -> (f64, f64) {
        let spec: DelaySpec = yaml_serde::from_str(&format!("{delay}\npercent: 100")).unwrap();
        let mut out = Vec::new();
        let d = super::delay(&mut Errors { policy: "t".into(), out: &mut out }, "delay", &spec);
        assert!(out.is_empty(), "{out:?}");
        let mut draw = seeded(7);
        let mut samples: Vec<f64> = (0..10_000).map(|_| d.delay.sample(&mut draw).as_secs_f64() * 1000.0).collect();
        samples.sort_by(f64::total_cmp);
        (samples[5_000], samples[9_900])
    }

    #[test]
    fn distributions_land_on_their_median_and_p99() {
        for shape in ["normal", "lognormal", "pareto"] {
            let (median, p99) = quantiles(&format!("{shape}: {{ median: 100ms, p99: 400ms }}"));
            assert!((median - 100.0).abs() < 100.0 * 0.05, "{shape}: median {median}");
            assert!((p99 - 400.0).abs() < 400.0 * 0.10, "{shape}: p99 {p99}");
        }
        // The uniform range, drawn the same way.
        let (median, p99) = quantiles("range: { min: 100ms, max: 200ms }");
        assert!((median - 150.0).abs() < 5.0 && (p99 - 199.0).abs() < 2.0, "{median} {p99}");
    }

    #[test]
    fn distribution_parameters_are_checked() {
        let errors = |delay: &str| {
            let spec: DelaySpec = yaml_serde::from_str(&format!("{delay}\npercent: 100")).unwrap();
            let mut out = Vec::new();
            super::delay(&mut Errors { policy: "t".into(), out: &mut out }, "delay", &spec);
            out.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>()
        };
        assert_eq!(
            errors("lognormal: { median: 100ms, p99: 50ms }"),
            ["delay.lognormal.p99: must be greater than the median"]
        );
        assert_eq!(errors("pareto: { median: 0s, p99: 1s }"), ["delay.pareto.median: must be greater than zero"]);
        assert_eq!(errors("normal: { median: 1s, p99: 2h }"), ["delay.normal.p99: must be at most 1h"]);
        assert_eq!(
            errors("fixed: 1s\nnormal: { median: 1s, p99: 2s }"),
            ["delay: set exactly one of fixed, range, normal, lognormal and pareto"]
        );
        // A sample never exceeds the hour, however long the tail.
        let spec: DelaySpec = yaml_serde::from_str("pareto: { median: 1s, p99: 59m }\npercent: 100").unwrap();
        let d = super::delay(&mut Errors { policy: "t".into(), out: &mut Vec::new() }, "delay", &spec);
        let mut draw = || 0u64;
        assert_eq!(d.delay.sample(&mut draw), MAX_DELAY);
    }
}
