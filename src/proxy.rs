//! The Pingora data plane: the only module that imports Pingora.
//!
//! Which decision happens in which phase (cf. Pingora's `docs/user_guide/phase.md`):
//!
//! | phase                     | what permgate does                                             |
//! |---------------------------|----------------------------------------------------------------|
//! | `new_ctx`                 | a fresh request id                                             |
//! | `request_filter`          | one load of the live config + snapshot, kept to the end; the whole decision ([`crate::policy::decide`]); a denial is answered here with its JSON body |
//! | `request_filter` (inspected routes) | the body is read (bounded) and checked; the call is forwarded by [`Gateway::forward_inspected`] (our own Pingora connector: exactly the checked body upstream, a list response filtered before its header goes out), then answered here |
//! | `upstream_peer`           | the CRM peer with the configured timeouts (pooled keep-alive) |
//! | `upstream_request_filter` | forward exactly the canonical path; strip hop-by-hop headers, every client copy of the identity headers and consumed credentials; add the caller's id, roles and the request id |
//! | `response_filter`         | the request id goes back to the client                         |
//! | `fail_to_proxy`           | upstream down → 502, upstream timeout → 504, with JSON bodies  |
//! | `logging`                 | one line per request, with the request id                      |

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use log::{info, warn};
use pingora::apps::HttpServerOptions;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::proxy::{ProxyHttp, ProxyServiceBuilder, Session};
use pingora::server::configuration::ServerConf;
use pingora::{ErrorSource, ErrorType};

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::background_service;

use crate::config::Access;
use crate::decision_log::{self, Record};
use crate::identity;
use crate::live::{Live, State};
use crate::metrics::{Outcome, UpstreamError};
use crate::policy::{self, Denied, Permit};
use crate::reject::Rejection;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Prefix of every header permgate sets; client copies of any of them are removed.
pub const OWN_HEADER_PREFIX: &str = "x-permgate-";

/// The gateway's Pingora application.
pub struct Gateway {
    state: Arc<State>,
    /// Several CRM instances: round robin over the healthy ones (health checked in the
    /// background). `None`: one instance, `upstream.address`.
    balancer: Option<Arc<LoadBalancer<RoundRobin>>>,
    /// CA bundle and client certificate for TLS to the CRM (re-read when the files change).
    upstream_tls: Arc<arc_swap::ArcSwap<upstream_tls::Material>>,
    /// The gateway's own upstream client, for inspected calls (see [`Gateway::forward_inspected`]).
    connector: Connector,
}

impl Gateway {
    pub fn new(state: Arc<State>, conf: &ServerConf) -> Self {
        Gateway {
            state,
            balancer: None,
            upstream_tls: Default::default(),
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }

    /// Forward an inspected call and answer the caller, in `request_filter`.
    ///
    /// Pingora's proxy loop cannot send a body other than the client's once that body has been
    /// read in `request_filter`: it replays only its retry buffer (64 KiB, and `None` past that),
    /// and `request_body_filter` is never called again for a body already read. Nor can it hold
    /// a response header back until the body is known. So the calls whose request body is
    /// checked, or whose response is filtered, are forwarded here, through a Pingora connector
    /// with the same peer, header rules and timeouts as every other call ([`Self::upstream_peer`],
    /// [`Self::upstream_request_filter`], [`Self::response_filter`]):
    /// - the CRM receives exactly `body` (the checked, re-serialized copy, or the client's body
    ///   on a route that checks none) with its `Content-Length`, or no body;
    /// - a list response (2xx) is read whole (at most `list.max_bytes`) and filtered before its
    ///   header is sent; one that cannot be filtered is answered 502 `list_unfilterable`, with
    ///   nothing of it;
    /// - any other response streams back as it comes.
    ///
    /// An error before the caller got a response header is answered by [`Self::fail_to_proxy`]
    /// (502/504 with a JSON body), as for proxied calls.
    async fn forward_inspected(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        body: Option<Bytes>,
    ) -> Result<()> {
        let peer = self.upstream_peer(session, ctx).await?;
        let mut req = session.req_header().clone();
        // H2 has `:authority` and no Host; an HTTP/1.1 CRM expects Host.
        if req.version == http::Version::HTTP_2 && !req.headers.contains_key(http::header::HOST) {
            if let Some(authority) = req.uri.authority().map(|a| a.to_string()) {
                req.insert_header(http::header::HOST, authority)?;
            }
        }
        req.set_version(http::Version::HTTP_11);
        self.upstream_request_filter(session, &mut req, ctx).await?;
        // The body is sent whole, right away: no `Expect`, and exactly its own framing.
        req.remove_header(&http::header::EXPECT);
        req.remove_header(&TRANSFER_ENCODING);
        match &body {
            Some(b) => req.insert_header(CONTENT_LENGTH, b.len().to_string())?,
            None => {
                req.remove_header(&CONTENT_LENGTH);
            }
        }

        // A pooled connection the CRM closed while idle fails at once: the call is tried once
        // more, as Pingora does for proxied calls (the body is in memory).
        let (mut upstream, mut resp) = match self.exchange(&peer, &req, &body, ctx).await {
            Ok(done) => done,
            Err(Retry::Reused(e)) => {
                warn!(
                    "request_id={} retrying on another connection: {e}",
                    ctx.request_id
                );
                self.exchange(&peer, &req, &body, ctx)
                    .await
                    .map_err(Retry::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        self.upstream_response_filter(session, &mut resp, ctx)
            .await?;
        for name in RESPONSE_HOP_HEADERS {
            resp.remove_header(name);
        }
        let lists = ctx
            .live
            .as_ref()
            .zip(ctx.permit.as_ref().and_then(|p| p.route))
            .and_then(|(l, r)| policy::route_info(&l.config, r).inspect.as_ref())
            .is_some_and(|i| i.filters_response());
        // A 2xx with a body to filter (a HEAD answer or a 204 has none).
        let has_body = session.req_header().method != http::Method::HEAD
            && resp.status != http::StatusCode::NO_CONTENT;
        if lists && resp.status.is_success() && has_body {
            let filtered = match self.read_and_filter_list(&mut upstream, ctx).await? {
                Ok(body) => body,
                Err(why) => {
                    warn!("request_id={} list not filtered: {why}", ctx.request_id);
                    let id_header = ctx
                        .live
                        .as_ref()
                        .map(|l| l.config.forward.request_id_header.clone())
                        .unwrap_or_else(default_request_id_header);
                    // The CRM connection may hold the rest of that response: not reused.
                    upstream.shutdown().await;
                    return respond(
                        session,
                        &Rejection::new(
                            502,
                            "list_unfilterable",
                            "the CRM's answer could not be filtered for this caller",
                        ),
                        &ctx.request_id,
                        &id_header,
                    )
                    .await;
                }
            };
            self.response_filter(session, &mut resp, ctx).await?;
            resp.remove_header(&TRANSFER_ENCODING);
            resp.remove_header(&http::header::CONTENT_ENCODING);
            resp.insert_header(CONTENT_LENGTH, filtered.len().to_string())?;
            session.write_response_header(Box::new(resp), false).await?;
            session
                .write_response_body(Some(Bytes::from(filtered)), true)
                .await?;
        } else {
            self.response_filter(session, &mut resp, ctx).await?;
            session.write_response_header(Box::new(resp), false).await?;
            while let Some(chunk) = upstream
                .read_response_body()
                .await
                .map_err(|e| e.into_up())?
            {
                remaining(ctx.deadline)?;
                session.write_response_body(Some(chunk), false).await?;
            }
            session.write_response_body(None, true).await?;
        }
        if upstream.response_done() {
            self.connector
                .release_http_session(upstream, &*peer, peer.options.idle_timeout)
                .await;
        }
        Ok(())
    }

    /// Send the request on a connection to `peer` and read the response header (skipping
    /// informational ones). A reused pooled connection that fails before any response (not by
    /// a timeout) is [`Retry::Reused`].
    async fn exchange(
        &self,
        peer: &HttpPeer,
        req: &RequestHeader,
        body: &Option<Bytes>,
        ctx: &Ctx,
    ) -> std::result::Result<(ClientSession, ResponseHeader), Retry> {
        let fresh = |e: Box<Error>| Retry::Fresh(e.into_up());
        let (mut upstream, reused) = self.connector.get_http_session(peer).await.map_err(fresh)?;
        upstream.set_read_timeout(peer.options.read_timeout);
        upstream.set_write_timeout(peer.options.write_timeout);
        let failed = |e: Box<Error>| {
            let e = e.into_up();
            let timeout = matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout
            );
            if reused && !timeout {
                Retry::Reused(e)
            } else {
                Retry::Fresh(e)
            }
        };
        upstream
            .write_request_header(Box::new(req.clone()))
            .await
            .map_err(failed)?;
        if let Some(b) = body {
            upstream
                .write_request_body(b.clone(), true)
                .await
                .map_err(failed)?;
        }
        upstream.finish_request_body().await.map_err(failed)?;
        upstream.read_response_header().await.map_err(failed)?;
        loop {
            remaining(ctx.deadline).map_err(Retry::Fresh)?;
            let resp = upstream.response_header().cloned().ok_or_else(|| {
                Retry::Fresh(
                    Error::explain(ErrorType::InvalidHTTPHeader, "no response header").into_up(),
                )
            })?;
            // Informational answers (100 Continue) are skipped: the body is already sent.
            if !resp.status.is_informational() {
                return Ok((upstream, resp));
            }
            upstream
                .read_response_header()
                .await
                .map_err(|e| Retry::Fresh(e.into_up()))?;
        }
    }

    /// Forward a call whose response is filtered but whose body is not checked: the client's
    /// body is read (at most `limit`, 413 beyond) and sent as it came.
    async fn forward_with_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        limit: usize,
    ) -> Result<bool> {
        match read_body(session, limit).await? {
            Ok(body) => self.forward_inspected(session, ctx, body).await?,
            Err(rejection) => {
                let id_header = ctx
                    .live
                    .as_ref()
                    .map(|l| l.config.forward.request_id_header.clone())
                    .unwrap_or_else(default_request_id_header);
                respond(session, &rejection, &ctx.request_id, &id_header).await?;
                // Answered by the gateway: logged as a denial, not as a forwarded call.
                if let Some(permit) = ctx.permit.take() {
                    ctx.denied = Some(Box::new(Denied {
                        rejection,
                        route: permit.route,
                        user: None,
                        canonical: None,
                        caller: permit.caller,
                    }));
                }
            }
        }
        Ok(true)
    }

    /// Read a list response whole (at most the route's `list.max_bytes`) and filter it for the
    /// caller. `Ok(Err(why))`: it cannot be filtered (the caller must get none of it).
    async fn read_and_filter_list(
        &self,
        upstream: &mut ClientSession,
        ctx: &Ctx,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let (Some(live), Some(permit)) = (&ctx.live, &ctx.permit) else {
            return Ok(Err("no permit".into()));
        };
        let Some(inspect) = permit
            .route
            .and_then(|r| policy::route_info(&live.config, r).inspect.as_ref())
        else {
            return Ok(Err("no inspection settings".into()));
        };
        let (Some(caller), Some(snapshot)) = (permit.caller, live.snapshot.as_deref()) else {
            return Ok(Err("no caller".into()));
        };
        let limit = inspect.list.as_ref().map_or(0, |l| l.limits.max_bytes);
        let encoded = upstream
            .response_header()
            .and_then(|r| r.headers.get(http::header::CONTENT_ENCODING))
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            return Ok(Err("the response is compressed".into()));
        }
        let mut buffer = Vec::new();
        while let Some(chunk) = upstream
            .read_response_body()
            .await
            .map_err(|e| e.into_up())?
        {
            remaining(ctx.deadline)?;
            if buffer.len() + chunk.len() > limit {
                return Ok(Err("the response is over the route's list.max_bytes".into()));
            }
            buffer.extend_from_slice(&chunk);
        }
        let filtered =
            match crate::inspect::filter_response(snapshot, caller.user, inspect, &buffer) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e.to_string())),
            };
        if let Some(c) = live.counters(permit.route) {
            c.trimmed(filtered.removed as u64);
        }
        Ok(Ok(filtered.body))
    }
}

/// Per-request state.
pub struct Ctx {
    request_id: String,
    /// Bytes of a streamed request body seen so far (capped by `listen.max_body_bytes`).
    body_seen: u64,
    /// The TCP peer's address.
    peer: Option<std::net::IpAddr>,
    /// When the upstream exchange must be over (`upstream.total_timeout_ms` from the decision).
    deadline: Option<Instant>,
    live: Option<Arc<Live>>,
    permit: Option<Permit>,
    /// The denial: answered, or forwarded anyway in shadow mode (then `permit` is set too).
    denied: Option<Box<Denied>>,
    started: Instant,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    upstream_status: Option<u16>,
    /// The candidate policy's decision: `Ok` allow, `Err(code)` deny.
    candidate: Option<Result<(), &'static str>>,
    /// The request body was checked (and possibly trimmed) before forwarding.
    body_checked: bool,
    /// Bulk items removed before forwarding (canonical spellings).
    removed_ids: Vec<String>,
}

fn new_request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Answer a rejection: status, JSON body, request id; `WWW-Authenticate` on 401.
async fn respond(
    session: &mut Session,
    rejection: &Rejection,
    request_id: &str,
    id_header: &http::HeaderName,
) -> Result<()> {
    let body = rejection.body(request_id);
    write_json(session, rejection.status, body, request_id, id_header).await
}

/// Answer with a JSON body the gateway made: status, body, request id; `WWW-Authenticate` on
/// 401. The connection is closed when the request had a body we may not have read (it would
/// desynchronise the connection).
async fn write_json(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    request_id: &str,
    id_header: &http::HeaderName,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(CONTENT_TYPE, "application/json")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(id_header.clone(), request_id)?;
    if status == 401 {
        resp.insert_header(WWW_AUTHENTICATE, "Bearer")?;
    }
    let req = session.req_header();
    if req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// Is `raw` exactly this canonical target (path, then `?query` if any)?
fn is_target(raw: &[u8], c: &crate::canon::CanonicalTarget) -> bool {
    let path = c.path.as_bytes();
    match &c.query {
        None => raw == path,
        Some(q) => {
            raw.len() == path.len() + 1 + q.len()
                && raw.starts_with(path)
                && raw[path.len()] == b'?'
                && raw.ends_with(q.as_bytes())
        }
    }
}

/// Time left before the total timeout; an error (answered 504) once it has passed.
fn remaining(deadline: Option<Instant>) -> Result<Duration> {
    let left = deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    });
    if left.is_zero() {
        return Err(Error::explain(
            ErrorType::ReadTimedout,
            "total upstream timeout",
        ));
    }
    Ok(left)
}

/// Response headers of a trimmed bulk call: how many items were removed, and which.
const REMOVED_COUNT: &str = "x-permgate-removed-count";
const REMOVED_IDS: &str = "x-permgate-removed-ids";
/// Most removed ids listed in the header (the count is exact).
const MAX_REMOVED_LISTED: usize = 200;
type BodyVerdict =
    std::result::Result<crate::inspect::Forward, (Rejection, Vec<String>, Vec<String>)>;

/// Read the whole request body, at most `limit` bytes (`Err` 413 beyond; a declared
/// `Content-Length` over the limit is refused before reading). `None`: the request has no body.
/// A client waiting on `Expect: 100-continue` is told to go on first.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Option<Bytes>, Rejection>> {
    let too_large = || {
        Rejection::new(
            413,
            "body_too_large",
            "the request body is over this route's limit",
        )
    };
    let headers = &session.req_header().headers;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(session).await;
        return Ok(Err(too_large()));
    }
    if session.as_mut().is_body_empty() {
        return Ok(Ok(None));
    }
    if session.req_header().version == http::Version::HTTP_11
        && session
            .req_header()
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        session.as_mut().write_continue_response().await?;
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            drain(session).await;
            return Ok(Err(too_large()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(Some(Bytes::from(body))))
}

/// Most bytes of a refused body read and discarded before answering.
const MAX_DRAINED: usize = 16 << 20;

/// Read and discard what is left of a refused request body (at most [`MAX_DRAINED`]), so the
/// caller, still sending, gets the answer rather than a reset connection. Errors end it: the
/// connection is closed after the answer anyway.
async fn drain(session: &mut Session) {
    let mut drained = 0;
    while drained < MAX_DRAINED {
        match session.read_request_body().await {
            Ok(Some(chunk)) => drained += chunk.len(),
            _ => return,
        }
    }
}

/// Read the request body of an inspected route (JSON only, uncompressed, at most the route's
/// `body.max_bytes`) and check it.
async fn read_and_check_body(
    session: &mut Session,
    config: &crate::config::Config,
    snapshot: &crate::snapshot::Snapshot,
    user: crate::snapshot::UserIdx,
    inspect: &crate::inspect::Inspect,
) -> Result<BodyVerdict> {
    let refuse = |rejection: Rejection| Ok(Err((rejection, Vec::new(), Vec::new())));
    let headers = &session.req_header().headers;
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').map(str::trim).collect::<Vec<_>>())
        .is_some_and(|parts| {
            parts[0].eq_ignore_ascii_case("application/json")
                && parts[1..].iter().all(|p| {
                    p.is_empty()
                        || p.eq_ignore_ascii_case("charset=utf-8")
                        || p.eq_ignore_ascii_case("charset=\"utf-8\"")
                })
        });
    if !json {
        return refuse(Rejection::new(
            415,
            "unsupported_media_type",
            "this route takes only application/json in UTF-8",
        ));
    }
    if headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return refuse(Rejection::new(
            415,
            "unsupported_media_type",
            "a compressed request body is not accepted on this route",
        ));
    }
    let body = match read_body(session, inspect.body_limits.max_bytes).await? {
        Ok(body) => body.unwrap_or_default(),
        Err(rejection) => return refuse(rejection),
    };
    Ok(
        crate::inspect::check_body(snapshot, &config.catalog, user, inspect, &body)
            .map_err(|d| (d.rejection, d.denied_ids, d.fields)),
    )
}

type ClientSession = pingora::protocols::http::client::HttpSession;

/// A failed upstream exchange: on a reused pooled connection before any response (worth one
/// more try on a new connection), or not.
enum Retry {
    Reused(Box<Error>),
    Fresh(Box<Error>),
}

impl Retry {
    fn into_error(self) -> Box<Error> {
        match self {
            Retry::Reused(e) | Retry::Fresh(e) => e,
        }
    }
}

/// Hop-by-hop headers of an upstream response, not passed on.
const RESPONSE_HOP_HEADERS: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "upgrade"];

/// A rejection with the lists a bulk or field denial names (`denied_ids`, `fields`).
async fn respond_with(
    session: &mut Session,
    rejection: &Rejection,
    request_id: &str,
    id_header: &http::HeaderName,
    denied_ids: &[String],
    fields: &[String],
) -> Result<()> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&rejection.body(request_id)).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        if !denied_ids.is_empty() {
            o.insert("denied_ids".into(), serde_json::json!(denied_ids));
        }
        if !fields.is_empty() {
            o.insert("fields".into(), serde_json::json!(fields));
        }
    }
    let body = serde_json::to_vec(&v).unwrap_or_default();
    write_json(session, rejection.status, body, request_id, id_header).await
}

fn default_request_id_header() -> http::HeaderName {
    http::HeaderName::from_static("x-request-id")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: new_request_id(),
            peer: None,
            deadline: None,
            live: None,
            permit: None,
            denied: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_elapsed: None,
            upstream_status: None,
            candidate: None,
            body_checked: false,
            body_seen: 0,
            removed_ids: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The one load of this request: a swap never changes a request in flight.
        let live = self.state.live();
        // Downstream limits (`[listen]`): a stalled body, an idle keep-alive connection.
        session.set_read_timeout(Some(live.config.listen.body_read_timeout));
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(live.config.listen.keepalive_timeout_seconds));
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        // The gateway's own endpoint: the caller's effective permissions. A byte-prefix test
        // first keeps every other request from paying a second canonicalization; other
        // spellings of the path fall through to the route table (unmatched: denied).
        if req.method == http::Method::GET
            && req.raw_path().starts_with(policy::ME_PATH.as_bytes())
            && crate::canon::canonicalize_target(req.raw_path())
                .is_ok_and(|c| c.path == policy::ME_PATH && c.query.is_none())
        {
            let answer = policy::effective_permissions(
                &live.config,
                self.state.snapshot_for_request(&live),
                &policy::Request {
                    method: &req.method,
                    target: req.raw_path(),
                    headers: &req.headers,
                    peer,
                },
            );
            let id_header = live.config.forward.request_id_header.clone();
            match answer {
                Ok(json) => {
                    let body = serde_json::to_vec(&json).unwrap_or_default();
                    write_json(session, 200, body, &ctx.request_id, &id_header).await?;
                }
                Err(rejection) => {
                    respond(session, &rejection, &ctx.request_id, &id_header).await?;
                }
            }
            return Ok(true);
        }
        let decided_at = Instant::now();
        let decision = policy::decide(
            &live.config,
            self.state.snapshot_for_request(&live),
            &policy::Request {
                method: &req.method,
                target: req.raw_path(),
                headers: &req.headers,
                peer,
            },
        );
        self.state
            .metrics
            .decision_seconds
            .observe(decided_at.elapsed());
        // A candidate policy is judged on the same request, never enforced.
        if let Some(c) = self.state.candidate() {
            let verdict = policy::decide(
                &c.config,
                c.snapshot.as_deref().ok_or_else(Rejection::not_ready),
                &policy::Request {
                    method: &req.method,
                    target: req.raw_path(),
                    headers: &req.headers,
                    peer,
                },
            );
            let candidate = verdict.map(|_| ()).map_err(|d| d.rejection.code);
            self.state
                .metrics
                .candidate(decision.is_ok(), candidate.is_ok());
            ctx.candidate = Some(candidate);
        }
        let id_header = live.config.forward.request_id_header.clone();
        ctx.deadline = Some(Instant::now() + live.config.upstream.total_timeout);
        ctx.peer = peer;
        ctx.live = Some(live.clone());
        let permit = match decision {
            Ok(permit) => permit,
            Err(denied) => {
                return match policy::shadow_permit(&live.config, live.snapshot.as_deref(), &denied)
                {
                    // Shadow mode: logged and counted as a would-be denial, forwarded anyway
                    // (a list response is still filtered).
                    Some(permit) => {
                        let lists = permit
                            .route
                            .and_then(|r| policy::route_info(&live.config, r).inspect.as_ref())
                            .filter(|i| i.filters_response())
                            .map(|i| i.body_limits.max_bytes);
                        ctx.permit = Some(permit);
                        ctx.denied = Some(denied);
                        match lists {
                            Some(limit) => self.forward_with_body(session, ctx, limit).await,
                            None => Ok(false),
                        }
                    }
                    None => {
                        respond(session, &denied.rejection, &ctx.request_id, &id_header).await?;
                        ctx.denied = Some(denied);
                        Ok(true)
                    }
                };
            }
        };
        // Routes that inspect the body or the response are forwarded by the gateway itself.
        let Some(inspect) = permit
            .route
            .and_then(|r| policy::route_info(&live.config, r).inspect.as_ref())
            .filter(|i| i.reads_body() || i.filters_response())
        else {
            ctx.permit = Some(permit);
            return Ok(false);
        };
        if !inspect.reads_body() {
            let limit = inspect.body_limits.max_bytes;
            ctx.permit = Some(permit);
            return self.forward_with_body(session, ctx, limit).await;
        }
        // Read the body (bounded), check it, and forward only the checked, re-serialized copy.
        let (Some(caller), Some(snapshot)) = (permit.caller, live.snapshot.as_deref()) else {
            // A checking route always has a caller resolved through the snapshot.
            return Err(Error::explain(
                ErrorType::InternalError,
                "a checked route without a caller",
            ));
        };
        match read_and_check_body(session, &live.config, snapshot, caller.user, inspect).await? {
            Ok(forward) => {
                ctx.removed_ids = forward.removed_ids.iter().map(|i| i.to_string()).collect();
                ctx.body_checked = true;
                ctx.permit = Some(permit);
                self.forward_inspected(session, ctx, Some(Bytes::from(forward.body)))
                    .await?;
            }
            Err((rejection, denied_ids, fields)) => {
                respond_with(
                    session,
                    &rejection,
                    &ctx.request_id,
                    &id_header,
                    &denied_ids,
                    &fields,
                )
                .await?;
                ctx.denied = Some(Box::new(Denied {
                    rejection,
                    route: permit.route,
                    user: Some(snapshot.user(caller.user).id.to_string()),
                    canonical: None,
                    caller: Some(caller),
                }));
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(live) = &ctx.live else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no live config in context",
            ));
        };
        let u = &live.config.upstream;
        ctx.upstream_started = Some(Instant::now());
        // Each step's timeout is capped by what is left of the total.
        let left = remaining(ctx.deadline)?;
        let address = match &self.balancer {
            None => u.address,
            Some(lb) => lb
                .select(b"", 256)
                .and_then(|b| b.addr.as_inet().copied())
                .ok_or_else(|| {
                    Error::explain(ErrorType::ConnectNoRoute, "no healthy CRM instance").into_up()
                })?,
        };
        let mut peer = match &u.tls {
            None => HttpPeer::new(address, false, String::new()),
            Some(t) => {
                let mut peer = HttpPeer::new(address, true, t.sni.clone());
                let material = self.upstream_tls.load();
                peer.options.ca = material.ca.clone();
                peer.client_cert_key = material.client.clone();
                peer
            }
        };
        peer.options.connection_timeout = Some(u.connect_timeout.min(left));
        peer.options.total_connection_timeout = Some(u.connect_timeout.min(left));
        peer.options.read_timeout = Some(u.read_timeout.min(left));
        peer.options.write_timeout = Some(u.write_timeout.min(left));
        peer.options.idle_timeout = Some(u.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(live), Some(permit)) = (&ctx.live, &ctx.permit) else {
            // Fail closed: nothing reaches the CRM without a permit.
            return Err(Error::explain(
                ErrorType::InternalError,
                "no permit in context",
            ));
        };
        let config = &live.config;
        // Forward exactly the canonical target; rebuild the URI only when it differs from what
        // was received (the common case is already canonical).
        if !is_target(upstream.raw_path(), &permit.canonical) {
            let uri: http::Uri = permit.canonical.path_and_query().parse().map_err(|_| {
                Error::explain(ErrorType::InternalError, "canonical path is not a URI")
            })?;
            upstream.set_uri(uri);
        }

        for name in crate::canon::hop_by_hop_headers(&upstream.headers) {
            upstream.remove_header(&name);
        }
        let own = |k: &http::HeaderName| k.as_str().starts_with(OWN_HEADER_PREFIX);
        if upstream.headers.keys().any(own) {
            let names: Vec<http::HeaderName> = upstream
                .headers
                .keys()
                .filter(|k| own(k))
                .cloned()
                .collect();
            for name in names {
                upstream.remove_header(&name);
            }
        }
        let f = &config.forward;
        upstream.remove_header(&f.user_header);
        upstream.remove_header(&f.roles_header);
        upstream.remove_header(&f.request_id_header);
        for name in config.identity.credential_headers() {
            upstream.remove_header(name);
        }
        // Only a verified JWT is ever forwarded in Authorization: never an API key, and never
        // an unverified credential sent to a public route.
        let verified_jwt = permit
            .caller
            .is_some_and(|c| c.method == identity::Method::Jwt);
        if !(f.forward_authorization && verified_jwt) {
            upstream.remove_header(&AUTHORIZATION);
        }
        for name in &f.strip_headers {
            upstream.remove_header(name);
        }
        // The same names spelled with `_`, `.` or other punctuation (CGI and PHP read them as `-`).
        let sensitive = |folded: &str| {
            folded.starts_with(OWN_HEADER_PREFIX)
                || [&f.user_header, &f.roles_header, &f.request_id_header]
                    .iter()
                    .any(|h| h.as_str() == folded)
                || f.strip_headers.iter().any(|h| h.as_str() == folded)
                || config
                    .identity
                    .credential_headers()
                    .any(|h| h.as_str() == folded)
        };
        for name in crate::canon::disguised_copies(&upstream.headers, sensitive) {
            upstream.remove_header(&name);
        }
        if f.set_forwarded_for {
            if let Some(ip) = ctx.peer {
                upstream.insert_header(X_FORWARDED_FOR, ip.to_string())?;
            }
        }
        // A list route's response is filtered: ask the CRM for it uncompressed.
        if permit
            .route
            .and_then(|r| policy::route_info(config, r).inspect.as_ref())
            .is_some_and(|i| i.filters_response())
        {
            upstream.remove_header(&http::header::ACCEPT_ENCODING);
        }
        if let Some(host) = &config.upstream.host {
            upstream.insert_header(http::header::HOST, host.clone())?;
        }

        if let (Some(_), None) = (permit.caller, &live.snapshot) {
            // Cannot happen (a caller is resolved through the snapshot); fail closed if it does.
            return Err(Error::explain(
                ErrorType::InternalError,
                "caller without a snapshot",
            ));
        }
        if let (Some(caller), Some(snapshot)) = (permit.caller, &live.snapshot) {
            let user = snapshot.user(caller.user);
            let value = |s: &str| {
                HeaderValue::from_str(s).map_err(|_| {
                    Error::explain(ErrorType::InternalError, "identity is not a header value")
                })
            };
            upstream.insert_header(f.user_header.clone(), value(&user.id)?)?;
            upstream.insert_header(
                f.roles_header.clone(),
                value(&snapshot.grant(user).roles_header)?,
            )?;
        }
        upstream.insert_header(f.request_id_header.clone(), ctx.request_id.as_str())?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A streamed body (a declared length over the limit was refused at the decision) that
        // grows past `listen.max_body_bytes` is cut off: the caller gets 413 if no answer went
        // out yet, and the CRM an incomplete request it must discard.
        if let (Some(chunk), Some(live)) = (body.as_ref(), ctx.live.as_ref()) {
            ctx.body_seen += chunk.len() as u64;
            if ctx.body_seen > live.config.listen.max_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over listen.max_body_bytes",
                )
                .into_down());
            }
        }
        // The total timeout covers a streamed body too: a client trickling it is cut off (408).
        if remaining(ctx.deadline).is_err() {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "request body past the total timeout",
            )
            .into_down());
        }
        // Fail closed: a checked body is forwarded by `forward_inspected`, never by this loop.
        if ctx.body_checked {
            return Err(Error::explain(
                ErrorType::InternalError,
                "a checked body reached the proxy loop",
            ));
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        remaining(ctx.deadline)?;
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let Some(t) = ctx.upstream_started {
            let elapsed = t.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            self.state.metrics.upstream_seconds.observe(elapsed);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let header = ctx
            .live
            .as_ref()
            .map(|l| l.config.forward.request_id_header.clone())
            .unwrap_or_else(default_request_id_header);
        upstream_response.insert_header(header, ctx.request_id.as_str())?;
        if ctx.body_checked {
            // The documented contract of a trimmed bulk call.
            upstream_response.insert_header(REMOVED_COUNT, ctx.removed_ids.len().to_string())?;
            if !ctx.removed_ids.is_empty() {
                let mut ids = ctx
                    .removed_ids
                    .iter()
                    .take(MAX_REMOVED_LISTED)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",");
                if ctx.removed_ids.len() > MAX_REMOVED_LISTED {
                    ids.push_str(",...");
                }
                upstream_response.insert_header(REMOVED_IDS, ids)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let rejection = match (e.esource(), e.etype()) {
            (_, HTTPStatus(413)) => Some(Rejection::body_too_large()),
            (_, HTTPStatus(code)) if (400..500).contains(code) => Some(Rejection::new(
                *code,
                "bad_request",
                "the request could not be handled",
            )),
            // A client that stalls its body past `listen.body_read_timeout_ms` (an inspected
            // body is read before any upstream call, so its timeout has no source yet).
            (ErrorSource::Downstream, ReadTimedout) => Some(Rejection::request_timeout()),
            (_, ReadTimedout) if ctx.upstream_started.is_none() => {
                Some(Rejection::request_timeout())
            }
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
            (ErrorSource::Downstream, _) => Some(Rejection::new(
                400,
                "bad_request",
                "the request could not be read",
            )),
            (_, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                Some(Rejection::upstream_timeout())
            }
            (
                ErrorSource::Upstream,
                ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
                | BindError,
            ) => Some(Rejection::upstream_unavailable()),
            (ErrorSource::Upstream, _) => Some(Rejection::upstream_error()),
            _ => Some(Rejection::internal()),
        };
        let code = rejection.as_ref().map_or(0, |r| r.status);
        match rejection.as_ref().map(|r| r.code) {
            Some("upstream_timeout") => self.state.metrics.upstream_error(UpstreamError::Timeout),
            Some("upstream_unavailable") => self
                .state
                .metrics
                .upstream_error(UpstreamError::Unavailable),
            Some("upstream_error") => self.state.metrics.upstream_error(UpstreamError::Other),
            _ => {}
        }
        warn!(
            "request_id={} upstream failure: {e}; answering {code}",
            ctx.request_id
        );
        if let Some(r) = &rejection {
            if session.response_written().is_none() {
                let header = ctx
                    .live
                    .as_ref()
                    .map(|l| l.config.forward.request_id_header.clone())
                    .unwrap_or_else(default_request_id_header);
                if let Err(err) = respond(session, r, &ctx.request_id, &header).await {
                    warn!(
                        "request_id={} could not send the error response: {err}",
                        ctx.request_id
                    );
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let total = ctx.started.elapsed();
        let metrics = &self.state.metrics;
        metrics.request_seconds.observe(total);
        let Some(live) = &ctx.live else { return };
        let snapshot = live.snapshot.as_deref();
        let (outcome, decision) = match (&ctx.permit, &ctx.denied) {
            (Some(_), Some(_)) => (Outcome::ShadowDeny, "shadow_deny"),
            (Some(_), None) => (Outcome::Allow, "allow"),
            _ => (Outcome::Deny, "deny"),
        };
        let route = ctx
            .permit
            .as_ref()
            .and_then(|p| p.route)
            .or_else(|| ctx.denied.as_ref().and_then(|d| d.route));
        if let Some(c) = live.counters(route) {
            c.count(outcome, status);
            if !ctx.removed_ids.is_empty() {
                c.trimmed(ctx.removed_ids.len() as u64);
            }
        }
        let log = &self.state.decision_log;
        // Every disagreement with the candidate is logged, whatever the sampling.
        let disagrees = ctx
            .candidate
            .is_some_and(|c| c.is_ok() != (outcome == Outcome::Allow));
        let to_log = disagrees || log.wants(outcome == Outcome::Allow);
        // The access line is debug-level (the decision log carries the same facts): build the
        // strings below only when someone will read them.
        if !to_log && !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let caller = ctx
            .permit
            .as_ref()
            .and_then(|p| p.caller)
            .or_else(|| ctx.denied.as_ref().and_then(|d| d.caller));
        let user = match (caller, snapshot) {
            (Some(c), Some(s)) => Some(s.user(c.user).id.to_string()),
            _ => ctx.denied.as_ref().and_then(|d| d.user.clone()),
        };
        let route_info = route.map(|r| policy::route_info(&live.config, r));
        let permission = route_info.and_then(|r| match r.access {
            Access::Permission(p) => Some(p),
            Access::Public => None,
        });
        let reason = match (&ctx.denied, route_info.map(|r| r.access), caller, snapshot) {
            (Some(d), _, _, _) => d.rejection.code.to_string(),
            (None, Some(Access::Public), _, _) => "public".to_string(),
            (None, Some(Access::Permission(p)), Some(c), Some(s)) => {
                format!(
                    "granted_by:{}",
                    policy::granting_role(s, c.user, p).unwrap_or("?")
                )
            }
            _ => String::new(),
        };
        let req = session.req_header();
        let path = ctx
            .permit
            .as_ref()
            .map(|p| p.canonical.path.clone())
            .or_else(|| {
                ctx.denied
                    .as_ref()
                    .and_then(|d| d.canonical.as_ref().map(|c| c.path.clone()))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(req.raw_path()).into_owned());
        log::debug!(
            "request_id={} method={} path={:?} status={status} decision={decision} code={reason} user={:?} route={:?}",
            ctx.request_id,
            req.method,
            path,
            user.as_deref().unwrap_or("-"),
            route_info.map_or("-", |r| r.name.as_str()),
        );
        let candidate = ctx.candidate.map(|c| match c {
            Ok(()) => "allow".to_string(),
            Err(code) => code.to_string(),
        });
        if to_log {
            log.offer(Record {
                ts_ms: decision_log::now_ms(),
                request_id: ctx.request_id.clone(),
                roles: match (caller, snapshot) {
                    (Some(c), Some(s)) => Some(s.grant(s.user(c.user)).roles_header.to_string()),
                    _ => None,
                },
                user,
                method: req.method.to_string(),
                path,
                route: route_info.map(|r| r.name.clone()),
                permission: permission.map(|p| live.config.catalog.permission_name(p).to_string()),
                decision,
                reason,
                trimmed: ctx.removed_ids.clone(),
                candidate,
                snapshot_version: snapshot.map(|s| s.version.clone()),
                config_hash: live.config.hash.clone(),
                status,
                upstream_status: ctx.upstream_status,
                upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1e3),
                total_ms: total.as_secs_f64() * 1e3,
            });
        }
    }
}

/// Build the Pingora server for a config and run it until the process ends.
///
/// `upgrade`: take the listening sockets from a running permgate (which hands them over on
/// SIGQUIT, then drains and exits) instead of binding them: a binary upgrade that drops no
/// connection.
pub fn run(state: Arc<State>, upgrade: bool) -> ! {
    let config = state.live().config.clone();
    let mut conf = ServerConf {
        threads: config.listen.threads,
        upstream_keepalive_pool_size: config.upstream.pool_size,
        // SIGTERM: stop accepting, let requests in flight finish for `drain_seconds`, then stop
        // (tasks still running after that, and 5 s more for the runtimes, are cut).
        grace_period_seconds: Some(config.listen.drain_seconds),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    conf.work_stealing = true;
    conf.upgrade_sock = config.listen.upgrade_sock.display().to_string();
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = config.listen.h2c;
    server_options.h2_idle_timeout =
        Some(Duration::from_secs(config.listen.keepalive_timeout_seconds));
    let mut gateway = Gateway::new(state.clone(), &server.configuration);
    if config.upstream.tls.is_some() {
        // Upstream TLS trusts `ca_file` (else the system's roots) and presents the client
        // certificate if one is configured; both are re-read when their files change.
        match upstream_tls::watch(state) {
            Ok(material) => gateway.upstream_tls = material,
            Err(e) => {
                log::error!("upstream.tls: {e}");
                std::process::exit(2);
            }
        }
    }
    if config.upstream.addresses.len() > 1 {
        let addresses: Vec<String> = config
            .upstream
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        match LoadBalancer::<RoundRobin>::try_from_iter(addresses) {
            Ok(mut lb) => {
                lb.set_health_check(TcpHealthCheck::new());
                lb.health_check_frequency = Some(config.upstream.health_check_interval);
                let background = background_service("CRM health checks", lb);
                gateway.balancer = Some(background.task());
                server.add_service(background);
            }
            Err(e) => {
                log::error!("upstream.addresses: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut service = ProxyServiceBuilder::new(&server.configuration, gateway)
        .name("permgate")
        .server_options(server_options)
        .build();
    // Each open client connection holds these buffers (Pingora's default read buffer is 64 KiB).
    let buffers = L4BufferSettings::new(
        config.listen.read_buffer_bytes,
        config.listen.write_buffer_bytes,
    );
    if let Some(app) = service.app_logic_mut() {
        let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
        h2.max_concurrent_streams(config.listen.h2_max_concurrent_streams);
        h2.max_header_list_size(u32::try_from(config.listen.max_header_bytes).unwrap_or(u32::MAX));
        app.h2_options = Some(h2);
    }
    match &config.listen.tls {
        None => {
            service.add_listener(ListenerConfig::tcp(&config.listen.address).l4_buffer(buffers))
        }
        Some(files) => match tls::settings(files) {
            Ok(settings) => service.add_listener(
                ListenerConfig::tcp(&config.listen.address)
                    .tls(settings)
                    .l4_buffer(buffers),
            ),
            Err(e) => {
                log::error!("listen.tls: {e}");
                std::process::exit(2);
            }
        },
    }
    server.add_service(service);
    info!(
        "permgate listening on {}{} → CRM {}{} (config {}, hash {})",
        if config.listen.tls.is_some() {
            "https://"
        } else {
            "http://"
        },
        config.listen.address,
        config.upstream.address,
        if config.upstream.tls.is_some() {
            " over TLS"
        } else {
            ""
        },
        config.file,
        config.hash
    );
    server.run_forever()
}

/// Downstream TLS with rustls: certificates read from files and reloaded when they change.
mod tls {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use arc_swap::ArcSwap;
    use log::{info, warn};
    use pingora::listeners::tls::TlsSettings;
    use pingora::tls::sign::CertifiedKey;
    use pingora::tls::{
        ClientHello, CryptoProvider, ResolvesServerCert, RootCertStore, WebPkiClientVerifier,
    };

    use crate::config::ListenTls;

    /// How often the certificate files are checked for changes.
    const POLL: Duration = Duration::from_secs(2);

    #[derive(Debug)]
    struct Reloading {
        current: ArcSwap<CertifiedKey>,
    }

    impl ResolvesServerCert for Reloading {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.current.load_full())
        }
    }

    fn load(files: &ListenTls) -> Result<CertifiedKey, String> {
        let (cert, key) = (
            files.cert_file.display().to_string(),
            files.key_file.display().to_string(),
        );
        let label = format!("{cert} / {key}");
        let (chain, private) = pingora::tls::load_certs_and_key_files(&cert, &key)
            .map_err(|e| format!("{label}: {e}"))?
            .ok_or_else(|| format!("{label}: no certificate or key found"))?;
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| "no TLS crypto provider installed".to_string())?;
        CertifiedKey::from_der(chain, private, provider).map_err(|e| format!("{label}: {e}"))
    }

    fn stamp(files: &ListenTls) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&files.cert_file)?, m(&files.key_file)?))
    }

    /// TLS settings for the listener (HTTP/2 by ALPN), and a thread that swaps in new
    /// certificates when the files change (a bad pair is logged and the old one stays).
    pub fn settings(files: &ListenTls) -> Result<TlsSettings, String> {
        pingora::tls::install_default_crypto_provider();
        let resolver = Arc::new(Reloading {
            current: ArcSwap::from_pointee(load(files)?),
        });
        let mut settings = TlsSettings::intermediate(
            &files.cert_file.display().to_string(),
            &files.key_file.display().to_string(),
        )
        .map_err(|e| e.to_string())?;
        settings.set_cert_resolver(resolver.clone());
        settings.enable_h2();
        if let Some(ca) = &files.client_ca_file {
            // mTLS: only clients with a certificate from these CAs complete the handshake.
            let mut roots = RootCertStore::empty();
            pingora::tls::load_ca_file_into_store(ca, &mut roots)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            settings.set_client_cert_verifier(verifier);
        }
        let files = files.clone();
        std::thread::Builder::new()
            .name("permgate-tls-reload".into())
            .spawn(move || {
                let mut last = stamp(&files);
                loop {
                    std::thread::sleep(POLL);
                    let now = stamp(&files);
                    if now.is_none() || now == last {
                        continue;
                    }
                    last = now;
                    match load(&files) {
                        Ok(k) => {
                            resolver.current.store(Arc::new(k));
                            info!(
                                "TLS certificate reloaded from {}",
                                files.cert_file.display()
                            );
                        }
                        Err(e) => warn!("TLS certificate change refused, the old one stays: {e}"),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(settings)
    }
}

/// TLS toward the CRM: the CA bundle to trust and the client certificate to present, read from
/// the files `upstream.tls` names and re-read when the files (or, after a config reload, the
/// names) change. New connections use the current pair; a bad file is logged and the last good
/// material stays.
mod upstream_tls {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use arc_swap::ArcSwap;
    use log::{info, warn};
    use pingora::protocols::tls::CaType;
    use pingora::tls::{ClientConfig, CryptoProvider, RootCertStore};
    use pingora::utils::tls::{CertKey, WrappedX509};

    use crate::config::UpstreamTls;
    use crate::live::State;

    const POLL: Duration = Duration::from_secs(2);

    /// What new upstream connections use.
    #[derive(Default)]
    pub struct Material {
        /// `None`: the system's roots.
        pub ca: Option<Arc<CaType>>,
        pub client: Option<Arc<CertKey>>,
    }

    type Files = (Option<PathBuf>, Option<(PathBuf, PathBuf)>);

    fn files(tls: Option<&UpstreamTls>) -> Files {
        tls.map_or((None, None), |t| (t.ca_file.clone(), t.client.clone()))
    }

    fn stamp(files: &Files) -> Vec<Option<SystemTime>> {
        let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut v = vec![files.0.as_ref().and_then(m)];
        if let Some((c, k)) = &files.1 {
            v.push(m(c));
            v.push(m(k));
        }
        v
    }

    /// Parse and check the files: every CA must load into a trust store, and the client chain
    /// and key must make a working rustls client config (so Pingora never meets a bad one).
    pub fn load(tls: Option<&UpstreamTls>) -> Result<Material, String> {
        let (ca_file, client) = files(tls);
        let mut material = Material::default();
        if let Some(path) = &ca_file {
            let certs = crate::pem::certificates(path)?;
            let mut roots = RootCertStore::empty();
            for c in &certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("'{}': {e}", path.display()))?;
            }
            let wrapped: Vec<WrappedX509> = certs
                .iter()
                .map(|c| WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
                .collect();
            material.ca = Some(Arc::from(wrapped.into_boxed_slice()));
        }
        if let Some((cert, key)) = &client {
            let chain = crate::pem::certificates(cert)?;
            let private = crate::pem::private_key(key)?;
            pingora::tls::install_default_crypto_provider();
            let provider = CryptoProvider::get_default()
                .ok_or_else(|| "no TLS crypto provider installed".to_string())?;
            // The same checks rustls makes when Pingora builds the connection's config.
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(chain.clone(), private.clone_key())
                .map_err(|e| format!("'{}' / '{}': {e}", cert.display(), key.display()))?;
            let key_der = private.secret_der().to_vec();
            if pingora::tls::PrivateKeyDer::try_from(key_der.clone()).is_err() {
                return Err(format!("'{}': unsupported key encoding", key.display()));
            }
            material.client = Some(Arc::new(CertKey::new(
                chain.iter().map(|c| c.to_vec()).collect(),
                key_der,
            )));
        }
        Ok(material)
    }

    /// The material for the config's files now, and a thread that keeps it current.
    pub fn watch(state: Arc<State>) -> Result<Arc<ArcSwap<Material>>, String> {
        let tls = state.live().config.upstream.tls.clone();
        let current = Arc::new(ArcSwap::from_pointee(load(tls.as_ref())?));
        let shared = current.clone();
        std::thread::Builder::new()
            .name("permgate-upstream-tls".into())
            .spawn(move || {
                let mut last = {
                    let f = files(tls.as_ref());
                    (stamp(&f), f)
                };
                loop {
                    std::thread::sleep(POLL);
                    let tls = state.live().config.upstream.tls.clone();
                    let f = files(tls.as_ref());
                    let now = (stamp(&f), f);
                    if now == last {
                        continue;
                    }
                    match load(tls.as_ref()) {
                        Ok(m) => {
                            shared.store(Arc::new(m));
                            info!(
                                "upstream TLS material (CA bundle / client certificate) reloaded"
                            );
                        }
                        Err(e) => warn!("upstream TLS change refused, the old material stays: {e}"),
                    }
                    last = now;
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(current)
    }
}
