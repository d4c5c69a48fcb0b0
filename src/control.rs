//! The control thread: everything that changes the live state runs here, on its own small
//! runtime, never on a proxy worker — the admin API, the snapshot file watcher or URL puller,
//! SIGHUP config reloads and the staleness ticker.
//!
//! Why one file (~1,360 lines with its tests): each source of change (the snapshot file
//! watcher, the URL puller, the database follower, the JWKS refresher, SIGHUP, the ticker) is a
//! loop spawned by `spawn` that offers what it read to [`State`] and backs off the same way
//! (`backoff`), with the same staleness rules and swap. The database follower (from
//! `follow_database` to `PgText`: connection, TLS, the LISTEN wake-ups, consistent reads,
//! per-tenant reads, incremental rounds) is the seam when one is cut, as a `control::database`
//! module.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::dbsource::RecordQuery;
use crate::live::{State, STALENESS_TICK};

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Poll the snapshot file; when it changes and then holds still for a moment (a writer that
/// writes in place is done; an atomic rename is seen whole), read it and offer it to the state.
async fn watch_snapshot_file(state: Arc<State>) {
    let mut last = {
        let live = state.live();
        stamp(&live.config.snapshot.path)
    };
    loop {
        let (path, interval) = {
            let live = state.live();
            (
                live.config.snapshot.path.clone(),
                live.config.snapshot.poll_interval,
            )
        };
        tokio::time::sleep(interval).await;
        let now = stamp(&path);
        if now.is_none() || now == last {
            continue;
        }
        // Debounce: wait until the file holds still.
        tokio::time::sleep(
            (interval / 4).clamp(Duration::from_millis(20), Duration::from_millis(250)),
        )
        .await;
        let settled = stamp(&path);
        if settled != now {
            continue;
        }
        last = settled;
        let s = state.clone();
        let result = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(text) => s.replace_snapshot(&text, &format!("file {}", path.display())),
            Err(e) => Err(vec![format!("{}: cannot read: {e}", path.display())]),
        })
        .await;
        match result {
            Ok(Ok(version)) => info!("snapshot file change applied: {version}"),
            Ok(Err(_)) => {} // logged and counted by the state
            Err(e) => error!("snapshot file task failed: {e}"),
        }
    }
}

async fn reload_on_sighup(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot listen for SIGHUP: {e}; use the admin API to reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the config");
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload_config("SIGHUP")).await;
    }
}

async fn staleness_ticker(state: Arc<State>) {
    loop {
        tokio::time::sleep(STALENESS_TICK).await;
        state.update_staleness();
    }
}

/// How much lower than the data plane's the control threads' CPU priority is (nice levels).
/// A full load or a reconciliation parses and builds for seconds (tens of seconds at 10M
/// records); at the same priority it takes CPU from the calls being served whenever the cores
/// are busy, and p99 rises while it runs. At +10 the scheduler gives a data-plane thread about
/// ten times the share of a control thread when both want a core; when the cores are idle the
/// load runs at full speed.
const CONTROL_NICE: i32 = 10;

/// The calling thread's nice value (Linux; per thread), or 0 where it cannot be read.
pub(crate) fn own_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Put the calling thread [`CONTROL_NICE`] below `base`, the calls' own nice value read on
/// the thread that starts the data plane (an absolute value: a thread started by a control
/// thread inherits its nice, and must not go lower still). At most 19. Used by the control
/// thread (admin API, snapshot loads and builds, the database follower), its blocking threads,
/// and the reaper that frees replaced snapshots. Linux only; elsewhere, and when the call
/// fails, the thread keeps its priority.
pub(crate) fn below_calls(base: i32) {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) =
            rustix::process::setpriority_process(Some(tid), (base + CONTROL_NICE).min(19))
        {
            tracing::debug!("control thread priority unchanged: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = base;
}

/// Start the control thread. Binds the admin listener first, so a port problem is an error
/// here and not a silent absence.
///
/// `upgrade`: the previous process still holds the admin port while it drains, so the port is
/// taken over when it frees (retried every 200 ms) instead of failing the start.
pub fn spawn(state: Arc<State>, upgrade: bool) -> std::io::Result<()> {
    let calls = own_nice();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The blocking threads that parse and build snapshots.
        .on_thread_start(move || below_calls(calls))
        .build()?;
    let admin = state.live().config.admin.clone();
    let bind = |addr: std::net::SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let listener = match &admin {
        Some(a) => match bind(a.listen) {
            Ok(l) => Some(Ok(l)),
            Err(e) if upgrade && e.kind() == std::io::ErrorKind::AddrInUse => Some(Err(a.listen)),
            Err(e) => return Err(e),
        },
        None => None,
    };
    std::thread::Builder::new()
        .name("permgate-control".into())
        .spawn(move || {
            below_calls(calls);
            rt.block_on(async move {
                let serve = |l: std::net::TcpListener, state: Arc<State>| match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        info!(
                            "admin API on {}",
                            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
                        );
                        tokio::spawn(crate::admin::serve(state, l));
                    }
                    Err(e) => error!("admin listener: {e}"),
                };
                match listener {
                    Some(Ok(l)) => serve(l, state.clone()),
                    Some(Err(addr)) => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            warn!("admin port {addr} still held by the previous process; taking it over when it frees");
                            loop {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                if let Ok(l) = bind(addr) {
                                    serve(l, state);
                                    break;
                                }
                            }
                        });
                    }
                    None => {}
                }
                let source = state.live().config.snapshot.clone();
                if source.database.is_some() {
                    tokio::spawn(follow_database(state.clone()));
                } else if source.url.is_some() {
                    tokio::spawn(pull_snapshot(state.clone()));
                } else if source.watch {
                    tokio::spawn(watch_snapshot_file(state.clone()));
                }
                tokio::spawn(staleness_ticker(state.clone()));
                tokio::spawn(refresh_jwks(state.clone()));
                reload_on_sighup(state).await;
                // SIGHUP could not be installed: keep the other tasks running.
                std::future::pending::<()>().await;
            });
        })?;
    Ok(())
}

/// The header carrying a pulled snapshot's ed25519 signature (base64 of the 64-byte signature of
/// the exact body).
pub const SIGNATURE_HEADER: &str = "x-snapshot-signature";

/// Verify a pulled body against the configured key.
pub fn verify_signature(key: &[u8; 32], body: &[u8], header: Option<&str>) -> Result<(), String> {
    use base64::Engine;
    let header = header
        .ok_or_else(|| format!("no {SIGNATURE_HEADER} header, and a public key is configured"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(header.trim())
        .map_err(|_| format!("{SIGNATURE_HEADER} is not base64"))?;
    let sig = ed25519_dalek::Signature::from_slice(&sig)
        .map_err(|_| format!("{SIGNATURE_HEADER} is not an ed25519 signature"))?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|e| e.to_string())?;
    vk.verify_strict(body, &sig)
        .map_err(|_| "the snapshot's signature does not verify; refused".to_string())
}

/// The delay before the next pull after `failures` consecutive failures: exponential from the
/// interval, capped at 5 minutes, with ±50% jitter so replicas do not pull in lockstep.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let base = interval
        .saturating_mul(1u32 << failures.min(10))
        .min(Duration::from_secs(300));
    base.mul_f64(0.5 + fastrand::f64())
}

/// Pull the snapshot from its URL on an interval, with `If-None-Match` (a 304 costs nothing),
/// timeouts, and backoff with jitter on failure.
async fn pull_snapshot(state: Arc<State>) {
    let mut etag: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let source = state.live().config.snapshot.clone();
        let Some(url) = source.url.clone() else {
            return;
        };
        let max = state
            .live()
            .config
            .admin
            .as_ref()
            .map_or(512 << 20, |a| a.max_snapshot_bytes);
        let label = format!("url {url}");
        let client = match reqwest::Client::builder()
            .timeout(source.pull_timeout)
            .no_proxy()
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                state.source_failed(&label, format!("cannot build an HTTP client: {e}"));
                return;
            }
        };
        let mut req = client.get(&url);
        if let Some(e) = &etag {
            req = req.header(http::header::IF_NONE_MATCH, e);
        }
        if let Some(t) = &source.url_token {
            req = req.bearer_auth(t);
        }
        let outcome: Result<(), String> = async {
            let resp = req
                .send()
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if resp.status() == http::StatusCode::NOT_MODIFIED {
                state
                    .counters
                    .source_not_modified
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            if resp.content_length().is_some_and(|l| l as usize > max) {
                return Err("the snapshot is over admin.max_snapshot_mb".into());
            }
            let new_etag = resp
                .headers()
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let signature = resp
                .headers()
                .get(SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            if body.len() > max {
                return Err("the snapshot is over admin.max_snapshot_mb".into());
            }
            if let Some(key) = &source.public_key {
                verify_signature(key, &body, signature.as_deref())?;
            }
            let text = String::from_utf8(body.to_vec())
                .map_err(|_| "the snapshot is not UTF-8".to_string())?;
            let s = state.clone();
            let l = label.clone();
            match tokio::task::spawn_blocking(move || s.replace_snapshot(&text, &l)).await {
                Ok(Ok(_)) => {
                    etag = new_etag;
                    Ok(())
                }
                // Refused by validation: already logged and counted; retry with backoff.
                Ok(Err(_)) => Err(String::new()),
                Err(e) => Err(format!("build task failed: {e}")),
            }
        }
        .await;
        match outcome {
            Ok(()) => failures = 0,
            Err(message) => {
                if !message.is_empty() {
                    state.source_failed(&label, message);
                }
                failures = failures.saturating_add(1);
            }
        }
        tokio::time::sleep(backoff(source.pull_interval, failures)).await;
    }
}

/// Follow the CRM's own database ([`crate::dbsource`]): a full load at start and every
/// `reconcile_interval_ms`; in between, every `poll_interval_ms` (or at once when a
/// notification on `notify_channel` arrives) a round reads the `cursor` query and, when it
/// changed, either loads everything again (no `[snapshot.database.incremental]`) or applies the
/// rows the incremental queries give as one change batch ([`incremental_round`]). One
/// connection, kept, re-opened after an error, when a reload changes its settings or when the
/// `ca_file` changes on disk ([`connection_key`]). Each round reads one consistent state (a
/// read-only repeatable-read transaction) within a deadline (connect 10 s; statement timeout
/// 30 s unless `session_sql` sets another; the round at most `max(poll, 60 s)`, a full load at
/// most [`FULL_LOAD_BOUND`] with its statements too); failures back off (at most 30 s more
/// than the poll) and keep the last good snapshot. A refused batch makes the next round a full
/// load.
async fn follow_database(state: Arc<State>) {
    let mut conn: Option<(tokio_postgres::Client, String)> = None;
    let mut last_cursor: Option<String> = None;
    let mut last_full: Option<std::time::Instant> = None;
    let mut force_full = false;
    // The cursor values read by the rounds that succeeded, oldest first (see `Due::base`).
    let mut seen: std::collections::VecDeque<(std::time::Instant, String)> = Default::default();
    // The memberships whose manager was dropped (no member of the tenant), by the manager
    // their row names: given back when that manager joins in a round. A full load replaces it;
    // a round's batch updates it once applied.
    // With it, the number of the last round that changed the snapshot: each round gets the
    // next one when it starts, and one still applying after its wait timed out, which gets the
    // lock after a newer round, changes nothing (its rows are older than what is in).
    let dangling: Applied = Default::default();
    let mut round_no = 0u64;
    let mut failures = 0u32;
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(listen_for_wakeups(state.clone(), wake.clone()));
    let label = "database";
    loop {
        let Some(db) = state.live().config.snapshot.database.clone() else {
            return;
        };
        let key = connection_key(&db);
        let now = std::time::Instant::now();
        let full_due =
            force_full || last_full.is_none_or(|t| now.duration_since(t) >= db.reconcile_interval);
        let base = db
            .incremental
            .as_ref()
            .map(|inc| base_cursor(&seen, now, Duration::from_millis(inc.overlap_ms)));
        // A round may be a full load without one being due: every cursor change without
        // incremental queries, or one while the follower is younger than the overlap.
        let may_load_all = full_due || !matches!(base, Some(Some(_)));
        round_no += 1;
        let this_round = round_no;
        let round = async {
            if conn
                .as_ref()
                .is_none_or(|(c, k)| c.is_closed() || *k != key)
            {
                conn = None;
                let client = connect_database(&db).await?;
                conn = Some((client, key.clone()));
            }
            let Some((client, _)) = conn.as_ref() else {
                return Err("no connection".into());
            };
            let due = Due {
                full: full_due,
                last_cursor: last_cursor.clone(),
                base,
            };
            let (loaded, cursor) = read_consistent(client, &db, &due).await?;
            let applied = match loaded {
                Loaded::Nothing => Ok(()),
                Loaded::Full(rows, records) => {
                    let (text, dropped, remembered) =
                        crate::dbsource::finish_snapshot_text(&rows, records, &db.queries)?;
                    drop(rows);
                    for line in &dropped {
                        tracing::warn!("snapshot source database: {line}");
                    }
                    // The text is kept as the source form: one copy of it, made before the
                    // build (not beside the build's own memory after it).
                    let text = Arc::<str>::from(text);
                    let s = state.clone();
                    let d = dangling.clone();
                    match tokio::task::spawn_blocking(move || {
                        // The remembered managers change with the snapshot, under the lock a
                        // round holds (one still applying after a timed-out wait lands first;
                        // never waited for on this runtime).
                        let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if d.1 > this_round {
                            // A newer round is in (this load's wait timed out; nothing
                            // reads this result): swap nothing.
                            return Err(Vec::new());
                        }
                        let r = s.replace_snapshot_shared(text, label);
                        if r.is_ok() {
                            *d = (remembered, this_round);
                            // Counted on the thread that swapped it in, as a round's batch is.
                            s.counters
                                .database_full_loads
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        r
                    })
                    .await
                    {
                        Ok(Ok(_)) => {
                            last_full = Some(now);
                            force_full = false;
                            // Counted once the load is in (README: once per load that drops).
                            state.counters.database_dangling_references.fetch_add(
                                dropped.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            let ms = u64::try_from(now.elapsed().as_millis()).unwrap_or(u64::MAX);
                            state
                                .counters
                                .database_full_load_ms
                                .store(ms, std::sync::atomic::Ordering::Relaxed);
                            Ok(())
                        }
                        // Refused by validation: already logged and counted.
                        Ok(Err(_)) => Err(String::new()),
                        Err(e) => Err(format!("build task failed: {e}")),
                    }
                }
                Loaded::Incremental(rows) => {
                    let r =
                        incremental_round(&state, rows, label, dangling.clone(), this_round).await;
                    if r.is_err() {
                        force_full = true;
                    }
                    r
                }
            };
            applied?;
            last_cursor = cursor.clone();
            if let Some(c) = cursor {
                seen.push_back((now, c));
            }
            Ok(())
        };
        // A full load streams millions of rows and builds: bounded apart (FULL_LOAD_BOUND).
        let deadline = if may_load_all {
            FULL_LOAD_BOUND
        } else {
            db.poll_interval.max(Duration::from_secs(60))
        };
        let outcome = match tokio::time::timeout(deadline, round).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", deadline.as_secs())),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(message) => {
                if !message.is_empty() {
                    state.source_failed(label, message);
                    conn = None;
                }
                failures = failures.saturating_add(1);
            }
        }
        // Keep the newest observation old enough to be a base, and everything after it.
        if let Some(inc) = &db.incremental {
            let overlap = Duration::from_millis(inc.overlap_ms);
            let now = std::time::Instant::now();
            while seen.len() > 1 && seen[1].0 + overlap <= now {
                seen.pop_front();
            }
        }
        let wait = if failures == 0 {
            db.poll_interval
        } else {
            backoff(db.poll_interval, failures).min(db.poll_interval + Duration::from_secs(30))
        };
        // A notification cuts the wait short; several while a round runs make one more round.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified(), if failures == 0 => {}
        }
    }
}

/// What a connection depends on: another value after a reload means a new connection. The
/// `ca_file`'s version on disk is part of it: a CA file replaced or rewritten (a rotation)
/// makes the next round connect again and check the server against the file's new CAs, rather
/// than keep a connection the file no longer vouches for (a wrong file fails closed there).
fn connection_key(db: &crate::dbsource::DbSource) -> String {
    let ca_version = match (&db.tls, &db.ca_file) {
        (crate::dbsource::DbTls::VerifyFull, Some(path)) => stamp(path),
        _ => None,
    };
    format!(
        "{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        db.url,
        db.session_sql.join("\u{0}"),
        db.tls,
        db.ca_file,
        ca_version
    )
}

/// What a round must read, decided before it knows the cursor.
struct Due {
    /// A full load is due (the first, the reconciliation, or after a refused batch).
    full: bool,
    /// The cursor of the last round that succeeded.
    last_cursor: Option<String>,
    /// With incremental queries: the cursor value read at least `overlap_ms` ago, the `$1`
    /// of the queries (`Some(None)`: the follower is younger than that, so a change is a full
    /// load); `None` without incremental queries.
    base: Option<Option<String>>,
}

impl Due {
    /// `permgate snapshot export`: one full load.
    fn full_load() -> Due {
        Due {
            full: true,
            last_cursor: None,
            base: None,
        }
    }
}

/// The cursor rows are read from: the value the newest round at least `overlap` ago read. A
/// transaction that committed after that round with an older cursor value is still read;
/// one that commits more than `overlap` (less one poll interval) after writing its row is left
/// to the next full load.
fn base_cursor(
    seen: &std::collections::VecDeque<(std::time::Instant, String)>,
    now: std::time::Instant,
    overlap: Duration,
) -> Option<String> {
    seen.iter()
        .rev()
        .find(|(t, _)| *t + overlap <= now)
        .map(|(_, c)| c.clone())
}

/// What one round read.
enum Loaded {
    /// Nothing changed since the last round.
    Nothing,
    /// Every query's rows: the whole snapshot (the record rows already written into its
    /// text as they arrived).
    Full(crate::dbsource::Rows, crate::dbsource::RecordsText),
    /// The incremental queries' rows: what changed since the base cursor.
    Incremental(crate::dbsource::Rows),
}

/// The follower's memberships with a dropped manager (given back when the manager joins) and
/// the number of the last round that took this lock (applied, empty or refused alike: a later
/// round read the database later), under one lock. Rounds run one after another; a higher
/// number is only seen by a round whose wait timed out and which was left running: it then
/// changes nothing (its result reaches no one: the follower moved on without it).
type Applied = Arc<std::sync::Mutex<(crate::dbsource::DroppedManagers, u64)>>;

/// Apply an incremental round's rows to the live snapshot: the changes they make
/// ([`crate::dbsource::incremental_changes_said`]) as one batch through the path of the changes
/// API (validated whole, journaled, audited, counted). No change: nothing is swapped.
/// `dangling`: the memberships whose manager was dropped, given back when the manager joins;
/// updated only once the batch is applied (a refused one changes nothing, and the full load
/// after it recomputes them). `this_round`: the round's number ([`Applied`]).
async fn incremental_round(
    state: &Arc<State>,
    rows: crate::dbsource::Rows,
    label: &'static str,
    dangling: Applied,
    this_round: u64,
) -> Result<(), String> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the batch is in: what it remembers is what the batch made of it. Taken
        // before the snapshot is read, so a round still applying (its wait timed out) lands
        // first and this one diffs against what it made; one that gets it after a newer round
        // changed the snapshot changes nothing.
        let mut guard = dangling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.1 > this_round {
            return Ok(());
        }
        guard.1 = this_round;
        let dangling = &mut guard.0;
        let live = s.live();
        let Some(snapshot) = live.snapshot.as_deref() else {
            return Err("no snapshot is loaded to apply changes to".to_string());
        };
        let round = crate::dbsource::incremental_changes_said(
            &rows,
            snapshot,
            &live.config.catalog,
            dangling,
        )?;
        for line in &round.dropped {
            tracing::warn!("snapshot source database: {line}");
        }
        if round.changes.is_empty() {
            dangling.update(round.remember);
            return Ok(());
        }
        // Refused: already logged, counted and audited by the state.
        s.apply_changes(&round.changes, label)
            .map_err(|_| String::new())?;
        dangling.update(round.remember);
        for line in &round.restored {
            tracing::info!("snapshot source database: {line}");
        }
        s.counters.database_dangling_references.fetch_add(
            round.dropped.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Counted at once, on the thread that swapped the snapshot in (not after a hop back to
        // the follower's task), so the counter lags a decision it made by as little as can be.
        s.counters
            .database_incremental_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })
    .await
    .map_err(|e| format!("apply task failed: {e}"))?
}

/// The most a full load may take, its queries and the build (a round that reads only the
/// cursor or incremental rows has `max(poll, 60 s)`).
const FULL_LOAD_BOUND: Duration = Duration::from_secs(600);

/// A database error with the server's message (`db error` alone says nothing).
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{e}: {}", d.message()),
        None => e.to_string(),
    }
}

/// A connection to the source's database with its session set: the statement timeout (30 s)
/// and the operator's `session_sql` (row-level-security context).
async fn connect_database(
    db: &crate::dbsource::DbSource,
) -> Result<tokio_postgres::Client, String> {
    let (client, _driver) = open_connection(db, None).await?;
    client
        .batch_execute("SET statement_timeout = '30s'")
        .await
        .map_err(|e| format!("statement_timeout: {e}"))?;
    for sql in &db.session_sql {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("session_sql: {e}"))?;
    }
    Ok(client)
}

/// Open a connection as `tls` says, its messages driven by a task of its own (ended with the
/// connection; its result is the reason). Notifications wake `wake` when given.
async fn open_connection(
    db: &crate::dbsource::DbSource,
    wake: Option<Arc<tokio::sync::Notify>>,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), String>>,
    ),
    String,
> {
    use crate::dbsource::DbTls;
    let mut pg: tokio_postgres::Config = db.url.parse().map_err(|e| format!("the URL: {e}"))?;
    pg.connect_timeout(Duration::from_secs(10))
        .keepalives_idle(Duration::from_secs(30));
    match db.tls {
        DbTls::Off => drive(&pg, tokio_postgres::NoTls, wake).await,
        DbTls::Require | DbTls::VerifyFull => {
            // TLS or nothing: never the plain fallback of `sslmode=prefer`.
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(database_tls(db)?);
            drive(&pg, tls, wake).await
        }
    }
}

async fn drive<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    wake: Option<Arc<tokio::sync::Notify>>,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), String>>,
    ),
    String,
>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, mut connection) = pg
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                }
                Some(Ok(_)) => {} // a notice
                Some(Err(e)) => {
                    warn!("database connection ended: {e}");
                    return Err(e.to_string());
                }
                None => return Err("the connection closed".to_string()),
            }
        }
    });
    Ok((client, driver))
}

/// The rustls client settings of `tls`: `verify-full` checks the chain against `ca_file` (else
/// the system's roots) and the URL's host; `require` encrypts without checking who answers
/// (PostgreSQL's `sslmode=require`), the handshake's signatures still checked.
fn database_tls(
    db: &crate::dbsource::DbSource,
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let provider = crate::certs::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if db.tls == crate::dbsource::DbTls::Require {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    match &db.ca_file {
        Some(path) => {
            for c in crate::pem::certificates(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("'{}': {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs()
                .map_err(|e| format!("the system's CA certificates: {e}"))?
            {
                let _ = roots.add(c);
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `tls = "require"`: any certificate is taken (no identity is checked; README says what that
/// protects against and what not).
#[derive(Debug)]
struct Unverified(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `notify_channel`: LISTEN on a connection of its own and wake the follower on every
/// notification (the follower coalesces them: one round for a burst). Polling goes on beside
/// it; a lost connection is opened again with backoff (1 s doubling, at most 30 s), and each
/// new LISTEN wakes the follower once, for what was sent while nobody listened.
async fn listen_for_wakeups(state: Arc<State>, wake: Arc<tokio::sync::Notify>) {
    let mut failures = 0u32;
    loop {
        let Some(db) = state.live().config.snapshot.database.clone() else {
            return;
        };
        let Some(channel) = db.notify_channel.clone() else {
            // A reload may set one.
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        };
        let key = format!("{}\u{0}{channel}", connection_key(&db));
        let outcome = async {
            let (client, mut driver) = open_connection(&db, Some(wake.clone())).await?;
            // The channel is checked to be a plain identifier; quoted, it is taken as written.
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await
                .map_err(|e| format!("LISTEN: {e}"))?;
            info!("database: listening on channel {channel}");
            failures = 0;
            wake.notify_one();
            loop {
                tokio::select! {
                    ended = &mut driver => {
                        return Err(match ended {
                            Ok(Err(e)) => e,
                            _ => "the connection ended".to_string(),
                        });
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let now = state.live().config.snapshot.database.clone();
                        let same = now.is_some_and(|d| {
                            d.notify_channel.as_deref() == Some(channel.as_str())
                                && format!("{}\u{0}{channel}", connection_key(&d)) == key
                        });
                        if !same {
                            driver.abort();
                            return Ok::<(), String>(());
                        }
                    }
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            warn!("database: LISTEN {channel}: {e}; polling goes on, listening again soon");
            failures = failures.saturating_add(1);
            tokio::time::sleep(
                backoff(Duration::from_secs(1), failures).min(Duration::from_secs(30)),
            )
            .await;
        }
    }
}

/// [`load_round`] inside one read-only repeatable-read transaction: one consistent state for
/// the cursor and every query of the round.
async fn read_consistent(
    client: &tokio_postgres::Client,
    db: &crate::dbsource::DbSource,
    due: &Due,
) -> Result<(Loaded, Option<String>), String> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| format!("begin: {e}"))?;
    let loaded = load_round(client, db, due).await;
    client
        .batch_execute(if loaded.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await
        .map_err(|e| format!("end of the transaction: {e}"))?;
    loaded
}

/// `permgate snapshot export`: one full load from the source's database, as the snapshot JSON
/// the gateway would build from it (the caller validates it against the config).
pub fn export_database(db: &crate::dbsource::DbSource) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let read = async {
            let client = connect_database(db).await?;
            read_consistent(&client, db, &Due::full_load()).await
        };
        let loaded = match tokio::time::timeout(FULL_LOAD_BOUND, read).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("no answer within {} s", FULL_LOAD_BOUND.as_secs())),
        };
        let (Loaded::Full(rows, records), _) = loaded else {
            return Err("the database gave no rows".to_string());
        };
        let (text, dropped, _) =
            crate::dbsource::finish_snapshot_text(&rows, records, &db.queries)?;
        for line in &dropped {
            eprintln!("permgate snapshot export: {line}");
        }
        Ok(text)
    })
}

/// The start of a full load's snapshot text, versioned by the time it is read, with its
/// other rows (`people`) before its records.
fn db_records_text(people: crate::dbsource::People) -> crate::dbsource::RecordsText {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::dbsource::RecordsText::with_people(&format!("db-{now}"), now, people)
}

/// One round inside the transaction: the cursor, then what is due — every query (a full
/// load), the incremental queries from the base cursor, or nothing. The data queries
/// (memberships, owners, shares, related) run once per tenant with `tenant_session_sql`
/// ([`tenant_rows`]); the others with the connection's session.
async fn load_round(
    client: &tokio_postgres::Client,
    db: &crate::dbsource::DbSource,
    due: &Due,
) -> Result<(Loaded, Option<String>), String> {
    let cursor = match &db.queries.cursor {
        None => None,
        Some(q) => {
            let rows = query_rows(client, "cursor", q, None).await?;
            Some(
                rows.first()
                    .and_then(|r| r.text.first().map(|(_, v)| v.clone()))
                    .unwrap_or_default(),
            )
        }
    };
    let changed = cursor.is_none() || cursor != due.last_cursor;
    let incremental = match (&db.incremental, &due.base) {
        (Some(inc), Some(Some(base))) if !due.full => Some((inc, base)),
        _ => None,
    };
    if incremental.is_some_and(|(_, base)| cursor.as_deref() == Some(base.as_str()))
        || (incremental.is_none() && !due.full && !changed)
    {
        return Ok((Loaded::Nothing, cursor));
    }
    if incremental.is_none() {
        // A full load (due, or every change without incremental queries). Rows are read as
        // they are used, so its statement lasts as long as the load (tens of seconds at ten
        // million rows): our 30 s default would cancel it. A statement timeout the operator's
        // session_sql set is kept. (SET LOCAL: until the end of this transaction.)
        let current = client
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await
            .and_then(|r| r.try_get::<_, String>(0))
            .map_err(|e| format!("statement_timeout: {}", db_error(&e)))?;
        if current == "30s" {
            client
                .batch_execute(&format!(
                    "SET LOCAL statement_timeout = '{}s'",
                    FULL_LOAD_BOUND.as_secs()
                ))
                .await
                .map_err(|e| format!("statement_timeout: {}", db_error(&e)))?;
        }
    }
    let q = &db.queries;
    let mut rows = crate::dbsource::Rows::default();
    if let Some(sql) = &q.tenants {
        rows.tenants = query_rows(client, "tenants", sql, None).await?;
    }
    // With per-tenant settings, the tenants the data queries run for.
    let tenants = if db.tenant_session_sql.is_empty() {
        None
    } else {
        Some(crate::dbsource::tenant_ids(&rows.tenants)?)
    };
    let tenants = tenants.as_deref();
    if let Some((inc, base)) = incremental {
        if let Some(sql) = &inc.users {
            rows.users = query_rows(client, "incremental.users", sql, Some(base)).await?;
        }
        for (name, sql, into) in [
            (
                "incremental.memberships",
                &inc.memberships,
                &mut rows.memberships,
            ),
            ("incremental.owners", &inc.owners, &mut rows.owners),
            ("incremental.shares", &inc.shares, &mut rows.shares),
            ("incremental.related", &inc.related, &mut rows.related),
        ] {
            if let Some(sql) = sql {
                *into = tenant_rows(client, db, tenants, name, sql, Some(base)).await?;
            }
        }
        return Ok((Loaded::Incremental(rows), cursor));
    }
    rows.users = query_rows(client, "users", &q.users, None).await?;
    for (name, sql, into) in [
        ("roles", &q.roles, &mut rows.roles),
        ("api_keys", &q.api_keys, &mut rows.api_keys),
    ] {
        if let Some(sql) = sql {
            *into = query_rows(client, name, sql, None).await?;
        }
    }
    if let Some(sql) = &q.memberships {
        rows.memberships = tenant_rows(client, db, tenants, "memberships", sql, None).await?;
    }
    // The other rows checked and written first (the build then compiles the users while it
    // reads the records); the record rows (the millions) go straight into the snapshot text
    // as they arrive.
    let mut records = db_records_text(crate::dbsource::people(&rows, q)?);
    for (query, sql) in [
        (RecordQuery::Owners, &q.owners),
        (RecordQuery::Shares, &q.shares),
        (RecordQuery::Related, &q.related),
    ] {
        if let Some(sql) = sql {
            tenant_each(
                client,
                db,
                tenants,
                query.name(),
                sql,
                None,
                &mut |row, columns, round| {
                    records.push(query, &PgText::read(query.name(), row, columns)?, round)
                },
            )
            .await?;
        }
    }
    Ok((Loaded::Full(rows, records), cursor))
}

/// A data query's rows: run once (`tenants` is `None`), or once per tenant after its
/// `tenant_session_sql` (`$1` the tenant), inside a savepoint rolled back after the tenant so
/// its settings do not reach the next one (the transaction's snapshot stays the same); the
/// rows must each name that tenant ([`crate::dbsource::check_tenant`]).
async fn tenant_rows(
    client: &tokio_postgres::Client,
    db: &crate::dbsource::DbSource,
    tenants: Option<&[String]>,
    name: &str,
    sql: &str,
    arg: Option<&str>,
) -> Result<Vec<crate::dbsource::Row>, String> {
    let mut out = Vec::new();
    tenant_each(
        client,
        db,
        tenants,
        name,
        sql,
        arg,
        &mut |row, columns, round| {
            let r = to_row(name, row, columns)?;
            if let Some((tenant, i)) = round {
                crate::dbsource::round_tenant(r.text("tenant"), name, tenant, i)?;
            }
            out.push(r);
            Ok(())
        },
    )
    .await?;
    Ok(out)
}

/// What [`tenant_each`] hands each row: the row, its columns, and with per-tenant settings the
/// tenant of the round and the row's index in it.
type EachRow<'f> = dyn FnMut(&tokio_postgres::Row, &[Column], Option<(&str, usize)>) -> Result<(), String>
    + Send
    + 'f;

/// What [`for_each_row`] hands each row: the row and its columns.
type EachPlainRow<'f> =
    dyn FnMut(&tokio_postgres::Row, &[Column]) -> Result<(), String> + Send + 'f;

/// [`tenant_rows`] row by row, as they arrive (nothing collected).
async fn tenant_each(
    client: &tokio_postgres::Client,
    db: &crate::dbsource::DbSource,
    tenants: Option<&[String]>,
    name: &str,
    sql: &str,
    arg: Option<&str>,
    each: &mut EachRow<'_>,
) -> Result<(), String> {
    let Some(tenants) = tenants else {
        return for_each_row(client, name, sql, arg, &mut |row, columns| {
            each(row, columns, None)
        })
        .await;
    };
    let mut settings = Vec::with_capacity(db.tenant_session_sql.len());
    for sql in &db.tenant_session_sql {
        settings.push(
            client
                .prepare_typed(sql, &[tokio_postgres::types::Type::TEXT])
                .await
                .map_err(|e| format!("tenant_session_sql: {e}"))?,
        );
    }
    for tenant in tenants {
        client
            .batch_execute("SAVEPOINT permgate_tenant")
            .await
            .map_err(|e| format!("savepoint: {e}"))?;
        for statement in &settings {
            client
                .query(statement, &[tenant])
                .await
                .map_err(|e| format!("tenant_session_sql for tenant '{tenant}': {e}"))?;
        }
        let mut i = 0usize;
        for_each_row(client, name, sql, arg, &mut |row, columns| {
            i += 1;
            each(row, columns, Some((tenant.as_str(), i - 1)))
        })
        .await?;
        client
            .batch_execute(
                "ROLLBACK TO SAVEPOINT permgate_tenant; RELEASE SAVEPOINT permgate_tenant",
            )
            .await
            .map_err(|e| format!("savepoint: {e}"))?;
    }
    Ok(())
}

/// Run one of the source's queries (`arg`: its `$1`, as text): its rows, text, text-array,
/// boolean and integer columns by name (NULLs left out; other types refused, naming the
/// column: cast them to text).
async fn query_rows(
    client: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    arg: Option<&str>,
) -> Result<Vec<crate::dbsource::Row>, String> {
    let mut out = Vec::new();
    for_each_row(client, name, sql, arg, &mut |row, columns| {
        out.push(to_row(name, row, columns)?);
        Ok(())
    })
    .await?;
    Ok(out)
}

/// How a column is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Text,
    TextArray,
    Bool,
    Int8,
    Int4,
}

/// A query's column, resolved once per query (not once per row).
struct Column {
    name: String,
    kind: ColumnKind,
}

/// The columns of a query's rows; a type permgate does not read is refused, naming the column.
fn columns(name: &str, row: &tokio_postgres::Row) -> Result<Vec<Column>, String> {
    use tokio_postgres::types::Type;
    row.columns()
        .iter()
        .map(|col| {
            let t = col.type_();
            let kind = if *t == Type::TEXT
                || *t == Type::VARCHAR
                || *t == Type::NAME
                || *t == Type::BPCHAR
            {
                ColumnKind::Text
            } else if *t == Type::TEXT_ARRAY || *t == Type::VARCHAR_ARRAY {
                ColumnKind::TextArray
            } else if *t == Type::BOOL {
                ColumnKind::Bool
            } else if *t == Type::INT8 {
                ColumnKind::Int8
            } else if *t == Type::INT4 {
                ColumnKind::Int4
            } else {
                return Err(format!(
                    "query '{name}', column '{}': type {t} (cast it to text)",
                    col.name()
                ));
            };
            Ok(Column {
                name: col.name().to_string(),
                kind,
            })
        })
        .collect()
}

/// Run a query and hand each row to `each` as it arrives (the rows are streamed, never all
/// held: a full load's ten million record rows would be gigabytes).
async fn for_each_row(
    client: &tokio_postgres::Client,
    name: &str,
    sql: &str,
    arg: Option<&str>,
    each: &mut EachPlainRow<'_>,
) -> Result<(), String> {
    use futures_util::TryStreamExt;
    use tokio_postgres::types::{ToSql, Type};
    let failed = |e: tokio_postgres::Error| format!("query '{name}': {}", db_error(&e));
    let stream = match arg {
        None => client
            .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await
            .map_err(failed)?,
        Some(arg) => {
            // `$1` is text whatever the SQL casts it to (`$1::timestamptz` casts the text).
            let statement = client
                .prepare_typed(sql, &[Type::TEXT])
                .await
                .map_err(failed)?;
            client
                .query_raw(&statement, [&arg as &(dyn ToSql + Sync)])
                .await
                .map_err(failed)?
        }
    };
    let mut stream = std::pin::pin!(stream);
    let mut cols: Option<Vec<Column>> = None;
    while let Some(row) = stream.try_next().await.map_err(failed)? {
        let cols = match &mut cols {
            Some(c) => c,
            None => cols.insert(columns(name, &row)?),
        };
        each(&row, cols)?;
    }
    Ok(())
}

/// A row as [`crate::dbsource::Row`]: its columns by name, NULLs left out.
fn to_row(
    name: &str,
    row: &tokio_postgres::Row,
    columns: &[Column],
) -> Result<crate::dbsource::Row, String> {
    let mut r = crate::dbsource::Row::default();
    for (i, col) in columns.iter().enumerate() {
        let c = col.name.clone();
        let bad = |e: tokio_postgres::Error| format!("query '{name}', column '{c}': {e}");
        match col.kind {
            ColumnKind::Text => {
                if let Some(v) = row.try_get::<_, Option<String>>(i).map_err(bad)? {
                    r.text.push((c, v));
                }
            }
            ColumnKind::TextArray => {
                let v: Option<Vec<Option<String>>> = row.try_get(i).map_err(bad)?;
                r.lists
                    .push((c, v.unwrap_or_default().into_iter().flatten().collect()));
            }
            ColumnKind::Bool => {
                if let Some(v) = row.try_get::<_, Option<bool>>(i).map_err(bad)? {
                    r.flags.push((c, v));
                }
            }
            ColumnKind::Int8 => {
                if let Some(v) = row.try_get::<_, Option<i64>>(i).map_err(bad)? {
                    r.text.push((c, v.to_string()));
                }
            }
            ColumnKind::Int4 => {
                if let Some(v) = row.try_get::<_, Option<i32>>(i).map_err(bad)? {
                    r.text.push((c, v.to_string()));
                }
            }
        }
    }
    Ok(r)
}

/// A record row's text columns, borrowed from the row (integers formatted; arrays and
/// booleans are not read from record rows): no owned column names per row.
struct PgText<'r> {
    columns: &'r [Column],
    values: Vec<Option<std::borrow::Cow<'r, str>>>,
}

impl<'r> PgText<'r> {
    fn read(
        name: &str,
        row: &'r tokio_postgres::Row,
        columns: &'r [Column],
    ) -> Result<PgText<'r>, String> {
        use std::borrow::Cow;
        let mut values = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let bad =
                |e: tokio_postgres::Error| format!("query '{name}', column '{}': {e}", col.name);
            values.push(match col.kind {
                ColumnKind::Text => row
                    .try_get::<_, Option<&str>>(i)
                    .map_err(bad)?
                    .map(Cow::Borrowed),
                ColumnKind::Int8 => row
                    .try_get::<_, Option<i64>>(i)
                    .map_err(bad)?
                    .map(|v| Cow::Owned(v.to_string())),
                ColumnKind::Int4 => row
                    .try_get::<_, Option<i32>>(i)
                    .map_err(bad)?
                    .map(|v| Cow::Owned(v.to_string())),
                ColumnKind::TextArray | ColumnKind::Bool => None,
            });
        }
        Ok(PgText { columns, values })
    }
}

impl crate::dbsource::TextColumns for PgText<'_> {
    fn text(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c.name == column)?;
        self.values.get(i)?.as_deref()
    }
}

/// Keep the live config's JWKS keys fresh ([`crate::jwks`]): a fetch when the store says one is
/// due (at start, every `jwks_refresh_seconds`, early after an unknown `kid` or a failure, never
/// more often than `jwks_min_refresh_seconds`). A failure keeps the last good keys.
async fn refresh_jwks(state: Arc<State>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            error!("jwks: cannot build an HTTP client: {e}");
            return;
        }
    };
    loop {
        let store = state.live().config.identity.jwks().cloned();
        if let Some(store) = store.filter(|s| s.due(std::time::Instant::now())) {
            let fetched = fetch_jwks(&client, store.source()).await;
            let url = store.source().first_url();
            match store.apply(fetched.as_deref().map_err(Clone::clone)) {
                Ok(note) => info!("jwks {url}: {note}"),
                Err(e) => warn!("jwks {url}: {e}; the last good keys stay"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The JWKS document of a source (through the discovery document first, for OIDC discovery).
async fn fetch_jwks(
    client: &reqwest::Client,
    source: &crate::jwks::JwksSource,
) -> Result<Vec<u8>, String> {
    let first = fetch_bounded(client, &source.first_url()).await?;
    match source {
        crate::jwks::JwksSource::Url(_) => Ok(first),
        crate::jwks::JwksSource::Discovery(issuer) => {
            let uri = crate::jwks::discovered_jwks_uri(&first, issuer)?;
            fetch_bounded(client, &uri).await
        }
    }
}

/// GET `url`, at most [`crate::jwks::MAX_JWKS_BYTES`] of body.
async fn fetch_bounded(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let max = crate::jwks::MAX_JWKS_BYTES;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: request failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("{url}: reading the body failed: {e}"))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("{url}: the document is over {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_secs(1);
        assert_eq!(backoff(i, 0), i);
        for f in 1..20 {
            let d = backoff(i, f);
            let base = (i * (1u32 << f.min(10))).min(Duration::from_secs(300));
            assert!(
                d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5),
                "{f}: {d:?}"
            );
        }
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_body() {
        use base64::Engine;
        use ed25519_dalek::{Signer, SigningKey};
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = sk.verifying_key().to_bytes();
        let body = b"{\"users\":[]}";
        let sig = base64::engine::general_purpose::STANDARD.encode(sk.sign(body).to_bytes());
        assert!(verify_signature(&pk, body, Some(&sig)).is_ok());
        assert!(verify_signature(&pk, b"{\"users\":[{}]}", Some(&sig)).is_err());
        assert!(verify_signature(&pk, body, None).is_err());
        assert!(verify_signature(&pk, body, Some("not base64!")).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32])
            .verifying_key()
            .to_bytes();
        assert!(verify_signature(&other, body, Some(&sig)).is_err());
    }
}
