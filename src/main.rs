//! The `permgate` binary: `serve`, `check-config`, `demo`, `sample-crm`.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::error;

use permgate::config::{Config, ConfigError, Engine};
use permgate::control;
use permgate::live::{load_startup_snapshot, Overrides, Startup, State};
use permgate::plane;

// mimalloc: the bench profile showed glibc malloc at 16% of the gateway's CPU per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Binary upgrade: take the listening socket from the running permgate (send it
        /// SIGQUIT once this one is waiting) instead of binding it.
        #[arg(long)]
        upgrade: bool,
        /// Override `listen.engine` (pingora or hyper).
        #[arg(long)]
        engine: Option<String>,
        /// Override `listen.h1_lane` (on or off).
        #[arg(long)]
        h1_lane: Option<String>,
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
    /// Explain the decision for one call by a user: route, permission, roles, and why.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// The caller's user id (omit for a call without credentials).
        #[arg(long)]
        user: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The request body (a JSON file), for routes that inspect bodies.
        #[arg(long)]
        body: Option<PathBuf>,
        /// The call's tenant (a tenant-aware config, `[tenants]`).
        #[arg(long)]
        tenant: Option<String>,
        method: String,
        /// The request target, e.g. /api/v1/campaigns/7
        path: String,
    },
    /// Run a file of expected decisions offline; exit 1 on any mismatch (CI for a policy repo).
    Test {
        /// A TOML file: `config = "permgate.toml"` and `[[case]]` entries.
        file: PathBuf,
    },
    /// Probe a running permgate's admin `/healthz` (for a container HEALTHCHECK): exit 0 when it
    /// answers 200 within 2 s, 1 otherwise.
    Healthcheck {
        /// The admin listener (`admin.listen`).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Snapshot tools.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Run only the bundled sample CRM (for the bench harness or manual tests).
    SampleCrm {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Write the snapshot JSON the config's `[snapshot.database]` source would build now (one
    /// full load, checked against the config's catalogue), for CI and debugging.
    Export {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Write here (replaced whole, only once the snapshot is valid) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// One line on stderr; a closed stderr is ignored (`eprintln!` would panic).
fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Print a command's output, then exit with `code`. A closed stdout (the reader left: `| head
/// -1`) ends the output quietly and keeps `code`; any other write error is reported (exit 2).
fn print_out(text: &str, code: ExitCode) -> ExitCode {
    match permgate::print_stdout(text) {
        Ok(()) => code,
        Err(e) => {
            stderr_line(&format!("error: cannot write the output: {e}"));
            ExitCode::from(2)
        }
    }
}

fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        stderr_line(&format!("error: {e}"));
    }
}

/// Parse the command-line overrides.
fn overrides(
    listen: Option<String>,
    upstream: Option<String>,
    engine: Option<String>,
    h1_lane: Option<String>,
) -> Result<Overrides, String> {
    let engine = match engine.as_deref() {
        None => None,
        Some("pingora") if cfg!(feature = "pingora") => Some(Engine::Pingora),
        Some("pingora") => {
            return Err(
                "--engine pingora: this build has no Pingora engine (cargo feature \
                        `pingora`)"
                    .into(),
            )
        }
        Some("hyper") => Some(Engine::Hyper),
        Some(e) => return Err(format!("--engine '{e}': pingora or hyper")),
    };
    let h1_lane = match h1_lane.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(v) => return Err(format!("--h1-lane '{v}': on or off")),
    };
    if let Some(l) = &listen {
        l.parse::<SocketAddr>()
            .map_err(|_| format!("--listen '{l}' is not an IP:port address"))?;
    }
    let upstream = match upstream {
        None => None,
        Some(u) => Some(
            u.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("--upstream '{u}' is not a resolvable host:port"))?,
        ),
    };
    Ok(Overrides {
        listen,
        upstream,
        engine,
        h1_lane,
    })
}

/// Load the config and snapshot, start the control thread, and run the proxy.
fn serve(config: &Path, overrides: Overrides, upgrade: bool) -> ExitCode {
    serve_on(config, overrides, upgrade, None)
}

/// [`serve`]; the hyper engine on `listener` when given (already listening: the demo binds its
/// port before it prints the port in its banner).
fn serve_on(
    config: &Path,
    overrides: Overrides,
    upgrade: bool,
    listener: Option<std::net::TcpListener>,
) -> ExitCode {
    let state = match State::load(config, overrides) {
        Ok(s) => Arc::new(s),
        Err(errors) => {
            print_errors(&errors);
            stderr_line("the config was refused; nothing was started");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = control::spawn(state.clone(), upgrade) {
        error!("cannot start the control thread (admin listener?): {e}");
        return ExitCode::from(2);
    }
    #[cfg(feature = "pingora")]
    if state.live().config.listen.engine == Engine::Pingora {
        if state.live().config.cors.is_some() {
            stderr_line("[cors] is served by the hyper engine only; nothing was started");
            return ExitCode::from(2);
        }
        if listener.is_some() {
            // (Never from the demo, whose embedded config is the hyper engine's.)
            stderr_line(
                "a socket already bound is served by the hyper engine only; nothing was started",
            );
            return ExitCode::from(2);
        }
        permgate::proxy::run(state, upgrade);
    }
    match listener {
        Some(l) => plane::run_on(state, Some(l)),
        None => plane::run(state, upgrade),
    }
}

/// Load a config and its snapshot for the offline tools; errors are printed.
fn load_offline(path: &Path) -> Result<(Config, permgate::snapshot::Snapshot), ExitCode> {
    let config = permgate::config::load(path).map_err(|errors| {
        print_errors(&errors);
        ExitCode::from(2)
    })?;
    match load_startup_snapshot(&config) {
        Startup::Source(s, _) | Startup::Persisted(s, _, _, _) => Ok((config, s)),
        Startup::Nothing(errors) | Startup::Mismatch(errors) => {
            for e in &errors {
                stderr_line(&format!("error: {e}"));
            }
            Err(ExitCode::from(2))
        }
    }
}

fn init_logging() {
    permgate::diagnostics::init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            upstream,
            upgrade,
            engine,
            h1_lane,
        } => {
            init_logging();
            match overrides(listen, upstream, engine, h1_lane) {
                Ok(o) => serve(&config, o, upgrade),
                Err(e) => {
                    stderr_line(&format!("error: {e}"));
                    ExitCode::from(2)
                }
            }
        }
        Command::CheckConfig { file } => {
            let config = match permgate::config::load(&file) {
                Ok(c) => c,
                Err(errors) => {
                    print_errors(&errors);
                    stderr_line(&format!("{} error(s); the config is refused", errors.len()));
                    return ExitCode::from(1);
                }
            };
            match load_startup_snapshot(&config) {
                Startup::Source(s, _) => print_out(
                    &format!(
                        "config {} (hash {}): OK\n  routes:      {}\n  permissions: {} in the \
                         catalogue\n  roles:       {} presets, {} custom\n  users:       {}{}\n  \
                         snapshot:    {} ({})\n{}{}{}",
                        config.file,
                        config.hash,
                        config.routes.len(),
                        config.catalog.permissions().len(),
                        config.catalog.roles().len(),
                        s.custom_role_count(),
                        s.user_count(),
                        match s.service_count() {
                            0 => String::new(),
                            n => format!(" (and {n} service principal(s))"),
                        },
                        config.snapshot.path.display(),
                        s.version,
                        passthrough_notes(&config),
                        permgate::config::resource_summary(&config),
                        config
                            .identity
                            .notes()
                            .iter()
                            .map(|n| format!("  {n}\n"))
                            .collect::<String>()
                    ),
                    ExitCode::SUCCESS,
                ),
                Startup::Persisted(_, _, _, errors)
                | Startup::Nothing(errors)
                | Startup::Mismatch(errors) => {
                    for e in &errors {
                        stderr_line(&format!("error: {e}"));
                    }
                    stderr_line(&format!(
                        "{} error(s); the snapshot is refused",
                        errors.len()
                    ));
                    ExitCode::from(1)
                }
            }
        }
        Command::Explain {
            config,
            user,
            json,
            body,
            tenant,
            method,
            path,
        } => match load_offline(&config) {
            Err(code) => code,
            Ok((cfg, snapshot)) => {
                let body = match body.map(std::fs::read).transpose() {
                    Ok(b) => b,
                    Err(e) => {
                        stderr_line(&format!("error: --body: {e}"));
                        return ExitCode::from(2);
                    }
                };
                let e = permgate::explain::explain_in(
                    &cfg,
                    &snapshot,
                    &method,
                    &path,
                    user.as_deref(),
                    tenant.as_deref(),
                    body.as_deref(),
                );
                let text = if json {
                    serde_json::to_string_pretty(&e.json).unwrap_or_default() + "\n"
                } else {
                    e.text()
                };
                print_out(
                    &text,
                    if e.allowed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    },
                )
            }
        },
        Command::Test { file } => {
            let label = file.display().to_string();
            let cases: permgate::explain::CaseFile = match std::fs::read_to_string(&file)
                .map_err(|e| format!("{label}: cannot read: {e}"))
                .and_then(|t| toml::from_str(&t).map_err(|e| format!("{label}: {e}")))
            {
                Ok(c) => c,
                Err(e) => {
                    stderr_line(&format!("error: {e}"));
                    return ExitCode::from(2);
                }
            };
            let base = file.parent().unwrap_or_else(|| Path::new("."));
            match load_offline(&base.join(&cases.config)) {
                Err(code) => code,
                Ok((cfg, snapshot)) => {
                    let results = permgate::explain::run_cases(&cfg, &snapshot, &cases.cases);
                    let failed: Vec<&String> =
                        results.iter().filter_map(|r| r.as_ref().err()).collect();
                    let mut text = String::new();
                    for f in &failed {
                        text.push_str(&format!("FAIL {f}\n"));
                    }
                    text.push_str(&format!(
                        "{} passed, {} failed\n",
                        results.len() - failed.len(),
                        failed.len()
                    ));
                    print_out(
                        &text,
                        if failed.is_empty() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        },
                    )
                }
            }
        }
        Command::Demo { listen } => {
            init_logging();
            match permgate::demo::prepare(&listen) {
                Ok((config, o, listener)) => serve_on(&config, o, false, Some(listener)),
                Err(e) => {
                    stderr_line(&format!("error: {e}"));
                    ExitCode::from(2)
                }
            }
        }
        Command::Healthcheck { admin } => match healthcheck(admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                stderr_line(&format!("unhealthy: {e}"));
                ExitCode::from(1)
            }
        },
        Command::Snapshot {
            action: SnapshotAction::Export { config, out },
        } => match export_snapshot(&config, out.as_deref()) {
            Ok(summary) => {
                stderr_line(&summary);
                ExitCode::SUCCESS
            }
            Err(lines) => {
                for l in &lines {
                    stderr_line(&format!("error: {l}"));
                }
                ExitCode::from(1)
            }
        },
        Command::SampleCrm { listen } => {
            init_logging();
            match permgate::demo::run_sample_crm(listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    stderr_line(&format!("error: {e}"));
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// `permgate snapshot export`: one full load from the database source, built and validated as
/// the gateway would, then written whole (stdout, or `out` through a temporary file and a
/// rename). `Err`: every problem, one per line.
fn export_snapshot(config: &Path, out: Option<&Path>) -> Result<String, Vec<String>> {
    let config = permgate::config::load(config)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let Some(db) = &config.snapshot.database else {
        return Err(vec![format!(
            "{}: snapshot.database: export reads the CRM's database; this config has no \
             [snapshot.database] (a file or URL source already is the snapshot JSON)",
            config.file
        )]);
    };
    let text = control::export_database(db).map_err(|e| vec![format!("database: {e}")])?;
    let snapshot = permgate::snapshot::Snapshot::build("database", &text, &config.catalog)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if let Some(e) = permgate::live::tenants_mismatch(&config, &snapshot, "database") {
        return Err(vec![e]);
    }
    let summary = format!(
        "snapshot {}: {} user(s), {} service principal(s)",
        snapshot.version,
        snapshot.user_count(),
        snapshot.service_count()
    );
    match out {
        None => permgate::print_stdout(&text).map_err(|e| vec![format!("stdout: {e}")])?,
        Some(path) => {
            let tmp = path.with_extension("tmp-export");
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| vec![format!("{}: {e}", path.display())])?;
        }
    }
    Ok(summary)
}

/// `GET /healthz` on the admin listener with a plain socket (no runtime, no TLS): the status line
/// must say 200.
fn healthcheck(admin: SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&admin, timeout)
        .map_err(|e| format!("{admin}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("{admin}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{admin}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
        _ => Err(format!(
            "{admin}: /healthz answered {:?}",
            line.lines().next().unwrap_or("")
        )),
    }
}

/// One `check-config` line per route whose credentials permgate does not check.
fn passthrough_notes(config: &permgate::config::Config) -> String {
    config
        .routes
        .routes()
        .iter()
        .filter(|r| r.value.passthrough)
        .map(|r| {
            format!(
                "  route '{}' ({}): credentials = \"passthrough\": public for permgate, its \
                 Authorization and API-key header reach the CRM NOT verified\n",
                r.value.name, r.origin
            )
        })
        .collect()
}
