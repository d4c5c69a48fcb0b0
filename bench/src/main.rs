//! `permgate-bench`: load-test permgate, side by side with the alternatives, or any deployed
//! gateway. Performance claims of the project live here, never in timed tests.
//!
//! # Layout
//!
//! - [`scenario`]: scenario files (`bench/scenarios/*.toml`) compiled into request plans.
//! - [`load`]: the load generator (hyper client; closed and open loop; HTTP/1.1 and h2c).
//! - [`procstat`]: a process's CPU time and memory from /proc.
//! - [`peers`]: the processes of a side-by-side run and their generated configs; tokens.
//! - [`suite`]: the side-by-side run (`permgate-bench suite`).
//! - [`report`]: the markdown table, the JSON file and the SVG chart.
//! - [`stub`]: a minimal upstream, for runs without the sample CRM.
//! - [`snapshot_scale`]: the snapshot at scale (build, memory, incremental batches), in process.
//! - [`swaps`]: proxied calls during continuous snapshot swaps vs at rest.

// A measuring tool, not the gateway: a run whose setup fails (a peer that does not start, a
// port, a file) stops with the message of its unwrap/expect/panic. The workspace's other lints
// (no unsafe, at forbid) hold here as everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The gateway's allocator (bench/Cargo.toml says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod load;
mod peers;
mod procstat;
mod report;
mod scenario;
mod snapshot_scale;
mod stub;
mod suite;
mod swaps;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::load::{LoadOptions, Mode, Protocol};
use crate::peers::{JwtKey, MintedTokens, TokenFile};
use crate::scenario::{generated_user, Credentials, Plan, Scenario};

#[derive(Parser)]
#[command(
    name = "permgate-bench",
    version,
    about = "Load-test permgate side by side with direct, pass-through, nginx and HAProxy, or load-test a deployed gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The side-by-side run: start the sample CRM, permgate (authz and pass-through), nginx and
    /// HAProxy on loopback; run every scenario on each, alternating rounds; print the table,
    /// write JSON and SVG.
    Suite(suite::SuiteArgs),
    /// Load-test one target URL (your own deployment) with one scenario.
    Load(LoadArgs),
    /// Print a token file (`ROLE TOKEN` lines) for a scenario's users, minted with an HS256 key.
    Tokens(TokensArgs),
    /// The snapshot at scale, in this process: build time, resident bytes per record, time to
    /// apply batches of incremental changes.
    Snapshot(snapshot_scale::SnapshotArgs),
    /// Proxied calls while the snapshot is swapped every few milliseconds, against steady
    /// state: p99 ratio and failures.
    Swaps(swaps::SwapsArgs),
    /// Run the minimal stub upstream (used by `suite --upstream stub`).
    #[command(hide = true)]
    StubUpstream {
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// How to mint HS256 tokens (defaults: the demo config's key).
#[derive(Args, Clone)]
struct KeyArgs {
    /// HS256 secret (default: the demo config's).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// `kid` header (default: the demo's when the secret is the demo's, else none).
    #[arg(long)]
    jwt_kid: Option<String>,
    #[arg(long, default_value = permgate::demo::DEMO_ISSUER)]
    jwt_issuer: String,
    #[arg(long, default_value = permgate::demo::DEMO_AUDIENCE)]
    jwt_audience: String,
    /// Token lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    jwt_ttl: u64,
}

impl KeyArgs {
    fn key(&self) -> JwtKey {
        let mut k = JwtKey::demo();
        if let Some(s) = &self.jwt_secret {
            k.secret = s.clone();
            k.kid = None;
        }
        if let Some(kid) = &self.jwt_kid {
            k.kid = Some(kid.clone());
        }
        k.issuer = self.jwt_issuer.clone();
        k.audience = self.jwt_audience.clone();
        k.ttl_secs = self.jwt_ttl;
        k
    }
}

#[derive(Args)]
struct LoadArgs {
    /// The gateway's base URL: `http://host:port` or `https://host:port` (TLS with rustls;
    /// `--http2` then negotiates h2 by ALPN).
    #[arg(long)]
    target: String,
    /// PEM CA bundle to trust for an https target (default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// A scenario file (see bench/scenarios/).
    #[arg(long)]
    scenario: PathBuf,
    /// `KEY TOKEN` lines: KEY is a role id, `user:<id>`, or `*`. Without it, tokens are minted
    /// with the key options below.
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Open loop at this many requests per second (latency from the intended send time).
    /// Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// HTTP/2 instead of HTTP/1.1 (cleartext: prior knowledge; https: by ALPN).
    #[arg(long)]
    http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many requests (warm-up included).
    #[arg(long)]
    requests: Option<u64>,
    /// The target does not authorize: check the scenario's `expect_plain` instead of `expect`.
    #[arg(long)]
    plain: bool,
    /// Measure the CPU time of this local process (the gateway's pid) per request.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct TokensArgs {
    #[arg(long)]
    scenario: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
}

/// `(address, authority, https?)` of a target URL.
fn target_addr(target: &str) -> Result<(SocketAddr, String, bool), String> {
    let (rest, https) = match (
        target.strip_prefix("http://"),
        target.strip_prefix("https://"),
    ) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("--target '{target}': an http:// or https:// URL")),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else if https {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve '{with_port}'"))?;
    Ok((addr, authority.to_string(), https))
}

fn load_command(a: LoadArgs) -> Result<(), String> {
    let scenario = Scenario::load(&a.scenario)?;
    let (addr, authority, https) = target_addr(&a.target)?;
    let tls = if https {
        // The name to verify: the authority without its port (brackets kept off IPv6).
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        Some(load::TlsTarget::new(host, a.ca_file.as_deref(), a.http2)?)
    } else {
        None
    };
    let creds: Box<dyn Credentials> = match &a.token_file {
        Some(f) => Box::new(TokenFile::load(f)?),
        None => Box::new(MintedTokens::new(a.key.key())),
    };
    let plan = Arc::new(Plan::build(&scenario, creds.as_ref(), !a.plain)?);
    let opts = LoadOptions {
        addr,
        authority,
        protocol: if a.http2 { Protocol::H2 } else { Protocol::H1 },
        mode: match a.rate {
            Some(rate) => Mode::Open { rate },
            None => Mode::Closed,
        },
        connections: a.connections,
        streams: a.streams,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        max_requests: a.requests,
        progress: Some(scenario.name.clone()),
        tls,
        connection_per_call: false,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let ticks = procstat::clock_ticks();
    let mut cpu = (None, None);
    let result = rt.block_on(load::run(plan, opts.clone(), |phase| {
        let t = a.pid.and_then(|p| procstat::cpu_time(p, ticks));
        match phase {
            load::Phase::MeasureStart => cpu.0 = t,
            load::Phase::Stop => cpu.1 = t,
        }
    }));
    let cpu = match cpu {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64()),
        _ => None,
    };
    let round = report::Round::new(0, &result, cpu, None);
    let mode = match opts.mode {
        Mode::Closed => format!("closed loop, {} connections", opts.connections),
        Mode::Open { rate } => format!(
            "open loop at {rate} req/s, {} connections",
            opts.connections
        ),
    };
    println!("| target | scenario | mode | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | requests | unexpected status | transport errors |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {mode} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        a.target,
        scenario.name,
        result.throughput(),
        result.quantile_us(0.5),
        result.quantile_us(0.9),
        result.quantile_us(0.99),
        result.quantile_us(0.999),
        result.hist.max(),
        round
            .cpu_us_per_req
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(|| "–".into()),
        result.requests,
        result.unexpected,
        result.transport_errors.values().sum::<u64>(),
    );
    let st: Vec<String> = result
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    println!("\nstatuses: {}", st.join(" "));
    if !result.transport_errors.is_empty() {
        println!("transport errors: {:?}", result.transport_errors);
    }
    if let Some(path) = &a.json {
        let v = serde_json::json!({
            "target": a.target, "scenario": scenario.name, "mode": mode,
            "p90_us": result.quantile_us(0.9), "p999_us": result.quantile_us(0.999),
            "max_us": result.hist.max(), "result": round,
        });
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn tokens_command(a: TokensArgs) -> Result<(), String> {
    let scenario = Scenario::load(&a.scenario)?;
    let key = a.key.key();
    println!(
        "# {} — generated by permgate-bench tokens; valid {} s",
        scenario.name, key.ttl_secs
    );
    for (role, n) in &scenario.population {
        for i in 0..*n {
            println!("{role} {}", key.mint(&generated_user(role, i), role)?);
        }
    }
    let minted = MintedTokens::new(key);
    let mut named: Vec<&str> = scenario
        .requests
        .iter()
        .filter_map(|r| r.user.as_deref())
        .collect();
    named.sort_unstable();
    named.dedup();
    for u in named {
        let v = minted.for_user(u)?;
        let t = v.to_str().unwrap_or("").trim_start_matches("Bearer ");
        println!("user:{u} {t}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Suite(a) => suite::run(a),
        Command::Load(a) => load_command(a),
        Command::Tokens(a) => tokens_command(a),
        Command::Snapshot(a) => snapshot_scale::run(a),
        Command::Swaps(a) => swaps::run(a),
        Command::StubUpstream { listen } => tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(stub::serve(listen)).map_err(|e| e.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Expect;

    /// Every shipped scenario's `expect` agrees with permgate's own decision on the config and
    /// snapshot the suite gives `permgate-authz` (so a failing expectation in a run is the
    /// gateway's or the CRM's doing, not the file's); so does a bulk call's
    /// `expect_header` `x-permgate-removed-count`.
    #[test]
    fn scenario_expectations_match_the_policy() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let scenarios = Scenario::load_dir(&dir).unwrap();
        let population = scenario::merged_population(&scenarios);
        let tmp = std::env::temp_dir().join(format!("permgate-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let spec = scenario::SnapshotSpec::merged(&scenarios).unwrap();
        let snapshot_text = peers::snapshot_for(&population, &spec).unwrap();
        std::fs::write(tmp.join("snapshot.json"), &snapshot_text).unwrap();
        let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let tuning = peers::GatewayTuning {
            threads: 1,
            pool_size: 64,
            tls: None,
        };
        let config_text = peers::permgate_config(a, a, &tuning, true, "hyper").unwrap();
        let config = permgate::config::Config::parse("permgate.toml", &config_text, &tmp).unwrap();
        let snapshot =
            permgate::snapshot::Snapshot::build("snapshot.json", &snapshot_text, &config.catalog)
                .unwrap();
        let creds = MintedTokens::new(JwtKey::demo());
        let mut rng = fastrand::Rng::with_seed(3);
        for s in &scenarios {
            for r in &s.requests {
                let auth = match (&r.role, &r.user) {
                    (Some(role), _) => creds.for_role(role, 1).unwrap().remove(0),
                    (_, Some(u)) => creds.for_user(u).unwrap(),
                    _ => continue,
                };
                let mut path = String::new();
                scenario::PathTemplate::parse(&r.path)
                    .unwrap()
                    .render(&mut rng, &mut path);
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, auth);
                let method = http::Method::from_bytes(r.method.as_bytes()).unwrap();
                let d = permgate::policy::decide(
                    &config,
                    Ok(&snapshot),
                    &permgate::policy::Request {
                        method: &method,
                        target: path.as_bytes(),
                        headers: &headers,
                        peer: None,
                        wire: Default::default(),
                    },
                );
                let expect = Expect::from_spec(r.expect.as_ref().unwrap()).unwrap();
                match d {
                    Ok(permit) => {
                        assert!(
                            expect.matches(200) || expect.matches(201) || expect.matches(204),
                            "{}: {} {path} is allowed",
                            s.name,
                            r.method
                        );
                        let removed = r.expect_header.get("x-permgate-removed-count");
                        let inspect = permit.route.and_then(|i| {
                            permgate::policy::route_info(&config, i).inspect.as_deref()
                        });
                        if let (Some(removed), Some(inspect), Some(caller), Some(body)) =
                            (removed, inspect, permit.caller, &r.body)
                        {
                            let body = scenario::expand_body(body).unwrap();
                            let fwd = permgate::inspect::check_body(
                                &snapshot,
                                &config.catalog,
                                caller.user,
                                inspect,
                                body.as_bytes(),
                            )
                            .unwrap_or_else(|d| panic!("{}: body refused: {d:?}", s.name));
                            assert_eq!(
                                fwd.removed_ids.len().to_string(),
                                *removed,
                                "{}: removed count",
                                s.name
                            );
                        } else {
                            assert!(removed.is_none(), "{}: no bulk check to remove", s.name);
                        }
                    }
                    Err(denied) => assert!(
                        expect.matches(denied.rejection.status),
                        "{}: {} {path} is denied {}",
                        s.name,
                        r.method,
                        denied.rejection.status
                    ),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
