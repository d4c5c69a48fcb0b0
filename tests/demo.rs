//! The demo's claims cannot go stale: the real `permgate demo` runs, and every curl line it
//! prints is sent as curl would send it (same method, path as written, headers and body), its
//! answer checked against what the line above it says (`→ <status> [code][, claims]`; see
//! `Step` in src/demo.rs). The sample CRM's request log (its address is in the banner) shows
//! what reached it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;

/// The `permgate demo` process (killed on drop).
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request as curl would send it.
#[derive(Debug)]
struct CurlRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Shell words of one command line: '...' literal, "..." with $VAR expanded, bare words with
/// $VAR expanded (all the printed lines use).
fn shell_words(line: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, cur: &mut String| {
        let mut name = String::new();
        while let Some(c) = chars
            .peek()
            .copied()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
            chars.next();
        }
        let value = env
            .get(&name)
            .unwrap_or_else(|| panic!("${name} is not exported by the banner"));
        cur.push_str(value);
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' if in_word => {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            ' ' => {}
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '$' => expand(&mut chars, &mut cur),
                        '\\' => panic!("no escapes in the printed lines: {line}"),
                        c => cur.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                expand(&mut chars, &mut cur);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The request a printed curl line sends (only the options the tour uses; any other fails),
/// and which of the demo's gateways it goes to.
fn curl_request(
    line: &str,
    env: &BTreeMap<String, String>,
    gateways: &[SocketAddr],
) -> (SocketAddr, CurlRequest) {
    let words = shell_words(line, env);
    assert_eq!(words[0], "curl", "{line}");
    let mut method: Option<String> = None;
    let mut head = false;
    let mut path_as_is = false;
    let mut headers = Vec::new();
    let mut body = None;
    let mut url = None;
    let mut w = words[1..].iter();
    while let Some(a) = w.next() {
        match a.as_str() {
            "-i" | "-s" => {}
            "-I" => head = true,
            "--path-as-is" => path_as_is = true,
            "-X" => method = Some(w.next().unwrap().clone()),
            "-H" => {
                let (n, v) = w.next().unwrap().split_once(':').unwrap();
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
            "-d" => body = Some(w.next().unwrap().clone()),
            u if u.starts_with("http://") => url = Some(u.to_string()),
            other => panic!("the test does not know curl's {other:?}: {line}"),
        }
    }
    let url = url.unwrap_or_else(|| panic!("no URL: {line}"));
    let (gateway, rest) = gateways
        .iter()
        .find_map(|g| Some((*g, url.strip_prefix(&format!("http://{g}"))?)))
        .unwrap_or_else(|| panic!("{url} is not a gateway's ({gateways:?})"));
    assert!(
        path_as_is || !(rest.contains("/./") || rest.contains("/../")),
        "curl would remove the dot segments of {rest} (use --path-as-is)"
    );
    let method = match (method, head, &body) {
        (Some(m), _, _) => m,
        (None, true, _) => "HEAD".to_string(),
        (None, false, Some(_)) => "POST".to_string(),
        (None, false, None) => "GET".to_string(),
    };
    // curl's defaults.
    headers.insert(0, ("Accept".into(), "*/*".into()));
    headers.insert(0, ("User-Agent".into(), "curl/8".into()));
    if body.is_some()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
    }
    (
        gateway,
        CurlRequest {
            method,
            target: rest.to_string(),
            headers,
            body,
        },
    )
}

/// An answer: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Send one HTTP/1.1 request (connection closed after it) and read the whole answer.
fn send(addr: SocketAddr, r: &CurlRequest) -> Answer {
    let mut req = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\n", r.method, r.target);
    for (n, v) in &r.headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = &r.body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.push_str(r.body.as_deref().unwrap_or(""));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if r.method == "HEAD" {
        body.clear();
    } else if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    } else if let Some(n) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        assert!(body.len() >= n, "a short body");
        body.truncate(n);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&b[..eol]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Check an answer against a line's claims (`200`, `403 record_forbidden, names x, 4 items`).
fn check(what: &str, expect: &str, a: &Answer) {
    let mut claims = expect.split(", ");
    let mut first = claims.next().unwrap().split(' ');
    let status: u16 = first.next().unwrap().parse().unwrap();
    assert_eq!(a.status, status, "{what} → {expect}: got {}", a.status);
    if let Some(code) = first.next() {
        assert_eq!(a.json()["error"], code, "{what} → {expect}");
    }
    assert!(first.next().is_none(), "one code only: {expect}");
    for claim in claims {
        if let Some(p) = claim.strip_prefix("names ") {
            assert_eq!(a.json()["permission"], p, "{what} → {expect}");
        } else if let Some(n) = claim.strip_suffix(" items") {
            let n: usize = n.parse().unwrap();
            let v = a.json();
            assert_eq!(
                v["items"].as_array().map(Vec::len),
                Some(n),
                "{what} → {expect}: {v}"
            );
            assert_eq!(v["total"], n, "{what}: the count says what is left");
        } else if let Some((name, value)) = claim.split_once(": ") {
            let want: Vec<&str> = value.split(',').collect();
            if name.starts_with("x-") {
                assert_eq!(
                    a.header(name),
                    Some(value),
                    "{what} → {expect}: {:?}",
                    a.headers
                );
            } else {
                let v = a.json();
                let got: Vec<&str> = v[name]
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: no list '{name}' in {v}"))
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                assert_eq!(got, want, "{what} → {expect}");
            }
        } else {
            panic!("the test cannot check the claim {claim:?} ({what}); teach it");
        }
    }
}

/// The CRM's request log, newest last.
fn crm_log(crm: SocketAddr) -> Vec<serde_json::Value> {
    let a = send(
        crm,
        &CurlRequest {
            method: "GET".into(),
            target: "/__crm/requests".into(),
            headers: Vec::new(),
            body: None,
        },
    );
    assert_eq!(a.status, 200);
    a.json().as_array().unwrap().clone()
}

fn crm_header<'a>(r: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    r["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

#[test]
fn every_line_the_demo_prints_does_what_it_says() {
    let port = free_port();
    let gateway: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["demo", "--listen", &gateway.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The demo's log, kept to say why a gateway did not listen (drained so it never blocks).
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    let _demo = Demo(child);
    // Read the banner; keep draining stdout (the decision log) so the gateway never blocks.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no end of banner in: {banner:#?}"));
        let end = line.starts_with("Every answer carries x-request-id");
        banner.push(line);
        if end {
            break;
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});

    let crm: SocketAddr = banner
        .iter()
        .find_map(|l| l.split("sample CRM on http://").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let mut env = BTreeMap::new();
    for l in &banner {
        if let Some(rest) = l.strip_prefix("export ") {
            let (name, v) = rest.split_once('=').unwrap();
            let v = v.strip_prefix('\'').unwrap();
            env.insert(name.to_string(), v[..v.find('\'').unwrap()].to_string());
        }
    }
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["ADMIN", "ANALYST_KEY", "REP", "ROBIN_ACME", "ROBIN_OWN"]
    );
    // The tenant stops' gateway, beside the main one.
    let tenant_gateway: SocketAddr = banner
        .iter()
        .find_map(|l| l.split("tenant-aware gateway on http://").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no tenant gateway in {banner:#?}"))
        .parse()
        .unwrap();
    assert_ne!(tenant_gateway, gateway);
    let steps: Vec<(&str, &str, &str)> = banner
        .windows(2)
        .filter_map(|w| {
            let (what, expect) = w[0].strip_prefix("# ")?.rsplit_once(" → ")?;
            let curl = w[1].starts_with("curl ").then_some(w[1].as_str())?;
            Some((what, expect, curl))
        })
        .collect();
    let curl_lines = banner.iter().filter(|l| l.starts_with("curl ")).count();
    assert_eq!(steps.len(), curl_lines, "every curl line follows its claim");
    assert!(steps.len() >= 12, "{banner:#?}");

    // Its socket is bound before the banner names it (a port only checked free could be taken
    // meanwhile): it accepts at once, before that gateway's runtime has started.
    TcpStream::connect_timeout(&tenant_gateway, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!("the tenant gateway {tenant_gateway} named by the banner refuses: {e}")
    });
    let up = Instant::now() + Duration::from_secs(20);
    for g in [gateway, tenant_gateway] {
        while TcpStream::connect_timeout(&g, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < up,
                "the demo gateway {g} never listened; the demo's log: {:#?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let mut seen = Vec::new();
    for (what, expect, line) in &steps {
        let (to, req) = curl_request(line, &env, &[gateway, tenant_gateway]);
        let before = crm_log(crm).len();
        let a = send(to, &req);
        check(what, expect, &a);
        assert!(a.header("x-request-id").is_some(), "{what}");
        let reached: Vec<serde_json::Value> = crm_log(crm).split_off(before);
        // What the CRM saw: allowed calls reach it once, refusals never.
        assert_eq!(
            reached.len(),
            usize::from(a.status < 300),
            "{what}: {reached:#?}"
        );
        if req.target == "/api/v1/deals/bulk-reassign" {
            let body: serde_json::Value =
                serde_json::from_str(reached[0]["body"].as_str().unwrap()).unwrap();
            assert_eq!(body["ids"], serde_json::json!([4, 12]), "{what}");
            seen.push("bulk");
        }
        if req
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-permgate-user"))
        {
            assert_eq!(crm_header(&reached[0], "x-permgate-user"), Some("u-rep2"));
            seen.push("spoof");
        }
        if req.method == "HEAD" {
            seen.push("head");
        }
        if expect.contains(" items") {
            seen.push("list");
        }
        if expect.contains("record_forbidden") {
            seen.push("scope");
        }
        if expect.contains("assignee_forbidden") {
            seen.push("assignees");
        }
        if to == tenant_gateway {
            // The tenant stops: what reached the CRM names the call's tenant.
            if let Some(r) = reached.first() {
                assert_eq!(
                    crm_header(r, "x-permgate-tenant"),
                    Some("robin-co"),
                    "{what}"
                );
                assert_eq!(crm_header(r, "x-permgate-roles"), Some("admin"), "{what}");
                seen.push("tenant allowed");
            }
            if expect.contains("record_forbidden") {
                seen.push("tenant refused");
            }
        }
    }
    // The tour shows the product: each of these is in it.
    for want in [
        "scope",
        "head",
        "list",
        "bulk",
        "assignees",
        "spoof",
        "tenant allowed",
        "tenant refused",
    ] {
        assert!(seen.contains(&want), "the tour lost its {want} stop");
    }
}

/// `new_owner = { at = "/assigned_to", list = true }` (the demo's `tasks.create`) through the
/// real gateway: a list in scope is forwarded as sent; every refused assignee is named; the
/// list's shape is strict; a route taking one new owner refuses a list. Refusals reach nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignee_lists_through_the_gateway() {
    let h = common::Harness::demo().await;
    let post = |path: &'static str, body: &'static str| {
        let url = h.url(path);
        async move {
            let r = common::client()
                .post(url)
                .header("authorization", common::bearer("u-rep2"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Robin (task.create@own+team) assigns to himself and a teammate: forwarded as sent.
    h.clear();
    let (s, v) = post(
        "/api/v1/tasks",
        r#"{"title":"Call back","assigned_to":["u-rep2","u-rep1"]}"#,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["assigned_to"], serde_json::json!(["u-rep2", "u-rep1"]));
    assert_eq!(h.received().len(), 1);
    // Two outside his team (one unknown): refused whole, both named, nothing forwarded.
    for (body, status, code) in [
        (
            r#"{"title":"x","assigned_to":["u-rep1","u-csr","u-nobody"]}"#,
            403,
            "assignee_forbidden",
        ),
        (
            r#"{"title":"x","assigned_to":"u-rep1"}"#,
            400,
            "invalid_body",
        ),
        (r#"{"title":"x","assigned_to":[]}"#, 400, "invalid_body"),
        (
            r#"{"title":"x","assigned_to":["u-rep1","u-rep1"]}"#,
            400,
            "invalid_body",
        ),
        (
            r#"{"title":"x","assigned_to":["u-rep1",7.5]}"#,
            400,
            "invalid_body",
        ),
    ] {
        h.clear();
        let (s, v) = post("/api/v1/tasks", body).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
        assert!(h.received().is_empty(), "{body}");
        if status == 403 {
            assert_eq!(
                v["denied_assignees"],
                serde_json::json!(["u-csr", "u-nobody"])
            );
            assert_eq!(v["permission"], "task.create");
        }
    }
    // One new owner expected: a list is refused with its own code.
    h.clear();
    let (s, v) = post(
        "/api/v1/deals/bulk-reassign",
        r#"{"ids":[4],"owner_id":["u-rep1"]}"#,
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("assignee_list_not_allowed")),
        "{v}"
    );
    assert!(h.received().is_empty());
    // A single refused new owner is named too.
    let (s, v) = post(
        "/api/v1/deals/bulk-reassign",
        r#"{"ids":[4],"owner_id":"u-admin"}"#,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["denied_assignees"], serde_json::json!(["u-admin"]));
}

/// A port in use is refused before the banner: the curl lines would name a gateway that is not
/// there (the main gateway's port was bound after the banner before).
#[test]
fn the_demo_refuses_a_port_in_use_before_its_banner() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    demo_refuses(&listen, &format!("the gateway cannot listen on {listen}"));
    drop(taken);
}

/// `permgate demo --listen <listen>` exits with code 2, its error saying `want`, and prints no
/// banner.
fn demo_refuses(listen: &str, want: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["demo", "--listen", listen])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{err}");
    assert!(out.stdout.is_empty(), "no banner: {:?}", out.stdout);
}

/// Port 0 is refused before anything starts: the banner's curl lines name the port.
#[test]
fn the_demo_refuses_port_zero() {
    demo_refuses(
        "127.0.0.1:0",
        "--listen '127.0.0.1:0': the demo needs a port of its own",
    );
}
