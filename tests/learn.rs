//! Issue 17 item 2: a record learned from the CRM's create answer (`creates` on a route). A
//! lead a user just created through the gateway can be acted on at once (before, it was
//! refused until the next snapshot load); nobody else gains anything; a failed, oversized or
//! non-JSON answer learns nothing and reaches the client unchanged; a later full load confirms
//! the record, or keeps it while it is young and then drops it (counted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::records::*;
use common::*;
use serde_json::{json, Value};

/// The record-scope config with a bulk reassign route, `creates` on the lead create route, and
/// `extra` appended.
fn learn_config(creates: &str, extra: &str) -> String {
    let text = bulk_config("trim").replacen(
        "path = \"/api/v1/leads\"\npermission = \"lead.create\"",
        &format!("path = \"/api/v1/leads\"\npermission = \"lead.create\"\ncreates = {creates}"),
        1,
    );
    assert!(text.contains("creates = "));
    text + extra
}

/// The manager (u-sm) may also create leads and add notes to their subtree's leads.
fn learn_snapshot(version: &str) -> String {
    let text = bulk_snapshot().replacen(
        "\"lead.reassign@subordinates\"",
        "\"lead.reassign@subordinates\", \"lead.create\", \"lead.update@subordinates\"",
        1,
    );
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["version"] = json!(version);
    v.to_string()
}

struct Gateway {
    h: Harness,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn gateway(config: String, snapshot: String) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let port = admin_port(&dir);
    Gateway {
        h,
        admin: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn gateway_to(config: String, upstream: std::net::SocketAddr) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), learn_snapshot("v1")).unwrap();
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), Some(upstream)).await;
    let port = admin_port(&dir);
    Gateway {
        h,
        admin: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn admin_port(dir: &tempfile::TempDir) -> u16 {
    let text = std::fs::read_to_string(dir.path().join("permgate.toml")).unwrap();
    let at = text.find("listen = \"127.0.0.1:").unwrap() + "listen = \"127.0.0.1:".len();
    text[at..].split('"').next().unwrap().parse().unwrap()
}

impl Gateway {
    async fn status(&self) -> Value {
        client()
            .get(format!("{}/status", self.admin))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A full load through the admin API (as a source would deliver one).
    async fn load(&self, snapshot: String) {
        let r = client()
            .put(format!("{}/snapshot", self.admin))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(snapshot)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// `POST /api/v1/leads` as `user`: the status, the answer's bytes.
    async fn create(&self, user: &str, query: &str, body: &str) -> (u16, Vec<u8>) {
        let r = client()
            .post(self.h.url(&format!("/api/v1/leads{query}")))
            .header("authorization", bearer(user))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    }

    /// A bulk reassign of `ids` by the manager: the gateway's status and its removed count.
    async fn reassign(&self, ids: &[u64]) -> (u16, Option<String>) {
        let r = client()
            .post(self.h.url("/api/v1/leads/bulk-reassign"))
            .header("authorization", bearer("u-sm"))
            .header("content-type", "application/json")
            .body(json!({"ids": ids, "owner_id": "u-rep2"}).to_string())
            .send()
            .await
            .unwrap();
        let removed = r
            .headers()
            .get("x-permgate-removed-count")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), removed)
    }
}

fn id_of(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_created_through_the_gateway_can_be_acted_on_at_once() {
    let (admin, _) = admin_section();
    let g = gateway(
        learn_config("{ type = \"lead\", id = \"/id\" }", &admin),
        learn_snapshot("v1"),
    )
    .await;
    // What happened before: a lead the snapshot does not know is refused in bulk.
    let direct = client()
        .post(format!("http://{}/api/v1/leads", g.h.crm.local_addr()))
        .header("x-permgate-user", "u-sm")
        .header("content-type", "application/json")
        .body(r#"{"name":"Behind the gateway's back"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 201);
    let unknown = id_of(&direct.bytes().await.unwrap());
    assert_eq!(
        g.reassign(&[unknown]).await.0,
        403,
        "unknown to the snapshot"
    );

    // Created through the gateway: learned before the answer reached the caller.
    let (s, body) = g.create("u-sm", "", r#"{"name":"Acme"}"#).await;
    assert_eq!(s, 201, "{}", String::from_utf8_lossy(&body));
    let lead = id_of(&body);
    g.h.clear();
    let (s, removed) = g.reassign(&[lead]).await;
    assert_eq!(s, 200, "create-then-act, no wait");
    assert_eq!(removed.as_deref(), Some("0"), "nothing trimmed");
    let got = g.h.received();
    assert_eq!(got.len(), 1);
    let sent: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(sent["ids"], json!([lead]));
    // Mixed with the unknown one: only the learned lead goes.
    let (s, removed) = g.reassign(&[lead, unknown]).await;
    assert_eq!((s, removed.as_deref()), (200, Some("1")));
    // Nobody else gains anything: a rep (own records only) may not read the manager's lead.
    assert_eq!(lead_call(&g.h, "u-rep1", lead as u32).await, 403);
    assert_eq!(lead_call(&g.h, "u-sm", lead as u32).await, 200);

    // A failed create learns nothing: the CRM's 400 reaches the caller as it was.
    let (s, body) = g.create("u-sm", "", "[1]").await;
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&body));

    let st = g.status().await;
    assert_eq!(st["learned"]["learned"], 1, "{st}");
    assert_eq!(st["learned"]["pending"], 1, "{st}");
    assert_eq!(st["learned"]["not_learned"], 0, "{st}");
    let m = admin_metrics(&g.admin).await;
    assert_eq!(metric(&m, "permgate_learned_records_total"), 1);
    assert_eq!(metric(&m, "permgate_learned_pending"), 1);
    // The change is audited as any other.
    assert!(
        st["recent_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["source"].as_str().unwrap_or("").starts_with("learned")),
        "{st}"
    );
}

/// The id from the `Location` header; a note learned under its lead from the path follows
/// the lead's visibility.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_location_header_and_a_parent_from_the_path() {
    let (admin, _) = admin_section();
    let notes = "\n[[record_type]]\nname = \"note\"\nid = \"integer\"\nparents = [\"lead\"]\n\
        [[route]]\nname = \"notes.read\"\nmethods = [\"GET\"]\npath = \"/api/v1/notes/{id}\"\n\
        permission = \"lead.view\"\nrecords = [{ type = \"note\", id = \"path:id\" }]\n";
    let config = learn_config("{ type = \"lead\", id = \"location\" }", notes).replacen(
        "path = \"/api/v1/leads/{id}/notes\"\npermission = \"lead.update\"",
        "path = \"/api/v1/leads/{id}/notes\"\npermission = \"lead.update\"\ncreates = { type = \"note\", id = \"/id\", parent = \"{id}\" }",
        1,
    );
    assert_eq!(config.matches("creates = ").count(), 2);
    let g = gateway(config + &admin, learn_snapshot("v1")).await;
    let (s, body) = g.create("u-sm", "", r#"{"name":"Globex"}"#).await;
    assert_eq!(s, 201);
    let lead = id_of(&body);
    assert_eq!(lead_call(&g.h, "u-sm", lead as u32).await, 200);

    let r = client()
        .post(g.h.url(&format!("/api/v1/leads/{lead}/notes")))
        .header("authorization", bearer("u-sm"))
        .header("content-type", "application/json")
        .body(r#"{"text":"called them"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let note = id_of(&r.bytes().await.unwrap());
    let read_note = |user: &'static str| {
        let url = g.h.url(&format!("/api/v1/notes/{note}"));
        async move {
            client()
                .get(url)
                .header("authorization", bearer(user))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        read_note("u-sm").await,
        200,
        "the note of the manager's lead"
    );
    assert_eq!(read_note("u-rep1").await, 403, "not the rep's");
    assert_eq!(g.status().await["learned"]["learned"], 2);
}

/// A raw CRM whose create answers are chosen by the query: text, large (with a length or
/// chunked), small chunked, or a 500.
async fn answering_crm() -> RawCrm {
    fn chunked(body: &str) -> String {
        let (a, b) = body.split_at(body.len() / 2);
        format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
    }
    RawCrm::start(|line, _| {
        let big = format!("{{\"id\":43,\"pad\":\"{}\"}}", "x".repeat(3000));
        let answer = if line.contains("answer=text") {
            "HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\ncreated 42"
                .to_string()
        } else if line.contains("answer=big_length") {
            format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
                big.len()
            )
        } else if line.contains("answer=big_chunked") {
            format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{}",
                chunked(&big)
            )
        } else if line.contains("answer=small_chunked") {
            format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{}",
                chunked("{\"id\":44}")
            )
        } else if line.contains("answer=existing") {
            // Lead 5 is u-csr's in the snapshot.
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"id\":5}"
                .to_string()
        } else if line.contains("answer=failed") {
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{\"id\":45}"
                .to_string()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                .to_string()
        };
        Reply::SendThenClose(answer)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_cannot_be_learned_pass_unchanged() {
    let crm = answering_crm().await;
    let (admin, _) = admin_section();
    let g = gateway_to(
        learn_config(
            "{ type = \"lead\", id = \"/id\", max_answer_bytes = 1024 }",
            &admin,
        ),
        crm.addr,
    )
    .await;
    let big = format!("{{\"id\":43,\"pad\":\"{}\"}}", "x".repeat(3000));
    for (query, status, body) in [
        ("?answer=text", 201, "created 42".to_string()),
        ("?answer=big_length", 201, big.clone()),
        ("?answer=big_chunked", 201, big.clone()),
        ("?answer=failed", 500, "{\"id\":45}".to_string()),
        ("?answer=existing", 201, "{\"id\":5}".to_string()),
    ] {
        let (s, got) = g.create("u-sm", query, "{}").await;
        assert_eq!(s, status, "{query}");
        assert_eq!(
            String::from_utf8(got).unwrap(),
            body,
            "{query}: the CRM's answer, byte for byte"
        );
    }
    // Lead 5 stays its owner's: a create answer never moves a known record to the caller.
    for lead in [42, 43, 45, 5] {
        assert_eq!(
            lead_call(&g.h, "u-sm", lead).await,
            403,
            "lead {lead} not learned"
        );
    }
    // A small chunked answer (read whole) to a bodiless create (the HTTP/1.1 lane hands it to
    // hyper) is learned.
    let r = client()
        .post(g.h.url("/api/v1/leads?answer=small_chunked"))
        .header("authorization", bearer("u-sm"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(&r.bytes().await.unwrap()[..], b"{\"id\":44}");
    assert_eq!(lead_call(&g.h, "u-sm", 44).await, 200, "learned");
    let st = g.status().await;
    assert_eq!(st["learned"]["learned"], 1, "{st}");
    assert_eq!(
        st["learned"]["not_learned"], 4,
        "text, two large, known: {st}"
    );
    let m = admin_metrics(&g.admin).await;
    assert_eq!(metric(&m, "permgate_learn_skipped_total"), 4);
    // Each skip is logged with its request id.
    assert!(
        eventually(5, || {
            let n = g.h.log_text().matches("record not learned").count();
            async move { n >= 4 }
        })
        .await,
        "{}",
        g.h.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_load_confirms_a_learned_record_or_drops_it_once_old() {
    let (admin, _) = admin_section();
    let ttl_ms = 4000;
    let g = gateway(
        learn_config("{ type = \"lead\", id = \"/id\" }", &admin).replacen(
            "[snapshot]\n",
            &format!("[snapshot]\nlearned_ttl_ms = {ttl_ms}\n"),
            1,
        ),
        learn_snapshot("v1"),
    )
    .await;
    let (s, body) = g.create("u-sm", "", r#"{"name":"Initech"}"#).await;
    assert_eq!(s, 201);
    let lead = id_of(&body);
    let learned_at = std::time::Instant::now();
    // A full load without it, while it is young: put back on top.
    g.load(learn_snapshot("v2")).await;
    assert!(
        learned_at.elapsed().as_millis() < ttl_ms,
        "the machine was too slow for this test's bound"
    );
    assert_eq!(g.reassign(&[lead]).await.0, 200, "kept while young");
    let st = g.status().await;
    assert_eq!(st["learned"]["pending"], 1, "{st}");
    assert_eq!(st["learned"]["dropped"], 0, "{st}");
    // Older than the bound, a load without it drops it.
    tokio::time::sleep(std::time::Duration::from_millis(ttl_ms as u64 + 300)).await;
    g.load(learn_snapshot("v3")).await;
    assert_eq!(g.reassign(&[lead]).await.0, 403, "dropped");
    let st = g.status().await;
    assert_eq!(st["snapshot"]["version"], "v3", "{st}");
    assert_eq!(st["learned"]["dropped"], 1, "{st}");
    assert_eq!(st["learned"]["pending"], 0, "{st}");
    let m = admin_metrics(&g.admin).await;
    assert_eq!(metric(&m, "permgate_learned_dropped_total"), 1);

    // A load that holds a learned record confirms it: the loaded one counts.
    let (s, body) = g.create("u-sm", "", r#"{"name":"Hooli"}"#).await;
    assert_eq!(s, 201);
    let confirmed = id_of(&body);
    let mut v: Value = serde_json::from_str(&learn_snapshot("v4")).unwrap();
    v["records"]["owners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "lead", "id": confirmed.to_string(), "owner": "u-rep1"}));
    g.load(v.to_string()).await;
    let st = g.status().await;
    assert_eq!(st["learned"]["confirmed"], 1, "{st}");
    assert_eq!(st["learned"]["pending"], 0, "{st}");
    assert_eq!(
        lead_call(&g.h, "u-rep1", confirmed as u32).await,
        200,
        "the loaded owner"
    );
    assert_eq!(
        g.reassign(&[confirmed]).await.0,
        200,
        "u-rep1 reports to u-sm"
    );
}

#[test]
fn creates_config_errors_are_located() {
    for (creates, says) in [
        (
            "{ type = \"nope\", id = \"/id\" }",
            "creates.type: unknown record type 'nope'",
        ),
        (
            "{ type = \"lead\", id = \"id\" }",
            "creates.id: 'id' is neither",
        ),
        (
            "{ type = \"lead\", id = \"/id\", owner = \"admin\" }",
            "creates.owner",
        ),
        (
            "{ type = \"lead\", id = \"/id\", max_answer_bytes = 99999999 }",
            "creates.max_answer_bytes",
        ),
        (
            "{ type = \"lead\", id = \"/id\", extra = 1 }",
            "unknown field `extra`",
        ),
    ] {
        let text = learn_config(creates, "");
        let line = text
            .lines()
            .position(|l| l.starts_with("name = \"leads.create\""))
            .unwrap();
        let out = check_config_text(&text);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{creates}: {all}");
        assert!(all.contains(says), "{creates}: {all}");
        // The route's own line (its [[route]] header, just above its name), or the field's.
        assert!(
            all.contains(&format!(":{line}")) || all.contains(&format!(":{}", line + 5)),
            "{creates}: located: {all}"
        );
    }
    // A public route learns nothing.
    let text = learn_config("{ type = \"lead\", id = \"/id\" }", "").replacen(
        "permission = \"lead.create\"",
        "public = true",
        1,
    );
    let out = check_config_text(&text);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("creates: permgate knows no caller")
            || String::from_utf8_lossy(&out.stdout).contains("creates: permgate knows no caller")
    );
}
