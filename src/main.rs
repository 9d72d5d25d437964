//! `xks-bridge` command line: the daemon, the quickstart, and operator tools.

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod cli;
mod gendocs;

/// mimalloc rather than glibc's malloc: every request allocates on a tokio worker and frees
/// on another thread (the HSM worker's reply, the audit and log writers), the pattern glibc's
/// per-thread arenas handle worst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xks_bridge::config::{Config, EXIT_BAD_CONFIG};
use xks_bridge::daemon::{self, Daemon};
use xks_bridge::{logging, module_env, quickstart};

#[derive(Parser)]
#[command(
    name = "xks-bridge",
    version,
    about = "AWS KMS External Key Store proxy in front of a PKCS#11 HSM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Set up (first run) and serve a self-contained instance on a local SoftHSM2 token.
    Quickstart {
        /// Directory holding the token, certificates, credentials and config.
        #[arg(long, default_value = "quickstart")]
        dir: PathBuf,
        /// Address to listen on (first run: written to the config; later runs: overrides it).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Create the directory's contents and exit without serving.
        #[arg(long)]
        setup_only: bool,
    },
    /// Validate a configuration file and explain it; exit 0 if valid, 64 if not.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Cut AWS off (whole proxy, one keystore, one key), release, or show the state.
    #[command(subcommand)]
    KillSwitch(cli::KillSwitchCmd),
    /// Audit trail tools.
    #[command(subcommand)]
    Audit(cli::AuditCmd),
    /// Reload credentials, key selection, quotas and TLS of the running daemon (as SIGHUP does).
    Reload {
        /// Configuration file of the daemon.
        #[arg(long)]
        config: PathBuf,
    },
    /// Take the running daemon out of its load balancer's rotation and stop it, as SIGTERM
    /// does: `/ping` answers 503 for `server.drain_delay_ms` while requests are still served,
    /// then the listeners close, in-flight requests are answered and the daemon exits 0.
    Drain(cli::DrainArgs),
    /// Manage keys on the token: create, import, list, show, disable, enable, destroy.
    #[command(subcommand)]
    Keys(cli::KeysCmd),
    /// Load-test an XKS proxy (or, with --raw-token, the PKCS#11 token itself).
    Bench(xks_bridge::bench::BenchArgs),
    /// Examine a token before using it: mechanisms, IV mode, tag failures, data objects,
    /// sessions, latency, configured keys; prints a verdict and a `[[tokens]]` snippet (exit 0
    /// usable, 1 not, 69 cannot run).
    Doctor(cli::DoctorArgs),
    /// Write man pages and shell completions (packaging; see scripts/package.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/man1/` and `completions/` into.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config } => load(&config).and_then(|cfg| serve(cfg, &config, None)),
        Command::KillSwitch(cmd) => cli::kill_switch(cmd),
        Command::Audit(cli::AuditCmd::Verify {
            require_start,
            anchor,
            checkpoints,
            files,
        }) => cli::audit_verify(
            &files,
            &cli::VerifyChecks {
                require_start,
                anchors: anchor,
                checkpoints,
            },
        ),
        Command::Reload { config } => cli::reload(&config),
        Command::Keys(cmd) => cli::keys(cmd),
        Command::Drain(args) => cli::drain(args),
        Command::Quickstart {
            dir,
            listen,
            setup_only,
        } => run_quickstart(&dir, listen, setup_only),
        Command::CheckConfig { config } => check_config(&config),
        Command::Bench(args) => xks_bridge::bench::run(args).map_err(|e| (e.exit_code(), e.to_string())),
        Command::Doctor(args) => cli::doctor(args),
        Command::GenerateDocs { out } => {
            gendocs::generate(<Cli as clap::CommandFactory>::command(), &out).map_err(|e| (1, e.to_string()))
        }
    };
    match code {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("xks-bridge: {msg}");
            ExitCode::from(code as u8)
        }
    }
}

type CliResult = Result<(), (i32, String)>;

fn load(path: &Path) -> Result<Config, (i32, String)> {
    Config::load(path).map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))
}

/// Module environment must be in place before any module is loaded; this restarts the process
/// with it if it is not, so it runs before any output.
fn apply_module_env(cfg: &Config) -> CliResult {
    module_env::ensure(cfg.tokens.iter().flat_map(|t| &t.module_env))
        .map_err(|e| (EXIT_BAD_CONFIG, e.to_string()))
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, (i32, String)> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| (71, format!("cannot start the async runtime: {e}")))
}

fn serve(cfg: Config, path: &Path, quickstart: Option<quickstart::Layout>) -> CliResult {
    apply_module_env(&cfg)?;
    let _log = logging::init(&cfg.logging);
    let rt = runtime(cfg.server.runtime_threads())?;
    rt.block_on(async move {
        let d = Daemon::start(&cfg, Some(path.to_owned()))
            .await
            .map_err(|e| (e.exit_code, e.message))?;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        for a in d.local_addrs() {
            outln!("xks-bridge listening on {scheme}://{a}");
        }
        if let Some(m) = d.metrics_addr() {
            outln!("xks-bridge metrics on http://{m}/metrics");
        }
        if let Some(layout) = quickstart {
            let banner = quickstart::publish(&layout, &cfg, d.local_addrs()[0], d.metrics_addr())
                .map_err(|e| (73, e.to_string()))?;
            outln!("{banner}");
        }
        d.run(daemon::shutdown_on_signals()).await;
        Ok(())
    })
}

fn run_quickstart(dir: &Path, listen: Option<SocketAddr>, setup_only: bool) -> CliResult {
    let layout = quickstart::Layout::new(dir).map_err(|e| (73, e.to_string()))?;
    let default_listen: SocketAddr = ([127, 0, 0, 1], 8443).into();
    let config = quickstart::ensure_setup(&layout, listen.unwrap_or(default_listen))
        .map_err(|e| (73, e.to_string()))?;
    let mut cfg = load(&config)?;
    if setup_only {
        outln!(
            "quickstart ready in {} (config {})",
            layout.dir.display(),
            config.display()
        );
        return Ok(());
    }
    if let Some(l) = listen {
        cfg.server.listen = vec![l];
    }
    serve(cfg, &config, Some(layout))
}

fn check_config(path: &Path) -> CliResult {
    let cfg = load(path)?;
    let _log = logging::init(&cfg.logging); // so secret-file permission warnings are shown
    for (i, t) in cfg.tokens.iter().enumerate() {
        t.load_pin()
            .map_err(|e| (EXIT_BAD_CONFIG, format!("tokens[{i}].pin: {e}")))?;
    }
    for (i, k) in cfg.keystores.iter().enumerate() {
        for (j, c) in k.credentials.iter().enumerate() {
            c.load_secret().map_err(|e| {
                (
                    EXIT_BAD_CONFIG,
                    format!("keystores[{i}].credentials[{j}].secret: {e}"),
                )
            })?;
        }
    }
    outln!("{}: valid", path.display());
    let scheme = if cfg.tls.is_some() {
        "https"
    } else {
        "http (plain, behind a TLS load balancer only)"
    };
    outln!("  listeners: {:?} over {scheme}", cfg.server.listen);
    outln!(
        "  fleet: xksProxyFleetSize {}; on stop /ping answers 503 for {} ms, then in-flight requests get up to {} ms",
        cfg.server.fleet_size,
        cfg.server.drain_delay_ms,
        cfg.server.drain_grace_ms
    );
    for t in &cfg.tokens {
        outln!(
            "  token {:?}: label {:?} via {}, profile {}, IV {}, {} workers, queue {}, deadline {} ms, PIN from {}",
            t.name,
            t.token_label,
            t.module.display(),
            t.profile.name(),
            t.effective_iv_source().name(),
            t.workers,
            t.queue_depth,
            t.request_timeout_ms,
            t.pin.describe()
        );
    }
    for k in &cfg.keystores {
        let keys = match (&k.key_pattern, k.allowed_keys.len()) {
            (Some(p), n) => format!("pattern {p:?} + {n} listed keys"),
            (None, n) => format!("{n} listed keys"),
        };
        outln!(
            "  keystore {:?} on token {:?}: {} credential(s), {keys}",
            k.api_base(),
            k.token,
            k.credentials.len()
        );
    }
    outln!(
        "  limits: plaintext {} B, AAD {} B, body {} B",
        cfg.limits.max_plaintext_bytes,
        cfg.limits.max_aad_bytes,
        cfg.limits.max_body_bytes
    );
    Ok(())
}
