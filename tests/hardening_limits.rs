//! Load limits toward clients (issue 14, item 6): `listen.max_connections`, `listen.backlog`,
//! `listen.write_timeout_ms`, and the rate limits (`[rate_limit] per_caller`, a route's
//! `rate_limit`), through the real binary and real sockets on loopback. Run on the hyper engine
//! with its HTTP/1.1 lane and with `PERMGATE_TEST_H1_LANE=off`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A gateway in front of the sample CRM (or `crm`) with its config in a folder of its own.
struct Gw {
    h: Harness,
    /// The admin API's base URL.
    admin: String,
    _dir: tempfile::TempDir,
}

/// The demo config with `listen` lines added to `[listen]`, edited by `edit`, and `extra`
/// appended (an admin section is always added).
async fn gateway(listen: &str, edit: impl Fn(String) -> String, extra: &str) -> Gw {
    gateway_to(None, listen, edit, extra).await
}

async fn gateway_to(
    crm: Option<SocketAddr>,
    listen: &str,
    edit: impl Fn(String) -> String,
    extra: &str,
) -> Gw {
    let (admin, port) = admin_section();
    let text = edit(demo_config_text()).replacen("[listen]\n", &format!("[listen]\n{listen}\n"), 1)
        + &admin
        + extra;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    let h = Harness::start_custom(&dir.path().join("permgate.toml"), crm).await;
    Gw {
        h,
        admin: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn metrics(admin: &str) -> String {
    admin_metrics(admin).await
}

const HEALTH: &[u8] = b"GET /__crm/health HTTP/1.1\r\nHost: crm\r\n\r\n";

/// Read one answer (head and a `Content-Length` body) from a kept-alive connection; `None`
/// when nothing complete arrives within `wait`.
fn read_answer(s: &mut TcpStream, wait: Duration) -> Option<String> {
    let until = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
    }
}

/// An open keep-alive connection that was served once.
fn served_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(HEALTH).unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(10)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s
}

/// `listen.max_connections = 2`: with two idle keep-alive connections open, a third is not
/// accepted (it waits in the listen backlog, unanswered) until one of the two closes; then it
/// is served. The pause is counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_new_connections_until_one_closes() {
    let Gw { h, admin, _dir } = gateway("max_connections = 2", |t| t, "").await;
    let first = served_connection(h.addr);
    let mut second = served_connection(h.addr);
    // The third connects (the kernel completes it into the backlog) but gets no answer.
    let mut third = TcpStream::connect(h.addr).unwrap();
    third.write_all(HEALTH).unwrap();
    let mut waiting = third.try_clone().unwrap();
    let held =
        tokio::task::spawn_blocking(move || read_answer(&mut waiting, Duration::from_secs(1)));
    assert_eq!(held.await.unwrap(), None, "the third connection was served");
    let m = metrics(&admin).await;
    assert_eq!(metric(&m, "permgate_client_connections "), 2, "{m}");
    assert!(
        metric(&m, "permgate_client_connection_limit_waits_total ") >= 1,
        "{m}"
    );
    // The second still works; once the first closes, the third is answered.
    second.write_all(HEALTH).unwrap();
    assert!(read_answer(&mut second, Duration::from_secs(5)).is_some());
    drop(first);
    let answer =
        tokio::task::spawn_blocking(move || read_answer(&mut third, Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the third connection is served once a slot frees");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// How many of `n` simultaneous connects complete within `wait`.
async fn burst(addr: SocketAddr, n: usize, wait: Duration) -> (usize, Vec<tokio::net::TcpStream>) {
    let connects: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in connects {
        if let Ok(Ok(Ok(s))) = c.await {
            open.push(s);
        }
    }
    (open.len(), open)
}

/// `listen.backlog` (default 4096): a burst of 600 connects while the gateway accepts none
/// (`max_connections = 1`, one connection held) all complete into the backlog. With a backlog
/// of 128 (tokio's `bind`, the hyper engine's before the setting), most of the burst is
/// dropped by the kernel: the setting is what makes the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connects_fits_in_the_listen_backlog() {
    const N: usize = 600;
    let wait = Duration::from_millis(2500);
    let g = gateway("max_connections = 1", |t| t, "").await;
    let h = &g.h;
    let held = served_connection(h.addr);
    let (ok, open) = burst(h.addr, N, wait).await;
    assert_eq!(ok, N, "connects lost with the default backlog");
    drop(open);
    drop(held);
    drop(g);

    let small = gateway("max_connections = 1\nbacklog = 128", |t| t, "").await;
    let held = served_connection(small.h.addr);
    let (ok, open) = burst(small.h.addr, N, wait).await;
    assert!(
        ok < N / 2,
        "{ok} of {N} connects completed with a backlog of 128"
    );
    drop(open);
    drop(held);
}

/// A raw CRM that answers every request with `len` bytes (written 64 KiB at a time) and
/// reports when a write to it fails (the gateway closed its connection) or the body is sent.
async fn big_answer_crm(
    len: usize,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<Instant, Instant>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let crm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = crm.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut s, _)) = crm.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                let piece = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                let mut result = s.write_all(head.as_bytes()).await;
                while result.is_ok() && sent < len {
                    let n = piece.len().min(len - sent);
                    result = s.write_all(&piece[..n]).await;
                    sent += n;
                }
                let _ = tx.send(match result {
                    Ok(()) => Ok(Instant::now()),
                    Err(_) => Err(Instant::now()),
                });
            });
        }
    });
    (addr, rx)
}

/// `listen.write_timeout_ms = 1000`: a client that asks for a large answer and never reads it
/// (a slow-read attack) has its connection closed within seconds of its socket filling up, and
/// the CRM connection behind it is closed too (not held until a total timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_cut_off() {
    const LEN: usize = 256 << 20;
    let (crm, mut reports) = big_answer_crm(LEN).await;
    let Gw { h, admin, _dir } = gateway_to(Some(crm), "write_timeout_ms = 1000", |t| t, "").await;
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.write_all(
        format!(
            "GET /api/v1/customers/1 HTTP/1.1\r\nHost: crm\r\nAuthorization: {}\r\n\r\n",
            bearer("u-admin")
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    // The CRM's write fails once the gateway gives up on the client (the demo's total
    // timeout is 30 s and its keep-alive 60 s: neither is what ends it).
    let report = tokio::time::timeout(Duration::from_secs(15), reports.recv())
        .await
        .expect("the CRM connection was not released")
        .unwrap();
    let at = report.expect_err("the CRM sent its whole answer to a client that reads nothing");
    assert!(at - started < Duration::from_secs(15));
    // The client's connection is closed: what was buffered, then the end (far short of the
    // answer).
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the client connection is still open after {got} bytes")
            }
            Err(_) => break,
        }
    }
    assert!(got < LEN, "{got}");
    let m = metrics(&admin).await;
    assert_eq!(
        metric(&m, "permgate_client_write_timeouts_total "),
        1,
        "{m}"
    );
}

/// A raw GET on a fresh connection (`Connection: close`).
fn get(h: &Harness, path: &str, user: Option<&str>) -> RawResponse {
    let auth = user.map_or(String::new(), |u| {
        format!("Authorization: {}\r\n", bearer(u))
    });
    h.raw(format!("GET {path} HTTP/1.1\r\nHost: crm\r\n{auth}Connection: close\r\n\r\n").as_bytes())
}

fn assert_rate_limited(r: &RawResponse, most: u64) {
    assert_eq!(r.status, 429, "{r:?}");
    let body = r.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=most).contains(&wait), "Retry-After {wait}");
}

/// `[rate_limit] per_caller = { rate = 0.1, burst = 3 }`: a caller's fourth quick call is
/// refused with 429 `rate_limited`, `Retry-After` (a token every 10 s) and the request id, and
/// never reaches the CRM; another caller is not affected; an anonymous caller is limited by
/// its address. Counted by route in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_refused_with_retry_after() {
    let Gw { h, admin, _dir } = gateway(
        "",
        |t| t,
        "\n[rate_limit]\nper_caller = { rate = 0.1, burst = 3 }\n",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&h, "/api/v1/customers/1", Some("u-admin")).status, 200);
    }
    h.clear();
    let r = get(&h, "/api/v1/customers/1", Some("u-admin"));
    assert_rate_limited(&r, 10);
    assert!(h.received().is_empty(), "a refused call reached the CRM");
    // Another caller has its own bucket.
    assert_eq!(get(&h, "/api/v1/customers/2", Some("u-rep1")).status, 200);
    // Anonymous callers by address (a public route).
    for _ in 0..3 {
        assert_eq!(get(&h, "/__crm/health", None).status, 200);
    }
    assert_rate_limited(&get(&h, "/__crm/health", None), 10);
    let m = metrics(&admin).await;
    assert_eq!(
        metric(
            &m,
            "permgate_rate_limited_total{route=\"customers.read\",limit=\"caller\",mode=\"enforced\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "permgate_requests_total{route=\"customers.read\",decision=\"deny\",status=\"4xx\"}"
        ),
        1,
        "{m}"
    );
}

/// A route's own `rate_limit` counts every caller together; a limit with `shadow = true` is
/// judged and counted (and logged) but the calls are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_limits_and_shadow_limits() {
    let Gw { h, admin, _dir } = gateway(
        "",
        |t| {
            t.replacen(
                "name = \"customers.read\"\n",
                "name = \"customers.read\"\nrate_limit = { rate = 0.1, burst = 2 }\n",
                1,
            )
        },
        "\n[rate_limit]\nper_caller = { rate = 0.1, burst = 1, shadow = true }\n",
    )
    .await;
    assert_eq!(get(&h, "/api/v1/customers/1", Some("u-admin")).status, 200);
    assert_eq!(get(&h, "/api/v1/customers/2", Some("u-rep1")).status, 200);
    let r = get(&h, "/api/v1/customers/3", Some("u-rep2"));
    assert_rate_limited(&r, 10);
    assert!(r.json()["message"].as_str().unwrap().contains("route"));
    // The shadow per-caller limit (burst 1): u-admin's second and third calls are over it, and
    // forwarded all the same.
    h.clear();
    for _ in 0..2 {
        assert_eq!(get(&h, "/api/v1/leads/1", Some("u-admin")).status, 200);
    }
    assert_eq!(h.received().len(), 2);
    let m = metrics(&admin).await;
    assert_eq!(
        metric(
            &m,
            "permgate_rate_limited_total{route=\"customers.read\",limit=\"route\",mode=\"enforced\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "permgate_rate_limited_total{route=\"leads.read_one\",limit=\"caller\",mode=\"shadow\"}"
        ),
        2,
        "{m}"
    );
    assert!(
        eventually(5, || {
            let log = h.log_text();
            async move { log.contains("shadow: over the caller's rate limit") }
        })
        .await,
        "{}",
        h.log_text()
    );
}

/// The settings are checked: each names its file, line and field.
#[test]
fn limit_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (
            "[listen]\n",
            "[listen]\nmax_connections = 0\n",
            "listen.max_connections",
        ),
        ("[listen]\n", "[listen]\nbacklog = 0\n", "listen.backlog"),
        (
            "[listen]\n",
            "[listen]\nwrite_timeout_ms = 5\n",
            "listen.write_timeout_ms",
        ),
        (
            "[paths]\n",
            "[rate_limit]\nper_caller = { rate = 0, burst = 1 }\n\n[paths]\n",
            "rate_limit.per_caller: rate",
        ),
        (
            "[paths]\n",
            "[rate_limit]\nper_caller = { rate = 1, burst = 0 }\n\n[paths]\n",
            "rate_limit.per_caller: burst",
        ),
        (
            "name = \"customers.read\"\n",
            "name = \"customers.read\"\nrate_limit = { rate = 1, burst = 0 }\n",
            "rate_limit.burst",
        ),
        (
            "name = \"customers.read\"\n",
            "name = \"customers.read\"\nrate_limit = { rate = 1, burst = 1, typo = 1 }\n",
            "typo",
        ),
    ];
    for (from, to, want) in bad {
        let text = demo_config_text().replacen(from, to, 1);
        let path = dir.path().join("permgate.toml");
        std::fs::write(&path, &text).unwrap();
        std::fs::write(
            dir.path().join("snapshot.json"),
            permgate::demo::DEMO_SNAPSHOT,
        )
        .unwrap();
        let errors = permgate::config::load(&path)
            .err()
            .unwrap_or_else(|| panic!("accepted: {to}"));
        let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter()
                .any(|e| e.contains(want) && e.contains("permgate.toml:")),
            "{to}: {all:?}"
        );
    }
    // The defaults.
    let path = dir.path().join("permgate.toml");
    std::fs::write(&path, demo_config_text()).unwrap();
    let c = permgate::config::load(&path).unwrap();
    assert_eq!(c.listen.max_connections, 10_000);
    assert_eq!(c.listen.backlog, 4096);
    assert_eq!(c.listen.write_timeout, Duration::from_secs(30));
    assert!(c.rate_limit.per_caller.is_none());
    assert_eq!(c.rate_limit.max_callers, 100_000);
}

/// A binary upgrade: the new process applies its own `listen.backlog` to the socket handed
/// over (a second `listen()`), not the old process's. The old one listens with 128; after the
/// hand-over, the new one (4096) holds a burst of 600 connects while it accepts none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_process_of_an_upgrade_applies_its_backlog() {
    const N: usize = 600;
    let old_listen =
        "max_connections = 1\nbacklog = 128\ndrain_seconds = 1\nupgrade_sock = \"upgrade.sock\"";
    let mut g = gateway(old_listen, |t| t, "").await;
    let config = g._dir.path().join("permgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("backlog = 128\n", "", 1)).unwrap();
    let log = std::fs::File::create(g._dir.path().join("new.log")).unwrap();
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_permgate"))
        .args(["serve", "--upgrade", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(g.h.addr.to_string())
        .arg("--upstream")
        .arg(g.h.crm.local_addr().to_string())
        .args(["--h1-lane", if h1_lane() { "on" } else { "off" }])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = g._dir.path().join("upgrade.sock");
    assert!(
        eventually(10, || {
            let exists = sock.exists();
            async move { exists }
        })
        .await,
        "the new process waits on the upgrade socket"
    );
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &g.h.gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    assert!(
        g.h.gateway.wait().unwrap().success(),
        "the old process exits"
    );
    let held = served_connection(g.h.addr);
    let (ok, open) = burst(g.h.addr, N, Duration::from_millis(2500)).await;
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(
        ok, N,
        "connects lost: the handed-over socket kept the old backlog"
    );
    drop((open, held));
}
