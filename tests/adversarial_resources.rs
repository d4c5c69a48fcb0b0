//! The attacker's suite, part 4: resources. Slow and endless requests, idle connections, too
//! many or too large headers: each is cut off or refused in bounded time, and the gateway keeps
//! answering the next caller. Limits are set low here (`[listen]`) so the test stays short.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn config() -> String {
    let text = demo_config_text()
        .replacen(
            "threads = 1\n",
            "threads = 1\nbody_read_timeout_ms = 1000\nkeepalive_timeout_seconds = 1\n",
            1,
        )
        .replacen("total_timeout_ms = 30000", "total_timeout_ms = 3000", 1)
        .replacen(
            "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"",
            "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"\nbulk = { type = \"lead\", items = \"/ids\" }",
            1,
        );
    assert!(text.contains("body_read_timeout_ms") && text.contains("bulk = {"));
    text + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n"
}

/// Read until the server closes or `limit` passes; what was read and when the read ended.
fn read_until_close(s: &mut TcpStream, limit: Duration) -> (String, Duration, bool) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&buf).into(), start.elapsed(), true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&buf).into(), start.elapsed(), true),
        }
    }
    (String::from_utf8_lossy(&buf).into(), start.elapsed(), false)
}

fn healthy(h: &Harness) {
    let r = h.raw(
        format!(
            "GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer("u-admin")
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "the gateway still answers: {r:?}");
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_bounded() {
    let h = Harness::with_config_text(&config(), &[]).await;
    let admin = bearer("u-admin");
    let mut cases = 0;

    // 1. Idle keep-alive: closed after keepalive_timeout_seconds (1 s here).
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(
        format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (text, took, closed) = read_until_close(&mut s, Duration::from_secs(6));
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(closed, "an idle keep-alive connection is closed ({took:?})");
    cases += 1;

    // 2. Slow headers on a kept-alive connection: the next request's head must arrive within
    //    the keep-alive timeout too.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\n\r\nGET /api/v1/cust").as_bytes())
        .unwrap();
    let (text, took, closed) = read_until_close(&mut s, Duration::from_secs(6));
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(closed, "a stalled second head is cut off ({took:?})");
    cases += 1;

    // 3. Slow bodies, streamed and inspected: cut off after body_read_timeout_ms (1 s).
    for (name, target, ct) in [
        (
            "streamed",
            "/api/v1/customers/1/subscribe",
            "application/json",
        ),
        (
            "inspected",
            "/api/v1/leads/bulk-reassign",
            "application/json",
        ),
    ] {
        h.clear();
        let mut s = TcpStream::connect(h.addr).unwrap();
        s.write_all(format!("POST {target} HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\nContent-Type: {ct}\r\nContent-Length: 100\r\n\r\n{{\"ids\":").as_bytes())
            .unwrap();
        let (text, took, closed) = read_until_close(&mut s, Duration::from_secs(8));
        assert!(
            closed,
            "{name}: a stalled body is cut off ({took:?}): {text}"
        );
        let status = status_of(&text);
        assert_eq!(status, 408, "{name}: {text}");
        assert!(text.contains("request_timeout"), "{name}: {text}");
        if name == "inspected" {
            assert!(h.received().is_empty(), "{name}: {:?}", h.received());
        }
        println!("  slow body, {name}: status {status}, closed after {took:?}");
        cases += 1;
        healthy(&h);
    }

    // 3b. A body trickled within the read timeout: cut off at the total timeout (3 s here).
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(format!("POST /api/v1/customers/1/subscribe HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n").as_bytes())
        .unwrap();
    let start = Instant::now();
    s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    while start.elapsed() < Duration::from_secs(10) {
        if s.write_all(b" ").is_err() {
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let answered =
            !matches!(s.peek(&mut peek), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (text, _, _) = read_until_close(&mut s, Duration::from_secs(3));
    let took = start.elapsed();
    println!(
        "  trickled body: {:?}, cut after {took:?}",
        text.lines().next()
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let status = status_of(&text);
    assert!(status == 408 || status == 0, "{text}");
    cases += 1;
    healthy(&h);

    // 4. An endless chunked body on an inspected route: 413 once over the limit.
    h.clear();
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(format!("POST /api/v1/leads/bulk-reassign HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 4096, "1".repeat(4096));
    let start = Instant::now();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    while start.elapsed() < Duration::from_secs(10) {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
        // Stop writing once the answer is there.
        s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let answered = matches!(s.peek(&mut peek), Ok(n) if n > 0);
        s.set_nonblocking(false).unwrap();
        if answered {
            break;
        }
    }
    let (text, took, _) = read_until_close(&mut s, Duration::from_secs(5));
    assert_eq!(status_of(&text), 413, "{text}");
    assert!(start.elapsed() < Duration::from_secs(15), "{took:?}");
    assert!(h.received().is_empty());
    cases += 1;
    healthy(&h);

    // 5. Too many and too large headers.
    let many: String = (0..150).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(40_000));
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1_100_000));
    let too_many_for_pingora: String = (0..300).map(|i| format!("X-H{i}: 1\r\n")).collect();
    for (name, extra, want) in [
        ("150 headers", many.as_str(), vec![431]),
        ("40 KB of headers", big.as_str(), vec![431]),
        // Beyond the parser's own limits (Pingora: 256 headers, 1 MiB; the hyper engine sets
        // hyper's to 257 headers): its bare 400 or 431, or a close.
        (
            "300 headers",
            too_many_for_pingora.as_str(),
            vec![400, 431, 0],
        ),
        ("1.1 MB header", huge.as_str(), vec![400, 431, 0]),
    ] {
        h.clear();
        let mut s = TcpStream::connect(h.addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(
            format!("GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {admin}\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
        );
        let (text, took, closed) = read_until_close(&mut s, Duration::from_secs(8));
        let status = status_of(&text);
        assert!(want.contains(&status), "{name}: {status} {text:.200}");
        assert!(closed, "{name}: {took:?}");
        // Within the parsers' limits, the gateway's own answer.
        if name == "150 headers" || name == "40 KB of headers" {
            assert!(text.contains("headers_too_large"), "{text:.300}");
        }
        assert!(h.received().is_empty(), "{name}");
        cases += 1;
        healthy(&h);
    }

    // 5b. An idle HTTP/2 connection is closed after the keep-alive timeout too.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(h.url("/api/v1/customers/1"))
        .header("authorization", admin.as_str())
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
    assert!(ended.is_ok(), "an idle h2 connection is closed");
    println!("  idle h2 connection closed after {:?}", start.elapsed());
    cases += 1;

    // 6. Many slow-header connections at once do not starve other callers.
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(h.addr).unwrap();
            let _ = s.write_all(b"GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\n");
            s
        })
        .collect();
    let start = Instant::now();
    healthy(&h);
    assert!(start.elapsed() < Duration::from_secs(5));
    idle.clear();
    cases += 1;
    println!("adversarial class resources: {cases} cases");
}

/// A first request head sent a byte at a time (slowloris) is cut off at the keep-alive timeout
/// (1 s here) on the hyper engine, however steadily the bytes come. The Pingora engine reads a
/// first head under its fixed 60 s per-read timeout with no total deadline (README, "Known
/// limits"), so there the test only checks the gateway keeps answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_first_head_is_cut_off() {
    let h = Harness::with_config_text(&config(), &[]).await;
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let head = format!(
        "GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    let start = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    // One byte every 100 ms: the connection never goes quiet, the head never ends in time.
    for b in head.bytes().take(80) {
        if s.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    println!(
        "trickled head on {}: closed {closed} after {took:?}, {sent} bytes sent",
        engine()
    );
    if engine() == "hyper" {
        assert!(closed, "a head trickled for {took:?} is cut off");
        assert!(
            took < Duration::from_secs(4),
            "cut off near the 1 s keep-alive timeout, not later: {took:?}"
        );
        assert!(h.received().is_empty(), "nothing reached the CRM");
    }
    healthy(&h);
}
