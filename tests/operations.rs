//! Operating permgate: the decision log, metrics, shadow mode, and `explain`/`test` agreeing
//! with the live gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::process::Command;

use common::*;

struct Gw {
    h: Harness,
    admin: String,
    dir: tempfile::TempDir,
}

/// Send `sig` (`TERM`, `QUIT`, …) to the gateway process this test started.
fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([format!("-{sig}").as_str(), &pid])
        .status()
        .unwrap()
        .success());
}

async fn gateway(edit: impl Fn(String) -> String) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = admin_section();
    let text = edit(demo_config_text())
        + &admin
        + "\n[decision_log]\ntarget = \"decisions.log\"\nmask = []\n";
    std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    Gw {
        h,
        admin: format!("http://127.0.0.1:{port}"),
        dir,
    }
}

impl Gw {
    async fn call(&self, method: &str, path: &str, user: Option<&str>) -> (u16, String) {
        let mut req = client().request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            self.h.url(path),
        );
        if let Some(u) = user {
            req = req.header("authorization", bearer(u));
        }
        let r = req.send().await.unwrap();
        let id = r
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (r.status().as_u16(), id)
    }

    fn decisions(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("decisions.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_lines_carry_every_field() {
    let g = gateway(|t| t).await;
    let (s, allow_id) = g.call("GET", "/api/v1/customers/1", Some("u-rep1")).await;
    assert_eq!(s, 200);
    let (s, deny_id) = g
        .call("DELETE", "/api/v1/campaigns/1", Some("u-rep1"))
        .await;
    assert_eq!(s, 403);
    let (s, anon_id) = g.call("GET", "/api/v1/customers/1", None).await;
    assert_eq!(s, 401);
    let mut lines = Vec::new();
    assert!(
        eventually(5, || {
            lines = g.decisions();
            let done = lines.len() >= 3;
            async move { done }
        })
        .await,
        "three decision lines"
    );
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .cloned()
            .unwrap()
    };
    let a = find(&allow_id);
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["user"], "u-rep1");
    assert_eq!(a["roles"], "sales_rep");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/api/v1/customers/1");
    assert_eq!(a["route"], "customers.read");
    assert_eq!(a["permission"], "company.view_customer_management_list");
    assert_eq!(a["reason"], "granted_by:sales_rep");
    assert_eq!(a["snapshot_version"], "demo-2026-11-23.1");
    assert_eq!(a["status"], 200);
    assert_eq!(a["upstream_status"], 200);
    assert!(a["upstream_ms"].as_f64().is_some() && a["total_ms"].as_f64().is_some());
    assert!(a["config_hash"].as_str().is_some_and(|h| h.len() == 16));
    assert!(a["ts_ms"].as_u64().is_some());
    let d = find(&deny_id);
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["reason"], "forbidden");
    assert_eq!(d["permission"], "campaign.delete");
    assert_eq!(d["status"], 403);
    assert!(d["upstream_status"].is_null());
    let n = find(&anon_id);
    assert_eq!(n["reason"], "missing_credentials");
    assert!(n["user"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_by_route_decision_and_status() {
    let g = gateway(|t| t).await;
    for _ in 0..3 {
        g.call("GET", "/api/v1/customers/1", Some("u-rep1")).await;
    }
    for _ in 0..2 {
        g.call("DELETE", "/api/v1/campaigns/1", Some("u-rep1"))
            .await;
    }
    g.call("GET", "/nowhere", Some("u-rep1")).await;
    let mut text = String::new();
    assert!(
        eventually(5, || {
            let g = &g;
            async move {
                metric(
                    &g.metrics().await,
                    "permgate_request_duration_seconds_count",
                ) >= 6
            }
        })
        .await
    );
    text.push_str(&g.metrics().await);
    assert_eq!(
        metric(
            &text,
            "permgate_requests_total{route=\"customers.read\",decision=\"allow\",status=\"2xx\"}"
        ),
        3,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "permgate_requests_total{route=\"campaigns.delete\",decision=\"deny\",status=\"4xx\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "permgate_requests_total{route=\"(unmatched)\",decision=\"deny\",status=\"4xx\"}"
        ),
        1
    );
    assert_eq!(metric(&text, "permgate_request_duration_seconds_count"), 6);
    assert_eq!(metric(&text, "permgate_decision_duration_seconds_count"), 6);
    assert_eq!(metric(&text, "permgate_upstream_duration_seconds_count"), 3);
    assert_eq!(metric(&text, "permgate_ready"), 1);
    assert!(text.contains("permgate_snapshot_info{version=\"demo-2026-11-23.1\""));
    assert!(text.contains("permgate_decision_log_dropped_total 0"));
    assert!(
        !text.contains("/api/v1/customers/1"),
        "no raw paths as label values"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_forwards_what_it_would_deny_and_counts_it() {
    // Per route: campaigns.delete in shadow.
    let g = gateway(|t| {
        let out = t.replacen(
            "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.delete\"",
            "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.delete\"\nshadow = true",
            1,
        );
        assert_ne!(out, t);
        out
    })
    .await;
    let (s, id) = g
        .call("DELETE", "/api/v1/campaigns/1", Some("u-rep1"))
        .await;
    assert_eq!(s, 204, "forwarded in shadow mode");
    let got = g.h.received();
    assert_eq!(got.len(), 1);
    assert_eq!(recorded_header(&got[0], "x-permgate-user"), vec!["u-rep1"]);
    // Other routes still enforce.
    let (s, _) = g
        .call("GET", "/api/v1/settings/billing", Some("u-rep1"))
        .await;
    assert_eq!(s, 403);
    // Ambiguous input is never forwarded, shadow or not.
    let r = g.h.raw(format!("DELETE /api/v1/campaigns%2F1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n", bearer("u-rep1")).as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(g.h.received().len(), 1);
    assert!(
        eventually(5, || {
            let g = &g;
            async move {
                metric(&g.metrics().await, "permgate_requests_total{route=\"campaigns.delete\",decision=\"shadow_deny\",status=\"2xx\"}") == 1
            }
        })
        .await
    );
    let mut line = None;
    assert!(
        eventually(5, || {
            line = g
                .decisions()
                .into_iter()
                .find(|l| l["request_id"] == id.as_str());
            let found = line.is_some();
            async move { found }
        })
        .await
    );
    let line = line.unwrap();
    assert_eq!(line["decision"], "shadow_deny");
    assert_eq!(line["reason"], "forbidden");
    assert_eq!(line["status"], 204);
    drop(g);

    // Per role: callers holding customer_service_rep are in shadow.
    let g = gateway(|t| {
        t.replacen(
            "unmatched = \"not_found\"",
            "unmatched = \"not_found\"\nshadow_roles = [\"customer_service_rep\"]",
            1,
        )
    })
    .await;
    let (s, _) = g
        .call("POST", "/api/v1/leads/bulk-reassign", Some("u-csr"))
        .await;
    assert_ne!(s, 403, "u-csr is in shadow");
    let (s, _) = g
        .call("DELETE", "/api/v1/campaigns/1", Some("u-rep1"))
        .await;
    assert_eq!(s, 403, "u-rep1 is not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_test_agree_with_the_live_gateway() {
    #[derive(serde::Deserialize)]
    struct Table {
        route: Vec<Row>,
    }
    #[derive(serde::Deserialize)]
    struct Row {
        method: String,
        path: String,
        #[allow(dead_code)]
        permission: String,
        #[serde(default)]
        body: Option<String>,
        #[allow(dead_code)]
        allow: Vec<String>,
    }
    let table: Table = toml::from_str(
        &std::fs::read_to_string(repo().join("tests/data/role_routes.toml")).unwrap(),
    )
    .unwrap();
    let g = gateway(|t| t).await;
    let users = [
        "u-admin", "u-sm", "u-rep1", "u-csr", "u-mm", "u-da", "u-member", "u-gone", "u-nobody",
    ];
    let mut compared = 0;
    for row in &table.route {
        for user in users {
            let mut req = client()
                .request(
                    reqwest::Method::from_bytes(row.method.as_bytes()).unwrap(),
                    g.h.url(&row.path),
                )
                .header("authorization", bearer(user));
            if let Some(b) = &row.body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.clone());
            }
            g.h.clear();
            let live = req.send().await.unwrap();
            let live_status = live.status().as_u16();
            let forwarded = !g.h.received().is_empty();
            let live_code = if forwarded {
                "allow".to_string()
            } else {
                live.json::<serde_json::Value>().await.unwrap()["error"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            let explained: serde_json::Value = client()
                .post(format!("{}/explain", g.admin))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .json(&serde_json::json!({"user": user, "method": row.method, "path": row.path}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                explained["code"],
                live_code.as_str(),
                "{user} {} {} (live {live_status})",
                row.method,
                row.path
            );
            if !forwarded {
                assert_eq!(explained["status"], live_status);
            }
            compared += 1;
        }
    }
    assert_eq!(compared, table.route.len() * users.len());

    // The CLI agrees too, and `permgate test` runs the demo's expected decisions.
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["explain", "--config"])
        .arg(demo_config())
        .args([
            "--user",
            "u-rep1",
            "--json",
            "DELETE",
            "/api/v1/campaigns/1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "forbidden");
    assert_eq!(v["route"]["access"], "campaign.delete");
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("test")
        .arg(repo().join("config/demo/policy-tests.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("26 passed, 0 failed"), "{stdout}");
    // A wrong expectation fails the run.
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(repo().join("config/demo/policy-tests.toml"))
        .unwrap()
        .replacen(
            "config = \"permgate.toml\"",
            &format!("config = {:?}", demo_config().display().to_string()),
            1,
        )
        .replacen("expect = \"allow\"", "expect = \"deny\"", 1);
    std::fs::write(dir.path().join("t.toml"), broken).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("test")
        .arg(dir.path().join("t.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("25 passed, 1 failed") && stdout.contains("FAIL case[0]"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let mut g = gateway(|t| t.replacen("threads = 1", "threads = 1\ndrain_seconds = 2", 1)).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let url = g.h.url(&format!("/api/v1/customers/{}", 1 + i % 5));
        calls.push(tokio::spawn(async move {
            client()
                .get(url)
                .header("authorization", bearer("u-rep1"))
                .header("x-crm-delay-ms", "800")
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    // Let the requests reach the CRM, then ask the gateway to stop.
    assert!(
        eventually(5, || {
            let n = g.h.received().len();
            async move { n == 20 }
        })
        .await
    );
    signal(&g.h.gateway, "TERM");
    for c in calls {
        assert_eq!(c.await.unwrap().expect("no request in flight is lost"), 200);
    }
    let status = g.h.gateway.wait().unwrap();
    assert!(status.success(), "exits cleanly after draining: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_policy_is_judged_beside_the_live_one() {
    // The candidate lets sales reps delete campaigns (it maps the route to a permission they hold).
    let candidate = demo_config_text().replacen(
        "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.delete\"",
        "path = \"/api/v1/campaigns/{id}\"\npermission = \"campaign.review_results\"",
        1,
    );
    assert_ne!(candidate, demo_config_text());
    let g = gateway(|t| {
        t.replacen(
            "unmatched = \"not_found\"",
            "unmatched = \"not_found\"\ncandidate_config = \"candidate.toml\"",
            1,
        )
    })
    .await;
    // The candidate file is read at start; write it, then reload so it is picked up.
    std::fs::write(g.dir.path().join("candidate.toml"), &candidate).unwrap();
    let r = client()
        .post(format!("{}/reload", g.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (s, _) = g.call("GET", "/api/v1/customers/1", Some("u-rep1")).await;
    assert_eq!(s, 200, "both agree");
    let (s, id) = g
        .call("DELETE", "/api/v1/campaigns/1", Some("u-rep1"))
        .await;
    assert_eq!(s, 403, "the live policy is enforced, not the candidate");
    assert!(g.h.received().len() == 1);
    let text = g.metrics().await;
    assert_eq!(
        metric(&text, "permgate_candidate_evaluations_total"),
        2,
        "{}",
        g.h.log_text()
            .lines()
            .filter(|l| l.contains("candidate"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        metric(
            &text,
            "permgate_candidate_disagreements_total{live=\"deny\",candidate=\"allow\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "permgate_candidate_disagreements_total{live=\"allow\",candidate=\"deny\"}"
        ),
        0
    );
    let mut line = None;
    assert!(
        eventually(5, || {
            line = g
                .decisions()
                .into_iter()
                .find(|l| l["request_id"] == id.as_str());
            let found = line.is_some();
            async move { found }
        })
        .await
    );
    let line = line.unwrap();
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["candidate"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_the_socket_without_refusing_a_call() {
    let mut g = gateway(|t| {
        t.replacen(
            "threads = 1",
            "threads = 1\ndrain_seconds = 1\nupgrade_sock = \"upgrade.sock\"",
            1,
        )
    })
    .await;
    let sock = g.dir.path().join("upgrade.sock");
    let hyper = engine() == "hyper";
    if hyper {
        // The hyper engine: SIGQUIT with no new process waiting is refused, and it keeps
        // serving (the Pingora engine would drain and exit).
        signal(&g.h.gateway, "QUIT");
        // It tries to reach the new process for 5 s, serving meanwhile.
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        assert!(g.h.gateway.try_wait().unwrap().is_none(), "still running");
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(g.h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "still serving after a failed upgrade");
    }
    // The new binary starts in upgrade mode: it waits for the listening socket.
    let log = std::fs::File::create(g.dir.path().join("new.log")).unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["serve", "--upgrade"])
        .args(["--engine", &engine()])
        .arg("--config")
        .arg(g.dir.path().join("permgate.toml"))
        .arg("--listen")
        .arg(g.h.addr.to_string())
        .arg("--upstream")
        .arg(g.h.crm.local_addr().to_string())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    assert!(
        eventually(10, || {
            let exists = sock.exists();
            async move { exists }
        })
        .await,
        "the new process waits on the upgrade socket"
    );
    // Calls keep coming (a new connection each) while the old process hands over and drains.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = g.h.url("/api/v1/customers/1");
    let load = {
        let (fresh, url) = (fresh.clone(), url.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..150 {
                let s = fresh
                    .get(&url)
                    .header("authorization", bearer("u-rep1"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                statuses.push(s);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal(&g.h.gateway, "QUIT");
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every call answered: {statuses:?}"
    );
    let old = g.h.gateway.wait().unwrap();
    assert!(old.success(), "the old process drained and exited: {old:?}");
    // The new process now owns the port.
    let r = fresh
        .get(&url)
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = new.kill();
    let _ = new.wait();
}

/// `permgate healthcheck` (the Dockerfile's HEALTHCHECK): 0 against a live admin listener, 1
/// against a port where nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_command_probes_the_admin_listener() {
    let g = gateway(|t| t).await;
    let admin = g.admin.trim_start_matches("http://").to_string();
    let run = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_permgate"))
            .args(["healthcheck", "--admin", addr])
            .output()
            .unwrap()
    };
    let ok = run(&admin);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = run(&closed.to_string());
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

/// A call the HTTP/1.1 lane decides and hands to hyper (a list route) is decided, counted and
/// logged once, like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_handed_over_is_decided_once() {
    let g = gateway(|t| {
        let with_list = t.replacen(
            "path = \"/api/v1/leads\"\npermission = \"lead.view\"",
            "path = \"/api/v1/leads\"\npermission = \"lead.view\"\nlist = { type = \"lead\", items = \"/items\", item_id = \"/id\", counts = [\"/total\"] }",
            1,
        );
        assert_ne!(with_list, t);
        with_list + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n"
    })
    .await;
    let auth = bearer("u-admin");
    let first =
        format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {auth}\r\n");
    let second = format!("GET /api/v1/leads HTTP/1.1\r\nHost: crm\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    let exchange = |raw: String| raw_exchange(g.h.addr, raw.as_bytes());
    // Pipelined on one connection (the Pingora engine answers only the first of pipelined
    // requests: "Known limits"; there, one connection each).
    let text = if engine() == "hyper" {
        exchange(format!("{first}\r\n{second}"))
    } else {
        exchange(format!("{first}Connection: close\r\n\r\n")) + &exchange(second)
    };
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    let mut lines = Vec::new();
    assert!(
        eventually(5, || {
            lines = g.decisions();
            let done = lines.len() >= 2;
            async move { done }
        })
        .await,
        "two decision lines"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lines = g.decisions();
    let routes: Vec<&str> = lines.iter().filter_map(|l| l["route"].as_str()).collect();
    assert_eq!(routes, ["customers.read", "leads.read"], "{lines:?}");
    let text = g.metrics().await;
    assert_eq!(
        metric(&text, "permgate_decision_duration_seconds_count"),
        2,
        "{text}"
    );
}

/// Issue 14 item 1: the admin API fails closed. Every endpoint but the probes (and `/metrics`,
/// unless `admin.protect_metrics`) answers 401 without the token and with a wrong one, before
/// anything is routed — `POST /explain` and an unknown path included — and works with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_everywhere_but_the_probes() {
    let g = gateway(|t| t).await;
    let explain = r#"{"user":"u-admin","method":"GET","path":"/api/v1/customers/1"}"#;
    let changes = r#"{"changes":[]}"#;
    let protected: [(&str, &str, &str); 9] = [
        ("GET", "/status", ""),
        ("POST", "/explain", explain),
        ("POST", "/reload", ""),
        ("PUT", "/snapshot", "{}"),
        ("POST", "/snapshot/changes", changes),
        ("GET", "/explain", ""),
        ("GET", "/no-such-endpoint", ""),
        ("POST", "/healthz", ""),
        ("DELETE", "/metrics", ""),
    ];
    let send = |method: &str, path: &str, body: &str, auth: Option<&str>| {
        let mut req = client()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", g.admin),
            )
            .body(body.to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    let wrong = "Bearer test-admin-token-0123456780";
    for (method, path, body) in protected {
        for auth in [None, Some(wrong), Some("test-admin-token-0123456789")] {
            let r = send(method, path, body, auth).await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"], "unauthenticated", "{method} {path}");
            assert!(v.get("decision").is_none() && v.get("roles").is_none());
        }
    }
    // With the token: the endpoints answer (explain says what it decided).
    let ok = format!("Bearer {ADMIN_TOKEN}");
    let r = send("POST", "/explain", explain, Some(&ok)).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "allow");
    assert_eq!(
        send("GET", "/status", "", Some(&ok))
            .await
            .unwrap()
            .status(),
        200
    );
    let r = send("GET", "/no-such-endpoint", "", Some(&ok))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = send("POST", "/healthz", "", Some(&ok)).await.unwrap();
    assert_eq!(r.status(), 405);
    // The open set: probes and metrics need nothing.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            send("GET", path, "", None).await.unwrap().status(),
            200,
            "{path}"
        );
    }

    // `admin.protect_metrics`: /metrics needs the token too; the probes stay open.
    let dir = tempfile::tempdir().unwrap();
    let (admin, port) = admin_section();
    std::fs::write(
        dir.path().join("permgate.toml"),
        demo_config_text() + &admin + "protect_metrics = true\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let _h = Harness::start_with(&dir.path().join("permgate.toml")).await;
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str, auth: Option<&str>| {
        let mut req = client().get(format!("{base}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(get("/metrics", None).await.unwrap().status(), 401);
    assert_eq!(get("/metrics", Some(wrong)).await.unwrap().status(), 401);
    let r = get("/metrics", Some(&ok)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("permgate_requests_total"));
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);
}

/// Issue 15 item 5: a diagnostic about one request names it. The warning for a CRM that cannot
/// be reached carries, as its `request_id` field, the id the client got in `x-request-id` and in
/// the rejection's body; two calls, two ids, each in its own warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_warning_names_the_request_id_the_client_got() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_custom(&demo_config(), Some(closed)).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = client()
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unavailable");
        assert_eq!(body["request_id"], header.as_str());
        ids.push(header);
    }
    assert_ne!(ids[0], ids[1]);
    for id in &ids {
        let field = format!("request_id={id}");
        let mut log = String::new();
        let found = eventually(5, || {
            log = h.log_text();
            let found = log
                .lines()
                .filter(|l| l.contains(" WARN ") && l.contains("upstream failure"))
                .any(|l| l.contains(&field));
            async move { found }
        })
        .await;
        assert!(found, "no upstream failure warning names {id}:\n{log}");
    }
}

/// The nice value and name of each thread of process `pid` (Linux /proc).
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... : fields after the closing parenthesis; nice is field 19.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        out.push((name, rest[16].parse().unwrap()));
    }
    out
}

/// Snapshot loads and builds, the admin API and the freeing of replaced snapshots run at a
/// lower CPU priority than the calls, so a reconciliation does not take CPU from them.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_work_runs_below_the_calls_priority() {
    let gw = gateway(|t| t).await;
    let (status, _) = gw.call("GET", "/api/v1/customers/1", Some("u-admin")).await;
    assert_eq!(status, 200);
    // A snapshot swap, so the reaper has run too.
    let r = client()
        .post(format!("{}/reload", gw.admin))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let threads = thread_nices(gw.h.gateway.id());
    let nice_of = |prefix: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| *v)
            .collect()
    };
    let main = nice_of("permgate");
    let control = nice_of("permgate-contr");
    let reaper = nice_of("permgate-reape");
    assert_eq!(control.len(), 1, "{threads:?}");
    assert_eq!(reaper.len(), 1, "{threads:?}");
    let base = threads
        .iter()
        .find(|(n, _)| n == "permgate")
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no main thread: {threads:?} {main:?}"));
    let below = (base + 10).min(19);
    assert_eq!(control[0], below, "{threads:?}");
    assert_eq!(reaper[0], below, "{threads:?}");
    // The reload ran on a blocking thread of the control runtime, started by the control
    // thread: 10 below the calls too, not 10 below the control thread (20 below).
    assert!(
        threads
            .iter()
            .any(|(n, v)| n.starts_with("tokio-") && *v == below),
        "{threads:?}"
    );
    assert!(
        threads.iter().all(|(_, v)| *v == base || *v == below),
        "{threads:?}"
    );
}
