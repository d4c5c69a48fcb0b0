//! `permgate-bench swaps`: proxied calls while the snapshot is swapped continuously, against
//! the same gateway at rest. Starts the sample CRM and `permgate serve` (demo config, an admin
//! listener) on loopback, then alternates rounds: steady (no change) and swapping (a thread
//! posts a batch of changes to `POST /snapshot/changes` every `--interval-ms`, each one a new
//! snapshot version swapped in under load). Reports p50/p99 of each kind (all its rounds'
//! histograms merged), their ratio, the swaps made and any request that failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::load::{self, LoadOptions, Mode, Protocol};
use crate::peers::{self, GatewayTuning, JwtKey, MintedTokens, Proc};
use crate::scenario::{merged_population, Plan, Scenario};

const TOKEN: &str = "bench-admin-token-0123456789";

#[derive(Args, Clone)]
pub struct SwapsArgs {
    /// The permgate binary (default: next to this binary).
    #[arg(long)]
    permgate_bin: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
    scenarios: PathBuf,
    #[arg(long, default_value = "allowed-get")]
    scenario: String,
    /// Rounds of each kind (steady and swapping alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds measured per round (≤ 20).
    #[arg(long, default_value_t = 4)]
    duration: u64,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Milliseconds between two batches of changes while swapping.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// The gateway's data plane (`listen.engine`): hyper (the default engine) or pingora.
    #[arg(long, default_value = "hyper", value_parser = ["hyper", "pingora"])]
    engine: String,
}

/// POST one batch to the admin API; the status code.
fn post_changes(admin: SocketAddr, body: &str) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /snapshot/changes HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&resp[..resp.len().min(16)]).to_string();
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad admin response: {head:?}"))
}

pub fn run(a: SwapsArgs) -> Result<(), String> {
    let duration = a.duration.clamp(1, 20);
    let permgate_bin = match &a.permgate_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("permgate"),
    };
    let scenarios = Scenario::load_dir(&a.scenarios)?;
    let scenario = scenarios
        .iter()
        .find(|s| s.name == a.scenario)
        .ok_or_else(|| format!("no scenario '{}'", a.scenario))?;
    let population = merged_population(std::slice::from_ref(scenario));
    let dir = std::env::temp_dir().join(format!("permgate-bench-swaps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let crm = peers::free_port()?;
    let mut cmd = Command::new(&permgate_bin);
    cmd.args(["sample-crm", "--listen", &crm.to_string()])
        .env("RUST_LOG", "warn");
    let _crm = Proc::start("sample CRM", cmd, &dir.join("upstream.log"), crm)?;
    let listen = peers::free_port()?;
    let admin = peers::free_port()?;
    let tuning = GatewayTuning {
        threads: 1,
        pool_size: 1024,
        tls: None,
    };
    let config = peers::permgate_config(listen, crm, &tuning, true, &a.engine)?
        + &format!("\n[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n");
    std::fs::write(dir.join("permgate.toml"), config).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("snapshot.json"),
        peers::snapshot_with(&population)?,
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&permgate_bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("permgate.toml"))
        .env("RUST_LOG", "warn");
    let gw = Proc::start("permgate", cmd, &dir.join("permgate.log"), listen)?;
    let plan = Arc::new(Plan::build(
        scenario,
        &MintedTokens::new(JwtKey::demo()),
        true,
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let opts = LoadOptions {
        addr: listen,
        authority: listen.to_string(),
        protocol: Protocol::H1,
        mode: Mode::Closed,
        connections: a.connections,
        streams: 1,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(duration),
        max_requests: None,
        progress: None,
        tls: None,
        connection_per_call: false,
    };
    let mut steady: Option<load::LoadResult> = None;
    let mut swapping: Option<load::LoadResult> = None;
    let swaps = Arc::new(AtomicU64::new(0));
    let swap_failures = Arc::new(AtomicU64::new(0));
    let merge = |acc: &mut Option<load::LoadResult>, r: load::LoadResult| match acc {
        None => *acc = Some(r),
        Some(x) => {
            let _ = x.hist.add(&r.hist);
            x.requests += r.requests;
            x.unexpected += r.unexpected;
            for (k, v) in r.transport_errors {
                *x.transport_errors.entry(k).or_default() += v;
            }
            x.elapsed += r.elapsed;
        }
    };
    for round in 0..a.rounds * 2 {
        let swap = round % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = swap.then(|| {
            let (stop, swaps, fails) = (stop.clone(), swaps.clone(), swap_failures.clone());
            let every = Duration::from_millis(a.interval_ms.max(1));
            std::thread::spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A demo user the scenario does not call as: each batch is a new version.
                    let body = if k.is_multiple_of(2) {
                        r#"{"changes":[{"op":"set_roles","user":"u-mm","roles":["marketing_manager","campaign_cleaner"]},{"op":"disable","user":"u-da"}]}"#
                    } else {
                        r#"{"changes":[{"op":"set_roles","user":"u-mm","roles":["marketing_manager"]},{"op":"enable","user":"u-da"}]}"#
                    };
                    match post_changes(admin, body) {
                        Ok(200) => swaps.fetch_add(1, Ordering::Relaxed),
                        _ => fails.fetch_add(1, Ordering::Relaxed),
                    };
                    k += 1;
                    std::thread::sleep(every);
                }
            })
        });
        let r = rt.block_on(load::run(plan.clone(), opts.clone(), |_| {}));
        stop.store(true, Ordering::Relaxed);
        if let Some(t) = swapper {
            let _ = t.join();
        }
        eprintln!(
            "round {} ({}): {} requests, p99 {} µs",
            round + 1,
            if swap { "swapping" } else { "steady" },
            r.requests,
            r.quantile_us(0.99)
        );
        merge(if swap { &mut swapping } else { &mut steady }, r);
    }
    drop(gw);
    let (Some(st), Some(sw)) = (steady, swapping) else {
        return Err("no rounds".into());
    };
    let failed = |r: &load::LoadResult| r.unexpected + r.transport_errors.values().sum::<u64>();
    println!("engine: {}", a.engine);
    println!(
        "| | requests | req/s | p50 µs | p99 µs | failed |\n|---|---|---|---|---|---|\n| steady | {} | {:.0} | {} | {} | {} |\n| swapping | {} | {:.0} | {} | {} | {} |",
        st.requests,
        st.throughput(),
        st.quantile_us(0.5),
        st.quantile_us(0.99),
        failed(&st),
        sw.requests,
        sw.throughput(),
        sw.quantile_us(0.5),
        sw.quantile_us(0.99),
        failed(&sw),
    );
    println!(
        "p99 swapping / steady: {:.2}×; {} snapshot versions swapped in ({} batches refused or failed), one every {} ms asked",
        sw.quantile_us(0.99) as f64 / st.quantile_us(0.99).max(1) as f64,
        swaps.load(Ordering::Relaxed),
        swap_failures.load(Ordering::Relaxed),
        a.interval_ms
    );
    Ok(())
}
