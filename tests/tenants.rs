//! Tenants through the real gateway (issue 16 item 2): a user is ADMIN in org A and a plain
//! rep in org B; the call's tenant (JWT claim, route path parameter, or a trusted header)
//! picks the membership. Bulk items U may not touch in B are trimmed, a record of A addressed
//! in a call of B is `record_forbidden`, a non-member gets `not_a_member`, sources that
//! disagree are refused, and a tenant header counts only from a trusted peer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::*;
use serde_json::json;

const A1: &str = "00000000-0000-0000-0000-0000000000a1";
const A2: &str = "00000000-0000-0000-0000-0000000000a2";
const B1: &str = "00000000-0000-0000-0000-0000000000b1";
const B2: &str = "00000000-0000-0000-0000-0000000000b2";

fn config(tenants: &str, identity_extra: &str) -> String {
    format!(
        r#"
[listen]
address = "127.0.0.1:0"

[upstream]
address = "127.0.0.1:9"

[identity.jwt]
user_claim = "sub"

[[identity.jwt.keys]]
kid = "demo-hs256"
alg = "HS256"
secret = "{secret}"
{identity_extra}

[snapshot]
path = "snapshot.json"

[tenants]
{tenants}

[decision_log]
target = "decisions.log"
mask = []

[[record_type]]
name = "case"
id = "uuid"

[[route]]
name = "cases.read"
methods = ["GET"]
path = "/api/orgs/{{org}}/cases/{{id}}"
permission = "lead.view"
records = [{{ type = "case", id = "path:id" }}]

[[route]]
name = "cases.bulk_update"
methods = ["POST"]
path = "/api/cases/bulk-update"
permission = "lead.update"
bulk = {{ type = "case", items = "/ids", mode = "trim" }}
"#,
        secret = permgate::demo::DEMO_SECRET
    )
}

fn snapshot() -> String {
    json!({
        "tenants": [{"id": "org-a", "name": "U's own org"}, {"id": "org-b", "name": "U's employer"}],
        "roles": [{"id": "case_rep", "permissions": ["lead.view@own", "lead.update@own"]}],
        "users": [
            {"id": "u", "memberships": [
                {"tenant": "org-a", "roles": ["admin"]},
                {"tenant": "org-b", "roles": ["case_rep"]}
            ]},
            {"id": "v", "memberships": [{"tenant": "org-b", "roles": ["case_rep"], "manager": "u"}]},
            {"id": "w", "memberships": [{"tenant": "org-a", "roles": ["case_rep"]}]}
        ],
        "records": {"owners": [
            {"type": "case", "id": A1, "owner": "w", "tenant": "org-a"},
            {"type": "case", "id": A2, "owner": "w", "tenant": "org-a"},
            {"type": "case", "id": B1, "owner": "u", "tenant": "org-b"},
            {"type": "case", "id": B2, "owner": "v", "tenant": "org-b"}
        ]}
    })
    .to_string()
}

/// The call reached the CRM (the sample CRM has no such route and answers its own 404).
fn forwarded(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found", "the CRM's own answer: {body}");
}

fn token_in(user: &str, org: Option<&str>) -> String {
    let mut claims = json!({"sub": user, "exp": unix_now() + 3600});
    if let Some(o) = org {
        claims["org_id"] = json!(o);
    }
    format!("Bearer {}", demo_key_token(&claims, Some("demo-hs256")))
}

async fn start(config: &str) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot()).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    (h, dir)
}

async fn bulk(h: &Harness, auth: &str, ids: &[&str]) -> (u16, Option<String>, serde_json::Value) {
    let r = client()
        .post(h.url("/api/cases/bulk-update"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(json!({ "ids": ids }).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let removed = r
        .headers()
        .get("x-permgate-removed-ids")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or_default();
    (status, removed, body)
}

async fn get(h: &Harness, auth: &str, path: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(h.url(path))
        .header("authorization", auth)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_roles_are_those_of_the_calls_tenant() {
    let (h, dir) = start(&config(r#"from = ["claim:org_id", "path:org"]"#, "")).await;

    // Org A: U is ADMIN there, and bulk-edits A's cases (none trimmed).
    h.clear();
    let (s, removed, body) = bulk(&h, &token_in("u", Some("org-a")), &[A1, A2]).await;
    forwarded(s, &body);
    assert_eq!(removed, None);
    let got = h.received();
    assert_eq!(got.len(), 1);
    let sent: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(sent["ids"], json!([A1, A2]));
    assert_eq!(recorded_header(&got[0], "x-permgate-tenant"), vec!["org-a"]);
    assert_eq!(recorded_header(&got[0], "x-permgate-roles"), vec!["admin"]);

    // Org B: U is a rep, who may edit only their own case: V's is trimmed.
    h.clear();
    let (s, removed, body) = bulk(&h, &token_in("u", Some("org-b")), &[B1, B2]).await;
    forwarded(s, &body);
    assert_eq!(removed.as_deref(), Some(B2));
    let got = h.received();
    let sent: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(sent["ids"], json!([B1]));
    assert_eq!(recorded_header(&got[0], "x-permgate-tenant"), vec!["org-b"]);
    assert_eq!(
        recorded_header(&got[0], "x-permgate-roles"),
        vec!["case_rep"]
    );

    // A case of org A slipped into a call of org B is removed, whatever U is in A.
    h.clear();
    let (s, removed, body) = bulk(&h, &token_in("u", Some("org-b")), &[B1, A1]).await;
    forwarded(s, &body);
    assert_eq!(removed.as_deref(), Some(A1));
    // Only cases of another org: nothing forwarded.
    h.clear();
    let (s, _, body) = bulk(&h, &token_in("u", Some("org-b")), &[A1, A2]).await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "bulk_forbidden");
    assert!(h.received().is_empty());

    // A record of org A addressed in a call of org B: record_forbidden (U is ADMIN in A).
    h.clear();
    let (s, body) = get(
        &h,
        &token_in("u", Some("org-b")),
        &format!("/api/orgs/org-b/cases/{A1}"),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "record_forbidden");
    assert!(h.received().is_empty());
    let (s, body) = get(
        &h,
        &token_in("u", Some("org-a")),
        &format!("/api/orgs/org-a/cases/{A1}"),
    )
    .await;
    forwarded(s, &body);

    // The path alone names the tenant (a token without the claim).
    let (s, body) = get(
        &h,
        &token_in("u", None),
        &format!("/api/orgs/org-a/cases/{A2}"),
    )
    .await;
    forwarded(s, &body);

    // A user with no membership of the call's tenant: not_a_member, naming it.
    h.clear();
    let (s, body) = get(
        &h,
        &token_in("w", Some("org-b")),
        &format!("/api/orgs/org-b/cases/{B1}"),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"], "not_a_member");
    assert!(
        body["message"].as_str().unwrap().contains("org-b"),
        "{body}"
    );
    assert!(h.received().is_empty());
    // An unknown tenant is the same answer.
    let (s, _, body) = bulk(&h, &token_in("u", Some("org-zz")), &[B1]).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("not_a_member")));

    // The claim and the path disagree: refused, never guessed.
    h.clear();
    let (s, body) = get(
        &h,
        &token_in("u", Some("org-a")),
        &format!("/api/orgs/org-b/cases/{B1}"),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"], "tenant_ambiguous");
    // No source names a tenant (no claim, no path parameter on this route).
    let (s, _, body) = bulk(&h, &token_in("u", None), &[B1]).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"], "tenant_missing");
    assert!(h.received().is_empty());

    // /_permgate/me: the roles of the call's tenant, named.
    let (s, me) = get(&h, &token_in("u", Some("org-a")), "/_permgate/me").await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["tenant"], "org-a", "{me}");
    assert_eq!(me["roles"], json!(["admin"]));
    let (_, me) = get(&h, &token_in("u", Some("org-b")), "/_permgate/me").await;
    assert_eq!(me["tenant"], "org-b");
    assert_eq!(me["roles"], json!(["case_rep"]));
    assert_eq!(me["permissions"]["lead.update"], "own");

    // The decision log carries the tenant.
    let log_path = dir.path().join("decisions.log");
    assert!(
        eventually(10, || {
            let p = log_path.clone();
            async move {
                std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.contains("\"tenant\":\"org-b\""))
            }
        })
        .await,
        "decision log: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    // `permgate explain --tenant` decides as the gateway does.
    let explain = |tenant: &str, path: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
            .args([
                "explain", "--json", "--user", "u", "--tenant", tenant, "--config",
            ])
            .arg(dir.path().join("permgate.toml"))
            .args(["GET", &path])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let e = explain("org-b", format!("/api/orgs/org-b/cases/{A1}"));
    assert_eq!(e["code"], "record_forbidden", "{e}");
    assert_eq!(e["tenant"], "org-b", "{e}");
    assert_eq!(e["user"]["roles"], json!(["case_rep"]), "{e}");
    let e = explain("org-a", format!("/api/orgs/org-a/cases/{A1}"));
    assert_eq!(e["decision"], "allow", "{e}");
    let e = explain("org-a", format!("/api/orgs/org-b/cases/{B1}"));
    assert_eq!(e["code"], "tenant_ambiguous", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_header_counts_only_from_a_trusted_peer() {
    let trusted =
        "\n[identity.trusted_header]\nname = \"x-auth-user\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n";
    let (h, _dir) = start(&config(r#"from = "header:x-org""#, trusted)).await;
    let call = |org: Vec<&'static str>| {
        let mut r = client()
            .get(h.url(&format!("/api/orgs/org-a/cases/{A1}")))
            .header("x-auth-user", "u");
        for o in org {
            r = r.header("x-org", o);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    h.clear();
    let (s, body) = call(vec!["org-a"]).await;
    forwarded(s, &body);
    let got = h.received();
    assert!(
        recorded_header(&got[0], "x-org").is_empty(),
        "the tenant header is never forwarded"
    );
    assert_eq!(recorded_header(&got[0], "x-permgate-tenant"), vec!["org-a"]);
    let (s, body) = call(vec!["org-b"]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("record_forbidden")),
        "{body}"
    );
    let (s, body) = call(vec!["org-a", "org-b"]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("tenant_ambiguous")),
        "{body}"
    );
    let (s, body) = call(vec![]).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("tenant_missing")),
        "{body}"
    );
    drop(h);

    // The same header from a peer outside trusted_cidrs: refused, even with a valid JWT.
    let untrusted =
        "\n[identity.trusted_header]\nname = \"x-auth-user\"\ntrusted_cidrs = [\"10.9.0.0/16\"]\n";
    let (h, _dir) = start(&config(r#"from = "header:x-org""#, untrusted)).await;
    h.clear();
    let r = client()
        .get(h.url(&format!("/api/orgs/org-a/cases/{A1}")))
        .header("authorization", token_in("u", None))
        .header("x-org", "org-a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "untrusted_tenant_header");
    assert!(h.received().is_empty());
}

#[test]
fn check_config_refuses_a_bad_tenant_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("permgate.toml"),
        config(r#"from = "claim:org_id""#, ""),
    )
    .unwrap();
    let mut bad: serde_json::Value = serde_json::from_str(&snapshot()).unwrap();
    bad["users"][1]["memberships"][0]["tenant"] = json!("org-c");
    // A manager who is not a member of the tenant.
    bad["users"][2]["memberships"][0]["manager"] = json!("v");
    std::fs::write(dir.path().join("snapshot.json"), bad.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(dir.path().join("permgate.toml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("users[1].memberships[0].tenant: unknown tenant 'org-c'"),
        "{text}"
    );
    assert!(
        text.contains(
            "users[2].memberships[0].manager: manager 'v' is not a member of tenant 'org-a'"
        ),
        "{text}"
    );
}

const C1: &str = "00000000-0000-0000-0000-0000000000c1";
const C2: &str = "00000000-0000-0000-0000-0000000000c2";

/// The admin changes API and learned records on a snapshot with tenants: memberships, record
/// tenants and new tenants change in a batch; a bad change is one located error and the batch
/// is refused whole; a case created through the gateway belongs to the call's tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_learned_records_follow_tenants() {
    let (admin, port) = admin_section();
    let text = config(r#"from = ["claim:org_id", "path:org"]"#, &admin)
        + r#"
[[route]]
name = "cases.create"
methods = ["POST"]
path = "/api/orgs/{org}/cases"
permission = "lead.create"
creates = { type = "case", id = "/id" }
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    let mut snap: serde_json::Value = serde_json::from_str(&snapshot()).unwrap();
    snap["roles"][0]["permissions"] = json!(["lead.view@own", "lead.update@own", "lead.create"]);
    std::fs::write(dir.path().join("snapshot.json"), snap.to_string()).unwrap();
    // A CRM whose create answer names case C1; every other call gets 200 {}.
    let (upstream, _crm) = raw_crm(|line| {
        if line.starts_with("POST ") {
            (
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 45\r\n\r\n{\"id\":\"00000000-0000-0000-0000-0000000000c1\"}",
                true,
            )
        } else {
            (
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
                false,
            )
        }
    })
    .await;
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), Some(upstream)).await;
    let admin = format!("http://127.0.0.1:{port}");
    let changes = |batch: serde_json::Value| {
        let admin = admin.clone();
        async move {
            let r = client()
                .post(format!("{admin}/snapshot/changes"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(json!({ "changes": batch }).to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let case = |user: &'static str, org: &'static str, id: &'static str| {
        let h = &h;
        async move {
            get(
                h,
                &token_in(user, Some(org)),
                &format!("/api/orgs/{org}/cases/{id}"),
            )
            .await
        }
    };

    // Learned: U (a rep in org B) creates case C1 in org B; it is U's, in org B, at once.
    assert_eq!(case("u", "org-b", C1).await.0, 403, "unknown before");
    let r = client()
        .post(h.url("/api/orgs/org-b/cases"))
        .header("authorization", token_in("u", Some("org-b")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(case("u", "org-b", C1).await.0, 200, "create-then-act");
    // Not in org A, where U is ADMIN: the case is org B's.
    let (s, body) = case("u", "org-a", C1).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("record_forbidden")));

    // Batches on a snapshot with tenants are applied incrementally: none below takes a full
    // build (the metric counts those).
    let rebuilds = || {
        let admin = admin.clone();
        async move {
            metric(
                &admin_metrics(&admin).await,
                "permgate_snapshot_change_rebuilds_total",
            )
        }
    };
    let rebuilds_before = rebuilds().await;

    // A membership added and a record of it: W (org A only) joins org B.
    assert_eq!(case("w", "org-b", B1).await.1["error"], "not_a_member");
    let (s, v) = changes(json!([
        {"op": "set_membership", "user": "w", "tenant": "org-b", "roles": ["case_rep"], "manager": "u"},
        {"op": "upsert_record", "type": "case", "id": C2, "owner": "w", "tenant": "org-b"}
    ]))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(case("w", "org-b", C2).await.0, 200);
    assert_eq!(case("w", "org-b", B1).await.1["error"], "record_forbidden");
    // W's case of org B is not W's in org A (the record belongs to B).
    assert_eq!(case("w", "org-a", C2).await.1["error"], "record_forbidden");
    assert_eq!(case("w", "org-a", A1).await.0, 200, "org A unchanged");

    // A bad change: one located error, the batch refused whole.
    let (s, v) = changes(json!([
        {"op": "set_roles", "user": "v", "tenant": "org-b", "roles": ["admin"]},
        {"op": "upsert_record", "type": "case", "id": C2, "owner": "v"}
    ]))
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("changes[1].tenant: missing"), "{v}");
    let (_, me) = get(&h, &token_in("v", Some("org-b")), "/_permgate/me").await;
    assert_eq!(me["roles"], json!(["case_rep"]), "nothing applied: {me}");
    for (bad, says) in [
        (
            json!([{"op": "set_teams", "user": "v", "tenant": "org-a", "teams": ["east"]}]),
            "changes[0]: user 'v' has no membership in tenant 'org-a'",
        ),
        (
            json!([{"op": "upsert_record", "type": "case", "id": C2, "tenant": "org-zz"}]),
            "changes[0].tenant: unknown tenant 'org-zz'",
        ),
        (
            json!([{"op": "set_membership", "user": "v", "tenant": "org-a", "roles": ["nope"]}]),
            "changes[0].roles[0]: unknown role 'nope'",
        ),
    ] {
        let (s, v) = changes(bad.clone()).await;
        assert_eq!(s, 422, "{bad}: {v}");
        assert!(v.to_string().contains(says), "{bad}: {v}");
    }

    // A new tenant, and a membership of it; membership removed.
    let (s, v) = changes(json!([
        {"op": "upsert_tenant", "tenant": {"id": "org-c", "name": "New"}},
        {"op": "set_membership", "user": "v", "tenant": "org-c", "roles": ["admin"]},
        {"op": "remove_membership", "user": "w", "tenant": "org-b"}
    ]))
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, me) = get(&h, &token_in("v", Some("org-c")), "/_permgate/me").await;
    assert_eq!((s, me["roles"].clone()), (200, json!(["admin"])), "{me}");
    assert_eq!(case("w", "org-b", C2).await.1["error"], "not_a_member");

    // A known record moved to another tenant (it has no related objects): A2, W's in org A,
    // becomes V's in org B, incrementally too.
    assert_eq!(case("w", "org-a", A2).await.0, 200);
    let (s, v) = changes(json!([
        {"op": "upsert_record", "type": "case", "id": A2, "owner": "v", "tenant": "org-b"}
    ]))
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(case("v", "org-b", A2).await.0, 200, "moved: V's, in org B");
    assert_eq!(case("w", "org-a", A2).await.1["error"], "record_forbidden");

    // A deletion on a snapshot with tenants: U's learned case C1 is forgotten (a call naming
    // it is judged as for any unknown record: refused here); a second removal is refused.
    assert_eq!(case("u", "org-b", C1).await.0, 200);
    let (s, v) = changes(json!([{"op": "remove_record", "type": "case", "id": C1}])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(case("u", "org-b", C1).await.0, 403, "removed");
    let (s, v) = changes(json!([{"op": "remove_record", "type": "case", "id": C1}])).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("unknown record case"), "{v}");
    assert_eq!(
        rebuilds().await,
        rebuilds_before,
        "every batch above was applied incrementally"
    );
}

/// `permgate serve` with `config` and `snapshot`: it must exit (bounded wait); its exit code
/// and stderr.
fn serve_exits(config: &str, snapshot: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.path().join("permgate.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("permgate started with a config and a snapshot that disagree on tenants");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

const PLAIN_SNAPSHOT: &str = r#"{"users":[{"id":"u","roles":["admin"]}]}"#;

/// A config with `[tenants]` and a snapshot without tenants (or the reverse) is refused when
/// it is loaded, naming both: at start the gateway does not start; a snapshot pushed or a
/// config reloaded that disagrees with the other is refused and the last good one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_and_a_snapshot_that_disagree_on_tenants_are_refused_at_load() {
    let tenanted = config(r#"from = "claim:org_id""#, "");
    let (code, err) = serve_exits(&tenanted, PLAIN_SNAPSHOT);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("snapshot.json"), "{err}");
    assert!(err.contains("permgate.toml has [tenants]"), "{err}");
    assert!(err.contains("the snapshot has no tenants"), "{err}");

    let plain = tenanted.replace("[tenants]\nfrom = \"claim:org_id\"", "");
    assert!(!plain.contains("[tenants]"));
    let (code, err) = serve_exits(&plain, &snapshot());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the snapshot has tenants"), "{err}");
    assert!(err.contains("permgate.toml has no [tenants]"), "{err}");

    // A running tenant-aware gateway: the disagreeing snapshot or config is refused.
    let (admin, port) = admin_section();
    let (h, dir) = start(&config(r#"from = "claim:org_id""#, &admin)).await;
    let admin_call = |method, path, body| admin_api(port, method, path, body);
    let (s, v) = admin_call(
        reqwest::Method::PUT,
        "/snapshot",
        Some(PLAIN_SNAPSHOT.into()),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("the snapshot has no tenants"), "{v}");
    let me = |org: &'static str| {
        let h = &h;
        async move { get(h, &token_in("u", Some(org)), "/_permgate/me").await }
    };
    let (s, body) = me("org-a").await;
    assert_eq!(
        (s, body["roles"].clone()),
        (200, json!(["admin"])),
        "last good kept"
    );

    let config_path = dir.path().join("permgate.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        text.replace("[tenants]\nfrom = \"claim:org_id\"", ""),
    )
    .unwrap();
    let (s, v) = admin_call(reqwest::Method::POST, "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("has no [tenants]"), "{v}");
    let (s, body) = me("org-b").await;
    assert_eq!(
        (s, body["roles"].clone()),
        (200, json!(["case_rep"])),
        "last good config kept"
    );
}

/// The audit of a membership change, where the binary writes it (`/status` recent changes and
/// the `permgate::audit` log): a membership added and one removed (`memberships_added`,
/// `memberships_removed`, with the roles held) and a role changed in one tenant
/// (`roles_changed` carrying the tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_audited_with_their_tenant() {
    let (admin, port) = admin_section();
    let (h, _dir) = start(&config(r#"from = "claim:org_id""#, &admin)).await;
    let admin_call = |method, path, body| admin_api(port, method, path, body);
    let batch = json!({"changes": [
        {"op": "set_roles", "user": "u", "tenant": "org-b", "roles": ["admin"]},
        {"op": "set_membership", "user": "w", "tenant": "org-b", "roles": ["case_rep"]},
        {"op": "remove_membership", "user": "u", "tenant": "org-a"}
    ]});
    let (s, v) = admin_call(
        reqwest::Method::POST,
        "/snapshot/changes",
        Some(batch.to_string()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // The decisions follow: U is no member of org A any more, ADMIN in org B.
    let (_, body) = get(
        &h,
        &token_in("u", Some("org-a")),
        &format!("/api/orgs/org-a/cases/{A1}"),
    )
    .await;
    assert_eq!(body["error"], "not_a_member", "{body}");
    let (_, me) = get(&h, &token_in("u", Some("org-b")), "/_permgate/me").await;
    assert_eq!(me["roles"], json!(["admin"]), "{me}");

    let (_, st) = admin_call(reqwest::Method::GET, "/status", None).await;
    let last = st["recent_changes"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["kind"], "snapshot", "{last}");
    assert_eq!(last["outcome"], "accepted", "{last}");
    let changes = &last["changes"];
    assert_eq!(
        changes["roles_changed"]["items"],
        json!([{"user": "u", "tenant": "org-b", "before": ["case_rep"], "after": ["admin"]}]),
        "{last}"
    );
    assert_eq!(
        changes["memberships_added"]["items"],
        json!([{"user": "w", "tenant": "org-b", "roles": ["case_rep"]}]),
        "{last}"
    );
    assert_eq!(
        changes["memberships_removed"]["items"],
        json!([{"user": "u", "tenant": "org-a", "roles": ["admin"]}]),
        "{last}"
    );
    // The same event in the log, as one JSON object under the audit target.
    let log = h.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("permgate::audit") && l.contains("memberships_added"))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert!(line.contains("org-a"), "{line}");
    assert!(line.contains("memberships_removed"), "{line}");
}

/// A call to the admin API with its token: the status and the JSON body (`null` when the body
/// is not JSON).
async fn admin_api(
    port: u16,
    method: reqwest::Method,
    path: &'static str,
    body: Option<String>,
) -> (u16, serde_json::Value) {
    let mut r = client()
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(b) = body {
        r = r.body(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}
