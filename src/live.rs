//! The live state: the config and the snapshot compiled against it, behind one atomic pointer,
//! and every way they change.
//!
//! Why one file (~1,140 lines): every way the live state changes takes the same writer lock and the
//! same validate-then-swap path; one file keeps that path single.
//!
//! A request loads [`Live`] once and keeps it to the end, so a swap never changes a request in
//! flight, and the config and snapshot it sees always belong together. Every change — a config
//! reload, a new snapshot from a source, a batch of incremental changes — is validated and built
//! in full *off the request path*, then swapped in with one store; anything that fails leaves the
//! live state untouched and is logged, counted and shown in `/status`. Writers are serialized.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::changes::Applied;
use crate::changes::Change;
use crate::config::{Config, ConfigError, OnStale};
use crate::decision_log::DecisionLog;
use crate::metrics::{Metrics, RouteCounters, UNMATCHED};
use crate::reject::Rejection;
use crate::snapshot::{RawSnapshot, Snapshot};

/// What a request reads: the config and the snapshot compiled against it, swapped together.
pub struct Live {
    pub config: Arc<Config>,
    /// `None` until a valid snapshot is loaded: protected routes answer 503, never allow.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The snapshot's source text (to rebuild it against a reloaded catalogue, and to apply
    /// structural changes to).
    pub snapshot_text: Option<Arc<str>>,
    /// The batches of incremental changes applied since `snapshot_text`, in order: the live
    /// snapshot is the text's build with these applied ([`crate::changes`]).
    pub snapshot_changes: Vec<Arc<[Change]>>,
    /// Request counters of each route of `config`, by route index; one more at the end for
    /// requests that matched no route.
    pub route_counters: Vec<Arc<RouteCounters>>,
}

impl Live {
    /// The counters of a route index, or of unmatched requests.
    pub fn counters(&self, route: Option<usize>) -> Option<&Arc<RouteCounters>> {
        match route {
            Some(i) => self.route_counters.get(i),
            None => self.route_counters.last(),
        }
    }
}

/// Command-line overrides, re-applied on every config reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub engine: Option<crate::config::Engine>,
    /// `listen.h1_lane`.
    pub h1_lane: Option<bool>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.listen.address = l.clone();
        }
        if let Some(u) = self.upstream {
            config.upstream.address = u;
            config.upstream.addresses = vec![u];
        }
        if let Some(e) = self.engine {
            config.listen.engine = e;
        }
        if let Some(on) = self.h1_lane {
            config.listen.h1_lane = on;
        }
    }
}

/// One refused change, for `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeError {
    pub at_unix: u64,
    pub source: String,
    pub errors: Vec<String>,
}

/// Counters shown in `/status` (and later exported as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    pub snapshot_updates: AtomicU64,
    pub snapshot_update_failures: AtomicU64,
    /// Change batches that went through the source form and a full build
    /// ([`Snapshot::needs_rebuild`]) rather than the incremental path.
    pub change_rebuilds: AtomicU64,
    /// Pulls answered 304 Not Modified (nothing parsed).
    pub source_not_modified: AtomicU64,
    /// Pulls that failed before a snapshot could be offered (network, status, signature).
    pub source_errors: AtomicU64,
    /// `[snapshot.database]`: full loads swapped in.
    pub database_full_loads: AtomicU64,
    /// `[snapshot.database.incremental]`: change batches applied between full loads.
    pub database_incremental_batches: AtomicU64,
    /// `[snapshot.database]`: how long the last full load took, read and build (ms).
    pub database_full_load_ms: AtomicU64,
    /// `[snapshot.database]`: managers dropped because they named no user (or, with tenants,
    /// no member of that tenant): from full loads ([`crate::dbsource::finish_snapshot_text`])
    /// and incremental batches ([`crate::dbsource::incremental_changes_said`]).
    pub database_dangling_references: AtomicU64,
}

/// The gateway's state, shared by the proxy, the admin API and the sources.
pub struct State {
    live: ArcSwap<Live>,
    config_path: PathBuf,
    overrides: Overrides,
    /// Set while the snapshot is older than the configured maximum staleness.
    stale: AtomicBool,
    pub counters: Counters,
    errors: Mutex<VecDeque<ChangeError>>,
    /// Serializes writers: two changes never build from the same base and race to store.
    writer: Mutex<()>,
    pub metrics: Arc<Metrics>,
    pub decision_log: DecisionLog,
    /// The last audit events (accepted and refused changes), newest last.
    audit: Mutex<VecDeque<serde_json::Value>>,
    /// The candidate policy evaluated beside the live one (`policy.candidate_config`).
    candidate: arc_swap::ArcSwapOption<Live>,
    /// The callers' rate-limit buckets (`[rate_limit] per_caller`), kept across reloads.
    pub callers: crate::limit::Callers,
    /// The time base of every rate-limit bucket.
    pub clock: crate::limit::Clock,
    /// Records learned from create answers, until a full load confirms or drops them.
    pub learned: crate::learned::Learned,
    /// Where a replaced live state goes to be freed ([`Reaper`]).
    reaper: Reaper,
}

/// Frees replaced live states on a thread of its own. A request holds the live state it
/// started with (`load_full`) until it has answered; when a new snapshot is swapped in, the
/// last of those requests to finish would otherwise free the old snapshot on a data-plane
/// thread: at 10M records that is hundreds of milliseconds of one request's (and every
/// request queued behind it on that thread's) latency. The reaper keeps a reference to every
/// replaced state and drops it once it holds the only one; it looks every [`REAP_EVERY`].
struct Reaper {
    to: Option<Mutex<std::sync::mpsc::Sender<Arc<Live>>>>,
}

const REAP_EVERY: Duration = Duration::from_millis(20);

impl Reaper {
    fn start() -> Reaper {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Live>>();
        let calls = crate::control::own_nice();
        let spawned = std::thread::Builder::new()
            .name("permgate-reaper".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                crate::control::below_calls(calls);
                let mut held: Vec<Arc<Live>> = Vec::new();
                loop {
                    let next = if held.is_empty() {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(REAP_EVERY)
                    };
                    match next {
                        Ok(old) => held.push(old),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    // Only this thread holds it: nothing can take a new reference to a state
                    // that is no longer live, so it is freed here, not on a request's thread.
                    held.retain(|l| Arc::strong_count(l) > 1);
                }
            });
        match spawned {
            Ok(_) => Reaper {
                to: Some(Mutex::new(tx)),
            },
            Err(e) => {
                warn!("no reaper thread ({e}): replaced snapshots are freed where last held");
                Reaper { to: None }
            }
        }
    }

    /// Hand a replaced live state over to be freed once nothing else holds it.
    fn retire(&self, old: Arc<Live>) {
        if let Some(to) = &self.to {
            // A send fails only if the thread is gone: the state is then dropped here.
            let _ = lock(to).send(old);
        }
    }
}

const KEEP_ERRORS: usize = 20;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A writer that panicked cannot leave half a swap behind (swaps are single stores), so a
    // poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn strings(errors: &[ConfigError]) -> Vec<String> {
    errors.iter().map(|e| e.to_string()).collect()
}

/// The errors of building the snapshot a batch of changes made: their lines are in a text
/// nobody sees, so each names its field only, and at most [`crate::changes::MAX_ERRORS`] are
/// kept (the last line says how many more there were).
fn batch_errors(errors: &[ConfigError]) -> Vec<String> {
    let max = crate::changes::MAX_ERRORS;
    let mut out: Vec<String> = errors
        .iter()
        .take(max)
        .map(|e| match e.field.as_str() {
            "" => format!("after the changes: {}", e.message),
            f => format!("after the changes: {f}: {}", e.message),
        })
        .collect();
    if errors.len() > max {
        out.push(format!("… and {} more", errors.len() - max));
    }
    out
}

/// Write `text` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("snapshot"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Where the batches applied on top of a persisted snapshot are journaled: one JSON array of
/// changes per line, appended as each batch goes live, removed when a new snapshot is
/// persisted whole (before it is, so a crash in between leaves an older but coherent pair).
pub fn journal_path(persist: &Path) -> PathBuf {
    let mut name = persist.as_os_str().to_owned();
    name.push(".changes");
    PathBuf::from(name)
}

/// Append one batch to the journal, synced.
fn journal_append(persist: &Path, batch: &[Change]) -> std::io::Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_string(batch).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(persist))?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Replay the journal next to a persisted snapshot onto its build. A line that does not parse
/// (a batch whose write a crash cut short) ends the replay; so does a batch that no longer
/// applies (logged).
fn journal_replay(
    persist: &Path,
    mut snapshot: Snapshot,
    config: &Config,
) -> (Snapshot, Vec<Arc<[Change]>>) {
    let mut batches = Vec::new();
    let Ok(text) = std::fs::read_to_string(journal_path(persist)) else {
        return (snapshot, batches);
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(batch) = serde_json::from_str::<Vec<Change>>(line) else {
            warn!("snapshot journal: an unreadable batch ends the replay");
            break;
        };
        match snapshot.apply(&batch, &config.catalog) {
            Ok(a) => {
                snapshot = a.snapshot;
                batches.push(Arc::from(batch));
            }
            Err(e) => {
                warn!("snapshot journal: a batch no longer applies, replay stops: {e:?}");
                break;
            }
        }
    }
    (snapshot, batches)
}

/// The route counters for a config, by route index, then the unmatched counters.
fn counters_for(metrics: &Metrics, config: &Config) -> Vec<Arc<RouteCounters>> {
    metrics.route_counters(
        config
            .routes
            .routes()
            .iter()
            .map(|r| r.value.name.as_str())
            .chain(std::iter::once(UNMATCHED)),
    )
}

/// The result of loading the snapshot at start.
pub enum Startup {
    /// From the configured source.
    Source(Snapshot, Arc<str>),
    /// The source failed; the last good one persisted on disk is served (with the batches of
    /// changes journaled after it).
    Persisted(Snapshot, Arc<str>, Vec<Arc<[Change]>>, Vec<String>),
    /// Nothing usable: the gateway starts not ready.
    Nothing(Vec<String>),
    /// The config and its snapshot disagree on tenants (one has them, the other not): the
    /// gateway does not start ([`tenants_mismatch`]).
    Mismatch(Vec<String>),
}

/// A config with `[tenants]` and a snapshot without tenants, or the reverse: refused when the
/// snapshot or the config is loaded (they are rolled out together), naming both.
pub fn tenants_mismatch(config: &Config, snapshot: &Snapshot, source: &str) -> Option<String> {
    match (config.tenants.is_some(), snapshot.has_tenants()) {
        (true, false) => Some(format!(
            "{source}: the snapshot has no tenants, but {} has [tenants]: a tenant-aware config needs a snapshot with `tenants` and users' `memberships` (roll them out together)",
            config.file
        )),
        (false, true) => Some(format!(
            "{source}: the snapshot has tenants, but {} has no [tenants]: say where a call's tenant comes from ([tenants] from), or load a snapshot without tenants",
            config.file
        )),
        _ => None,
    }
}

/// Read and build the snapshot a config names, falling back to the persisted last good one.
pub fn load_startup_snapshot(config: &Config) -> Startup {
    let path = &config.snapshot.path;
    let file = path.display().to_string();
    let primary = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{file}: cannot read: {e}")])
        .and_then(|text| {
            Snapshot::build(&file, &text, &config.catalog)
                .map(|s| (s, Arc::<str>::from(text)))
                .map_err(|e| strings(&e))
        });
    let errors = match primary {
        Ok((s, text)) => {
            return match tenants_mismatch(config, &s, &file) {
                Some(e) => Startup::Mismatch(vec![e]),
                None => Startup::Source(s, text),
            }
        }
        Err(e) => e,
    };
    if let Some(persisted) = &config.snapshot.persist_path {
        let pfile = persisted.display().to_string();
        if let Ok(text) = std::fs::read_to_string(persisted) {
            match Snapshot::build(&pfile, &text, &config.catalog) {
                Ok(s) => {
                    if let Some(e) = tenants_mismatch(config, &s, &pfile) {
                        let mut all = errors;
                        all.push(e);
                        return Startup::Mismatch(all);
                    }
                    let (s, batches) = journal_replay(persisted, s, config);
                    return Startup::Persisted(s, Arc::from(text), batches, errors);
                }
                Err(e) => {
                    let mut all = errors;
                    all.extend(strings(&e));
                    return Startup::Nothing(all);
                }
            }
        }
    }
    Startup::Nothing(errors)
}

/// A snapshot built from `text` and checked against `config`'s tenants.
fn build_checked(config: &Config, text: &str, source: &str) -> Result<Snapshot, Vec<String>> {
    Snapshot::build(source, text, &config.catalog)
        .map_err(|e| strings(&e))
        .and_then(|s| match tenants_mismatch(config, &s, source) {
            Some(e) => Err(vec![e]),
            None => Ok(s),
        })
}

impl State {
    /// Load the config and the snapshot. A bad config is an error (nothing starts); a missing or
    /// bad snapshot is logged and the gateway starts not ready.
    pub fn load(config_path: &Path, overrides: Overrides) -> Result<State, Vec<ConfigError>> {
        let mut config = crate::config::load(config_path)?;
        overrides.apply(&mut config);
        let metrics = Arc::new(Metrics::default());
        let decision_log = DecisionLog::start(config.decision_log.clone()).map_err(|e| {
            vec![ConfigError::new(
                &config.file,
                None,
                "decision_log",
                format!("cannot open the decision log: {e}"),
            )]
        })?;
        let config = Arc::new(config);
        let state = State {
            live: ArcSwap::from_pointee(Live {
                route_counters: counters_for(&metrics, &config),
                config,
                snapshot: None,
                snapshot_text: None,
                snapshot_changes: Vec::new(),
            }),
            config_path: config_path.to_path_buf(),
            overrides,
            stale: AtomicBool::new(false),
            counters: Counters::default(),
            errors: Mutex::new(VecDeque::new()),
            writer: Mutex::new(()),
            metrics,
            decision_log,
            callers: crate::limit::Callers::default(),
            clock: crate::limit::Clock::default(),
            audit: Mutex::new(VecDeque::new()),
            candidate: arc_swap::ArcSwapOption::empty(),
            learned: Default::default(),
            reaper: Reaper::start(),
        };
        if let Some(e) = pingora_learns(&state.live().config) {
            return Err(vec![e]);
        }
        let config = state.live.load().config.clone();
        match load_startup_snapshot(&config) {
            Startup::Source(s, text) => {
                info!("snapshot {} loaded: {} users", s.version, s.user_count());
                state.store_snapshot(&config, s, text, "startup");
            }
            Startup::Persisted(s, text, batches, errors) => {
                for e in &errors {
                    error!("snapshot source refused: {e}");
                }
                warn!(
                    "serving the last good snapshot persisted on disk ({}, {} users)",
                    s.version,
                    s.user_count()
                );
                state.record_error("startup", errors);
                state.store_snapshot(&config, s, text, "persisted");
                if !batches.is_empty() {
                    // Already on disk: keep the journal, and the batches as the live state's.
                    let live = state.live();
                    state.swap_live(Live {
                        route_counters: live.route_counters.clone(),
                        config: live.config.clone(),
                        snapshot: live.snapshot.clone(),
                        snapshot_text: live.snapshot_text.clone(),
                        snapshot_changes: batches,
                    });
                }
            }
            Startup::Nothing(errors) => {
                for e in &errors {
                    error!("snapshot refused: {e}");
                }
                error!("no valid snapshot: protected routes answer 503 until one is loaded");
                state.record_error("startup", errors);
            }
            Startup::Mismatch(errors) => {
                return Err(errors
                    .into_iter()
                    .map(|e| ConfigError::new(&config.file, None, "tenants", e))
                    .collect())
            }
        }
        state.load_candidate(&config);
        Ok(state)
    }

    /// The candidate policy, if one is configured and valid.
    pub fn candidate(&self) -> Option<Arc<Live>> {
        self.candidate.load_full()
    }

    /// (Re)load the candidate named by `config`; a bad candidate is logged and dropped.
    fn load_candidate(&self, config: &Config) {
        let Some(path) = &config.candidate_config else {
            self.swap_candidate(None);
            return;
        };
        let candidate = match crate::config::load(path) {
            Err(e) => Err(strings(&e)),
            Ok(c) => match load_startup_snapshot(&c) {
                Startup::Source(s, text) => Ok(Live {
                    route_counters: Vec::new(),
                    config: Arc::new(c),
                    snapshot: Some(Arc::new(s)),
                    snapshot_text: Some(text),
                    snapshot_changes: Vec::new(),
                }),
                Startup::Persisted(s, text, batches, _) => Ok(Live {
                    route_counters: Vec::new(),
                    config: Arc::new(c),
                    snapshot: Some(Arc::new(s)),
                    snapshot_text: Some(text),
                    snapshot_changes: batches,
                }),
                Startup::Nothing(e) | Startup::Mismatch(e) => Err(e),
            },
        };
        match candidate {
            Ok(live) => {
                info!(
                    "candidate policy {} (hash {}) evaluated beside the live one",
                    live.config.file, live.config.hash
                );
                self.swap_candidate(Some(live));
            }
            Err(errors) => {
                for e in &errors {
                    error!("candidate policy refused: {e}");
                }
                self.record_error("candidate", errors);
                self.swap_candidate(None);
            }
        }
    }

    /// The live config and snapshot: one atomic load.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Make `new` the live state; the replaced one is freed by the reaper, not by whichever
    /// request drops it last.
    fn swap_live(&self, new: Live) {
        let old = self.live.swap(Arc::new(new));
        self.reaper.retire(old);
    }

    /// Set (or clear) the candidate policy; the replaced one goes to the reaper as well.
    fn swap_candidate(&self, new: Option<Live>) {
        if let Some(old) = self.candidate.swap(new.map(Arc::new)) {
            self.reaper.retire(old);
        }
    }

    /// The snapshot as a request may use it, or the rejection that stands for it.
    pub fn snapshot_for_request<'a>(&self, live: &'a Live) -> Result<&'a Snapshot, Rejection> {
        match &live.snapshot {
            None => Err(Rejection::not_ready()),
            Some(_)
                if self.stale.load(Ordering::Relaxed)
                    && live.config.snapshot.on_stale == OnStale::FailClosed =>
            {
                Err(Rejection::new(
                    503,
                    "snapshot_stale",
                    "the policy snapshot is older than the configured limit; nothing is allowed",
                ))
            }
            Some(s) => Ok(s),
        }
    }

    /// Ready to serve protected routes.
    /// A usable snapshot is live and, when keys come from a JWKS URL, they have been fetched once.
    pub fn ready(&self) -> bool {
        let live = self.live();
        self.snapshot_for_request(&live).is_ok()
            && live.config.identity.jwks().is_none_or(|s| s.loaded())
    }

    /// Log an audit event (target `permgate::audit`, one JSON object) and keep it for `/status`.
    fn audit(&self, mut event: serde_json::Value) {
        if let Some(o) = event.as_object_mut() {
            o.insert("ts_unix".into(), serde_json::json!(now_unix()));
        }
        info!(target: "permgate::audit", "{event}");
        let mut q = lock(&self.audit);
        if q.len() == KEEP_ERRORS {
            q.pop_front();
        }
        q.push_back(event);
    }

    fn record_error(&self, source: &str, errors: Vec<String>) {
        let mut q = lock(&self.errors);
        if q.len() == KEEP_ERRORS {
            q.pop_front();
        }
        q.push_back(ChangeError {
            at_unix: now_unix(),
            source: source.to_string(),
            errors,
        });
    }

    /// Swap in a snapshot built against `config` (the caller holds the writer lock, or is
    /// still starting).
    fn store_snapshot(
        &self,
        config: &Arc<Config>,
        snapshot: Snapshot,
        text: Arc<str>,
        source: &str,
    ) {
        if let Some(p) = &config.snapshot.persist_path {
            // The journal belongs to the previous base: gone first (see `journal_path`).
            let removed = match std::fs::remove_file(journal_path(p)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
            if let Err(e) = removed.and_then(|()| write_atomically(p, &text)) {
                // Persisting is a fallback for restarts; failing it does not block the update.
                warn!("could not persist the snapshot to {}: {e}", p.display());
                self.record_error(source, vec![format!("persist {}: {e}", p.display())]);
            }
        }
        info!(
            "snapshot {} live (source {source}, {} users)",
            snapshot.version,
            snapshot.user_count()
        );
        let previous = self.live();
        let changes = crate::audit::diff(previous.snapshot.as_deref(), &snapshot, &config.catalog);
        self.audit(serde_json::json!({
            "kind": "snapshot",
            "outcome": "accepted",
            "source": source,
            "version_before": previous.snapshot.as_ref().map(|s| s.version.clone()),
            "version_after": snapshot.version,
            "changes": changes,
        }));
        self.swap_live(Live {
            route_counters: counters_for(&self.metrics, config),
            config: config.clone(),
            snapshot: Some(Arc::new(snapshot)),
            snapshot_text: Some(text),
            snapshot_changes: Vec::new(),
        });
        self.update_staleness();
    }

    /// Swap in a snapshot made from the live one by a batch of changes (the caller holds the
    /// writer lock): the batch is journaled next to the persisted snapshot, audited with the
    /// users it touched, and the source text stays the base the batches apply to.
    fn store_applied(&self, current: &Live, applied: Applied, batch: &[Change], source: &str) {
        let config = &current.config;
        if let Some(p) = &config.snapshot.persist_path {
            if let Err(e) = journal_append(p, batch) {
                warn!("could not journal the changes next to {}: {e}", p.display());
                self.record_error(source, vec![format!("journal {}: {e}", p.display())]);
            }
        }
        let snapshot = applied.snapshot;
        info!(
            "snapshot {} live (source {source}, {} users touched, {} record changes)",
            snapshot.version,
            applied.users_touched.len(),
            applied.record_changes
        );
        let changes = crate::audit::diff_users(
            current.snapshot.as_deref(),
            &snapshot,
            &applied.users_touched,
        );
        self.audit(serde_json::json!({
            "kind": "snapshot",
            "outcome": "accepted",
            "source": source,
            "version_before": current.snapshot.as_ref().map(|s| s.version.clone()),
            "version_after": snapshot.version,
            "changes": changes,
            "record_changes": applied.record_changes,
        }));
        let mut batches = current.snapshot_changes.clone();
        batches.push(Arc::from(batch));
        self.swap_live(Live {
            route_counters: current.route_counters.clone(),
            config: config.clone(),
            snapshot: Some(Arc::new(snapshot)),
            snapshot_text: current.snapshot_text.clone(),
            snapshot_changes: batches,
        });
        self.update_staleness();
    }

    /// Validate and swap in a new snapshot (from a file, a URL or the admin API). On error the
    /// live one stays and the errors are returned, logged and counted.
    pub fn replace_snapshot(&self, text: &str, source: &str) -> Result<String, Vec<String>> {
        self.replace_snapshot_with(text, || Arc::from(text), source)
    }

    /// [`State::replace_snapshot`] of a text already shared (a database load's: kept as the
    /// source form without another copy).
    pub fn replace_snapshot_shared(
        &self,
        text: Arc<str>,
        source: &str,
    ) -> Result<String, Vec<String>> {
        self.replace_snapshot_with(&text, || text.clone(), source)
    }

    fn replace_snapshot_with(
        &self,
        text: &str,
        shared: impl FnOnce() -> Arc<str>,
        source: &str,
    ) -> Result<String, Vec<String>> {
        // The build (seconds; tens at 10M records) runs before the writer lock is taken: it
        // runs on a control thread below the calls' priority (crate::control::below_calls),
        // and a create answer's learn waits on the data plane for that lock
        // (crate::plane::learn). Batches applied meanwhile are put back on top below.
        let start = self.live();
        if start.snapshot_changes.is_empty() && start.snapshot_text.as_deref() == Some(text) {
            // Unchanged content: nothing to rebuild.
            return Ok(start
                .snapshot
                .as_ref()
                .map(|s| s.version.clone())
                .unwrap_or_default());
        }
        let early = build_checked(&start.config, text, source);
        self.replace_built(&start, early, text, shared, source)
    }

    /// The second half of [`State::replace_snapshot_with`]: `early` was built from `text`
    /// against `start`'s config, without the writer lock; swap it in under the lock.
    fn replace_built(
        &self,
        start: &Live,
        early: Result<Snapshot, Vec<String>>,
        text: &str,
        shared: impl FnOnce() -> Arc<str>,
        source: &str,
    ) -> Result<String, Vec<String>> {
        let _w = lock(&self.writer);
        let current = self.live();
        let built = if Arc::ptr_eq(&current.config, &start.config) {
            early
        } else {
            // The config was reloaded meanwhile: build against the live one (under the lock,
            // as rare as a reload during a load).
            drop(early);
            build_checked(&current.config, text, source)
        };
        // Batches applied while it was built, which the load replaces: as if they had waited
        // for the lock, they go back on top (an admin batch, a learned record, an incremental
        // round of another source).
        let since: Vec<Change> = match (&current.snapshot_text, &start.snapshot_text) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => current
                .snapshot_changes
                .get(start.snapshot_changes.len()..)
                .unwrap_or_default()
                .iter()
                .flat_map(|b| b.iter().cloned())
                .collect(),
            _ => current
                .snapshot_changes
                .iter()
                .flat_map(|b| b.iter().cloned())
                .collect(),
        };
        let replayed = |this: &State, version: String| -> String {
            if since.is_empty() {
                return version;
            }
            let label = format!("{source} + changes applied during the load");
            match this.apply_locked(&since, &label) {
                Ok(v) => v,
                Err(_) => {
                    // One at a time: a change that no longer applies on top of the load is
                    // dropped (logged and listed in last_errors by apply_locked).
                    let mut last = version;
                    for change in &since {
                        if let Ok(v) = this.apply_locked(std::slice::from_ref(change), &label) {
                            last = v;
                        }
                    }
                    last
                }
            }
        };
        match built {
            Ok(s) => {
                let version = s.version.clone();
                let types = current.config.catalog.record_types();
                let settled =
                    self.learned
                        .reconcile(&s, types, current.config.snapshot.learned_ttl);
                for d in &settled.dropped {
                    warn!(
                        "learned record {d} dropped: the full load from {source} does not hold it and it is older than snapshot.learned_ttl_ms"
                    );
                }
                self.store_snapshot(&current.config, s, shared(), source);
                self.counters
                    .snapshot_updates
                    .fetch_add(1, Ordering::Relaxed);
                let version = replayed(self, version);
                if settled.reapply.is_empty() {
                    return Ok(version);
                }
                // Younger than the bound: put back on top of the load (crate::learned).
                let label = format!("{source} + learned records");
                match self.apply_locked(&settled.reapply, &label) {
                    Ok(v) => Ok(v),
                    Err(_) => {
                        // One at a time: a record that no longer applies (its owner or parent
                        // is gone) is dropped, the others stay.
                        let mut last = version;
                        for change in &settled.reapply {
                            match self.apply_locked(std::slice::from_ref(change), &label) {
                                Ok(v) => last = v,
                                Err(_) => self.learned.drop_one(change, types),
                            }
                        }
                        Ok(last)
                    }
                }
            }
            Err(e) => Err(self.refuse_snapshot(source, e)),
        }
    }

    /// Learn a record from a create answer ([`crate::learn`]): the `upsert_record` applied to
    /// the live snapshot as an admin batch would be (validated, journaled, audited), then kept
    /// until a full load confirms or drops it ([`crate::learned`]).
    pub fn learn(&self, change: Change, source: &str) -> Result<String, Vec<String>> {
        let _w = lock(&self.writer);
        let current = self.live();
        let types = current.config.catalog.record_types();
        if let Some(snapshot) = &current.snapshot {
            if crate::learned::known(snapshot, &change, types) {
                // Only a new record is learned: what the snapshot already holds came from a
                // full load or the operator, and a create answer does not change its owner.
                return Err(vec!["the snapshot already holds this record".into()]);
            }
        }
        let version = self.apply_locked(std::slice::from_ref(&change), source)?;
        let live = self.live();
        self.learned.add(change, live.config.catalog.record_types());
        Ok(version)
    }

    /// A source could not deliver (network error, bad status, bad signature): logged, counted,
    /// shown in `/status`; the live snapshot stays.
    pub fn source_failed(&self, source: &str, message: String) {
        warn!("snapshot source {source}: {message}");
        self.counters.source_errors.fetch_add(1, Ordering::Relaxed);
        self.record_error(source, vec![message]);
    }

    fn refuse_snapshot(&self, source: &str, errors: Vec<String>) -> Vec<String> {
        for e in &errors {
            error!("snapshot from {source} refused, the live one stays: {e}");
        }
        self.counters
            .snapshot_update_failures
            .fetch_add(1, Ordering::Relaxed);
        self.record_error(source, errors.clone());
        self.audit(serde_json::json!({
            "kind": "snapshot",
            "outcome": "refused",
            "source": source,
            "version_live": self.live().snapshot.as_ref().map(|s| s.version.clone()),
            "errors": errors,
        }));
        errors
    }

    /// Apply a batch of incremental changes to the live snapshot and swap in the result. The
    /// batch is validated whole; a batch [`Snapshot::needs_rebuild`] names (structural changes,
    /// records past their table's free slots, a record moved to another tenant) goes through
    /// the source form and a full build, any other — record removals and batches on a snapshot
    /// with tenants included — shares every untouched part with the live snapshot
    /// ([`crate::changes`]).
    pub fn apply_changes(&self, changes: &[Change], source: &str) -> Result<String, Vec<String>> {
        let _w = lock(&self.writer);
        let applied = self.apply_locked(changes, source);
        if applied.is_ok() {
            // The operator's word on a learned record stands (crate::learned).
            let live = self.live();
            self.learned
                .settle(changes, live.config.catalog.record_types());
        }
        applied
    }

    /// [`State::apply_changes`], the writer lock held by the caller.
    fn apply_locked(&self, changes: &[Change], source: &str) -> Result<String, Vec<String>> {
        let current = self.live();
        let (Some(snapshot), Some(text)) = (&current.snapshot, &current.snapshot_text) else {
            return Err(self.refuse_snapshot(
                source,
                vec!["no snapshot is loaded to apply changes to".into()],
            ));
        };
        if !snapshot.needs_rebuild(changes, &current.config.catalog) {
            return match snapshot.apply(changes, &current.config.catalog) {
                Ok(applied) => {
                    let version = applied.snapshot.version.clone();
                    self.store_applied(&current, applied, changes, source);
                    self.counters
                        .snapshot_updates
                        .fetch_add(1, Ordering::Relaxed);
                    Ok(version)
                }
                Err(e) => Err(self.refuse_snapshot(source, e)),
            };
        }
        // A bad role is one error naming the change, not one per user holding the role.
        let role_errors = crate::changes::check_roles(changes, &current.config.catalog);
        if !role_errors.is_empty() {
            return Err(self.refuse_snapshot(source, role_errors));
        }
        let types = current.config.catalog.record_types();
        let mut raw = match RawSnapshot::parse(text) {
            Ok(r) => r,
            Err(e) => return Err(self.refuse_snapshot(source, vec![e])),
        };
        // The batches since the last full load, then this one: the source form is indexed
        // once for all of them (crate::changes).
        let mut batches: Vec<&[Change]> = current.snapshot_changes.iter().map(|b| &b[..]).collect();
        batches.push(changes);
        if let Err(e) = raw.apply_all(&batches, types) {
            return Err(self.refuse_snapshot(source, vec![e]));
        }
        let member_roles =
            crate::changes::check_member_roles(changes, &current.config.catalog, &raw);
        if !member_roles.is_empty() {
            return Err(self.refuse_snapshot(source, member_roles));
        }
        raw.version = Some(crate::changes::next_version(&snapshot.version));
        raw.generated_at = Some(now_unix());
        let new_text = raw.to_json();
        match Snapshot::build(source, &new_text, &current.config.catalog) {
            Ok(s) => {
                let version = s.version.clone();
                self.store_snapshot(&current.config, s, Arc::from(new_text), source);
                self.counters
                    .snapshot_updates
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .change_rebuilds
                    .fetch_add(1, Ordering::Relaxed);
                Ok(version)
            }
            Err(e) => Err(self.refuse_snapshot(source, batch_errors(&e))),
        }
    }

    /// Re-read the config file; rebuild the live snapshot against it; swap both at once.
    pub fn reload_config(&self, source: &str) -> Result<String, Vec<String>> {
        let _w = lock(&self.writer);
        let current = self.live();
        let refuse = |errors: Vec<String>| {
            for e in &errors {
                error!("config reload ({source}) refused, the live config stays: {e}");
            }
            self.counters
                .config_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            self.record_error(source, errors.clone());
            self.audit(serde_json::json!({
                "kind": "config",
                "outcome": "refused",
                "source": source,
                "hash_live": current.config.hash,
                "errors": errors,
            }));
            errors
        };
        let mut config = match crate::config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return Err(refuse(strings(&e))),
        };
        self.overrides.apply(&mut config);
        if let Some(e) = pingora_learns(&config) {
            return Err(refuse(vec![e.to_string()]));
        }
        if config.listen.address != current.config.listen.address
            || config.listen.h2c != current.config.listen.h2c
            || config.listen.threads != current.config.listen.threads
            || config.listen.drain_seconds != current.config.listen.drain_seconds
            || config.listen.max_connections != current.config.listen.max_connections
            || config.listen.backlog != current.config.listen.backlog
        {
            return Err(refuse(vec![format!(
                "{}: [listen] changed; listeners cannot change without a restart",
                config.file
            )]));
        }
        if config.upstream.addresses != current.config.upstream.addresses {
            return Err(refuse(vec![format!(
                "{}: upstream addresses changed; the CRM instances cannot change without a restart",
                config.file
            )]));
        }
        if config.admin.as_ref().map(|a| a.listen)
            != current.config.admin.as_ref().map(|a| a.listen)
        {
            return Err(refuse(vec![format!(
                "{}: admin.listen changed; it cannot change without a restart",
                config.file
            )]));
        }
        // The snapshot's roles were compiled against the old catalogue: rebuild it.
        let snapshot = match &current.snapshot_text {
            None => None,
            Some(text) => match Snapshot::build("live snapshot", text, &config.catalog)
                .map_err(|e| strings(&e))
                .and_then(|mut s| {
                    for batch in &current.snapshot_changes {
                        s = s.apply(batch, &config.catalog)?.snapshot;
                    }
                    Ok(s)
                }) {
                Ok(s) => {
                    if let Some(e) = tenants_mismatch(&config, &s, "live snapshot") {
                        return Err(refuse(vec![e]));
                    }
                    Some(Arc::new(s))
                }
                Err(e) => {
                    let mut errors = vec![
                        "the live snapshot is not valid against the new config's catalogue"
                            .to_string(),
                    ];
                    errors.extend(e);
                    return Err(refuse(errors));
                }
            },
        };
        let hash = config.hash.clone();
        info!(
            "config {} (hash {hash}) live (source {source})",
            config.file
        );
        let config = Arc::new(config);
        self.swap_live(Live {
            route_counters: counters_for(&self.metrics, &config),
            config,
            snapshot,
            snapshot_text: current.snapshot_text.clone(),
            snapshot_changes: current.snapshot_changes.clone(),
        });
        self.counters.config_reloads.fetch_add(1, Ordering::Relaxed);
        self.update_staleness();
        let live = self.live();
        self.load_candidate(&live.config);
        Ok(hash)
    }

    /// Recompute the stale flag (called on every swap and by a 1 s ticker).
    pub fn update_staleness(&self) {
        let live = self.live();
        let limit = live.config.snapshot.max_staleness;
        let stale = match &live.snapshot {
            Some(s) if !limit.is_zero() => s.age() > limit,
            _ => false,
        };
        let was = self.stale.swap(stale, Ordering::Relaxed);
        if stale && !was {
            warn!(
                "the snapshot is older than {}s ({}); {}",
                limit.as_secs(),
                live.snapshot
                    .as_ref()
                    .map(|s| s.version.as_str())
                    .unwrap_or("-"),
                match live.config.snapshot.on_stale {
                    OnStale::Serve => "still serving it (on_stale = serve)",
                    OnStale::FailClosed => "protected routes answer 503 (on_stale = fail_closed)",
                }
            );
        }
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let live = self.live();
        let c = &self.counters;
        let snapshot = live.snapshot.as_ref().map(|s| {
            serde_json::json!({
                "version": s.version,
                "age_seconds": s.age().as_secs_f64(),
                "loaded_at_unix": s.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "users": s.user_count(),
                "services": s.service_count(),
                "custom_roles": s.custom_role_count(),
                "stale": self.is_stale(),
            })
        });
        serde_json::json!({
            "ready": self.ready(),
            "config": {
                "file": live.config.file,
                "hash": live.config.hash,
                "routes": live.config.routes.len(),
                "permissions": live.config.catalog.permissions().len(),
            },
            "snapshot": snapshot,
            "jwks": live.config.identity.jwks().map(|s| s.status()),
            "counters": {
                "config_reloads": c.config_reloads.load(Ordering::Relaxed),
                "config_reload_failures": c.config_reload_failures.load(Ordering::Relaxed),
                "snapshot_updates": c.snapshot_updates.load(Ordering::Relaxed),
                "snapshot_update_failures": c.snapshot_update_failures.load(Ordering::Relaxed),
                "change_rebuilds": c.change_rebuilds.load(Ordering::Relaxed),
                "source_not_modified": c.source_not_modified.load(Ordering::Relaxed),
                "source_errors": c.source_errors.load(Ordering::Relaxed),
                "database_full_loads": c.database_full_loads.load(Ordering::Relaxed),
                "database_incremental_batches": c.database_incremental_batches.load(Ordering::Relaxed),
                "database_full_load_ms": c.database_full_load_ms.load(Ordering::Relaxed),
                "database_dangling_references": c.database_dangling_references.load(Ordering::Relaxed),
            },
            "learned": self.learned.status(),
            "last_errors": lock(&self.errors).iter().cloned().collect::<Vec<_>>(),
            "recent_changes": lock(&self.audit).iter().cloned().collect::<Vec<_>>(),
        })
    }
}

impl State {
    /// `/metrics`: the Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        let live = self.live();
        let c = &self.counters;
        let (age, users) = live.snapshot.as_ref().map_or((-1.0, 0.0), |s| {
            (s.age().as_secs_f64(), s.user_count() as f64)
        });
        let version = live.snapshot.as_ref().map_or_else(
            || "none".to_string(),
            |s| s.version.replace(['"', '\\', '\n'], "_"),
        );
        let info = format!(
            "permgate_snapshot_info{{version=\"{version}\",config_hash=\"{}\"}}",
            live.config.hash
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        self.metrics.render(&[
            (
                info.as_str(),
                "gauge",
                "The live snapshot version and config hash (value 1).",
                1.0,
            ),
            (
                "permgate_snapshot_age_seconds",
                "gauge",
                "Age of the live snapshot (-1: none).",
                age,
            ),
            (
                "permgate_snapshot_users",
                "gauge",
                "Users in the live snapshot.",
                users,
            ),
            (
                "permgate_ready",
                "gauge",
                "1 when a usable snapshot is live.",
                if self.ready() { 1.0 } else { 0.0 },
            ),
            (
                "permgate_snapshot_stale",
                "gauge",
                "1 when the snapshot is older than its limit.",
                if self.is_stale() { 1.0 } else { 0.0 },
            ),
            (
                "permgate_config_reloads_total",
                "counter",
                "Config reloads applied.",
                load(&c.config_reloads),
            ),
            (
                "permgate_config_reload_failures_total",
                "counter",
                "Config reloads refused.",
                load(&c.config_reload_failures),
            ),
            (
                "permgate_snapshot_updates_total",
                "counter",
                "Snapshots swapped in.",
                load(&c.snapshot_updates),
            ),
            (
                "permgate_snapshot_update_failures_total",
                "counter",
                "Snapshots refused.",
                load(&c.snapshot_update_failures),
            ),
            (
                "permgate_snapshot_change_rebuilds_total",
                "counter",
                "Change batches applied through a full build (not incrementally).",
                load(&c.change_rebuilds),
            ),
            (
                "permgate_snapshot_source_not_modified_total",
                "counter",
                "Pulls answered 304.",
                load(&c.source_not_modified),
            ),
            (
                "permgate_snapshot_source_errors_total",
                "counter",
                "Pulls that failed.",
                load(&c.source_errors),
            ),
            (
                "permgate_database_full_loads_total",
                "counter",
                "Full loads from [snapshot.database] swapped in.",
                load(&c.database_full_loads),
            ),
            (
                "permgate_database_incremental_batches_total",
                "counter",
                "Change batches from [snapshot.database.incremental] applied.",
                load(&c.database_incremental_batches),
            ),
            (
                "permgate_database_full_load_seconds",
                "gauge",
                "How long the last full load from [snapshot.database] took, read and build.",
                load(&c.database_full_load_ms) / 1000.0,
            ),
            (
                "permgate_database_dangling_references_total",
                "counter",
                "Managers dropped from loads and batches from [snapshot.database]: no such user, or no member of the tenant.",
                load(&c.database_dangling_references),
            ),
            (
                "permgate_learned_records_total",
                "counter",
                "Records learned from the CRM's create answers (routes with creates).",
                load(&self.learned.learned),
            ),
            (
                "permgate_learn_skipped_total",
                "counter",
                "2xx create answers whose record was not learned (too large, not JSON, no or a bad id, refused).",
                load(&self.learned.not_learned),
            ),
            (
                "permgate_learned_confirmed_total",
                "counter",
                "Learned records a full load then held.",
                load(&self.learned.confirmed),
            ),
            (
                "permgate_learned_dropped_total",
                "counter",
                "Learned records dropped: absent from a full load once older than snapshot.learned_ttl_ms.",
                load(&self.learned.dropped),
            ),
            (
                "permgate_learned_pending",
                "gauge",
                "Learned records no full load has confirmed yet.",
                self.learned.pending() as f64,
            ),
            (
                "permgate_decision_log_written_total",
                "counter",
                "Decision log lines written.",
                load(&self.decision_log.written),
            ),
            (
                "permgate_rate_limit_callers",
                "gauge",
                "Callers with a rate-limit bucket now ([rate_limit] per_caller).",
                self.callers.len() as f64,
            ),
            (
                "permgate_decision_log_dropped_total",
                "counter",
                "Decision log lines dropped (queue full).",
                load(&self.decision_log.dropped),
            ),
        ])
    }
}

/// A config whose engine (after the command line's overrides) is Pingora cannot learn records
/// from answers: a route with `creates` is refused rather than silently not learned.
fn pingora_learns(config: &Config) -> Option<ConfigError> {
    if config.listen.engine != crate::config::Engine::Pingora {
        return None;
    }
    let route = config
        .routes
        .routes()
        .iter()
        .find(|r| r.value.creates.is_some())?;
    Some(ConfigError::new(
        &config.file,
        route.origin.rsplit(':').next().and_then(|l| l.parse().ok()),
        "route",
        format!(
            "route '{}': creates is served by the hyper engine only (the Pingora engine learns no records); use --engine hyper or remove creates",
            route.value.name
        ),
    ))
}

/// How often the staleness flag is recomputed.
pub const STALENESS_TICK: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch applied while a full load was being built (without the writer lock) is put
    /// back on top of the load when it is swapped in, as if it had waited for the lock.
    #[test]
    fn changes_applied_during_a_full_load_stay() {
        let (_dir, state) = demo_state();
        let start = state.live();
        let text = format!("{} ", crate::demo::DEMO_SNAPSHOT);
        let early = build_checked(&start.config, &text, "test");
        let change = Change::SetOwner {
            record_type: "deal".into(),
            id: crate::records::RawId::Text("1".into()),
            owner: Some("u-rep1".into()),
        };
        state
            .apply_changes(std::slice::from_ref(&change), "admin")
            .unwrap();
        state
            .replace_built(&start, early, &text, || Arc::from(text.as_str()), "test")
            .unwrap();
        let live = state.live();
        assert_eq!(live.snapshot_text.as_deref(), Some(text.as_str()));
        assert_eq!(live.snapshot_changes.len(), 1);
        assert_eq!(
            format!("{:?}", &live.snapshot_changes[0][..]),
            format!("{:?}", std::slice::from_ref(&change))
        );
    }

    /// Waits (at most 10 s) for the reaper to free `old`.
    fn freed_soon(old: &std::sync::Weak<Live>) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while old.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < until,
                "the replaced state was never freed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn demo_state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
        let config = format!(
            "{}\n[decision_log]\ntarget = \"off\"\n",
            crate::demo::DEMO_CONFIG
        );
        std::fs::write(dir.path().join("permgate.toml"), config).unwrap();
        let state = State::load(&dir.path().join("permgate.toml"), Overrides::default()).unwrap();
        (dir, state)
    }

    #[test]
    fn a_replaced_snapshot_is_freed_by_the_reaper_not_by_its_last_request() {
        let (_dir, state) = demo_state();
        // A request in flight holds the live state it started with.
        let request = state.live();
        let old = Arc::downgrade(&request);
        assert!(request.snapshot.is_some());
        // (Another text: an unchanged one is not swapped.)
        state
            .replace_snapshot(&format!("{} ", crate::demo::DEMO_SNAPSHOT), "test")
            .unwrap();
        assert!(!Arc::ptr_eq(&request, &state.live()));
        // The reaper holds the replaced state too, so the request's drop is not the last one.
        assert_eq!(Arc::strong_count(&request), 2);
        drop(request);
        // And it frees it soon after (bounded wait).
        freed_soon(&old);
        // A state nobody else holds goes at the reaper's next look.
        let old = Arc::downgrade(&state.live());
        state
            .replace_snapshot(&format!("{}  ", crate::demo::DEMO_SNAPSHOT), "test")
            .unwrap();
        freed_soon(&old);
    }
}
