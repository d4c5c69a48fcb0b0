//! `[[resource]]` (issue 16 item 5) through the real binary: the worked example
//! (config/examples/resources/: a Django REST style CRM, UUID ids, trailing slashes) in front of
//! a real local CRM of that style on 127.0.0.1, which records every call it receives. Allowed
//! and denied calls per role, paths that must not match, bulk trimming and list filtering on
//! expanded routes, `explain` naming the resource, `check-config` listing and refusing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

use common::*;

/// Leads of the example's snapshot: u-rep's own, u-rep2's, and u-rep2's shared with u-rep.
const LEAD_REP: &str = "6f1c2a3e-0b4d-4c5e-8f60-718293a4b5c6";
const LEAD_REP2: &str = "7a2d3b4f-1c5e-4d6f-9071-8293a4b5c6d7";
const LEAD_SHARED: &str = "8b3e4c50-2d6f-4e70-a182-93a4b5c6d7e8";
/// A case of the support team (u-support2's), and one of u-admin's.
const CASE_SUPPORT: &str = "ad506e72-4f81-4092-83a4-b5c6d7e8f9a0";
const CASE_OTHER: &str = "be617f83-5092-41a3-94b5-c6d7e8f9a0b1";

fn example() -> std::path::PathBuf {
    repo().join("config/examples/resources/permgate.toml")
}

/// One call as the CRM received it: method, path, body.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A Django REST style CRM: `GET /api/leads/` answers a paginated page of the three leads,
/// anything else `{"ok": true}`. Every call is recorded with its body.
async fn django_crm() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        log.lock().unwrap().push((
                            method.clone(),
                            path.clone(),
                            String::from_utf8_lossy(&body).into_owned(),
                        ));
                        let answer = if method == "GET" && path == "/api/leads/" {
                            format!(
                                r#"{{"count": 3, "next": null, "previous": null, "results": [{{"id": "{LEAD_REP}", "title": "a"}}, {{"id": "{LEAD_REP2}", "title": "b"}}, {{"id": "{LEAD_SHARED}", "title": "c"}}]}}"#
                            )
                        } else {
                            r#"{"ok": true}"#.to_string()
                        };
                        let mut r = Response::new(Full::new(Bytes::from(answer)));
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, hyper::Error>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct Crm {
    h: Harness,
    seen: Seen,
}

impl Crm {
    async fn start() -> Crm {
        let (addr, seen) = django_crm().await;
        let h = Harness::start_custom(&example(), Some(addr)).await;
        Crm { h, seen }
    }

    /// Send a call as `user`; the status, the JSON answer, its headers, and what reached the
    /// CRM (`None`: nothing).
    async fn call(
        &self,
        user: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (
        u16,
        serde_json::Value,
        reqwest::header::HeaderMap,
        Option<(String, String, String)>,
    ) {
        self.seen.lock().unwrap().clear();
        let mut req = client()
            .request(method.parse().unwrap(), self.h.url(path))
            .header("authorization", bearer(user));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        let seen = self.seen.lock().unwrap().clone();
        assert!(seen.len() <= 1, "{seen:?}");
        (status, json, headers, seen.into_iter().next())
    }
}

#[tokio::test]
async fn expanded_routes_allow_each_role_what_it_holds() {
    let crm = Crm::start().await;
    let lead = |id: &str| format!("/api/leads/{id}/");
    // (user, method, path): forwarded as sent, the CRM's answer back.
    for (user, method, path) in [
        ("u-rep", "GET", lead(LEAD_REP)),                              // own
        ("u-rep", "GET", lead(LEAD_SHARED)),                           // shared with u-rep
        ("u-rep", "PATCH", lead(LEAD_REP)),                            // update@own
        ("u-rep", "PUT", lead(LEAD_REP)),                              // update covers PUT too
        ("u-rep", "POST", "/api/leads/".into()),                       // create
        ("u-admin", "DELETE", lead(LEAD_REP2)),                        // admin: everything
        ("u-support", "PATCH", format!("/api/cases/{CASE_SUPPORT}/")), // the team's case
        ("u-viewer", "GET", format!("/api/cases/{CASE_OTHER}/")),      // view@all
        ("u-rep", "POST", format!("/api/leads/{LEAD_REP}/comments/")), // a comment updates the lead
        (
            "u-rep",
            "GET",
            format!("/api/leads/{LEAD_SHARED}/attachments/"),
        ),
        ("u-support", "GET", "/api/cases/solutions/".into()), // a literal beside {id:uuid}
    ] {
        let body = (method != "GET" && method != "DELETE").then_some(r#"{"status": "won"}"#);
        let (status, json, _, seen) = crm.call(user, method, &path, body).await;
        assert_eq!(
            (status, &json["ok"]),
            (200, &serde_json::json!(true)),
            "{user} {method} {path}: {json}"
        );
        let (m, p, _) =
            seen.unwrap_or_else(|| panic!("{user} {method} {path} did not reach the CRM"));
        assert_eq!((m.as_str(), p.as_str()), (method, path.as_str()));
    }

    // The list route filters the page to what the caller may see, count included.
    let (status, json, _, seen) = crm.call("u-rep", "GET", "/api/leads/", None).await;
    assert_eq!(status, 200, "{json}");
    assert!(seen.is_some());
    let ids: Vec<&str> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [LEAD_REP, LEAD_SHARED], "{json}");
    assert_eq!(json["count"], 2, "{json}");
    let (_, json, _, _) = crm.call("u-admin", "GET", "/api/leads/", None).await;
    assert_eq!(json["results"].as_array().unwrap().len(), 3, "{json}");

    // Bulk update: only the caller's own lead reaches the CRM; the removed one is named.
    let body =
        format!(r#"{{"ids": ["{LEAD_REP}", "{LEAD_REP2}"], "changes": {{"status": "won"}}}}"#);
    let (status, _, headers, seen) = crm
        .call("u-rep", "PATCH", "/api/leads/bulk/", Some(&body))
        .await;
    assert_eq!(status, 200);
    let (_, _, forwarded) = seen.unwrap();
    let forwarded: serde_json::Value = serde_json::from_str(&forwarded).unwrap();
    assert_eq!(
        forwarded["ids"],
        serde_json::json!([LEAD_REP]),
        "{forwarded}"
    );
    assert_eq!(forwarded["changes"]["status"], "won");
    assert_eq!(
        headers
            .get("x-permgate-removed-ids")
            .and_then(|v| v.to_str().ok()),
        Some(LEAD_REP2)
    );
    // Bulk delete: DELETE with a body, forwarded (the expansion allows the body it trims).
    let body = format!(r#"{{"ids": ["{LEAD_REP}", "{LEAD_REP2}"]}}"#);
    let (status, _, _, seen) = crm
        .call("u-admin", "DELETE", "/api/leads/bulk/", Some(&body))
        .await;
    assert_eq!(status, 200);
    let (m, p, b) = seen.unwrap();
    assert_eq!((m.as_str(), p.as_str()), ("DELETE", "/api/leads/bulk/"));
    assert!(b.contains(LEAD_REP) && b.contains(LEAD_REP2), "{b}");
}

#[tokio::test]
async fn expanded_routes_deny_with_the_code_and_the_missing_permission() {
    let crm = Crm::start().await;
    // No lead.delete for a sales rep: 403 forbidden naming it, nothing forwarded.
    let (status, json, headers, seen) = crm
        .call("u-rep", "DELETE", &format!("/api/leads/{LEAD_REP}/"), None)
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (403, Some("forbidden")),
        "{json}"
    );
    assert_eq!(json["permission"], "lead.delete", "{json}");
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap();
    assert_eq!(json["request_id"], request_id, "{json}");
    assert!(seen.is_none());
    // The permission, but not on this record.
    for (user, method, path) in [
        ("u-rep", "GET", format!("/api/leads/{LEAD_REP2}/")),
        ("u-rep", "PATCH", format!("/api/leads/{LEAD_SHARED}/")), // shared to view, not update
        ("u-rep", "POST", format!("/api/leads/{LEAD_REP2}/comments/")), // the parent is checked
        ("u-support", "GET", format!("/api/cases/{CASE_OTHER}/")),
    ] {
        let body = (method != "GET").then_some("{}");
        let (status, json, _, seen) = crm.call(user, method, &path, body).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (403, Some("record_forbidden")),
            "{user} {method} {path}: {json}"
        );
        assert!(seen.is_none(), "{user} {method} {path}");
    }
    // A bulk call with nothing the caller may touch.
    let body = format!(r#"{{"ids": ["{LEAD_REP2}"], "changes": {{}}}}"#);
    let (status, json, _, seen) = crm
        .call("u-rep", "PATCH", "/api/leads/bulk/", Some(&body))
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (403, Some("bulk_forbidden")),
        "{json}"
    );
    assert!(seen.is_none());
}

#[tokio::test]
async fn paths_that_are_not_an_item_never_match_the_item_routes() {
    let crm = Crm::start().await;
    for (method, path) in [
        ("GET", "/api/leads/bulk/".to_string()), // bulk routes PATCH and DELETE only
        ("PUT", "/api/leads/bulk/".to_string()), // never passed down to {id:uuid}
        ("GET", "/api/leads/import/".to_string()), // POST only
        ("GET", "/api/leads/12345/".to_string()), // not a UUID
        ("GET", "/api/leads/solutions/".to_string()),
        ("GET", format!("/api/leads/{LEAD_REP}")), // no trailing slash: strict
        ("GET", format!("/api/leads/{LEAD_REP}x/")),
        ("DELETE", format!("/api/leads/{LEAD_REP}/comments/7/")), // the comment id is a UUID
    ] {
        let (status, json, _, seen) = crm.call("u-admin", method, &path, None).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (404, Some("route_not_found")),
            "{method} {path}: {json}"
        );
        assert!(seen.is_none(), "{method} {path} reached the CRM");
    }
}

fn explain(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("explain")
        .arg("--config")
        .arg(example())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_names_the_resource_a_route_came_from() {
    let text = std::fs::read_to_string(example()).unwrap();
    let line = |needle: &str| text.lines().position(|l| l == needle).unwrap() + 1;
    // A sub-route's origin is its own [[resource.sub]] block.
    let comments = line("name = \"comments\"") - 1;
    let path = format!("/api/leads/{LEAD_REP}/comments/");
    let (code, out) = explain(&["--user", "u-rep", "POST", &path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "route:      leads.comments.create (declared at resource 'leads' at {}:{comments})",
            example().display()
        )),
        "{out}"
    );
    assert!(out.contains("needs:      lead.update"), "{out}");
    let (code, out) = explain(&[
        "--json",
        "--user",
        "u-rep",
        "DELETE",
        &format!("/api/leads/{LEAD_REP}/"),
    ]);
    assert_eq!(code, 3, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["route"]["resource"], "leads", "{j}");
    assert_eq!(j["route"]["name"], "leads.delete", "{j}");
    assert_eq!(j["code"], "forbidden", "{j}");
    // A hand-written route has no resource.
    let (_, out) = explain(&["--json", "--user", "u-rep", "POST", "/api/leads/import/"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["route"]["name"], "leads.import");
    assert_eq!(j["route"]["resource"], serde_json::Value::Null);
    assert_eq!(
        j["route"]["declared_at"],
        format!(
            "{}:{}",
            example().display(),
            line("name = \"leads.import\"") - 1
        )
    );
}

#[test]
fn the_example_checks_out_in_well_under_a_quarter_of_the_blocks() {
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(example())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("routes:      84\n"), "{stdout}");
    assert!(
        stdout.contains("resources:   6 (expanded to 79 of the 84 routes)\n"),
        "{stdout}"
    );
    // Every expanded route is listed under its resource: 13 per module, and leads' convert.
    let listed = stdout.lines().filter(|l| l.starts_with("      ")).count();
    assert_eq!(listed, 79, "{stdout}");
    for (module, group) in [
        ("leads", "lead"),
        ("accounts", "account"),
        ("contacts", "contact"),
        ("opportunities", "opportunity"),
        ("cases", "case"),
        ("tasks", "task"),
    ] {
        assert!(
            stdout.contains(&format!("    {module} (")),
            "{module}: {stdout}"
        );
        let bulk_delete = format!(
            "DELETE /api/{module}/bulk/ {module}.bulk_delete needs {group}.delete, trims bulk items"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == bulk_delete),
            "{bulk_delete}: {stdout}"
        );
    }
    // The blocks that declare routes: the real CRM needed 184 [[route]] blocks; a quarter is 46.
    let text = std::fs::read_to_string(example()).unwrap();
    let blocks = text
        .lines()
        .filter(|l| {
            ["[[route]]", "[[resource]]", "[[resource.sub]]"]
                .iter()
                .any(|b| l.split_whitespace().next() == Some(*b))
        })
        .count();
    assert_eq!(blocks, 24);
    // Well under a quarter (46): at most two thirds of it.
    assert!(blocks <= 184 / 4 * 2 / 3, "{blocks} blocks");
    // And its policy tests pass.
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("test")
        .arg(repo().join("config/examples/resources/policy-tests.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The demo config with a lead record type of UUID ids and `extra` appended.
fn with(extra: &str) -> String {
    demo_config_text() + "\n[[record_type]]\nname = \"lead\"\nid = \"uuid\"\n" + extra
}

const LEADS: &str = "\n[[resource]]\nname = \"crm_leads\"\npath = \"/api/leads/\"\nid = \"uuid\"\nrecord_type = \"lead\"\npermission_group = \"lead\"\n";

#[test]
fn check_config_refuses_bad_resources_with_located_errors() {
    let good = check_config_text(&with(LEADS));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let said = String::from_utf8_lossy(&good.stdout);
    assert!(
        said.contains("resources:   1 (expanded to 5 of the 93 routes)"),
        "{said}"
    );
    for (extra, needle, expected) in [
        (
            format!("{LEADS}actions = [\"list\", \"erase\"]\n"),
            "erase",
            "unknown variant `erase`".to_string(),
        ),
        (LEADS.replace("\"uuid\"\nrecord", "\"guid\"\nrecord"), "guid", "resource[0].id: 'guid' is not uuid, int or regex:<pattern>".into()),
        (LEADS.replace("\"/api/leads/\"", "\"api/leads/\""), "api/leads/", "resource[0].path: 'api/leads/': the collection path starts with '/'".into()),
        (
            LEADS.replace("group = \"lead\"", "group = \"leads\""),
            "group = \"leads\"",
            "resource[0].permission_group: unknown permission 'leads.view' (from permission_group 'leads' + 'view'; not in the catalogue)".into(),
        ),
        (
            format!("{LEADS}\n[[route]]\nname = \"mine\"\nmethods = [\"DELETE\"]\npath = \"/api/leads/{{id:uuid}}/\"\npermission = \"lead.delete\"\n"),
            "name = \"mine\"",
            "route: route '/api/leads/{id:uuid}/' conflicts with the route at resource 'crm_leads' at ".into(),
        ),
    ] {
        let text = with(&extra);
        let out = check_config_text(&text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {stderr}");
        let mut line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        if needle.starts_with("name = ") {
            line -= 1; // a route's errors are at its [[route]] line
        }
        assert!(
            stderr.lines().any(|l| l.starts_with("error: ") && l.contains(&format!("c.toml:{line}: ")) && l.contains(&expected)),
            "expected line {line}: {expected}\n{stderr}"
        );
        assert!(stderr.contains("the config is refused"), "{stderr}");
    }
}
