//! Issue 14, the edges: identity headers a legacy CRM trusts (items 2), bodies where none
//! belong (the CL.0 class, item 3), `Host` (item 4) and a `#fragment` in the target (item 9).
//! Every case goes through the real binary, on raw TCP where a friendly client would have
//! cleaned the request up first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Identity headers set by authenticating proxies (oauth2-proxy, nginx `auth_request`, Apache
/// `REMOTE_USER`) that legacy CRMs trust.
const TRUSTED_BY_LEGACY_CRMS: [&str; 15] = [
    "X-User-Id",
    "X-User",
    "X-Roles",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Remote-User",
    "Remote-User",
    "X-Email",
    "X-Groups",
];

/// A name as CGI, PHP and others read it: `_` and `.` taken for `-`, case ignored.
fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

/// The Pingora engine (`PERMGATE_TEST_ENGINE=pingora`) has only the request head: no `Host`
/// rule, and its parser drops a `#fragment`. Those cases are the hyper engine's.
fn pingora() -> bool {
    let yes = engine() == "pingora";
    if yes {
        eprintln!("skipped on the Pingora engine");
    }
    yes
}

/// The CRM's last request.
fn last(h: &Harness) -> permgate_sample_crm::RecordedRequest {
    h.received().pop().expect("the CRM received the call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_a_legacy_crm_trusts_are_stripped_in_every_spelling() {
    let h = Harness::demo().await;
    let c = client();
    for name in TRUSTED_BY_LEGACY_CRMS {
        for spelling in [
            name.to_string(),
            name.replace('-', "_"),
            name.replace('-', "."),
        ] {
            h.clear();
            let r = c
                .get(h.url("/api/v1/customers/1"))
                .header("authorization", bearer("u-rep1"))
                .header(spelling.as_str(), "u-admin")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{spelling}");
            let got = last(&h);
            let leaked: Vec<_> = got
                .headers
                .iter()
                .filter(|(n, _)| folded(n) == folded(name))
                .collect();
            assert!(leaked.is_empty(), "{spelling} reached the CRM: {leaked:?}");
            assert_eq!(recorded_header(&got, "x-permgate-user"), ["u-rep1"]);
        }
    }
}

/// The demo config in allow-list mode; the route `customers.read` also forwards
/// `X-Crm-Tenant`.
fn allow_list_config() -> String {
    let text = demo_config_text();
    let text = text.replacen(
        "[forward]\n",
        "[forward]\nrequest_headers = \"allow_list\"\n",
        1,
    );
    let with_route = text.replacen(
        "name = \"customers.read\"\n",
        "name = \"customers.read\"\nallow_headers = [\"x-crm-tenant\"]\n",
        1,
    );
    assert_ne!(text, with_route);
    with_route
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_mode_forwards_only_the_listed_headers() {
    let h = Harness::with_config_text(&allow_list_config(), &[]).await;
    let c = client();
    let call = |path: &str| {
        c.get(h.url(path))
            .header("authorization", bearer("u-admin"))
            .header("accept", "application/json")
            .header("x-legacy-trust", "u-admin")
            .header("x-crm-tenant", "t1")
            .header("cookie", "crm_session=admin")
            .header("x-user-id", "u-admin")
            .send()
    };
    let r = call("/api/v1/customers/1").await.unwrap();
    assert_eq!(r.status(), 200);
    let got = last(&h);
    for absent in ["x-legacy-trust", "cookie", "x-user-id"] {
        assert!(
            recorded_header(&got, absent).is_empty(),
            "{absent} reached the CRM: {:?}",
            got.headers
        );
    }
    assert_eq!(recorded_header(&got, "accept"), ["application/json"]);
    assert_eq!(
        recorded_header(&got, "x-crm-tenant"),
        ["t1"],
        "the route's own"
    );
    assert_eq!(recorded_header(&got, "x-permgate-user"), ["u-admin"]);
    assert_eq!(recorded_header(&got, "host").len(), 1);
    assert!(
        recorded_header(&got, "authorization")[0].starts_with("Bearer "),
        "a verified JWT is forwarded (forward_authorization)"
    );
    // Another route: only the global list.
    let r = call("/api/v1/customers").await.unwrap();
    assert_eq!(r.status(), 200);
    let got = last(&h);
    assert!(recorded_header(&got, "x-crm-tenant").is_empty());
    assert!(recorded_header(&got, "x-legacy-trust").is_empty());
    assert_eq!(recorded_header(&got, "accept"), ["application/json"]);
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The smuggled request of the report: executed as the admin by a CRM that reads the body of
/// a GET as its next request.
const SMUGGLED: &str = "GET /api/billing HTTP/1.1\r\nHost: crm\r\nx-permgate-user: u_admin\r\nx-permgate-roles: admin\r\n\r\n";

/// Write `request` (no `Connection: close`) and read until the gateway closes; the answer,
/// and whether it closed within 5 s (an unread body on a kept connection is the vector).
fn until_closed(h: &Harness, request: &[u8]) -> (String, bool) {
    let started = Instant::now();
    let answer = raw_exchange(h.addr, request);
    (answer, started.elapsed() < Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_bodiless_method_is_refused_and_never_reaches_the_crm() {
    let (addr, server, heads) = raw_crm_recording(|_| (OK, false)).await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let admin = bearer("u-admin");
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let cases = [
        // The report: unauthenticated, on a public route.
        format!(
            "GET /__crm/health HTTP/1.1\r\nHost: crm.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        format!(
            "GET /__crm/health HTTP/1.1\r\nHost: crm.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
        ),
        format!(
            "GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        format!(
            "DELETE /api/v1/customers/1 HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
        // No route: refused for the body all the same (shadow mode never forwards it).
        format!(
            "OPTIONS /__crm/health HTTP/1.1\r\nHost: crm.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        ),
    ];
    for case in &cases {
        let (answer, closed) = until_closed(&h, case.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{case:?} answered {answer:?}"
        );
        assert!(
            answer.contains("\"error\":\"body_not_allowed\""),
            "{answer}"
        );
        assert!(
            closed,
            "the connection was kept after an unread body: {case:?}"
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        heads.lock().unwrap().is_empty(),
        "the CRM received {:?}",
        heads.lock().unwrap()
    );
    // A zero length is no body: served.
    let r = h.raw(b"GET /__crm/health HTTP/1.1\r\nHost: crm.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(heads.lock().unwrap().len(), 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_takes_a_body_on_get_when_it_opts_in() {
    let text = demo_config_text().replacen(
        "name = \"customers.read\"\n",
        "name = \"customers.read\"\nallow_body = true\n",
        1,
    );
    let h = Harness::with_config_text(&text, &[]).await;
    let admin = bearer("u-admin");
    let get = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
    };
    let r = h.raw(get("/api/v1/customers/1").as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(last(&h).body, "hello");
    // Other routes still refuse one.
    h.clear();
    let r = h.raw(get("/api/v1/customers").as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "body_not_allowed");
    assert!(h.received().is_empty());
}

/// The Host lines of the CRM's requests.
fn crm_hosts(heads: &Heads) -> Vec<String> {
    heads
        .lock()
        .unwrap()
        .iter()
        .flat_map(|h| h.lines())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_required_on_http11_and_must_be_a_bare_authority() {
    if pingora() {
        return;
    }
    let (addr, server, heads) = raw_crm_recording(|_| (OK, false)).await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let request = |host: Option<&str>| {
        let host = host.map_or(String::new(), |v| format!("Host: {v}\r\n"));
        format!("GET /__crm/health HTTP/1.1\r\n{host}Connection: close\r\n\r\n")
    };
    let r = h.raw(request(None).as_bytes());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("missing_host"))
    );
    for bad in [
        "u_admin@crm.test",
        "u:p@crm.test",
        "crm.test/api/billing",
        "crm.test?x=1",
        "crm.test#f",
        "crm.test:99999",
        "crm.test:",
        "crm.test:8o",
        "crm test",
        "a.test, b.test",
        "",
        "[::1",
        "[zz]:80",
        "http://crm.test",
    ] {
        let r = h.raw(request(Some(bad)).as_bytes());
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("invalid_host")),
            "Host: {bad:?}"
        );
    }
    assert!(crm_hosts(&heads).is_empty(), "{:?}", heads.lock().unwrap());
    for good in [
        "crm.test",
        "crm.test:8080",
        "127.0.0.1",
        "[::1]:443",
        "crm_01.internal",
    ] {
        let r = h.raw(request(Some(good)).as_bytes());
        assert_eq!(r.status, 200, "Host: {good}: {}", r.body);
        assert_eq!(crm_hosts(&heads).last().map(String::as_str), Some(good));
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_is_served_and_the_crm_gets_one() {
    if pingora() {
        return;
    }
    let (addr, server, heads) = raw_crm_recording(|_| (OK, false)).await;
    let h = Harness::start_custom(&demo_config(), Some(addr)).await;
    let r = h.raw(b"GET /__crm/health HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(crm_hosts(&heads), [addr.to_string()]);
    // With one, it is checked as on HTTP/1.1.
    let r = h.raw(b"GET /__crm/health HTTP/1.0\r\nHost: u@crm.test\r\n\r\n");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_host"))
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_in_the_target_is_refused() {
    if pingora() {
        return;
    }
    let h = Harness::demo().await;
    let admin = bearer("u-admin");
    // Each case is followed on its connection by a plain request (served, or not read when
    // the gateway closes after the refusal): only that one may reach the CRM.
    let next = format!("GET /api/v1/customers/2?next HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nConnection: close\r\n\r\n");
    for (name, request) in [
        (
            "public",
            "GET /__crm/health#x HTTP/1.1\r\nHost: crm.test\r\n\r\n".to_string(),
        ),
        (
            "a path in the fragment",
            "GET /__crm/health#/../admin HTTP/1.1\r\nHost: crm.test\r\n\r\n".to_string(),
        ),
        (
            "protected",
            format!("GET /api/v1/customers/1#x HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\n\r\n"),
        ),
        (
            "with a body",
            format!("POST /api/v1/customers#x HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"),
        ),
        (
            "after a chunked body",
            format!("POST /api/v1/customers HTTP/1.1\r\nHost: crm.test\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n#\r\n0\r\n\r\nGET /__crm/health#x HTTP/1.1\r\nHost: crm.test\r\n\r\n"),
        ),
    ] {
        h.clear();
        let answer = raw_exchange(h.addr, format!("{request}{next}").as_bytes());
        let refused = answer
            .split("HTTP/1.1 ")
            .find(|a| a.contains("invalid_character"));
        assert!(
            refused.is_some_and(|a| a.starts_with("400 ")),
            "{name}: {answer:?}"
        );
        let reached: Vec<String> = h.received().into_iter().map(|r| r.target).collect();
        assert!(
            reached
                .iter()
                .all(|t| t == "/api/v1/customers/2?next" || t == "/api/v1/customers"),
            "{name}: the CRM received {reached:?}"
        );
    }
}
