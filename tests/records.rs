//! Record scopes through the real gateway (seeds 002 and 004): a limited rep sees their own
//! leads and what is shared with their team; a manager sees their whole subtree and nothing
//! outside it; a record unknown to the snapshot is denied; a non-canonical id spelling is
//! refused. The CRM receives only what was allowed.

mod common;

use common::*;

/// Lead N is owned by this user in the sample CRM (its documented formula).
fn owner(n: u32) -> &'static str {
    [
        "u-admin", "u-sm", "u-rep1", "u-rep2", "u-csr", "u-mm", "u-da", "u-member",
    ][(n as usize - 1) % 8]
}

fn snapshot() -> String {
    let owners: Vec<String> = (1..=40)
        .map(|n| format!(r#"{{"type":"lead","id":"{n}","owner":"{}"}}"#, owner(n)))
        .collect();
    let mut v: serde_json::Value = serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).unwrap();
    v["roles"].as_array_mut().unwrap().extend([
        serde_json::json!({"id": "limited_rep", "permissions": ["lead.view@own+shared"]}),
        serde_json::json!({"id": "lead_manager", "permissions": ["lead.view@subordinates"]}),
    ]);
    for u in v["users"].as_array_mut().unwrap() {
        match u["id"].as_str() {
            Some("u-rep1") => u["roles"] = serde_json::json!(["limited_rep"]),
            Some("u-sm") => u["roles"] = serde_json::json!(["lead_manager"]),
            _ => {}
        }
    }
    v["records"] = serde_json::from_str(&format!(
        r#"{{"owners":[{}],"shares":[{{"type":"lead","id":"1","team":"sales-east"}}]}}"#,
        owners.join(",")
    ))
    .unwrap();
    serde_json::to_string_pretty(&v).unwrap()
}

fn config() -> String {
    let base = demo_config_text();
    let with_records = base.replacen(
        "path = \"/api/v1/leads/{id}\"\npermission = \"lead.view\"",
        "path = \"/api/v1/leads/{id}\"\npermission = \"lead.view\"\nrecords = [{ type = \"lead\", id = \"path:id\" }]",
        1,
    );
    assert_ne!(with_records, base);
    with_records + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_decide_per_record() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config()).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot()).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let get = |user: &'static str, lead: &'static str| {
        let url = h.url(&format!("/api/v1/leads/{lead}"));
        async move {
            let r = client()
                .get(url)
                .header("authorization", bearer(user))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };
    // A limited rep (own + shared): their own lead, the lead shared with their team.
    for (lead, expected) in [
        ("3", 200),
        ("11", 200),
        ("1", 200),
        ("4", 403),
        ("2", 403),
        ("41", 403),
    ] {
        h.clear();
        let (s, body) = get("u-rep1", lead).await;
        assert_eq!(s, expected, "u-rep1 lead {lead}: {body}");
        if expected == 403 {
            assert_eq!(body["error"], "record_forbidden", "{body}");
            assert!(h.received().is_empty(), "nothing forwarded for lead {lead}");
        } else {
            assert_eq!(h.received().len(), 1);
        }
    }
    // A manager (subordinates): own, and every report's at any depth; nothing outside.
    for (lead, expected) in [
        ("2", 200),
        ("3", 200),
        ("4", 200),
        ("12", 200),
        ("1", 403),
        ("5", 403),
        ("6", 403),
    ] {
        let (s, body) = get("u-sm", lead).await;
        assert_eq!(s, expected, "u-sm lead {lead}: {body}");
    }
    // Full-scope roles are unaffected.
    assert_eq!(get("u-admin", "4").await.0, 200);
    // A spelling a CRM could read as another record is refused, not normalized.
    h.clear();
    let (s, body) = get("u-rep1", "003").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"], "invalid_record_id");
    assert!(h.received().is_empty());
}

#[test]
fn routes_whose_checks_need_body_buffering_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let text = config().replacen(
        "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"",
        "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"\nbulk = { type = \"lead\", items = \"/ids\" }",
        1,
    );
    assert!(text.contains("bulk = {"));
    std::fs::write(dir.path().join("c.toml"), &text).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("leads.bulk_reassign") && err.contains("not") && err.contains("enforced"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["serve", "--config"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "serve refuses to start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_can_ask_for_their_effective_permissions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config()).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot()).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let r = client()
        .get(h.url("/_permgate/me"))
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["user"], "u-rep1");
    assert_eq!(v["roles"], serde_json::json!(["limited_rep"]));
    assert_eq!(v["permissions"]["lead.view"], "own+shared");
    assert!(v["permissions"].get("campaign.delete").is_none());
    let r = client()
        .get(h.url("/_permgate/me"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["permissions"]["campaign.delete"], "all");
    let r = client().get(h.url("/_permgate/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        h.received().is_empty(),
        "answered by the gateway, never forwarded"
    );
}
