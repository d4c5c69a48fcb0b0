//! `[snapshot.database]` (issue 17): the gateway follows the CRM's own PostgreSQL database. A
//! real throwaway cluster on 127.0.0.1 (initdb + postgres, as the `postgres` user when the
//! tests run as root), a read-only role that is not a superuser, row-level security on the
//! records table; ordinary SQL the way the CRM would write it; the gateway's decisions follow
//! within the poll interval.
//!
//! Why one file (~1,350 lines): every test here starts its own PostgreSQL cluster with the
//! helpers at the top; the tenant, hard-delete and CA-rotation tests reuse the schema, the
//! follower config and the TLS server.
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
        Postgres::start_on(free_port(), None)
    }

    /// A server on `port`; with `tls` (certificate PEM, key PEM) it has `ssl = on` and takes
    /// TCP connections only over TLS (`hostssl`; the superuser uses the Unix socket).
    fn start_on(port: u16, tls: Option<(&str, &str)>) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut ssl_args: Vec<String> = Vec::new();
        if let Some((cert, key)) = tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
            ssl_args = vec![
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", c.display()),
                "-c".into(),
                format!("ssl_key_file={}", k.display()),
            ];
        }
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
        if tls.is_some() {
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
        }
        let child = as_pg_user(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "fsync=off"])
            .args(&ssl_args)
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

    /// A new server certificate and key (a server started with `tls`), written over the old
    /// files, then the configuration reloaded: new connections get the new certificate, open
    /// ones keep their session.
    async fn rotate_tls(&self, su: &tokio_postgres::Client, cert: &str, key: &str) {
        std::fs::write(self._dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(self._dir.path().join("server.key"), key).unwrap();
        su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }

    async fn superuser(&self) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(
                &format!(
                    "host={} port={} user=postgres dbname=postgres",
                    self._dir.path().display(),
                    self.port
                ),
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
    // (The start-up file's snapshot answers until the first load lands: wait for it.)
    assert!(follows("u-rep1", 2, 403).await, "first load");
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
    // The users before the records (no tenants here): the build compiles them while it reads
    // the records.
    let text = String::from_utf8_lossy(&out.stdout);
    let (users, records) = (text.find("\"users\":"), text.find("\"records\":"));
    assert!(users.is_some() && users < records, "{text}");
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

/// Soft deletes for the incremental tests: a lead is marked, not deleted.
const SOFT_DELETES: &str = "ALTER TABLE leads ADD COLUMN deleted boolean NOT NULL DEFAULT false";

/// A gateway config following the CRM's database at `url` with incremental queries, plus its
/// admin port. `settings`: more lines of `[snapshot.database]`.
fn follower_config(url: &str, settings: &str, overlap_ms: u64) -> (String, u16) {
    let (admin, admin_port) = admin_section();
    let text = config()
        + &admin
        + &format!(
            r#"
[snapshot.database]
url = "{url}"
session_sql = ["SELECT set_config('app.current_org', 'acme', false)"]
{settings}

[snapshot.database.queries]
users = "SELECT id, roles, teams, manager FROM crm_users"
roles = "SELECT 'limited_rep' AS id, ARRAY['lead.view@own+shared'] AS permissions"
owners = "SELECT 'lead' AS type, id::text AS id, owner FROM leads WHERE NOT deleted"
cursor = "SELECT greatest((SELECT max(updated_at) FROM leads), (SELECT max(updated_at) FROM crm_users), '-infinity')::text"

[snapshot.database.incremental]
overlap_ms = {overlap_ms}
users = "SELECT id, roles, teams, manager FROM crm_users WHERE updated_at > $1::timestamptz"
owners = "SELECT 'lead' AS type, id::text AS id, owner, deleted FROM leads WHERE updated_at > $1::timestamptz"
"#
        );
    (text, admin_port)
}

fn ro_url(port: u16) -> String {
    format!("postgres://permgate_ro:ro@127.0.0.1:{port}/postgres")
}

/// The admin API's `/status`.
async fn status(admin_port: u16) -> serde_json::Value {
    client()
        .get(format!("http://127.0.0.1:{admin_port}/status"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `/status`: the sources' failures (`source_errors`: a round that could not read or use what
/// it read) and the live snapshot's version.
async fn source_errors_and_version(admin_port: u16) -> (u64, String) {
    let v = status(admin_port).await;
    (
        v["counters"]["source_errors"].as_u64().unwrap(),
        v["snapshot"]["version"].as_str().unwrap().to_string(),
    )
}

/// `/status` counters of the database source: (full loads, incremental batches, refused).
async fn db_counters(admin_port: u16) -> (u64, u64, u64) {
    let v = status(admin_port).await;
    let c = &v["counters"];
    (
        c["database_full_loads"].as_u64().unwrap(),
        c["database_incremental_batches"].as_u64().unwrap(),
        c["snapshot_update_failures"].as_u64().unwrap(),
    )
}

/// The incremental-batch counter reaches `n` (it is counted just after the snapshot swap, so a
/// decision may show a batch a moment before the counter does).
async fn batches_reach(admin_port: u16, n: u64) -> bool {
    eventually(5, || async { db_counters(admin_port).await.1 >= n }).await
}

async fn follows(h: &Harness, user: &str, lead: u32, want: u16) -> bool {
    eventually(10, || async { lead_call(h, user, lead).await == want }).await
}

/// Incremental queries: each change the CRM makes reaches the gateway as one change batch,
/// with no full load (the full-load counter stays at the first load's 1): a created lead, a
/// reassignment, a soft delete, a role change, a transaction that commits late with an older
/// `updated_at` (the overlap window reads it); a batch the snapshot refuses keeps the last good
/// one and makes the next round a full load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_queries_follow_the_crm_without_full_loads() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(SOFT_DELETES).await.unwrap();
    let (text, admin) = follower_config(
        &ro_url(pg.port),
        "poll_interval_ms = 200\nreconcile_interval_ms = 600000",
        3000,
    );
    let h = Harness::with_config_text(&text, &[]).await;
    assert!(follows(&h, "u-rep1", 1, 200).await, "{}", h.log_text());
    // Within the first overlap window a change would be a full load (no cursor old enough to
    // read from yet): wait it out.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(db_counters(admin).await.0, 1, "the first load only");
    // A created lead.
    assert_eq!(lead_call(&h, "u-rep1", 500).await, 403);
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (500, 'acme', 'u-rep1')")
        .await
        .unwrap();
    assert!(follows(&h, "u-rep1", 500, 200).await, "a created lead");
    assert!(batches_reach(admin, 1).await);
    assert_eq!(db_counters(admin).await.0, 1, "no full load");
    // Reassigned.
    su.batch_execute(
        "UPDATE leads SET owner = 'u-rep2', updated_at = clock_timestamp() WHERE id = 500",
    )
    .await
    .unwrap();
    assert!(follows(&h, "u-rep1", 500, 403).await, "a reassigned lead");
    assert_eq!(lead_call(&h, "u-rep2", 500).await, 200);
    // Soft-deleted: forgotten.
    su.batch_execute(
        "UPDATE leads SET deleted = true, updated_at = clock_timestamp() WHERE id = 500",
    )
    .await
    .unwrap();
    assert!(follows(&h, "u-rep2", 500, 403).await, "a soft-deleted lead");
    // A role change.
    assert_eq!(lead_call(&h, "u-rep1", 2).await, 403);
    su.batch_execute(
        "UPDATE crm_users SET roles = '{admin}', updated_at = clock_timestamp() WHERE id = 'u-rep1'",
    )
    .await
    .unwrap();
    assert!(follows(&h, "u-rep1", 2, 200).await, "a role change");
    // A late commit: lead 800's row gets its updated_at, lead 801 commits after it and the
    // gateway reads 801's newer cursor; then 800 commits, older than that cursor.
    let late = pg.superuser().await;
    late.batch_execute("BEGIN; INSERT INTO leads (id, org, owner) VALUES (800, 'acme', 'u-rep2')")
        .await
        .unwrap();
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (801, 'acme', 'u-rep2')")
        .await
        .unwrap();
    assert!(follows(&h, "u-rep2", 801, 200).await);
    assert_eq!(lead_call(&h, "u-rep2", 800).await, 403);
    late.batch_execute("COMMIT").await.unwrap();
    assert!(
        follows(&h, "u-rep2", 800, 200).await,
        "a late commit is read in the overlap window"
    );
    let (full, batches, refused) = db_counters(admin).await;
    assert_eq!(full, 1, "still no full load");
    assert!(batches >= 5, "{batches}");
    let metrics = admin_metrics(&format!("http://127.0.0.1:{admin}")).await;
    assert_eq!(metric(&metrics, "permgate_database_full_loads_total"), 1);
    assert_eq!(
        metric(&metrics, "permgate_database_incremental_batches_total"),
        batches
    );
    // A lead owned by a user the snapshot does not have: the batch is refused, the last good
    // snapshot stays, and the rounds go back to full loads until the data is right again.
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (900, 'acme', 'u-ghost')")
        .await
        .unwrap();
    assert!(
        eventually(10, || async { db_counters(admin).await.2 > refused }).await,
        "the batch is refused"
    );
    assert_eq!(lead_call(&h, "u-rep2", 800).await, 200, "last good kept");
    su.batch_execute(
        "UPDATE leads SET owner = 'u-rep2', updated_at = clock_timestamp() WHERE id = 900",
    )
    .await
    .unwrap();
    assert!(follows(&h, "u-rep2", 900, 200).await, "{}", h.log_text());
    // (The counter is bumped just after the swap that the call above saw.)
    assert!(
        eventually(10, || async { db_counters(admin).await.0 >= 2 }).await,
        "a full load after the refusal"
    );
}

/// `notify_channel`: with a one-minute poll, a change followed by `NOTIFY` reaches the gateway
/// at once; a LISTEN connection the server ends is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_follower() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(SOFT_DELETES).await.unwrap();
    let (text, admin) = follower_config(
        &ro_url(pg.port),
        "poll_interval_ms = 60000\nreconcile_interval_ms = 600000\nnotify_channel = \"permgate\"",
        500,
    );
    let h = Harness::with_config_text(&text, &[]).await;
    assert!(follows(&h, "u-rep1", 1, 200).await, "{}", h.log_text());
    let listening = || async {
        su.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'permgate_ro' \
             AND query ILIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    };
    assert!(eventually(10, listening).await, "{}", h.log_text());
    tokio::time::sleep(Duration::from_millis(800)).await;
    su.batch_execute(
        "BEGIN; INSERT INTO leads (id, org, owner) VALUES (700, 'acme', 'u-rep1'); \
         NOTIFY permgate; COMMIT",
    )
    .await
    .unwrap();
    // The next poll is a minute away: only the notification can make this happen in time.
    assert!(follows(&h, "u-rep1", 700, 200).await, "{}", h.log_text());
    assert!(batches_reach(admin, 1).await);
    assert_eq!(db_counters(admin).await.0, 1);
    // The LISTEN connection is ended by the server: it comes back.
    su.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = 'permgate_ro' AND query ILIKE 'LISTEN%'",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(eventually(20, listening).await, "{}", h.log_text());
    su.batch_execute(
        "BEGIN; INSERT INTO leads (id, org, owner) VALUES (701, 'acme', 'u-rep1'); \
         NOTIFY permgate; COMMIT",
    )
    .await
    .unwrap();
    assert!(follows(&h, "u-rep1", 701, 200).await, "{}", h.log_text());
}

/// A test CA and a server certificate for 127.0.0.1 from it.
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "permgate test database CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (issuer.pem(), cert.pem(), key.serialize_pem())
}

/// `tls`: a server that takes TCP connections only over TLS. Without `tls` nothing connects;
/// `verify-full` connects with the right CA and not with another; `require` connects without
/// checking; the gateway follows over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database() {
    let (ca, cert, key) = test_ca();
    let (other_ca, _, _) = test_ca();
    let pg = Postgres::start_on(free_port(), Some((&cert, &key)));
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(SOFT_DELETES).await.unwrap();
    let export = |settings: &str| {
        let (text, _) = follower_config(
            &ro_url(pg.port),
            &format!("poll_interval_ms = 200\n{settings}"),
            1000,
        );
        let dir = config_dir(&text);
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        std::fs::write(dir.path().join("other.pem"), &other_ca).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
            .args(["snapshot", "export", "--config"])
            .arg(dir.path().join("c.toml"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = export("");
    assert_eq!(code, Some(1), "plain TCP is refused: {err}");
    assert!(err.contains("cannot connect"), "{err}");
    let (code, err) = export("tls = \"verify-full\"\nca_file = \"ca.pem\"");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = export("tls = \"verify-full\"\nca_file = \"other.pem\"");
    assert_eq!(code, Some(1), "another CA: {err}");
    assert!(err.contains("cannot connect"), "{err}");
    let (code, err) = export("tls = \"require\"");
    assert_eq!(code, Some(0), "{err}");
    // A bad setting is refused at its line.
    let out = check_config_text(&follower_config(&ro_url(pg.port), "tls = \"yes\"", 1000).0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("snapshot.database.tls: must be"), "{err}");
    let out = check_config_text(
        &follower_config(&format!("{}?sslmode=require", ro_url(pg.port)), "", 1000).0,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sslmode in the URL is not followed"), "{err}");
    // The gateway follows over TLS.
    let (text, _) = follower_config(
        &ro_url(pg.port),
        "poll_interval_ms = 200\ntls = \"verify-full\"\nca_file = \"ca.pem\"",
        1000,
    );
    let h = Harness::with_config_text(&text, &[("ca.pem", &ca)]).await;
    assert!(follows(&h, "u-rep1", 1, 200).await, "{}", h.log_text());
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (500, 'acme', 'u-rep1')")
        .await
        .unwrap();
    assert!(follows(&h, "u-rep1", 500, 200).await);
    // The follower's session is over TLS (waited for, as the other checks here: on a loaded
    // machine a single read was seen to miss it, 2 runs in 7; not traced).
    let tls_session = || async {
        su.query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE usename = 'permgate_ro' AND ssl",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            >= 1
    };
    assert!(eventually(10, tls_session).await, "{}", h.log_text());
}

/// `permgate snapshot export` over TLS checked against `ca` (PEM): whether it connected.
fn export_trusting(port: u16, ca: &str) -> bool {
    let (text, _) = follower_config(
        &ro_url(port),
        "tls = \"verify-full\"\nca_file = \"ca.pem\"",
        1000,
    );
    let dir = config_dir(&text);
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["snapshot", "export", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap()
        .status
        .success()
}

/// Rotating the database's CA (`tls = "verify-full"`, `ca_file`), as an operator does it with
/// the gateway running: the server gets a certificate from a new CA, and the file at `ca_file`
/// is replaced (a new file renamed over it, as deploy tools and secret mounts do). While the
/// file holds only the old CA, a new connection is refused: the follower fails closed (the last
/// good snapshot stays, the failure is counted and listed) and a new row is not followed; once
/// the file holds the new CA the next connection takes it and the follower catches up, without
/// a restart. A `ca_file` changed under a healthy connection is acted on at the next round:
/// the follower (and its LISTEN connection) reconnects against the file's CAs (here a CA that signed nothing: refused, fail
/// closed) rather than keep a connection the file no longer vouches for; a bundle with both
/// CAs connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_database_ca_is_followed() {
    let (ca1, cert1, key1) = test_ca();
    let (ca2, cert2, key2) = test_ca();
    let (ca3, _, _) = test_ca();
    let pg = Postgres::start_on(free_port(), Some((&cert1, &key1)));
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(SOFT_DELETES).await.unwrap();
    let (text, admin) = follower_config(
        &ro_url(pg.port),
        "poll_interval_ms = 200\ntls = \"verify-full\"\nca_file = \"ca.pem\"\n\
         notify_channel = \"permgate\"",
        1000,
    );
    let dir = config_dir(&text);
    let ca_file = dir.path().join("ca.pem");
    let put_ca = |pem: &str| {
        let tmp = dir.path().join("ca.pem.new");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, &ca_file).unwrap();
    };
    put_ca(&ca1);
    let h = Harness::start_with(&dir.path().join("c.toml")).await;
    assert!(follows(&h, "u-rep1", 1, 200).await, "{}", h.log_text());
    let tls_sessions = || async {
        su.query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE usename = 'permgate_ro' AND ssl",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    // The follower's connection and the LISTEN one.
    assert!(eventually(10, || async { tls_sessions().await == 2 }).await);
    let insert = |id: u32| {
        let su = &su;
        async move {
            su.batch_execute(&format!(
                "INSERT INTO leads (id, org, owner) VALUES ({id}, 'acme', 'u-rep1')"
            ))
            .await
            .unwrap();
        }
    };
    let errors = || async { source_errors_and_version(admin).await.0 };
    let last_error = || async { status(admin).await["last_errors"].to_string() };

    // The server gets a certificate from a new CA; the open connection keeps its session and
    // the follower keeps following on it.
    pg.rotate_tls(&su, &cert2, &key2).await;
    assert!(
        eventually(10, || async { export_trusting(pg.port, &ca2) }).await,
        "the server presents the new certificate"
    );
    assert!(!export_trusting(pg.port, &ca1));
    insert(500).await;
    assert!(follows(&h, "u-rep1", 500, 200).await, "{}", h.log_text());

    // The connections end (a server restart would do the same): with the old CA only in the
    // file, the next connection is refused. Fail closed: last good snapshot, counted, listed.
    let e0 = errors().await;
    su.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'permgate_ro'",
    )
    .await
    .unwrap();
    assert!(
        eventually(10, || async { errors().await > e0 }).await,
        "{}",
        h.log_text()
    );
    assert!(last_error().await.contains("cannot connect"));
    insert(501).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(lead_call(&h, "u-rep1", 501).await, 403, "not followed");
    assert_eq!(lead_call(&h, "u-rep1", 500).await, 200, "last good kept");
    assert_eq!(tls_sessions().await, 0);

    // The file now holds the new CA: the next connection reads it; no restart.
    put_ca(&ca2);
    assert!(
        follows(&h, "u-rep1", 501, 200).await,
        "the new CA is taken: {}",
        h.log_text()
    );
    assert!(
        eventually(20, || async { tls_sessions().await == 2 }).await,
        "the LISTEN connection too"
    );

    // The file changed under healthy connections, to a CA that signed nothing here: the
    // follower reconnects against it at its next round, is refused, and fails closed; the
    // LISTEN connection is dropped and refused the same way.
    let e1 = errors().await;
    put_ca(&ca3);
    assert!(
        eventually(10, || async { errors().await > e1 }).await,
        "a changed ca_file is acted on: {}",
        h.log_text()
    );
    assert!(eventually(10, || async { tls_sessions().await == 0 }).await);
    insert(502).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(lead_call(&h, "u-rep1", 502).await, 403, "not followed");
    assert_eq!(lead_call(&h, "u-rep1", 501).await, 200, "last good kept");

    // A bundle of the old and the new CA: connects and catches up.
    put_ca(&format!("{ca1}{ca2}"));
    assert!(follows(&h, "u-rep1", 502, 200).await, "{}", h.log_text());
}

/// A fleet: two gateways with the same config follow one database and decide alike after each
/// change, a hard delete included (the reconciliation's full load). A replica that has not
/// finished its first load (no start-up file, the database not up yet) answers `/readyz` 503
/// and refuses protected calls; it becomes ready with the first load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_replicas_converges() {
    let port = free_port();
    let replica = || {
        let (text, admin) = follower_config(
            &ro_url(port),
            "poll_interval_ms = 200\nreconcile_interval_ms = 2000",
            1000,
        );
        // No start-up file: nothing is served before the first load.
        (
            text.replacen("path = \"snapshot.json\"", "path = \"absent.json\"", 1),
            admin,
        )
    };
    let readyz = |admin: u16| async move {
        client()
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let (text_a, admin_a) = replica();
    let a = Harness::with_config_text(&text_a, &[]).await;
    assert!(eventually(10, || async { readyz(admin_a).await == 503 }).await);
    assert_eq!(
        lead_call(&a, "u-rep1", 1).await,
        503,
        "not ready: nothing allowed"
    );
    let pg = Postgres::start_on(port, None);
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(SOFT_DELETES).await.unwrap();
    // The follower's retries back off up to its poll interval + 30 s while the server is down
    // (a slow start on a loaded machine reaches that), hence the bound.
    assert!(
        eventually(45, || async { readyz(admin_a).await == 200 }).await,
        "{}",
        a.log_text()
    );
    let (text_b, admin_b) = replica();
    let b = Harness::with_config_text(&text_b, &[]).await;
    assert!(eventually(20, || async { readyz(admin_b).await == 200 }).await);
    let both = |user: &'static str, lead: u32, want: u16| {
        let (a, b) = (&a, &b);
        async move { follows(a, user, lead, want).await && follows(b, user, lead, want).await }
    };
    assert!(both("u-rep1", 1, 200).await);
    assert!(both("u-rep1", 2, 403).await);
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (500, 'acme', 'u-rep1')")
        .await
        .unwrap();
    assert!(both("u-rep1", 500, 200).await, "an insert");
    su.batch_execute(
        "UPDATE leads SET owner = 'u-rep2', updated_at = clock_timestamp() WHERE id = 500",
    )
    .await
    .unwrap();
    assert!(both("u-rep1", 500, 403).await, "a reassignment");
    assert!(both("u-rep2", 500, 200).await);
    // A hard delete is in no incremental row: the reconciliation forgets it.
    su.batch_execute("DELETE FROM leads WHERE id = 1")
        .await
        .unwrap();
    assert!(both("u-rep1", 1, 403).await, "a hard delete");
}

/// Tenants in the CRM's schema: organisations, per-organisation memberships (roles, manager)
/// under row-level security like the leads, and a change marker the gateway's role may read
/// across organisations (a `SECURITY DEFINER` function owned by the schema's owner, which row
/// -level security does not restrict). U (`u-rep1`) is ADMIN in acme, a limited rep in globex.
const TENANT_SCHEMA: &str = r#"
CREATE TABLE orgs (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE org_members (user_id text NOT NULL, org text NOT NULL, roles text[] NOT NULL,
                          teams text[], manager text, deleted boolean NOT NULL DEFAULT false,
                          updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                          PRIMARY KEY (user_id, org));
ALTER TABLE org_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY per_org ON org_members USING (org = current_setting('app.current_org', true));
GRANT SELECT ON orgs, org_members TO permgate_ro;
CREATE FUNCTION crm_changes() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER AS $$
  SELECT greatest((SELECT max(updated_at) FROM leads), (SELECT max(updated_at) FROM org_members),
                  (SELECT max(updated_at) FROM crm_users), '-infinity')::text
$$;
GRANT EXECUTE ON FUNCTION crm_changes() TO permgate_ro;
INSERT INTO orgs VALUES ('acme', 'Acme, U''s own'), ('globex', 'Globex, U''s employer');
INSERT INTO org_members (user_id, org, roles, manager) VALUES
  ('u-rep1', 'acme', '{admin}', NULL),
  ('u-rep2', 'acme', '{limited_rep}', 'u-rep1'),
  ('u-rep1', 'globex', '{limited_rep}', 'u-sm'),
  ('u-sm', 'globex', '{admin}', NULL);
INSERT INTO leads (id, org, owner) VALUES (3, 'globex', 'u-sm');
"#;

/// A tenant-aware gateway (the call's tenant from the token's `org_id`) following the CRM's
/// database: per-organisation session settings before the data queries, incremental queries
/// for memberships and leads. `queries`: the lines of `[snapshot.database.queries]`.
fn tenant_config(port: u16, queries: &str) -> (String, u16) {
    let (admin, admin_port) = admin_section();
    let text = config().replacen("path = \"snapshot.json\"", "path = \"absent.json\"", 1)
        + &admin
        + &format!(
            r#"
[tenants]
from = "claim:org_id"

[snapshot.database]
url = "{url}"
poll_interval_ms = 200
reconcile_interval_ms = 600000
tenant_session_sql = ["SELECT set_config('app.current_org', $1, false)"]

[snapshot.database.queries]
{queries}

[snapshot.database.incremental]
overlap_ms = 1000
users = "SELECT id FROM crm_users WHERE updated_at > $1::timestamptz"
memberships = "SELECT user_id, org AS tenant, roles, teams, manager, deleted FROM org_members WHERE updated_at > $1::timestamptz"
owners = "SELECT 'lead' AS type, id::text AS id, owner, org AS tenant FROM leads WHERE updated_at > $1::timestamptz"
"#,
            url = ro_url(port)
        );
    (text, admin_port)
}

const TENANT_QUERIES: &str = r#"users = "SELECT id FROM crm_users"
roles = "SELECT 'limited_rep' AS id, ARRAY['lead.view@own+shared'] AS permissions"
tenants = "SELECT id, name FROM orgs ORDER BY id"
memberships = "SELECT user_id, org AS tenant, roles, teams, manager FROM org_members WHERE NOT deleted"
owners = "SELECT 'lead' AS type, id::text AS id, owner, org AS tenant FROM leads"
cursor = "SELECT crm_changes()""#;

/// GET lead `lead` as `user` in organisation `org`: "200" when it reached the CRM, else the
/// gateway's error code.
async fn org_call(h: &Harness, user: &str, org: &str, lead: u32) -> String {
    org_answer(h, user, org, lead).await.1
}

/// [`org_call`] with the status: (200, "200") when the call reached the CRM, else the
/// gateway's status and error code.
async fn org_answer(h: &Harness, user: &str, org: &str, lead: u32) -> (u16, String) {
    let now = unix_now();
    let claims = serde_json::json!({
        "sub": user, "org_id": org, "iss": permgate::demo::DEMO_ISSUER,
        "aud": permgate::demo::DEMO_AUDIENCE, "iat": now, "nbf": now - 60, "exp": now + 3600,
    });
    h.clear();
    let r = client()
        .get(h.url(&format!("/api/v1/leads/{lead}")))
        .header(
            "authorization",
            format!("Bearer {}", demo_key_token(&claims, Some("demo-hs256"))),
        )
        .send()
        .await
        .unwrap();
    if !h.received().is_empty() {
        return (200, "200".into());
    }
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let code = body["error"]
        .as_str()
        .map_or_else(|| status.to_string(), str::to_string);
    (status, code)
}

async fn org_follows(h: &Harness, user: &str, org: &str, lead: u32, want: &str) -> bool {
    eventually(10, || async { org_call(h, user, org, lead).await == want }).await
}

/// [`org_follows`], asserted (the gateway's log in the message).
async fn expect_follows(h: &Harness, user: &str, org: &str, lead: u32, want: &str) {
    assert!(
        org_follows(h, user, org, lead, want).await,
        "{user} in {org} reading lead {lead} never got {want}: {}",
        h.log_text()
    );
}

/// Tenants from the CRM's database (issues 16 and 17): memberships per organisation read under
/// row-level security (one session setting per organisation), leads with their organisation.
/// U is ADMIN in acme and a limited rep in globex; a lead inserted in globex, U's role changed
/// in globex, a membership added and removed (a soft delete) — the gateway's decisions follow
/// within the poll interval, and a lead of another organisation is `record_forbidden` whatever
/// the role. `snapshot export` writes the tenant snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_follow_the_crms_database() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(TENANT_SCHEMA).await.unwrap();
    let (text, admin) = tenant_config(pg.port, TENANT_QUERIES);
    let h = Harness::with_config_text(&text, &[]).await;
    let follows = |user: &'static str, org: &'static str, lead: u32, want: &'static str| {
        org_follows(&h, user, org, lead, want)
    };
    // The first load: U as ADMIN of acme reads u-rep2's lead 2; as a rep of globex, not
    // u-sm's lead 3.
    assert!(
        follows("u-rep1", "acme", 2, "200").await,
        "{}",
        h.log_text()
    );
    assert_eq!(
        org_call(&h, "u-rep1", "globex", 3).await,
        "record_forbidden"
    );
    // A lead of another organisation, whatever the role there.
    assert_eq!(org_call(&h, "u-rep1", "acme", 3).await, "record_forbidden");
    assert_eq!(
        org_call(&h, "u-rep1", "globex", 1).await,
        "record_forbidden"
    );
    assert_eq!(org_call(&h, "u-rep2", "globex", 3).await, "not_a_member");
    // Wait out the first overlap window (a change in it is a full load), then follow.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A lead inserted in globex for U: U reads it there, not through acme.
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (40, 'globex', 'u-rep1')")
        .await
        .unwrap();
    assert!(
        follows("u-rep1", "globex", 40, "200").await,
        "an inserted lead"
    );
    assert_eq!(org_call(&h, "u-rep1", "acme", 40).await, "record_forbidden");
    // U's role in globex changes to admin: U reads u-sm's lead 3 there; acme's lead 1 stays
    // another organisation's.
    su.batch_execute(
        "UPDATE org_members SET roles = '{admin}', updated_at = clock_timestamp() \
         WHERE user_id = 'u-rep1' AND org = 'globex'",
    )
    .await
    .unwrap();
    assert!(follows("u-rep1", "globex", 3, "200").await, "a role change");
    assert_eq!(
        org_call(&h, "u-rep1", "globex", 1).await,
        "record_forbidden"
    );
    assert_eq!(
        org_call(&h, "u-rep1", "acme", 2).await,
        "200",
        "acme unchanged"
    );
    // A membership added: u-rep2 joins globex as admin.
    su.batch_execute(
        "INSERT INTO org_members (user_id, org, roles) VALUES ('u-rep2', 'globex', '{admin}')",
    )
    .await
    .unwrap();
    assert!(
        follows("u-rep2", "globex", 3, "200").await,
        "a membership added"
    );
    // ...and removed (soft delete): u-rep2 is no member of globex again.
    su.batch_execute(
        "UPDATE org_members SET deleted = true, updated_at = clock_timestamp() \
         WHERE user_id = 'u-rep2' AND org = 'globex'",
    )
    .await
    .unwrap();
    assert!(
        follows("u-rep2", "globex", 3, "not_a_member").await,
        "a membership removed"
    );
    assert_eq!(
        org_call(&h, "u-rep2", "acme", 2).await,
        "200",
        "acme's stays"
    );
    assert!(
        batches_reach(admin, 4).await,
        "{:?}",
        db_counters(admin).await
    );
    assert_eq!(
        db_counters(admin).await.0,
        1,
        "the changes came as incremental batches"
    );

    // `permgate snapshot export`: the tenant snapshot.
    let dir = config_dir(&text);
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["snapshot", "export", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["tenants"],
        serde_json::json!([
            {"id": "acme", "name": "Acme, U's own"},
            {"id": "globex", "name": "Globex, U's employer"}
        ])
    );
    let u = json["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "u-rep1")
        .unwrap();
    assert_eq!(
        u["memberships"],
        serde_json::json!([
            {"tenant": "acme", "roles": ["admin"]},
            {"tenant": "globex", "roles": ["admin"], "manager": "u-sm"}
        ]),
        "{u}"
    );
    let rep2 = json["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "u-rep2")
        .unwrap();
    assert_eq!(rep2["memberships"].as_array().unwrap().len(), 1, "{rep2}");
    let owners = json["records"]["owners"].to_string();
    assert!(
        owners.contains(r#""id":"40","owner":"u-rep1","tenant":"globex""#),
        "{owners}"
    );
    assert!(
        owners.contains(r#""id":"1","owner":"u-rep1","tenant":"acme""#),
        "{owners}"
    );
}

/// A manager leaves an organisation (their membership soft-deleted) while a member there
/// still names them as manager: the gateway goes on following. The change batch that removes
/// the membership drops the manager from the member's membership in the same batch (it granted
/// nothing: a manager who is no member sees nothing there) and counts it, where the batch used
/// to be refused and the snapshot after it too, with nothing the CRM changed landing again. A
/// later change to that member lands incrementally, the manager dropped from it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_who_left_the_organisation_does_not_stop_the_follower() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(TENANT_SCHEMA).await.unwrap();
    let (text, admin) = tenant_config(pg.port, TENANT_QUERIES);
    let h = Harness::with_config_text(&text, &[]).await;
    expect_follows(&h, "u-sm", "globex", 3, "200").await;
    // Past the first overlap window: rounds are incremental (and u-rep1's row, unchanged, is
    // no longer read again by the overlap).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    su.batch_execute(
        "UPDATE org_members SET deleted = true, updated_at = clock_timestamp() \
         WHERE user_id = 'u-sm' AND org = 'globex'",
    )
    .await
    .unwrap();
    expect_follows(&h, "u-sm", "globex", 3, "not_a_member").await;
    // Later changes land.
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (60, 'acme', 'u-rep2')")
        .await
        .unwrap();
    expect_follows(&h, "u-rep2", "acme", 60, "200").await;
    assert_eq!(org_call(&h, "u-rep1", "acme", 1).await, "200");
    let s = status(admin).await;
    assert!(
        s["counters"]["database_dangling_references"].as_u64() >= Some(1),
        "{s}"
    );
    assert!(h.log_text().contains("manager 'u-sm'"), "{}", h.log_text());
    // A later change to the member whose manager left (U made admin in globex, the row still
    // naming u-sm) lands as an incremental batch: the manager is dropped from it too, where
    // each such batch was refused and a full load followed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (full, _, refused) = db_counters(admin).await;
    assert_eq!(
        org_call(&h, "u-rep1", "globex", 3).await,
        "record_forbidden"
    );
    su.batch_execute(
        "UPDATE org_members SET roles = '{admin}', updated_at = clock_timestamp() \
         WHERE user_id = 'u-rep1' AND org = 'globex'",
    )
    .await
    .unwrap();
    expect_follows(&h, "u-rep1", "globex", 3, "200").await;
    let (full_after, _, refused_after) = db_counters(admin).await;
    assert_eq!(
        (full_after, refused_after),
        (full, refused),
        "no refused batch, no full load: {}",
        h.log_text()
    );
}

/// A manager who leaves an organisation and rejoins it gets their reports back at once
/// (issue 16), with no full load. In globex u-admin manages u-sm, who manages U (`u-rep1`),
/// both managers with `lead.view@subordinates`; U owns lead 70. u-sm leaves (membership
/// soft-deleted): U's membership loses its manager in that batch (counted), so u-admin no
/// longer reads lead 70 (403 `record_forbidden`) and u-sm is no member (403 `not_a_member`).
/// u-sm rejoins (the row undeleted; U's row, unchanged, is not read again): the same batch
/// gives U's membership u-sm back, and u-sm and u-admin read lead 70 again (200). The
/// full-load and refused-batch counters do not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_who_rejoins_gets_their_reports_back_at_once() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(TENANT_SCHEMA).await.unwrap();
    su.batch_execute(
        "UPDATE org_members SET roles = '{lead_manager}', manager = 'u-admin' \
         WHERE user_id = 'u-sm' AND org = 'globex'; \
         INSERT INTO org_members (user_id, org, roles) VALUES ('u-admin', 'globex', '{lead_manager}'); \
         INSERT INTO leads (id, org, owner) VALUES (70, 'globex', 'u-rep1')",
    )
    .await
    .unwrap();
    let roles =
        r#"roles = "SELECT 'limited_rep' AS id, ARRAY['lead.view@own+shared'] AS permissions""#;
    let queries = TENANT_QUERIES.replacen(
        roles,
        r#"roles = "SELECT * FROM (VALUES ('limited_rep', ARRAY['lead.view@own+shared']), ('lead_manager', ARRAY['lead.view@subordinates'])) AS r(id, permissions)""#,
        1,
    );
    assert_ne!(queries, TENANT_QUERIES);
    let (text, admin) = tenant_config(pg.port, &queries);
    let h = Harness::with_config_text(&text, &[]).await;
    expect_follows(&h, "u-sm", "globex", 70, "200").await;
    assert_eq!(
        org_call(&h, "u-admin", "globex", 70).await,
        "200",
        "two levels up"
    );
    // Past the first overlap window: rounds are incremental, and U's row (unchanged) is not
    // read again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (full, batches, refused) = db_counters(admin).await;
    let dangling = |s: &serde_json::Value| s["counters"]["database_dangling_references"].as_u64();
    let before = dangling(&status(admin).await);

    // u-sm leaves globex.
    su.batch_execute(
        "UPDATE org_members SET deleted = true, updated_at = clock_timestamp() \
         WHERE user_id = 'u-sm' AND org = 'globex'",
    )
    .await
    .unwrap();
    assert!(
        org_follows(&h, "u-admin", "globex", 70, "record_forbidden").await,
        "U's manager dropped: {}",
        h.log_text()
    );
    assert_eq!(
        org_answer(&h, "u-admin", "globex", 70).await,
        (403, "record_forbidden".to_string())
    );
    assert_eq!(
        org_answer(&h, "u-sm", "globex", 70).await,
        (403, "not_a_member".to_string())
    );
    assert!(batches_reach(admin, batches + 1).await);
    let s = status(admin).await;
    assert_eq!(dangling(&s), before.map(|n| n + 1), "{s}");
    assert!(
        h.log_text()
            .contains("user 'u-rep1' in tenant 'globex': manager 'u-sm' left the tenant: dropped"),
        "{}",
        h.log_text()
    );

    // u-sm rejoins globex: U gets u-sm back in the same round.
    su.batch_execute(
        "UPDATE org_members SET deleted = false, updated_at = clock_timestamp() \
         WHERE user_id = 'u-sm' AND org = 'globex'",
    )
    .await
    .unwrap();
    expect_follows(&h, "u-sm", "globex", 70, "200").await;
    assert_eq!(org_call(&h, "u-admin", "globex", 70).await, "200");
    assert!(
        h.log_text().contains(
            "user 'u-rep1' in tenant 'globex': manager 'u-sm' is a member again: given back"
        ),
        "{}",
        h.log_text()
    );
    let (full_after, batches_after, refused_after) = db_counters(admin).await;
    assert_eq!(
        (full_after, refused_after),
        (full, refused),
        "no full load, no refused batch: {}",
        h.log_text()
    );
    assert!(batches_after >= batches + 2, "{batches} → {batches_after}");
}

/// Hard deletes with tenants: a membership row and a lead row deleted outright (a `DELETE`,
/// not a soft delete) leave no row for an incremental query to read; the reconciliation (a
/// full load every `reconcile_interval_ms`, short here) forgets them. Before: u-rep2 reads
/// their own lead 2 in acme and U (a rep in globex) their lead 41 there; after: u-rep2 is no
/// member of acme (403 `not_a_member`) and lead 41 is no longer U's (403 `record_forbidden`),
/// with the full-load counter past the first load's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_deletes_go_at_the_reconciliation() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(TENANT_SCHEMA).await.unwrap();
    su.batch_execute("INSERT INTO leads (id, org, owner) VALUES (41, 'globex', 'u-rep1')")
        .await
        .unwrap();
    let (text, admin) = tenant_config(pg.port, TENANT_QUERIES);
    let text = text.replacen(
        "reconcile_interval_ms = 600000",
        "reconcile_interval_ms = 1500",
        1,
    );
    let h = Harness::with_config_text(&text, &[]).await;
    expect_follows(&h, "u-rep2", "acme", 2, "200").await;
    assert_eq!(org_call(&h, "u-rep1", "globex", 41).await, "200");
    assert_eq!(org_call(&h, "u-rep1", "acme", 1).await, "200");
    let (full, _, _) = db_counters(admin).await;
    su.batch_execute(
        "DELETE FROM org_members WHERE user_id = 'u-rep2' AND org = 'acme'; \
         DELETE FROM leads WHERE id = 41",
    )
    .await
    .unwrap();
    assert!(
        org_follows(&h, "u-rep2", "acme", 2, "not_a_member").await,
        "a hard-deleted membership: {}",
        h.log_text()
    );
    assert_eq!(
        org_answer(&h, "u-rep2", "acme", 2).await,
        (403, "not_a_member".to_string())
    );
    assert!(
        org_follows(&h, "u-rep1", "globex", 41, "record_forbidden").await,
        "a hard-deleted lead"
    );
    assert_eq!(org_answer(&h, "u-rep1", "globex", 41).await.0, 403);
    // What was not deleted stays.
    assert_eq!(org_call(&h, "u-rep1", "acme", 1).await, "200");
    assert_eq!(org_call(&h, "u-rep1", "acme", 2).await, "200");
    assert!(
        db_counters(admin).await.0 > full,
        "forgotten by a full load (the reconciliation)"
    );
}

/// A row naming another tenant fails the round (issue 17, `tenant_session_sql`): a policy
/// added on `leads` that lets every row through (permissive policies are OR'ed, so the per-org
/// one no longer restricts the query) makes acme's owners query return globex's leads. Both
/// kinds of round refuse that as a whole — a gateway with incremental queries, and one where
/// every cursor change is a full load: the round fails, counted in `source_errors` and
/// `permgate_snapshot_source_errors_total` and listed in `last_errors` naming both tenants; the
/// live snapshot's version stays, and what the same transaction changed in globex (U made
/// admin there, a lead created for U) is not half-applied. The policy dropped, both follow.
/// A gateway whose owners rows do not name their tenant never loads (a row the settings
/// failed to hide could not be caught).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_of_another_tenant_fails_the_round() {
    let pg = Postgres::start();
    let su = pg.superuser().await;
    su.batch_execute(SCHEMA).await.unwrap();
    su.batch_execute(TENANT_SCHEMA).await.unwrap();
    let (text, admin) = tenant_config(pg.port, TENANT_QUERIES);
    let inc = Harness::with_config_text(&text, &[]).await;
    let (text, full_admin) = tenant_config(pg.port, TENANT_QUERIES);
    let full_only = text
        .split("[snapshot.database.incremental]")
        .next()
        .unwrap()
        .to_string();
    let full = Harness::with_config_text(&full_only, &[]).await;
    // A third gateway whose owners queries do not name each row's tenant: a row the settings
    // failed to hide could not be told apart, so its rounds fail and no load ever lands.
    let (text, untagged_admin) = tenant_config(pg.port, TENANT_QUERIES);
    let untagged_text = text.replace("owner, org AS tenant FROM leads", "owner FROM leads");
    assert_ne!(
        untagged_text, text,
        "the owners queries lose their tenant column"
    );
    let untagged = Harness::with_config_text(&untagged_text, &[]).await;
    let gateways = [(&inc, admin), (&full, full_admin)];
    for (h, _) in gateways {
        assert!(
            org_follows(h, "u-rep1", "globex", 1, "record_forbidden").await,
            "{}",
            h.log_text()
        );
        assert_eq!(org_call(h, "u-rep1", "acme", 2).await, "200");
        assert_eq!(org_call(h, "u-rep1", "globex", 3).await, "record_forbidden");
    }
    assert!(
        eventually(10, || async {
            status(untagged_admin).await["last_errors"]
                .to_string()
                .contains("no 'tenant' (the column is missing or NULL) in the round of tenant")
        })
        .await,
        "{}",
        untagged.log_text()
    );
    assert_eq!(status(untagged_admin).await["ready"], false);
    assert_ne!(org_call(&untagged, "u-rep1", "acme", 2).await, "200");
    drop(untagged);
    // Past the first overlap window: the incremental gateway's rounds are incremental.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut before = Vec::new();
    for (_, admin) in gateways {
        before.push(source_errors_and_version(admin).await);
    }
    su.batch_execute(
        "BEGIN; \
         CREATE POLICY open_to_all ON leads USING (true); \
         UPDATE org_members SET roles = '{admin}', updated_at = clock_timestamp() \
           WHERE user_id = 'u-rep1' AND org = 'globex'; \
         INSERT INTO leads (id, org, owner) VALUES (41, 'globex', 'u-rep1'); \
         COMMIT",
    )
    .await
    .unwrap();
    for ((h, admin), (errors, version)) in gateways.into_iter().zip(&before) {
        assert!(
            eventually(10, || async {
                source_errors_and_version(admin).await.0 > *errors
            })
            .await,
            "the round fails: {}",
            h.log_text()
        );
        // A few more rounds: each fails the same way, nothing is applied.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let s = status(admin).await;
        let last = s["last_errors"].to_string();
        assert!(
            last.contains("tenant 'globex' read in the round of tenant 'acme'"),
            "{last}"
        );
        assert_eq!(s["snapshot"]["version"].as_str(), Some(version.as_str()));
        assert_eq!(s["ready"], true, "the last good snapshot serves");
        assert_eq!(
            org_call(h, "u-rep1", "globex", 3).await,
            "record_forbidden",
            "the role change in the failed round is not applied"
        );
        assert_ne!(org_call(h, "u-rep1", "globex", 41).await, "200");
        assert_eq!(org_call(h, "u-rep1", "acme", 2).await, "200");
        let metrics = admin_metrics(&format!("http://127.0.0.1:{admin}")).await;
        assert!(metric(&metrics, "permgate_snapshot_source_errors_total") > *errors);
        assert!(h.log_text().contains("read in the round of tenant 'acme'"));
    }
    su.batch_execute("DROP POLICY open_to_all ON leads")
        .await
        .unwrap();
    for ((h, admin), (_, version)) in gateways.into_iter().zip(&before) {
        assert!(
            org_follows(h, "u-rep1", "globex", 3, "200").await,
            "the policy fixed: {}",
            h.log_text()
        );
        assert_eq!(org_call(h, "u-rep1", "globex", 41).await, "200");
        assert_eq!(org_call(h, "u-rep1", "acme", 3).await, "record_forbidden");
        assert_ne!(source_errors_and_version(admin).await.1, *version);
    }
}

/// The memberships query and `[tenants]` go together: either without the other is refused at
/// load, naming the setting; so are per-tenant settings without the tenants they run for.
#[test]
fn tenant_database_settings_are_checked() {
    let refused = |text: &str, says: &str| {
        let out = check_config_text(text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says), "{says}: {err}");
    };
    let without = TENANT_QUERIES
        .lines()
        .filter(|l| !l.starts_with("memberships"))
        .collect::<Vec<_>>()
        .join("\n");
    let (text, _) = tenant_config(5432, &without);
    let text = text.replace(
        "\nmemberships = \"SELECT user_id, org AS tenant, roles, teams, manager, deleted FROM org_members WHERE updated_at > $1::timestamptz\"",
        "",
    );
    refused(
        &text,
        "snapshot.database.queries.memberships: required with [tenants]",
    );
    let (text, _) = tenant_config(5432, TENANT_QUERIES);
    refused(
        &text.replace("[tenants]\nfrom = \"claim:org_id\"", ""),
        "snapshot.database.queries.memberships: memberships need [tenants]",
    );
    let no_list = TENANT_QUERIES
        .lines()
        .filter(|l| !l.starts_with("tenants"))
        .collect::<Vec<_>>()
        .join("\n");
    refused(
        &tenant_config(5432, &no_list).0,
        "snapshot.database.tenant_session_sql: needs snapshot.database.queries.tenants",
    );
}
