//! End-to-end tests: a real server on 127.0.0.1:0, driven by reqwest (HTTP/1.1 and HTTP/2
//! prior knowledge) and by hand-written HTTP/1.1 over a plain `TcpStream`.

use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn start_with(options: CrmOptions) -> SampleCrm {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start(listener, options).await.expect("start")
}

async fn start_default() -> SampleCrm {
    start_with(CrmOptions::default()).await
}

/// A client that never goes through an environment proxy.
fn client() -> Client {
    Client::builder().no_proxy().build().expect("client")
}

fn url(crm: &SampleCrm, path: &str) -> String {
    format!("http://{}{path}", crm.local_addr())
}

/// Sends a request and returns the status and the body parsed as JSON (`Null` if empty).
async fn call(
    crm: &SampleCrm,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, url(crm, path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    (status, json)
}

async fn get(crm: &SampleCrm, path: &str) -> (StatusCode, Value) {
    call(crm, Method::GET, path, None).await
}

async fn post(crm: &SampleCrm, path: &str, body: Value) -> (StatusCode, Value) {
    call(crm, Method::POST, path, Some(body)).await
}

fn ids(list: &Value) -> Vec<u64> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_u64().expect("id"))
        .collect()
}

/// Minimal HTTP/1.1 exchange on an open connection: writes `request` verbatim and reads one
/// response (status, lowercase headers, body by Content-Length).
async fn raw_exchange(
    stream: &mut TcpStream,
    request: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, headers, body)
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let crm = start_default().await;
    let (status, body) = get(&crm, "/__crm/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    for path in [
        "/",
        "/api/v1",
        "/api/v1/nope",
        "/api/v1/leads/abc",
        "/api/v1/leads/-1",
        "/api/v1/leads/999",
        "/api/v1/leads/1/nope",
        "/api/v1/leads//1",
        "/api/v1/leads/1/notes/2/x",
        "/api/v2/leads",
        "/__crm/nope",
    ] {
        let (status, body) = get(&crm, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"], "not_found", "{path}");
        assert!(body["message"].is_string(), "{path}");
    }

    let response = client()
        .delete(url(&crm, "/api/v1/leads"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
}

#[tokio::test]
async fn seed_follows_the_documented_formulas() {
    let options = CrmOptions::default();
    let crm = start_with(options.clone()).await;
    assert_eq!(options.owner_of(1), Some("u-admin"));
    assert_eq!(options.owner_of(3), Some("u-rep1"));
    assert_eq!(options.owner_of(12), Some("u-rep2"));
    assert_eq!(options.owner_of(16), Some("u-member"));
    assert_eq!(options.creator_of(3), Some("u-rep2"));

    let counts = [
        ("customers", 60),
        ("leads", 40),
        ("deals", 20),
        ("campaigns", 8),
        ("threads", 30),
        ("canned-responses", 10),
        ("follow-ups", 6),
        ("notes", 50),
        ("tasks", 20),
        ("tags", 8),
        ("properties", 5),
        ("webhooks", 3),
        ("tokens", 3),
    ];
    for (coll, total) in counts {
        let (status, list) = get(&crm, &format!("/api/v1/{coll}?per_page=200")).await;
        assert_eq!(status, StatusCode::OK, "{coll}");
        assert_eq!(list["total"], total, "{coll}");
        let items = list["items"].as_array().expect("items");
        assert_eq!(items.len(), total, "{coll}");
        for (n, item) in (1u64..).zip(items) {
            assert_eq!(item["id"], n, "{coll}");
            assert_eq!(item["owner_id"].as_str(), options.owner_of(n), "{coll} {n}");
            assert_eq!(
                item["created_by"].as_str(),
                options.creator_of(n),
                "{coll} {n}"
            );
        }
    }

    // Notes and tasks: parent type cycles lead, customer, deal; parent id = (n - 1) / 3 + 1.
    let (_, note) = get(&crm, "/api/v1/notes/5").await;
    assert_eq!(note["parent"], json!({"type": "customer", "id": 2}));
    let (_, task) = get(&crm, "/api/v1/tasks/9").await;
    assert_eq!(task["parent"], json!({"type": "deal", "id": 3}));
    // Threads are assigned to their owner; campaigns target customers ≡ id (mod 8).
    let (_, thread) = get(&crm, "/api/v1/threads/5").await;
    assert_eq!(thread["assignee_id"], "u-csr");
    assert_eq!(thread["customer_id"], 5);
    let (_, campaign) = get(&crm, "/api/v1/campaigns/2").await;
    assert_eq!(
        campaign["contact_ids"],
        json!([2, 10, 18, 26, 34, 42, 50, 58])
    );

    let (_, team) = get(&crm, "/api/v1/team-members").await;
    assert_eq!(team["total"], 8);
    let (status, rep) = get(&crm, "/api/v1/team-members/u-rep1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rep["manager_id"], "u-sm");
    assert_eq!(rep["roles"], json!(["sales_rep"]));
    let (_, role) = get(&crm, "/api/v1/roles/sales_rep").await;
    assert_eq!(role["member_ids"], json!(["u-rep1", "u-rep2"]));
}

#[tokio::test]
async fn custom_owners() {
    let options = CrmOptions {
        owners: vec!["alice".into(), "u-rep1".into()],
        ..CrmOptions::default()
    };
    let crm = start_with(options).await;
    let (_, lead) = get(&crm, "/api/v1/leads/3").await;
    assert_eq!(lead["owner_id"], "alice");
    assert_eq!(lead["created_by"], "u-rep1");
    let (status, alice) = get(&crm, "/api/v1/team-members/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(alice["roles"], json!(["member"]));

    let crm = start_with(CrmOptions {
        owners: vec![],
        ..CrmOptions::default()
    })
    .await;
    let (_, lead) = get(&crm, "/api/v1/leads/3").await;
    assert_eq!(lead["owner_id"], Value::Null);
}

#[tokio::test]
async fn list_with_pagination() {
    let crm = start_default().await;
    let (status, first) = get(&crm, "/api/v1/leads").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["page"], 1);
    assert_eq!(first["per_page"], 25);
    assert_eq!(first["total"], 40);
    assert_eq!(ids(&first), (1..=25).collect::<Vec<_>>());

    let (_, second) = get(&crm, "/api/v1/leads?page=2&per_page=15").await;
    assert_eq!(ids(&second), (16..=30).collect::<Vec<_>>());
    let (_, last) = get(&crm, "/api/v1/leads?page=3&per_page=15").await;
    assert_eq!(ids(&last), (31..=40).collect::<Vec<_>>());
    let (_, beyond) = get(&crm, "/api/v1/leads?page=99").await;
    assert_eq!(ids(&beyond), Vec::<u64>::new());
    assert_eq!(beyond["total"], 40);

    for bad in [
        "per_page=201",
        "per_page=0",
        "page=0",
        "page=two",
        "per_page=-5",
    ] {
        let (status, body) = get(&crm, &format!("/api/v1/customers?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "invalid_pagination", "{bad}");
    }

    // Equality filters, e.g. the leads a rep owns.
    let (_, mine) = get(&crm, "/api/v1/leads?owner_id=u-rep1").await;
    assert_eq!(ids(&mine), vec![3, 11, 19, 27, 35]);
    assert_eq!(mine["total"], 5);
    let (_, open) = get(&crm, "/api/v1/threads?status=open&per_page=3").await;
    assert_eq!(ids(&open), vec![1, 5, 9]);
    assert_eq!(open["total"], 8);
}

#[tokio::test]
async fn get_patch_put_delete() {
    let crm = start_default().await;
    let (status, lead) = get(&crm, "/api/v1/leads/3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lead["owner_id"], "u-rep1");
    assert_eq!(lead["status"], "qualified");

    // Leading zeros name the same record, as in many legacy apps.
    let (status, same) = get(&crm, "/api/v1/leads/003").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["id"], 3);

    let (status, patched) = call(
        &crm,
        Method::PATCH,
        "/api/v1/leads/3",
        Some(json!({"status": "won", "id": 77, "custom": {"x": 1}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["id"], 3, "id cannot change");
    assert_eq!(patched["status"], "won");
    assert_eq!(patched["custom"], json!({"x": 1}));
    assert_eq!(patched["title"], lead["title"], "other fields kept");

    let (status, put) = call(
        &crm,
        Method::PUT,
        "/api/v1/leads/3",
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["value"], 1);
    assert_eq!(put["status"], "won");
    let (_, fetched) = get(&crm, "/api/v1/leads/3").await;
    assert_eq!(fetched["value"], 1);

    let (status, body) = call(&crm, Method::DELETE, "/api/v1/leads/3", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let (status, _) = get(&crm, "/api/v1/leads/3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&crm, Method::DELETE, "/api/v1/leads/3", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&crm, Method::PATCH, "/api/v1/leads/3", Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get(&crm, "/api/v1/leads").await;
    assert_eq!(list["total"], 39);

    // String-keyed collections.
    let (status, member) = call(
        &crm,
        Method::PATCH,
        "/api/v1/team-members/u-rep2",
        Some(json!({"name": "Robin R."})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(member["name"], "Robin R.");
    assert_eq!(member["id"], "u-rep2");
}

#[tokio::test]
async fn create_sets_owner_from_header_then_body() {
    let crm = start_default().await;
    let response = client()
        .post(url(&crm, "/api/v1/customers"))
        .header(USER_HEADER, "u-rep2")
        .json(&json!({"name": "New Co", "owner_id": "u-admin", "id": 5}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    assert_eq!(created["id"], 61);
    assert_eq!(created["owner_id"], "u-rep2");
    assert_eq!(created["created_by"], "u-rep2");
    assert_eq!(created["subscribed"], false, "defaults filled in");

    let (status, from_body) = post(&crm, "/api/v1/customers", json!({"owner_id": "u-rep1"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(from_body["id"], 62);
    assert_eq!(from_body["owner_id"], "u-rep1");
    assert_eq!(from_body["created_by"], Value::Null);

    let (_, nobody) = post(&crm, "/api/v1/leads", json!({"title": "x"})).await;
    assert_eq!(nobody["id"], 41);
    assert_eq!(nobody["owner_id"], Value::Null);
    assert_eq!(nobody["status"], "new");

    // Ids are never reused after a delete.
    call(&crm, Method::DELETE, "/api/v1/leads/41", None).await;
    let (_, next) = post(&crm, "/api/v1/leads", json!({})).await;
    assert_eq!(next["id"], 42);

    let (status, role) = post(
        &crm,
        "/api/v1/roles",
        json!({"id": "auditor", "name": "Auditor"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(role["id"], "auditor");
    let (status, body) = post(&crm, "/api/v1/roles", json!({"id": "auditor"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "conflict");
    let (status, generated) = post(&crm, "/api/v1/team-members", json!({"name": "Nina"})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(generated["id"], "u-9");
}

#[tokio::test]
async fn bad_json_is_400() {
    let crm = start_default().await;
    for (method, path) in [
        (Method::POST, "/api/v1/leads"),
        (Method::PATCH, "/api/v1/leads/1"),
        (Method::PUT, "/api/v1/customers/1"),
        (Method::POST, "/api/v1/leads/bulk-reassign"),
        (Method::POST, "/api/v1/threads/1/close"),
        (Method::PUT, "/api/v1/settings/billing"),
    ] {
        let response = client()
            .request(method.clone(), url(&crm, path))
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .expect("send");
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{method} {path}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "invalid_json", "{method} {path}");
    }
    for body in [json!([1, 2]), json!("text"), json!(5)] {
        let (status, reply) = post(&crm, "/api/v1/leads", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(reply["error"], "invalid_body");
    }
    // Nothing was changed by the rejected writes.
    let (_, list) = get(&crm, "/api/v1/leads").await;
    assert_eq!(list["total"], 40);
}

#[tokio::test]
async fn bulk_reassign_with_unknown_ids() {
    let crm = start_default().await;
    let (status, result) = post(
        &crm,
        "/api/v1/leads/bulk-reassign",
        json!({"ids": [3, 4, 999, "abc", "5", 3, null], "owner_id": "u-rep2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["updated"], json!([3, 4, 5]));
    assert_eq!(result["not_found"], json!([999, "abc", null]));
    for id in [3, 4, 5] {
        let (_, lead) = get(&crm, &format!("/api/v1/leads/{id}")).await;
        assert_eq!(lead["owner_id"], "u-rep2");
    }
    let (_, untouched) = get(&crm, "/api/v1/leads/6").await;
    assert_eq!(untouched["owner_id"], "u-mm");

    let (status, body) = post(&crm, "/api/v1/leads/bulk-reassign", json!({"ids": [1]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "owner_id is required");
    assert_eq!(body["error"], "invalid_request");
    let (status, _) = get(&crm, "/api/v1/leads/bulk-reassign").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Deals too (the demo's bulk route).
    let (status, result) = post(
        &crm,
        "/api/v1/deals/bulk-reassign",
        json!({"ids": [4, 12, 99], "owner_id": "u-rep1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["updated"], json!([4, 12]));
    assert_eq!(result["not_found"], json!([99]));
    let (_, deal) = get(&crm, "/api/v1/deals/12").await;
    assert_eq!(deal["owner_id"], "u-rep1");

    let (status, deleted) = post(
        &crm,
        "/api/v1/customers/bulk-delete",
        json!({"ids": [1, 2, 1000]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted, json!({"deleted": [1, 2], "not_found": [1000]}));
    let (_, customers) = get(&crm, "/api/v1/customers").await;
    assert_eq!(customers["total"], 58);

    let (status, tagged) = post(
        &crm,
        "/api/v1/threads/bulk-tag",
        json!({"ids": [1, 2, 31], "tags": ["urgent", "billing"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tagged["updated"], json!([1, 2]));
    assert_eq!(tagged["not_found"], json!([31]));
    let (_, thread) = get(&crm, "/api/v1/threads/2").await;
    assert_eq!(thread["tags"], json!(["billing", "urgent"]));
}

#[tokio::test]
async fn sub_resources_and_actions() {
    let crm = start_default().await;

    // Notes under their parents.
    let (status, notes) = get(&crm, "/api/v1/leads/2/notes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&notes), vec![4]);
    let (status, note) = post(&crm, "/api/v1/leads/2/notes", json!({"body": "Called"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(note["id"], 51);
    assert_eq!(note["parent"], json!({"type": "lead", "id": 2}));
    let (_, notes) = get(&crm, "/api/v1/leads/2/notes").await;
    assert_eq!(ids(&notes), vec![4, 51]);
    let (_, customer_notes) = get(&crm, "/api/v1/customers/1/notes").await;
    assert_eq!(ids(&customer_notes), vec![2]);
    let (status, _) = get(&crm, "/api/v1/leads/404/notes").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(&crm, "/api/v1/deals/3/notes", json!({"body": "x"})).await;
    assert_eq!(status, StatusCode::OK);

    // Customers.
    let (status, result) = post(&crm, "/api/v1/customers/5/subscribe", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["subscribed"], true);
    assert_eq!(result["previously_subscribed"], false);
    let (_, result) = post(&crm, "/api/v1/customers/5/unsubscribe", json!({})).await;
    assert_eq!(result["subscribed"], false);
    let response = client()
        .post(url(&crm, "/api/v1/customers/4/photo"))
        .header("content-type", "image/jpeg")
        .body(vec![0xFFu8, 0xD8, 0xFF, 0x00, 0x01])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let photo: Value = response.json().await.expect("json");
    assert_eq!(photo["bytes"], 5);
    let (_, customer) = get(&crm, "/api/v1/customers/4").await;
    assert_eq!(customer["photo_url"], photo["photo_url"]);

    // Lead conversion creates a customer and a deal owned by the lead's owner.
    let (status, converted) = post(&crm, "/api/v1/leads/3/convert", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(converted["customer_id"], 61);
    assert_eq!(converted["deal_id"], 21);
    assert_eq!(converted["lead"]["status"], "converted");
    let (_, customer) = get(&crm, "/api/v1/customers/61").await;
    assert_eq!(customer["owner_id"], "u-rep1");
    let (status, again) = post(&crm, "/api/v1/leads/3/convert", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["error"], "already_converted");

    // Campaigns.
    let (status, added) = post(
        &crm,
        "/api/v1/campaigns/1/contacts",
        json!({"customer_ids": [2, 9, 999, "x"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(added["added"], json!([2]));
    assert_eq!(added["already_present"], json!([9]));
    assert_eq!(added["not_found"], json!([999, "x"]));
    let (status, _) = post(
        &crm,
        "/api/v1/campaigns/99/contacts",
        json!({"customer_ids": [1]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, results) = get(&crm, "/api/v1/campaigns/3/results").await;
    assert_eq!(results["status"], "running");
    assert_eq!(results["sent"], 8);
    let (status, launched) = post(&crm, "/api/v1/campaigns/1/launch", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(launched["recipients"], 9);
    let (status, _) = post(&crm, "/api/v1/campaigns/1/launch", json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Threads.
    let (_, messages) = get(&crm, "/api/v1/threads/2/messages").await;
    assert_eq!(ids(&messages), vec![3, 4]);
    let response = client()
        .post(url(&crm, "/api/v1/threads/2/messages"))
        .header(USER_HEADER, "u-csr")
        .json(&json!({"body": "On it!"}))
        .send()
        .await
        .expect("send");
    let message: Value = response.json().await.expect("json");
    assert_eq!(message["id"], 61);
    assert_eq!(message["author_id"], "u-csr");
    let (status, _) = post(&crm, "/api/v1/threads/2/messages", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, assigned) = post(
        &crm,
        "/api/v1/threads/2/assign",
        json!({"assignee_id": "u-csr"}),
    )
    .await;
    assert_eq!(assigned["previous_assignee_id"], "u-sm");
    assert_eq!(assigned["assignee_id"], "u-csr");
    let (_, snoozed) = post(
        &crm,
        "/api/v1/threads/2/snooze",
        json!({"until": "2030-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(snoozed["status"], "snoozed");
    let (_, closed) = post(&crm, "/api/v1/threads/2/close", json!({})).await;
    assert_eq!(closed["previous_status"], "snoozed");
    let (_, tags) = post(
        &crm,
        "/api/v1/threads/2/tags",
        json!({"tags": ["vip", "billing"]}),
    )
    .await;
    assert_eq!(tags["added"], json!(["vip"]));
    let (status, attachment) = post(
        &crm,
        "/api/v1/threads/2/attachments",
        json!({"filename": "a.pdf"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(attachment["attachment"]["filename"], "a.pdf");
    let (_, thread) = get(&crm, "/api/v1/threads/2").await;
    assert_eq!(thread["status"], "closed");
    assert_eq!(thread["assignee_id"], "u-csr");
    assert_eq!(thread["snoozed_until"], Value::Null);

    // Follow-ups and canned responses.
    let (_, cloned) = post(&crm, "/api/v1/follow-ups/2/clone", json!({})).await;
    assert_eq!(cloned["follow_up"]["id"], 7);
    assert_eq!(cloned["follow_up"]["status"], "paused");
    assert_eq!(cloned["follow_up"]["customer_ids"], json!([2, 8, 14]));
    let (_, results) = get(&crm, "/api/v1/follow-ups/1/results").await;
    assert_eq!(results["enrolled"], 3);
    let (_, enrolled) = post(
        &crm,
        "/api/v1/follow-ups/1/customers",
        json!({"customer_ids": [30]}),
    )
    .await;
    assert_eq!(enrolled["added"], json!([30]));
    let (_, shared) = post(
        &crm,
        "/api/v1/canned-responses/1/share",
        json!({"team_member_ids": ["u-csr", "ghost"]}),
    )
    .await;
    assert_eq!(shared["shared_with"], json!(["u-csr"]));
    assert_eq!(shared["not_found"], json!(["ghost"]));
    let (status, _) = get(&crm, "/api/v1/canned-responses/1/share").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn company_endpoints() {
    let crm = start_default().await;
    let (status, settings) = get(&crm, "/api/v1/settings").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(settings["company_name"], "Acme Widgets Inc.");
    for section in [
        "billing",
        "timezone",
        "away-messages",
        "call-forwarding",
        "url-shortening",
        "number",
    ] {
        let (status, body) = get(&crm, &format!("/api/v1/settings/{section}")).await;
        assert_eq!(status, StatusCode::OK, "{section}");
        assert!(body.is_object(), "{section}");
    }
    let (status, billing) = call(
        &crm,
        Method::PUT,
        "/api/v1/settings/billing",
        Some(json!({"seats": 30})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(billing["seats"], 30);
    assert_eq!(billing["plan"], "business");
    let (status, _) = get(&crm, "/api/v1/settings/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for name in ["slack", "calendly", "facebook"] {
        let (status, _) = get(&crm, &format!("/api/v1/integrations/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{name}");
    }
    let (_, slack) = call(
        &crm,
        Method::PUT,
        "/api/v1/integrations/slack",
        Some(json!({"channel": "#sales"})),
    )
    .await;
    assert_eq!(slack["channel"], "#sales");

    let (_, analytics) = get(&crm, "/api/v1/analytics").await;
    assert_eq!(analytics["customers"]["total"], 60);
    assert_eq!(analytics["deals"]["amount_total"], 2500 * 210);

    let (status, found) = get(&crm, "/api/v1/search?q=olivia+SMITH").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["customers"][0]["id"], 1);
    let (status, _) = get(&crm, "/api/v1/search").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, invite) = post(
        &crm,
        "/api/v1/team-members/invite",
        json!({"email": "new@acme-widgets.example", "role": "sales_rep"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(invite["status"], "pending");
    let (status, _) = post(
        &crm,
        "/api/v1/team-members/invite",
        json!({"email": "rep1@acme-widgets.example"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, export) = post(&crm, "/api/v1/export", json!({"collection": "leads"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(export["status"], "queued");
    let export_id = export["export_id"].as_u64().expect("export id");
    let (status, done) = get(&crm, &format!("/api/v1/export/{export_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["status"], "completed");
    let (status, _) = get(&crm, "/api/v1/export/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_log_records_and_skips_hooks() {
    let crm = start_default().await;
    let response = client()
        .post(url(&crm, "/api/v1/leads?source=test&x=%2F"))
        .header("X-Permgate-User", "u-rep1")
        .header("x-trace", "caf\u{e9}")
        .body(r#"{"title":"Logged"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    get(&crm, "/__crm/health").await;
    get(&crm, "/api/v1/leads/1").await;

    let log = crm.requests();
    assert_eq!(log.len(), 2, "hooks are not recorded: {log:#?}");
    let first = &log[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.target, "/api/v1/leads?source=test&x=%2F");
    assert_eq!(first.version, "HTTP/1.1");
    assert_eq!(first.body, r#"{"title":"Logged"}"#);
    assert_eq!(first.header("x-permgate-user"), Some("u-rep1"));
    assert_eq!(first.header("x-trace"), Some("caf\u{e9}"));
    assert_eq!(
        first.header("host").map(str::to_owned),
        Some(crm.local_addr().to_string())
    );
    assert!(first.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(log[1].method, "GET");
    assert_eq!(log[1].target, "/api/v1/leads/1");
    assert_eq!(log[1].body, "");

    // The HTTP view of the log matches the in-process one.
    let (status, over_http) = get(&crm, "/__crm/requests").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(over_http, serde_json::to_value(&log).expect("serialize"));

    let (status, _) = call(&crm, Method::DELETE, "/__crm/requests", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(crm.requests().is_empty());

    get(&crm, "/api/v1/deals").await;
    assert_eq!(crm.requests().len(), 1);
    crm.clear_requests();
    assert!(crm.requests().is_empty());
}

#[tokio::test]
async fn request_log_is_a_bounded_ring() {
    let crm = start_with(CrmOptions {
        request_log_capacity: 3,
        ..CrmOptions::default()
    })
    .await;
    for n in 1..=5 {
        get(&crm, &format!("/api/v1/customers/{n}")).await;
    }
    let targets: Vec<String> = crm.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/api/v1/customers/3",
            "/api/v1/customers/4",
            "/api/v1/customers/5"
        ]
    );
}

#[tokio::test]
async fn raw_http1_keep_alive_and_exact_targets() {
    let crm = start_default().await;
    let mut stream = TcpStream::connect(crm.local_addr()).await.expect("connect");
    let (status, headers, body) = raw_exchange(
        &mut stream,
        b"GET /api/v1/customers/007?a=%41&b=c+d HTTP/1.1\r\nHost: crm\r\nX-B: 2\r\nX-A: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    let customer: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(customer["id"], 7);

    // Same connection: keep-alive. A body with Content-Length, invalid JSON.
    let (status, _, body) = raw_exchange(
        &mut stream,
        b"PATCH /api/v1/customers/7 HTTP/1.1\r\nHost: crm\r\nContent-Length: 5\r\n\r\n{oops",
    )
    .await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(error["error"], "invalid_json");

    // Percent-encoded path segments are decoded one at a time.
    let (status, _, body) = raw_exchange(
        &mut stream,
        b"GET /api/v1/team-members/u%2Drep1 HTTP/1.1\r\nHost: crm\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let member: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(member["id"], "u-rep1");

    let log = crm.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].target, "/api/v1/customers/007?a=%41&b=c+d");
    assert_eq!(
        log[0].headers,
        vec![
            ("host".to_owned(), "crm".to_owned()),
            ("x-b".to_owned(), "2".to_owned()),
            ("x-a".to_owned(), "1".to_owned()),
        ]
    );
    assert_eq!(log[1].method, "PATCH");
    assert_eq!(log[1].body, "{oops");
    assert_eq!(log[2].target, "/api/v1/team-members/u%2Drep1");
}

#[tokio::test]
async fn delay_header() {
    let crm = start_default().await;
    let started = Instant::now();
    let response = client()
        .get(url(&crm, "/api/v1/leads/1"))
        .header(DELAY_HEADER, "150")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // A client with a shorter timeout gives up; the request still reached the CRM.
    crm.clear_requests();
    let result = client()
        .get(url(&crm, "/api/v1/leads/2"))
        .header(DELAY_HEADER, "5000")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    assert_eq!(crm.requests().len(), 1);

    for bad in ["-1", "60001", "soon", ""] {
        let response = client()
            .get(url(&crm, "/api/v1/leads/1"))
            .header(DELAY_HEADER, bad)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let crm = start_default().await;
    let h2 = Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2
        .get(url(&crm, "/api/v1/deals?page=2&per_page=5"))
        .header(USER_HEADER, "u-sm")
        .send()
        .await
        .expect("send");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let list: Value = response.json().await.expect("json");
    assert_eq!(ids(&list), vec![6, 7, 8, 9, 10]);

    let response = h2
        .post(url(&crm, "/api/v1/deals"))
        .json(&json!({"name": "h2 deal"}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);

    let log = crm.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].version, "HTTP/2.0");
    assert_eq!(log[0].target, "/api/v1/deals?page=2&per_page=5");
    assert_eq!(log[0].header(USER_HEADER), Some("u-sm"));
    assert_eq!(log[1].body, r#"{"name":"h2 deal"}"#);
}

#[tokio::test]
async fn garbage_never_takes_the_server_down() {
    let crm = start_default().await;
    let paths = [
        "/api/v1/leads/%",
        "/api/v1/leads/%FF%FE",
        "/api/v1/leads/18446744073709551616",
        "/api/v1/leads/18446744073709551615/notes",
        "/api/v1/customers/1/notes?page=999999999999999999999",
        "/api/v1/leads?page=18446744073709551615&per_page=200",
        "/api/v1/search?q=%",
        "/api/v1/team-members/%00",
        "/api/v1/export/abc",
        "/api/v1/settings/%2E%2E",
        "/__crm",
    ];
    for path in paths {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let response = client()
                .request(method.clone(), url(&crm, path))
                .body("\u{0}\u{ffff}[[[")
                .send()
                .await
                .expect("send");
            assert!(
                response.status().is_client_error() || response.status().is_success(),
                "{method} {path}: {}",
                response.status()
            );
        }
    }
    // Deeply nested JSON hits serde_json's recursion limit, not the stack.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = client()
        .post(url(&crm, "/api/v1/leads"))
        .body(nested)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Wrong types in otherwise valid bodies.
    for (path, body) in [
        (
            "/api/v1/leads/bulk-reassign",
            json!({"ids": "1", "owner_id": 5}),
        ),
        ("/api/v1/threads/bulk-tag", json!({"ids": [1], "tags": [1]})),
        ("/api/v1/campaigns/1/contacts", json!({"customer_ids": {}})),
        ("/api/v1/threads/1/assign", json!({"assignee_id": 3})),
        ("/api/v1/threads/1/snooze", json!({"until": false})),
        (
            "/api/v1/canned-responses/1/share",
            json!({"team_member_ids": null}),
        ),
        ("/api/v1/team-members/invite", json!({"email": ["x"]})),
        ("/api/v1/export", json!({"collection": 1})),
        ("/api/v1/roles", json!({"id": 7})),
    ] {
        let (status, reply) = post(&crm, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(reply["error"].is_string(), "{path}");
    }
    let (status, _) = get(&crm, "/__crm/health").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let crm = start_default().await;
    let response = client()
        .post(url(&crm, "/api/v1/leads"))
        .body(vec![b' '; MAX_BODY_BYTES + 1])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let log = crm.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body, "");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let crm = start_default().await;
    let addr = crm.local_addr();
    // An idle keep-alive connection must not keep the server alive.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let (status, _, _) = raw_exchange(
        &mut idle,
        b"GET /__crm/health HTTP/1.1\r\nHost: crm\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);

    crm.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "open connections are closed too: {read:?}"
    );
}
