//! The gateway end to end: bodies of every kind of refusal, identity, header hygiene,
//! canonicalization as the CRM sees it, HTTP/2, and upstream failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::*;

fn demo_text() -> String {
    std::fs::read_to_string(demo_config()).unwrap()
}

async fn get_json(
    h: &Harness,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = client().get(h.url(path));
    for (n, v) in headers {
        req = req.header(*n, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v, headers)
}

fn assert_rejection(v: &serde_json::Value, headers: &reqwest::header::HeaderMap, code: &str) {
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let id = headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(
        v["request_id"], id,
        "the body and the header carry the same request id"
    );
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_bodies_401_403_404() {
    let h = Harness::demo().await;
    let (s, v, hd) = get_json(&h, "/api/v1/customers/1", &[]).await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "missing_credentials");
    assert_eq!(hd.get("www-authenticate").unwrap(), "Bearer");

    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", "Bearer a.b.c".into())],
    )
    .await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "invalid_token");

    let (s, v, hd) = get_json(
        &h,
        "/api/v1/settings/billing",
        &[("authorization", bearer("u-rep1"))],
    )
    .await;
    assert_eq!(s, 403);
    assert_rejection(&v, &hd, "forbidden");
    assert_eq!(v["permission"], "company.manage_billing");

    let (s, v, hd) = get_json(
        &h,
        "/api/v2/anything",
        &[("authorization", bearer("u-admin"))],
    )
    .await;
    assert_eq!(s, 404);
    assert_rejection(&v, &hd, "route_not_found");
    assert!(v.get("permission").is_none());

    // The request id of a denial is in the log line of that denial.
    let id = hd
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut log = String::new();
    for _ in 0..50 {
        log = h.log_text();
        if log.contains(&id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The decision log (JSON lines on stdout by default) carries the same request id.
    let line = log
        .lines()
        .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
        .expect("the request id is logged");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["decision"], "deny", "{line}");
    assert_eq!(v["reason"], "route_not_found", "{line}");
    assert!(h.received().is_empty(), "nothing reached the CRM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_unknown_disabled_and_api_keys() {
    let h = Harness::demo().await;
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", bearer("u-nobody"))],
    )
    .await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "unknown_user");
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/leads/1",
        &[("authorization", bearer("u-gone"))],
    )
    .await;
    assert_eq!(s, 403);
    assert_rejection(&v, &hd, "user_disabled");
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/analytics",
        &[("x-api-key", "wrong-key".into())],
    )
    .await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "invalid_api_key");
    assert!(h.received().is_empty());

    let (s, _, _) = get_json(
        &h,
        "/api/v1/analytics",
        &[("x-api-key", DEMO_ANALYST_API_KEY.into())],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = get_json(
        &h,
        "/api/v1/analytics",
        &[("authorization", format!("Bearer {DEMO_ANALYST_API_KEY}"))],
    )
    .await;
    assert_eq!(s, 200);
    let got = h.received();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(recorded_header(r, "x-permgate-user"), vec!["u-da"]);
        assert!(
            recorded_header(r, "x-api-key").is_empty(),
            "the API key is never forwarded"
        );
        assert!(
            recorded_header(r, "authorization").is_empty(),
            "an API key in Authorization is never forwarded"
        );
    }
    // Two credentials at once are ambiguous.
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/analytics",
        &[
            ("x-api-key", DEMO_ANALYST_API_KEY.into()),
            ("authorization", bearer("u-admin")),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert_rejection(&v, &hd, "ambiguous_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_and_hop_by_hop_headers_never_reach_the_crm() {
    let h = Harness::demo().await;
    let resp = client()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .header("x-permgate-user", "u-admin")
        .header("x-permgate-roles", "admin")
        .header("x-permgate-anything", "x")
        .header("x-request-id", "client-chosen")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(id, "client-chosen");
    let got = h.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(recorded_header(r, "x-permgate-user"), vec!["u-rep1"]);
    assert_eq!(recorded_header(r, "x-permgate-roles"), vec!["sales_rep"]);
    assert!(recorded_header(r, "x-permgate-anything").is_empty());
    assert_eq!(recorded_header(r, "x-request-id"), vec![id.as_str()]);
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(
            recorded_header(r, gone).is_empty(),
            "{gone} must be stripped"
        );
    }
    assert_eq!(recorded_header(r, "x-kept"), vec!["yes"]);
    // The JWT is forwarded (forward_authorization = true in the demo config).
    assert_eq!(recorded_header(r, "authorization").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_headers_are_400_and_reach_nothing() {
    let h = Harness::demo().await;
    let tok = token("u-admin");
    // Two Host headers are refused by Pingora's own parser, before permgate sees the request:
    // a bare 400 (no JSON body; see the README's "Known limits"), and the connection is closed.
    let r = h.raw(format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(r.status, 400, "{r:?}");
    let cases: Vec<(String, &str)> = vec![
        (format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"), "duplicate_header"),
        (format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\nX-HTTP-Method-Override: DELETE\r\nConnection: close\r\n\r\n"), "method_override"),
        (format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\nX-Method-Override: DELETE\r\nConnection: close\r\n\r\n"), "method_override"),
        (format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\nConnection: close, authorization\r\n\r\n"), "bad_connection_header"),
    ];
    for (req, code) in cases {
        let r = h.raw(req.as_bytes());
        assert_eq!(r.status, 400, "{req}: {r:?}");
        assert_eq!(r.json()["error"], code, "{req}");
        assert_eq!(r.json()["request_id"], r.header("x-request-id").unwrap());
    }
    assert!(h.received().is_empty());
}

/// What the CRM receives for each spelling of a path: the canonical form, or nothing (400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonicalization_as_the_crm_sees_it() {
    let h = Harness::demo().await;
    let tok = token("u-admin");
    let send = |target: &str| {
        h.raw(format!("GET {target} HTTP/1.1\r\nHost: crm\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n").as_bytes())
    };
    // Forwarded, canonical.
    for (target, canonical) in [
        ("/api/v1/customers/1", "/api/v1/customers/1"),
        ("/api/v1/x/../customers/1", "/api/v1/customers/1"),
        ("/api/v1/./customers/./1", "/api/v1/customers/1"),
        ("/api/v1//customers///1", "/api/v1/customers/1"),
        ("/api/v1/%63ustomers/1", "/api/v1/customers/1"),
        ("/api/v1/x/%2e%2e/customers/1", "/api/v1/customers/1"),
        ("/api/../../api/v1/customers/1", "/api/v1/customers/1"),
        (
            "/api/v1/customers/1?x=%2F&y=1",
            "/api/v1/customers/1?x=%2F&y=1",
        ),
    ] {
        h.clear();
        let r = send(target);
        assert_eq!(r.status, 200, "{target}: {r:?}");
        let got = h.received();
        assert_eq!(got.len(), 1, "{target}");
        assert_eq!(got[0].target, canonical, "{target}");
    }
    // Dot segments can't smuggle a denied route past the matcher: the rep may read customers
    // but not delete campaigns, however the path is spelled.
    let rep = token("u-rep1");
    for target in [
        "/api/v1/customers/../campaigns/1",
        "/api/v1/customers/%2e%2e/campaigns/1",
    ] {
        h.clear();
        let r = h.raw(format!("DELETE {target} HTTP/1.1\r\nHost: crm\r\nAuthorization: Bearer {rep}\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(r.status, 403, "{target}: {r:?}");
        assert_eq!(r.json()["permission"], "campaign.delete");
        assert!(h.received().is_empty());
    }
    // Refused with the rule's code, nothing forwarded.
    h.clear();
    for (target, code) in [
        ("/api/v1/customers%2F1", "encoded_slash"),
        ("/api/v1/customers%2f1", "encoded_slash"),
        ("/api/v1/customers/1%5C", "encoded_backslash"),
        ("/api/v1/customers/1;jsessionid=x", "path_parameter"),
        ("/api/v1/customers/%252e%252e/1", "double_encoding"),
        ("/api/v1/customers/1%00", "encoded_control"),
        ("/api/v1/customers/1%zz", "bad_percent_encoding"),
        ("/api/v1/customers/\\1", "backslash"),
        ("http://crm/api/v1/customers/1", "not_origin_form"),
        ("/api/v1/customers/1?_method=DELETE", "method_override"),
        ("/api/v1/customers/%C0%AE%C0%AE/1", "overlong_utf8"),
    ] {
        let r = send(target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert_eq!(r.json()["error"], code, "{target}");
    }
    // Non-ASCII and control bytes in the target.
    let r =
        h.raw(b"GET /api/v1/customers/\xc3\xa9 HTTP/1.1\r\nHost: crm\r\nConnection: close\r\n\r\n");
    assert!(r.status == 400, "{r:?}");
    assert!(
        h.received().is_empty(),
        "no refused spelling reached the CRM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_downstream() {
    let h = Harness::demo().await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    // The request id (sent never-indexed in HPACK) arrives on each answer, a new one each time.
    let id = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .expect("a request id")
    };
    let first = id(&resp);
    let resp = c
        .delete(h.url("/api/v1/campaigns/1"))
        .header("authorization", bearer("u-rep1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let second = id(&resp);
    assert_ne!(first, second);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["permission"], "campaign.delete");
    assert_eq!(v["request_id"], second.as_str());
    assert_eq!(h.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_is_504() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_custom(&demo_config(), Some(closed)).await;
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", bearer("u-admin"))],
    )
    .await;
    assert_eq!(s, 502);
    assert_rejection(&v, &hd, "upstream_unavailable");
    drop(h);

    let text = demo_text().replace("read_timeout_ms = 5000", "read_timeout_ms = 300");
    assert!(text.contains("read_timeout_ms = 300"));
    let h = Harness::with_config_text(&text, &[]).await;
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[
            ("authorization", bearer("u-admin")),
            ("x-crm-delay-ms", "3000".into()),
        ],
    )
    .await;
    assert_eq!(s, 504);
    assert_rejection(&v, &hd, "upstream_timeout");
    drop(h);

    // The total timeout caps every step: a 5 s read timeout, but 300 ms for the whole exchange.
    let text = demo_text().replace("total_timeout_ms = 30000", "total_timeout_ms = 300");
    assert!(!text.contains("total_timeout_ms = 30000") && text.contains("total_timeout_ms = 300 "));
    let h = Harness::with_config_text(&text, &[]).await;
    let started = std::time::Instant::now();
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[
            ("authorization", bearer("u-admin")),
            ("x-crm-delay-ms", "3000".into()),
        ],
    )
    .await;
    assert_eq!(s, 504);
    assert_rejection(&v, &hd, "upstream_timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_identity_header_only_from_trusted_peers() {
    let trusted = format!(
        "{}\n[identity.trusted_header]\nname = \"x-authenticated-user\"\ntrusted_cidrs = [\"127.0.0.0/8\"]\n",
        demo_text()
    );
    let h = Harness::with_config_text(&trusted, &[]).await;
    let (s, _, _) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("x-authenticated-user", "u-rep1".into())],
    )
    .await;
    assert_eq!(s, 200);
    let got = h.received();
    assert_eq!(recorded_header(&got[0], "x-permgate-user"), vec!["u-rep1"]);
    assert!(recorded_header(&got[0], "x-authenticated-user").is_empty());
    drop(h);

    let untrusted = trusted.replace("127.0.0.0/8", "10.0.0.0/8");
    let h = Harness::with_config_text(&untrusted, &[]).await;
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("x-authenticated-user", "u-admin".into())],
    )
    .await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "untrusted_identity_header");
    assert!(h.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_need_no_identity() {
    let h = Harness::demo().await;
    let resp = client().get(h.url("/__crm/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The CRM's own test hooks are not routed: deny by default.
    let (s, _, _) = get_json(
        &h,
        "/__crm/requests",
        &[("authorization", bearer("u-admin"))],
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_means_not_ready_never_allow() {
    let text = demo_text().replace("path = \"snapshot.json\"", "path = \"missing.json\"");
    let h = Harness::with_config_text(&text, &[]).await;
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", bearer("u-admin"))],
    )
    .await;
    assert_eq!(s, 503);
    assert_rejection(&v, &hd, "not_ready");
    // Public routes still work.
    let resp = client().get(h.url("/__crm/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the public route reaches the CRM");
    assert!(h.received().is_empty(), "no protected call was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_is_never_passed_down_to_a_less_specific_route() {
    let h = Harness::demo().await;
    // bulk-delete routes only POST; PUT must not fall through to PUT /customers/{id}.
    let r = client()
        .put(h.url("/api/v1/customers/bulk-delete"))
        .header("authorization", bearer("u-admin"))
        .header("content-type", "application/json")
        .body(r#"{"ids":[1,2]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(h.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_never_forward_credentials_and_origin_headers_are_ours() {
    let text = format!(
        "{}\n[[route]]\nname = \"public.docs\"\nmethods = [\"GET\"]\npath = \"/api/v1/public/{{*rest}}\"\npublic = true\n",
        std::fs::read_to_string(demo_config()).unwrap()
    );
    let h = Harness::with_config_text(&text, &[]).await;
    for auth in [
        ("authorization", "Bearer not.a.jwt"),
        ("authorization", "Bearer some-api-key"),
        ("x-api-key", "k"),
    ] {
        h.clear();
        let r = client()
            .get(h.url("/api/v1/public/terms"))
            .header(auth.0, auth.1)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "the CRM has no such page, but the call was forwarded"
        );
        let got = h.received();
        assert_eq!(got.len(), 1);
        assert!(
            recorded_header(&got[0], "authorization").is_empty(),
            "{auth:?}"
        );
        assert!(recorded_header(&got[0], "x-api-key").is_empty(), "{auth:?}");
        assert!(recorded_header(&got[0], "x-permgate-user").is_empty());
    }
    // Identity and origin headers a legacy CRM may trust are replaced or removed.
    h.clear();
    let r = client()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-real-ip", "10.9.9.9")
        .header("forwarded", "for=10.9.9.9")
        .header("x-remote-user", "u-admin")
        .header("x-forwarded-user", "u-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = h.received();
    let r = &got[0];
    assert_eq!(recorded_header(r, "x-forwarded-for"), vec!["127.0.0.1"]);
    for gone in [
        "x-real-ip",
        "forwarded",
        "x-remote-user",
        "x-forwarded-user",
    ] {
        assert!(recorded_header(r, gone).is_empty(), "{gone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_are_removed_over_http2_too() {
    let h = Harness::demo().await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let r = c
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-rep1"))
        .header("x-permgate-user", "u-admin")
        .header("x-permgate-roles", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = h.received();
    assert_eq!(recorded_header(&got[0], "x-permgate-user"), vec!["u-rep1"]);
    assert_eq!(
        recorded_header(&got[0], "x-permgate-roles"),
        vec!["sales_rep"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_crm_instances_round_robin_and_skip_a_dead_one() {
    use permgate_sample_crm::{start, CrmOptions};
    let crm1 = start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        CrmOptions::default(),
    )
    .await
    .unwrap();
    let crm2 = start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        CrmOptions::default(),
    )
    .await
    .unwrap();
    let text = demo_text().replacen(
        "address = \"127.0.0.1:9090\"",
        &format!(
            "addresses = [\"{}\", \"{}\"]\nhealth_check_interval_ms = 100",
            crm1.local_addr(),
            crm2.local_addr()
        ),
        1,
    );
    assert!(text.contains("addresses = ["));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), &text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let h = Harness::start_own_upstreams(&dir.path().join("permgate.toml")).await;
    let call = || async {
        client()
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-rep1"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Wait for the first health checks, then spread calls.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(call().await, 200);
    }
    let (n1, n2) = (crm1.requests().len(), crm2.requests().len());
    assert_eq!(n1 + n2, 20);
    assert!(n1 >= 5 && n2 >= 5, "round robin: {n1} and {n2}");
    // One instance goes down: after a health check, every call goes to the other.
    crm1.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(call().await, 200);
    }
    assert_eq!(crm2.requests().len(), n2 + 10);
}

/// `listen.max_body_bytes` caps every request body: a declared length over it is refused with
/// 413 before anything is forwarded; a chunked body that grows past it is cut off (413), and
/// the CRM never receives it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_gateway_limit() {
    let text = demo_text().replacen("[listen]", "[listen]\nmax_body_bytes = 1000", 1);
    assert!(text.contains("max_body_bytes = 1000"));
    let h = Harness::with_config_text(&text, &[]).await;
    let auth = bearer("u-admin");
    // Under the limit: forwarded.
    let r = client()
        .post(h.url("/api/v1/leads/1/notes"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(format!("{{\"text\":\"{}\"}}", "a".repeat(900)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(h.received().len(), 1);
    h.clear();

    // Declared over the limit: 413 with the JSON body, nothing forwarded.
    let r = client()
        .post(h.url("/api/v1/leads/1/notes"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(format!("{{\"text\":\"{}\"}}", "a".repeat(1200)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "body_too_large");
    // The gateway's limit, named as such (a route's `body.max_bytes` names itself).
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("listen.max_body_bytes"), "{v}");
    assert!(h.received().is_empty());

    // Chunked, growing past the limit: cut off with 413; the CRM never gets the body whole.
    let raw = chunked_json_post(
        "/api/v1/leads/1/notes",
        &auth,
        "b".repeat(1200).as_bytes(),
        600,
    );
    let r = h.raw(&raw);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"], "body_too_large");
    assert!(
        h.received().iter().all(|got| got.body.len() < 1200),
        "the CRM must never receive the whole body"
    );
}

/// Hop-by-hop headers in the CRM's answer (`Keep-Alive`, `Proxy-Connection`, `Upgrade`, a name
/// its `Connection` lists, `Transfer-Encoding` framing) are not passed on; the other headers
/// and the body are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_of_the_answer_are_not_passed_on() {
    let (addr, server) = raw_crm(|_| {
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
            Transfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\
            Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\
            Connection: X-Secret\r\nX-Secret: 1\r\n\r\n\
            2\r\n{}\r\n0\r\n\r\n";
        (answer, false)
    })
    .await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    for hop in ["keep-alive", "proxy-connection", "upgrade", "x-secret"] {
        assert!(headers.get(hop).is_none(), "{hop} passed on: {headers:?}");
    }
    assert_eq!(headers.get("x-kept").unwrap(), "yes");
    assert!(headers.get("x-request-id").is_some());
    assert_eq!(resp.text().await.unwrap(), "{}");
    server.abort();
}

/// An answer whose head is 40 KB (a legacy CRM's cookies).
static BIG_HEAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Big: {}\r\n\r\nbig",
        "c".repeat(40_000)
    )
});

/// The CRM's answer reaches the caller whatever its framing: chunked (extensions and trailer
/// fields dropped, the chunks checked), a length, none (204, 304), an informational 1xx
/// first; kept-alive CRM connections serve the next call afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_every_framing_reach_the_caller() {
    let (addr, server) = raw_crm(|line| {
        let path = line.split(' ').nth(1).unwrap_or_default();
        let answer = match path {
            "/api/v1/customers/1" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            "/api/v1/customers/2" => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsame",
            "/api/v1/customers/4" => "HTTP/1.1 204 No Content\r\nX-Kept: yes\r\n\r\n",
            "/api/v1/customers/5" => "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
            // A head larger than a CRM connection's first buffer (16 KiB).
            "/api/v1/customers/7" => BIG_HEAD.as_str(),
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        (answer, false)
    })
    .await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let c = client();
    let admin = bearer("u-admin");
    let get = |path: &str, method: reqwest::Method| {
        c.request(method, h.url(path))
            .header("authorization", &admin)
            .send()
    };
    for round in 0..3 {
        let r = get("/api/v1/customers/1", reqwest::Method::GET)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert!(r.headers().get("x-trailer").is_none());
        assert_eq!(r.text().await.unwrap(), "hello world");
        let r = get("/api/v1/customers/2", reqwest::Method::GET)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "same");
        let r = get("/api/v1/customers/4", reqwest::Method::GET)
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers().get("x-kept").unwrap(), "yes");
        assert_eq!(r.bytes().await.unwrap().len(), 0);
        let r = get("/api/v1/customers/5", reqwest::Method::GET)
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers().get("etag").unwrap(), "\"x\"");
        let r = get("/api/v1/customers/6", reqwest::Method::GET)
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "ok");
        let r = get("/api/v1/customers/7", reqwest::Method::GET)
            .await
            .unwrap();
        assert!(r.headers().get("x-big").is_some_and(|v| v.len() == 40_000));
        assert_eq!(r.text().await.unwrap(), "big");
    }
    server.abort();
}

/// An answer that runs until the CRM closes is passed on whole; a CRM that closes its kept-alive
/// connections without a word costs the next GET nothing (a new connection is opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_connections_closed_by_the_crm_are_replaced() {
    let (addr, server) = raw_crm(|line| {
        if line.contains("/api/v1/customers/3") {
            // No length: the body ends when the connection does.
            return (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
                true,
            );
        }
        // A length, then the connection closed without a word.
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true)
    })
    .await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(h.url("/api/v1/customers/3"))
            .header("authorization", bearer("u-admin"))
            .send();
        let ten = std::time::Duration::from_secs(10);
        let r = tokio::time::timeout(ten, r).await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        let body = tokio::time::timeout(ten, r.text()).await.unwrap();
        assert_eq!(body.unwrap(), "until the end");
        let r = c
            .get(h.url("/api/v1/customers/1"))
            .header("authorization", bearer("u-admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // On the wire: every line of the answer head ends with CRLF (read raw, to the close).
    let raw = format!(
        "GET /api/v1/customers/3 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\n\r\n",
        bearer("u-admin")
    );
    let text = raw_exchange(h.addr, raw.as_bytes());
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end: {text:?}"));
    assert!(
        !text[..end].replace("\r\n", "").contains('\n'),
        "a bare LF: {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        text.ends_with("until the end") || text.contains("until the end\r\n0\r\n\r\n"),
        "{text:?}"
    );
    server.abort();
}

/// A CRM answer with both `Transfer-Encoding` and `Content-Length`, or a malformed chunked body,
/// never reaches the caller as if it were whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_broken_crm_answers_are_not_passed_as_whole() {
    let (addr, server) = raw_crm(|line| {
        let answer = if line.contains("/api/v1/customers/1") {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        } else if line.contains("/api/v1/customers/3") {
            "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n"
        };
        (answer, false)
    })
    .await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let r = client()
        .get(h.url("/api/v1/customers/2"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await;
    // The head may have gone out: then the body fails, never reads as whole.
    if let Ok(r) = r {
        assert!(
            r.bytes().await.is_err(),
            "a malformed chunked body read as whole"
        );
    }
    // A status under 100 is no status: 502.
    let r = client()
        .get(h.url("/api/v1/customers/3"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let r = client()
        .get(h.url("/api/v1/customers/1"))
        .header("authorization", bearer("u-admin"))
        .send()
        .await
        .unwrap();
    if engine() == "hyper" {
        // The hyper engine refuses the ambiguity outright, with its lane or without (Pingora
        // takes the chunks).
        assert_eq!(r.status(), 502);
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "upstream_error"
        );
    } else {
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    server.abort();
}

/// A refusal of a HEAD request has no body (the next answer on the connection reads right),
/// and CONNECT is never a route, even with an origin-form target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_refusals_have_no_body_and_connect_is_405() {
    let h = Harness::demo().await;
    let rep = bearer("u-rep1");
    let raw = format!(
        "HEAD /api/v1/campaigns/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {rep}\r\n\r\n\
         HEAD /api/v1/nowhere HTTP/1.1\r\nHost: crm\r\nAuthorization: {rep}\r\n\r\n\
         GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {rep}\r\nConnection: close\r\n\r\n"
    );
    let text = raw_exchange(h.addr, raw.as_bytes());
    let heads: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert!(
        !text.contains("\"error\""),
        "no refusal body to HEAD: {text}"
    );
    if engine() == "hyper" {
        // Kept alive after a refusal (Pingora closes the connection after its first answer).
        assert_eq!(heads, ["404", "404", "200"], "{text}");
    } else {
        assert_eq!(heads[0], "404", "{text}");
    }
    let r =
        h.raw(b"CONNECT /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405, "{r:?}");
    assert!(h.received().iter().all(|r| r.method != "CONNECT"));
}

/// Issue 16 item 1: a CRM's own tokens as they are (Django simplejwt: no `iss`, `aud`, `nbf` or
/// `kid`, the user in `user_id`) pass when the config names no issuer or audience, through the
/// real binary; `check-config` says those claims are not checked; `exp` stays required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crms_own_tokens_without_iss_aud_nbf_kid() {
    let text = demo_text()
        .replace("issuer = \"https://crm.example.test\"\n", "")
        .replace("audience = \"crm-api\"\n", "")
        .replace(
            "user_claim = \"sub\"",
            "user_claim = \"user_id\"\nrequired_claims = { token_type = \"access\" }",
        );
    assert!(!text.contains("issuer =") && text.contains("user_claim = \"user_id\""));
    let h = Harness::with_config_text(&text, &[]).await;
    let now = unix_now();
    let mint = |claims: serde_json::Value| format!("Bearer {}", demo_key_token(&claims, None));
    let simplejwt = serde_json::json!({"token_type": "access", "exp": now + 300, "iat": now,
                                       "jti": "9b1f", "user_id": "u-rep1"});
    let (s, _, _) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", mint(simplejwt.clone()))],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        recorded_header(h.received().last().unwrap(), "x-permgate-user"),
        ["u-rep1"]
    );
    let mut no_exp = simplejwt.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let (s, v, hd) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", mint(no_exp))],
    )
    .await;
    assert_eq!(s, 401);
    assert_rejection(&v, &hd, "invalid_token");
    // simplejwt signs its refresh tokens (a day's life) with the same key: only `token_type`
    // tells them apart, and `required_claims` keeps them off the API.
    for token_type in [
        serde_json::json!("refresh"),
        serde_json::json!(null),
        serde_json::json!(["access"]),
    ] {
        let mut other = simplejwt.clone();
        other["token_type"] = token_type;
        h.clear();
        let (s, v, hd) =
            get_json(&h, "/api/v1/customers/1", &[("authorization", mint(other))]).await;
        assert_eq!(s, 401, "{v}");
        assert_rejection(&v, &hd, "invalid_token");
        assert!(h.received().is_empty());
    }
    let mut without = simplejwt.clone();
    without.as_object_mut().unwrap().remove("token_type");
    let (s, _, _) = get_json(
        &h,
        "/api/v1/customers/1",
        &[("authorization", mint(without))],
    )
    .await;
    assert_eq!(s, 401);

    let out = check_config_text(&text);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("jwt: iss NOT checked (identity.jwt.issuer is not set)"),
        "{stdout}"
    );
    assert!(stdout.contains("jwt: aud NOT checked"), "{stdout}");
    assert!(
        stdout.contains("jwt: token_type must be \"access\""),
        "{stdout}"
    );
    for (bad, field) in [
        ("{ exp = \"1\" }", "required_claims.exp"),
        ("{ user_id = \"u\" }", "required_claims.user_id"),
        ("{ token_type = \"\" }", "required_claims.token_type"),
    ] {
        let bad_text = text.replace("{ token_type = \"access\" }", bad);
        let out = check_config_text(&bad_text);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{bad}");
        assert!(said.contains(field), "{bad}: {said}");
    }
}

/// Issue 16 item 5: typed route parameters through the real binary. `{id:uuid}` takes only a
/// UUID, so `/tickets/bulk` and `/tickets/import` are not a ticket id and stay unrouted (denied,
/// nothing forwarded) instead of reaching the CRM through the `{id}` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_route_parameters_keep_sub_collections_out_of_id_routes() {
    let text = demo_text()
        + r#"
[[route]]
name = "tickets.read"
methods = ["GET"]
path = "/api/v1/tickets/{id:uuid}"
permission = "company.view_customer_management_list"

[[route]]
name = "tickets.by_number"
methods = ["GET"]
path = "/api/v1/tickets/{n:int}"
permission = "company.view_customer_management_list"
"#;
    let h = Harness::with_config_text(&text, &[]).await;
    let call = |path: &'static str| {
        let h = &h;
        async move {
            h.clear();
            let r = client()
                .get(h.url(path))
                .header("authorization", bearer("u-rep1"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), !h.received().is_empty())
        }
    };
    let (_, forwarded) = call("/api/v1/tickets/0e2a3f0c-8a1b-4c2d-9e3f-a1b2c3d4e5f6").await;
    assert!(forwarded, "a UUID reaches the uuid route");
    let (_, forwarded) = call("/api/v1/tickets/1234").await;
    assert!(forwarded, "a number reaches the int route");
    for path in [
        "/api/v1/tickets/bulk",
        "/api/v1/tickets/import",
        "/api/v1/tickets/12a",
    ] {
        let (status, forwarded) = call(path).await;
        assert!(!forwarded, "{path} must not be forwarded");
        assert!(status == 403 || status == 404, "{path}: {status}");
    }
}

/// A demo token that expired `ago` seconds ago (`nbf` a minute before that).
fn expired_token(user: &str, ago: u64) -> String {
    use permgate::demo::{DEMO_AUDIENCE, DEMO_ISSUER, DEMO_KID};
    let now = unix_now();
    demo_key_token(
        &serde_json::json!({"sub": user, "iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE,
                            "nbf": now - ago - 60, "exp": now - ago}),
        Some(DEMO_KID),
    )
}

/// The JWT clock-skew leeway is pinned: 30 s by default (a token 10 s past `exp` is accepted,
/// one 40 s past refused), and `identity.jwt.leeway_seconds = 0` refuses the token 10 s past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwt_leeway_is_30_seconds_by_default_and_configurable() {
    let text = demo_text();
    assert!(text.contains("leeway_seconds = 30\n"));
    for (what, config, ago, want) in [
        (
            "default",
            text.replacen("leeway_seconds = 30\n", "", 1),
            10,
            200,
        ),
        (
            "default",
            text.replacen("leeway_seconds = 30\n", "", 1),
            40,
            401,
        ),
        (
            "leeway 0",
            text.replacen("leeway_seconds = 30", "leeway_seconds = 0", 1),
            10,
            401,
        ),
    ] {
        let h = Harness::with_config_text(&config, &[]).await;
        let auth = format!("Bearer {}", expired_token("u-rep1", ago));
        let (s, v, headers) = get_json(&h, "/api/v1/customers/1", &[("authorization", auth)]).await;
        assert_eq!(s, want, "{what}, {ago} s past exp: {v}");
        if want == 401 {
            assert_rejection(&v, &headers, "invalid_token");
            assert!(h.received().is_empty());
        }
    }
}
