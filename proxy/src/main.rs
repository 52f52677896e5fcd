//! `bulwark-proxy`: `run` serves, `check` validates a config, `init` writes the iptables
//! redirect.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bulwark_proxy::control::config;
use bulwark_proxy::ops::admin::LogControl;
use bulwark_proxy::{app, init};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Parser)]
#[command(name = "bulwark-proxy", version, about = "Bulwark sidecar proxy: resilience policy for every connection")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve. Without --config, as a sidecar: transparent capture on 15001/15006, configured by
    /// BULWARK_BOOTSTRAP when set.
    Run {
        #[arg(long, short, env = "BULWARK_CONFIG")]
        config: Option<PathBuf>,
        /// Take policies from this control plane (host:port) instead of the config file.
        #[arg(long, env = "BULWARK_CONTROL_PLANE")]
        control_plane: Option<String>,
        /// Once every listener is bound, write the addresses they bound to here (JSON), e.g. to
        /// learn the ports of listeners configured with port 0.
        #[arg(long, env = "BULWARK_READY_FILE")]
        ready_file: Option<PathBuf>,
        /// Worker threads (default: one per CPU).
        #[arg(long, env = "BULWARK_WORKERS")]
        workers: Option<usize>,
        /// Log filter, e.g. `info` or `bulwark_proxy=debug`; changeable at runtime on the admin port.
        #[arg(long, env = "BULWARK_LOG", default_value = "info")]
        log: String,
    },
    /// Validate a configuration file and its policies; prints every error, exits 1 if any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the iptables redirect for transparent capture (run as root, before the app).
    Init(InitArgs),
    /// Wait until the proxy on this host answers ready (exit 0), or fail after --timeout. Holds
    /// the app back on clusters without native sidecars.
    WaitReady {
        #[arg(long, default_value = "http://127.0.0.1:15020/ready")]
        url: String,
        #[arg(long, default_value = "120s")]
        timeout: String,
    },
}

#[derive(Args)]
struct InitArgs {
    /// UID the proxy runs as; its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// GID whose connections are never redirected.
    #[arg(long)]
    proxy_gid: Option<u32>,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Ports redirected inbound (comma-separated); default every port.
    #[arg(long, value_delimiter = ',')]
    inbound_ports: Vec<u16>,
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// CIDRs never redirected outbound (comma-separated, IPv4 or IPv6).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// Redirect inbound traffic only.
    #[arg(long)]
    inbound_only: bool,
    /// Also write ip6tables rules: auto (when the host has IPv6 and ip6tables), on, off.
    #[arg(long, default_value = "auto")]
    ipv6: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Remove exactly the rules and chains `init` writes.
    #[arg(long)]
    cleanup: bool,
}

struct ReloadableFilter(reload::Handle<EnvFilter, Registry>);

impl LogControl for ReloadableFilter {
    fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
    fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
        self.0.reload(f).map_err(|e| e.to_string())
    }
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Freed memory goes back to the system within about a second, by jemalloc's own background
/// thread (the default is ten seconds, when some thread next allocates). Before any worker
/// thread exists, so every arena gets it.
fn tune_allocator() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    for key in [&b"arenas.dirty_decay_ms\0"[..], b"arena.0.dirty_decay_ms\0"] {
        let _ = key.name().write(1000isize);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // SIGHUP's default action ends the process. Until `app::run` installs the reload handler,
    // a SIGHUP (a supervisor's reload sent as the proxy starts) only sets a flag nobody reads:
    // the config is read after the handler is in place, so nothing it asked for is lost.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Default::default()) {
        eprintln!("cannot install the SIGHUP handler: {e}");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, control_plane, ready_file, workers, log } => {
            let filter = EnvFilter::try_new(&log).unwrap_or_else(|e| {
                eprintln!("invalid --log {log:?} ({e}); using info");
                EnvFilter::new("info")
            });
            let (filter, handle) = reload::Layer::new(filter);
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
                )
                .init();
            // One worker is a current-thread runtime: the same single thread without the
            // work-stealing scheduler's cross-thread bookkeeping (measured in `make bench`).
            let mut rt = match workers {
                Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let rt = match rt.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("bulwark-proxy: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let source = config::Source::from_args(config);
            match rt.block_on(app::run(source, control_plane, ready_file, Arc::new(ReloadableFilter(handle)))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulwark-proxy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config: path } => match config::load(&path, "check") {
            Ok(l) => {
                let names: Vec<String> = l.snapshot.documents.iter().map(|d| d.id()).collect();
                println!(
                    "{}: ok ({} listeners, {} policies{}{})",
                    path.display(),
                    l.config.listeners.len(),
                    names.len(),
                    if names.is_empty() { "" } else { ": " },
                    names.join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", path.display(), errors.len());
                for e in errors {
                    eprintln!("  {e}");
                }
                ExitCode::FAILURE
            }
        },
        Command::WaitReady { url, timeout } => {
            match bulwark_policy::duration::parse(&timeout)
                .map_err(|e| format!("--timeout {timeout:?}: {e}"))
                .and_then(|t| bulwark_proxy::ops::wait_ready::wait(&url, t))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulwark-proxy wait-ready: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init(a) => {
            let opts = init::Options {
                proxy_uid: a.proxy_uid,
                proxy_gid: a.proxy_gid,
                outbound_port: a.outbound_port,
                inbound_port: a.inbound_port,
                inbound_ports: a.inbound_ports,
                exclude_inbound_ports: a.exclude_inbound_ports,
                exclude_outbound_ports: a.exclude_outbound_ports,
                exclude_outbound_cidrs: a.exclude_outbound_cidrs,
                inbound_only: a.inbound_only,
            };
            let result = init::families(&a.ipv6).and_then(|f| init::apply(&opts, &f, a.cleanup, a.dry_run));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bulwark-proxy init: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
