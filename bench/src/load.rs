//! The load generator: hyper 1 client connections on tokio, closed or open loop, HTTP/1.1
//! keep-alive or HTTP/2 (h2c, prior knowledge), in cleartext or over TLS (rustls; HTTP/2 by
//! ALPN). Latency goes into an HDR histogram in microseconds.
//!
//! - Closed loop: `connections` × `streams` workers, each sends its next request as soon as
//!   the previous answer is read.
//! - Open loop: the same workers share a fixed total rate; each has its own schedule of
//!   *intended* send times, and latency is measured from the intended time, so a stall that
//!   delays later sends shows up in their latency instead of being hidden (coordinated
//!   omission).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::scenario::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    Closed,
    /// Total requests per second across all workers.
    Open {
        rate: f64,
    },
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub addr: SocketAddr,
    /// The `Host` / `:authority` to send.
    pub authority: String,
    pub protocol: Protocol,
    pub mode: Mode,
    pub connections: usize,
    /// Concurrent streams per HTTP/2 connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Not recorded: lets connections, pools and caches warm up.
    pub warmup: Duration,
    /// Measured time; the run ends at warmup + duration or after `max_requests`.
    pub duration: Duration,
    pub max_requests: Option<u64>,
    /// A progress line on stderr every second.
    pub progress: Option<String>,
    /// `https://` targets: TLS on every connection (handshakes happen before measuring,
    /// unless `connection_per_call`).
    pub tls: Option<TlsTarget>,
    /// A new connection for every call (TCP connect, TLS handshake if any, the call with
    /// `Connection: close` on HTTP/1.1, close), all inside the call's measured latency: the
    /// handshake cost per call. Off: keep-alive connections opened before the measured window.
    pub connection_per_call: bool,
}

/// TLS toward the target: the rustls connector and the server name to send and verify.
#[derive(Clone)]
pub struct TlsTarget {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    resume: bool,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.server_name)
    }
}

impl TlsTarget {
    /// Trust the CAs in `ca_file` (PEM), else the system's roots; offer `h2` or `http/1.1` by
    /// ALPN. Sessions are resumed when the server allows it (rustls' default client cache).
    pub fn new(host: &str, ca_file: Option<&std::path::Path>, h2: bool) -> Result<Self, String> {
        Self::with_resumption(host, ca_file, h2, true)
    }

    /// [`TlsTarget::new`], with session resumption (`resume`: TLS 1.3 tickets, TLS 1.2 session
    /// ids and tickets, from one in-memory cache shared by every connection) or without (every
    /// handshake is a full one).
    pub fn with_resumption(
        host: &str,
        ca_file: Option<&std::path::Path>,
        h2: bool,
        resume: bool,
    ) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                {
                    let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().unwrap_or_default() {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err("no CA certificate to trust (give --ca-file)".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("'{host}': {e}"))?;
        let config = Arc::new(config);
        Ok(TlsTarget {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            server_name,
            config,
            resume,
        })
    }

    /// The same target with a session cache of its own: each worker of a connection-per-call
    /// run resumes from the tickets its own previous connection received, as one client
    /// reconnecting would. (One cache shared by every worker runs dry: TLS 1.3 tickets are
    /// used once, and a server may issue only one on a resumed connection while concurrent
    /// connections take them.)
    fn own_cache(&self) -> TlsTarget {
        if !self.resume {
            return self.clone();
        }
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let config = Arc::new(config);
        TlsTarget {
            connector: tokio_rustls::TlsConnector::from(config.clone()),
            server_name: self.server_name.clone(),
            config,
            resume: true,
        }
    }
}

/// What one measured run gives.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub hist: Histogram<u64>,
    /// Completed requests in the measured window.
    pub requests: u64,
    /// Requests whose answer was not what the scenario expects (status; on variants that
    /// authorize also `expect_header` and `expect_body_contains`).
    pub unexpected: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: BTreeMap<String, u64>,
    /// Connections the server closed between requests, reopened.
    pub reconnects: u64,
    /// TLS handshakes completed in the measured window, and how many of them resumed a session.
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits. Bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid histogram bounds")
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Wait until the connection can take a request; an error means the server closed it
    /// between requests (nothing was sent).
    async fn ready(&mut self) -> Result<(), String> {
        match self {
            Sender::H1(s) => s.ready().await.map_err(|e| kind("ready", &e)),
            Sender::H2(s) => s.ready().await.map_err(|e| kind("ready", &e)),
        }
    }

    /// Send one request; its status, headers and whole body.
    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| kind("ready", &e))?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| kind("ready", &e))?;
                s.send_request(req).await
            }
        }
        .map_err(|e| kind("send", &e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| kind("body", &e))?;
        Ok((parts.status.as_u16(), parts.headers, body.to_bytes()))
    }
}

fn kind(stage: &str, e: &hyper::Error) -> String {
    let what = if e.is_closed() {
        "closed"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_parse() {
        "parse"
    } else {
        "other"
    };
    format!("{stage}:{what}")
}

/// Open a connection (with TLS when the target is https) and do the HTTP handshake.
async fn connect(
    addr: SocketAddr,
    protocol: Protocol,
    tls: Option<&TlsTarget>,
) -> Result<Sender, String> {
    connect_tls(addr, protocol, tls).await.map(|(s, _)| s)
}

/// [`connect`], and whether the TLS handshake resumed a session (`None`: no TLS).
async fn connect_tls(
    addr: SocketAddr,
    protocol: Protocol,
    tls: Option<&TlsTarget>,
) -> Result<(Sender, Option<bool>), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect:{:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok((handshake(TokioIo::new(stream), protocol).await?, None)),
        Some(t) => {
            let stream = t
                .connector
                .connect(t.server_name.clone(), stream)
                .await
                .map_err(|e| format!("tls:{:?}", e.kind()))?;
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            Ok((
                handshake(TokioIo::new(stream), protocol).await?,
                Some(resumed),
            ))
        }
    }
}

async fn handshake<I>(io: I, protocol: Protocol) -> Result<Sender, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    match protocol {
        Protocol::H1 => {
            let (s, conn) = http1::handshake(io)
                .await
                .map_err(|e| kind("handshake", &e))?;
            tokio::spawn(conn);
            Ok(Sender::H1(s))
        }
        Protocol::H2 => {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| kind("handshake", &e))?;
            tokio::spawn(conn);
            Ok(Sender::H2(s))
        }
    }
}

struct Shared {
    stop: AtomicBool,
    issued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct WorkerOut {
    hist: Option<Histogram<u64>>,
    requests: u64,
    unexpected: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: BTreeMap<String, u64>,
    reconnects: u64,
    tls_handshakes: u64,
    tls_resumed: u64,
}

struct WorkerCtx {
    plan: Arc<Plan>,
    opts: Arc<LoadOptions>,
    shared: Arc<Shared>,
    measure_from: Instant,
    /// Open loop: this worker's first intended send time and interval.
    schedule: Option<(Instant, Duration)>,
    seed: u64,
}

fn build_request(
    plan: &Plan,
    opts: &LoadOptions,
    host: &HeaderValue,
    rng: &mut fastrand::Rng,
    path: &mut String,
) -> Result<(Request<Full<Bytes>>, usize), String> {
    let idx = plan.pick(rng);
    let e = &plan.entries[idx];
    e.path.render(rng, path);
    let uri: Uri = match opts.protocol {
        Protocol::H1 => path.parse(),
        Protocol::H2 => {
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}{}", opts.authority, path).parse()
        }
    }
    .map_err(|_| format!("bad path {path}"))?;
    let mut b = Request::builder().method(e.method.clone()).uri(uri);
    if opts.protocol == Protocol::H1 {
        b = b.header(HOST, host.clone());
        if opts.connection_per_call {
            b = b.header(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    if !e.credentials.is_empty() {
        let c = &e.credentials[rng.usize(0..e.credentials.len())];
        b = b.header(AUTHORIZATION, c.clone());
    }
    let body = match &e.body {
        Some(body) => {
            b = b.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Full::new(body.clone())
        }
        None => Full::new(Bytes::new()),
    };
    let req = b.body(body).map_err(|e| format!("request: {e}"))?;
    Ok((req, idx))
}

async fn worker(ctx: WorkerCtx, sender: Option<Sender>) -> WorkerOut {
    let mut out = WorkerOut {
        hist: Some(new_hist()),
        ..Default::default()
    };
    let mut rng = fastrand::Rng::with_seed(ctx.seed);
    let mut path = String::with_capacity(128);
    let host = HeaderValue::from_str(&ctx.opts.authority)
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    let mut sender = sender;
    let own_tls = if ctx.opts.connection_per_call {
        ctx.opts.tls.as_ref().map(TlsTarget::own_cache)
    } else {
        None
    };
    let mut next_intended = ctx.schedule.map(|(t, _)| t);
    let record_err = |out: &mut WorkerOut, e: String, measured: bool| {
        if measured {
            *out.transport_errors.entry(e).or_insert(0) += 1;
        }
    };
    loop {
        if ctx.shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(max) = ctx.opts.max_requests {
            if ctx.shared.issued.fetch_add(1, Ordering::Relaxed) >= max {
                ctx.shared.stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        // Open loop: wait for the intended send time. If the previous answer came after it,
        // the server kept this worker busy: latency counts from the intended time (the queueing
        // is the server's). Otherwise it counts from the actual send: tokio's timer wakes up to
        // 1 ms late, and that lateness is the client's, not the server's.
        let start = match (&mut next_intended, ctx.schedule) {
            (Some(t), Some((_, interval))) => {
                let intended = *t;
                *t += interval;
                let now = Instant::now();
                if now < intended {
                    tokio::time::sleep_until(intended.into()).await;
                    if ctx.shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    Instant::now()
                } else {
                    intended
                }
            }
            _ => Instant::now(),
        };
        let measured = start >= ctx.measure_from;
        if ctx.opts.connection_per_call {
            // Handshakes inside the call's latency; the previous connection is closed.
            sender = None;
            match connect_tls(ctx.opts.addr, ctx.opts.protocol, own_tls.as_ref()).await {
                Ok((s, resumed)) => {
                    sender = Some(s);
                    if let (true, Some(resumed)) = (measured, resumed) {
                        out.tls_handshakes += 1;
                        out.tls_resumed += u64::from(resumed);
                    }
                }
                Err(e) => {
                    record_err(&mut out, e, measured);
                    ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        if sender.is_none() {
            match connect(ctx.opts.addr, ctx.opts.protocol, ctx.opts.tls.as_ref()).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    record_err(&mut out, e, measured);
                    ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let (req, idx) = match build_request(&ctx.plan, &ctx.opts, &host, &mut rng, &mut path) {
            Ok(r) => r,
            Err(e) => {
                record_err(&mut out, e, measured);
                ctx.shared.stop.store(true, Ordering::Relaxed);
                break;
            }
        };
        // A connection the server closed after its last answer (e.g. a denial that left a
        // request body unread) is reopened: a reconnect, not a failed request.
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                sender = None;
                if measured {
                    out.reconnects += 1;
                }
                match connect(ctx.opts.addr, ctx.opts.protocol, ctx.opts.tls.as_ref()).await {
                    Ok(s) => sender = Some(s),
                    Err(e) => {
                        record_err(&mut out, e, measured);
                        ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let result = s.send(req).await;
        let done = Instant::now();
        match result {
            Ok((status, headers, body)) => {
                ctx.shared.completed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    let us = done.duration_since(start).as_micros().max(1) as u64;
                    if let Some(h) = out.hist.as_mut() {
                        let _ = h.record(us.min(60_000_000));
                    }
                    out.requests += 1;
                    *out.statuses.entry(status).or_insert(0) += 1;
                    if !ctx.plan.entries[idx].accepts(status, &headers, &body) {
                        out.unexpected += 1;
                    }
                }
            }
            Err(e) => {
                ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                record_err(&mut out, e, measured);
                sender = None;
            }
        }
    }
    out
}

/// Moments of a run a caller may want to sample something at (CPU time of a process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Warm-up is over: requests sent from now on are measured.
    MeasureStart,
    /// The measured window is over (workers finish their request in flight).
    Stop,
}

/// Run one load test to completion; `on_phase` is called at the start and end of the
/// measured window.
pub async fn run(
    plan: Arc<Plan>,
    opts: LoadOptions,
    mut on_phase: impl FnMut(Phase),
) -> LoadResult {
    let opts = Arc::new(opts);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let streams = if opts.protocol == Protocol::H2 {
        opts.streams.max(1)
    } else {
        1
    };
    let workers = opts.connections.max(1) * streams;
    // Connect first, so that handshakes are not in the measured window (with a connection
    // per call, every worker connects for each call instead).
    let mut senders = Vec::with_capacity(workers);
    if opts.connection_per_call {
        senders.resize_with(workers, || None);
    }
    for _ in 0..opts.connections.max(1) * usize::from(!opts.connection_per_call) {
        match connect(opts.addr, opts.protocol, opts.tls.as_ref()).await {
            Ok(Sender::H2(s)) => {
                for _ in 0..streams {
                    senders.push(Some(Sender::H2(s.clone())));
                }
            }
            Ok(s) => senders.push(Some(s)),
            Err(_) => {
                for _ in 0..streams {
                    senders.push(None);
                }
            }
        }
    }
    let t0 = Instant::now();
    let measure_from = t0 + opts.warmup;
    let mut handles = Vec::with_capacity(workers);
    for (i, sender) in senders.into_iter().enumerate() {
        let schedule = match opts.mode {
            Mode::Closed => None,
            Mode::Open { rate } => {
                let interval = Duration::from_secs_f64(workers as f64 / rate.max(0.001));
                // Stagger the workers evenly over one interval.
                let offset = interval.mul_f64(i as f64 / workers as f64);
                Some((t0 + offset, interval))
            }
        };
        let ctx = WorkerCtx {
            plan: plan.clone(),
            opts: opts.clone(),
            shared: shared.clone(),
            measure_from,
            schedule,
            seed: 0x5eed_0000 + i as u64,
        };
        handles.push(tokio::spawn(worker(ctx, sender)));
    }

    let end = measure_from + opts.duration;
    let mut last = (Instant::now(), 0u64);
    let mut measured_start: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= measure_from && measured_start.is_none() {
            on_phase(Phase::MeasureStart);
            measured_start = Some(now);
        }
        if now >= end || shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let tick = Duration::from_millis(250);
        let wake = (now + tick).min(end).min(if measured_start.is_none() {
            measure_from
        } else {
            end
        });
        tokio::time::sleep_until(wake.into()).await;
        if let Some(label) = &opts.progress {
            let now = Instant::now();
            if now.duration_since(last.0) >= Duration::from_secs(1) {
                let c = shared.completed.load(Ordering::Relaxed);
                let rate = (c - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                let phase = if now < measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprint!(
                    "\r  {label}: {:>5.1}s {phase} {c:>9} done {rate:>9.0} req/s {:>6} failed   ",
                    now.duration_since(t0).as_secs_f64(),
                    shared.failed.load(Ordering::Relaxed)
                );
                let _ = std::io::stderr().flush();
                last = (now, c);
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    if measured_start.is_none() {
        on_phase(Phase::MeasureStart);
    }
    on_phase(Phase::Stop);
    let mut total = WorkerOut {
        hist: Some(new_hist()),
        ..Default::default()
    };
    for h in handles {
        // A worker stuck on a dead connection must not hold the run: give it 5 s.
        match tokio::time::timeout(Duration::from_secs(5), h).await {
            Ok(Ok(w)) => {
                if let (Some(t), Some(wh)) = (total.hist.as_mut(), w.hist.as_ref()) {
                    let _ = t.add(wh);
                }
                total.requests += w.requests;
                total.unexpected += w.unexpected;
                total.reconnects += w.reconnects;
                total.tls_handshakes += w.tls_handshakes;
                total.tls_resumed += w.tls_resumed;
                for (k, v) in w.statuses {
                    *total.statuses.entry(k).or_insert(0) += v;
                }
                for (k, v) in w.transport_errors {
                    *total.transport_errors.entry(k).or_insert(0) += v;
                }
            }
            _ => {
                *total
                    .transport_errors
                    .entry("worker-timeout".into())
                    .or_insert(0) += 1
            }
        }
    }
    if opts.progress.is_some() {
        eprint!("\r{:100}\r", "");
    }
    let elapsed = stopped.duration_since(measured_start.unwrap_or(measure_from).min(stopped));
    LoadResult {
        hist: total.hist.unwrap_or_else(new_hist),
        requests: total.requests,
        unexpected: total.unexpected,
        statuses: total.statuses,
        transport_errors: total.transport_errors,
        reconnects: total.reconnects,
        tls_handshakes: total.tls_handshakes,
        tls_resumed: total.tls_resumed,
        elapsed,
    }
}

/// Hold `count` idle keep-alive HTTP/1.1 connections, each after one request (so the server
/// has set up its per-connection state), then call `measure` and close them all.
pub async fn hold_idle<F: FnOnce() -> T, T>(
    addr: SocketAddr,
    authority: &str,
    path: &str,
    authorization: Option<HeaderValue>,
    count: usize,
    measure: F,
) -> (usize, T) {
    let mut held = Vec::with_capacity(count);
    let batch = 200;
    let mut i = 0;
    while i < count {
        let n = batch.min(count - i);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let authority = authority.to_string();
            let path = path.to_string();
            let auth = authorization.clone();
            set.spawn(async move {
                // A server at its connection limit leaves us in its backlog: give up after 10 s.
                tokio::time::timeout(Duration::from_secs(10), async move {
                    let mut s = connect(addr, Protocol::H1, None).await.ok()?;
                    let mut b = Request::builder().uri(path).header(HOST, authority);
                    if let Some(a) = auth {
                        b = b.header(AUTHORIZATION, a);
                    }
                    let req = b.body(Full::new(Bytes::new())).ok()?;
                    let (status, ..) = s.send(req).await.ok()?;
                    (status < 500).then_some(s)
                })
                .await
                .ok()
                .flatten()
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                held.push(s);
            }
        }
        i += n;
    }
    // Let the server settle (idle timers armed, buffers released).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = measure();
    let n = held.len();
    drop(held);
    (n, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::{JwtKey, MintedTokens};
    use crate::scenario::Scenario;

    /// A TLS server (HTTP/1.1 and HTTP/2 by ALPN) answering 200 to everything; the load
    /// generator must complete requests over both with no transport error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_targets_over_http1_and_http2() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("permgate-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });

        let scenario = Scenario::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/allowed-get.toml"),
        )
        .unwrap();
        let plan =
            Arc::new(Plan::build(&scenario, &MintedTokens::new(JwtKey::demo()), false).unwrap());
        for protocol in [Protocol::H1, Protocol::H2] {
            let opts = LoadOptions {
                addr,
                authority: format!("localhost:{}", addr.port()),
                protocol,
                mode: Mode::Closed,
                connections: 2,
                streams: 1,
                warmup: Duration::ZERO,
                duration: Duration::from_secs(5),
                max_requests: Some(200),
                progress: None,
                tls: Some(
                    TlsTarget::new("localhost", Some(&ca), protocol == Protocol::H2).unwrap(),
                ),
                connection_per_call: false,
            };
            let r = run(plan.clone(), opts, |_| {}).await;
            assert!(r.requests >= 100, "{protocol:?}: {} requests", r.requests);
            assert!(r.transport_errors.is_empty(), "{:?}", r.transport_errors);
            assert_eq!(r.unexpected, 0, "{:?}", r.statuses);
        }
        // A new connection per call: every call a handshake, resumed only when asked.
        for resume in [false, true] {
            let opts = LoadOptions {
                addr,
                authority: format!("localhost:{}", addr.port()),
                protocol: Protocol::H1,
                mode: Mode::Closed,
                connections: 2,
                streams: 1,
                warmup: Duration::ZERO,
                duration: Duration::from_secs(10),
                max_requests: Some(100),
                progress: None,
                tls: Some(
                    TlsTarget::with_resumption("localhost", Some(&ca), false, resume).unwrap(),
                ),
                connection_per_call: true,
            };
            let r = run(plan.clone(), opts, |_| {}).await;
            assert!(r.transport_errors.is_empty(), "{:?}", r.transport_errors);
            assert!(r.requests >= 98, "{} requests", r.requests);
            assert_eq!(r.tls_handshakes, r.requests, "one handshake per call");
            if resume {
                // Only the first connection(s), before any ticket came back, are full.
                assert!(
                    r.tls_resumed * 10 >= r.tls_handshakes * 9,
                    "{} of {} resumed",
                    r.tls_resumed,
                    r.tls_handshakes
                );
            } else {
                assert_eq!(r.tls_resumed, 0);
            }
        }
        // An untrusted server is a transport error, never a silent success.
        let other = rcgen::KeyPair::generate().unwrap();
        let other_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        std::fs::write(&ca, other_cert.pem()).unwrap();
        let t = TlsTarget::new("localhost", Some(&ca), false).unwrap();
        assert!(connect(addr, Protocol::H1, Some(&t)).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
