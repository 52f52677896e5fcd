//! `bulwarkctl experiment`: run, follow, abort and report guarded chaos experiments.

use std::process::ExitCode;
use std::time::Duration;

use bulwark_control::experiments::{Report, State};
use bulwark_proto::v1 as pb;
use clap::Subcommand;
use tonic::transport::Channel;

use super::{read_documents, req, split, usage, Cli, Output};

#[derive(Subcommand)]
pub enum ExperimentAction {
    /// Admit the ChaosExperiment of FILE (or -) and run it.
    Run {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Wait until it ends, then print its report; exit 0 when the hypothesis held, 1
        /// otherwise.
        #[arg(long)]
        wait: bool,
    },
    /// Every experiment: state and verdict.
    List {
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// One experiment, NAMESPACE/NAME (or NAME in namespace "default"): state, reason, spec.
    Get { experiment: String },
    /// Stop an experiment: its faults are cleared on every proxy.
    Abort {
        experiment: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The experiment's report (-o json, yaml or md; text by default).
    Report { experiment: String },
}

type Admin = pb::policy_admin_client::PolicyAdminClient<Channel>;

/// Runs `action`; the documents of an `apply` that are ChaosExperiments come here too.
pub async fn run(cli: &Cli, admin: &mut Admin, action: &ExperimentAction) -> Result<ExitCode, tonic::Status> {
    match action {
        ExperimentAction::Run { file, wait } => {
            let texts = match read_documents(file) {
                Ok(t) => t,
                Err(e) => return Ok(usage(e)),
            };
            let mut code = ExitCode::SUCCESS;
            for text in texts {
                let Some(e) = start(cli, admin, &text).await? else { return Ok(ExitCode::from(1)) };
                if *wait {
                    let done = follow(cli, admin, &e.namespace, &e.name).await?;
                    print_report(cli.output, &done);
                    if report_of(&done).verdict != Some(bulwark_control::experiments::Verdict::Held) {
                        code = ExitCode::from(1);
                    }
                }
            }
            Ok(code)
        }
        ExperimentAction::List { namespace } => {
            let r = admin
                .list_experiments(req(
                    cli,
                    pb::ListExperimentsRequest { namespace: namespace.clone().unwrap_or_default() },
                ))
                .await?
                .into_inner();
            if cli.output.human() {
                println!("{:<40} {:<10} {:<8} REASON", "EXPERIMENT", "STATE", "VERDICT");
                for e in &r.experiments {
                    let verdict = report_of(e).verdict.map_or("-".to_string(), |v| format!("{v:?}").to_lowercase());
                    println!(
                        "{:<40} {:<10} {:<8} {}",
                        format!("{}/{}", e.namespace, e.name),
                        e.state,
                        verdict,
                        e.reason
                    );
                }
            } else {
                let v: Vec<serde_json::Value> = r.experiments.iter().map(as_value).collect();
                super::print_value(cli.output, &serde_json::json!({ "experiments": v }));
            }
            Ok(ExitCode::SUCCESS)
        }
        ExperimentAction::Get { experiment } => {
            let e = get(cli, admin, experiment).await?;
            match cli.output {
                Output::Human | Output::Md => {
                    println!(
                        "experiment {}/{}: {}{}",
                        e.namespace,
                        e.name,
                        e.state,
                        if e.reason.is_empty() { String::new() } else { format!(" ({})", e.reason) }
                    );
                    print!("{}", e.yaml);
                }
                out => super::print_value(out, &as_value(&e)),
            }
            Ok(ExitCode::SUCCESS)
        }
        ExperimentAction::Abort { experiment, reason } => {
            let (namespace, name) = split(experiment);
            let e = admin
                .abort_experiment(req(cli, pb::AbortExperimentRequest { namespace, name, reason: reason.clone() }))
                .await?
                .into_inner();
            println!("experiment {}/{}: abort requested; its faults are being cleared", e.namespace, e.name);
            Ok(ExitCode::SUCCESS)
        }
        ExperimentAction::Report { experiment } => {
            let e = get(cli, admin, experiment).await?;
            print_report(cli.output, &e);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends one ChaosExperiment; prints its admission or every reason it was refused.
pub async fn start(cli: &Cli, admin: &mut Admin, yaml: &str) -> Result<Option<pb::Experiment>, tonic::Status> {
    let r = admin.run_experiment(req(cli, pb::RunExperimentRequest { yaml: yaml.to_string() })).await?.into_inner();
    match r.experiment {
        Some(e) if r.errors.is_empty() => {
            println!("experiment {}/{} admitted", e.namespace, e.name);
            Ok(Some(e))
        }
        _ => {
            for e in &r.errors {
                if e.path.is_empty() {
                    eprintln!("experiment {}: {}", e.policy, e.message);
                } else {
                    eprintln!("experiment {}: {}: {}", e.policy, e.path, e.message);
                }
            }
            Ok(None)
        }
    }
}

async fn get(cli: &Cli, admin: &mut Admin, experiment: &str) -> Result<pb::Experiment, tonic::Status> {
    let (namespace, name) = split(experiment);
    Ok(admin.get_experiment(req(cli, pb::GetExperimentRequest { namespace, name })).await?.into_inner())
}

/// Polls until the experiment ends, saying each change of state.
async fn follow(cli: &Cli, admin: &mut Admin, namespace: &str, name: &str) -> Result<pb::Experiment, tonic::Status> {
    let id = format!("{namespace}/{name}");
    let mut last = String::new();
    loop {
        let e = get(cli, admin, &id).await?;
        if e.state != last {
            println!("experiment {id}: {}", e.state);
            last = e.state.clone();
        }
        if report_of(&e).state.is_some_and(State::is_final) {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report_of(e: &pb::Experiment) -> Report {
    serde_json::from_str(&e.report_json).unwrap_or_default()
}

fn as_value(e: &pb::Experiment) -> serde_json::Value {
    serde_json::json!({
        "namespace": e.namespace,
        "name": e.name,
        "state": e.state,
        "reason": e.reason,
        "report": serde_json::from_str::<serde_json::Value>(&e.report_json).unwrap_or_default(),
    })
}

fn print_report(out: Output, e: &pb::Experiment) {
    let report = report_of(e);
    match out {
        Output::Human => print!("{}", report.render(false)),
        Output::Md => print!("{}", report.render(true)),
        out => super::print_value(out, &serde_json::to_value(&report).unwrap_or_default()),
    }
}
