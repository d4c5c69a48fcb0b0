//! CORS through the real gateway (`[cors]`): preflights answered by the gateway on any path
//! (nothing forwarded, no route, no identity) or passed to the CRM (`mode = "crm"`) without
//! credentials; the CORS headers on forwarded answers and on the gateway's own refusals; the
//! CRM's own CORS headers replaced. Last, a real headless Chromium runs a page on another
//! origin against the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::time::{Duration, Instant};

use common::records::{bulk_config, bulk_snapshot};
use common::*;

const ORIGIN: &str = "https://app.example.com";

fn cors_section(extra: &str) -> String {
    format!(
        "\n[cors]\nallowed_origins = [\"{ORIGIN}\"]\nallowed_methods = [\"GET\", \"POST\", \"PATCH\"]\nallowed_headers = [\"authorization\", \"content-type\", \"x-trace\"]\nallow_credentials = true\nmax_age_seconds = 120\n{extra}"
    )
}

fn with_cors(extra: &str) -> String {
    demo_config_text() + &cors_section(extra)
}

/// A preflight (OPTIONS with Origin and Access-Control-Request-Method).
async fn preflight(
    h: &Harness,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::Response {
    let mut r = client()
        .request(reqwest::Method::OPTIONS, h.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        r = r.header("access-control-request-headers", headers);
    }
    r.send().await.unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

/// The CORS headers every answer to the allowed origin carries.
fn assert_cors(r: &reqwest::Response, what: &str) {
    assert_eq!(
        header(r, "access-control-allow-origin"),
        Some(ORIGIN),
        "{what}"
    );
    assert_eq!(
        header(r, "access-control-allow-credentials"),
        Some("true"),
        "{what}"
    );
    assert!(
        r.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("Origin")),
        "{what}"
    );
    let exposed = header(r, "access-control-expose-headers").unwrap_or_default();
    for name in [
        "x-request-id",
        "x-permgate-removed-count",
        "x-permgate-removed-ids",
    ] {
        assert!(exposed.contains(name), "{what}: {exposed}");
    }
}

fn assert_no_cors(r: &reqwest::Response, what: &str) {
    let cors: Vec<_> = r
        .headers()
        .keys()
        .filter(|n| n.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{what}: {cors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_preflights_on_any_path_and_forwards_nothing() {
    let h = Harness::with_config_text(&with_cors(""), &[]).await;
    // No OPTIONS route exists for either path (the second matches no route at all).
    for path in ["/api/v1/customers/17", "/no/such/route"] {
        let r = preflight(
            &h,
            path,
            ORIGIN,
            "PATCH",
            "Authorization, X-Trace, content-type",
        )
        .await;
        assert_eq!(r.status(), 204, "{path}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(
            header(&r, "access-control-allow-methods"),
            Some("GET, POST, PATCH")
        );
        assert_eq!(
            header(&r, "access-control-allow-headers"),
            Some("authorization, content-type, x-trace")
        );
        assert_eq!(header(&r, "access-control-max-age"), Some("120"));
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(&r, "vary"), Some("Origin"));
        assert!(header(&r, "x-request-id").is_some());
        assert!(header(&r, "content-length").is_none_or(|l| l == "0"));
    }
    for (origin, method, headers, why) in [
        ("https://evil.example.com", "PATCH", "", "origin"),
        (
            "https://app.example.com.evil.test",
            "GET",
            "",
            "origin suffix",
        ),
        ("null", "GET", "", "null origin"),
        (ORIGIN, "DELETE", "", "method"),
        (ORIGIN, "PATCH", "content-type, x-api-key", "header"),
    ] {
        let r = preflight(&h, "/api/v1/customers/17", origin, method, headers).await;
        assert_eq!(r.status(), 403, "{why}");
        assert_no_cors(&r, why);
        assert!(header(&r, "x-request-id").is_some());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "cors_forbidden", "{why}");
        assert!(body["request_id"].is_string());
    }
    // An OPTIONS that is no preflight is decided as before: no route, 404.
    let r = client()
        .request(reqwest::Method::OPTIONS, h.url("/api/v1/customers/17"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_cors(&r, "a plain OPTIONS");
    assert!(h.received().is_empty(), "{:?}", h.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_to_an_allowed_origin_carries_the_cors_headers() {
    let h = Harness::with_config_text(&with_cors(""), &[]).await;
    let get = |path: &'static str, user: Option<&'static str>, origin: Option<&'static str>| {
        let mut r = client().get(h.url(path));
        if let Some(u) = user {
            r = r.header("authorization", bearer(u));
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let ok = get("/api/v1/customers", Some("u-admin"), Some(ORIGIN))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_cors(&ok, "200");
    for (status, code, r) in [
        (
            401,
            "missing_credentials",
            get("/api/v1/customers", None, Some(ORIGIN)),
        ),
        (
            403,
            "forbidden",
            get("/api/v1/settings/billing", Some("u-rep1"), Some(ORIGIN)),
        ),
        (
            404,
            "route_not_found",
            get("/api/v1/nothing", Some("u-admin"), Some(ORIGIN)),
        ),
        (
            400,
            "encoded_slash",
            get("/api/v1/customers/a%2fb", Some("u-admin"), Some(ORIGIN)),
        ),
    ] {
        let r = r.await.unwrap();
        assert_eq!(r.status(), status, "{code}");
        assert_cors(&r, code);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], code);
    }
    // Another origin (or none): decided the same, no CORS header.
    for origin in [Some("https://evil.example.com"), None] {
        let r = get("/api/v1/customers", Some("u-admin"), origin)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_no_cors(&r, "other origin");
        let r = get("/api/v1/customers", None, origin).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_no_cors(&r, "other origin, 401");
    }
    // HTTP/2 (h2c): the same headers.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (user, status) in [(Some("u-admin"), 200), (None, 401)] {
        let mut r = h2.get(h.url("/api/v1/customers")).header("origin", ORIGIN);
        if let Some(u) = user {
            r = r.header("authorization", bearer(u));
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), status);
        assert_cors(&r, "h2");
    }
    let r = h2
        .request(reqwest::Method::OPTIONS, h.url("/anything"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
}

/// A CRM that sets CORS headers of its own on every answer, and answers a preflight.
fn crm_with_cors(line: &str) -> (&'static str, bool) {
    if line.starts_with("OPTIONS ") {
        return (
            "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: https://app.example.com\r\nAccess-Control-Allow-Methods: GET, PUT\r\nX-Crm: preflight\r\n\r\n",
            false,
        );
    }
    (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: TRACE\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_s_own_cors_headers_are_replaced_by_the_gateway_s() {
    let (addr, _crm) = raw_crm(crm_with_cors).await;
    let h = Harness::with_config_text_to(&with_cors(""), &[], Some(addr)).await;
    for (origin, allowed) in [(ORIGIN, true), ("https://evil.example.com", false)] {
        let r = client()
            .get(h.url("/__crm/health"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()
                .get_all("access-control-allow-origin")
                .iter()
                .count(),
            allowed as usize
        );
        assert!(header(&r, "access-control-allow-methods").is_none());
        if allowed {
            assert_cors(&r, "forwarded");
        } else {
            assert_no_cors(&r, "forwarded, other origin");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_mode_passes_preflights_to_the_crm_without_credentials_or_a_route() {
    let (addr, _crm, heads) = raw_crm_recording(crm_with_cors).await;
    let h = Harness::with_config_text_to(&with_cors("mode = \"crm\"\n"), &[], Some(addr)).await;
    let preflight = |path: &'static str, origin: &'static str, method: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, h.url(path))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "x-trace")
            .header("authorization", bearer("u-admin"))
            .header("x-api-key", DEMO_ANALYST_API_KEY)
            .header("cookie", "PHPSESSID=stolen")
            .send()
    };
    let r = preflight("/api/v1/customers/17?x=1", ORIGIN, "PATCH")
        .await
        .unwrap();
    // The CRM's status and its own headers pass, but the CORS headers are the gateway's: the
    // CRM may refuse a preflight, never widen what the config allows.
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "x-crm"), Some("preflight"));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST, PATCH")
    );
    assert_eq!(header(&r, "access-control-allow-origin"), Some(ORIGIN));
    let seen = heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let head = seen[0].to_ascii_lowercase();
    // Without its query, credentials or cookie.
    assert!(head.starts_with("options /api/v1/customers/17 "), "{head}");
    assert!(
        head.contains("access-control-request-method: patch"),
        "{head}"
    );
    assert!(head.contains("origin: https://app.example.com"), "{head}");
    assert!(!head.contains("authorization"), "{head}");
    assert!(!head.contains("x-api-key"), "{head}");
    assert!(!head.contains("x-permgate-user"), "{head}");
    assert!(!head.contains("cookie"), "{head}");
    // Review finding: only what a browser could send for a routed call is forwarded — not an
    // unrouted path, not a method or origin the config does not allow.
    for (path, origin, method, status) in [
        ("/internal/admin/export?table=payroll", ORIGIN, "GET", 404),
        (
            "/api/v1/customers/17",
            "https://evil.example.net",
            "PATCH",
            403,
        ),
        ("/api/v1/customers/17", ORIGIN, "TRACE", 403),
        ("/api/v1/customers/17", ORIGIN, "DELETE", 403),
    ] {
        let r = preflight(path, origin, method).await.unwrap();
        assert_eq!(r.status(), status, "{path} {origin} {method}");
        assert_eq!(heads.lock().unwrap().len(), 1, "{path} {origin} {method}");
    }
    // Other calls are decided as usual, and carry the gateway's CORS headers.
    let r = client()
        .get(h.url("/api/v1/customers"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_cors(&r, "crm mode, 401");
    let r = client()
        .get(h.url("/__crm/health"))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_cors(&r, "crm mode, forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_config_errors_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = demo_config_text()
        + "\n[cors]\nallow_credentials = true\nallowed_origins = [\"https://a.test\", \"*\"]\n";
    let lines = text.lines().count();
    std::fs::write(dir.path().join("permgate.toml"), &text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(dir.path().join("permgate.toml"))
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("permgate.toml:{lines}: cors.allowed_origins")),
        "{err}"
    );
}

// ---- a real browser ---------------------------------------------------------------------

/// Debian's Chromium (`scripts/setup` installs it).
fn chromium() -> std::path::PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let p = std::path::Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "no Chromium found (chromium, chromium-browser or google-chrome in /usr/bin): run scripts/setup, or `apt-get install -y chromium`"
    )
}

/// Serve `page` on `listener` (the page's origin) until the task is dropped.
fn serve_page(listener: tokio::net::TcpListener, page: String) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if got.starts_with(b"GET / ") {
                    ("200 OK", page.as_str())
                } else {
                    ("404 Not Found", "")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// The page: three fetches to the gateway (another origin), each result written into the DOM
/// once all are done.
fn page(gateway: &str, admin: &str, manager: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const g = "{gateway}";
async function one(name, call) {{
  try {{ return [name, await call()]; }} catch (e) {{ return [name, {{network_error: String(e)}}]; }}
}}
async function run() {{
  const results = await Promise.all([
    one("preflighted", async () => {{
      const r = await fetch(g + "/api/v1/customers/3", {{method: "PATCH",
        headers: {{"Authorization": "Bearer {admin}", "Content-Type": "application/json", "X-Trace": "t-1"}},
        body: JSON.stringify({{name: "Acme"}})}});
      return {{status: r.status, request_id: r.headers.get("x-request-id")}};
    }}),
    one("no_token", async () => {{
      const r = await fetch(g + "/api/v1/customers");
      const j = await r.json();
      return {{status: r.status, error: j.error, request_id: r.headers.get("x-request-id")}};
    }}),
    one("bulk", async () => {{
      const r = await fetch(g + "/api/v1/leads/bulk-reassign", {{method: "POST",
        headers: {{"Authorization": "Bearer {manager}", "Content-Type": "application/json"}},
        body: JSON.stringify({{ids: [1, 2, 3, 5], owner_id: "u-rep2"}})}});
      return {{status: r.status, removed_ids: r.headers.get("x-permgate-removed-ids"),
        removed_count: r.headers.get("x-permgate-removed-count")}};
    }}),
  ]);
  document.getElementById("out").textContent = JSON.stringify(Object.fromEntries(results));
}}
run();
</script></body></html>"#
    )
}

/// Run Chromium headless on `url`, at most `limit`; its `--dump-dom` output.
fn dump_dom(url: &str, limit: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(out.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_page_on_another_origin_reads_answers_refusals_and_removed_ids() {
    let chromium = chromium(); // fails, with what to do, when Chromium is missing
    assert!(chromium.exists());
    // The page's origin: its listener is bound first (the gateway's config names it).
    let page_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", page_port))
        .await
        .unwrap();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let config = bulk_config("trim")
        + &format!(
            "\n[cors]\nallowed_origins = [\"{page_origin}\"]\nallowed_headers = [\"authorization\", \"content-type\", \"x-trace\"]\n"
        );
    let h = Harness::with_config_text(&config, &[("snapshot.json", &bulk_snapshot())]).await;
    let html = page(
        &format!("http://{}", h.addr),
        &demo_token("u-admin", 600),
        &demo_token("u-sm", 600),
    );
    let _server = serve_page(listener, html);
    let url = format!("http://127.0.0.1:{page_port}/");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url, Duration::from_secs(60)))
        .await
        .unwrap();
    let json = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no results in the page:\n{dom}"))
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}\n{dom}"));
    assert_eq!(v["preflighted"]["status"], 200, "{v}");
    assert!(v["preflighted"]["request_id"].is_string(), "{v}");
    assert_eq!(v["no_token"]["status"], 401, "{v}");
    assert_eq!(v["no_token"]["error"], "missing_credentials", "{v}");
    assert!(v["no_token"]["request_id"].is_string(), "{v}");
    assert_eq!(v["bulk"]["status"], 200, "{v}");
    assert_eq!(v["bulk"]["removed_ids"], "1,5", "{v}");
    assert_eq!(v["bulk"]["removed_count"], "2", "{v}");
    // The preflights were answered by the gateway: the CRM saw only the two calls allowed.
    let seen: Vec<String> = h
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert!(seen.iter().all(|s| !s.starts_with("OPTIONS")), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
}
