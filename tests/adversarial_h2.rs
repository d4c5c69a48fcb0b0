//! The attacker's suite, part 3: HTTP/2 (cleartext, prior knowledge) with raw h2 frames — the
//! path and header cases of part 1, where a friendly client would have normalized them first —
//! and the connection limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;

struct H2Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    /// `:authority` (`crm` when `None`).
    authority: Option<&'static str>,
    status: u16,
    /// The canonical target the CRM receives, or `None`: nothing.
    crm: Option<&'static str>,
}

async fn connect(h: &Harness) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

/// Send one request on its own connection; the status, or 0 if the stream was reset.
async fn send(h: &Harness, c: &H2Case) -> u16 {
    let mut client = connect(h).await;
    let uri = format!("http://{}{}", c.authority.unwrap_or("crm"), c.path);
    let mut req = http::Request::builder().method(c.method).uri(uri.as_str());
    for (n, v) in &c.headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req.body(()).unwrap();
    let Ok((resp, mut stream)) = client.send_request(req, c.body.is_none()) else {
        return 0;
    };
    if let Some(b) = &c.body {
        let _ = stream.send_data(b.clone(), true);
    }
    match tokio::time::timeout(Duration::from_secs(10), resp).await {
        Ok(Ok(r)) => r.status().as_u16(),
        Ok(Err(_)) => 0,
        Err(_) => panic!("{}: no answer in 10 s", c.name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_paths_and_headers() {
    let h = Harness::demo().await;
    let admin = bearer("u-admin");
    let rep = bearer("u-rep1");
    let mut cases = Vec::new();
    let mut add = |name: &str,
                   method: &'static str,
                   path: &str,
                   headers: &[(&str, &str)],
                   status: u16,
                   crm: Option<&'static str>| {
        cases.push(H2Case {
            name: name.into(),
            method,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: None,
            authority: None,
            status,
            crm,
        });
    };
    let a = [("authorization", admin.as_str())];
    for path in [
        "/api/v1/customers/1",
        "/api/v1/x/../customers/1",
        "/api/v1/x/%2e%2E/customers/1",
        "/api/v1/./customers//1",
        "/api/v1/%63ustomers/1",
        "/../api/v1/customers/1",
    ] {
        add(path, "GET", path, &a, 200, Some("/api/v1/customers/1"));
    }
    for path in [
        "/api/v1/customers%2F1",
        "/api/v1/customers/1;x",
        "/api/v1/customers/%252e%252e/1",
        "/api/v1/customers/1%00",
        "/api/v1/customers/%C0%AE%C0%AE/1",
        "/api/v1/customers/1%5c",
        "/api/v1/customers/1?_method=DELETE",
    ] {
        add(path, "GET", path, &a, 400, None);
    }
    for path in [
        "/api/v1/customers/../campaigns/1",
        "/api/v1/customers/%2e%2e/campaigns/1",
    ] {
        add(
            path,
            "DELETE",
            path,
            &[("authorization", rep.as_str())],
            403,
            None,
        );
    }
    add("unrouted", "GET", "/API/v1/customers/1", &a, 404, None);
    // Headers.
    let r = ("authorization", rep.as_str());
    for spoof in [
        "x-permgate-user",
        "x-permgate-roles",
        "x_permgate_user",
        "x.permgate.user",
        "x-remote-user",
        "x_remote_user",
        "x-forwarded-user",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
        "x-real-ip",
    ] {
        add(
            &format!("spoof {spoof}"),
            "GET",
            "/api/v1/customers/1",
            &[r, (spoof, "u-admin")],
            200,
            Some("/api/v1/customers/1"),
        );
    }
    for name in [
        "x-http-method-override",
        "x-method-override",
        "x_http_method_override",
    ] {
        add(
            name,
            "GET",
            "/api/v1/customers/1",
            &[r, (name, "DELETE")],
            400,
            None,
        );
    }
    add(
        "two authorization",
        "GET",
        "/api/v1/customers/1",
        &[r, ("authorization", admin.as_str())],
        400,
        None,
    );
    add(
        "two content-type",
        "GET",
        "/api/v1/customers/1",
        &[
            r,
            ("content-type", "application/json"),
            ("content-type", "text/plain"),
        ],
        400,
        None,
    );
    add(
        "content_length disguised",
        "GET",
        "/api/v1/customers/1",
        &[r, ("content_length", "5")],
        400,
        None,
    );
    add(
        "no token",
        "GET",
        "/api/v1/customers/1",
        &[("x-permgate-user", "u-admin")],
        401,
        None,
    );
    add(
        "too many headers",
        "GET",
        "/api/v1/customers/1",
        &[r],
        431,
        None,
    );
    let last = cases.len() - 1;
    for i in 0..120 {
        cases[last].headers.push((format!("x-h{i}"), "1".into()));
    }
    // A body longer than its content-length: a stream error, nothing forwarded.
    cases.push(H2Case {
        name: "content-length shorter than the data".into(),
        method: "POST",
        path: "/api/v1/customers/1/subscribe".into(),
        headers: vec![
            ("authorization".into(), admin.clone()),
            ("content-length".into(), "2".into()),
        ],
        body: Some(Bytes::from_static(
            b"{}GET /api/v1/smuggled HTTP/1.1\r\n\r\n",
        )),
        authority: None,
        status: 0,
        crm: None,
    });
    // The hyper engine's (Pingora's plane sees only the head: no DATA, no `:authority`).
    let hyper = engine() != "pingora";
    // A body on GET or DELETE (DATA frames, with or without a length): 400
    // `body_not_allowed`, nothing forwarded (a CRM that does not read it would take it for
    // its next request).
    for (method, length) in [("GET", None), ("GET", Some("33")), ("DELETE", None)]
        .into_iter()
        .filter(|_| hyper)
    {
        let mut headers = vec![("authorization".to_string(), admin.clone())];
        if let Some(l) = length {
            headers.push(("content-length".into(), l.into()));
        }
        cases.push(H2Case {
            name: format!("{method} with DATA, content-length {length:?}"),
            method,
            path: "/api/v1/customers/1".into(),
            headers,
            body: Some(Bytes::from_static(b"GET /api/v1/smuggled HTTP/1.1\r\n\r\n")),
            authority: None,
            status: 400,
            crm: None,
        });
    }
    // `:authority`: a bare host[:port], and the same as a Host beside it.
    for (authority, host, status) in [
        ("u_admin@crm.test", None, 400),
        ("u:p@crm.test:80", None, 400),
        ("crm.test:8080", None, 200),
        ("crm.test", Some("crm.test"), 200),
        ("crm.test", Some("other.test"), 400),
        ("crm.test", Some("u@crm.test"), 400),
    ]
    .into_iter()
    .filter(|_| hyper)
    {
        let mut headers = vec![("authorization".to_string(), rep.clone())];
        if let Some(h) = host {
            headers.push(("host".into(), h.into()));
        }
        cases.push(H2Case {
            name: format!(":authority {authority}, host {host:?}"),
            method: "GET",
            path: "/api/v1/customers/1".into(),
            headers,
            body: None,
            authority: Some(authority),
            status,
            crm: (status == 200).then_some("/api/v1/customers/1"),
        });
    }
    let n = cases.len();
    for c in &cases {
        h.clear();
        let status = send(&h, c).await;
        assert_eq!(status, c.status, "{}", c.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = h.received();
        match c.crm {
            None => assert!(
                got.iter().all(|r| !r.target.contains("smuggled"))
                    && (c.status == 0 || got.is_empty()),
                "{}: the CRM received {got:?}",
                c.name
            ),
            Some(target) => {
                assert_eq!(got.len(), 1, "{}: {got:?}", c.name);
                assert_eq!(got[0].target, target, "{}", c.name);
                let user = if c.headers.iter().any(|(_, v)| v == &admin) {
                    "u-admin"
                } else {
                    "u-rep1"
                };
                assert_eq!(
                    recorded_header(&got[0], "x-permgate-user"),
                    vec![user],
                    "{}",
                    c.name
                );
                for (name, value) in &got[0].headers {
                    let folded = name.replace(['_', '.'], "-");
                    let spoofed = [
                        "x-remote-user",
                        "x-forwarded-user",
                        "x-original-url",
                        "x-rewrite-url",
                        "forwarded",
                        "x-real-ip",
                    ]
                    .contains(&folded.as_str())
                        || (folded.starts_with("x-permgate-")
                            && !matches!(name.as_str(), "x-permgate-user" | "x-permgate-roles"));
                    assert!(!spoofed, "{}: the CRM received {name}: {value}", c.name);
                }
            }
        }
    }
    println!("adversarial class http2: {n} cases");
    // The server's stream limit is announced (listen.h2_max_concurrent_streams, default 100).
    let client = connect(&h).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.current_max_send_streams(), 100);
}

/// The streams of one HTTP/2 connection are served side by side (they run in the
/// connection's own task): a call the CRM answers late holds up none of the others, and
/// many at once each get their own CRM answer, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_one_connection_are_served_side_by_side() {
    let crm = RawCrm::start(|line, _| {
        // `GET /api/v1/customers/ID HTTP/1.1`: the answer names ID; 999 is answered late (4 s,
        // within the demo config's 5 s `upstream.read_timeout_ms`).
        let id = line
            .split(' ')
            .nth(1)
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let body = format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(3000));
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if id == "999" {
            Reply::After(Duration::from_secs(4), answer)
        } else {
            Reply::Send(answer)
        }
    })
    .await;
    let h = Harness::start_custom(&demo_config(), Some(crm.addr)).await;
    let rep = bearer("u-rep1");
    let get = |id: u32| {
        http::Request::builder()
            .uri(format!("http://crm/api/v1/customers/{id}"))
            .header("authorization", rep.as_str())
            .body(())
            .unwrap()
    };
    async fn body_of(resp: http::Response<h2::RecvStream>) -> (u16, Vec<u8>) {
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        (status, bytes)
    }
    let mut client = connect(&h).await;
    let (late, _) = client.send_request(get(999), true).unwrap();
    let late = tokio::spawn(late);
    let mut calls = Vec::new();
    for id in 1..=40 {
        client = client.ready().await.unwrap();
        let (resp, _) = client.send_request(get(id), true).unwrap();
        // Each answer's body is read as it comes, beside the others: read one at a time, the
        // unread bodies of the others (41 × 3 KB) would fill the connection's 64 KiB flow-control
        // window and hold up the one being read (a deadlock of the test, not of the gateway).
        calls.push((
            id,
            tokio::spawn(async move { body_of(resp.await.unwrap()).await }),
        ));
    }
    for (id, call) in calls {
        let (status, body) = tokio::time::timeout(Duration::from_secs(6), call)
            .await
            .unwrap_or_else(|_| panic!("call {id} waited behind the late one"))
            .unwrap();
        assert_eq!(status, 200, "call {id}");
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with(&format!("{{\"id\":\"{id}\",")),
            "call {id}: {text}"
        );
        assert_eq!(text.len(), 3018 + id.to_string().len(), "call {id}");
    }
    assert!(
        !late.is_finished(),
        "the late answer came before the others"
    );
    let resp = tokio::time::timeout(Duration::from_secs(20), late)
        .await
        .expect("the late call is answered")
        .unwrap()
        .unwrap();
    assert_eq!(body_of(resp).await.0, 200);
    assert_eq!(crm.seen.count("GET /api/v1/customers/"), 41);
}
