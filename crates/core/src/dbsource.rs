//! The snapshot read from the CRM's own database (`[snapshot.database]`, issue 17): the SQL the
//! operator writes yields users, custom roles, API-key digests, record owners, shares and
//! related records; permgate builds the snapshot from the rows and swaps it in like any other
//! (validated whole; a refused one leaves the last good snapshot live).
//!
//! With tenants (`[tenants]` in the config, issue 16), the `memberships` query gives each user's
//! roles, teams and manager per tenant, and the `owners` rows a `tenant` column; the snapshot's
//! tenants are the `tenants` query's rows, else every tenant those rows name. With
//! `tenant_session_sql`, the data queries (memberships, owners, shares, related) run once per
//! tenant of the `tenants` query, after that tenant's session settings (row-level security:
//! `SELECT set_config('app.current_org', $1, false)`, `$1` the tenant), each tenant inside a
//! savepoint rolled back after it, so no setting leaks into the next; every row they read must
//! name its tenant in a `tenant` column, and a row without one or naming another is refused
//! (the settings did not restrict the query).
//!
//! The gateway loads everything at start and every `reconcile_interval_ms`; in between, every
//! `poll_interval_ms` it runs the `cursor` query (one value, e.g. `SELECT max(updated_at)::text
//! FROM …`) and loads again as soon as that value changes. A database outage keeps the last good
//! snapshot (staleness metrics and `on_stale` apply as for every source).
//!
//! The driver is `tokio-postgres` (the async PostgreSQL driver the Rust ecosystem settled on,
//! pure Rust, on the tokio runtime we already run); this module holds the settings and the
//! rows → snapshot step, which does no I/O (the server's control thread runs the queries).
//!
//! Why one file (~1,270 lines without its tests): the full load and the incremental rounds turn
//! the same rows into the same snapshot, the one as JSON and the other as change batches; they
//! are read side by side so a column added to one is added to the other. The managers both drop
//! (and the rounds give back, [`DroppedManagers`]) sit between them for the same reason.

use std::time::Duration;

use crate::catalog::Catalog;
use crate::changes::{Change, RecordRef};
use crate::ids::canonical_id;
use crate::records::{Found, Principal, RawId, UserIdx};
use crate::snapshot::{RawMembership, RawRole, RawSnapshot, RawTenant, RawUser, Snapshot};

/// `[snapshot.database]`, validated.
#[derive(Clone)]
pub struct DbSource {
    /// `postgres://user:password@host:port/dbname` (a read-only role is enough).
    pub url: String,
    pub poll_interval: Duration,
    pub reconcile_interval: Duration,
    /// Run on the connection before the queries (`SET ROLE`, `set_config('app.current_org',
    /// …)` for row-level security, a statement timeout).
    pub session_sql: Vec<String>,
    /// Run before the data queries of each tenant, `$1` the tenant's id (module docs).
    pub tenant_session_sql: Vec<String>,
    pub queries: DbQueries,
    /// `[snapshot.database.incremental]`: between full loads, the rows changed since a cursor
    /// value are applied as one change batch (without it, a cursor change is a full load).
    pub incremental: Option<DbIncremental>,
    /// `notify_channel`: LISTEN on it; a notification runs a poll round at once.
    pub notify_channel: Option<String>,
    /// `tls`: how the connection is protected.
    pub tls: DbTls,
    /// `ca_file`: the CA certificates (PEM) the server's certificate is verified against
    /// (`verify-full`); absent, the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// `tls` of `[snapshot.database]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbTls {
    /// Plain TCP (a URL's own `sslmode` is not followed: set `tls`).
    #[default]
    Off,
    /// TLS or no connection; the server's certificate is not verified (a passive listener
    /// learns nothing, an active one in the path can impersonate the server), as PostgreSQL's
    /// `sslmode=require`.
    Require,
    /// TLS or no connection; the certificate chain is verified against `ca_file` (else the
    /// system's roots) and must name the URL's host, as `sslmode=verify-full`.
    VerifyFull,
}

/// `[snapshot.database.incremental]`: queries taking the cursor value (text) as `$1`, each
/// yielding the rows changed since then, with the columns of the full query of the same name
/// and an optional boolean `deleted` (a soft delete: the row is removed).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbIncremental {
    #[serde(default)]
    pub users: Option<String>,
    #[serde(default)]
    pub owners: Option<String>,
    #[serde(default)]
    pub shares: Option<String>,
    #[serde(default)]
    pub related: Option<String>,
    /// With tenants: `user_id text, tenant text, roles text[]`, optional `teams text[]`,
    /// `manager text`, `deleted bool` (a soft delete: the membership is removed).
    #[serde(default)]
    pub memberships: Option<String>,
    /// How far back each round reads: `$1` is the cursor value read at least this long ago,
    /// so a transaction that commits late with an older cursor value is still read (rows read
    /// again change nothing). Milliseconds.
    #[serde(default = "default_overlap_ms")]
    pub overlap_ms: u64,
}

fn default_overlap_ms() -> u64 {
    10_000
}

impl std::fmt::Debug for DbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("DbSource")
            .field("poll_interval", &self.poll_interval)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("incremental", &self.incremental.is_some())
            .field("notify_channel", &self.notify_channel)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The queries, by what their rows are (columns by name; ids cast to `text`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbQueries {
    /// `id text, roles text[]`, optional `teams text[]`, `manager text`, `disabled bool`,
    /// `name text`, `email text`. Required.
    pub users: String,
    /// `id text, permissions text[]`: custom roles.
    #[serde(default)]
    pub roles: Option<String>,
    /// `user_id text, sha256 text` (the hex SHA-256 of each API key).
    #[serde(default)]
    pub api_keys: Option<String>,
    /// `type text, id text, owner text` (owner may be NULL); with tenants also `tenant text`
    /// (every data query's rows need it with `tenant_session_sql`).
    #[serde(default)]
    pub owners: Option<String>,
    /// `type text, id text` and one of `user_id text`, `team text`, `role text`.
    #[serde(default)]
    pub shares: Option<String>,
    /// `type text, id text, parent_type text, parent_id text`.
    #[serde(default)]
    pub related: Option<String>,
    /// One row, one value (cast to `text`) that changes when the data does. Run with the
    /// connection's session (never a tenant's): it must see every tenant's changes.
    #[serde(default)]
    pub cursor: Option<String>,
    /// With tenants: `id text`, optional `name text`: the tenants (else every tenant the
    /// memberships and owners rows name). Required with `tenant_session_sql` (the tenants it
    /// runs for).
    #[serde(default)]
    pub tenants: Option<String>,
    /// With tenants (required then): `user_id text, tenant text, roles text[]`, optional
    /// `teams text[]`, `manager text` (a user id, a member of the same tenant).
    #[serde(default)]
    pub memberships: Option<String>,
}

/// One row as the queries give it: column name → value (text, a text array, or a boolean;
/// NULL is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub text: Vec<(String, String)>,
    pub lists: Vec<(String, Vec<String>)>,
    pub flags: Vec<(String, bool)>,
}

impl Row {
    /// A text column's value (`None`: absent or NULL).
    pub fn text(&self, column: &str) -> Option<&str> {
        self.text
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.as_str())
    }

    fn list(&self, column: &str) -> Vec<String> {
        self.lists
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn flag(&self, column: &str) -> bool {
        self.flags.iter().any(|(c, v)| c == column && *v)
    }

    fn need(&self, query: &str, i: usize, column: &str) -> Result<String, String> {
        self.text(column)
            .map(str::to_string)
            .ok_or_else(|| format!("{query}[{i}]: column '{column}' is missing or NULL"))
    }
}

/// The rows of each query.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub users: Vec<Row>,
    pub roles: Vec<Row>,
    pub api_keys: Vec<Row>,
    pub owners: Vec<Row>,
    pub shares: Vec<Row>,
    pub related: Vec<Row>,
    pub tenants: Vec<Row>,
    pub memberships: Vec<Row>,
}

/// The ids of the `tenants` query's rows (the tenants `tenant_session_sql` runs for).
pub fn tenant_ids(rows: &[Row]) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let id = r.need("tenants", i, "id")?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Check each row of a tenant's round against its tenant ([`round_tenant`]).
pub fn check_tenant(rows: &[Row], query: &str, tenant: &str) -> Result<(), String> {
    for (i, r) in rows.iter().enumerate() {
        round_tenant(r.text("tenant"), query, tenant, i)?;
    }
    Ok(())
}

/// The tenant row `i` of `query` names in its `tenant` column (`named`), checked against the
/// round of `tenant` (`tenant_session_sql`): every row must name its tenant, and one that names
/// another is refused (the tenant's session settings did not restrict the query, so its rows
/// cannot be told apart). A row without the column is refused too: taking the round's tenant
/// for it would file a row the settings failed to hide under the wrong tenant (a membership or
/// a record in an organisation it is not in), which is exactly the mistake this check is there
/// to catch.
pub fn round_tenant<'a>(
    named: Option<&'a str>,
    query: &str,
    tenant: &str,
    i: usize,
) -> Result<&'a str, String> {
    match named {
        None => Err(format!(
            "{query}[{i}]: no 'tenant' (the column is missing or NULL) in the round of tenant '{tenant}' (with tenant_session_sql every row must name its tenant, e.g. `org AS tenant`, so a row the settings failed to hide is caught)"
        )),
        Some(t) if t == tenant => Ok(t),
        Some(t) => Err(format!(
            "{query}[{i}]: tenant '{t}' read in the round of tenant '{tenant}' (tenant_session_sql must restrict the query to its tenant)"
        )),
    }
}

/// The snapshot the rows describe, as the JSON text every source hands over (so it is
/// validated and built the one way). `version` names the load. With a `memberships` query
/// (`queries`), the snapshot has tenants (module docs).
pub fn snapshot_text(
    rows: &Rows,
    queries: &DbQueries,
    version: String,
    generated_at: u64,
) -> Result<String, String> {
    let mut records = RecordsText::with_people(&version, generated_at, people(rows, queries)?);
    for (query, list) in [
        (RecordQuery::Owners, &rows.owners),
        (RecordQuery::Shares, &rows.shares),
        (RecordQuery::Related, &rows.related),
    ] {
        for r in list {
            records.push(query, r, None)?;
        }
    }
    finish_snapshot_text(rows, records, queries).map(|(text, _, _)| text)
}

/// The snapshot text of a full load whose record rows went into `records` as they came (the
/// owners, shares and related rows of `rows` are not read): with the users, roles, API keys,
/// memberships and tenants of the other rows ([`people`]: written before the records when
/// `records` was made with them and the tenants are not derived from the rows,
/// [`RecordsText::with_people`], else after them here); with
/// the managers it dropped, each said in a line, and the memberships' dropped managers
/// remembered ([`DroppedManagers`]: the follower's, replaced by each full load).
pub fn finish_snapshot_text(
    rows: &Rows,
    mut records: RecordsText,
    queries: &DbQueries,
) -> Result<(String, Vec<String>, DroppedManagers), String> {
    let people = match records.people.take() {
        Some(p) => *p,
        None => people(rows, queries)?,
    };
    Ok(records.finish(people))
}

/// What a full load's rows other than the records say, checked ([`people`]).
#[derive(Debug)]
pub struct People {
    /// The snapshot's roles, users and (when known before the records) tenants, as JSON
    /// fields, each after a comma.
    fields: String,
    /// With tenants and no tenants query: the tenants listed (none: their query did not
    /// run) and those the memberships name, to which the owners' are added; written after the
    /// records (only they know the owners').
    derived: Option<(Vec<RawTenant>, Vec<String>)>,
    dropped: Vec<String>,
    remembered: DroppedManagers,
}

/// The users, roles, API keys, memberships and tenants of a full load's rows (their record
/// rows are not read), checked.
///
/// A manager that names no user (or, with tenants, no member of the membership's tenant) is
/// dropped rather than refused, unlike in a snapshot file: a CRM keeps a member's manager after
/// the manager left the organisation, and the database is the source of truth. Such a manager
/// grants nothing where it is named (a non-member sees nothing in that tenant), so dropping it
/// takes no access away; refusing would fail this load and every later one, until someone
/// edited the CRM's data, with nothing it changed landing meanwhile.
pub fn people(rows: &Rows, queries: &DbQueries) -> Result<People, String> {
    let mut users = Vec::with_capacity(rows.users.len());
    let mut index = std::collections::HashMap::new();
    for (i, r) in rows.users.iter().enumerate() {
        let id = r.need("users", i, "id")?;
        // A `disabled` that is not a boolean (1/0, 'Y') must not read as "enabled".
        check_flag(r, "users", i, "disabled")?;
        index.insert(id.clone(), users.len());
        users.push(raw_user(r, id));
    }
    for (i, r) in rows.api_keys.iter().enumerate() {
        let user = r.need("api_keys", i, "user_id")?;
        let digest = r.need("api_keys", i, "sha256")?;
        let u = index
            .get(&user)
            .ok_or_else(|| format!("api_keys[{i}]: unknown user '{user}'"))?;
        users[*u]
            .api_keys
            .push(format!("sha256:{}", digest.to_ascii_lowercase()));
    }
    for (i, r) in rows.memberships.iter().enumerate() {
        let user = r.need("memberships", i, "user_id")?;
        let u = index
            .get(&user)
            .ok_or_else(|| format!("memberships[{i}]: unknown user '{user}'"))?;
        users[*u].memberships.push(raw_membership(r, i)?);
    }
    let (dropped, remembered) = drop_dangling_managers(&mut users, &index);
    drop(index);
    let mut tenants: Vec<RawTenant> = Vec::new();
    let mut derived = None;
    if queries.memberships.is_some() {
        for (i, r) in rows.tenants.iter().enumerate() {
            let id = r.need("tenants", i, "id")?;
            if !tenants.iter().any(|t| t.id == id) {
                tenants.push(RawTenant {
                    id,
                    name: r.text("name").map(str::to_string),
                });
            }
        }
        if queries.tenants.is_none() {
            derived = Some(
                rows.memberships
                    .iter()
                    .filter_map(|r| r.text("tenant"))
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    let roles = rows
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(RawRole {
                id: r.need("roles", i, "id")?,
                name: None,
                description: None,
                permissions: r.list("permissions"),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    // Version and records are in the records' text; tenants derived from the rows follow the
    // records (the listed ones, if any, are written with them there).
    let fields = RawSnapshot {
        version: None,
        generated_at: None,
        roles,
        users,
        records: None,
        // Service principals come from the snapshot file or a URL source, not yet from SQL.
        services: Vec::new(),
        tenants: if derived.is_some() {
            Vec::new()
        } else {
            std::mem::take(&mut tenants)
        },
    };
    // Serializing plain strings, vectors and booleans cannot fail; an object always (its
    // roles and users are always written).
    let fields = serde_json::to_string(&fields).unwrap_or_default();
    let fields = match fields.strip_prefix('{').and_then(|f| f.strip_suffix('}')) {
        Some(f) if !f.is_empty() => format!(",{f}"),
        _ => String::new(),
    };
    Ok(People {
        fields,
        derived: derived.map(|named| (tenants, named)),
        dropped,
        remembered,
    })
}

/// Drop the managers that name no user (`index`: the users by id) or, in a membership, no
/// member of its tenant ([`finish_snapshot_text`]); what was dropped, a line each, and the
/// memberships' dropped managers, remembered ([`DroppedManagers`]).
fn drop_dangling_managers(
    users: &mut [RawUser],
    index: &std::collections::HashMap<String, usize>,
) -> (Vec<String>, DroppedManagers) {
    let mut dangling: Vec<(usize, Option<usize>)> = Vec::new();
    {
        let members: std::collections::HashSet<(&str, &str)> = users
            .iter()
            .flat_map(|u| {
                u.memberships
                    .iter()
                    .map(move |m| (u.id.as_str(), m.tenant.as_str()))
            })
            .collect();
        for (i, u) in users.iter().enumerate() {
            if u.manager.as_ref().is_some_and(|m| !index.contains_key(m)) {
                dangling.push((i, None));
            }
            for (j, m) in u.memberships.iter().enumerate() {
                if let Some(manager) = &m.manager {
                    if !members.contains(&(manager.as_str(), m.tenant.as_str())) {
                        dangling.push((i, Some(j)));
                    }
                }
            }
        }
    }
    let mut remembered = DroppedManagers::default();
    let lines = dangling
        .into_iter()
        .map(|(i, j)| {
            let u = &mut users[i];
            match j {
                None => format!(
                    "user '{}': manager '{}' is no user: dropped",
                    u.id,
                    u.manager.take().unwrap_or_default()
                ),
                Some(j) => {
                    let m = &mut u.memberships[j];
                    let manager = m.manager.take().unwrap_or_default();
                    let line = format!(
                        "user '{}' in tenant '{}': manager '{manager}' is no member there: dropped",
                        u.id, m.tenant,
                    );
                    remembered.set(&u.id, &m.tenant, Some(manager));
                    line
                }
            }
        })
        .collect();
    (lines, remembered)
}

/// The memberships whose manager was dropped because the manager was no member of the
/// membership's tenant ([`finish_snapshot_text`], [`incremental_changes_said`]), by the
/// manager their latest row names: when that manager (re)joins the tenant in an incremental
/// round, the round gives them back their manager (`set_manager`) in the same batch, where they
/// would otherwise keep none until their own row changed or the next full load.
///
/// The follower keeps it beside its cursor: a full load replaces it whole (recomputed from
/// every row); a round's changes to it ([`Incremental::remember`]) are taken only once its
/// batch is applied. Bounded by the memberships: one entry per membership at most, gone when
/// that membership's row arrives again without a dropped manager, is deleted, its user is
/// removed, or its manager is given back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DroppedManagers {
    /// (user, tenant) → the manager the membership's row names.
    named: std::collections::HashMap<(String, String), String>,
    /// (tenant, manager) → the users whose membership of the tenant names them.
    reports: std::collections::HashMap<(String, String), std::collections::BTreeSet<String>>,
}

impl DroppedManagers {
    /// How many memberships have a dropped manager remembered.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// The dropped manager remembered for `user`'s membership of `tenant`.
    pub fn manager_of(&self, user: &str, tenant: &str) -> Option<&str> {
        self.named
            .get(&(user.to_string(), tenant.to_string()))
            .map(String::as_str)
    }

    /// The users whose membership of `tenant` names `manager`, dropped.
    fn reports_of(&self, tenant: &str, manager: &str) -> impl Iterator<Item = &str> + '_ {
        self.reports
            .get(&(tenant.to_string(), manager.to_string()))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Remember (`Some`) or forget (`None`) the dropped manager of `user`'s membership of
    /// `tenant`.
    fn set(&mut self, user: &str, tenant: &str, manager: Option<String>) {
        let key = (user.to_string(), tenant.to_string());
        if let Some(old) = self.named.remove(&key) {
            let by = (tenant.to_string(), old);
            if let Some(set) = self.reports.get_mut(&by) {
                set.remove(user);
                if set.is_empty() {
                    self.reports.remove(&by);
                }
            }
        }
        if let Some(m) = manager {
            self.reports
                .entry((tenant.to_string(), m.clone()))
                .or_default()
                .insert(user.to_string());
            self.named.insert(key, m);
        }
    }

    /// Take a round's changes, in order (once its batch is applied).
    pub fn update(&mut self, remember: Vec<Remember>) {
        for r in remember {
            self.set(&r.user, &r.tenant, r.manager);
        }
    }
}

/// One change to [`DroppedManagers`]: `user`'s membership of `tenant` has `manager` dropped
/// (`None`: no dropped manager any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remember {
    pub user: String,
    pub tenant: String,
    pub manager: Option<String>,
}

/// A row's text columns by name (`None`: absent or NULL): what a record row is read through,
/// so the full load can write its record rows (the millions: owners, shares, related) into
/// the snapshot text as they arrive, without a [`Row`] of each ([`RecordsText`]).
pub trait TextColumns {
    fn text(&self, column: &str) -> Option<&str>;
}

impl TextColumns for Row {
    fn text(&self, column: &str) -> Option<&str> {
        Row::text(self, column)
    }
}

/// The record queries of a full load, in the order their rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordQuery {
    Owners,
    Shares,
    Related,
}

impl RecordQuery {
    pub fn name(self) -> &'static str {
        match self {
            RecordQuery::Owners => "owners",
            RecordQuery::Shares => "shares",
            RecordQuery::Related => "related",
        }
    }

    fn section(self) -> u8 {
        self as u8 + 1
    }
}

/// A full load's snapshot text while its record rows arrive: the version, then the `records`
/// section written row by row (compact JSON; owners, then shares, then related), closed by
/// [`RecordsText::finish`] with the rest of the snapshot. What a row says is what the same
/// row said through [`crate::records::RawOwner`], [`crate::records::RawShare`] and
/// [`crate::records::RawRelated`] (tests compare them).
#[derive(Debug)]
pub struct RecordsText {
    text: String,
    /// The array being written: 0 none yet, else [`RecordQuery::section`].
    section: u8,
    /// Rows written per query (the index in an error).
    rows: [usize; 3],
    /// The tenants the owners rows name.
    tenants: std::collections::BTreeSet<String>,
    /// The other rows, given before the records ([`RecordsText::with_people`]; their
    /// `fields` emptied when written before them).
    people: Option<Box<People>>,
}

impl RecordsText {
    /// The text of a load whose other rows are added after its records
    /// ([`finish_snapshot_text`]).
    pub fn new(version: &str, generated_at: u64) -> RecordsText {
        let mut text = String::from("{\"version\":");
        push_json_str(&mut text, version);
        text.push_str(&format!(",\"generated_at\":{generated_at}"));
        RecordsText {
            text,
            section: 0,
            rows: [0; 3],
            tenants: Default::default(),
            people: None,
        }
    }

    /// The text of a load whose other rows were read first ([`people`]): written before the
    /// records, so the build compiles the users while it reads the records (a text with its
    /// records first is read whole before anything is compiled). Not when the tenants are
    /// derived from the rows: they follow the records (only the owners' rows know them all),
    /// and users before tenants would have the build compile the users twice, so the users
    /// follow the records too.
    pub fn with_people(version: &str, generated_at: u64, people: People) -> RecordsText {
        let mut records = RecordsText::new(version, generated_at);
        let people = if people.derived.is_none() {
            records.text.push_str(&people.fields);
            People {
                fields: String::new(),
                ..people
            }
        } else {
            people
        };
        records.people = Some(Box::new(people));
        records
    }

    /// One row of `query`. `round`: the tenant of a `tenant_session_sql` round and the row's
    /// index in it: the row must name that tenant ([`round_tenant`]).
    pub fn push(
        &mut self,
        query: RecordQuery,
        r: &impl TextColumns,
        round: Option<(&str, usize)>,
    ) -> Result<(), String> {
        let name = query.name();
        let i = self.rows[query as usize];
        let tenant = match round {
            Some((tenant, j)) => Some(round_tenant(r.text("tenant"), name, tenant, j)?),
            None => r.text("tenant"),
        };
        let need = |column: &str| {
            r.text(column)
                .ok_or_else(|| format!("{name}[{i}]: column '{column}' is missing or NULL"))
        };
        let (record_type, id) = (need("type")?, need("id")?);
        let fields: [(&str, Option<&str>); 3] = match query {
            RecordQuery::Owners => [("owner", r.text("owner")), ("tenant", tenant), ("", None)],
            RecordQuery::Shares => [
                ("user", r.text("user_id")),
                ("team", r.text("team")),
                ("role", r.text("role")),
            ],
            RecordQuery::Related => [
                ("parent_type", Some(need("parent_type")?)),
                ("parent_id", Some(need("parent_id")?)),
                ("", None),
            ],
        };
        let section = query.section();
        if section < self.section {
            return Err(format!(
                "{name}: rows after those of a later query (owners, shares, related)"
            ));
        }
        if section > self.section {
            self.text.push_str(if self.section == 0 {
                ",\"records\":{\""
            } else {
                "],\""
            });
            self.text.push_str(name);
            self.text.push_str("\":[");
            self.section = section;
        } else {
            self.text.push(',');
        }
        self.text.push_str("{\"type\":");
        push_json_str(&mut self.text, record_type);
        self.text.push_str(",\"id\":");
        push_json_str(&mut self.text, id);
        for (key, value) in fields {
            if let Some(v) = value {
                self.text.push_str(",\"");
                self.text.push_str(key);
                self.text.push_str("\":");
                push_json_str(&mut self.text, v);
            }
        }
        self.text.push('}');
        if query == RecordQuery::Owners {
            if let Some(t) = tenant.filter(|t| !self.tenants.contains(*t)) {
                self.tenants.insert(t.to_string());
            }
        }
        self.rows[query as usize] += 1;
        Ok(())
    }

    /// The snapshot text: what was written, then the fields of `people` not yet written
    /// (emptied when they were) and the tenants derived from the rows; with the managers
    /// dropped and remembered.
    fn finish(mut self, people: People) -> (String, Vec<String>, DroppedManagers) {
        if self.section > 0 {
            self.text.push_str("]}");
        }
        // Exactly the room the fields need: the text is hundreds of MB at scale, and grown by
        // doubling it would be copied whole once more.
        self.text.reserve_exact(people.fields.len() + 1);
        self.text.push_str(&people.fields);
        if let Some((mut tenants, named)) = people.derived {
            // Every tenant the rows name, in a stable order, after the listed ones.
            let mut named: Vec<&str> = named
                .iter()
                .map(String::as_str)
                .chain(self.tenants.iter().map(String::as_str))
                .collect();
            named.sort_unstable();
            named.dedup();
            tenants.extend(named.into_iter().map(|id| RawTenant {
                id: id.to_string(),
                name: None,
            }));
            if !tenants.is_empty() {
                // Plain strings: serializing cannot fail.
                let list = serde_json::to_string(&tenants).unwrap_or_default();
                self.text.reserve_exact(list.len() + 12);
                self.text.push_str(",\"tenants\":");
                self.text.push_str(&list);
            }
        }
        self.text.push('}');
        (self.text, people.dropped, people.remembered)
    }
}

/// `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Escaping a string cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// What one row of an incremental query names: a record by type and id.
type Key = (String, String);

/// The rows of one incremental round ([`DbIncremental`]) as one batch of changes to `live`, the
/// batch the changes API would take. A row whose state `live` already holds makes no change
/// (so rows read again in the overlap window cost nothing), and a `deleted` row of something
/// `live` does not know is skipped. Each row is the whole current state of what it names, as
/// in the full query: a column left out or NULL is empty. An existing user's roles, teams,
/// manager and `disabled` follow (`name`, `email` and API keys at the next full load); a new
/// user comes with its name and email. With tenants, a memberships row is a membership's whole
/// state, and a record's tenant is its row's `tenant` (a related object's, else its parent's).
/// Order: new tenants, new users, user changes, memberships, records (owners, then related
/// objects), shares, unshares, removed records (related objects first), removed memberships,
/// removed users — so every change names what the batch has by then.
pub fn incremental_changes(
    rows: &Rows,
    live: &Snapshot,
    catalog: &Catalog,
) -> Result<Vec<Change>, String> {
    incremental_changes_said(rows, live, catalog, &DroppedManagers::default())
        .map(|round| round.changes)
}

/// What an incremental round makes of its rows ([`incremental_changes_said`]).
#[derive(Debug, Clone, Default)]
pub struct Incremental {
    /// The batch (empty: nothing to change).
    pub changes: Vec<Change>,
    /// The managers dropped, a line each (a warning, counted).
    pub dropped: Vec<String>,
    /// The managers given back, a line each.
    pub restored: Vec<String>,
    /// The changes to the follower's [`DroppedManagers`], in order, to take once the batch is
    /// applied (or at once when it is empty).
    pub remember: Vec<Remember>,
}

/// [`incremental_changes`], with the managers it dropped and gave back, each said in a line.
///
/// - Dropped: a membership's manager who is no member of that tenant once the batch is
///   applied, as a full load drops it ([`finish_snapshot_text`]), so a member whose manager
///   left does not get every batch that touches them refused. That is a manager the row
///   names, and a manager who leaves in this round (their membership deleted, or their user)
///   while members of the tenant whose rows this round does not read still have them: those
///   members' manager is dropped in the same batch (`set_manager` to none, before the
///   membership goes), where the batch used to be refused and a full load to follow.
/// - Given back: a manager who is a member of the tenant once the batch is applied, named by
///   a membership row this round reads, gets back the memberships `dropped` remembers for
///   them (their rows named them while they were no member), by a `set_manager` after the
///   manager's own membership in the batch; a membership this round has a row of is decided
///   by its row, and one whose manager was set since (it has one) is left alone. A manager
///   loop that makes is refused as any batch's is (the whole batch; the next round is a full
///   load).
///
/// What `dropped` should remember after the batch comes back in [`Incremental::remember`]
/// (the function does not change it: a refused batch changes nothing).
pub fn incremental_changes_said(
    rows: &Rows,
    live: &Snapshot,
    catalog: &Catalog,
    remembered: &DroppedManagers,
) -> Result<Incremental, String> {
    let mut dropped = Vec::new();
    let mut restored = Vec::new();
    let mut remember: Vec<Remember> = Vec::new();
    let types = catalog.record_types();
    let find = |t: &str, id: &str| -> Option<Found> {
        let ty = types.get(t)?;
        let rid = canonical_id(types.kind(ty), id).ok()?;
        live.records().find(ty, &rid)
    };
    let user_id = |idx: UserIdx| live.user(idx).id.to_string();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v.dedup();
        v
    };

    let mut new_users = Vec::new();
    let mut user_changes = Vec::new();
    let mut removed_users = Vec::new();
    for (i, r) in rows.users.iter().enumerate() {
        let id = r.need("users", i, "id")?;
        check_flag(r, "users", i, "disabled")?;
        check_flag(r, "users", i, "deleted")?;
        let Some(idx) = live.user_index(&id) else {
            if !r.flag("deleted") {
                new_users.push(Change::UpsertUser {
                    user: raw_user(r, id),
                });
            }
            continue;
        };
        if r.flag("deleted") {
            removed_users.push(Change::RemoveUser { user: id });
            continue;
        }
        let u = live.user(idx);
        let roles: Vec<String> = live
            .grant(u)
            .roles
            .iter()
            .map(|x| live.role_id(*x).to_string())
            .collect();
        if sorted(roles) != sorted(r.list("roles")) {
            user_changes.push(Change::SetRoles {
                tenant: None,
                user: id.clone(),
                roles: r.list("roles"),
            });
        }
        let teams: Vec<String> = u
            .teams
            .iter()
            .map(|t| live.team_name(*t).to_string())
            .collect();
        if sorted(teams) != sorted(r.list("teams")) {
            user_changes.push(Change::SetTeams {
                tenant: None,
                user: id.clone(),
                teams: r.list("teams"),
            });
        }
        let manager = r.text("manager").map(str::to_string);
        if u.manager.map(user_id) != manager {
            user_changes.push(Change::SetManager {
                tenant: None,
                user: id.clone(),
                manager,
            });
        }
        match (u.disabled, r.flag("disabled")) {
            (false, true) => user_changes.push(Change::Disable { user: id }),
            (true, false) => user_changes.push(Change::Enable { user: id }),
            _ => {}
        }
    }

    // Tenants: a tenant the live snapshot does not know is added first (its name from the
    // `tenants` rows when they give one), so the memberships and records below may name it.
    let mut new_tenants: Vec<Change> = Vec::new();
    if live.has_tenants() {
        let mut named: Vec<(String, Option<String>)> = Vec::new();
        for (i, r) in rows.tenants.iter().enumerate() {
            named.push((
                r.need("tenants", i, "id")?,
                r.text("name").map(str::to_string),
            ));
        }
        for r in rows
            .memberships
            .iter()
            .chain(&rows.owners)
            .chain(&rows.related)
        {
            if let Some(t) = r.text("tenant") {
                named.push((t.to_string(), None));
            }
        }
        for (id, name) in named {
            let added = new_tenants
                .iter()
                .any(|c| matches!(c, Change::UpsertTenant { tenant } if tenant.id == id));
            if live.tenant_index(&id).is_none() && !added {
                new_tenants.push(Change::UpsertTenant {
                    tenant: RawTenant { id, name },
                });
            }
        }
    }

    // Memberships: each row is the membership's whole state (set when it differs), or a
    // `deleted` one (removed when the snapshot has it).
    let mut memberships = Vec::new();
    let mut removed_memberships = Vec::new();
    // The users this batch removes (their memberships go with them).
    let gone_users: std::collections::HashSet<&str> = removed_users
        .iter()
        .filter_map(|c| match c {
            Change::RemoveUser { user } => Some(user.as_str()),
            _ => None,
        })
        .collect();
    // The memberships this batch's rows name: (user, tenant) → deleted.
    let in_rows: std::collections::HashMap<(&str, &str), bool> = rows
        .memberships
        .iter()
        .filter_map(|r| Some(((r.text("user_id")?, r.text("tenant")?), r.flag("deleted"))))
        .collect();
    // A membership's entry in the live snapshot.
    let live_member = |user: &str, tenant: &str| {
        live.user_index(user)
            .zip(live.tenant_index(tenant))
            .and_then(|(p, t)| live.member(p, t))
    };
    let member_after = |user: &str, tenant: &str| {
        !gone_users.contains(user)
            && match in_rows.get(&(user, tenant)) {
                Some(deleted) => !deleted,
                None => live_member(user, tenant).is_some(),
            }
    };
    // The live memberships leaving in this batch: their entry → (user, tenant).
    let mut leaving: std::collections::HashMap<UserIdx, (String, String)> = Default::default();
    for user in &gone_users {
        if let Some(p) = live.user_index(user) {
            for (t, m) in &live.user(p).memberships {
                let tenant = live.tenant_id(*t).to_string();
                remember.push(Remember {
                    user: user.to_string(),
                    tenant: tenant.clone(),
                    manager: None,
                });
                leaving.insert(*m, (user.to_string(), tenant));
            }
        }
    }
    // The managers named by this batch's rows who are members once it is applied: their
    // remembered reports get them back (deduplicated: a row read twice gives back once).
    let mut joined: Vec<(String, String)> = Vec::new();
    for (i, r) in rows.memberships.iter().enumerate() {
        check_flag(r, "memberships", i, "deleted")?;
        let user = r.need("memberships", i, "user_id")?;
        let mut wanted = raw_membership(r, i)?;
        if !r.flag("deleted") {
            let gone = wanted
                .manager
                .take_if(|m| !member_after(m.as_str(), &wanted.tenant));
            if let Some(m) = &gone {
                dropped.push(format!(
                    "user '{user}' in tenant '{}': manager '{m}' is no member there: dropped",
                    wanted.tenant
                ));
            }
            if member_after(&user, &wanted.tenant) {
                joined.push((wanted.tenant.clone(), user.clone()));
            }
            remember.push(Remember {
                user: user.clone(),
                tenant: wanted.tenant.clone(),
                // A user this batch removes is remembered with nothing (the removal's entry).
                manager: gone.filter(|_| !gone_users.contains(user.as_str())),
            });
        } else {
            remember.push(Remember {
                user: user.clone(),
                tenant: wanted.tenant.clone(),
                manager: None,
            });
        }
        let entry = live_member(&user, &wanted.tenant);
        let held = entry.map(|m| live.user(m));
        if r.flag("deleted") {
            if let Some(e) = entry {
                leaving.insert(e, (user.clone(), wanted.tenant.clone()));
                removed_memberships.push(Change::RemoveMembership {
                    user,
                    tenant: wanted.tenant,
                });
            }
            continue;
        }
        let same = held.is_some_and(|m| {
            let roles = live
                .grant(m)
                .roles
                .iter()
                .map(|x| live.role_id(*x).to_string())
                .collect();
            let teams = m
                .teams
                .iter()
                .map(|t| live.team_name(*t).to_string())
                .collect();
            sorted(roles) == sorted(wanted.roles.clone())
                && sorted(teams) == sorted(wanted.teams.clone())
                && m.manager.map(user_id) == wanted.manager
        });
        if !same {
            memberships.push(Change::SetMembership {
                user,
                tenant: wanted.tenant,
                roles: wanted.roles,
                teams: wanted.teams,
                manager: wanted.manager,
            });
        }
    }
    // A membership whose manager this batch changes without a row of its own: neither read
    // this round nor going with its user.
    let untouched = |user: &str, tenant: &str| {
        !in_rows.contains_key(&(user, tenant)) && !gone_users.contains(user)
    };
    // Managers leaving: the live memberships that name them lose them (the rows read this
    // round dropped theirs above). One pass over the managers, only when a leaving entry has
    // reports.
    let mut manager_changes = Vec::new();
    // The memberships those changes are for: (user, tenant).
    let mut changed: std::collections::HashSet<(String, String)> = Default::default();
    leaving.retain(|e, _| !live.hierarchy().is_leaf(*e));
    if !leaving.is_empty() {
        // The managers are the entries' (one each; `take` keeps an index in range).
        for (k, m) in live.managers.iter().enumerate().take(live.users.len()) {
            let Some((manager, tenant)) = leaving.get(m) else {
                continue;
            };
            let Ok(k) = UserIdx::try_from(k) else {
                continue;
            };
            let u = live.user(k);
            // A membership its person still has (not one a change detached).
            if !u.is_membership() || live.member(u.person, u.tenant) != Some(k) {
                continue;
            }
            // A membership's entry carries its person's id.
            let report = u.id.to_string();
            if !untouched(&report, tenant) || member_after(manager, tenant) {
                continue;
            }
            // The manager the report's rows last named: one remembered from before (the live
            // manager may be one the changes API gave since), else this one.
            let named = remembered
                .manager_of(&report, tenant)
                .map_or_else(|| manager.clone(), str::to_string);
            // That one a member once the batch is applied (rejoining in this round, or a
            // member already: the report's rows name them, as a full load would read them):
            // given back here (the manager changes come after the memberships; a loop is
            // refused with the batch). The leaving manager is then replaced, not dropped: no
            // dangling line, none counted.
            let back = named != *manager && named != report && member_after(&named, tenant);
            if back {
                restored.push(format!(
                    "user '{report}' in tenant '{tenant}': manager '{manager}' left the tenant; manager '{named}' the rows name is a member: given back"
                ));
            } else {
                dropped.push(format!(
                    "user '{report}' in tenant '{tenant}': manager '{manager}' left the tenant: dropped"
                ));
            }
            remember.push(Remember {
                user: report.clone(),
                tenant: tenant.clone(),
                manager: (!back).then(|| named.clone()),
            });
            changed.insert((report.clone(), tenant.clone()));
            manager_changes.push(Change::SetManager {
                user: report,
                manager: back.then_some(named),
                tenant: Some(tenant.clone()),
            });
        }
    }
    // Managers (re)joining: the memberships remembered as naming them get them back.
    joined.sort_unstable();
    joined.dedup();
    for (tenant, manager) in &joined {
        for report in remembered.reports_of(tenant, manager) {
            if !untouched(report, tenant) || changed.contains(&(report.to_string(), tenant.clone()))
            {
                continue;
            }
            // Gone, or given a manager since (not by its row): nothing to give back.
            let Some(entry) = live_member(report, tenant) else {
                remember.push(Remember {
                    user: report.to_string(),
                    tenant: tenant.clone(),
                    manager: None,
                });
                continue;
            };
            if live.user(entry).manager.is_some() {
                remember.push(Remember {
                    user: report.to_string(),
                    tenant: tenant.clone(),
                    manager: None,
                });
                continue;
            }
            restored.push(format!(
                "user '{report}' in tenant '{tenant}': manager '{manager}' is a member again: given back"
            ));
            remember.push(Remember {
                user: report.to_string(),
                tenant: tenant.clone(),
                manager: None,
            });
            manager_changes.push(Change::SetManager {
                user: report.to_string(),
                manager: Some(manager.clone()),
                tenant: Some(tenant.clone()),
            });
        }
    }

    let mut owners: std::collections::HashMap<Key, Option<String>> = Default::default();
    // The tenant each owners row names (with tenants), for its related objects.
    let mut owner_tenants: std::collections::HashMap<Key, String> = Default::default();
    // A record's tenant as the live snapshot has it.
    let tenant_in_live = |f: Found| -> Option<String> {
        let t = live.records().tenant_of(f.number);
        (live.has_tenants() && (t as usize) < live.tenant_count())
            .then(|| live.tenant_id(t).to_string())
    };
    let mut removed: Vec<Key> = Vec::new();
    let mut removed_related: Vec<Key> = Vec::new();
    for (i, r) in rows.owners.iter().enumerate() {
        check_flag(r, "owners", i, "deleted")?;
        let key = (r.need("owners", i, "type")?, r.need("owners", i, "id")?);
        if r.flag("deleted") {
            removed.push(key);
        } else {
            if let Some(t) = r.text("tenant") {
                owner_tenants.insert(key.clone(), t.to_string());
            }
            owners.insert(key, r.text("owner").map(str::to_string));
        }
    }
    let mut related_changes = Vec::new();
    let mut merged: std::collections::HashSet<Key> = Default::default();
    for (i, r) in rows.related.iter().enumerate() {
        check_flag(r, "related", i, "deleted")?;
        let key = (r.need("related", i, "type")?, r.need("related", i, "id")?);
        if r.flag("deleted") {
            removed_related.push(key);
            continue;
        }
        let parent = (
            r.need("related", i, "parent_type")?,
            r.need("related", i, "parent_id")?,
        );
        let found = find(&key.0, &key.1);
        // The owner: this round's owners row, else the related row's own `owner`, else the
        // one it has.
        let owner = match owners.get(&key) {
            Some(o) => o.clone(),
            None => r
                .text("owner")
                .map(str::to_string)
                .or_else(|| found.and_then(|f| f.owner).map(user_id)),
        };
        let same_parent = found
            .and_then(|f| live.records().parent(f))
            .zip(find(&parent.0, &parent.1))
            .is_some_and(|(a, b)| a.number == b.number);
        let same_owner = found.is_some_and(|f| f.owner.map(user_id) == owner);
        // With tenants: the row's own, else its parent's (this round's owners row, else the
        // live snapshot's).
        let tenant = if live.has_tenants() {
            r.text("tenant")
                .map(str::to_string)
                .or_else(|| owner_tenants.get(&parent).cloned())
                .or_else(|| find(&parent.0, &parent.1).and_then(tenant_in_live))
        } else {
            None
        };
        merged.insert(key.clone());
        if same_parent && same_owner && found.and_then(tenant_in_live) == tenant {
            continue;
        }
        related_changes.push(Change::UpsertRecord {
            tenant,
            record_type: key.0,
            id: RawId::Text(key.1),
            owner,
            parent: Some(RecordRef {
                record_type: parent.0,
                id: RawId::Text(parent.1),
            }),
        });
    }
    let mut record_changes = Vec::new();
    for (i, r) in rows.owners.iter().enumerate() {
        let key = (r.need("owners", i, "type")?, r.need("owners", i, "id")?);
        if r.flag("deleted") || merged.contains(&key) {
            continue;
        }
        let Some(owner) = owners.remove(&key) else {
            continue; // a second row for the same record: the first one stands
        };
        let tenant = owner_tenants.get(&key).cloned();
        if find(&key.0, &key.1)
            .is_some_and(|f| f.owner.map(user_id) == owner && tenant_in_live(f) == tenant)
        {
            continue;
        }
        record_changes.push(Change::UpsertRecord {
            tenant,
            record_type: key.0,
            id: RawId::Text(key.1),
            owner,
            parent: None,
        });
    }
    record_changes.append(&mut related_changes);

    let mut shares = Vec::new();
    let mut unshares = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let going: std::collections::HashSet<&Key> = removed.iter().chain(&removed_related).collect();
    for (i, r) in rows.shares.iter().enumerate() {
        check_flag(r, "shares", i, "deleted")?;
        let key = (r.need("shares", i, "type")?, r.need("shares", i, "id")?);
        let (user, team, role) = (
            r.text("user_id").map(str::to_string),
            r.text("team").map(str::to_string),
            r.text("role").map(str::to_string),
        );
        if going.contains(&key)
            || !seen.insert((key.clone(), user.clone(), team.clone(), role.clone()))
        {
            continue;
        }
        let principal = match (&user, &team, &role) {
            (Some(u), None, None) => live.user_index(u).map(Principal::User),
            (None, Some(t), None) => live.team_of.get(t.as_str()).map(|x| Principal::Team(*x)),
            (None, None, Some(x)) => live.role_idx.get(x.as_str()).map(|x| Principal::Role(*x)),
            // Not exactly one: the changes API refuses it, naming the change.
            _ => None,
        };
        let exists = find(&key.0, &key.1)
            .zip(principal)
            .is_some_and(|(f, p)| live.records().has_share(f.number, p));
        let change = |deleted: bool| {
            let (record_type, id) = (key.0.clone(), RawId::Text(key.1.clone()));
            let (user, team, role) = (user.clone(), team.clone(), role.clone());
            if deleted {
                Change::Unshare {
                    record_type,
                    id,
                    user,
                    team,
                    role,
                }
            } else {
                Change::Share {
                    record_type,
                    id,
                    user,
                    team,
                    role,
                }
            }
        };
        match (r.flag("deleted"), exists) {
            (true, true) => unshares.push(change(true)),
            (false, false) => shares.push(change(false)),
            _ => {}
        }
    }

    let mut batch = new_tenants;
    batch.append(&mut new_users);
    batch.append(&mut user_changes);
    batch.append(&mut memberships);
    // After the memberships: a manager given back is a member by then.
    batch.append(&mut manager_changes);
    batch.append(&mut record_changes);
    batch.append(&mut shares);
    batch.append(&mut unshares);
    // Related objects first: removing a parent removes its related objects with it.
    let mut gone = std::collections::HashSet::new();
    for key in removed_related.into_iter().chain(removed) {
        if find(&key.0, &key.1).is_some() && gone.insert(key.clone()) {
            batch.push(Change::RemoveRecord {
                record_type: key.0,
                id: RawId::Text(key.1),
            });
        }
    }
    batch.append(&mut removed_memberships);
    batch.append(&mut removed_users);
    Ok(Incremental {
        changes: batch,
        dropped,
        restored,
        remember,
    })
}

/// A memberships row as the snapshot's membership.
fn raw_membership(r: &Row, i: usize) -> Result<RawMembership, String> {
    Ok(RawMembership {
        tenant: r.need("memberships", i, "tenant")?,
        roles: r.list("roles"),
        teams: r.list("teams"),
        manager: r.text("manager").map(str::to_string),
    })
}

/// A user row as the snapshot's user (API keys come from their own query, memberships from
/// theirs).
fn raw_user(r: &Row, id: String) -> RawUser {
    RawUser {
        id,
        name: r.text("name").map(str::to_string),
        email: r.text("email").map(str::to_string),
        roles: r.list("roles"),
        teams: r.list("teams"),
        manager: r.text("manager").map(str::to_string),
        api_keys: Vec::new(),
        disabled: r.flag("disabled"),
        memberships: Vec::new(),
    }
}

/// A column read as a flag must be a boolean: `1`/`0` or `'Y'` must not read as "false".
fn check_flag(r: &Row, query: &str, i: usize, column: &str) -> Result<(), String> {
    if r.text(column).is_some() || r.lists.iter().any(|(c, _)| c == column) {
        return Err(format!(
            "{query}[{i}]: column '{column}' must be a boolean (cast it: {column}::boolean)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: &[(&str, &str)], lists: &[(&str, &[&str])]) -> Row {
        Row {
            text: text
                .iter()
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect(),
            lists: lists
                .iter()
                .map(|(c, v)| (c.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            flags: Vec::new(),
        }
    }

    #[test]
    fn rows_make_a_snapshot_the_builder_reads() {
        let rows = Rows {
            users: vec![
                row(&[("id", "u-1")], &[("roles", &["admin"])]),
                row(
                    &[("id", "u-2"), ("manager", "u-1")],
                    &[("roles", &["member"])],
                ),
            ],
            api_keys: vec![row(&[("user_id", "u-2"), ("sha256", "AB12")], &[])],
            owners: vec![row(&[("type", "lead"), ("id", "7"), ("owner", "u-2")], &[])],
            ..Rows::default()
        };
        let text = snapshot_text(&rows, &DbQueries::default(), "db-1".into(), 5).unwrap();
        let raw = RawSnapshot::parse(&text).unwrap();
        assert_eq!(raw.version.as_deref(), Some("db-1"));
        assert_eq!(raw.users[1].manager.as_deref(), Some("u-1"));
        assert_eq!(raw.users[1].api_keys, ["sha256:ab12"]);
        assert_eq!(raw.records.unwrap().owners[0].owner.as_deref(), Some("u-2"));
        let missing = Rows {
            users: vec![row(&[], &[("roles", &["admin"])])],
            ..Rows::default()
        };
        assert_eq!(
            snapshot_text(&missing, &DbQueries::default(), "v".into(), 0).unwrap_err(),
            "users[0]: column 'id' is missing or NULL"
        );
    }

    #[test]
    fn record_rows_are_written_as_the_source_form_says() {
        use crate::records::{RawOwner, RawRecords, RawRelated, RawShare};
        let rows = Rows {
            users: vec![row(&[("id", "u\"1")], &[("roles", &["admin"])])],
            owners: vec![
                row(&[("type", "lead"), ("id", "7"), ("owner", "u\"1")], &[]),
                row(&[("type", "lead"), ("id", "8\\\n")], &[]),
            ],
            shares: vec![row(
                &[
                    ("type", "lead"),
                    ("id", "7"),
                    ("team", "east"),
                    ("role", "r"),
                ],
                &[],
            )],
            related: vec![row(
                &[
                    ("type", "note"),
                    ("id", "1"),
                    ("parent_type", "lead"),
                    ("parent_id", "7"),
                ],
                &[],
            )],
            ..Rows::default()
        };
        let text = snapshot_text(&rows, &DbQueries::default(), "db-\"9".into(), 5).unwrap();
        let raw = RawSnapshot::parse(&text).unwrap();
        let id = |s: &str| RawId::Text(s.to_string());
        assert_eq!(raw.version.as_deref(), Some("db-\"9"));
        assert_eq!(raw.generated_at, Some(5));
        assert_eq!(raw.users[0].id, "u\"1");
        assert_eq!(
            raw.records,
            Some(RawRecords {
                owners: vec![
                    RawOwner {
                        record_type: "lead".into(),
                        id: id("7"),
                        owner: Some("u\"1".into()),
                        tenant: None,
                    },
                    RawOwner {
                        record_type: "lead".into(),
                        id: id("8\\\n"),
                        owner: None,
                        tenant: None,
                    },
                ],
                shares: vec![RawShare {
                    record_type: "lead".into(),
                    id: id("7"),
                    user: None,
                    team: Some("east".into()),
                    role: Some("r".into()),
                }],
                related: vec![RawRelated {
                    record_type: "note".into(),
                    id: id("1"),
                    parent_type: "lead".into(),
                    parent_id: id("7"),
                }],
            })
        );
        // No record rows: no records section, as before.
        let bare = Rows {
            users: rows.users.clone(),
            ..Rows::default()
        };
        let raw = RawSnapshot::parse(
            &snapshot_text(&bare, &DbQueries::default(), "v".into(), 0).unwrap(),
        )
        .unwrap();
        assert_eq!(raw.records, None);
        // Streamed in a tenant's round: the row must name the round's tenant (refused when it
        // names none or another); rows out of query order are refused.
        let mut records = RecordsText::new("v", 0);
        assert!(records
            .push(RecordQuery::Owners, &rows.owners[0], Some(("org-a", 0)))
            .unwrap_err()
            .starts_with("owners[0]: no 'tenant' (the column is missing or NULL)"));
        let mut own = rows.owners[0].clone();
        own.text.push(("tenant".to_string(), "org-a".to_string()));
        records
            .push(RecordQuery::Owners, &own, Some(("org-a", 0)))
            .unwrap();
        let other = row(&[("type", "lead"), ("id", "9"), ("tenant", "org-b")], &[]);
        assert_eq!(
            records
                .push(RecordQuery::Owners, &other, Some(("org-a", 1)))
                .unwrap_err(),
            "owners[1]: tenant 'org-b' read in the round of tenant 'org-a' (tenant_session_sql must restrict the query to its tenant)"
        );
        records
            .push(RecordQuery::Related, &rows.related[0], None)
            .unwrap();
        assert!(records
            .push(RecordQuery::Shares, &rows.shares[0], None)
            .is_err());
        let queries = DbQueries {
            memberships: Some("…".into()),
            ..DbQueries::default()
        };
        let raw =
            RawSnapshot::parse(&finish_snapshot_text(&bare, records, &queries).unwrap().0).unwrap();
        let records = raw.records.unwrap();
        assert_eq!(records.owners[0].tenant.as_deref(), Some("org-a"));
        assert!(records.shares.is_empty());
        assert_eq!(records.related.len(), 1);
        assert_eq!(raw.tenants.len(), 1, "the tenant the owners name");
    }

    /// A manager who is no user, or no member of the membership's tenant, is dropped from a
    /// full load and said; a manager who is one stays.
    #[test]
    fn dangling_managers_are_dropped_from_a_full_load() {
        let plain = Rows {
            users: vec![
                row(&[("id", "a")], &[]),
                row(&[("id", "b"), ("manager", "a")], &[]),
                row(&[("id", "c"), ("manager", "gone")], &[]),
            ],
            ..Rows::default()
        };
        let (text, dropped, remembered) =
            finish_snapshot_text(&plain, RecordsText::new("v", 0), &DbQueries::default()).unwrap();
        assert_eq!(dropped, ["user 'c': manager 'gone' is no user: dropped"]);
        // Without tenants nothing is remembered: no membership to give a manager back to.
        assert!(remembered.is_empty());
        let raw = RawSnapshot::parse(&text).unwrap();
        assert_eq!(raw.users[1].manager.as_deref(), Some("a"));
        assert_eq!(raw.users[2].manager, None);

        let member = |user: &str, tenant: &str, manager: Option<&str>| {
            let mut text = vec![("user_id", user), ("tenant", tenant)];
            text.extend(manager.map(|m| ("manager", m)));
            row(&text, &[("roles", &["admin"])])
        };
        let tenanted = Rows {
            users: vec![row(&[("id", "a")], &[]), row(&[("id", "b")], &[])],
            memberships: vec![
                member("a", "t1", None),
                member("b", "t1", Some("a")),
                member("b", "t2", Some("a")),
            ],
            ..Rows::default()
        };
        let queries = DbQueries {
            memberships: Some("…".into()),
            ..DbQueries::default()
        };
        let (text, dropped, remembered) =
            finish_snapshot_text(&tenanted, RecordsText::new("v", 0), &queries).unwrap();
        assert_eq!(
            dropped,
            ["user 'b' in tenant 't2': manager 'a' is no member there: dropped"]
        );
        // Remembered, so that 'a' joining 't2' gives it back.
        assert_eq!(remembered.len(), 1);
        assert_eq!(remembered.manager_of("b", "t2"), Some("a"));
        assert_eq!(remembered.manager_of("b", "t1"), None);
        let raw = RawSnapshot::parse(&text).unwrap();
        let b = &raw.users[1].memberships;
        assert_eq!(b[0].manager.as_deref(), Some("a"));
        assert_eq!(b[1].manager, None);
    }

    fn flagged(mut r: Row, column: &str, v: bool) -> Row {
        r.flags.push((column.to_string(), v));
        r
    }

    /// Each change's `op`, in order.
    fn ops(batch: &[Change]) -> Vec<String> {
        batch
            .iter()
            .map(|c| {
                serde_json::to_value(c).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn incremental_rows_make_only_the_changes_the_snapshot_lacks() {
        let (catalog, live) = crate::records::tests::snapshot();
        // Rows restating what the snapshot holds (as the overlap window reads them again), and
        // deletions of what it does not know: no change.
        let same = Rows {
            users: vec![row(
                &[("id", "u-rep1"), ("manager", "u-sm")],
                &[("roles", &["rep_limited"]), ("teams", &["east"])],
            )],
            owners: vec![
                row(&[("type", "lead"), ("id", "1"), ("owner", "u-rep1")], &[]),
                flagged(
                    row(&[("type", "lead"), ("id", "999")], &[]),
                    "deleted",
                    true,
                ),
            ],
            shares: vec![row(
                &[("type", "lead"), ("id", "4"), ("user_id", "u-rep1")],
                &[],
            )],
            related: vec![row(
                &[
                    ("type", "note"),
                    ("id", "10"),
                    ("parent_type", "lead"),
                    ("parent_id", "1"),
                ],
                &[],
            )],
            ..Rows::default()
        };
        assert!(incremental_changes(&same, &live, &catalog)
            .unwrap()
            .is_empty());
        // Changes: a new user, a role change, a reassignment, a new lead, a new share, an
        // unshare, a soft-deleted lead, a note moved to another lead (its owner kept).
        let changed = Rows {
            users: vec![
                row(&[("id", "u-new")], &[("roles", &["viewer_own"])]),
                row(
                    &[("id", "u-rep1"), ("manager", "u-sm")],
                    &[("roles", &["viewer_own"]), ("teams", &["east"])],
                ),
            ],
            owners: vec![
                row(&[("type", "lead"), ("id", "2"), ("owner", "u-rep1")], &[]),
                row(&[("type", "lead"), ("id", "77"), ("owner", "u-new")], &[]),
                flagged(row(&[("type", "lead"), ("id", "3")], &[]), "deleted", true),
            ],
            shares: vec![
                row(&[("type", "lead"), ("id", "77"), ("team", "east")], &[]),
                flagged(
                    row(&[("type", "lead"), ("id", "4"), ("user_id", "u-rep1")], &[]),
                    "deleted",
                    true,
                ),
            ],
            related: vec![row(
                &[
                    ("type", "note"),
                    ("id", "10"),
                    ("parent_type", "lead"),
                    ("parent_id", "2"),
                ],
                &[],
            )],
            ..Rows::default()
        };
        let batch = incremental_changes(&changed, &live, &catalog).unwrap();
        assert_eq!(
            ops(&batch),
            [
                "upsert_user",
                "set_roles",
                "upsert_record",
                "upsert_record",
                "upsert_record",
                "share",
                "unshare",
                "remove_record"
            ]
        );
        // The batch is one the changes API takes.
        let mut raw = RawSnapshot::parse(crate::records::tests::SNAPSHOT).unwrap();
        raw.apply(&batch, catalog.record_types()).unwrap();
        let after = Snapshot::build("s.json", &raw.to_json(), &catalog).unwrap();
        // Read again against the result: nothing left to do.
        assert!(incremental_changes(&changed, &after, &catalog)
            .unwrap()
            .is_empty());
        // A flag that is not a boolean is refused, naming the row.
        let bad = Rows {
            owners: vec![row(&[("type", "lead"), ("id", "1"), ("deleted", "1")], &[])],
            ..Rows::default()
        };
        assert_eq!(
            incremental_changes(&bad, &live, &catalog).unwrap_err(),
            "owners[0]: column 'deleted' must be a boolean (cast it: deleted::boolean)"
        );
    }

    #[test]
    fn memberships_rows_make_tenants_and_follow_incrementally() {
        let (catalog, _) = crate::records::tests::snapshot();
        let queries = DbQueries {
            memberships: Some("…".into()),
            ..DbQueries::default()
        };
        let (membership, lead) = (membership_row, tenant_lead);
        let rows = Rows {
            users: vec![row(&[("id", "u")], &[]), row(&[("id", "w")], &[])],
            memberships: vec![
                membership("u", "org-a", &["admin"]),
                membership("u", "org-b", &["sales_rep"]),
                membership("w", "org-b", &["sales_rep"]),
            ],
            owners: vec![lead("1", "w", "org-b"), lead("2", "u", "org-a")],
            ..Rows::default()
        };
        // No tenants query: the tenants the rows name.
        let text = snapshot_text(&rows, &queries, "db-1".into(), 5).unwrap();
        let live = Snapshot::build("s.json", &text, &catalog).unwrap();
        assert_eq!(live.tenant_count(), 2);
        let (u, b) = (
            live.user_index("u").unwrap(),
            live.tenant_index("org-b").unwrap(),
        );
        let ub = live.user(live.member(u, b).unwrap());
        assert_eq!(live.grant(ub).roles_header.as_ref(), "sales_rep");
        // A tenants query is the list: a membership of another tenant is the build's error.
        let listed = Rows {
            tenants: vec![row(&[("id", "org-a"), ("name", "A")], &[])],
            ..rows.clone()
        };
        let q = DbQueries {
            tenants: Some("…".into()),
            ..queries.clone()
        };
        let text = snapshot_text(&listed, &q, "db-2".into(), 5).unwrap();
        let errors = Snapshot::build("s.json", &text, &catalog).unwrap_err();
        assert!(
            errors[0].to_string().contains("unknown tenant 'org-b'"),
            "{errors:?}"
        );
        // A membership of an unknown user names the row.
        let stray = Rows {
            memberships: vec![membership("x", "org-a", &[])],
            ..rows.clone()
        };
        assert_eq!(
            snapshot_text(&stray, &queries, "v".into(), 0).unwrap_err(),
            "memberships[0]: unknown user 'x'"
        );

        // Incremental: the same rows change nothing; a role change in B, a new membership in a
        // new tenant, a removed one, a lead of B.
        assert!(incremental_changes(&rows, &live, &catalog)
            .unwrap()
            .is_empty());
        let changed = Rows {
            memberships: vec![
                membership("u", "org-b", &["admin"]),
                membership("w", "org-c", &["sales_rep"]),
                flagged(membership("w", "org-b", &[]), "deleted", true),
                // Deleted and unknown: nothing to do.
                flagged(membership("w", "org-a", &[]), "deleted", true),
            ],
            owners: vec![lead("3", "u", "org-b")],
            ..Rows::default()
        };
        let batch = incremental_changes(&changed, &live, &catalog).unwrap();
        assert_eq!(
            ops(&batch),
            [
                "upsert_tenant",
                "set_membership",
                "set_membership",
                "upsert_record",
                "remove_membership"
            ]
        );
        let mut raw =
            RawSnapshot::parse(&snapshot_text(&rows, &queries, "db-1".into(), 5).unwrap()).unwrap();
        raw.apply(&batch, catalog.record_types()).unwrap();
        let after = Snapshot::build("s.json", &raw.to_json(), &catalog).unwrap();
        let ub = after.user(after.member(u, b).unwrap());
        assert_eq!(after.grant(ub).roles_header.as_ref(), "admin");
        let w = after.user_index("w").unwrap();
        assert_eq!(after.member(w, b), None, "removed");
        let types = catalog.record_types();
        let ty = types.get("lead").unwrap();
        let found = after
            .records()
            .find(ty, &canonical_id(types.kind(ty), "3").unwrap())
            .unwrap();
        assert_eq!(
            after.tenant_id(after.records().tenant_of(found.number)),
            "org-b"
        );
        assert!(incremental_changes(&changed, &after, &catalog)
            .unwrap()
            .is_empty());

        // A tenant's round that reads another tenant's row is refused.
        let read = vec![
            lead("1", "w", "org-b"),
            row(&[("type", "lead"), ("id", "9")], &[]),
        ];
        assert_eq!(
            check_tenant(&read, "owners", "org-a").unwrap_err(),
            "owners[0]: tenant 'org-b' read in the round of tenant 'org-a' (tenant_session_sql must restrict the query to its tenant)"
        );
        // A row that does not name its tenant is refused as well: it cannot be told apart.
        assert_eq!(
            check_tenant(&read[1..], "owners", "org-a").unwrap_err(),
            "owners[0]: no 'tenant' (the column is missing or NULL) in the round of tenant 'org-a' (with tenant_session_sql every row must name its tenant, e.g. `org AS tenant`, so a row the settings failed to hide is caught)"
        );
        let own = vec![lead("9", "w", "org-a")];
        check_tenant(&own, "owners", "org-a").unwrap();
    }

    /// A membership's manager in a snapshot (`None`: none), by ids.
    fn manager_in(s: &Snapshot, user: &str, tenant: &str) -> Option<String> {
        let entry = s
            .member(s.user_index(user).unwrap(), s.tenant_index(tenant).unwrap())
            .unwrap();
        s.user(entry).manager.map(|m| s.user(m).id.to_string())
    }

    /// A dropped manager is remembered and given back when they join again (issue 16): from
    /// a full load, from a manager who leaves in a round (the members naming them lose them in
    /// the same batch, where the batch was refused), from a report's row read while the
    /// manager is away. Given back after the manager's membership in the batch, by
    /// `set_manager`; a report with a row of its own in the round follows its row; a report
    /// given a manager since is left alone; a loop the giving back makes is refused as any
    /// batch's; a deleted report is forgotten. The fast path (the gateway's) and the source
    /// form and build agree on every batch.
    /// A memberships row: the user's roles in the tenant.
    fn membership_row(user: &str, tenant: &str, roles: &[&str]) -> Row {
        row(
            &[("user_id", user), ("tenant", tenant)],
            &[("roles", roles)],
        )
    }

    /// An owners row of a lead in a tenant.
    fn tenant_lead(id: &str, owner: &str, tenant: &str) -> Row {
        row(
            &[
                ("type", "lead"),
                ("id", id),
                ("owner", owner),
                ("tenant", tenant),
            ],
            &[],
        )
    }

    /// A full load with listed tenants (or none) writes its users, roles and tenants before
    /// its records (the build compiles them while it reads the records); with tenants derived
    /// from the rows, which follow the records, the users follow them too (read whole, not
    /// compiled twice). Either way the snapshot is the one the records-first text makes.
    #[test]
    fn people_are_written_before_the_records() {
        let (catalog, _) = crate::records::tests::snapshot();
        let membership = |user: &str, tenant: &str| membership_row(user, tenant, &["sales_rep"]);
        let lead = tenant_lead;
        let rows = Rows {
            users: vec![row(&[("id", "u")], &[]), row(&[("id", "w")], &[])],
            memberships: vec![membership("u", "org-a"), membership("w", "org-b")],
            // org-c: named by a record only (no member).
            owners: vec![
                lead("1", "w", "org-b"),
                lead("2", "u", "org-a"),
                lead("3", "u", "org-c"),
            ],
            tenants: vec![
                row(&[("id", "org-a"), ("name", "A")], &[]),
                row(&[("id", "org-b")], &[]),
                row(&[("id", "org-c")], &[]),
            ],
            ..Rows::default()
        };
        let derived = DbQueries {
            memberships: Some("…".into()),
            ..DbQueries::default()
        };
        let listed = DbQueries {
            tenants: Some("…".into()),
            ..derived.clone()
        };
        // Without a tenants query there are no tenant rows.
        let unlisted = Rows {
            tenants: Vec::new(),
            ..rows.clone()
        };
        let records_first = |rows: &Rows, queries: &DbQueries| {
            let mut records = RecordsText::new("v", 0);
            for r in &rows.owners {
                records.push(RecordQuery::Owners, r, None).unwrap();
            }
            finish_snapshot_text(rows, records, queries).unwrap().0
        };
        let at = |text: &str, field: &str| text.find(&format!("\"{field}\":")).unwrap();
        // Without tenants: no memberships, records of no tenant.
        let plain = Rows {
            users: rows.users.clone(),
            owners: vec![row(&[("type", "lead"), ("id", "1"), ("owner", "w")], &[])],
            ..Rows::default()
        };
        let none = DbQueries::default();
        for (rows, queries, first) in [
            (&rows, &listed, true),
            (&unlisted, &derived, false),
            (&plain, &none, true),
        ] {
            let text = snapshot_text(rows, queries, "v".into(), 0).unwrap();
            assert_eq!(at(&text, "users") < at(&text, "records"), first, "{text}");
            if queries.memberships.is_some() {
                assert_eq!(at(&text, "tenants") < at(&text, "records"), first, "{text}");
            }
            let old = records_first(rows, queries);
            assert!(at(&old, "records") < at(&old, "users"), "{old}");
            let (a, b) = (
                Snapshot::build("s.json", &text, &catalog).unwrap(),
                Snapshot::build("s.json", &old, &catalog).unwrap(),
            );
            let tenants = if queries.memberships.is_some() { 3 } else { 0 };
            assert_eq!(a.tenant_count(), tenants);
            for s in [&a, &b] {
                let phases: Vec<&str> = s.build_phases().iter().map(|(n, _)| *n).collect();
                // Users first: read aside, never merged; records first: read in place.
                assert_eq!(
                    phases.contains(&"records read (wait)"),
                    first && std::ptr::eq(s, &a),
                    "{phases:?}"
                );
                assert!(!phases.iter().any(|p| p.starts_with("merge")), "{phases:?}");
            }
            for id in ["u", "w"] {
                let (x, y) = (a.user_index(id).unwrap(), b.user_index(id).unwrap());
                assert_eq!(format!("{:?}", a.user(x)), format!("{:?}", b.user(y)));
            }
            for t in ["org-a", "org-b", "org-c"].iter().take(tenants) {
                assert_eq!(a.tenant_index(t), b.tenant_index(t), "{t}");
            }
        }
    }

    #[test]
    fn a_manager_who_rejoins_gets_their_reports_back() {
        let (catalog, _) = crate::records::tests::snapshot();
        let types = catalog.record_types();
        let queries = DbQueries {
            memberships: Some("…".into()),
            ..DbQueries::default()
        };
        let member = |user: &str, tenant: &str, roles: &[&str], manager: Option<&str>| {
            let mut text = vec![("user_id", user), ("tenant", tenant)];
            text.extend(manager.map(|m| ("manager", m)));
            row(&text, &[("roles", roles)])
        };
        let gone =
            |user: &str, tenant: &str| flagged(member(user, tenant, &[], None), "deleted", true);
        let rows = Rows {
            users: ["s", "m", "r", "q", "x"]
                .iter()
                .map(|u| row(&[("id", u)], &[]))
                .collect(),
            memberships: vec![
                member("s", "t", &["admin"], None),
                member("m", "t", &["admin"], Some("s")),
                member("r", "t", &["sales_rep"], Some("m")),
                member("x", "t", &["sales_rep"], Some("q")),
                member("q", "t2", &["admin"], None),
            ],
            ..Rows::default()
        };
        let (text, dropped, mut remembered) =
            finish_snapshot_text(&rows, RecordsText::new("db-1", 0), &queries).unwrap();
        assert_eq!(
            dropped,
            ["user 'x' in tenant 't': manager 'q' is no member there: dropped"]
        );
        let mut raw = RawSnapshot::parse(&text).unwrap();
        let mut live = Snapshot::build("s.json", &text, &catalog).unwrap();
        // Apply a round's batch both ways; they must agree. The round's remembering is taken
        // once the batch is in.
        let mut apply = |live: &mut Snapshot,
                         remembered: &mut DroppedManagers,
                         round: Incremental|
         -> Result<(), String> {
            let mut next = raw.clone();
            let slow = next.apply(&round.changes, types).and_then(|()| {
                Snapshot::build("s.json", &next.to_json(), &catalog).map_err(|e| format!("{e:?}"))
            });
            // The gateway's way: the fast path, unless the batch needs a full build.
            let applied = if live.needs_rebuild(&round.changes, &catalog) {
                slow
            } else {
                let fast = live
                    .apply(&round.changes, &catalog)
                    .map(|a| a.snapshot)
                    .map_err(|e| e.join("; "));
                assert_eq!(
                    fast.is_ok(),
                    slow.is_ok(),
                    "the paths disagree: {:?} / {:?}",
                    fast.as_ref().err(),
                    slow.as_ref().err()
                );
                fast
            };
            let s = applied?;
            *live = s;
            raw = next;
            remembered.update(round.remember);
            Ok(())
        };

        // q joins t: x gets q back, after q's membership.
        let joins = Rows {
            memberships: vec![member("q", "t", &["sales_rep"], None)],
            ..Rows::default()
        };
        let round = incremental_changes_said(&joins, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&round.changes), ["set_membership", "set_manager"]);
        assert_eq!(
            round.restored,
            ["user 'x' in tenant 't': manager 'q' is a member again: given back"]
        );
        assert!(round.dropped.is_empty());
        // Without what the follower remembers, nothing is given back (as before).
        assert_eq!(
            ops(&incremental_changes(&joins, &live, &catalog).unwrap()),
            ["set_membership"]
        );
        apply(&mut live, &mut remembered, round).unwrap();
        assert_eq!(manager_in(&live, "x", "t").as_deref(), Some("q"));
        assert!(remembered.is_empty(), "{remembered:?}");
        // Read again (the overlap window): nothing to do.
        let round = incremental_changes_said(&joins, &live, &catalog, &remembered).unwrap();
        assert!(round.changes.is_empty() && round.restored.is_empty());

        // m leaves t: r loses m in the same batch (the batch used to be refused).
        let leaves = Rows {
            memberships: vec![gone("m", "t")],
            ..Rows::default()
        };
        let round = incremental_changes_said(&leaves, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&round.changes), ["set_manager", "remove_membership"]);
        assert_eq!(
            round.dropped,
            ["user 'r' in tenant 't': manager 'm' left the tenant: dropped"]
        );
        apply(&mut live, &mut remembered, round).unwrap();
        assert_eq!(manager_in(&live, "r", "t"), None);
        assert_eq!(remembered.manager_of("r", "t"), Some("m"));
        let (s_t, r_t) = (
            live.member(live.user_index("s").unwrap(), 0).unwrap(),
            live.member(live.user_index("r").unwrap(), 0).unwrap(),
        );
        assert_eq!(live.tenant_id(0), "t");
        assert!(!live.hierarchy().is_at_or_below(s_t, r_t));
        // r's row, read while m is away, still names m: dropped again, still remembered.
        let still = Rows {
            memberships: vec![member("r", "t", &["sales_rep"], Some("m"))],
            ..Rows::default()
        };
        let round = incremental_changes_said(&still, &live, &catalog, &remembered).unwrap();
        assert!(round.changes.is_empty());
        assert_eq!(
            round.dropped,
            ["user 'r' in tenant 't': manager 'm' is no member there: dropped"]
        );
        apply(&mut live, &mut remembered, round).unwrap();
        assert_eq!(remembered.manager_of("r", "t"), Some("m"));

        // m rejoins t under s: r gets m back; s sees r again through m.
        let rejoins = Rows {
            memberships: vec![member("m", "t", &["admin"], Some("s"))],
            ..Rows::default()
        };
        let round = incremental_changes_said(&rejoins, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&round.changes), ["set_membership", "set_manager"]);
        // ...unless r's own row is in the round: its row decides.
        let with_row = Rows {
            memberships: vec![
                member("m", "t", &["admin"], Some("s")),
                member("r", "t", &["sales_rep"], None),
            ],
            ..Rows::default()
        };
        let decided = incremental_changes_said(&with_row, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&decided.changes), ["set_membership"]);
        assert!(decided.restored.is_empty());
        assert!(decided.remember.contains(&Remember {
            user: "r".into(),
            tenant: "t".into(),
            manager: None
        }));
        // ...and a loop it would make (m rejoining under r) is refused whole, as any batch's.
        let looped = Rows {
            memberships: vec![member("m", "t", &["admin"], Some("r"))],
            ..Rows::default()
        };
        let refused = incremental_changes_said(&looped, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&refused.changes), ["set_membership", "set_manager"]);
        let error = apply(&mut live, &mut remembered, refused).unwrap_err();
        assert!(error.contains("loops back to itself"), "{error}");
        assert_eq!(
            remembered.manager_of("r", "t"),
            Some("m"),
            "refused: unchanged"
        );
        apply(&mut live, &mut remembered, round).unwrap();
        assert_eq!(manager_in(&live, "r", "t").as_deref(), Some("m"));
        let (s_t, r_t) = (
            live.member(live.user_index("s").unwrap(), 0).unwrap(),
            live.member(live.user_index("r").unwrap(), 0).unwrap(),
        );
        assert!(live.hierarchy().is_at_or_below(s_t, r_t));
        assert!(remembered.is_empty(), "{remembered:?}");

        // m's user removed: r loses m in every tenant (the batch used to be refused).
        let removed = Rows {
            users: vec![flagged(row(&[("id", "m")], &[]), "deleted", true)],
            ..Rows::default()
        };
        let round = incremental_changes_said(&removed, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&round.changes), ["set_manager", "remove_user"]);
        apply(&mut live, &mut remembered, round).unwrap();
        assert_eq!(manager_in(&live, "r", "t"), None);
        assert_eq!(remembered.manager_of("r", "t"), Some("m"));
        // r given a manager since (the admin API: s): m coming back leaves it alone.
        let by_admin = vec![Change::SetManager {
            user: "r".into(),
            manager: Some("s".into()),
            tenant: Some("t".into()),
        }];
        live = live.apply(&by_admin, &catalog).unwrap().snapshot;
        raw.apply(&by_admin, types).unwrap();
        let back = Rows {
            users: vec![row(&[("id", "m")], &[])],
            memberships: vec![member("m", "t", &["admin"], Some("s"))],
            ..Rows::default()
        };
        let round = incremental_changes_said(&back, &live, &catalog, &remembered).unwrap();
        assert_eq!(ops(&round.changes), ["upsert_user", "set_membership"]);
        assert!(round.restored.is_empty());
        let mut forgets = remembered.clone();
        forgets.update(round.remember);
        assert!(forgets.is_empty(), "{forgets:?}");

        // A report deleted while its manager is away is forgotten.
        let mut once = DroppedManagers::default();
        once.set("r", "t", Some("m".into()));
        once.set("x", "t", Some("m".into()));
        let deleted = Rows {
            memberships: vec![gone("r", "t")],
            ..Rows::default()
        };
        let round = incremental_changes_said(&deleted, &live, &catalog, &once).unwrap();
        once.update(round.remember);
        assert_eq!(once.len(), 1);
        assert_eq!(once.manager_of("x", "t"), Some("m"));
        assert_eq!(once.reports_of("t", "m").collect::<Vec<_>>(), ["x"]);
        once.set("x", "t", None);
        assert!(once.is_empty() && once.reports.is_empty(), "{once:?}");

        // s, whom the admin API made r's manager, leaves t: r is remembered with the manager
        // its rows named (m), not with s.
        let s_leaves = Rows {
            memberships: vec![gone("s", "t")],
            ..Rows::default()
        };
        let round = incremental_changes_said(&s_leaves, &live, &catalog, &remembered).unwrap();
        assert!(round.remember.contains(&Remember {
            user: "r".into(),
            tenant: "t".into(),
            manager: Some("m".into())
        }));
        // A user removed in the round whose membership row names an absent manager is not
        // remembered.
        let x_goes = Rows {
            users: vec![flagged(row(&[("id", "x")], &[]), "deleted", true)],
            memberships: vec![member("x", "t", &["sales_rep"], Some("nobody"))],
            ..Rows::default()
        };
        let mut after = DroppedManagers::default();
        after.set("x", "t", Some("q".into()));
        let round = incremental_changes_said(&x_goes, &live, &catalog, &after).unwrap();
        after.update(round.remember);
        assert_eq!(after.manager_of("x", "t"), None, "{after:?}");
        // s leaves while m (whom r's rows name) rejoins, in one round: r gets m, nothing is
        // left remembered.
        let swap = Rows {
            users: vec![row(&[("id", "m")], &[])],
            memberships: vec![gone("s", "t"), member("m", "t", &["admin"], None)],
            ..Rows::default()
        };
        let round = incremental_changes_said(&swap, &live, &catalog, &remembered).unwrap();
        assert_eq!(
            round.restored,
            ["user 'r' in tenant 't': manager 's' left the tenant; manager 'm' the rows name is a member: given back"]
        );
        // Replaced, not dropped: no dangling line (the dangling counter counts those).
        assert!(round.dropped.is_empty(), "{:?}", round.dropped);
        // Both ways (the source form is where the admin change left it).
        let mut next = raw.clone();
        next.apply(&round.changes, types).unwrap();
        let slow = Snapshot::build("s.json", &next.to_json(), &catalog).unwrap();
        live = live.apply(&round.changes, &catalog).unwrap().snapshot;
        remembered.update(round.remember);
        for s in [&live, &slow] {
            assert_eq!(manager_in(s, "r", "t").as_deref(), Some("m"));
        }
        assert_eq!(remembered.manager_of("r", "t"), None, "{remembered:?}");
    }
}
