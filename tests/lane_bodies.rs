//! Request bodies on the HTTP/1.1 lane (`listen.h1_lane`, on by default): a call with a body on
//! a streamed route is served by the lane, its body streamed to the CRM, and the connection
//! stays on the lane for the calls after it. Raw on the wire, one keep-alive connection. The
//! suite also runs with the lane off (`PERMGATE_TEST_H1_LANE=off`): the same answers from
//! hyper's server, and the lane's counters stay at 0 — so each answer here is hyper's too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// One answer read off `stream`: status, headers (names lowercase), body (de-chunked).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The answer as it came on the wire.
    raw: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "{} {:?} {}",
                self.status,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        });
        v["error"].as_str().unwrap_or_default().to_string()
    }
}

/// Reads answers off one connection, keeping what came after each.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(h: &Harness) -> Conn {
        let stream = TcpStream::connect(h.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut piece = [0u8; 8192];
        match self.stream.read(&mut piece) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&piece[..n]);
                true
            }
        }
    }

    /// The connection is closed by the gateway (nothing more to read).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    /// The next answer (informational ones included).
    fn answer(&mut self) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill(), "closed before an answer head");
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut raw: Vec<u8> = self.buf.drain(..end).collect();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
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
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            raw: Vec::new(),
        };
        if status < 200 {
            answer.raw = raw;
            return answer;
        }
        if let Some(n) = answer.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill(), "closed in an answer body");
            }
            answer.body = self.buf.drain(..n).collect();
            raw.extend_from_slice(&answer.body);
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill());
                };
                let size = std::str::from_utf8(&self.buf[..line]).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                while self.buf.len() < line + 2 + size + 2 {
                    assert!(self.fill());
                }
                answer
                    .body
                    .extend_from_slice(&self.buf[line + 2..line + 2 + size]);
                raw.extend(self.buf.drain(..line + 2 + size + 2));
                if size == 0 {
                    break;
                }
            }
        }
        answer.raw = raw;
        answer
    }
}

fn post_head(path: &str, user: &str, framing: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: crm\r\n{}\r\nContent-Type: application/json\r\n{framing}\r\n",
        format_args!("Authorization: {}", bearer(user))
    )
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for p in body.chunks(piece) {
        raw.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        raw.extend_from_slice(p);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

/// The demo config with `listen` lines, and an admin section for `/metrics`.
async fn gateway(listen: &str) -> (Harness, String, tempfile::TempDir) {
    gateway_to(listen, None).await
}

/// [`gateway`], its calls sent to `upstream` when given (else to the harness's sample CRM).
async fn gateway_to(
    listen: &str,
    upstream: Option<std::net::SocketAddr>,
) -> (Harness, String, tempfile::TempDir) {
    let (admin, port) = admin_section();
    let text =
        demo_config_text().replacen("[listen]\n", &format!("[listen]\n{listen}\n"), 1) + &admin;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), upstream).await;
    (h, format!("http://127.0.0.1:{port}"), dir)
}

/// (calls served by the lane, bodies it streamed).
async fn lane_counters(admin: &str) -> (u64, u64) {
    let m = admin_metrics(admin).await;
    (
        metric(&m, "permgate_lane_requests_total "),
        metric(&m, "permgate_lane_request_bodies_total "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_a_body_and_the_calls_after_it_stay_on_the_lane() {
    let (h, admin, _dir) = gateway("").await;
    let before = lane_counters(&admin).await;
    let mut c = Conn::open(&h);
    let path = "/api/v1/customers/1/subscribe";
    // A length body, then a bodiless call, then a chunked body, then a length body and the
    // next request in one write (pipelined), all on one connection.
    let body = br#"{"list":"newsletter","note":"one"}"#;
    let mut raw = post_head(
        path,
        "u-admin",
        &format!("Content-Length: {}\r\n", body.len()),
    )
    .into_bytes();
    raw.extend_from_slice(body);
    c.send(&raw);
    let a = c.answer();
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_ne!(a.header("connection"), Some("close"));
    c.send(
        format!(
            "GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\n\r\n",
            bearer("u-admin")
        )
        .as_bytes(),
    );
    assert_eq!(c.answer().status, 200);
    let chunked_body = br#"{"list":"newsletter","note":"a chunked body in pieces of 5 bytes"}"#;
    let mut raw = post_head(path, "u-admin", "Transfer-Encoding: chunked\r\n").into_bytes();
    raw.extend_from_slice(&chunked(chunked_body, 5));
    c.send(&raw);
    assert_eq!(c.answer().status, 200);
    let mut raw = post_head(
        path,
        "u-admin",
        &format!("Content-Length: {}\r\n", body.len()),
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw.extend_from_slice(
        format!(
            "GET /api/v1/customers/2 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer("u-admin")
        )
        .as_bytes(),
    );
    c.send(&raw);
    assert_eq!(c.answer().status, 200);
    let last = c.answer();
    assert_eq!(last.status, 200);
    assert!(c.closed());
    // The CRM got each body whole, framed by a length or chunked as it came.
    let got = h.received();
    let posts: Vec<_> = got.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 3, "{got:?}");
    assert_eq!(posts[0].body.as_bytes(), body);
    assert_eq!(
        recorded_header(posts[0], "content-length"),
        vec![body.len().to_string()]
    );
    assert_eq!(posts[1].body.as_bytes(), chunked_body);
    assert_eq!(
        recorded_header(posts[1], "transfer-encoding"),
        vec!["chunked"]
    );
    assert!(recorded_header(posts[1], "content-length").is_empty());
    assert_eq!(posts[2].body.as_bytes(), body);
    assert_eq!(got.len(), 5, "{got:?}");
    // Each call is counted before its connection moves on (the last: before it closes).
    let after = lane_counters(&admin).await;
    if h1_lane() {
        // All five calls, three with a body, served by the lane: no hand-over to hyper.
        assert_eq!((after.0 - before.0, after.1 - before.1), (5, 3));
    } else {
        assert_eq!(after, (0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_refused_on_the_lane_as_on_hyper() {
    let (h, admin, _dir) = gateway("max_body_bytes = 1000\nbody_read_timeout_ms = 300").await;
    let path = "/api/v1/customers/1/subscribe";
    let before = lane_counters(&admin).await;

    // Over listen.max_body_bytes, declared: refused before it is read.
    let mut c = Conn::open(&h);
    c.send(post_head(path, "u-admin", "Content-Length: 5000\r\n").as_bytes());
    let a = c.answer();
    assert_eq!((a.status, a.code().as_str()), (413, "body_too_large"));
    assert!(c.closed());

    // Over the limit, chunked: cut once past it.
    let mut c = Conn::open(&h);
    let mut raw = post_head(path, "u-admin", "Transfer-Encoding: chunked\r\n").into_bytes();
    raw.extend_from_slice(&chunked(&[b'x'; 3000], 500));
    c.send(&raw);
    let a = c.answer();
    assert_eq!((a.status, a.code().as_str()), (413, "body_too_large"));
    assert!(c.closed());

    // A malformed chunk: 400, the connection closed, nothing after it read as a request.
    let mut c = Conn::open(&h);
    let mut raw = post_head(path, "u-admin", "Transfer-Encoding: chunked\r\n").into_bytes();
    raw.extend_from_slice(b"2\r\n{}XX0\r\n\r\nGET /api/v1/smuggled HTTP/1.1\r\nHost: crm\r\n\r\n");
    c.send(&raw);
    let a = c.answer();
    assert_eq!((a.status, a.code().as_str()), (400, "bad_request"));
    assert!(c.closed());

    // A body that stalls: 408 after listen.body_read_timeout_ms.
    let mut c = Conn::open(&h);
    let mut raw = post_head(path, "u-admin", "Content-Length: 100\r\n").into_bytes();
    raw.extend_from_slice(b"{\"list\":");
    c.send(&raw);
    let a = c.answer();
    assert_eq!((a.status, a.code().as_str()), (408, "request_timeout"));
    assert!(c.closed());

    // A call refused with its body not forwarded. On the lane, a body of a plain
    // Content-Length already wholly read is skipped and the connection goes on (the next call
    // on it is answered); hyper's server closes the connection.
    let mut c = Conn::open(&h);
    let mut raw = post_head(path, "u-member", "Content-Length: 2\r\n").into_bytes();
    raw.extend_from_slice(b"{}");
    c.send(&raw);
    let a = c.answer();
    assert_eq!(a.status, 403, "{}", String::from_utf8_lossy(&a.body));
    if h1_lane() {
        assert_eq!(a.header("connection"), None);
        c.send(
            format!(
                "GET /api/v1/customers/2 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                bearer("u-admin")
            )
            .as_bytes(),
        );
        assert_eq!(
            c.answer().status,
            200,
            "the body was skipped, not read as a request"
        );
    } else {
        assert_eq!(a.header("connection"), Some("close"));
    }
    assert!(c.closed());
    // A refused call whose body is not all there yet (or chunked): the answer closes the
    // connection on both paths, the rest of the body unread.
    for framing in ["Content-Length: 100\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut c = Conn::open(&h);
        let mut raw = post_head(path, "u-member", framing).into_bytes();
        raw.extend_from_slice(b"2\r\n{}");
        c.send(&raw);
        let a = c.answer();
        assert_eq!(
            a.status,
            403,
            "{framing}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("connection"), Some("close"), "{framing}");
        assert!(c.closed(), "{framing}");
    }

    // `Expect: 100-continue`: 100 Continue once the call is allowed, then the answer; none
    // when it is refused.
    let mut c = Conn::open(&h);
    c.send(
        post_head(
            path,
            "u-admin",
            "Expect: 100-continue\r\nContent-Length: 2\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(c.answer().status, 100);
    c.send(b"{}");
    let a = c.answer();
    assert_eq!(a.status, 200);
    let mut c = Conn::open(&h);
    c.send(
        post_head(
            path,
            "u-member",
            "Expect: 100-continue\r\nContent-Length: 2\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(c.answer().status, 403);
    // A declared body over the limit with `Expect: 100-continue`: the 413 instead of 100
    // Continue (RFC 9110 §10.1.1: no body asked for only to be discarded), then the close.
    let mut c = Conn::open(&h);
    c.send(
        post_head(
            path,
            "u-admin",
            "Expect: 100-continue\r\nContent-Length: 5000\r\n",
        )
        .as_bytes(),
    );
    let a = c.answer();
    assert_eq!((a.status, a.code().as_str()), (413, "body_too_large"));
    assert!(c.closed());

    let posts: Vec<_> = h
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    // The malformed and the stalled bodies may have reached the CRM in part (their calls
    // were cut); the refused ones never did; the 100-continue one whole.
    assert!(posts.iter().all(|r| r.body.len() <= 3000), "{posts:?}");
    assert!(posts.iter().any(|r| r.body == "{}"), "{posts:?}");
    if h1_lane() {
        // All eleven calls on the lane (each counted once its answer is written: the eight
        // above, the GET after a skipped body and the two refused with their bodies not all
        // there), the four that reached forwarding with their body.
        let all = eventually(5, || async {
            lane_counters(&admin).await == (before.0 + 11, before.1 + 4)
        })
        .await;
        assert!(all, "{:?} then {:?}", before, lane_counters(&admin).await);
    } else {
        let after = lane_counters(&admin).await;
        assert_eq!(after, (0, 0));
    }
}

/// An answer's bytes with what differs from one gateway to another taken out: the request id
/// (its header and in a JSON body) and the `Date` header; the header lines sorted (the lane
/// writes the framing header after the others, hyper's server where the CRM had it: the
/// order of fields with different names carries no meaning, RFC 9110 §5.3), each line and the
/// body byte for byte.
fn normalized(a: &Answer) -> String {
    let mut text = String::from_utf8_lossy(&a.raw).to_string();
    if let Some(id) = a.header("x-request-id") {
        text = text.replace(id, "<id>");
    }
    let text = without_timestamps(&text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let mut fields: Vec<&str> = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    fields.sort_unstable();
    format!("{status}\r\n{}\r\n\r\n{body}", fields.join("\r\n"))
}

/// `text` with each RFC 3339 UTC timestamp (`2026-12-06T18:28:28Z`, the CRM's `created_at`)
/// replaced: the two gateways' CRMs create their records a few seconds apart.
fn without_timestamps(text: &str) -> String {
    let shape = b"dddd-dd-ddTdd:dd:ddZ";
    let fits = |w: &[u8]| {
        w.iter().zip(shape).all(|(b, s)| {
            if *s == b'd' {
                b.is_ascii_digit()
            } else {
                b == s
            }
        })
    };
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        if bytes.len() - i >= shape.len() && fits(&bytes[i..i + shape.len()]) {
            out.extend_from_slice(b"<time>");
            i += shape.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A chunked body ending with `n` trailer fields.
fn chunked_with_trailers(body: &[u8], n: usize) -> Vec<u8> {
    let mut raw = chunked(body, 16);
    raw.truncate(raw.len() - 2);
    for i in 0..n {
        raw.extend_from_slice(format!("x-t{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

/// Inspected routes (bulk trim, field checks) on the lane: the same raw calls to a gateway with
/// the lane and to one without (`listen.h1_lane = false`, hyper's server) get the same answers
/// byte for byte (but the request id and `Date`), and the lane keeps the connection after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_bodies_answer_on_the_lane_byte_for_byte_as_on_hyper() {
    let (lane, admin, _d1) = gateway("body_read_timeout_ms = 300").await;
    let (hyper, _, _d2) = gateway("body_read_timeout_ms = 300\nh1_lane = false").await;
    let bulk = "/api/v1/deals/bulk-reassign";
    let trim = br#"{"ids":[4,12,5,6],"owner_id":"u-rep1"}"#;
    let length = |path: &str, body: &[u8], extra: &str| {
        let mut raw = post_head(
            path,
            "u-rep2",
            &format!("{extra}Content-Length: {}\r\n", body.len()),
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw
    };
    let with_chunks = |path: &str, body: Vec<u8>| {
        let mut raw = post_head(path, "u-rep2", "Transfer-Encoding: chunked\r\n").into_bytes();
        raw.extend_from_slice(&body);
        raw
    };
    let get = format!(
        "GET /api/v1/deals/4 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\n\r\n",
        bearer("u-rep2")
    );
    // On one keep-alive connection: (request, expected status).
    let kept: Vec<(Vec<u8>, u16)> = vec![
        // A bulk trimmed (length, then chunked in pieces).
        (length(bulk, trim, ""), 200),
        (with_chunks(bulk, chunked(trim, 5)), 200),
        // Field checks: a refused assignee (the body read: the connection stays), then allowed.
        (
            length(
                "/api/v1/tasks",
                br#"{"title":"x","assigned_to":["u-rep1","u-csr"]}"#,
                "",
            ),
            403,
        ),
        (
            length(
                "/api/v1/tasks",
                br#"{"title":"x","assigned_to":"u-rep1"}"#,
                "",
            ),
            400,
        ),
        (
            length(
                "/api/v1/tasks",
                br#"{"title":"Call back","assigned_to":["u-rep2"]}"#,
                "",
            ),
            201,
        ),
        // A body that is not JSON on a checked route.
        (length(bulk, b"{not json", ""), 400),
        // 257 trailer fields are taken (hyper's cap), then a bodiless call.
        (with_chunks(bulk, chunked_with_trailers(trim, 257)), 200),
        (get.clone().into_bytes(), 200),
    ];
    // Each on its own connection, closed after its answer: (request, status, code).
    let closing: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            {
                let mut raw = format!(
                    "POST {bulk} HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{{}}",
                    bearer("u-rep2")
                )
                .into_bytes();
                raw.truncate(raw.len());
                raw
            },
            415,
            "unsupported_media_type",
        ),
        (
            post_head(bulk, "u-rep2", "Content-Length: 50000000\r\n").into_bytes(),
            413,
            "body_too_large",
        ),
        // The same with `Expect: 100-continue`: the 413 instead of 100 Continue on both paths
        // (RFC 9110 §10.1.1; the first answer read is the 413).
        (
            post_head(
                bulk,
                "u-rep2",
                "Expect: 100-continue\r\nContent-Length: 50000000\r\n",
            )
            .into_bytes(),
            413,
            "body_too_large",
        ),
        (
            with_chunks(bulk, b"2\r\n{}XX0\r\n\r\n".to_vec()),
            400,
            "bad_request",
        ),
        // One trailer field over hyper's cap of 257: malformed, 400.
        (
            with_chunks(bulk, chunked_with_trailers(trim, 258)),
            400,
            "bad_request",
        ),
        // A body that stalls.
        (
            {
                let mut raw = post_head(bulk, "u-rep2", "Content-Length: 100\r\n").into_bytes();
                raw.extend_from_slice(b"{\"ids\":");
                raw
            },
            408,
            "request_timeout",
        ),
    ];
    let before = lane_counters(&admin).await;
    let mut answers: Vec<Vec<String>> = Vec::new();
    for h in [&lane, &hyper] {
        let mut seen = Vec::new();
        let mut c = Conn::open(h);
        for (raw, status) in &kept {
            c.send(raw);
            let a = c.answer();
            assert_eq!(a.status, *status, "{}", String::from_utf8_lossy(&a.raw));
            assert_ne!(a.header("connection"), Some("close"));
            seen.push(normalized(&a));
        }
        // `Expect: 100-continue`: 100 Continue, then the answer.
        c.send(
            post_head(
                bulk,
                "u-rep2",
                &format!("Expect: 100-continue\r\nContent-Length: {}\r\n", trim.len()),
            )
            .as_bytes(),
        );
        let a = c.answer();
        assert_eq!(a.status, 100);
        seen.push(normalized(&a));
        c.send(trim);
        let a = c.answer();
        assert_eq!(a.status, 200);
        seen.push(normalized(&a));
        for (raw, status, code) in &closing {
            let mut c = Conn::open(h);
            c.send(raw);
            let a = c.answer();
            assert_eq!((a.status, a.code().as_str()), (*status, *code));
            assert!(c.closed());
            seen.push(normalized(&a));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0].len(), answers[1].len());
    for (l, h) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(l, h, "lane vs hyper");
    }
    // The trimmed calls: the removed deals named, the CRM got exactly the rest with its length.
    assert!(
        answers[0][0].contains("x-permgate-removed-count: "),
        "{}",
        answers[0][0]
    );
    for h in [&lane, &hyper] {
        let posts: Vec<_> = h
            .received()
            .into_iter()
            .filter(|r| r.method == "POST" && r.target == bulk)
            .collect();
        assert!(posts.len() >= 4, "{posts:?}");
        for p in &posts[..2] {
            assert_eq!(
                recorded_header(p, "content-length"),
                vec![p.body.len().to_string()]
            );
            assert!(recorded_header(p, "transfer-encoding").is_empty());
        }
        assert_eq!(posts[0].body, posts[1].body);
        assert_ne!(posts[0].body.as_bytes(), trim, "trimmed");
    }
    let after = lane_counters(&admin).await;
    if h1_lane() {
        // Every call to the lane's gateway served by the lane: none handed over.
        let calls = (kept.len() + 1 + closing.len()) as u64;
        assert_eq!(after.0 - before.0, calls);
    } else {
        assert_eq!(after, (0, 0));
    }
}

/// The CRM answers before it has read the whole body (a 413 or a 401 it sends right after the
/// head, then it closes): hyper's client passes that answer on, and so does the lane (it was a
/// 502 there). The same raw calls to a lane gateway and to one without the lane get the same
/// answer (but the request id, `Date` and `Connection`: hyper's server names the close only
/// when it saw the body dropped before writing the head, a race; the lane always does), and
/// both close the connection after it, the rest of the body unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_crm_answer_mid_body_is_passed_on_as_on_hyper() {
    let crm = RawCrm::start(|line, _| {
        let answer = if line.contains("/unsubscribe") {
            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"crm\"\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"error\":\"auth\"}\n"
        } else {
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{\"error\":\"too_large\"}\n"
        };
        Reply::SendThenClose(answer.into())
    })
    .await;
    let (lane, admin, _d1) = gateway_to("", Some(crm.addr)).await;
    let (hyper, _, _d2) = gateway_to("h1_lane = false", Some(crm.addr)).await;
    // (request as sent: a head and the start of its body, the status the CRM answers)
    let calls: Vec<(Vec<u8>, u16)> = vec![
        (
            {
                let mut raw = post_head(
                    "/api/v1/customers/1/subscribe",
                    "u-admin",
                    "Content-Length: 100000\r\n",
                )
                .into_bytes();
                raw.extend_from_slice(br#"{"list":"newsletter","note":""#);
                raw
            },
            413,
        ),
        (
            {
                let mut raw = post_head(
                    "/api/v1/customers/1/unsubscribe",
                    "u-admin",
                    "Transfer-Encoding: chunked\r\n",
                )
                .into_bytes();
                raw.extend_from_slice(b"8\r\n{\"list\":\r\n");
                raw
            },
            401,
        ),
    ];
    let before = lane_counters(&admin).await;
    let mut answers: Vec<Vec<String>> = Vec::new();
    for h in [&lane, &hyper] {
        let mut seen = Vec::new();
        for (raw, status) in &calls {
            let mut c = Conn::open(h);
            c.send(raw);
            let a = c.answer();
            assert_eq!(a.status, *status, "{}", String::from_utf8_lossy(&a.raw));
            assert!(c.closed(), "the connection closes after an early answer");
            let text: Vec<String> = normalized(&a)
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .map(str::to_string)
                .collect();
            seen.push(text.join("\r\n"));
        }
        answers.push(seen);
    }
    for (l, h) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(l, h, "lane vs hyper");
    }
    assert!(
        answers[0][1].contains("www-authenticate: Basic"),
        "{}",
        answers[0][1]
    );
    let after = lane_counters(&admin).await;
    if h1_lane() {
        // Both calls served by the lane, each with its body streamed (in part).
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 2));
    } else {
        assert_eq!(after, (0, 0));
    }
}

/// A chunked answer's trailer fields: at most 100 (hyper's client's cap, the lane's
/// `MAX_ANSWER_TRAILERS`). With 100 both gateways pass the body on whole (the trailer fields
/// dropped); with 101 both cut the answer (its end never comes) and close the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_with_too_many_trailer_fields_is_cut_on_both_paths() {
    fn answer(n: usize) -> String {
        let mut a = String::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        );
        for i in 0..n {
            a.push_str(&format!("x-t{i}: v\r\n"));
        }
        a.push_str("\r\n");
        a
    }
    let crm = RawCrm::start(|line, _| {
        if line.contains("/customers/1 ") {
            Reply::Send(answer(100))
        } else {
            Reply::Send(answer(101))
        }
    })
    .await;
    let (lane, _admin, _d1) = gateway_to("", Some(crm.addr)).await;
    let (hyper, _, _d2) = gateway_to("h1_lane = false", Some(crm.addr)).await;
    let get = |id: u32| {
        format!(
            "GET /api/v1/customers/{id} HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\n\r\n",
            bearer("u-admin")
        )
    };
    for h in [&lane, &hyper] {
        // 100 fields: the whole body, no trailer passed on, the connection kept.
        let mut c = Conn::open(h);
        c.send(get(1).as_bytes());
        let a = c.answer();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
        assert!(!String::from_utf8_lossy(&a.raw).contains("x-t0"));
        c.send(get(1).as_bytes());
        assert_eq!(c.answer().status, 200);
        // 101 fields: at most the head and what came of the body (nothing when the refusal
        // came in the same read), then the connection closes without the body's end.
        let mut c = Conn::open(h);
        c.send(get(2).as_bytes());
        while c.fill() {}
        assert!(
            c.buf.is_empty() || c.buf.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&c.buf)
        );
        assert!(
            !c.buf.ends_with(b"0\r\n\r\n"),
            "the answer was not cut: {}",
            String::from_utf8_lossy(&c.buf)
        );
    }
}
