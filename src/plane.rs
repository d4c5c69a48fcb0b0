//! The hyper data plane (`listen.engine = "hyper"`): the same calls, decisions, headers and
//! answers as the Pingora plane ([`crate::proxy`]), both built on [`crate::exchange`], with
//! less CPU per request and less memory per open connection.
//!
//! Why one file (~2,000 lines): it is the parent of the engine's submodules, and they are built
//! on its private items — the lane (`plane::lane`) answers with `json`/`reject`/
//! `answer_preflight` and `RespBody`, maps failures with `Plane::upstream_failed` and
//! `Failure`, waits on the CRM's cap with `Plane::enter`, and hands a decided request over to
//! `Plane::handle`; the pool sends `ReqBody`. The listener, the connection driver
//! (`Tracked`, `Activity`), the hyper service and the bodies are one engine over those
//! types. The seam, when one is cut, is the call path (`impl Plane` with the bodies) apart from
//! the listener. The lane's request-body work, which the split waited for, has landed; the split
//! itself is still to be made.
//!
//! | step | what happens |
//! |---|---|
//! | accept | HTTP/1.1, h2c (`listen.h2c`) or HTTPS with HTTP/2 by ALPN (`listen.tls`); at most `listen.max_connections` open (beyond, new ones wait in the backlog, `listen.backlog`, not accepted); a write to the client that makes no progress for `listen.write_timeout_ms` closes the connection |
//! | decide | [`exchange::admit`]: one load of the live config and snapshot, kept to the end |
//! | forward | the body streams to the CRM (capped by `listen.max_body_bytes`, each wait by `listen.body_read_timeout_ms`), or is read whole and checked first on inspected routes; pooled keep-alive connections to the CRM ([`pool`], `upstream.pool_size`, `upstream.keepalive`), one retry when a pooled connection turns out closed (after the request went out: `upstream.retry_methods` only); at most `upstream.max_connections` calls in flight per CRM instance, then a bounded queue, then 503 `upstream_busy` ([`gate`]) |
//! | answer | the CRM's response streams back (each wait capped by `upstream.read_timeout_ms`, all of it by `upstream.total_timeout_ms`), or a list response is read whole and filtered first |
//! | log | [`exchange::finish`] once the response body is done (or dropped) |
//!
//! The binary upgrade (`serve --upgrade`, then `SIGQUIT` to the running process) hands the
//! listening socket over as the Pingora engine does ([`handover`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::time::Sleep;
use tracing::{error, info, warn, Instrument};

use crate::exchange::{self, Admission, Ctx};
use crate::live::State;
use crate::metrics::UpstreamError;
use crate::reject::Rejection;

mod fragments;
mod gate;
pub mod h1;
mod handover;
mod lane;
mod learn;
mod pool;
mod watch;
use gate::{Gate, Permit};
use pool::{Failure as SendFailure, Lease, Pool};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HandleFuture =
    Pin<Box<dyn Future<Output = Result<Response<RespBody>, Infallible>> + Send + 'static>>;

/// Most bytes of a refused body read and discarded before answering.
pub(super) const MAX_DRAINED: usize = 16 << 20;
/// How long a refused request body is read and discarded at most (hyper's path and the lane).
pub(super) const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Why a streamed request body was cut off (shared between the body and the handler).
const CUT_TOO_LARGE: u8 = 1;
const CUT_TIMED_OUT: u8 = 2;
const CUT_UNREADABLE: u8 = 3;
/// The body was read to its end.
const BODY_DONE: u8 = 4;

/// The connections to the CRM ([`pool`]): plain HTTP, or TLS with material reloaded from
/// its files.
enum Upstream {
    Plain(Pool<HttpConnector>),
    Tls(Pool<upstream_tls::Connector>),
}

impl Upstream {
    async fn send(
        &self,
        authority: Authority,
        request: Request<ReqBody>,
        retryable: bool,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendFailure> {
        match self {
            Upstream::Plain(p) => p.send(authority, request, retryable, now).await,
            Upstream::Tls(p) => p.send(authority, request, retryable, now).await,
        }
    }
}

struct Plane {
    state: Arc<State>,
    client: Upstream,
    /// The CRM's address as a URI authority, cached (the config may change it on reload).
    authority: arc_swap::ArcSwap<(SocketAddr, Authority)>,
    /// Several CRM instances (`upstream.addresses`, fixed at start): round robin over the
    /// healthy ones. `None`: one instance, `upstream.address`.
    balanced: Option<Arc<Balanced>>,
    /// The cap on calls in flight to the single CRM instance (`upstream.max_connections`; for
    /// several, each [`Instance`] has its own). `None`: no cap.
    gate: Option<Gate>,
    /// `upstream.keepalive`: when off, every CRM request asks `Connection: close`.
    keepalive: bool,
    /// The CRM connections of the HTTP/1.1 lane ([`lane`]); `None`: every connection is
    /// hyper's (`listen.h1_lane = false`, or TLS to the CRM).
    lane: Option<lane::LanePool>,
}

/// CRM instances checked in the background (a TCP connect every `health_check_interval_ms`).
struct Balanced {
    instances: Vec<Instance>,
    next: std::sync::atomic::AtomicUsize,
}

struct Instance {
    address: SocketAddr,
    authority: Authority,
    healthy: std::sync::atomic::AtomicBool,
    gate: Option<Gate>,
}

/// The gate of one CRM instance, as `upstream` says.
fn gate_of(u: &crate::config::Upstream) -> Option<Gate> {
    Gate::new(u.max_connections, u.queue_size, u.queue_timeout)
}

impl Balanced {
    fn new(u: &crate::config::Upstream) -> Result<Self, String> {
        Ok(Balanced {
            instances: u
                .addresses
                .iter()
                .map(|&address| {
                    Ok(Instance {
                        address,
                        authority: authority_of(address)?,
                        healthy: true.into(),
                        gate: gate_of(u),
                    })
                })
                .collect::<Result<_, String>>()?,
            next: 0.into(),
        })
    }

    /// The next healthy instance, round robin.
    fn pick(&self) -> Option<&Instance> {
        let n = self.instances.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.instances[(start + k) % n])
            .find(|i| i.healthy.load(Ordering::Relaxed))
    }

    /// Check every instance forever (a task on the runtime).
    async fn check(self: Arc<Self>, every: Duration, timeout: Duration) {
        loop {
            for i in &self.instances {
                let up = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(i.address)).await,
                    Ok(Ok(_))
                );
                if i.healthy.swap(up, Ordering::Relaxed) != up {
                    if up {
                        info!("CRM instance {} is up again", i.address);
                    } else {
                        warn!("CRM instance {} is down: calls go to the others", i.address);
                    }
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Build the runtime and serve until SIGTERM/SIGINT (then drain for `listen.drain_seconds`).
/// `upgrade`: take the listening socket from the running permgate first (`serve --upgrade`).
pub fn run(state: Arc<State>, upgrade: bool) -> std::process::ExitCode {
    let inherited = if upgrade {
        let listen = &state.live().config.listen;
        match handover::receive(&listen.upgrade_sock, &listen.address) {
            Ok(l) => Some(l),
            Err(e) => {
                error!("{e}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        None
    };
    run_on(state, inherited)
}

/// [`run`] on a socket already listening (`None`: bind `listen.address`). The socket must be in
/// non-blocking mode.
pub fn run_on(
    state: Arc<State>,
    inherited: Option<std::net::TcpListener>,
) -> std::process::ExitCode {
    let threads = state.live().config.listen.threads;
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("permgate-worker")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(state, inherited)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn serve(state: Arc<State>, inherited: Option<std::net::TcpListener>) -> Result<(), String> {
    let config = state.live().config.clone();
    let listen = &config.listen;
    let u = &config.upstream;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(u.connect_timeout));
    let client = match &u.tls {
        None => Upstream::Plain(Pool::new(
            connector,
            Scheme::HTTP,
            u.pool_size,
            u.idle_timeout,
        )),
        Some(_) => Upstream::Tls(Pool::new(
            upstream_tls::Connector::watch(state.clone(), {
                // The TCP part of an https:// connection.
                connector.enforce_http(false);
                connector
            })?,
            Scheme::HTTPS,
            u.pool_size,
            u.idle_timeout,
        )),
    };
    let authority = authority_of(u.address)?;
    let balanced = if u.addresses.len() > 1 {
        let b = Arc::new(Balanced::new(u)?);
        tokio::spawn(b.clone().check(u.health_check_interval, u.connect_timeout));
        Some(b)
    } else {
        None
    };
    let lane = (listen.h1_lane && matches!(client, Upstream::Plain(_)))
        .then(|| pool::Idle::new(u.pool_size, u.idle_timeout));
    let plane = Arc::new(Plane {
        state: state.clone(),
        client,
        authority: arc_swap::ArcSwap::from_pointee((u.address, authority)),
        balanced,
        gate: gate_of(u),
        keepalive: u.keepalive,
        lane,
    });

    // One builder per protocol (not hyper-util's `auto`, whose connection type holds room
    // for an HTTP/2 connection in every HTTP/1.1 one: ~0.9 KB per idle connection).
    let max_h1_buf = listen.max_header_bytes.max(8192) + 64 * 1024;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        // The gateway's own limits (`listen.max_headers`, `listen.max_header_bytes`) answer
        // 431 with a JSON body; hyper's are set above them, as a backstop.
        .max_headers(257)
        .max_buf_size(max_h1_buf)
        .header_read_timeout(Duration::from_secs(listen.keepalive_timeout_seconds))
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(listen.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(listen.max_header_bytes).unwrap_or(u32::MAX))
        // No keep-alive pings: they would keep an idle connection busy; the idle watchdog
        // ([`drive`]) closes connections that move no byte.
        .keep_alive_interval(None);
    let builders = Arc::new(Builders {
        h1,
        h2,
        h2c: listen.h2c,
        max_head: max_h1_buf,
    });
    let tls = match &listen.tls {
        None => None,
        Some(files) => Some(tls::acceptor(files)?),
    };

    let listener = match inherited {
        Some(l) => {
            // The backlog is this process's setting, not the one that handed it over (a
            // second listen() on a listening socket only changes its backlog).
            rustix::net::listen(&l, i32::try_from(listen.backlog).unwrap_or(i32::MAX))
                .map_err(|e| format!("the socket handed over: listen: {e}"))?;
            tokio::net::TcpListener::from_std(l)
                .map_err(|e| format!("the socket handed over: {e}"))?
        }
        None => bind(listen).map_err(|e| format!("cannot listen on {}: {e}", listen.address))?,
    };
    raise_fd_limit(listen.max_connections);
    // `listen.max_connections`: a slot per open connection, taken before accepting.
    let slots = Arc::new(tokio::sync::Semaphore::new(listen.max_connections));
    let metrics = state.metrics.clone();
    let mut waits_logged: Option<Instant> = None;
    info!(
        "permgate (hyper engine) listening on {}{} → CRM {} (config {}, hash {})",
        if tls.is_some() { "https://" } else { "http://" },
        listen.address,
        u.address,
        config.file,
        config.hash
    );
    // Draining: each connection task holds a sender; all dropped = all connections closed.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let idle = Duration::from_secs(listen.keepalive_timeout_seconds);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    // SIGQUIT: the binary upgrade (the listening socket to the new process, then drain).
    let mut quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit())
        .map_err(|e| e.to_string())?;
    loop {
        let (stream, peer, slot) = tokio::select! {
            accepted = next_connection(&listener, &slots, &metrics, &mut waits_logged) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = quit.recv() => {
                let path = listen.upgrade_sock.clone();
                // A duplicate of the listening socket goes across; this one is not polled
                // until the answer.
                let sent = match (listener.as_fd().try_clone_to_owned(), listener.local_addr()) {
                    (Ok(fd), Ok(local)) => {
                        tokio::task::spawn_blocking(move || handover::send(&path, fd, local))
                            .await
                            .map_err(|e| e.to_string())
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                };
                match sent.and_then(|r| r) {
                    Ok(()) => {
                        info!("SIGQUIT: the listening socket was handed to the new process");
                        break;
                    }
                    Err(e) => error!("SIGQUIT: binary upgrade failed, still serving: {e}"),
                }
                continue;
            }
            _ = int.recv() => {
                info!("SIGINT: stopping now");
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        let alive = Slot::new(slot, metrics.clone(), alive_tx.clone());
        let write_timeout = state.live().config.listen.write_timeout;
        let plane = plane.clone();
        let service = Service {
            plane,
            peer: peer.ip(),
            pending: None,
            fragments: None,
        };
        let builders = builders.clone();
        let drain = drain_rx.clone();
        // Two task shapes, so a plain connection's task does not carry the TLS state.
        match &tls {
            None => {
                tokio::spawn(async move {
                    let h2 = builders.h2c && is_h2_preface(&stream, idle).await;
                    let activity = Arc::new(Activity::default());
                    if let (false, Some(pool)) = (h2, &service.plane.lane) {
                        let (plane, pool) = (service.plane.clone(), pool.clone());
                        let conn = lane::Conn {
                            stream,
                            peer: service.peer,
                            write_timeout,
                        };
                        lane::serve(plane, pool, conn, &activity, builders, idle, drain).await;
                    } else {
                        let io = Tracked::new(stream, activity.clone(), Vec::new(), write_timeout);
                        // Boxed: a connection the lane serves does not carry hyper's state.
                        Box::pin(builders.serve(io, h2, service, &activity, idle, drain)).await;
                    }
                    alive.end(&activity);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let activity = Arc::new(Activity::default());
                    let stream = Tracked::new(stream, activity.clone(), Vec::new(), write_timeout);
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        // The protocol is the one agreed by ALPN.
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        builders
                            .serve(stream, h2, service, &activity, idle, drain)
                            .await;
                    }
                    alive.end(&activity);
                });
            }
        }
    }
    let period = Duration::from_secs(listen.drain_seconds);
    info!(
        "SIGTERM/SIGQUIT: no new connections; draining for at most {}s",
        period.as_secs()
    );
    drop(listener);
    let _ = drain_tx.send(true);
    drop(alive_tx);
    if tokio::time::timeout(period, alive_rx.recv()).await.is_err() {
        warn!("drain period over with connections still open: closing them");
    }
    Ok(())
}

/// How many reads and writes moved bytes on a connection (no clock on the hot path: the idle
/// watchdog compares counts), and whether it was closed for a write that made no progress.
#[derive(Default)]
struct Activity {
    moved: std::sync::atomic::AtomicU64,
    write_timed_out: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// A write to the client made no progress for `listen.write_timeout_ms`: the connection
    /// is closed.
    fn write_timed_out(&self) -> std::io::Error {
        self.write_timed_out.store(true, Ordering::Relaxed);
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing for listen.write_timeout_ms",
        )
    }
}

/// A client connection's slot under `listen.max_connections`, held until it closes (also
/// what the drain waits for).
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _alive: tokio::sync::mpsc::Sender<()>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Slot {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        metrics: Arc<crate::metrics::Metrics>,
        alive: tokio::sync::mpsc::Sender<()>,
    ) -> Self {
        metrics.client_connections.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            _alive: alive,
            metrics,
        }
    }

    /// The connection is over.
    fn end(self, activity: &Activity) {
        if activity.write_timed_out.load(Ordering::Relaxed) {
            info!("a client connection was closed: it read nothing for listen.write_timeout_ms");
            self.metrics
                .client_write_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .client_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The listening socket, with `listen.backlog` (tokio's own `bind` listens with 128).
fn bind(listen: &crate::config::Listen) -> std::io::Result<tokio::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for address in listen.address.to_socket_addrs()? {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(address)?;
            s.listen(listen.backlog)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Make room for `listen.max_connections` client connections and a CRM connection for each
/// in the open-file limit: the soft limit is raised toward that (up to the hard limit, as Go's
/// runtime does); still short, a warning (accepts would then fail instead of waiting in the
/// backlog).
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    let limit = getrlimit(Resource::Nofile);
    // `None`: no limit.
    let Some(mut current) = limit.current.filter(|c| *c < needed) else {
        return;
    };
    let raised = limit.maximum.map_or(needed, |m| m.min(needed));
    if raised > current {
        let set = Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, set).is_ok() {
            info!("open-file limit raised from {current} to {raised} for listen.max_connections");
            current = raised;
        }
    }
    if current < needed {
        warn!(
            "the open-file limit ({current}) is below what listen.max_connections ({max_connections}) may need ({needed}: a client and a CRM connection each); raise it (ulimit -n, LimitNOFILE) or lower listen.max_connections"
        );
    }
}

/// The next client connection: a slot first (`listen.max_connections`; while none is free,
/// nothing is accepted and new connections wait in the listen backlog), then the accept.
async fn next_connection(
    listener: &tokio::net::TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    metrics: &crate::metrics::Metrics,
    logged: &mut Option<Instant>,
) -> std::io::Result<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            metrics
                .client_connection_limit_waits
                .fetch_add(1, Ordering::Relaxed);
            if logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                warn!(
                    "listen.max_connections reached: new connections wait in the listen backlog until one closes (logged once a minute at most)"
                );
                *logged = Some(Instant::now());
            }
            slots
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?
        }
    };
    let (stream, peer) = listener.accept().await?;
    metrics
        .client_connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    Ok((stream, peer, slot))
}

/// A client connection that notes when it last moved a byte. `unread`: bytes already read
/// from it (by the HTTP/1.1 lane, before it handed the connection over) that come first. A
/// write that makes no progress for `write_timeout` fails (the connection is closed).
struct Tracked {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
    unread: Vec<u8>,
    at: usize,
    write_timeout: Duration,
    /// Set when a write could not proceed, until one does (the timer is kept for reuse).
    stalled: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Tracked {
    fn new(
        inner: tokio::net::TcpStream,
        activity: Arc<Activity>,
        unread: Vec<u8>,
        write_timeout: Duration,
    ) -> Self {
        Tracked {
            inner,
            activity,
            unread,
            at: 0,
            write_timeout,
            stalled: None,
            armed: false,
        }
    }

    /// A write's outcome, with the deadline: no progress for `write_timeout` is an error.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if !r.is_pending() {
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.activity.touch();
            }
            self.armed = false;
            return r;
        }
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.write_timeout;
            match &mut self.stalled {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stalled = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let expired = self
            .stalled
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Err(self.activity.write_timed_out()));
        }
        Poll::Pending
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.unread.len() {
            let n = buf.remaining().min(this.unread.len() - this.at);
            buf.put_slice(&this.unread[this.at..this.at + n]);
            this.at += n;
            if this.at == this.unread.len() {
                (this.unread, this.at) = (Vec::new(), 0);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serve one connection until it ends; after `idle` (to 1.5 × `idle`) without a byte either
/// way (an idle keep-alive or HTTP/2 connection), or when the gateway drains, it is shut down
/// gracefully (HTTP/2: GOAWAY; requests in flight finish).
async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    let tick = (idle / 2).max(Duration::from_millis(50));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut quiet = watch::Quiet::new(activity.count());
    // Draining already (a connection the lane handed over after it saw the drain, which
    // `changed` below would not report again).
    let mut closing = *drain.borrow_and_update();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    let drained = drain.changed();
    tokio::pin!(drained);
    // The ticks and the drain are polled only when they woke the task ([`watch`]), and then
    // before the connection (see `lane::serve`: a busy connection must not starve them).
    let watch = watch::Watch::new();
    std::future::poll_fn(|cx| {
        if !closing {
            if let Some(mut wcx) = watch.woken(cx.waker()) {
                let mut quiet_too_long = false;
                while !quiet_too_long && ticks.poll_tick(&mut wcx).is_ready() {
                    quiet_too_long = quiet.tick(activity.count(), tick) >= idle;
                }
                if quiet_too_long || drained.as_mut().poll(&mut wcx).is_ready() {
                    // Idle too long, or the gateway drains: shut down gracefully (it sends
                    // GOAWAY, or closes once idle), polled below at once.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        conn.as_mut().poll(cx).map(|_| ())
    })
    .await;
}

/// How client connections are served.
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// HTTP/2 by prior knowledge on the plain listener (`listen.h2c`).
    h2c: bool,
    /// The largest HTTP/1.x head hyper reads (what [`fragments`] follows).
    max_head: usize,
}

impl Builders {
    /// Serve one client connection with HTTP/2 or HTTP/1.1 until it ends ([`drive`]). The
    /// HTTP/2 connection's state is boxed, so an HTTP/1.1 connection's task does not carry it.
    async fn serve<I>(
        &self,
        io: I,
        h2: bool,
        mut service: Service,
        activity: &Activity,
        idle: Duration,
        drain: tokio::sync::watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let conn = self.h2.serve_connection(TokioIo::new(io), service);
            Box::pin(drive(conn, activity, idle, drain)).await;
        } else {
            // hyper cuts a `#fragment` off the target silently: watched for, to refuse it.
            let (io, marks) = fragments::Watched::new(io, self.max_head);
            service.fragments = Some(marks);
            let conn = self.h1.serve_connection(TokioIo::new(io), service);
            drive(conn, activity, idle, drain).await;
        }
    }
}

/// The client's first bytes, without consuming them: the HTTP/2 connection preface, or not
/// (then HTTP/1.x). A client that sends nothing for `idle` is taken as HTTP/1.x (and closed as
/// idle by the watchdog).
async fn is_h2_preface(stream: &tokio::net::TcpStream, idle: Duration) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    let deadline = tokio::time::Instant::now() + idle;
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match peeked {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // A prefix of the preface so far (rare: a client sending a few bytes at a time).
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// One client connection's service.
#[derive(Clone)]
struct Service {
    plane: Arc<Plane>,
    peer: IpAddr,
    /// A connection handed over by the HTTP/1.1 lane with its first request already
    /// decided ([`lane::Pending`]): taken by the first call.
    pending: Option<Arc<std::sync::Mutex<Option<Box<lane::Pending>>>>>,
    /// HTTP/1.x: which request targets held a `#fragment` ([`fragments`]).
    fragments: Option<Arc<fragments::Marks>>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<RespBody>;
    type Error = Infallible;
    /// Boxed: hyper keeps a slot for the call's future in every connection, idle or not, so
    /// an unboxed one (a few KB) would be held by each idle connection.
    type Future = HandleFuture;

    fn call(&self, req: Request<Incoming>) -> HandleFuture {
        let decided = self
            .pending
            .as_ref()
            .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).take());
        let fragment = self.fragments.as_ref().is_some_and(|m| m.next());
        Box::pin(self.plane.clone().handle(req, self.peer, decided, fragment))
    }
}

fn authority_of(address: SocketAddr) -> Result<Authority, String> {
    Authority::try_from(address.to_string()).map_err(|e| format!("upstream.address: {e}"))
}

/// The request-target as the decision reads it: the origin-form path and query (HTTP/2's
/// `:path`); an HTTP/1.1 absolute-form target is passed whole, and refused by the canonicalizer.
fn target_of(req: &Request<Incoming>) -> &[u8] {
    let uri = req.uri();
    if req.version() != Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        // `http://host/path` or `host:port` (CONNECT): never a route.
        return b"*absolute-form*";
    }
    uri.path_and_query()
        .map_or(b"*" as &[u8], |p| p.as_str().as_bytes())
}

/// What the decision needs beyond the head's fields: HTTP/1.1 requires a `Host`; HTTP/2's
/// `:authority`; a body (declared, or HTTP/2 DATA: a HEADERS frame that does not end the
/// stream, without a `Content-Length: 0`).
fn wire_of(req: &Request<Incoming>) -> crate::policy::Wire<'_> {
    let h2 = req.version() == Version::HTTP_2;
    let mut wire = crate::policy::Wire::from_head(req.method(), req.headers());
    wire.host_required = req.version() == Version::HTTP_11;
    if h2 {
        wire.authority = req.uri().authority().map(|a| a.as_str());
        wire.body |= crate::policy::bodiless(req.method())
            && !req.headers().contains_key(CONTENT_LENGTH)
            && has_body(req);
    }
    wire
}

impl Plane {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: IpAddr,
        decided: Option<Box<lane::Pending>>,
        fragment: bool,
    ) -> Result<Response<RespBody>, Infallible> {
        let (mut ctx, admission) = match decided {
            Some(p) => (p.ctx, Some(p.admission)),
            None => (Ctx::new(), None),
        };
        let method = req.method().clone();
        let target = req.uri().path_and_query().cloned();
        let mut response = if method == Method::CONNECT {
            // No tunnels (Pingora's answer too).
            let rejection = Rejection::new(
                405,
                "method_not_allowed",
                "CONNECT is not served by this gateway",
            );
            reject(&rejection, &ctx, true)
        } else {
            // Whatever is logged while deciding and forwarding names the request (debug only:
            // see `diagnostics`).
            let span = crate::diagnostics::request_span(&ctx.request_id);
            self.dispatch(req, peer, &mut ctx, admission, fragment)
                .instrument(span)
                .await
        };
        let status = response.status().as_u16();
        // The log line and counters once the body is sent (or dropped).
        response.body_mut().finish = Some(Box::new(Finish {
            state: self.state.clone(),
            ctx,
            method,
            target,
            status,
        }));
        Ok(response)
    }

    /// Decide (unless the lane did), then answer or forward.
    async fn dispatch(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        ctx: &mut Ctx,
        decided: Option<Admission>,
        fragment: bool,
    ) -> Response<RespBody> {
        // The target as sent had a `#fragment` hyper dropped: put its `#` back for the
        // decision to refuse (the leftmost bad byte decides the code, as on the lane).
        let with_fragment;
        let mut target = target_of(&req);
        if fragment {
            with_fragment = [target, b"#".as_slice()].concat();
            target = &with_fragment;
        }
        if decided.is_none() {
            let (method, headers) = (req.method(), req.headers());
            if let Some(answer) =
                answer_preflight(&self.state, ctx, method, headers, peer, has_body(&req))
            {
                return answer;
            }
        }
        let admission = match decided {
            Some(a) => a,
            None => exchange::admit_request(
                &self.state,
                ctx,
                &crate::policy::Request {
                    method: req.method(),
                    target,
                    headers: req.headers(),
                    peer: Some(peer),
                    wire: wire_of(&req),
                },
            ),
        };
        match admission {
            Admission::Me(Ok(body)) => json(200, body, ctx),
            Admission::Me(Err(rejection)) | Admission::Deny(rejection) => {
                reject(&rejection, ctx, has_body(&req))
            }
            Admission::Stream => self.forward_streamed(req, ctx).await,
            Admission::Buffer(limit) => match read_body(req, limit, ctx).await {
                Ok((parts, body)) => self.forward_whole(parts, body, ctx).await,
                Err(rejection) => {
                    let response = reject(&rejection, ctx, true);
                    ctx.deny_after_permit(rejection);
                    response
                }
            },
            Admission::Check => self.forward_checked(req, ctx).await,
        }
    }

    /// The CRM instance for this call (its address may change on a config reload), and its
    /// gate.
    fn upstream_authority(&self, ctx: &Ctx) -> Result<(Authority, Option<&Gate>), Rejection> {
        if let Some(b) = &self.balanced {
            let Some(instance) = b.pick() else {
                warn!(request_id = %ctx.request_id, "no healthy CRM instance");
                self.state
                    .metrics
                    .upstream_error(UpstreamError::Unavailable);
                return Err(Rejection::upstream_unavailable());
            };
            return Ok((instance.authority.clone(), instance.gate.as_ref()));
        }
        let address = ctx
            .live
            .as_ref()
            .map(|l| l.config.upstream.address)
            .ok_or_else(Rejection::internal)?;
        let mut cached = self.authority.load();
        if cached.0 != address {
            let a = authority_of(address).map_err(|_| Rejection::internal())?;
            self.authority.store(Arc::new((address, a)));
            cached = self.authority.load();
        }
        Ok((cached.1.clone(), self.gate.as_ref()))
    }

    /// Turn the client's request head into the CRM's: [`exchange::edit_upstream`], HTTP/1.1,
    /// an origin-form target, a Host (HTTP/2 has `:authority` instead; without either, the
    /// CRM instance's); `Connection: close` when `upstream.keepalive` is off. Also: which
    /// instance, and its gate.
    fn upstream_head(
        &self,
        mut parts: http::request::Parts,
        ctx: &Ctx,
    ) -> Result<(http::request::Parts, Authority, Option<&Gate>), Rejection> {
        if parts.version == Version::HTTP_2 && !parts.headers.contains_key(HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, v);
            }
        }
        let raw_target = parts.uri.path_and_query().cloned();
        let raw = raw_target
            .as_ref()
            .map_or(&b"*"[..], |p| p.as_str().as_bytes());
        exchange::edit_upstream(&mut parts, raw, ctx).map_err(|why| {
            error!(request_id = %ctx.request_id, "not forwarded: {why}");
            Rejection::internal()
        })?;
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .ok_or_else(Rejection::internal)?;
        let (authority, gate) = self.upstream_authority(ctx)?;
        if !parts.headers.contains_key(HOST) {
            let host =
                HeaderValue::from_str(authority.as_str()).map_err(|_| Rejection::internal())?;
            parts.headers.insert(HOST, host);
        }
        if !self.keepalive {
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        parts.uri = Uri::from(path);
        parts.version = Version::HTTP_11;
        Ok((parts, authority, gate))
    }

    /// Forward a call whose body streams through (none checked).
    async fn forward_streamed(&self, req: Request<Incoming>, ctx: &mut Ctx) -> Response<RespBody> {
        let (parts, incoming) = req.into_parts();
        let Some(live) = ctx.live.clone() else {
            return reject(&Rejection::internal(), ctx, true);
        };
        let listen = &live.config.listen;
        // A declared length over the limit was refused at the decision.
        let (body, cut) = if incoming.is_end_stream() {
            (ReqBody::Empty, None)
        } else {
            let cut = Arc::new(AtomicU8::new(0));
            (
                ReqBody::Stream(Box::new(Streamed {
                    paced: Paced::new(incoming, listen.body_read_timeout, ctx.deadline),
                    seen: 0,
                    max: listen.max_body_bytes,
                    cut: cut.clone(),
                })),
                Some(cut),
            )
        };
        let (parts, authority, gate) = match self.upstream_head(parts, ctx) {
            Ok(p) => p,
            Err(rejection) => return reject(&rejection, ctx, true),
        };
        match self
            .exchange(authority, gate, Request::from_parts(parts, body), ctx)
            .await
        {
            Ok((response, lease)) => self.answer(response, lease, ctx).await,
            Err(rejection) => {
                let rejection = match cut.map(|c| c.load(Ordering::Acquire)) {
                    Some(CUT_TOO_LARGE) => Rejection::body_too_large(),
                    Some(CUT_TIMED_OUT) => Rejection::request_timeout(),
                    Some(CUT_UNREADABLE) => Rejection::body_unreadable(),
                    // The total timeout ran out while the client was still sending its body.
                    Some(0) if rejection.code == "upstream_timeout" => Rejection::request_timeout(),
                    _ => rejection,
                };
                reject(&rejection, ctx, true)
            }
        }
    }

    /// Read, check and forward the body of an inspected route: only the checked copy goes.
    async fn forward_checked(&self, req: Request<Incoming>, ctx: &mut Ctx) -> Response<RespBody> {
        let refuse = |ctx: &mut Ctx, rejection: Rejection| {
            let response = reject(&rejection, ctx, true);
            ctx.deny_after_permit(rejection);
            response
        };
        if let Err(rejection) = exchange::check_json_media(req.headers()) {
            return refuse(ctx, rejection);
        }
        let limit = ctx.inspect().map_or(0, |i| i.body_limits.max_bytes);
        let (parts, body) = match read_body(req, limit, ctx).await {
            Ok(read) => read,
            Err(rejection) => return refuse(ctx, rejection),
        };
        match exchange::check_body(ctx, body.as_deref().unwrap_or_default()) {
            Ok(forward) => {
                self.forward_whole(parts, Some(Bytes::from(forward.body)), ctx)
                    .await
            }
            Err((rejection, body)) => {
                let mut response = json(rejection.status, body, ctx);
                if rejection.status == 401 {
                    response
                        .headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                response
            }
        }
    }

    /// Forward a call whose body was read whole: exactly `body` with its length, or none.
    async fn forward_whole(
        &self,
        parts: http::request::Parts,
        body: Option<Bytes>,
        ctx: &mut Ctx,
    ) -> Response<RespBody> {
        let (mut parts, authority, gate) = match self.upstream_head(parts, ctx) {
            Ok(p) => p,
            Err(rejection) => return reject(&rejection, ctx, false),
        };
        // The body is sent whole, right away: no `Expect`, and exactly its own framing.
        parts.headers.remove(EXPECT);
        parts.headers.remove(TRANSFER_ENCODING);
        let body = match body {
            Some(b) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
                ReqBody::Full(Some(b))
            }
            None => {
                parts.headers.remove(CONTENT_LENGTH);
                ReqBody::Empty
            }
        };
        let head_request = parts.method == Method::HEAD;
        let (response, lease) = match self
            .exchange(authority, gate, Request::from_parts(parts, body), ctx)
            .await
        {
            Ok(r) => r,
            Err(rejection) => return reject(&rejection, ctx, false),
        };
        let lists = ctx.filters_response()
            && response.status().is_success()
            && !head_request
            && response.status() != StatusCode::NO_CONTENT;
        if !lists {
            return self.answer(response, lease, ctx).await;
        }
        match self.read_and_filter_list(response, lease, ctx).await {
            Ok((mut parts, filtered)) => {
                strip_response_hop_headers(&mut parts.headers);
                parts.headers.remove(http::header::CONTENT_ENCODING);
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(filtered.len()));
                for (name, value) in exchange::response_headers(ctx) {
                    parts.headers.insert(name, value);
                }
                exchange::cors_headers(ctx, &mut parts.headers, true);
                Response::from_parts(parts, RespBody::full(Bytes::from(filtered)))
            }
            Err(Ok(why)) => {
                warn!(request_id = %ctx.request_id, "list not filtered: {why}");
                reject(
                    &Rejection::new(
                        502,
                        "list_unfilterable",
                        "the CRM's answer could not be filtered for this caller",
                    ),
                    ctx,
                    false,
                )
            }
            Err(Err(rejection)) => reject(&rejection, ctx, false),
        }
    }

    /// Read a list response whole (at most the route's `list.max_bytes`) and filter it.
    /// `Err(Ok(why))`: it cannot be filtered; `Err(Err(_))`: the CRM failed mid-way.
    async fn read_and_filter_list(
        &self,
        response: Response<Incoming>,
        lease: Lease,
        ctx: &Ctx,
    ) -> Result<(http::response::Parts, Vec<u8>), Result<String, Rejection>> {
        let limit = exchange::list_limit(ctx);
        let (parts, mut incoming) = response.into_parts();
        let encoded = parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Err(Ok("the response is compressed".into()));
        }
        let read_timeout = ctx.upstream_read_timeout();
        let mut buffer = Vec::new();
        loop {
            let wait = read_timeout.min(left(ctx.deadline));
            let frame = match tokio::time::timeout(wait, next_frame(&mut incoming)).await {
                Err(_) => return Err(Err(self.upstream_failed(ctx, Failure::Timeout, "list"))),
                Ok(None) => {
                    lease.release();
                    break;
                }
                Ok(Some(Err(e))) => {
                    return Err(Err(self.upstream_failed(
                        ctx,
                        Failure::Other,
                        &e.to_string(),
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if buffer.len() + data.len() > limit {
                    return Err(Ok("the response is over the route's list.max_bytes".into()));
                }
                buffer.extend_from_slice(&data);
            }
        }
        exchange::filter_list(ctx, &buffer)
            .map(|filtered| (parts, filtered))
            .map_err(Ok)
    }

    /// A place at the CRM instance (`upstream.max_connections`), waiting in its queue if
    /// need be; 503 `upstream_busy` when the queue is full or the wait runs out.
    async fn enter(&self, gate: Option<&Gate>, ctx: &Ctx) -> Result<Option<Permit>, Rejection> {
        let Some(gate) = gate else {
            return Ok(None);
        };
        // The call's deadline, not the time left: the clock is read only if it has to wait.
        match gate.enter(ctx.deadline).await {
            Some(permit) => Ok(Some(permit)),
            None => {
                self.state.metrics.upstream_error(UpstreamError::Busy);
                warn!(
                    request_id = %ctx.request_id,
                    "the CRM instance is at upstream.max_connections and its queue is full or the wait ran out; answering 503"
                );
                Err(Rejection::upstream_busy())
            }
        }
    }

    /// Send the request to the CRM instance at `authority` and wait for its response head
    /// (bounded by the read and total timeouts), once the instance's gate lets it in. A closed
    /// pooled connection is retried on another ([`pool`]; after the request went out, only for
    /// `upstream.retry_methods`). An answer framed both by `Transfer-Encoding` and
    /// `Content-Length` is refused (502 `upstream_error`, the connection closed), as the lane does.
    async fn exchange(
        &self,
        authority: Authority,
        gate: Option<&Gate>,
        request: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Result<(Response<Incoming>, Lease), Rejection> {
        let permit = self.enter(gate, ctx).await?;
        let Some(live) = ctx.live.as_ref() else {
            return Err(Rejection::internal());
        };
        let upstream = &live.config.upstream;
        let read_timeout = upstream.read_timeout;
        let retryable = upstream.retry_methods.contains(request.method());
        let head_request = request.method() == Method::HEAD;
        // The exchange's one clock reading: its start, the pool's idle check and the answer
        // head's deadline (issue 18: not one per `left`, `timeout` and pool step).
        let started = Instant::now();
        ctx.upstream_started = Some(started);
        let until = after(started, read_timeout.min(left_at(ctx.deadline, started)));
        let sent = self.client.send(authority, request, retryable, started);
        let result = tokio::time::timeout_at(until.into(), sent).await;
        let (response, mut lease) = match result {
            Err(_) => return Err(self.upstream_failed(ctx, Failure::Timeout, "no answer in time")),
            Ok(Err(SendFailure::Connect(e))) => {
                let failure = if is_timeout(e.as_ref()) {
                    Failure::Timeout
                } else {
                    Failure::Connect
                };
                return Err(self.upstream_failed(ctx, failure, &error_chain(e.as_ref())));
            }
            Ok(Err(SendFailure::Exchange(e))) => {
                let failure = if is_timeout(&e) {
                    Failure::Timeout
                } else {
                    Failure::Other
                };
                return Err(self.upstream_failed(ctx, failure, &error_chain(&e)));
            }
            Ok(Ok(r)) => r,
        };
        lease.permit = permit;
        let answered = Instant::now();
        // Back in the pool, the connection is idle from here at the latest.
        lease.at = answered;
        let elapsed = answered.saturating_duration_since(started);
        ctx.upstream_elapsed = Some(elapsed);
        ctx.upstream_status = Some(response.status().as_u16());
        self.state.metrics.upstream_seconds.observe(elapsed);
        let status = response.status();
        let bodiless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        if !bodiless
            && response.headers().contains_key(TRANSFER_ENCODING)
            && response.headers().contains_key(CONTENT_LENGTH)
        {
            // hyper took the chunks and would pass the CRM's length on: neither is trusted.
            // The lease is dropped unreleased: the connection closes.
            return Err(self.upstream_failed(
                ctx,
                Failure::Other,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        Ok((response, lease))
    }

    fn upstream_failed(&self, ctx: &Ctx, failure: Failure, why: &str) -> Rejection {
        let (rejection, kind) = failure.rejection();
        self.state.metrics.upstream_error(kind);
        warn!(
            request_id = %ctx.request_id,
            "upstream failure: {why}; answering {}", rejection.status
        );
        rejection
    }

    /// The CRM's response, streamed back with the gateway's headers.
    fn pass_back(
        &self,
        response: Response<Incoming>,
        lease: Lease,
        ctx: &Ctx,
    ) -> Response<RespBody> {
        let (parts, incoming) = response.into_parts();
        let read_timeout = ctx.upstream_read_timeout();
        let body = if incoming.is_end_stream() {
            lease.release();
            RespBody::empty()
        } else {
            RespBody {
                kind: RespKind::Stream(
                    Paced::new(incoming, read_timeout, ctx.deadline),
                    Some(lease),
                ),
                finish: None,
            }
        };
        self.pass_back_with(parts, body, ctx)
    }

    /// The CRM's answer head with the gateway's headers, and this body.
    fn pass_back_with(
        &self,
        mut parts: http::response::Parts,
        body: RespBody,
        ctx: &Ctx,
    ) -> Response<RespBody> {
        strip_response_hop_headers(&mut parts.headers);
        exchange::insert_response_headers(ctx, &mut parts.headers);
        exchange::cors_headers(ctx, &mut parts.headers, true);
        Response::from_parts(parts, body)
    }
}

use crate::exchange::Failure;

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn strip_response_hop_headers(headers: &mut http::HeaderMap) {
    // hyper frames the body itself (chunked, a length, or HTTP/2 frames): Transfer-Encoding too.
    headers.remove(TRANSFER_ENCODING);
    for name in exchange::hop_headers_present(headers) {
        headers.remove(name);
    }
}

/// Time left before the total timeout (zero once it has passed).
fn left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    })
}

/// Time left before the total timeout at `now` (a clock reading the caller has).
fn left_at(deadline: Option<Instant>, now: Instant) -> Duration {
    deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now))
}

/// `now + wait`, a wait past any real deadline (no deadline: `Duration::MAX`) capped at a year.
fn after(now: Instant, wait: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    now.checked_add(wait.min(YEAR)).unwrap_or(now)
}

fn has_body(req: &Request<Incoming>) -> bool {
    !req.body().is_end_stream()
}

fn next_frame(
    body: &mut Incoming,
) -> impl Future<Output = Option<Result<Frame<Bytes>, hyper::Error>>> + '_ {
    std::future::poll_fn(move |cx| Pin::new(&mut *body).poll_frame(cx))
}

/// Read the whole request body, at most `limit` bytes (413 beyond; a declared
/// `Content-Length` over the limit is refused before reading). `None`: no body.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    ctx: &Ctx,
) -> Result<(http::request::Parts, Option<Bytes>), Rejection> {
    let (parts, mut incoming) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // A client waiting for `100 Continue` gets the 413 instead (RFC 9110 §10.1.1), as on
        // the lane: reading (draining) the body would have sent it the 100 first, asking for
        // a body only to discard it. hyper's server then closes the connection.
        let waits = parts
            .headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits {
            drain(&mut incoming).await;
        }
        return Err(Rejection::route_body_too_large());
    }
    if incoming.is_end_stream() {
        return Ok((parts, None));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    loop {
        match tokio::time::timeout(ctx.body_wait(), next_frame(&mut incoming)).await {
            Err(_) => return Err(Rejection::request_timeout()),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Rejection::body_unreadable()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if body.len() + data.len() > limit {
                        drain(&mut incoming).await;
                        return Err(Rejection::route_body_too_large());
                    }
                    body.extend_from_slice(&data);
                }
            }
        }
    }
    Ok((parts, Some(Bytes::from(body))))
}

/// Read and discard what is left of a refused request body (at most [`MAX_DRAINED`], for at
/// most 5 s), so the caller, still sending, gets the answer rather than a reset connection.
async fn drain(incoming: &mut Incoming) {
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        let mut drained = 0;
        while drained < MAX_DRAINED {
            match next_frame(incoming).await {
                Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    })
    .await;
}

/// A JSON answer made by the gateway, with the request id.
fn json(status: u16, body: Vec<u8>, ctx: &Ctx) -> Response<RespBody> {
    let mut response = Response::new(RespBody::full(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = exchange::request_id_value(&ctx.request_id) {
        headers.insert(ctx.id_header(), v);
    }
    exchange::cors_headers(ctx, headers, false);
    response
}

/// The gateway's answer to a CORS preflight it allowed ([`exchange::answer_preflight`]): 204,
/// the request id and the CORS headers. With a request body possibly unread, the connection is
/// closed after it.
fn preflight(ctx: &Ctx, unread_body: bool) -> Response<RespBody> {
    let mut response = Response::new(RespBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    if let Some(v) = exchange::request_id_value(&ctx.request_id) {
        headers.insert(ctx.id_header(), v);
    }
    exchange::cors_headers(ctx, headers, false);
    if unread_body {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A CORS preflight the gateway answers itself (`[cors]`, `mode = "gateway"`), if this is one.
fn answer_preflight(
    state: &State,
    ctx: &mut Ctx,
    method: &Method,
    headers: &http::HeaderMap,
    peer: IpAddr,
    unread_body: bool,
) -> Option<Response<RespBody>> {
    if method != Method::OPTIONS {
        return None;
    }
    Some(
        match exchange::answer_preflight(state, ctx, method, headers, Some(peer))? {
            Ok(()) => preflight(ctx, unread_body),
            Err(rejection) => reject(&rejection, ctx, unread_body),
        },
    )
}

/// Answer a rejection: status, JSON body, request id; `WWW-Authenticate` on 401. With a
/// request body possibly unread, the connection is closed after the answer.
fn reject(rejection: &Rejection, ctx: &Ctx, unread_body: bool) -> Response<RespBody> {
    let mut response = json(rejection.status, rejection.body(&ctx.request_id), ctx);
    let headers = response.headers_mut();
    if rejection.status == 401 {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = rejection.retry_after {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs.get()));
    }
    if unread_body {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The body sent to the CRM.
enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    Stream(Box<Streamed>),
}

/// The client's body on its way to the CRM: capped in size and in time.
struct Streamed {
    paced: Paced,
    seen: u64,
    max: u64,
    cut: Arc<AtomicU8>,
}

/// An incoming body (the client's or the CRM's) whose every wait is capped: `idle` between
/// pieces, and what is left before `deadline` in all.
struct Paced {
    inner: Incoming,
    idle: Duration,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The clock read when the last piece came (with a deadline to check it against).
    read_at: Option<Instant>,
}

/// Why a [`Paced`] body stopped short.
enum Halt {
    /// No piece within `idle` (or before the deadline).
    Stalled,
    /// A piece came after the deadline.
    PastDeadline,
    /// The body could not be read (bad framing, the peer went away).
    Failed(hyper::Error),
}

impl Paced {
    fn new(inner: Incoming, idle: Duration, deadline: Option<Instant>) -> Self {
        Paced {
            inner,
            idle,
            deadline,
            sleep: None,
            read_at: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Halt>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.sleep = None;
                if let Some(deadline) = self.deadline {
                    let now = Instant::now();
                    self.read_at = Some(now);
                    if now >= deadline {
                        return Poll::Ready(Some(Err(Halt::PastDeadline)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Halt::Failed(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let wait = self.idle.min(left(self.deadline));
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Halt::Stalled)));
                }
                Poll::Pending
            }
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(s) => s.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s) => s.paced.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s) => s.paced.inner.size_hint(),
        }
    }
}

impl Streamed {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (cut, why): (u8, BoxError) = match self.paced.poll(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.seen <= self.max {
                    return Poll::Ready(Some(Ok(frame)));
                }
                (
                    CUT_TOO_LARGE,
                    "request body over listen.max_body_bytes".into(),
                )
            }
            Poll::Ready(None) => {
                self.cut.store(BODY_DONE, Ordering::Release);
                return Poll::Ready(None);
            }
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(Halt::Stalled))) => (CUT_TIMED_OUT, "request body stalled".into()),
            Poll::Ready(Some(Err(Halt::PastDeadline))) => {
                (CUT_TIMED_OUT, "request body past the total timeout".into())
            }
            // Bad chunk framing, or the client went away: the CRM gets an incomplete request
            // it must discard, the client (if still there) a 400.
            Poll::Ready(Some(Err(Halt::Failed(e)))) => (CUT_UNREADABLE, e.into()),
        };
        self.cut.store(cut, Ordering::Release);
        Poll::Ready(Some(Err(why)))
    }
}

/// The body sent to the caller; logs the call when done.
pub struct RespBody {
    kind: RespKind,
    finish: Option<Box<Finish>>,
}

enum RespKind {
    Full(Option<Bytes>),
    /// The CRM's body: each wait capped by `upstream.read_timeout_ms`, all of it by the total
    /// timeout (past it, the response is cut off). Its connection goes back to the pool once
    /// the body has been read to its end.
    Stream(Paced, Option<Lease>),
    /// Bytes already read from the CRM's answer, then the rest of it ([`learn`]).
    Prefixed(Option<Bytes>, Box<RespBody>),
}

impl RespBody {
    fn full(b: Bytes) -> Self {
        RespBody {
            kind: RespKind::Full(Some(b)),
            finish: None,
        }
    }

    fn empty() -> Self {
        RespBody {
            kind: RespKind::Full(None),
            finish: None,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            RespKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Stream(paced, lease) => match paced.poll(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if paced.inner.is_end_stream() {
                        if let Some(lease) = lease.take() {
                            lease.release_at(paced.read_at);
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    if let Some(lease) = lease.take() {
                        lease.release_at(paced.read_at);
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Err(Halt::Failed(e)))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Err(Halt::Stalled))) => {
                    Poll::Ready(Some(Err("the CRM's response stalled".into())))
                }
                Poll::Ready(Some(Err(Halt::PastDeadline))) => Poll::Ready(Some(Err(
                    "the CRM's response ran past the total timeout".into(),
                ))),
            },
            RespKind::Prefixed(first, rest) => match first.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(&mut **rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Full(b) => b.is_none(),
            RespKind::Stream(p, _) => p.inner.is_end_stream(),
            RespKind::Prefixed(first, rest) => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Stream(p, _) => p.inner.size_hint(),
            RespKind::Prefixed(first, rest) => {
                let n = first.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(n));
                }
                hint.set_lower(inner.lower().saturating_add(n));
                hint
            }
        }
    }
}

/// What the log line needs, kept until the response body is done.
struct Finish {
    state: Arc<State>,
    ctx: Ctx,
    method: Method,
    target: Option<PathAndQuery>,
    status: u16,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let target = self.target.as_ref().map_or("", |p| p.as_str());
        exchange::finish(
            &self.state,
            &self.ctx,
            &self.method,
            target.as_bytes(),
            self.status,
        );
    }
}

/// Downstream TLS with rustls: certificates read from files and reloaded when they change.
mod tls {
    use std::sync::Arc;

    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::TlsAcceptor;

    use crate::config::ListenTls;

    /// The acceptor (HTTP/2, HTTP/1.1 and HTTP/1.0 by ALPN), with the certificate resolver that swaps in
    /// new certificates when the files change ([`crate::certs`]).
    pub fn acceptor(files: &ListenTls) -> Result<TlsAcceptor, String> {
        let resolver = crate::certs::listener_resolver(files)?;
        let builder = ServerConfig::builder_with_provider(crate::certs::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &files.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(crate::certs::client_verifier(ca)?),
        };
        let mut config = builder.with_cert_resolver(resolver);
        // HTTP/1.0 too (served by the HTTP/1.1 server, as nginx does): a client offering only
        // `http/1.0` is not refused at the handshake.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        // Resumption by stateless tickets (TLS 1.3 tickets and TLS 1.2 tickets), encrypted with
        // a key rustls rotates every 6 hours (the previous key still opens tickets issued before
        // the switch). rustls's default is stateful: every ticket an entry in a 256-session
        // cache, so beyond ~128 clients resuming in turn (2 tickets each per connection) tickets
        // were evicted before their use and those clients fell back to full handshakes. TLS 1.2
        // clients resuming by session id still use that bounded cache.
        config.ticketer =
            tokio_rustls::rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// TLS toward the CRM: hyper-rustls with the CA bundle (else the system's roots), the client
/// certificate if configured, and `upstream.tls.sni` as the server name; re-read when the files
/// (or, after a config reload, their names) change. New connections use the current material;
/// a bad file is logged and the last good material stays.
mod upstream_tls {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use arc_swap::ArcSwap;
    use http::Uri;
    use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tracing::{info, warn};

    use crate::config::UpstreamTls;
    use crate::live::State;

    type Https = HttpsConnector<HttpConnector>;

    #[derive(Clone)]
    pub struct Connector {
        current: Arc<ArcSwap<Https>>,
    }

    fn build(tls: &UpstreamTls, tcp: HttpConnector) -> Result<Https, String> {
        let mut roots = RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for c in crate::pem::certificates(path)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("'{}': {e}", path.display()))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs()
                    .map_err(|e| format!("the system's CA certificates: {e}"))?
                {
                    let _ = roots.add(c);
                }
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match &tls.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    crate::pem::certificates(cert)?,
                    crate::pem::private_key(key)?,
                )
                .map_err(|e| format!("'{}' / '{}': {e}", cert.display(), key.display()))?,
        };
        let name = ServerName::try_from(tls.sni.clone())
            .map_err(|e| format!("upstream.tls.sni '{}': {e}", tls.sni))?;
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .with_server_name_resolver(FixedServerNameResolver::new(name))
            .enable_http1()
            .wrap_connector(tcp))
    }

    impl Connector {
        /// The connector for the config's files now, and a thread that keeps it current.
        pub fn watch(state: Arc<State>, tcp: HttpConnector) -> Result<Self, String> {
            let tls = state
                .live()
                .config
                .upstream
                .tls
                .clone()
                .ok_or("no upstream.tls")?;
            let current = Arc::new(ArcSwap::from_pointee(build(&tls, tcp.clone())?));
            let shared = current.clone();
            let watched = state.clone();
            crate::certs::watch(
                "permgate-upstream-tls",
                move || crate::certs::upstream_stamp(watched.live().config.upstream.tls.as_ref()),
                move || {
                    let Some(tls) = state.live().config.upstream.tls.clone() else {
                        return;
                    };
                    match build(&tls, tcp.clone()) {
                        Ok(c) => {
                            shared.store(Arc::new(c));
                            info!(
                                "upstream TLS material (CA bundle / client certificate) reloaded"
                            );
                        }
                        Err(e) => warn!("upstream TLS change refused, the old material stays: {e}"),
                    }
                },
            )?;
            Ok(Connector { current })
        }
    }

    type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    impl tower_service::Service<Uri> for Connector {
        type Response = Stream;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, uri: Uri) -> Self::Future {
            let mut https = (**self.current.load()).clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut https, cx))
                    .await?;
                tower_service::Service::call(&mut https, uri).await
            })
        }
    }
}
