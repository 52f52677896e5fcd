//! Adaptive concurrency, validated: the parameters of the gradient controller the proxy runs
//! per route (`proxy/src/stage/adaptive.rs`). Defaults follow Envoy's adaptive concurrency
//! filter, whose behaviour operators already know.

use std::time::Duration;

use crate::error::Errors;
use crate::spec::{AdaptiveConcurrencySpec, StageMode};
use crate::stages::{range, HOUR};

#[derive(Clone, Debug, PartialEq)]
pub struct AdaptivePolicy {
    /// Finds the limit and counts what it would refuse; refuses nothing.
    pub dry_run: bool,
    pub min_limit: u32,
    pub max_limit: u32,
    pub sample_window: Duration,
    /// In (0, 100].
    pub sample_percentile: f64,
    /// Fraction (not percent) of the minimum latency still counted as unloaded.
    pub buffer: f64,
    pub min_rtt_interval: Duration,
    pub min_rtt_requests: u32,
    /// Fraction (not percent) of `min_rtt_interval`.
    pub jitter: f64,
    pub max_queued: u32,
    pub queue_timeout: Duration,
}

const MAX_LIMIT: u64 = 100_000;

pub(crate) fn compile(errs: &mut Errors<'_>, path: &str, s: &AdaptiveConcurrencySpec) -> AdaptivePolicy {
    let min_limit = range(errs, &format!("{path}.minLimit"), s.min_limit.unwrap_or(3).into(), 1, MAX_LIMIT) as u32;
    let max_limit = range(errs, &format!("{path}.maxLimit"), s.max_limit.unwrap_or(1000).into(), 1, MAX_LIMIT) as u32;
    if max_limit < min_limit {
        errs.push(format!("{path}.maxLimit"), format!("{max_limit} is below minLimit {min_limit}"));
    }
    let window = duration(
        errs,
        &format!("{path}.sampleWindow"),
        s.sample_window.map_or(Duration::from_millis(100), |d| d.get()),
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    let interval = duration(
        errs,
        &format!("{path}.minRttInterval"),
        s.min_rtt_interval.map_or(Duration::from_secs(60), |d| d.get()),
        Duration::from_secs(1),
        HOUR,
    );
    if interval <= window {
        errs.push(format!("{path}.minRttInterval"), "must be longer than sampleWindow");
    }
    let percentile = s.sample_percentile.unwrap_or(50.0);
    if !(percentile > 0.0 && percentile <= 100.0) {
        errs.push(format!("{path}.samplePercentile"), format!("{percentile} is not a percentile in (0, 100]"));
    }
    let buffer = s.buffer_percent.unwrap_or(25.0);
    if !(0.0..=100.0).contains(&buffer) {
        errs.push(format!("{path}.bufferPercent"), format!("{buffer} is out of range [0, 100]"));
    }
    let jitter = s.jitter_percent.unwrap_or(10.0);
    if !(0.0..=50.0).contains(&jitter) {
        errs.push(format!("{path}.jitterPercent"), format!("{jitter} is out of range [0, 50]"));
    }
    let min_rtt_requests =
        range(errs, &format!("{path}.minRttRequests"), s.min_rtt_requests.unwrap_or(50).into(), 1, 10_000) as u32;
    let (max_queued, queue_timeout) = crate::stages::queue(errs, path, s.max_queued, s.queue_timeout);
    AdaptivePolicy {
        dry_run: s.mode == Some(StageMode::DryRun),
        min_limit,
        max_limit,
        sample_window: window,
        sample_percentile: percentile,
        buffer: buffer / 100.0,
        min_rtt_interval: interval,
        min_rtt_requests,
        jitter: jitter / 100.0,
        max_queued,
        queue_timeout,
    }
}

fn duration(errs: &mut Errors<'_>, path: &str, d: Duration, min: Duration, max: Duration) -> Duration {
    if d < min || d > max {
        errs.push(
            path,
            format!(
                "{} is out of range {}..={}",
                crate::duration::format(d),
                crate::duration::format(min),
                crate::duration::format(max)
            ),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(yaml: &str) -> (AdaptivePolicy, Vec<String>) {
        let spec: AdaptiveConcurrencySpec = yaml_serde::from_str(yaml).unwrap();
        let mut out = Vec::new();
        let p = compile(&mut Errors { policy: "t/p".into(), out: &mut out }, "a", &spec);
        (p, out.into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect())
    }

    #[test]
    fn defaults_are_envoys() {
        let (p, errs) = compile_yaml("{}");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!((p.min_limit, p.max_limit, p.min_rtt_requests), (3, 1000, 50));
        assert_eq!((p.sample_window, p.min_rtt_interval), (Duration::from_millis(100), Duration::from_secs(60)));
        assert_eq!((p.buffer, p.jitter, p.sample_percentile), (0.25, 0.1, 50.0));
    }

    #[test]
    fn names_each_bad_parameter() {
        let (_, errs) = compile_yaml(
            "{minLimit: 50, maxLimit: 10, sampleWindow: 1ms, samplePercentile: 0, jitterPercent: 90, maxQueued: 5}",
        );
        assert_eq!(
            errs,
            [
                "a.maxLimit: 10 is below minLimit 50",
                "a.sampleWindow: 1ms is out of range 10ms..=1m",
                "a.samplePercentile: 0 is not a percentile in (0, 100]",
                "a.jitterPercent: 90 is out of range [0, 50]",
                "a.queueTimeout: required when maxQueued is set: how long may a request wait?",
            ]
        );
    }
}
