//! The `permgate` binary: `serve`, `check-config`, `demo`, `sample-crm`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use log::{error, info};

use permgate::config::{Config, ConfigError};
use permgate::proxy::{self, Live};
use permgate::snapshot::Snapshot;

#[derive(Parser)]
#[command(
    name = "permgate",
    version,
    about = "Authorization gateway for legacy CRM HTTP APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Override `listen.address` (e.g. 0.0.0.0:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Override `upstream.address` (host:port of the CRM).
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Load and validate a config, its catalogue and its snapshot; print a summary, or every
    /// error with its file, line and field (exit status 1).
    CheckConfig {
        /// The config file (TOML).
        file: PathBuf,
    },
    /// Start the bundled sample CRM and the gateway in front of it with the demo config, and
    /// print ready-to-paste curl commands.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Run only the bundled sample CRM (for the bench harness or manual tests).
    SampleCrm {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
}

fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

/// Apply command-line overrides to a loaded config.
fn override_addresses(
    config: &mut Config,
    listen: Option<String>,
    upstream: Option<String>,
) -> Result<(), String> {
    if let Some(l) = listen {
        l.parse::<SocketAddr>()
            .map_err(|_| format!("--listen '{l}' is not an IP:port address"))?;
        config.listen.address = l;
    }
    if let Some(u) = upstream {
        config.upstream.address = u
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("--upstream '{u}' is not a resolvable host:port"))?;
    }
    Ok(())
}

/// Load the snapshot a config names. Errors are logged; the gateway then starts not ready.
fn load_snapshot(config: &Config) -> Result<Snapshot, Vec<ConfigError>> {
    let file = config.snapshot_path.display().to_string();
    let text = std::fs::read_to_string(&config.snapshot_path).map_err(|e| {
        vec![ConfigError::new(
            &file,
            None,
            "",
            format!("cannot read: {e}"),
        )]
    })?;
    Snapshot::build(&file, &text, &config.catalog)
}

fn serve(config: Config) -> ExitCode {
    let snapshot = match load_snapshot(&config) {
        Ok(s) => {
            info!(
                "snapshot {} loaded: {} users, {} custom roles",
                s.version,
                s.user_count(),
                s.custom_role_count()
            );
            Some(Arc::new(s))
        }
        Err(errors) => {
            for e in &errors {
                error!("snapshot refused: {e}");
            }
            error!("no valid snapshot: protected routes answer 503 until one is loaded");
            None
        }
    };
    let live = Arc::new(ArcSwap::from_pointee(Live {
        config: Arc::new(config),
        snapshot,
    }));
    proxy::run(live)
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            upstream,
        } => {
            init_logging();
            let mut cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&errors);
                    eprintln!("the config was refused; nothing was started");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = override_addresses(&mut cfg, listen, upstream) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            serve(cfg)
        }
        Command::CheckConfig { file } => {
            let config = match Config::load(&file) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&errors);
                    eprintln!("{} error(s); the config is refused", errors.len());
                    return ExitCode::from(1);
                }
            };
            match load_snapshot(&config) {
                Ok(s) => {
                    println!("config {} (hash {}): OK", config.file, config.hash);
                    println!("  routes:      {}", config.routes.len());
                    println!(
                        "  permissions: {} in the catalogue",
                        config.catalog.permissions().len()
                    );
                    println!(
                        "  roles:       {} presets, {} custom",
                        config.catalog.roles().len(),
                        s.custom_role_count()
                    );
                    println!("  users:       {}", s.user_count());
                    println!(
                        "  snapshot:    {} ({})",
                        config.snapshot_path.display(),
                        s.version
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    print_errors(&errors);
                    eprintln!("{} error(s); the snapshot is refused", errors.len());
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo { listen } => {
            init_logging();
            match permgate::demo::prepare(&listen) {
                Ok(config) => serve(config),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::SampleCrm { listen } => {
            init_logging();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            info!("sample CRM listening on {listen}");
            match rt.block_on(permgate::sample_crm::serve(
                listen,
                permgate::sample_crm::CrmOptions::default(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
