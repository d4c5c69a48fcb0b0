//! Test harness: the real gateway binary and the real sample CRM, both on 127.0.0.1.
//!
//! Each test builds its own [`Harness`]; dropping it kills the gateway process. The sample CRM
//! runs in the test's own runtime, so its request log can be read directly.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use permgate_sample_crm::{self as sample_crm, CrmOptions, RecordedRequest, SampleCrm};

pub mod records;

#[allow(unused_imports)]
pub use permgate::demo::{demo_token, DEMO_ANALYST_API_KEY};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo_config() -> PathBuf {
    repo().join("config/demo/permgate.toml")
}

/// A running gateway + sample CRM.
pub struct Harness {
    pub crm: SampleCrm,
    pub gateway: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    /// The config's own folder, when the harness wrote the config (kept as long as the
    /// gateway runs; the log stays in `_dir`).
    _config_dir: Option<tempfile::TempDir>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

/// A loopback port for a gateway or admin listener to bind.
///
/// Ports come from 20000..32000, below the kernel's ephemeral range (32768 and up), so no port-0
/// bind (the in-process sample CRMs) or outgoing connection can take one between the pick and
/// the gateway's bind. Within a test process a counter hands each port out once; the start
/// depends on the pid so concurrent test processes rarely meet, and a port someone holds is
/// skipped. `launch` still checks that the listener it reaches belongs to its own child.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 397) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000")
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux /proc): the
/// harness must be talking to its own gateway, not to whatever else answers on that port.
fn listener_owned_by(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true; // no /proc: fall back to the connect check alone
    };
    let want = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode
            (f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|l| {
                let l = l.to_string_lossy();
                inodes.iter().any(|i| l == format!("socket:[{i}]"))
            })
            .unwrap_or(false)
    })
}

impl Harness {
    /// The demo config and snapshot.
    pub async fn demo() -> Harness {
        Harness::start_with(&demo_config()).await
    }

    /// A config given as text (the demo snapshot is written beside it unless the text names
    /// another one that `files` provides).
    pub async fn with_config_text(text: &str, files: &[(&str, &str)]) -> Harness {
        Harness::with_config_text_to(text, files, None).await
    }

    /// [`Harness::with_config_text`], the calls sent to `upstream` when given (else to the
    /// harness's sample CRM).
    pub async fn with_config_text_to(
        text: &str,
        files: &[(&str, &str)],
        upstream: Option<SocketAddr>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("permgate.toml"), text).unwrap();
        std::fs::write(
            dir.path().join("snapshot.json"),
            permgate::demo::DEMO_SNAPSHOT,
        )
        .unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path = dir.path().join("permgate.toml");
        let mut h = Harness::start_custom(&path, upstream).await;
        h._config_dir = Some(dir);
        h
    }

    pub async fn start_with(config: &Path) -> Harness {
        Harness::start_custom(config, None).await
    }

    /// Like [`Harness::start_with`]; `upstream` overrides where the gateway sends calls (the
    /// sample CRM still starts, so tests can see that nothing reached it).
    pub async fn start_custom(config: &Path, upstream: Option<SocketAddr>) -> Harness {
        Harness::launch(config, Some(upstream)).await
    }

    /// The config's own `[upstream]` is used as is (no `--upstream`); the harness's sample CRM
    /// still starts but receives nothing unless the config names it.
    pub async fn start_own_upstreams(config: &Path) -> Harness {
        Harness::launch(config, None).await
    }

    async fn launch(config: &Path, upstream: Option<Option<SocketAddr>>) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let crm = sample_crm::start(listener, CrmOptions::default())
            .await
            .expect("sample CRM starts");
        let upstream = upstream.map(|u| u.unwrap_or_else(|| crm.local_addr()));
        let dir = tempfile::tempdir().expect("tempdir");
        for attempt in 0..5 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let log = dir.path().join(format!("gateway-{attempt}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_permgate"));
            cmd.arg("serve")
                .arg("--config")
                .arg(config)
                .arg("--listen")
                .arg(addr.to_string());
            if let Some(u) = upstream {
                cmd.arg("--upstream").arg(u.to_string());
            }
            // The whole suite runs against either data plane (and the hyper engine with or
            // without its own HTTP/1.1 lane).
            cmd.arg("--engine").arg(engine());
            if !h1_lane() {
                cmd.arg("--h1-lane").arg("off");
            }
            let mut child = cmd
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("the permgate binary starts");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken or bad config; maybe retry
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                    && listener_owned_by(child.id(), port)
                {
                    return Harness {
                        crm,
                        gateway: child,
                        addr,
                        log,
                        _dir: dir,
                        _config_dir: None,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.contains("ddress already in use") {
                panic!("the gateway did not start:\n{text}");
            }
        }
        panic!("the gateway could not bind a port after 5 attempts");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests the CRM received since the last clear.
    pub fn received(&self) -> Vec<RecordedRequest> {
        self.crm.requests()
    }

    pub fn clear(&self) {
        self.crm.clear_requests()
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send raw bytes (one request, `Connection: close` expected in it) and read the response.
    pub fn raw(&self, request: &[u8]) -> RawResponse {
        raw_request(self.addr, request)
    }
}

/// A bearer token for a demo user (valid one hour).
pub fn token(user: &str) -> String {
    demo_token(user, 3600)
}

pub fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user))
}

/// A parsed HTTP/1.1 response from [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Write `request` (pipelined requests, say) and return everything read until the server
/// closes (or 10 s pass), as text.
#[allow(dead_code)]
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Write `request` as is and read until the server closes (or 10 s pass).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(resp) = parse_complete(&buf, false) {
                    return resp;
                }
            }
            Err(_) => break,
        }
    }
    parse_complete(&buf, true)
        .unwrap_or_else(|| panic!("incomplete response: {:?}", String::from_utf8_lossy(&buf)))
}

fn parse_complete(buf: &[u8], eof: bool) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match len {
        Some(n) if body.len() >= n => Some(RawResponse {
            status,
            headers,
            body: body[..n].to_string(),
        }),
        Some(_) => None,
        None if !eof => None,
        None => Some(RawResponse {
            status,
            headers,
            body: body.to_string(),
        }),
    }
}

/// A reqwest client that never follows redirects and never reuses stale state between tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of a header in a recorded CRM request.
pub fn recorded_header<'a>(r: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A free loopback port for an admin listener, written into a config.
pub fn admin_section() -> (String, u16) {
    let port = free_port();
    (
        format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
        port,
    )
}

/// The demo config's text.
pub fn demo_config_text() -> String {
    std::fs::read_to_string(demo_config()).unwrap()
}

/// Poll `f` every 20 ms for up to `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A raw HTTP/1.1 JSON `POST` (with `Connection: close`) whose body is sent chunked, in pieces
/// of `chunk` bytes, for [`Harness::raw`].
pub fn chunked_json_post(path: &str, authorization: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: crm\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk.max(1)) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

/// The data plane the gateway under test runs: `PERMGATE_TEST_ENGINE` (`hyper` or `pingora`),
/// the default engine (`hyper`) when unset.
#[allow(dead_code)]
pub fn engine() -> String {
    std::env::var("PERMGATE_TEST_ENGINE").unwrap_or_else(|_| "hyper".into())
}

/// Whether the hyper engine serves plain HTTP/1.1 with its own lane (`listen.h1_lane`, on by
/// default): `PERMGATE_TEST_H1_LANE=off` runs the suites on hyper's HTTP/1.1 server instead.
#[allow(dead_code)]
pub fn h1_lane() -> bool {
    std::env::var("PERMGATE_TEST_H1_LANE").map_or(true, |v| v != "off")
}

/// What a [`RawCrm`] does with one request head.
pub enum Reply {
    /// Write these bytes, then read the next request.
    Send(String),
    /// Wait, then write.
    After(Duration, String),
    /// Write the first answer, wait, then write the second (bytes past the first's end,
    /// arriving in a later segment), then read the next request.
    ThenLate(String, Duration, String),
    /// Write these bytes, then close the connection.
    SendThenClose(String),
    /// Close the connection without a word (the request was read whole).
    Close,
}

/// What a [`RawCrm`] saw.
#[derive(Default)]
pub struct RawSeen {
    /// Connections accepted, open now, and open at once at most.
    pub accepted: std::sync::atomic::AtomicUsize,
    pub open: std::sync::atomic::AtomicUsize,
    pub max_open: std::sync::atomic::AtomicUsize,
    /// Every request line read, in order.
    pub lines: std::sync::Mutex<Vec<String>>,
    /// Every request head read, in order (each up to its blank line).
    pub heads: Heads,
}

/// The request heads a [`RawCrm`] read.
pub type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

impl RawSeen {
    pub fn count(&self, line_start: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(line_start))
            .count()
    }
}

/// A raw HTTP/1.1 CRM on loopback (bodiless requests): each request head is answered as
/// `reply(request line, its index on its connection)` says. Stopped when dropped.
pub struct RawCrm {
    pub addr: SocketAddr,
    pub seen: std::sync::Arc<RawSeen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawCrm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawCrm {
    /// Stop accepting connections (those open go on).
    pub fn abort(&self) {
        self.task.abort();
    }

    pub async fn start<F>(reply: F) -> RawCrm
    where
        F: Fn(&str, usize) -> Reply + Send + Sync + 'static,
    {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(RawSeen::default());
        let reply = std::sync::Arc::new(reply);
        let stats = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                stats.accepted.fetch_add(1, SeqCst);
                let now = stats.open.fetch_add(1, SeqCst) + 1;
                stats.max_open.fetch_max(now, SeqCst);
                let (stats, reply) = (stats.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut pending = Vec::new();
                    let mut index = 0;
                    'conn: while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&pending[..end]).to_string();
                            pending.drain(..end + 4);
                            let line = head.lines().next().unwrap_or_default().to_string();
                            stats.lines.lock().unwrap().push(line.clone());
                            stats.heads.lock().unwrap().push(head);
                            let ok = match reply(&line, index) {
                                Reply::Send(a) => s.write_all(a.as_bytes()).await.is_ok(),
                                Reply::After(wait, a) => {
                                    tokio::time::sleep(wait).await;
                                    s.write_all(a.as_bytes()).await.is_ok()
                                }
                                Reply::ThenLate(a, wait, b) => {
                                    let first = s.write_all(a.as_bytes()).await.is_ok();
                                    tokio::time::sleep(wait).await;
                                    first && s.write_all(b.as_bytes()).await.is_ok()
                                }
                                Reply::SendThenClose(a) => {
                                    let _ = s.write_all(a.as_bytes()).await;
                                    false
                                }
                                Reply::Close => false,
                            };
                            index += 1;
                            if !ok {
                                break 'conn;
                            }
                        }
                    }
                    drop(s);
                    stats.open.fetch_sub(1, SeqCst);
                });
            }
        });
        RawCrm { addr, seen, task }
    }
}

/// A raw CRM on loopback ([`RawCrm`]): every request head it reads is answered with
/// `answer(request line)`, then the connection is closed if it says so. It never reads a body:
/// like many legacy servers on GET, whatever follows a head is taken for the next request.
pub async fn raw_crm(answer: fn(&str) -> (&'static str, bool)) -> (SocketAddr, RawCrm) {
    let crm = RawCrm::start(move |line, _| match answer(line) {
        (text, false) => Reply::Send(text.into()),
        (text, true) => Reply::SendThenClose(text.into()),
    })
    .await;
    (crm.addr, crm)
}

/// [`raw_crm`], with the heads it reads.
pub async fn raw_crm_recording(
    answer: fn(&str) -> (&'static str, bool),
) -> (SocketAddr, RawCrm, Heads) {
    let (addr, crm) = raw_crm(answer).await;
    let heads = crm.seen.heads.clone();
    (addr, crm, heads)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with these claims, signed with the demo key (`kid` as given).
pub fn demo_key_token(claims: &serde_json::Value, kid: Option<&str>) -> String {
    let mut head = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    head.kid = kid.map(Into::into);
    let key = jsonwebtoken::EncodingKey::from_secret(permgate::demo::DEMO_SECRET.as_bytes());
    jsonwebtoken::encode(&head, claims, &key).unwrap()
}

/// `permgate check-config` on a config given as text (the demo snapshot beside it).
pub fn check_config_text(text: &str) -> std::process::Output {
    let dir = config_dir(text);
    Command::new(env!("CARGO_BIN_EXE_permgate"))
        .arg("check-config")
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap()
}

/// A folder holding `text` as `c.toml` and the demo snapshot as `snapshot.json`.
pub fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("snapshot.json"),
        permgate::demo::DEMO_SNAPSHOT,
    )
    .unwrap();
    dir
}

/// `GET /metrics` on an admin base URL (`http://127.0.0.1:port`), with the admin token.
pub async fn admin_metrics(admin: &str) -> String {
    client()
        .get(format!("{admin}/metrics"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first metric line starting with `prefix` (0 when absent).
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `GET /api/v1/leads/{lead}` as `user`: 200 when the gateway forwarded the call (the CRM may not
/// know the lead), else the gateway's own status.
pub async fn lead_call(h: &Harness, user: &str, lead: u32) -> u16 {
    h.clear();
    let status = client()
        .get(h.url(&format!("/api/v1/leads/{lead}")))
        .header("authorization", bearer(user))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    if h.received().is_empty() {
        status
    } else {
        200
    }
}
