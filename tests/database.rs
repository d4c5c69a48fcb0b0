//! `[snapshot.database]` (issue 17): the gateway follows the CRM's own PostgreSQL database. A
//! real throwaway cluster on 127.0.0.1 (initdb + postgres, as the `postgres` user when the
//! tests run as root), a read-only role that is not a superuser, row-level security on the
//! records table; ordinary SQL the way the CRM would write it; the gateway's decisions follow
//! within the poll interval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::records::config;
use common::*;

/// A PostgreSQL server of the test's own, stopped when dropped.
struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's programs: Debian's `/usr/lib/postgresql/<version>/bin`, else the PATH.
fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as the `postgres` user when we are root (the server refuses root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = as_pg_user(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap_or_else(|e| {
                panic!("initdb could not run ({e}): scripts/setup installs PostgreSQL")
            });
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = as_pg_user(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pg = Postgres {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    async fn superuser(&self) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(
                &format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
                tokio_postgres::NoTls,
            )
            .await
            {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    return client;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot connect: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The CRM's schema: users with roles, leads per organisation under row-level security, and a
/// read-only role for permgate that sees one organisation (set per session).
const SCHEMA: &str = r#"
CREATE TABLE crm_users (id text PRIMARY KEY, roles text[] NOT NULL, teams text[],
                        manager text, updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE leads (id integer PRIMARY KEY, org text NOT NULL, owner text,
                    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
ALTER TABLE leads ENABLE ROW LEVEL SECURITY;
CREATE POLICY per_org ON leads USING (org = current_setting('app.current_org', true));
CREATE ROLE permgate_ro LOGIN PASSWORD 'ro' NOSUPERUSER NOBYPASSRLS;
GRANT SELECT ON crm_users, leads TO permgate_ro;
INSERT INTO crm_users (id, roles, teams, manager) VALUES
  ('u-admin', '{admin}', NULL, NULL),
  ('u-sm', '{sales_manager}', '{sales-east}', NULL),
  ('u-rep1', '{limited_rep}', '{sales-east}', 'u-sm'),
  ('u-rep2', '{limited_rep}', NULL, 'u-sm');
INSERT INTO leads (id, org, owner) VALUES (1, 'acme', 'u-rep1'), (2, 'acme', 'u-rep2');
"#;

fn database_config(port: u16) -> String {
    config()
        + &format!(
            r#"
[snapshot.database]
url = "postgres://permgate_ro:ro@127.0.0.1:{port}/postgres"
poll_interval_ms = 200
session_sql = ["SELECT set_config('app.current_org', 'acme', false)"]

[snapshot.database.queries]
users = "SELECT id, roles, teams, manager FROM crm_users"
roles = "SELECT 'limited_rep' AS id, ARRAY['lead.view@own+shared'] AS permissions"
owners = "SELECT 'lead' AS type, id::text AS id, owner FROM leads"
cursor = "SELECT (SELECT count(*) FROM leads)::text || '/' || coalesce((SELECT max(updated_at) FROM leads)::text, '') || '/' || coalesce((SELECT max(updated_at) FROM crm_users)::text, '')"
"#
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_the_crms_database() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    let h = Harness::with_config_text(&database_config(pg.port), &[]).await;
    // 200 when the gateway forwarded the call, else the gateway's status.
    let get = |user: &'static str, lead: u32| lead_call(&h, user, lead);
    let follows = |user: &'static str, lead: u32, want: u16| async move {
        eventually(10, || async { get(user, lead).await == want }).await
    };
    // The first load: u-rep1 (own only) sees lead 1, not u-rep2's lead 2.
    assert!(
        follows("u-rep1", 1, 200).await,
        "first load:\n{}",
        h.log_text()
    );
    assert_eq!(get("u-rep1", 2).await, 403);
    // The CRM creates a lead: known at once after the next poll.
    assert_eq!(get("u-rep1", 500).await, 403);
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (500, 'acme', 'u-rep1')")
        .await
        .unwrap();
    assert!(follows("u-rep1", 500, 200).await, "a created lead");
    // Reassigned to u-rep2: u-rep1 loses it.
    su.batch_execute(
        "UPDATE leads SET owner = 'u-rep2', updated_at = clock_timestamp() WHERE id = 500",
    )
    .await
    .unwrap();
    assert!(follows("u-rep1", 500, 403).await, "a reassigned lead");
    // Row-level security: another organisation's lead is never read, so never known.
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (600, 'other', 'u-rep1')")
        .await
        .unwrap();
    assert!(follows("u-rep1", 1, 200).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get("u-rep1", 600).await, 403, "row-level security holds");
    // A user's role changes: u-rep1 becomes admin and sees everyone's leads.
    su.batch_execute(
        "UPDATE crm_users SET roles = '{admin}', updated_at = clock_timestamp() WHERE id = 'u-rep1'",
    )
    .await
    .unwrap();
    assert!(follows("u-rep1", 2, 200).await, "a role change");
    // A deleted lead is forgotten: its owner (own scope) loses it.
    assert_eq!(get("u-rep2", 500).await, 200);
    su.batch_execute("DELETE FROM leads WHERE id = 500")
        .await
        .unwrap();
    assert!(follows("u-rep2", 500, 403).await, "a deleted lead");
    // `permgate snapshot export`: the snapshot the source builds now, as JSON.
    let dir = config_dir(&database_config(pg.port));
    let export = |out: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_permgate"));
        cmd.args(["snapshot", "export", "--config"])
            .arg(dir.path().join("c.toml"));
        if let Some(out) = out {
            cmd.arg("--out").arg(out);
        }
        cmd.output().unwrap()
    };
    let out = export(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let owners = json["records"]["owners"].to_string();
    assert!(owners.contains(r#""id":"1","owner":"u-rep1""#), "{owners}");
    assert!(owners.contains(r#""id":"2","owner":"u-rep2""#), "{owners}");
    assert!(!owners.contains(r#""id":"500""#), "deleted: {owners}");
    assert!(
        !owners.contains(r#""id":"600""#),
        "row-level security: {owners}"
    );
    let rep1 = json["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "u-rep1")
        .unwrap();
    assert_eq!(rep1["roles"], serde_json::json!(["admin"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("user(s)"));
    let file = dir.path().join("exported.json");
    let out = export(Some(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written["records"], json["records"]);
    // The database goes away: the last good snapshot stays (u-rep1 still admin).
    drop(su);
    drop(pg);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get("u-rep1", 1).await, 200, "last good snapshot kept");
    // Export cannot read it: an error, and the file written before is left as it was.
    let out = export(Some(&file));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: database: cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(kept, written);
}

/// `permgate snapshot export` needs a database source: a config without one is refused, naming
/// the setting.
#[test]
fn export_needs_a_database_source() {
    let dir = config_dir(&config());
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["snapshot", "export", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("snapshot.database: export reads the CRM's database"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// A bad `[snapshot.database]` is refused at its line.
#[test]
fn database_settings_are_checked() {
    let text = database_config(5432).replace(
        "url = \"postgres://permgate_ro:ro@127.0.0.1:5432/postgres\"",
        "url = \"mysql://x\"",
    );
    let out = check_config_text(&text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("snapshot.database.url: must be a postgres:// URL"),
        "{err}"
    );
    assert_eq!(err.matches("snapshot.database.url").count(), 1, "{err}");
    // The right scheme, but a URL the driver refuses (the server's check, after the core's).
    let text = database_config(5432).replace(
        "url = \"postgres://permgate_ro:ro@127.0.0.1:5432/postgres\"",
        "url = \"postgres://permgate_ro@127.0.0.1:notaport/postgres\"",
    );
    let out = check_config_text(&text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("snapshot.database.url: must be a postgres:// URL"),
        "{err}"
    );
}
