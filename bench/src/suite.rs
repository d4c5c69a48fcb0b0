//! The side-by-side run: every variant in front of the same upstream, in one process tree,
//! scenarios run in alternating rounds (the variant order rotates each round, so no variant
//! always runs first or last), ratios computed within the run.
//!
//! Why one file (~930 lines): one run is one sequence — the arguments, starting every peer with
//! its generated config (`start_peers`, a quarter of the file), the alternating rounds, and the
//! report with the thread-scaling table — over the same local state (the peers, the plans, the
//! CPU pinning). The pieces that stand alone already live apart: the load generator
//! ([`crate::load`]), the peers' configs ([`crate::peers`]), the report ([`crate::report`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::load::{self, LoadOptions, Mode, Phase, Protocol};
use crate::peers::{self, GatewayTuning, JwtKey, MintedTokens, Proc, TlsFiles};
use crate::procstat;
use crate::report::{Cell, Machine, Memory, Report, Round};
use crate::scenario::{merged_population, Credentials, Plan, Scenario, SnapshotSpec};

const ALL_VARIANTS: &str = "direct,permgate-authz,permgate-pass,permgate-hyper,permgate-hyper-pass,nginx,haproxy-authz,haproxy-plain";

#[derive(Args, Clone)]
pub struct SuiteArgs {
    /// The permgate binary (default: `permgate` next to this binary, i.e. the same build).
    #[arg(long)]
    permgate_bin: Option<PathBuf>,
    /// Folder of scenario files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
    scenarios: PathBuf,
    /// Only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Variants to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = ALL_VARIANTS)]
    variants: Vec<String>,
    /// Protocols (comma-separated: h1, h2).
    #[arg(long, value_delimiter = ',', default_value = "h1")]
    protocols: Vec<String>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per round (keep ≤ 20).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured seconds before each round.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Client connections (closed loop: also the concurrency).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Open-loop phase at this fraction of permgate pass-through's closed-loop rate, on the
    /// `--open-loop-scenario` (0: skip).
    #[arg(long, default_value_t = 0.5)]
    open_loop_fraction: f64,
    #[arg(long, default_value = "allowed-get")]
    open_loop_scenario: String,
    /// Idle keep-alive connections to hold against each proxy for the memory figure (0: skip).
    /// Needs `ulimit -n` above this plus a few hundred.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Worker threads of every proxy: permgate `listen.threads`, nginx `worker_processes`,
    /// HAProxy `nbthread`. A list (`1,2`) runs the whole suite once per count (peers restarted)
    /// and ends with a scaling table: throughput and CPU per call at each count, and the ratio.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Every proxy terminates TLS with one test certificate generated for the run (permgate
    /// `[listen.tls]`, nginx `ssl`, HAProxy `ssl crt`); `direct` is left out.
    #[arg(long)]
    tls: bool,
    /// With `--tls`: `keepalive` (calls on warm keep-alive connections), `full` (a new
    /// connection per call, full handshake: the client keeps no session), `resume` (a new
    /// connection per call, resuming a session: the client offers its cached tickets).
    #[arg(long, value_delimiter = ',', default_value = "keepalive,full,resume")]
    tls_modes: Vec<String>,
    /// Gateway upstream keep-alive pool size (≥ connections, or it reconnects).
    #[arg(long, default_value_t = 1024)]
    pool_size: usize,
    /// `crm`: `permgate sample-crm` (falls back to the stub if it exits); `stub`: our minimal
    /// upstream.
    #[arg(long, default_value = "crm")]
    upstream: String,
    /// RUST_LOG for the gateways (`info` logs one line per request).
    #[arg(long, default_value = "warn")]
    gateway_log: String,
    /// Load-generator threads (tokio workers).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Pin every proxy to the last CPU, and this process (the load generator) and the CRM to
    /// the others (`taskset`): the proxy's latency is then not set by where the scheduler put
    /// the client. Needs 2 CPUs or more.
    #[arg(long)]
    pin: bool,
    /// Where results.json, results.md and latency.svg go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/out"))]
    out: PathBuf,
}

/// One thing to load-test.
struct Variant {
    name: String,
    authorizing: bool,
    h1: SocketAddr,
    h2: Option<SocketAddr>,
    /// The process whose CPU and memory are the variant's cost.
    pid: u32,
    process: String,
    version: String,
}

struct Ctx {
    args: SuiteArgs,
    rt: tokio::runtime::Runtime,
    ticks: u64,
    upstream_pid: u32,
    /// `--tls`: the test certificate, which the load generator trusts.
    ca: Option<PathBuf>,
}

/// How the calls of a TLS round use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    KeepAlive,
    Full,
    Resume,
}

impl TlsMode {
    fn parse(s: &str) -> Result<TlsMode, String> {
        match s {
            "keepalive" | "keep-alive" => Ok(TlsMode::KeepAlive),
            "full" | "new" => Ok(TlsMode::Full),
            "resume" | "resumed" => Ok(TlsMode::Resume),
            other => Err(format!(
                "unknown TLS mode '{other}' (keepalive, full, resume)"
            )),
        }
    }

    fn label(self) -> &'static str {
        match self {
            TlsMode::KeepAlive => "keep-alive",
            TlsMode::Full => "new connection per call, full handshake",
            TlsMode::Resume => "new connection per call, session resumed",
        }
    }
}

/// Move every thread of `pid` to `cpus` (`taskset -a -p -c`).
fn pin(pid: u32, cpus: &str) -> Result<(), String> {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("taskset could not pin {pid} to CPU {cpus}"))
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn cpu_delta(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    Some(b?.checked_sub(a?)?.as_secs_f64())
}

impl Ctx {
    /// One measured round of one variant.
    fn round(
        &self,
        v: &Variant,
        plan: &Arc<Plan>,
        protocol: Protocol,
        mode: Mode,
        tls: Option<TlsMode>,
        round: usize,
    ) -> (Round, hdrhistogram::Histogram<u64>) {
        let addr = match protocol {
            Protocol::H1 => v.h1,
            Protocol::H2 => v.h2.unwrap_or(v.h1),
        };
        // A fresh client (and session cache) per round: the warm-up fills it.
        let target = match (tls, &self.ca) {
            (Some(m), Some(ca)) => {
                match load::TlsTarget::with_resumption(
                    "localhost",
                    Some(ca),
                    protocol == Protocol::H2,
                    m != TlsMode::Full,
                ) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        eprintln!("  {}: TLS client: {e}", v.name);
                        None
                    }
                }
            }
            _ => None,
        };
        let opts = LoadOptions {
            addr,
            authority: if target.is_some() {
                format!("localhost:{}", addr.port())
            } else {
                addr.to_string()
            },
            protocol,
            mode,
            connections: self.args.connections,
            streams: self.args.streams,
            warmup: Duration::from_secs_f64(self.args.warmup),
            duration: Duration::from_secs_f64(self.args.duration.min(20.0)),
            max_requests: None,
            progress: Some(format!("{} r{}", v.name, round + 1)),
            tls: target,
            connection_per_call: matches!(tls, Some(TlsMode::Full | TlsMode::Resume)),
        };
        let mut samples = [(None, None); 2];
        let r = self.rt.block_on(load::run(plan.clone(), opts, |phase| {
            let i = usize::from(phase == Phase::Stop);
            samples[i] = (
                procstat::cpu_time_tree(v.pid, self.ticks),
                procstat::cpu_time_tree(self.upstream_pid, self.ticks),
            );
        }));
        let cpu = cpu_delta(samples[0].0, samples[1].0);
        let up = cpu_delta(samples[0].1, samples[1].1);
        let round = Round::new(round, &r, cpu, up);
        let resumed = if r.tls_handshakes > 0 {
            format!("  resumed {}/{}", r.tls_resumed, r.tls_handshakes)
        } else {
            String::new()
        };
        eprintln!(
            "  {:<15} r{} {:>8.0} req/s  CPU {:>6} µs/req  p50 {:>6} µs  p99 {:>7} µs  unexpected {}  errors {}{resumed}",
            v.name,
            round.round + 1,
            round.throughput,
            round.cpu_us_per_req.map(|c| format!("{c:.1}")).unwrap_or_else(|| "–".into()),
            round.p50_us,
            round.p99_us,
            round.unexpected,
            round.transport_errors.values().sum::<u64>()
        );
        (round, r.hist)
    }

    /// Rounds × variants, alternating; one cell per variant.
    fn matrix(
        &self,
        scenario: &Scenario,
        plans: &BTreeMap<bool, Arc<Plan>>,
        variants: &[&Variant],
        protocol: Protocol,
        mode: Mode,
        tls: Option<TlsMode>,
    ) -> Vec<Cell> {
        let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); variants.len()];
        let mut hists: Vec<Option<hdrhistogram::Histogram<u64>>> = vec![None; variants.len()];
        for r in 0..self.args.rounds.max(1) {
            for k in 0..variants.len() {
                let i = (k + r) % variants.len();
                let v = variants[i];
                let Some(plan) = plans.get(&v.authorizing) else {
                    continue;
                };
                let (round, hist) = self.round(v, plan, protocol, mode, tls, r);
                rounds[i].push(round);
                match &mut hists[i] {
                    Some(h) => {
                        let _ = h.add(&hist);
                    }
                    slot => *slot = Some(hist),
                }
            }
        }
        let proto = match (protocol, tls) {
            (Protocol::H1, None) => "HTTP/1.1".to_string(),
            (Protocol::H2, None) => "h2c".to_string(),
            (Protocol::H1, Some(m)) => format!("HTTP/1.1 over TLS, {}", m.label()),
            (Protocol::H2, Some(m)) => format!("h2 over TLS, {}", m.label()),
        };
        let mode_s = match mode {
            Mode::Closed => format!("closed loop, {} conns", self.args.connections),
            Mode::Open { rate } => format!(
                "open loop at {rate:.0} req/s, {} conns",
                self.args.connections
            ),
        };
        variants
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let h = hists[i].take()?;
                Some(Cell::summarize(
                    &scenario.name,
                    &proto,
                    &mode_s,
                    &v.name,
                    std::mem::take(&mut rounds[i]),
                    &h,
                ))
            })
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn start_peers(
    args: &SuiteArgs,
    threads: usize,
    tls: Option<&TlsFiles>,
    dir: &Path,
    snapshot: &str,
    key: &JwtKey,
    procs: &mut Vec<Proc>,
    skipped: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(Vec<Variant>, u32), String> {
    let permgate_bin = match &args.permgate_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("permgate"),
    };
    if !permgate_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p permgate -p permgate-bench`, or pass --permgate-bin",
            permgate_bin.display()
        ));
    }
    let permgate_version = peers::version_of(&permgate_bin, "--version");
    let want = |name: &str| args.variants.iter().any(|v| v == name);
    let max_conns = args.idle_connections + args.connections + 200;

    // The upstream.
    let crm_addr = peers::free_port()?;
    let stub = |procs: &mut Vec<Proc>| -> Result<(), String> {
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.args(["stub-upstream", "--listen", &crm_addr.to_string()]);
        procs.push(Proc::start(
            "stub upstream",
            cmd,
            &dir.join("upstream.log"),
            crm_addr,
        )?);
        Ok(())
    };
    let upstream_desc = if args.upstream == "stub" {
        stub(procs)?;
        "stub upstream (permgate-bench stub-upstream)".to_string()
    } else {
        let mut cmd = Command::new(&permgate_bin);
        cmd.args(["sample-crm", "--listen", &crm_addr.to_string()])
            .env("RUST_LOG", "warn");
        match Proc::start("sample CRM", cmd, &dir.join("upstream.log"), crm_addr) {
            Ok(p) => {
                procs.push(p);
                "sample CRM (permgate sample-crm)".to_string()
            }
            Err(e) => {
                let msg =
                    format!("the sample CRM did not start ({e}); using the stub upstream instead");
                eprintln!("warning: {msg}");
                notes.push(msg);
                stub(procs)?;
                "stub upstream (permgate-bench stub-upstream), the sample CRM did not start"
                    .to_string()
            }
        }
    };
    let upstream_pid = procs.last().map(|p| p.pid()).unwrap_or(0);
    notes.push(format!("upstream: {upstream_desc} on {crm_addr}"));
    let mut variants = Vec::new();
    if want("direct") && tls.is_some() {
        skipped.push("direct: the CRM does not terminate TLS (--tls)".into());
    } else if want("direct") {
        variants.push(Variant {
            name: "direct".into(),
            authorizing: false,
            h1: crm_addr,
            h2: Some(crm_addr),
            pid: upstream_pid,
            process: "upstream".into(),
            version: upstream_desc.clone(),
        });
    }

    // permgate, with and without authorization.
    let tuning = GatewayTuning {
        threads,
        pool_size: args.pool_size.max(args.connections),
        tls: tls.cloned(),
    };
    // Each engine (`listen.engine`) with and without authorization.
    for (name, authorize, engine) in [
        ("permgate-authz", true, "pingora"),
        ("permgate-pass", false, "pingora"),
        ("permgate-hyper", true, "hyper"),
        ("permgate-hyper-pass", false, "hyper"),
        ("permgate-hyper-nolane", true, "hyper-nolane"),
    ] {
        // The Pingora engine is only in a gateway built with `--features pingora` (the bench
        // crate's feature of the same name passes it on).
        if !want(name) || (engine == "pingora" && !cfg!(feature = "pingora")) {
            continue;
        }
        let sub = dir.join(name);
        let listen = peers::free_port()?;
        write(&sub.join("snapshot.json"), snapshot)?;
        write(
            &sub.join("permgate.toml"),
            &peers::permgate_config(listen, crm_addr, &tuning, authorize, engine)?,
        )?;
        let mut cmd = Command::new(&permgate_bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(sub.join("permgate.toml"))
            .env("RUST_LOG", &args.gateway_log);
        let p = Proc::start(name, cmd, &sub.join("permgate.log"), listen)?;
        variants.push(Variant {
            name: name.into(),
            authorizing: authorize,
            h1: listen,
            h2: Some(listen),
            pid: p.pid(),
            process: "permgate".into(),
            version: permgate_version.clone(),
        });
        procs.push(p);
    }

    // nginx.
    if want("nginx") {
        match peers::which("nginx") {
            None => skipped.push("nginx: not installed (`apt-get install nginx haproxy`)".into()),
            Some(bin) => {
                let sub = dir.join("nginx");
                for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    std::fs::create_dir_all(sub.join("nginx-tmp").join(t))
                        .map_err(|e| e.to_string())?;
                }
                let (h1, h2) = (peers::free_port()?, peers::free_port()?);
                write(
                    &sub.join("nginx.conf"),
                    &peers::nginx_config(&sub, h1, h2, crm_addr, max_conns, threads, tls),
                )?;
                let mut cmd = Command::new(&bin);
                cmd.arg("-p")
                    .arg(&sub)
                    .arg("-c")
                    .arg(sub.join("nginx.conf"))
                    .arg("-e")
                    .arg(sub.join("nginx-error.log"));
                match Proc::start("nginx", cmd, &sub.join("nginx.out"), h1) {
                    Ok(p) => {
                        variants.push(Variant {
                            name: "nginx".into(),
                            authorizing: false,
                            h1,
                            h2: Some(h2),
                            pid: p.pid(),
                            process: "nginx".into(),
                            version: peers::version_of(&bin, "-v"),
                        });
                        procs.push(p);
                    }
                    Err(e) => skipped.push(format!("nginx: {e}")),
                }
            }
        }
    }

    // HAProxy.
    if want("haproxy-authz") || want("haproxy-plain") {
        match peers::which("haproxy") {
            None => skipped.push("HAProxy: not installed (`apt-get install nginx haproxy`)".into()),
            Some(bin) => {
                let sub = dir.join("haproxy");
                write(
                    &sub.join("routes.map"),
                    &peers::haproxy_routes_map(permgate::demo::DEMO_CONFIG)?,
                )?;
                write(&sub.join("grants.map"), &peers::haproxy_grants_map()?)?;
                let authz = (peers::free_port()?, peers::free_port()?);
                let plain = (peers::free_port()?, peers::free_port()?);
                write(
                    &sub.join("haproxy.cfg"),
                    &peers::haproxy_config(
                        &sub,
                        authz,
                        plain,
                        crm_addr,
                        &key.secret,
                        max_conns,
                        threads,
                        tls,
                    ),
                )?;
                let mut cmd = Command::new(&bin);
                cmd.arg("-db").arg("-f").arg(sub.join("haproxy.cfg"));
                match Proc::start("haproxy", cmd, &sub.join("haproxy.log"), authz.0) {
                    Ok(p) => {
                        let version = peers::version_of(&bin, "-v");
                        for (name, a, authorizing) in [
                            ("haproxy-authz", authz, true),
                            ("haproxy-plain", plain, false),
                        ] {
                            if want(name) {
                                variants.push(Variant {
                                    name: name.into(),
                                    authorizing,
                                    h1: a.0,
                                    h2: Some(a.1),
                                    pid: p.pid(),
                                    process: "haproxy".into(),
                                    version: version.clone(),
                                });
                            }
                        }
                        procs.push(p);
                    }
                    Err(e) => skipped.push(format!("HAProxy: {e}")),
                }
            }
        }
    }
    // Report in the order asked for.
    variants.sort_by_key(|v| {
        args.variants
            .iter()
            .position(|n| *n == v.name)
            .unwrap_or(usize::MAX)
    });
    Ok((variants, upstream_pid))
}

pub fn run(args: SuiteArgs) -> Result<(), String> {
    let counts: Vec<usize> = if args.threads.is_empty() {
        vec![1]
    } else {
        args.threads.iter().map(|t| (*t).max(1)).collect()
    };
    if args.pin && counts.iter().any(|t| *t > 1) {
        return Err("--pin puts every proxy on one CPU: use it with --threads 1 only".into());
    }
    if counts.len() == 1 {
        run_one(&args, counts[0], &args.out)?;
        return Ok(());
    }
    let mut reports = Vec::new();
    for &t in &counts {
        eprintln!("=== threads = {t} ===");
        let out = args.out.join(format!("threads-{t}"));
        reports.push((t, run_one(&args, t, &out)?));
    }
    let md = scaling_markdown(&reports);
    println!("{md}");
    write(&args.out.join("scaling.md"), &md)?;
    eprintln!(
        "wrote {}/scaling.md (and threads-N/ per count)",
        args.out.display()
    );
    Ok(())
}

/// Throughput and CPU per call of each closed-loop cell at each thread count, and the ratio of
/// the last count's throughput to the first's.
fn scaling_markdown(reports: &[(usize, Report)]) -> String {
    use std::fmt::Write as _;
    let Some((first_t, first)) = reports.first() else {
        return String::new();
    };
    let mut s = String::new();
    let counts: Vec<String> = reports.iter().map(|(t, _)| t.to_string()).collect();
    let _ = writeln!(
        s,
        "### Scaling: threads {} (closed loop; each count a separate run, peers restarted)\n",
        counts.join(" → ")
    );
    let mut head = String::from("| scenario · protocol | variant |");
    let mut rule = String::from("|---|---|");
    for (t, _) in reports {
        let _ = write!(head, " req/s @{t} | CPU µs/call @{t} |");
        rule.push_str("---:|---:|");
    }
    let last_t = reports.last().map_or(*first_t, |(t, _)| *t);
    let _ = write!(head, " req/s @{last_t} ÷ @{first_t} |");
    rule.push_str("---:|");
    let _ = writeln!(s, "{head}\n{rule}");
    for c in first.cells.iter().filter(|c| c.mode.starts_with("closed")) {
        let same = |r: &Report| {
            r.cells
                .iter()
                .find(|o| {
                    o.scenario == c.scenario
                        && o.protocol == c.protocol
                        && o.variant == c.variant
                        && o.mode.starts_with("closed")
                })
                .cloned()
        };
        let mut row = format!("| {} · {} | {} |", c.scenario, c.protocol, c.variant);
        let mut last = None;
        for (_, r) in reports {
            match same(r) {
                Some(o) => {
                    let cpu = o.cpu_us_per_req.map_or("–".into(), |x| format!("{x:.1}"));
                    let _ = write!(row, " {:.0} | {cpu} |", o.throughput);
                    last = Some(o.throughput);
                }
                None => row.push_str(" – | – |"),
            }
        }
        let ratio = match last {
            Some(l) if c.throughput > 0.0 => format!("{:.2}×", l / c.throughput),
            _ => "–".into(),
        };
        let _ = writeln!(s, "{row} {ratio} |");
    }
    s
}

fn run_one(args: &SuiteArgs, threads: usize, out: &Path) -> Result<Report, String> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut machine = Machine::probe();
    let mut scenarios = Scenario::load_dir(&args.scenarios)?;
    if !args.only.is_empty() {
        scenarios.retain(|s| args.only.contains(&s.name));
        if scenarios.is_empty() {
            return Err(format!(
                "no scenario named {:?} in {}",
                args.only,
                args.scenarios.display()
            ));
        }
    }
    let protocols: Vec<Protocol> = args
        .protocols
        .iter()
        .map(|p| match p.as_str() {
            "h1" | "http1" => Ok(Protocol::H1),
            "h2" | "h2c" | "http2" => Ok(Protocol::H2),
            other => Err(format!("unknown protocol '{other}' (h1, h2)")),
        })
        .collect::<Result<_, _>>()?;
    let mut idle = args.idle_connections;
    let mut notes = Vec::new();
    if let Some(limit) = procstat::open_files_limit() {
        let need = idle as u64 + args.connections as u64 + 300;
        if idle > 0 && limit < need {
            let fit = limit.saturating_sub(args.connections as u64 + 300) as usize;
            notes.push(format!(
                "open-files limit {limit} < {need}: idle connections lowered from {idle} to {fit} (raise it with `ulimit -n`)"
            ));
            idle = fit;
        }
    }

    let dir = std::env::temp_dir().join(format!("permgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Before any child starts: the CRM inherits the client's CPUs.
    let pinned = if args.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            return Err("--pin needs 2 CPUs or more".into());
        }
        let (client, proxy) = (format!("0-{}", cpus - 2), (cpus - 1).to_string());
        pin(std::process::id(), &client)?;
        notes.push(format!(
            "pinned: proxies on CPU {proxy}; load generator and CRM on CPU {client}"
        ));
        Some(proxy)
    } else {
        None
    };
    let tls_files = if args.tls {
        Some(TlsFiles::generate(&dir.join("tls"))?)
    } else {
        None
    };
    let tls_modes: Vec<Option<TlsMode>> = if args.tls {
        args.tls_modes
            .iter()
            .map(|m| TlsMode::parse(m).map(Some))
            .collect::<Result<_, _>>()?
    } else {
        vec![None]
    };
    if args.tls && idle > 0 {
        notes.push("--tls: no idle-connection memory figure (it is measured in cleartext)".into());
        idle = 0;
    }
    let population = merged_population(&scenarios);
    let snapshot = peers::snapshot_for(&population, &SnapshotSpec::merged(&scenarios)?)?;
    let key = JwtKey::demo();
    let mut procs = Vec::new();
    let mut skipped = Vec::new();
    let (variants, upstream_pid) = start_peers(
        args,
        threads,
        tls_files.as_ref(),
        &dir,
        &snapshot,
        &key,
        &mut procs,
        &mut skipped,
        &mut notes,
    )?;
    for s in &skipped {
        eprintln!("skipping {s}");
    }
    if let Some(cpu) = &pinned {
        for v in &variants {
            if v.pid != upstream_pid {
                pin(v.pid, cpu)?;
            }
        }
    }
    eprintln!(
        "{} variants up ({}); files in {}",
        variants.len(),
        variants
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ctx = Ctx {
        args: args.clone(),
        rt,
        ticks: procstat::clock_ticks(),
        upstream_pid,
        ca: tls_files.as_ref().map(|t| t.cert.clone()),
    };
    let creds = MintedTokens::new(key);
    let mut cells = Vec::new();
    for scenario in &scenarios {
        let mut plans = BTreeMap::new();
        for authorizing in [true, false] {
            plans.insert(
                authorizing,
                Arc::new(Plan::build(scenario, &creds, authorizing)?),
            );
        }
        let vs: Vec<&Variant> = variants
            .iter()
            .filter(|v| v.authorizing || !scenario.authz_only)
            .collect();
        for (&protocol, &tls) in protocols
            .iter()
            .flat_map(|p| tls_modes.iter().map(move |m| (p, m)))
        {
            let vs: Vec<&Variant> = vs
                .iter()
                .copied()
                .filter(|v| protocol == Protocol::H1 || v.h2.is_some())
                .collect();
            let tls_label = tls.map_or(String::new(), |m| format!(", TLS {}", m.label()));
            eprintln!(
                "scenario {} ({:?}{tls_label}, closed loop): {} rounds × {} variants",
                scenario.name,
                protocol,
                args.rounds,
                vs.len()
            );
            let closed = ctx.matrix(scenario, &plans, &vs, protocol, Mode::Closed, tls);
            // The open loop on warm connections only.
            let open_rate = (args.open_loop_fraction > 0.0
                && matches!(tls, None | Some(TlsMode::KeepAlive))
                && scenario.name == args.open_loop_scenario)
                .then(|| {
                    // The default engine's pass-through first (hyper), else the first
                    // permgate variant that ran.
                    let base = [
                        "permgate-hyper-pass",
                        "permgate-pass",
                        "permgate-hyper",
                        "permgate-authz",
                    ]
                    .iter()
                    .find_map(|name| closed.iter().find(|c| c.variant == *name))
                    .map(|c| c.throughput)?;
                    (base > 0.0).then_some(base * args.open_loop_fraction)
                })
                .flatten();
            cells.extend(closed);
            if let Some(rate) = open_rate {
                eprintln!(
                    "scenario {} ({:?}, open loop at {rate:.0} req/s)",
                    scenario.name, protocol
                );
                cells.extend(ctx.matrix(scenario, &plans, &vs, protocol, Mode::Open { rate }, tls));
            }
        }
    }

    // Memory: peak after load, then idle keep-alive connections.
    let mut memory: Vec<Memory> = Vec::new();
    let idle_scenario = scenarios
        .iter()
        .find(|s| s.name == args.open_loop_scenario)
        .or(scenarios.first());
    let idle_req = idle_scenario.and_then(|s| s.requests.first().map(|r| (s, r)));
    for v in &variants {
        if v.name == "haproxy-plain" && variants.iter().any(|o| o.name == "haproxy-authz") {
            continue;
        }
        let mut m = Memory {
            variant: v.name.clone(),
            process: v.process.clone(),
            pid: v.pid,
            version: v.version.clone(),
            peak_rss_bytes: procstat::peak_rss_tree(v.pid),
            rss_before_idle_bytes: procstat::rss_tree(v.pid),
            ..Default::default()
        };
        if idle > 0 && v.name != "direct" {
            if let Some((_, r)) = idle_req {
                let mut path = String::new();
                let mut rng = fastrand::Rng::with_seed(7);
                crate::scenario::PathTemplate::parse(&r.path)?.render(&mut rng, &mut path);
                let auth = match (&r.role, &r.user) {
                    (Some(role), _) => creds.for_role(role, 1)?.into_iter().next(),
                    (_, Some(u)) => Some(creds.for_user(u)?),
                    _ => None,
                };
                eprintln!("  {}: holding {idle} idle keep-alive connections…", v.name);
                let pid = v.pid;
                let (held, rss) = ctx.rt.block_on(load::hold_idle(
                    v.h1,
                    &v.h1.to_string(),
                    &path,
                    auth,
                    idle,
                    || procstat::rss_tree(pid),
                ));
                m.idle_connections = held;
                m.rss_idle_bytes = rss;
                eprintln!(
                    "  {}: {held} held, RSS {:.1} MB",
                    v.name,
                    rss.unwrap_or(0) as f64 / 1_048_576.0
                );
                // Let the server close them before the next one.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        memory.push(m);
    }
    machine.loadavg_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    drop(procs);

    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut settings = BTreeMap::new();
    for (k, v) in [
        ("rounds", args.rounds.to_string()),
        ("duration_s", args.duration.to_string()),
        ("warmup_s", args.warmup.to_string()),
        ("connections", args.connections.to_string()),
        ("streams", args.streams.to_string()),
        ("gateway_threads", threads.to_string()),
        ("tls", args.tls.to_string()),
        ("pool_size", args.pool_size.to_string()),
        ("client_threads", args.client_threads.to_string()),
        ("pin", args.pin.to_string()),
        ("gateway_log", args.gateway_log.clone()),
        ("idle_connections", idle.to_string()),
        ("open_loop_fraction", args.open_loop_fraction.to_string()),
        (
            "generated_users",
            population.values().sum::<usize>().to_string(),
        ),
    ] {
        settings.insert(k.to_string(), v);
    }
    let report = Report {
        tool: format!("permgate-bench {}", env!("CARGO_PKG_VERSION")),
        date_utc: date,
        command,
        machine,
        settings,
        variants: variants
            .iter()
            .map(|v| (v.name.clone(), v.version.clone()))
            .collect(),
        skipped,
        cells,
        memory,
        notes,
    };
    let md = report.markdown();
    println!("{md}");
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    write(&out.join("results.json"), &json)?;
    write(&out.join("results.md"), &md)?;
    write(&out.join("latency.svg"), &report.svg())?;
    eprintln!(
        "wrote {}/results.json, results.md, latency.svg",
        out.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}
