//! The snapshot and config lifecycle through the real binary: admin API, snapshot pushes and
//! incremental changes, the watched file, SIGHUP and admin reloads, the persisted last good
//! snapshot, staleness, and swaps under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use permgate::demo::DEMO_SNAPSHOT;

struct Gw {
    h: Harness,
    admin: String,
    dir: tempfile::TempDir,
}

/// A gateway on the demo config plus `extra` TOML and an admin listener, in its own folder.
async fn gateway(extra: &str, snapshot: Option<&str>) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = admin_section();
    let text = format!("{}{extra}{admin}", demo_config_text());
    std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    if let Some(s) = snapshot {
        std::fs::write(dir.path().join("snapshot.json"), s).unwrap();
    }
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    Gw {
        h,
        admin: format!("http://127.0.0.1:{port}"),
        dir,
    }
}

impl Gw {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, serde_json::Value) {
        let mut req = client()
            .request(method, format!("{}{path}", self.admin))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Status of `DELETE /api/v1/campaigns/{id}` by u-rep1 (needs campaign.delete).
    async fn rep_delete(&self, id: u32) -> u16 {
        client()
            .delete(self.h.url(&format!("/api/v1/campaigns/{id}")))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// The demo snapshot where u-rep1 also holds the custom role campaign_cleaner.
fn rep_can_delete(version: &str) -> String {
    DEMO_SNAPSHOT
        .replacen(
            "\"roles\": [\"sales_rep\"], \"teams\": [\"sales-east\"], \"manager\": \"u-sm\" },\n    { \"id\": \"u-rep2\"",
            "\"roles\": [\"sales_rep\", \"campaign_cleaner\"], \"teams\": [\"sales-east\"], \"manager\": \"u-sm\" },\n    { \"id\": \"u-rep2\"",
            1,
        )
        .replacen("demo-2026-11-23.1", version, 1)
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_token_and_reports_status() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", g.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", g.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (m, p) in [
        ("GET", "/status"),
        ("POST", "/reload"),
        ("PUT", "/snapshot"),
        ("POST", "/snapshot/changes"),
    ] {
        let r = c
            .request(
                reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                format!("{}{p}", g.admin),
            )
            .header("authorization", "Bearer wrong-token-wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{m} {p}");
    }
    let (s, v) = g.admin(reqwest::Method::GET, "/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["ready"], true);
    assert_eq!(v["snapshot"]["version"], "demo-2026-11-23.1");
    assert_eq!(v["snapshot"]["users"], 9);
    assert!(v["config"]["hash"].as_str().is_some_and(|h| h.len() == 16));
    // The admin API is not on the traffic port.
    let r = c.get(g.h.url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_snapshots_swap_and_bad_ones_are_refused() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    assert_eq!(g.rep_delete(1).await, 403);
    let (s, v) = g
        .admin(
            reqwest::Method::PUT,
            "/snapshot",
            Some(rep_can_delete("v2")),
        )
        .await;
    assert_eq!((s, v["version"].as_str()), (200, Some("v2")));
    assert_eq!(g.rep_delete(1).await, 204);

    let good = rep_can_delete("v2");
    for (what, bad) in [
        ("truncated", good[..good.len() / 2].to_string()),
        ("corrupt", good.replacen('{', "<", 1)),
        (
            "unknown role",
            good.replacen("campaign_cleaner\"]", "no_such_role\"]", 1),
        ),
        (
            "duplicate key",
            good.replacen("\"version\"", "\"users\": [], \"version\"", 1),
        ),
        ("empty", String::new()),
    ] {
        let (s, v) = g.admin(reqwest::Method::PUT, "/snapshot", Some(bad)).await;
        assert_eq!(s, 422, "{what}: {v}");
        assert_eq!(v["error"], "snapshot_refused");
        assert!(!v["errors"].as_array().unwrap().is_empty());
    }
    // The good one stayed live.
    assert_eq!(g.rep_delete(2).await, 204);
    let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
    assert_eq!(st["snapshot"]["version"], "v2");
    assert_eq!(st["counters"]["snapshot_update_failures"], 5);
    assert_eq!(st["last_errors"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_changes_apply_and_invalid_ones_are_refused() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    assert_eq!(g.rep_delete(1).await, 403);
    let (s, v) = g
        .admin(
            reqwest::Method::POST,
            "/snapshot/changes",
            Some(r#"{"changes":[{"op":"set_roles","user":"u-rep1","roles":["sales_rep","campaign_cleaner"]},{"op":"disable","user":"u-csr"}]}"#.into()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], "demo-2026-11-23.1+1");
    assert_eq!(g.rep_delete(1).await, 204);
    // The change is audited: who gained which role, who was disabled.
    let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
    let last = st["recent_changes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["kind"], "snapshot");
    assert_eq!(last["outcome"], "accepted");
    assert_eq!(last["version_before"], "demo-2026-11-23.1");
    assert_eq!(last["version_after"], "demo-2026-11-23.1+1");
    let changed = &last["changes"]["roles_changed"]["items"][0];
    assert_eq!(changed["user"], "u-rep1");
    assert_eq!(changed["before"], serde_json::json!(["sales_rep"]));
    assert_eq!(
        changed["after"],
        serde_json::json!(["sales_rep", "campaign_cleaner"])
    );
    assert_eq!(
        last["changes"]["users_disabled"]["items"],
        serde_json::json!(["u-csr"])
    );
    assert!(
        g.h.log_text().contains("permgate::audit"),
        "audit events are logged"
    );
    let r = client()
        .get(g.h.url("/api/v1/threads"))
        .header("authorization", bearer("u-csr"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "u-csr is disabled");

    for bad in [
        r#"{"changes":[{"op":"set_roles","user":"u-nobody","roles":[]}]}"#,
        r#"{"changes":[{"op":"set_roles","user":"u-rep1","roles":["no_such_role"]}]}"#,
        r#"{"changes":[{"op":"set_manager","user":"u-sm","manager":"u-rep1"}]}"#,
    ] {
        let (s, v) = g
            .admin(reqwest::Method::POST, "/snapshot/changes", Some(bad.into()))
            .await;
        assert_eq!(s, 422, "{bad}: {v}");
    }
    let (s, _) = g
        .admin(
            reqwest::Method::POST,
            "/snapshot/changes",
            Some(r#"{"changes":[{"op":"nope"}]}"#.into()),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(g.rep_delete(2).await, 204, "the last good snapshot stayed");
}

/// The snapshot version after change batches is `<base>+<n>` (n: batches since the base):
/// bounded however many batches are applied, and different after each one, through the fast
/// path and the rebuild (an `upsert_role` batch) alike; the decision log and the metrics
/// label carry the short form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_versions_stay_bounded_over_many_batches() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    let base = "demo-2026-11-23.1";
    let mut seen = std::collections::HashSet::new();
    for n in 1..=400u32 {
        let batch = if n % 100 == 0 {
            // Structural: rebuilt from the source form.
            format!(
                r#"{{"changes":[{{"op":"upsert_role","role":{{"id":"cleaner_{n}","permissions":["campaign.delete"]}}}}]}}"#
            )
        } else {
            let op = if n % 2 == 0 { "enable" } else { "disable" };
            format!(
                r#"{{"changes":[{{"op":"{op}","user":"u-csr"}},{{"op":"set_teams","user":"u-csr","teams":["t{n}"]}}]}}"#
            )
        };
        let (s, v) = g
            .admin(reqwest::Method::POST, "/snapshot/changes", Some(batch))
            .await;
        assert_eq!(s, 200, "batch {n}: {v}");
        let version = v["version"].as_str().unwrap().to_string();
        assert_eq!(version, format!("{base}+{n}"));
        assert!(version.len() <= base.len() + 4, "{version}");
        assert!(seen.insert(version), "batch {n}: the version repeats");
    }
    let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
    assert_eq!(st["snapshot"]["version"], format!("{base}+400"));
    let metrics = client()
        .get(format!("{}/metrics", g.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("permgate_snapshot_info{{version=\"{base}+400\"")),
        "{metrics}"
    );
}

/// A bad permission in an `upsert_role` of a role many users hold is one error naming the
/// change and the field, not one per holder with positions in a generated text; removing a
/// role still held is one error too. The live snapshot stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_role_change_is_one_error_naming_the_change() {
    let mut snapshot: serde_json::Value = serde_json::from_str(DEMO_SNAPSHOT).unwrap();
    let users = snapshot["users"].as_array_mut().unwrap();
    for i in 0..300 {
        users.push(serde_json::json!({"id": format!("u-clean{i}"), "roles": ["campaign_cleaner"]}));
    }
    let g = gateway("", Some(&snapshot.to_string())).await;
    let bad = r#"{"changes":[{"op":"disable","user":"u-csr"},{"op":"upsert_role","role":{"id":"campaign_cleaner","permissions":["campaign.delete","campaign.nope"]}}]}"#;
    let (s, v) = g
        .admin(reqwest::Method::POST, "/snapshot/changes", Some(bad.into()))
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "changes_refused");
    assert_eq!(
        v["errors"],
        serde_json::json!(["changes[1].role.permissions[1]: unknown permission 'campaign.nope'"])
    );
    // A preset cannot be redefined; a bad scope names its pattern.
    for (role, want) in [
        (
            r#"{"id":"admin","permissions":["campaign.delete"]}"#,
            "changes[0].role.id: 'admin' is a preset role",
        ),
        (
            r#"{"id":"campaign_cleaner","permissions":["campaign.delete@mine"]}"#,
            "changes[0].role.permissions[0]: ",
        ),
    ] {
        let (s, v) = g
            .admin(
                reqwest::Method::POST,
                "/snapshot/changes",
                Some(format!(
                    r#"{{"changes":[{{"op":"upsert_role","role":{role}}}]}}"#
                )),
            )
            .await;
        assert_eq!(s, 422, "{v}");
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{v}");
        assert!(errors[0].as_str().unwrap().starts_with(want), "{v}");
    }
    // Removing a role 301 users hold: one error.
    let (s, v) = g
        .admin(
            reqwest::Method::POST,
            "/snapshot/changes",
            Some(r#"{"changes":[{"op":"remove_role","role":"campaign_cleaner"}]}"#.into()),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .starts_with("changes[0]: custom role 'campaign_cleaner' is still held by 301 user(s)"),
        "{v}"
    );
    // A problem found only by rebuilding the snapshot (u-sm still manages two reps) names the
    // field, never a line of the generated text.
    let (s, v) = g
        .admin(
            reqwest::Method::POST,
            "/snapshot/changes",
            Some(r#"{"changes":[{"op":"remove_user","user":"u-sm"}]}"#.into()),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    for e in v["errors"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(e.starts_with("after the changes: users["), "{v}");
        assert!(e.contains("unknown user 'u-sm'"), "{v}");
    }
    // Nothing was applied: u-member still deletes campaigns through campaign_cleaner, u-csr is
    // enabled, the version is the base's.
    let r = client()
        .delete(g.h.url("/api/v1/campaigns/1"))
        .header("authorization", bearer("u-member"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
    assert_eq!(st["snapshot"]["version"], "demo-2026-11-23.1");
    // Logged once (the error line and its audit event), not once per holder.
    let log = g.h.log_text();
    assert!(log.matches("campaign.nope").count() <= 2, "{log}");
    assert!(!log.contains("unknown role 'campaign_cleaner'"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watched_file_is_applied_and_a_bad_one_refused() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    assert_eq!(g.rep_delete(1).await, 403);
    write_atomically(&g.path("snapshot.json"), &rep_can_delete("file-v2"));
    assert!(
        eventually(10, || async { g.rep_delete(1).await == 204 }).await,
        "file change applied"
    );

    // A half-written / corrupt file is refused; the live snapshot stays.
    std::fs::write(g.path("snapshot.json"), &DEMO_SNAPSHOT[..100]).unwrap();
    assert!(
        eventually(10, || async {
            let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
            st["counters"]["snapshot_update_failures"].as_u64() == Some(1)
        })
        .await
    );
    assert_eq!(g.rep_delete(2).await, 204);
    let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
    assert_eq!(st["snapshot"]["version"], "file-v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_by_sighup_and_admin_and_refusal() {
    let g = gateway("", Some(DEMO_SNAPSHOT)).await;
    assert_eq!(g.rep_delete(1).await, 403);
    let config = g.path("permgate.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    // Let sales reps delete campaigns by pointing the route at a permission they hold.
    let changed = original.replacen(
        "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.delete\"",
        "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.review_results\"",
        1,
    );
    assert_ne!(changed, original);
    std::fs::write(&config, &changed).unwrap();
    let pid = g.h.gateway.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(10, || async { g.rep_delete(1).await == 204 }).await,
        "SIGHUP reload applied"
    );

    // A broken config is refused by both paths; the live one stays.
    std::fs::write(
        &config,
        changed.replacen("campaign.review_results", "campaign.nope", 1),
    )
    .unwrap();
    let (s, v) = g.admin(reqwest::Method::POST, "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown permission 'campaign.nope'"),
        "{v}"
    );
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(10, || async {
            let (_, st) = g.admin(reqwest::Method::GET, "/status", None).await;
            st["counters"]["config_reload_failures"].as_u64() == Some(2)
        })
        .await
    );
    assert_eq!(g.rep_delete(2).await, 204);

    // Back to the original through the admin API.
    std::fs::write(&config, &original).unwrap();
    let (s, _) = g.admin(reqwest::Method::POST, "/reload", None).await;
    assert_eq!(s, 200);
    assert_eq!(g.rep_delete(3).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_snapshot_serves_when_the_source_is_down_at_start() {
    // With persistence: the first run persists, the second serves it with the source broken.
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_port) = admin_section();
    let text = demo_config_text().replacen(
        "path = \"snapshot.json\"",
        "path = \"snapshot.json\"\npersist_path = \"state/last-good.json\"",
        1,
    ) + &admin;
    std::fs::write(dir.path().join("permgate.toml"), &text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        rep_can_delete("persist-v1"),
    )
    .unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    assert!(dir.path().join("state/last-good.json").exists());
    // A batch of changes is journaled next to it, and replayed at the next start.
    let r = client()
        .post(format!("http://127.0.0.1:{admin_port}/snapshot/changes"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(r#"{"changes":[{"op":"set_roles","user":"u-rep2","roles":["sales_rep","campaign_cleaner"]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.path().join("state/last-good.json.changes").exists());
    drop(h);
    std::fs::write(dir.path().join("snapshot.json"), "{ broken").unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    for (user, campaign) in [("u-rep1", 1), ("u-rep2", 2)] {
        let r = client()
            .delete(h.url(&format!("/api/v1/campaigns/{campaign}")))
            .header("authorization", bearer(user))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            204,
            "{user}: served from the persisted last good snapshot and its journal"
        );
    }
    drop(h);

    // No source and nothing persisted: not ready, nothing allowed.
    std::fs::remove_file(dir.path().join("state/last-good.json")).unwrap();
    let (admin2, port) = admin_section();
    std::fs::write(
        dir.path().join("permgate.toml"),
        text.replace(&admin, &admin2),
    )
    .unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = client()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(h.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_limit_behaves_as_configured() {
    let old = DEMO_SNAPSHOT.replacen(
        "\"version\"",
        "\"generated_at\": 1000000000, \"version\"",
        1,
    );
    let g = gateway("", Some(&old)).await;
    // No limit configured: an old snapshot is served.
    assert_eq!(
        client()
            .get(g.h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(g);

    for (on_stale, expected) in [("fail_closed", 503), ("serve", 200)] {
        let dir = tempfile::tempdir().unwrap();
        let text = demo_config_text().replacen(
            "path = \"snapshot.json\"",
            &format!(
                "path = \"snapshot.json\"\nmax_staleness_seconds = 60\non_stale = \"{on_stale}\""
            ),
            1,
        );
        std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
        std::fs::write(dir.path().join("snapshot.json"), &old).unwrap();
        let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
        let r = client()
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{on_stale}");
        if expected == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], "snapshot_stale");
            // A fresh snapshot (no generated_at: its age counts from loading) restores service.
            write_atomically(&dir.path().join("snapshot.json"), DEMO_SNAPSHOT);
            assert!(
                eventually(10, || async {
                    client()
                        .get(h.url("/api/v1/customers/1"))
                        .header("authorization", bearer("u-rep1"))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        == 200
                })
                .await
            );
        }
    }
}

/// Thousands of requests in flight while the snapshot is swapped every few milliseconds: no 5xx,
/// and every response matches one snapshot or the other, never a mix (a forwarded call always
/// carries the roles of the snapshot that allowed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_never_fail_or_mix() {
    let g = Arc::new(gateway("", Some(DEMO_SNAPSHOT)).await);
    let a = DEMO_SNAPSHOT.to_string();
    let b = rep_can_delete("swap-b");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (g, stop, swaps) = (g.clone(), stop.clone(), swaps.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let body = if i % 2 == 0 { b.clone() } else { a.clone() };
                let (s, v) = g.admin(reqwest::Method::PUT, "/snapshot", Some(body)).await;
                assert_eq!(s, 200, "{v}");
                swaps.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
        })
    };
    // GET /api/v1/campaigns/{id} needs campaign.manage: sales_rep lacks it, campaign_cleaner has
    // it. So in A the rep gets 403, in B the call is forwarded with roles "sales_rep,campaign_cleaner".
    let c = client();
    let (allowed, denied) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (c, g, allowed, denied) = (c.clone(), g.clone(), allowed.clone(), denied.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let id = 1 + (w + i) % 8;
                let r = c
                    .get(g.h.url(&format!("/api/v1/campaigns/{id}")))
                    .header("authorization", bearer("u-rep1"))
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                assert!(s < 500, "no 5xx during swaps: {s}");
                match s {
                    200 => allowed.fetch_add(1, Ordering::Relaxed),
                    403 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(v["permission"], "campaign.manage");
                        denied.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("unexpected status {other}"),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    swapper.await.unwrap();
    let (allowed, denied) = (
        allowed.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    );
    assert_eq!(allowed + denied, 3200);
    assert!(
        allowed > 0 && denied > 0,
        "both snapshots served: {allowed} allowed, {denied} denied"
    );
    assert!(
        swaps.load(Ordering::Relaxed) >= 10,
        "swapped {} times",
        swaps.load(Ordering::Relaxed)
    );
    // Never a mix: every forwarded call carried snapshot B's roles.
    let got = g.h.received();
    assert_eq!(got.len(), allowed);
    for r in &got {
        assert_eq!(
            recorded_header(r, "x-permgate-roles"),
            vec!["sales_rep,campaign_cleaner"]
        );
    }
    eprintln!(
        "swaps: {}, allowed: {allowed}, denied: {denied}",
        swaps.load(Ordering::Relaxed)
    );
}

/// A snapshot source for tests: serves `body` with an ETag, answers 304 to a matching
/// `If-None-Match`, signs with `key` when given, and counts what it answered.
struct Source {
    addr: std::net::SocketAddr,
    state: Arc<std::sync::Mutex<SourceState>>,
}

#[derive(Default)]
struct SourceState {
    body: String,
    etag: String,
    signature: Option<String>,
    status: u16,
    served_full: usize,
    served_304: usize,
}

impl Source {
    async fn start(body: &str, etag: &str) -> Source {
        use http_body_util::Full;
        let state = Arc::new(std::sync::Mutex::new(SourceState {
            body: body.into(),
            etag: etag.into(),
            status: 200,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                let mut s = st.lock().unwrap();
                                let inm = req
                                    .headers()
                                    .get("if-none-match")
                                    .map(|v| v.to_str().unwrap().to_string());
                                let mut resp = hyper::Response::builder();
                                if s.status != 200 {
                                    return Ok::<_, std::convert::Infallible>(
                                        resp.status(s.status)
                                            .body(Full::new(bytes::Bytes::new()))
                                            .unwrap(),
                                    );
                                }
                                if inm.as_deref() == Some(s.etag.as_str()) {
                                    s.served_304 += 1;
                                    return Ok(resp
                                        .status(304)
                                        .body(Full::new(bytes::Bytes::new()))
                                        .unwrap());
                                }
                                s.served_full += 1;
                                resp = resp.header("etag", s.etag.clone());
                                if let Some(sig) = &s.signature {
                                    resp = resp.header("x-snapshot-signature", sig.clone());
                                }
                                Ok(resp
                                    .body(Full::new(bytes::Bytes::from(s.body.clone())))
                                    .unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Source { addr, state }
    }
}

fn sign(key: &ed25519_dalek::SigningKey, body: &str) -> String {
    use base64::Engine;
    use ed25519_dalek::Signer;
    base64::engine::general_purpose::STANDARD.encode(key.sign(body.as_bytes()).to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_with_etag_signature_and_refusals() {
    use base64::Engine;
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    let b = rep_can_delete("url-v1");
    let src = Source::start(&b, "\"etag-1\"").await;
    src.state.lock().unwrap().signature = Some(sign(&key, &b));
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = admin_section();
    let text = demo_config_text().replacen(
        "path = \"snapshot.json\"",
        &format!(
            "path = \"snapshot.json\"\nurl = \"http://{}/snapshot.json\"\npull_interval_ms = 100\npull_timeout_ms = 2000\npublic_key = \"{public}\"",
            src.addr
        ),
        1,
    ) + &admin;
    std::fs::write(dir.path().join("permgate.toml"), &text).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), DEMO_SNAPSHOT).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let status = || async {
        client()
            .get(format!("http://127.0.0.1:{port}/status"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert!(
        eventually(10, || async {
            status().await["snapshot"]["version"] == "url-v1"
        })
        .await
    );
    // Unchanged source: 304s, nothing re-parsed or swapped.
    assert!(eventually(10, || async { src.state.lock().unwrap().served_304 >= 5 }).await);
    let st = status().await;
    assert_eq!(st["counters"]["snapshot_updates"], 1, "{st}");
    assert!(st["counters"]["source_not_modified"].as_u64().unwrap() >= 5);
    assert_eq!(src.state.lock().unwrap().served_full, 1);
    let rep_delete = |id: u32| {
        let url = h.url(&format!("/api/v1/campaigns/{id}"));
        async move {
            client()
                .delete(url)
                .header("authorization", bearer("u-rep1"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(rep_delete(1).await, 204);

    // A new body with a wrong signature is refused; the live snapshot stays.
    {
        let mut s = src.state.lock().unwrap();
        s.body = DEMO_SNAPSHOT.replacen("demo-2026-11-23.1", "url-v2", 1);
        s.etag = "\"etag-2\"".into();
        s.signature = Some(sign(
            &ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]),
            &s.body,
        ));
    }
    assert!(
        eventually(10, || async {
            status().await["counters"]["source_errors"].as_u64() >= Some(1)
        })
        .await
    );
    assert_eq!(status().await["snapshot"]["version"], "url-v1");
    assert_eq!(rep_delete(2).await, 204);

    // A corrupt body, correctly signed, is refused by validation.
    {
        let mut s = src.state.lock().unwrap();
        s.body = "{\"users\": [".into();
        s.etag = "\"etag-3\"".into();
        s.signature = Some(sign(&key, &s.body));
    }
    assert!(
        eventually(10, || async {
            status().await["counters"]["snapshot_update_failures"].as_u64() >= Some(1)
        })
        .await
    );
    assert_eq!(status().await["snapshot"]["version"], "url-v1");

    // The source goes down: the live snapshot stays, errors are counted (with backoff).
    src.state.lock().unwrap().status = 503;
    let before = status().await["counters"]["source_errors"]
        .as_u64()
        .unwrap();
    assert!(
        eventually(10, || async {
            status().await["counters"]["source_errors"]
                .as_u64()
                .unwrap()
                > before
        })
        .await
    );
    assert_eq!(rep_delete(3).await, 204);

    // Back up with a good, signed version.
    {
        let mut s = src.state.lock().unwrap();
        s.status = 200;
        s.body = DEMO_SNAPSHOT.replacen("demo-2026-11-23.1", "url-v4", 1);
        s.etag = "\"etag-4\"".into();
        s.signature = Some(sign(&key, &s.body));
    }
    assert!(
        eventually(20, || async {
            status().await["snapshot"]["version"] == "url-v4"
        })
        .await
    );
    assert_eq!(rep_delete(4).await, 403);
}
