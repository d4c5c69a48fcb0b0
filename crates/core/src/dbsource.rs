//! The snapshot read from the CRM's own database (`[snapshot.database]`, issue 17): the SQL the
//! operator writes yields users, custom roles, API-key digests, record owners, shares and
//! related records; permgate builds the snapshot from the rows and swaps it in like any other
//! (validated whole; a refused one leaves the last good snapshot live).
//!
//! The gateway loads everything at start and every `reconcile_interval_ms`; in between, every
//! `poll_interval_ms` it runs the `cursor` query (one value, e.g. `SELECT max(updated_at)::text
//! FROM …`) and loads again as soon as that value changes. A database outage keeps the last good
//! snapshot (staleness metrics and `on_stale` apply as for every source).
//!
//! The driver is `tokio-postgres` (the async PostgreSQL driver the Rust ecosystem settled on,
//! pure Rust, on the tokio runtime we already run); this module holds the settings and the
//! rows → snapshot step, which does no I/O (the server's control thread runs the queries).

use std::time::Duration;

use crate::records::{RawId, RawOwner, RawRecords, RawRelated, RawShare};
use crate::snapshot::{RawRole, RawSnapshot, RawUser};

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
    pub queries: DbQueries,
}

impl std::fmt::Debug for DbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("DbSource")
            .field("poll_interval", &self.poll_interval)
            .field("reconcile_interval", &self.reconcile_interval)
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
    /// `type text, id text, owner text` (owner may be NULL).
    #[serde(default)]
    pub owners: Option<String>,
    /// `type text, id text` and one of `user_id text`, `team text`, `role text`.
    #[serde(default)]
    pub shares: Option<String>,
    /// `type text, id text, parent_type text, parent_id text`.
    #[serde(default)]
    pub related: Option<String>,
    /// One row, one value (cast to `text`) that changes when the data does.
    #[serde(default)]
    pub cursor: Option<String>,
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
    fn text(&self, column: &str) -> Option<&str> {
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
}

/// The snapshot the rows describe, as the JSON text every source hands over (so it is
/// validated and built the one way). `version` names the load.
pub fn snapshot_text(rows: &Rows, version: String, generated_at: u64) -> Result<String, String> {
    let mut users = Vec::with_capacity(rows.users.len());
    let mut index = std::collections::HashMap::new();
    for (i, r) in rows.users.iter().enumerate() {
        let id = r.need("users", i, "id")?;
        // A `disabled` that is not a boolean (1/0, 'Y') must not read as "enabled".
        if r.text("disabled").is_some() || r.lists.iter().any(|(c, _)| c == "disabled") {
            return Err(format!(
                "users[{i}]: column 'disabled' must be a boolean (cast it: disabled::boolean)"
            ));
        }
        index.insert(id.clone(), users.len());
        users.push(RawUser {
            id,
            name: r.text("name").map(str::to_string),
            email: r.text("email").map(str::to_string),
            roles: r.list("roles"),
            teams: r.list("teams"),
            manager: r.text("manager").map(str::to_string),
            api_keys: Vec::new(),
            disabled: r.flag("disabled"),
            memberships: Vec::new(),
        });
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
    let id = |s: String| RawId::Text(s);
    let mut records = RawRecords::default();
    for (i, r) in rows.owners.iter().enumerate() {
        records.owners.push(RawOwner {
            record_type: r.need("owners", i, "type")?,
            id: id(r.need("owners", i, "id")?),
            owner: r.text("owner").map(str::to_string),
            tenant: None,
        });
    }
    for (i, r) in rows.shares.iter().enumerate() {
        records.shares.push(RawShare {
            record_type: r.need("shares", i, "type")?,
            id: id(r.need("shares", i, "id")?),
            user: r.text("user_id").map(str::to_string),
            team: r.text("team").map(str::to_string),
            role: r.text("role").map(str::to_string),
        });
    }
    for (i, r) in rows.related.iter().enumerate() {
        records.related.push(RawRelated {
            record_type: r.need("related", i, "type")?,
            id: id(r.need("related", i, "id")?),
            parent_type: r.need("related", i, "parent_type")?,
            parent_id: id(r.need("related", i, "parent_id")?),
        });
    }
    let has_records =
        !(records.owners.is_empty() && records.shares.is_empty() && records.related.is_empty());
    let raw = RawSnapshot {
        version: Some(version),
        generated_at: Some(generated_at),
        roles,
        users,
        records: has_records.then_some(records),
        // Service principals come from the snapshot file or a URL source, not yet from SQL.
        services: Vec::new(),
        // Tenants (memberships) likewise: the database source's query is another piece of work.
        tenants: Vec::new(),
    };
    Ok(raw.to_json())
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
        let text = snapshot_text(&rows, "db-1".into(), 5).unwrap();
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
            snapshot_text(&missing, "v".into(), 0).unwrap_err(),
            "users[0]: column 'id' is missing or NULL"
        );
    }
}
