//! `bulwarkctl`: the command line of bulwark-control.
//!
//! Exit codes: 0 done; 1 refused (invalid policy, not found); 2 bad usage; 3 the control plane
//! could not be reached.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod experiment;

use bulwark_control::inject::Action;
use bulwark_proto::v1 as pb;
use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;
use tonic::Request;

#[derive(Parser)]
#[command(name = "bulwarkctl", version, about = "Manage Bulwark policies on a control plane")]
struct Cli {
    /// Control plane address.
    #[arg(long, global = true, env = "BULWARK_SERVER", default_value = "127.0.0.1:15012")]
    server: String,
    /// Bearer token, when the control plane requires one.
    #[arg(long, global = true, env = "BULWARK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token. Without --token or --token-file, the token bulwark-control
    /// generated on this host is used when readable: $BULWARK_CONTROL_DATA/admin-token, else
    /// /var/lib/bulwark/admin-token.
    #[arg(long, global = true, env = "BULWARK_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Yaml,
    Json,
    /// Markdown (experiment reports); elsewhere the same as human.
    Md,
}

impl Output {
    fn human(self) -> bool {
        matches!(self, Output::Human | Output::Md)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create or replace the policies of FILE, every *.yaml of DIR, or standard input (-).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// What applying FILE|DIR|- would change, without changing anything.
    Diff {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// One policy, as YAML: NAMESPACE/NAME (or NAME in namespace "default").
    Get { policy: String },
    /// Every policy.
    List {
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Remove a policy.
    Delete { policy: String },
    /// Faults on a route, at runtime.
    Fault {
        #[command(subcommand)]
        action: FaultAction,
    },
    /// Connected proxies: version acknowledged, last rejection.
    Status,
    /// Guarded chaos experiments (ChaosExperiment documents).
    Experiment {
        #[command(subcommand)]
        action: experiment::ExperimentAction,
    },
    /// Add the Bulwark sidecar to the workloads of FILE or - (a multi-document YAML stream),
    /// offline: writes the result to standard output and a line per object to standard error.
    Inject {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Injection defaults (the chart's `proxy` values) as YAML.
        #[arg(long)]
        values: Option<PathBuf>,
        /// Proxy image, over the values.
        #[arg(long)]
        proxy_image: Option<String>,
        /// Control plane address the proxies connect to, over the values.
        #[arg(long)]
        control_plane: Option<String>,
        /// Re-inject workloads injected before (with another proxy image or other values):
        /// their proxy is taken out and injected anew. Without it they are left as they are.
        #[arg(long)]
        upgrade: bool,
    },
    /// Take the Bulwark sidecar out of the workloads of FILE or -, offline: the app's pods as
    /// they were before injection (edits made since are kept) on standard output.
    Uninject {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
}

#[derive(Subcommand)]
enum FaultAction {
    /// Set faults on ROUTE, written NAMESPACE/POLICY/ROUTE (or POLICY/ROUTE).
    Set {
        route: String,
        /// Abort with this HTTP status.
        #[arg(long)]
        abort: Option<u16>,
        /// Abort with this gRPC status code instead.
        #[arg(long, conflicts_with = "abort")]
        grpc_abort: Option<u16>,
        /// Share of requests aborted, in percent.
        #[arg(long, default_value_t = 100.0)]
        percent: f64,
        /// Delay before the request goes upstream, e.g. 300ms.
        #[arg(long)]
        delay: Option<String>,
        #[arg(long, default_value_t = 100.0)]
        delay_percent: f64,
        /// Drop the faults by themselves after this long, e.g. 5m.
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// Remove the faults of ROUTE.
    Clear { route: String },
}

/// Offline injection and uninjection: exit 0 with the stream on stdout, 1 when an object
/// cannot be changed (nothing is written then), 2 when the input cannot be read.
fn inject(
    file: &str,
    values: Option<&Path>,
    proxy_image: &Option<String>,
    control_plane: &Option<String>,
    action: Action,
) -> ExitCode {
    use bulwark_control::inject::{manifest, Outcome, Values};
    let mut v = match values {
        Some(path) => match Values::from_file(path) {
            Ok(v) => v,
            Err(e) => return usage(format!("--values {e}")),
        },
        None => Values::default(),
    };
    if let Some(image) = proxy_image {
        v.image = image.clone();
    }
    if let Some(cp) = control_plane {
        v.control_plane = cp.clone();
    }
    let text = match read_documents(file) {
        Ok(texts) => texts.join("---\n"),
        Err(e) => return usage(e),
    };
    let verb = if action == Action::Uninject { "uninject" } else { "inject" };
    match manifest::act_stream(&v, &text, action) {
        Ok((out, lines)) => {
            print!("{out}");
            for line in lines {
                match line.outcome {
                    Some(Outcome::Injected) => eprintln!("{} injected", line.object),
                    Some(Outcome::Reinjected) => eprintln!("{} re-injected", line.object),
                    Some(Outcome::Uninjected) => eprintln!("{} uninjected", line.object),
                    Some(Outcome::Unchanged(why)) => eprintln!("{} skipped: {why}", line.object),
                    None => eprintln!("{} unchanged: not a workload", line.object),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bulwarkctl {verb}: {file}: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("bulwarkctl: {message}");
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match find_token(&cli) {
        Ok(t) => cli.token = t,
        Err(e) => {
            eprintln!("bulwarkctl: {e}");
            return ExitCode::from(2);
        }
    }
    if let Command::Inject { file, values, proxy_image, control_plane, upgrade } = &cli.command {
        let action = if *upgrade { Action::Upgrade } else { Action::Inject };
        return inject(file, values.as_deref(), proxy_image, control_plane, action);
    }
    if let Command::Uninject { file } = &cli.command {
        return inject(file, None, &None, &None, Action::Uninject);
    }
    let channel = match Channel::from_shared(format!("http://{}", cli.server)) {
        // A server that accepts and never answers (not bulwark-control) ends in an error too.
        Ok(e) => match e
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "bulwarkctl: cannot reach the control plane at {}: {e} (set --server or BULWARK_SERVER)",
                    cli.server
                );
                return ExitCode::from(3);
            }
        },
        Err(e) => return usage(format!("--server {}: {e}", cli.server)),
    };
    let mut admin = pb::policy_admin_client::PolicyAdminClient::new(channel);
    match run(&cli, &mut admin).await {
        Ok(code) => code,
        Err(status) => {
            eprintln!("{}", failure(&cli.server, rpc_of(&cli.command), &status));
            ExitCode::from(match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => 3,
                tonic::Code::InvalidArgument => 2,
                _ => 1,
            })
        }
    }
}

/// The admin RPC a command calls (the first, for those that call several).
fn rpc_of(command: &Command) -> &'static str {
    match command {
        Command::Apply { .. } | Command::Diff { .. } => "Apply",
        Command::Get { .. } => "Get",
        Command::List { .. } => "List",
        Command::Delete { .. } => "Delete",
        Command::Fault { action: FaultAction::Set { .. } } => "SetFault",
        Command::Fault { action: FaultAction::Clear { .. } } => "ClearFault",
        Command::Status => "ListProxies",
        Command::Experiment { action } => match action {
            experiment::ExperimentAction::Run { .. } => "RunExperiment",
            experiment::ExperimentAction::List { .. } => "ListExperiments",
            experiment::ExperimentAction::Abort { .. } => "AbortExperiment",
            _ => "GetExperiment",
        },
        Command::Inject { .. } | Command::Uninject { .. } => "none",
    }
}

/// What failed, where, with the gRPC status and message, and what to try.
fn failure(server: &str, rpc: &str, status: &tonic::Status) -> String {
    let message = match status.message() {
        "" => "(no message)",
        m => m,
    };
    let mut out =
        format!("bulwarkctl: bulwark.v1.PolicyAdmin/{rpc} at {server} failed: {:?}: {message}", status.code());
    let hint = match status.code() {
        tonic::Code::Unimplemented => Some(format!(
            "{server} does not serve the admin service: this looks like bulwark-control's discovery port; the admin service is on the port given to --admin-listen (15013 in the Helm chart)"
        )),
        tonic::Code::Unauthenticated => Some(
            "pass --token or --token-file (bulwark-control keeps a generated token in DATA_DIR/admin-token)".into(),
        ),
        tonic::Code::Unavailable => Some(format!("is bulwark-control running at {server}? (set --server or BULWARK_SERVER)")),
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            Some(format!("{server} gave no answer in time: is it bulwark-control? (set --server or BULWARK_SERVER)"))
        }
        tonic::Code::Unknown | tonic::Code::Internal => Some(format!(
            "{server} did not answer as a gRPC server: is it bulwark-control? (set --server or BULWARK_SERVER)"
        )),
        _ => None,
    };
    if let Some(hint) = hint {
        out.push_str("\nbulwarkctl: ");
        out.push_str(&hint);
    }
    out
}

/// --token, else --token-file, else the token a control plane on this host generated.
fn find_token(cli: &Cli) -> Result<Option<String>, String> {
    if cli.token.is_some() {
        return Ok(cli.token.clone());
    }
    if let Some(f) = &cli.token_file {
        let t = std::fs::read_to_string(f).map_err(|e| format!("--token-file {}: {e}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    let data =
        std::env::var_os("BULWARK_CONTROL_DATA").map_or_else(|| "/var/lib/bulwark".into(), std::path::PathBuf::from);
    Ok(std::fs::read_to_string(data.join(bulwark_control::server::token::ADMIN))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn req<T>(cli: &Cli, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = &cli.token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

fn split(policy: &str) -> (String, String) {
    match policy.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => ("default".to_string(), policy.to_string()),
    }
}

/// YAML texts from a file, every *.yaml / *.yml of a directory (sorted), or standard input.
fn read_documents(source: &str) -> Result<Vec<String>, String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| format!("reading standard input: {e}"))?;
        return Ok(vec![text]);
    }
    let path = Path::new(source);
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{source}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    files.iter().map(|f| std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))).collect()
}

/// The ChaosExperiment documents of `texts` (each as its own text) and the texts of the rest.
fn split_experiments(texts: &[String]) -> (Vec<String>, Vec<String>) {
    let mut experiments = Vec::new();
    let mut rest = Vec::new();
    for text in texts {
        let docs: Vec<&str> = split_stream(text);
        let is_experiment = |d: &str| {
            yaml_serde::from_str::<yaml_serde::Value>(d)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                == Some(bulwark_policy::experiment::KIND.to_string())
        };
        if !docs.iter().any(|d| is_experiment(d)) {
            rest.push(text.clone());
            continue;
        }
        for d in docs {
            if is_experiment(d) {
                experiments.push(d.to_string());
            } else if !d.trim().is_empty() {
                rest.push(d.to_string());
            }
        }
    }
    (experiments, rest)
}

/// The documents of a YAML stream, split at `---` lines.
fn split_stream(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs
}

fn kind_name(kind: i32) -> &'static str {
    match pb::change::Kind::try_from(kind).unwrap_or(pb::change::Kind::Unspecified) {
        pb::change::Kind::Created => "created",
        pb::change::Kind::Updated => "updated",
        pb::change::Kind::Unchanged => "unchanged",
        pb::change::Kind::Deleted => "deleted",
        pb::change::Kind::Unspecified => "?",
    }
}

fn print_value(out: Output, value: &serde_json::Value) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        _ => print!("{}", yaml_serde::to_string(value).unwrap_or_default()),
    }
}

/// Prints an Apply-like answer; exit 1 when refused.
fn report(cli: &Cli, r: &pb::ApplyResponse, verb: &str) -> ExitCode {
    if !cli.output.human() {
        let v = serde_json::json!({
            "applied": r.applied,
            "revision": r.revision,
            "changes": r.changes.iter().map(|c| serde_json::json!({"policy": format!("{}/{}", c.namespace, c.name), "change": kind_name(c.kind)})).collect::<Vec<_>>(),
            "errors": r.errors.iter().map(|e| serde_json::json!({"policy": e.policy, "path": e.path, "message": e.message})).collect::<Vec<_>>(),
        });
        print_value(cli.output, &v);
    } else if r.errors.is_empty() {
        for c in &r.changes {
            println!("policy {}/{} {}{verb}", c.namespace, c.name, kind_name(c.kind));
        }
    }
    if r.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        if cli.output.human() {
            eprintln!("bulwarkctl: refused, nothing changed:");
            for e in &r.errors {
                let at = if e.path.is_empty() { String::new() } else { format!("{}: ", e.path) };
                eprintln!("  policy {}: {at}{}", e.policy, e.message);
            }
        }
        ExitCode::from(1)
    }
}

async fn run(
    cli: &Cli,
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
) -> Result<ExitCode, tonic::Status> {
    match &cli.command {
        Command::Apply { file, dry_run } => apply(cli, admin, file, *dry_run, false).await,
        Command::Diff { file } => apply(cli, admin, file, true, true).await,
        Command::Get { policy } => {
            let (namespace, name) = split(policy);
            let p = admin.get(req(cli, pb::GetRequest { namespace, name })).await?.into_inner();
            match cli.output {
                Output::Json => {
                    let v: yaml_serde::Value = yaml_serde::from_str(&p.yaml).unwrap_or_default();
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                _ => {
                    print!("{}", p.yaml);
                    for note in expired_faults(&p.yaml, std::time::SystemTime::now()) {
                        println!("# {note}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { namespace } => {
            let r = admin
                .list(req(cli, pb::ListRequest { namespace: namespace.clone().unwrap_or_default() }))
                .await?
                .into_inner();
            if cli.output.human() {
                println!("{:<40} {:>8}", "POLICY", "REVISION");
                for p in &r.policies {
                    println!("{:<40} {:>8}", format!("{}/{}", p.namespace, p.name), p.revision);
                }
            } else {
                let v = serde_json::json!({
                    "revision": r.revision,
                    "policies": r.policies.iter().map(|p| serde_json::json!({"namespace": p.namespace, "name": p.name, "revision": p.revision})).collect::<Vec<_>>(),
                });
                print_value(cli.output, &v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { policy } => {
            let (namespace, name) = split(policy);
            let r = admin
                .delete(req(cli, pb::DeleteRequest { namespace: namespace.clone(), name: name.clone() }))
                .await?
                .into_inner();
            println!("policy {namespace}/{name} deleted (revision {})", r.revision);
            Ok(ExitCode::SUCCESS)
        }
        Command::Fault { action } => fault(cli, admin, action).await,
        Command::Experiment { action } => experiment::run(cli, admin, action).await,
        Command::Inject { .. } | Command::Uninject { .. } => unreachable!("inject runs offline, before connecting"),
        Command::Status => {
            let r = admin.list_proxies(req(cli, pb::ListProxiesRequest {})).await?.into_inner();
            if cli.output.human() {
                println!("control plane version {}", r.current_version);
                println!("{:<32} {:<20} {:<10} {:<8} LAST ERROR", "PROXY", "SERVICE", "CONNECTED", "ACKED");
                for p in &r.proxies {
                    let n = p.node.clone().unwrap_or_default();
                    println!(
                        "{:<32} {:<20} {:<10} {:<8} {}",
                        n.id,
                        n.service,
                        if p.connected { "yes" } else { "no" },
                        p.acked_version,
                        p.last_error
                    );
                }
            } else {
                let v = serde_json::json!({
                    "currentVersion": r.current_version,
                    "proxies": r.proxies.iter().map(|p| {
                        let n = p.node.clone().unwrap_or_default();
                        serde_json::json!({"id": n.id, "service": n.service, "connected": p.connected, "connectedSince": p.connected_since,
                            "ackedVersion": p.acked_version, "nackedVersion": p.nacked_version, "lastError": p.last_error})
                    }).collect::<Vec<_>>(),
                });
                print_value(cli.output, &v);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn apply(
    cli: &Cli,
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
    file: &str,
    dry_run: bool,
    diff: bool,
) -> Result<ExitCode, tonic::Status> {
    let documents = match read_documents(file) {
        Ok(d) => d,
        Err(e) => return Ok(usage(e)),
    };
    // ChaosExperiment documents are run, the rest applied as policies.
    let (experiments, documents) = split_experiments(&documents);
    if !experiments.is_empty() && (dry_run || diff) {
        return Ok(usage(
            "ChaosExperiment documents cannot be dry-run or diffed; apply them, or use bulwarkctl experiment run",
        ));
    }
    let mut refused = false;
    for e in &experiments {
        refused |= experiment::start(cli, admin, e).await?.is_none();
    }
    if documents.is_empty() {
        return Ok(if refused { ExitCode::from(1) } else { ExitCode::SUCCESS });
    }
    let r = admin.apply(req(cli, pb::ApplyRequest { documents: documents.clone(), dry_run })).await?.into_inner();
    if diff && cli.output.human() && r.errors.is_empty() {
        return Ok(print_diff(cli, admin, &r, &documents).await);
    }
    let code = report(cli, &r, if dry_run { " (dry run)" } else { "" });
    Ok(if refused { ExitCode::from(1) } else { code })
}

/// For each policy that would change, the lines removed (-) and added (+).
async fn print_diff(
    cli: &Cli,
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
    r: &pb::ApplyResponse,
    documents: &[String],
) -> ExitCode {
    let mut incoming = std::collections::BTreeMap::new();
    for d in documents {
        for p in bulwark_policy::parse_documents(d, "input").unwrap_or_default() {
            incoming.insert(p.id(), yaml_serde::to_string(&p).unwrap_or_default());
        }
    }
    for c in &r.changes {
        let id = format!("{}/{}", c.namespace, c.name);
        println!("policy {id} {}", kind_name(c.kind));
        if c.kind == pb::change::Kind::Unchanged as i32 {
            continue;
        }
        let old = admin
            .get(req(cli, pb::GetRequest { namespace: c.namespace.clone(), name: c.name.clone() }))
            .await
            .map(|p| p.into_inner().yaml)
            .unwrap_or_default();
        let new = incoming.get(&id).cloned().unwrap_or_default();
        let (old_lines, new_lines): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        for l in old_lines.iter().filter(|l| !new_lines.contains(l)) {
            println!("  - {l}");
        }
        for l in new_lines.iter().filter(|l| !old_lines.contains(l)) {
            println!("  + {l}");
        }
    }
    ExitCode::SUCCESS
}

async fn fault(
    cli: &Cli,
    admin: &mut pb::policy_admin_client::PolicyAdminClient<Channel>,
    action: &FaultAction,
) -> Result<ExitCode, tonic::Status> {
    let route_of = |route: &str| -> Option<(String, String, String)> {
        let parts: Vec<&str> = route.split('/').collect();
        match parts.as_slice() {
            [ns, name, route] => Some((ns.to_string(), name.to_string(), route.to_string())),
            [name, route] => Some(("default".into(), name.to_string(), route.to_string())),
            _ => None,
        }
    };
    match action {
        FaultAction::Set { route, abort, grpc_abort, percent, delay, delay_percent, for_ } => {
            let Some((namespace, name, route)) = route_of(route) else {
                return Ok(usage(format!("{route:?}: write NAMESPACE/POLICY/ROUTE or POLICY/ROUTE")));
            };
            let mut yaml = String::new();
            match (abort, grpc_abort) {
                (Some(s), _) => yaml.push_str(&format!("abort: {{ httpStatus: {s}, percent: {percent} }}\n")),
                (None, Some(g)) => yaml.push_str(&format!("abort: {{ grpcStatus: {g}, percent: {percent} }}\n")),
                (None, None) => {}
            }
            if let Some(d) = delay {
                yaml.push_str(&format!("delay: {{ fixed: {d}, percent: {delay_percent} }}\n"));
            }
            if yaml.is_empty() {
                return Ok(usage("nothing to inject: give --abort, --grpc-abort or --delay"));
            }
            let for_milliseconds = match for_ {
                Some(f) => match bulwark_policy::duration::parse(f) {
                    // Rounded up: a fault set for 1500ms lasts at least that.
                    Ok(d) => u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1),
                    Err(e) => return Ok(usage(format!("--for: {e}"))),
                },
                None => 0,
            };
            let r = admin
                .set_fault(req(
                    cli,
                    pb::SetFaultRequest { namespace, name, route, faults_yaml: yaml, for_seconds: 0, for_milliseconds },
                ))
                .await?
                .into_inner();
            Ok(report(cli, &r, " (faults set)"))
        }
        FaultAction::Clear { route } => {
            let Some((namespace, name, route)) = route_of(route) else {
                return Ok(usage(format!("{route:?}: write NAMESPACE/POLICY/ROUTE or POLICY/ROUTE")));
            };
            let r = admin.clear_fault(req(cli, pb::ClearFaultRequest { namespace, name, route })).await?.into_inner();
            Ok(report(cli, &r, " (faults cleared)"))
        }
    }
}

/// Fault blocks of a stored policy whose `expiresAt` has passed: the proxies no longer inject
/// them, though the text still holds them until the next edit.
fn expired_faults(yaml: &str, now: std::time::SystemTime) -> Vec<String> {
    let Ok(doc) = yaml_serde::from_str::<yaml_serde::Value>(yaml) else { return Vec::new() };
    let spec = &doc["spec"];
    let routes = spec["routes"].as_sequence().map(Vec::as_slice).unwrap_or_default();
    let blocks = std::iter::once(("default".to_string(), &spec["defaults"]["faults"]))
        .chain(routes.iter().map(|r| (r["name"].as_str().unwrap_or("?").to_string(), &r["faults"])));
    blocks
        .filter_map(|(route, faults)| {
            let at = faults["expiresAt"].as_str()?;
            let t = bulwark_policy::faults::parse_rfc3339(at).ok()?;
            (t <= now).then(|| format!("faults of route {route} expired at {at}: no longer injected"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_faults_are_named() {
        let yaml = "spec:\n  defaults:\n    faults: { expiresAt: \"2026-01-01T00:00:00.000Z\" }\n  routes:\n  - name: pay\n    faults: { expiresAt: \"2099-01-01T00:00:00Z\" }\n";
        let notes = expired_faults(yaml, std::time::SystemTime::now());
        assert_eq!(notes, ["faults of route default expired at 2026-01-01T00:00:00.000Z: no longer injected"]);
    }
}
