//! Table-driven role × route decisions (`tests/data/role_routes.toml`), through the real gateway
//! and the real sample CRM: allowed calls reach the CRM exactly once, canonical, with the
//! caller's identity headers; denied calls get 403 naming the permission and reach nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::*;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    route: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    method: String,
    path: String,
    permission: String,
    #[serde(default)]
    body: Option<String>,
    allow: Vec<String>,
}

/// Every user of the demo snapshot that the table covers, with the roles header they carry.
const USERS: [(&str, &str); 7] = [
    ("u-admin", "admin"),
    ("u-sm", "sales_manager"),
    ("u-rep1", "sales_rep"),
    ("u-csr", "customer_service_rep"),
    ("u-mm", "marketing_manager"),
    ("u-da", "data_analyst"),
    ("u-member", "member,campaign_cleaner"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_against_representative_routes() {
    let text = std::fs::read_to_string(repo().join("tests/data/role_routes.toml")).unwrap();
    let table: Table = toml::from_str(&text).unwrap();
    assert!(table.route.len() >= 20);
    let h = Harness::demo().await;
    let http = client();
    let mut checked = 0;
    for case in &table.route {
        for (user, roles) in USERS {
            h.clear();
            let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
            let mut req = http
                .request(method, h.url(&case.path))
                .header("authorization", bearer(user));
            if let Some(b) = &case.body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let request_id = resp
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_string())
                .expect("every response has a request id");
            let body = resp.text().await.unwrap();
            let got = h.received();
            let what = format!("{user} {} {} → {status} {body}", case.method, case.path);
            if case.allow.iter().any(|u| u == user) {
                assert_eq!(got.len(), 1, "allowed call must reach the CRM once: {what}");
                let r = &got[0];
                assert_eq!(r.method, case.method, "{what}");
                assert_eq!(r.target, case.path, "{what}");
                assert_eq!(recorded_header(r, "x-permgate-user"), vec![user], "{what}");
                assert_eq!(
                    recorded_header(r, "x-permgate-roles"),
                    vec![roles],
                    "{what}"
                );
                assert_eq!(
                    recorded_header(r, "x-request-id"),
                    vec![request_id.as_str()],
                    "{what}"
                );
                if let Some(b) = &case.body {
                    assert_eq!(&r.body, b, "the body is forwarded unchanged: {what}");
                }
                assert!(status != 401 && status != 403, "{what}");
            } else {
                assert_eq!(status, 403, "{what}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"], "forbidden", "{what}");
                assert_eq!(v["permission"], case.permission.as_str(), "{what}");
                assert_eq!(v["request_id"], request_id.as_str(), "{what}");
                assert!(
                    got.is_empty(),
                    "a denied call must not reach the CRM: {what}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, table.route.len() * USERS.len());
    // Every decision above is in the decision log with its request id.
    let mut log = String::new();
    for _ in 0..100 {
        log = h.log_text();
        if log.matches("\"request_id\"").count() >= checked {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        log.matches("\"request_id\"").count() >= checked,
        "one decision line per call"
    );
    assert!(log.contains("\"decision\":\"deny\"") && log.contains("\"reason\":\"forbidden\""));
}
