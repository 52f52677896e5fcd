//! What the control plane keeps of each experiment, on disk (`DATA_DIR/experiments.json`,
//! rewritten whole at every change of state, atomically), and its report: JSON for pipelines,
//! text or Markdown for people (`bulwarkctl experiment report`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use bulwark_policy::experiment::Counts;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Preflight,
    Running,
    Completed,
    Aborted,
    Refused,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Aborted | State::Refused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Preflight => "preflight",
            State::Running => "running",
            State::Completed => "completed",
            State::Aborted => "aborted",
            State::Refused => "refused",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The steady state held for the whole duration.
    Held,
    /// A bound was crossed: the guard stopped the experiment.
    Broken,
    /// Stopped for another reason (by hand, the control plane restarted, a fault could not be set).
    Aborted,
    /// Not started: the preflight found the system already outside its steady state.
    Refused,
}

/// Traffic of one phase, summed over every proxy that observed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Phase {
    pub fn of(counts: &Counts, seconds: f64) -> Phase {
        Phase {
            seconds,
            requests: counts.requests,
            errors: counts.errors,
            error_rate: counts.error_rate(),
            p50_ms: counts.quantile_ms(0.5),
            p95_ms: counts.quantile_ms(0.95),
            p99_ms: counts.quantile_ms(0.99),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreachRecord {
    /// `errorRate`, `p50`, `p95` or `p99`.
    pub bound: String,
    pub observed: f64,
    pub limit: f64,
    /// RFC 3339.
    pub at: String,
    /// `control plane` (over every proxy), or `proxy ID` (on its own traffic).
    pub seen_by: String,
}

/// A fault as the experiment set it: its route, and its share after the blast radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSet {
    pub policy: String,
    pub route: String,
    /// What was injected, as the route's `faults` block.
    pub faults: serde_json::Value,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub experiment: String,
    pub hypothesis: String,
    pub state: Option<State>,
    pub verdict: Option<Verdict>,
    /// Why it was aborted or refused.
    pub cause: Option<String>,
    pub admitted_at: String,
    pub faults_set_at: Option<String>,
    pub faults_removed_at: Option<String>,
    pub ended_at: Option<String>,
    pub observed: String,
    pub faults: Vec<FaultSet>,
    pub baseline: Option<Phase>,
    pub during: Option<Phase>,
    pub after: Option<Phase>,
    pub breach: Option<BreachRecord>,
    /// Seconds from the faults' removal until the observed signals were back within the
    /// baseline band; None when they were not within the after phase (or no faults were set).
    pub recovery_seconds: Option<f64>,
    /// Faults injected, by proxy and kind, as the proxies counted them.
    pub injected: BTreeMap<String, BTreeMap<String, u64>>,
    /// Proxies that reported measurements of the observed traffic.
    pub proxies: Vec<String>,
    pub evaluations: u64,
}

/// One experiment as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    /// The ChaosExperiment as admitted.
    pub yaml: String,
    pub state: State,
    pub report: Report,
}

pub fn load(path: &Path) -> anyhow::Result<BTreeMap<String, Record>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes every record, durably: to a temporary file, synced, renamed over the old.
pub fn save(path: &Path, records: &BTreeMap<String, Record>) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

impl Report {
    /// The report for people; `markdown` makes headings and a table of it.
    pub fn render(&self, markdown: bool) -> String {
        let mut o = String::new();
        let verdict = self.verdict.map_or("(not yet)".to_string(), |v| format!("{v:?}").to_lowercase());
        let state = self.state.map_or("", State::as_str);
        if markdown {
            let _ = writeln!(o, "# Experiment {}\n", self.experiment);
            let _ = writeln!(o, "**Hypothesis:** {}\n", self.hypothesis);
            let _ = writeln!(o, "**Verdict:** {verdict} (state {state})\n");
        } else {
            let _ = writeln!(o, "experiment {}", self.experiment);
            let _ = writeln!(o, "hypothesis: {}", self.hypothesis);
            let _ = writeln!(o, "verdict:    {verdict} (state {state})");
        }
        let line = |o: &mut String, k: &str, v: &str| {
            if markdown {
                let _ = writeln!(o, "- {k}: {v}");
            } else {
                let _ = writeln!(o, "{k:<11} {v}");
            }
        };
        if let Some(c) = &self.cause {
            line(&mut o, "cause:", c);
        }
        if let Some(b) = &self.breach {
            let what = if b.bound == "errorRate" {
                format!("error rate {} over {}", pct(b.observed), pct(b.limit))
            } else {
                format!("{} {:.0}ms over {:.0}ms", b.bound, b.observed, b.limit)
            };
            line(&mut o, "breach:", &format!("{what} at {}, seen by {}", b.at, b.seen_by));
        }
        line(&mut o, "observed:", &self.observed);
        for f in &self.faults {
            line(&mut o, "fault:", &format!("{}/{} {}", f.policy, f.route, f.faults));
        }
        line(&mut o, "admitted:", &self.admitted_at);
        for (k, v) in
            [("faults set:", &self.faults_set_at), ("removed:", &self.faults_removed_at), ("ended:", &self.ended_at)]
        {
            if let Some(v) = v {
                line(&mut o, k, v);
            }
        }
        let recovery = match (&self.faults_removed_at, self.recovery_seconds) {
            (None, _) => "no faults were set".to_string(),
            (Some(_), Some(s)) => format!("{s:.1}s after the faults were removed"),
            (Some(_), None) => "not back within the baseline band during the after phase".to_string(),
        };
        line(&mut o, "recovery:", &recovery);
        line(&mut o, "proxies:", &self.proxies.join(", "));
        if markdown {
            let _ = writeln!(o, "\n| phase | seconds | requests | errors | error rate | p50 | p95 | p99 |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        } else {
            let _ = writeln!(
                o,
                "\n{:<9} {:>8} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8}",
                "phase", "seconds", "requests", "errors", "error rate", "p50", "p95", "p99"
            );
        }
        for (name, p) in [("baseline", &self.baseline), ("during", &self.during), ("after", &self.after)] {
            let Some(p) = p else { continue };
            let ms = |v: f64| format!("{v:.0}ms");
            let cells = [
                format!("{:.1}", p.seconds),
                p.requests.to_string(),
                p.errors.to_string(),
                pct(p.error_rate),
                ms(p.p50_ms),
                ms(p.p95_ms),
                ms(p.p99_ms),
            ];
            if markdown {
                let _ = writeln!(o, "| {name} | {} |", cells.join(" | "));
            } else {
                let widths = [8, 9, 7, 10, 8, 8, 8];
                let row: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:>w$}")).collect();
                let _ = writeln!(o, "{name:<9} {}", row.join(" "));
            }
        }
        if !self.injected.is_empty() {
            let _ = writeln!(o, "{}", if markdown { "\n**Faults injected:**\n" } else { "\nfaults injected:" });
            for (proxy, kinds) in &self.injected {
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                let _ = writeln!(o, "{}{proxy}: {}", if markdown { "- " } else { "  " }, kinds.join(", "));
            }
        }
        o
    }
}
