//! The Pingora data plane: the only module that imports Pingora.
//!
//! Why one file (~970 lines): the only module that imports Pingora, built only with the `pingora`
//! feature; kept whole so the optional engine stays in one place.
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
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING, WWW_AUTHENTICATE};
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
use tracing::{info, warn};

use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::background_service;

use crate::exchange::{self, Admission, Ctx, Failure};
use crate::live::State;
use crate::reject::Rejection;

pub use crate::exchange::OWN_HEADER_PREFIX;

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
    /// The CRM gave no answer: the shared mapping to the client's answer, counted.
    fn upstream_failed(&self, failure: Failure) -> Rejection {
        let (rejection, kind) = failure.rejection();
        self.state.metrics.upstream_error(kind);
        rejection
    }

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
                    request_id = %ctx.request_id,
                    "retrying on another connection: {e}"
                );
                self.exchange(&peer, &req, &body, ctx)
                    .await
                    .map_err(Retry::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        self.upstream_response_filter(session, &mut resp, ctx)
            .await?;
        for name in exchange::hop_headers_present(&resp.headers) {
            resp.remove_header(&name);
        }
        let lists = ctx.filters_response();
        // A 2xx with a body to filter (a HEAD answer or a 204 has none).
        let has_body = session.req_header().method != http::Method::HEAD
            && resp.status != http::StatusCode::NO_CONTENT;
        if lists && resp.status.is_success() && has_body {
            let filtered = match self.read_and_filter_list(&mut upstream, ctx).await? {
                Ok(body) => body,
                Err(why) => {
                    warn!(request_id = %ctx.request_id, "list not filtered: {why}");
                    let id_header = ctx.id_header();
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
                let id_header = ctx.id_header();
                respond(session, &rejection, &ctx.request_id, &id_header).await?;
                // Answered by the gateway: logged as a denial, not as a forwarded call.
                ctx.deny_after_permit(rejection);
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
        let limit = exchange::list_limit(ctx);
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
        Ok(exchange::filter_list(ctx, &buffer))
    }
}

/// Pingora's request head as [`exchange::edit_upstream`] edits it (through Pingora's own
/// methods, which keep its header-case map in step).
struct Head<'a>(&'a mut RequestHeader);

impl exchange::UpstreamHead for Head<'_> {
    fn headers(&self) -> &http::HeaderMap {
        &self.0.headers
    }

    fn remove(&mut self, name: &http::HeaderName) {
        self.0.remove_header(name);
    }

    fn set(
        &mut self,
        name: http::HeaderName,
        value: http::HeaderValue,
    ) -> Result<(), &'static str> {
        self.0
            .insert_header(name, value)
            .map_err(|_| "header not accepted")
    }

    fn set_uri(&mut self, uri: http::Uri) {
        self.0.set_uri(uri);
    }
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
    if let Some(v) = exchange::request_id_value(request_id) {
        resp.insert_header(id_header.clone(), v)?;
    }
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

/// Read the whole request body, at most `limit` bytes (`Err` 413 beyond; a declared
/// `Content-Length` over the limit is refused before reading). `None`: the request has no body.
/// A client waiting on `Expect: 100-continue` is told to go on first.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> Result<std::result::Result<Option<Bytes>, Rejection>> {
    let headers = &session.req_header().headers;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(session).await;
        return Ok(Err(Rejection::route_body_too_large()));
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
            return Ok(Err(Rejection::route_body_too_large()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(Some(Bytes::from(body))))
}

/// Most bytes of a refused body read and discarded before answering.
/// As the hyper engine's (`plane::MAX_DRAINED`; the Pingora engine is built only with its feature).
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
/// `body.max_bytes`) and check it: `Ok` the checked copy to forward, `Err` the rejection and its
/// JSON body (`ctx.denied` is set).
async fn read_and_check_body(
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<std::result::Result<crate::inspect::Forward, (Rejection, Vec<u8>)>> {
    let refuse = |ctx: &mut Ctx, rejection: Rejection| {
        let body = rejection.body(&ctx.request_id);
        ctx.deny_after_permit(rejection.clone());
        Ok(Err((rejection, body)))
    };
    if let Err(rejection) = exchange::check_json_media(&session.req_header().headers) {
        return refuse(ctx, rejection);
    }
    let limit = ctx.inspect().map_or(0, |i| i.body_limits.max_bytes);
    let body = match read_body(session, limit).await? {
        Ok(body) => body.unwrap_or_default(),
        Err(rejection) => return refuse(ctx, rejection),
    };
    Ok(exchange::check_body(ctx, &body))
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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Downstream limits (`[listen]`): a stalled body, an idle keep-alive connection.
        let listen = &self.state.live().config.listen;
        session.set_read_timeout(Some(listen.body_read_timeout));
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(listen.keepalive_timeout_seconds));
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        let admission = exchange::admit(
            &self.state,
            ctx,
            &req.method,
            req.raw_path(),
            &req.headers,
            peer,
        );
        let id_header = ctx.id_header();
        match admission {
            Admission::Me(Ok(body)) => {
                write_json(session, 200, body, &ctx.request_id, &id_header).await?;
                Ok(true)
            }
            Admission::Me(Err(rejection)) | Admission::Deny(rejection) => {
                respond(session, &rejection, &ctx.request_id, &id_header).await?;
                Ok(true)
            }
            Admission::Stream => Ok(false),
            Admission::Buffer(limit) => self.forward_with_body(session, ctx, limit).await,
            Admission::Check => {
                // Read the body (bounded), check it, and forward only the checked copy.
                match read_and_check_body(session, ctx).await? {
                    Ok(forward) => {
                        self.forward_inspected(session, ctx, Some(Bytes::from(forward.body)))
                            .await?;
                    }
                    Err((rejection, body)) => {
                        write_json(session, rejection.status, body, &ctx.request_id, &id_header)
                            .await?;
                    }
                }
                Ok(true)
            }
        }
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
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        exchange::edit_upstream(&mut Head(upstream), session.req_header().raw_path(), ctx)
            .map_err(|why| Error::explain(ErrorType::InternalError, why))?;
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
        // The CRM's hop-by-hop headers are not passed on (Pingora frames the body itself).
        for name in exchange::hop_headers_present(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        for (name, value) in exchange::response_headers(ctx) {
            upstream_response.insert_header(name, value)?;
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
            (ErrorSource::Downstream, _) => Some(Rejection::body_unreadable()),
            (_, ConnectTimedout | ReadTimedout | WriteTimedout) => {
                Some(self.upstream_failed(Failure::Timeout))
            }
            (
                ErrorSource::Upstream,
                ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
                | BindError,
            ) => Some(self.upstream_failed(Failure::Connect)),
            (ErrorSource::Upstream, _) => Some(self.upstream_failed(Failure::Other)),
            _ => Some(Rejection::internal()),
        };
        let code = rejection.as_ref().map_or(0, |r| r.status);
        warn!(
            request_id = %ctx.request_id,
            "upstream failure: {e}; answering {code}"
        );
        if let Some(r) = &rejection {
            if session.response_written().is_none() {
                let header = ctx.id_header();
                if let Err(err) = respond(session, r, &ctx.request_id, &header).await {
                    warn!(
                        request_id = %ctx.request_id,
                        "could not send the error response: {err}"
                    );
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's own request-path warnings and errors ("Fail to proxy: …") end with this: the
    /// request id in the same `request_id=<id>` form as our lines' field.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        format!(
            "{}, request_id={}",
            session.as_ref().request_summary(),
            ctx.request_id
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        exchange::finish(&self.state, ctx, &req.method, req.raw_path(), status);
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
                tracing::error!("upstream.tls: {e}");
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
                tracing::error!("upstream.addresses: {e}");
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
                tracing::error!("listen.tls: {e}");
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
    use pingora::listeners::tls::TlsSettings;

    use crate::config::ListenTls;

    /// TLS settings for the listener (HTTP/2 by ALPN), with the certificate resolver that
    /// swaps in new certificates when the files change ([`crate::certs`]).
    pub fn settings(files: &ListenTls) -> Result<TlsSettings, String> {
        pingora::tls::install_default_crypto_provider();
        let resolver = crate::certs::listener_resolver(files)?;
        let mut settings = TlsSettings::intermediate(
            &files.cert_file.display().to_string(),
            &files.key_file.display().to_string(),
        )
        .map_err(|e| e.to_string())?;
        settings.set_cert_resolver(resolver);
        settings.enable_h2();
        if let Some(ca) = &files.client_ca_file {
            settings.set_client_cert_verifier(crate::certs::client_verifier(ca)?);
        }
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

    use arc_swap::ArcSwap;
    use pingora::protocols::tls::CaType;
    use pingora::tls::{ClientConfig, CryptoProvider, RootCertStore};
    use pingora::utils::tls::{CertKey, WrappedX509};
    use tracing::{info, warn};

    use crate::config::UpstreamTls;
    use crate::live::State;

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
        let watched = state.clone();
        crate::certs::watch(
            "permgate-upstream-tls",
            move || crate::certs::upstream_stamp(watched.live().config.upstream.tls.as_ref()),
            move || match load(state.live().config.upstream.tls.as_ref()) {
                Ok(m) => {
                    shared.store(Arc::new(m));
                    info!("upstream TLS material (CA bundle / client certificate) reloaded");
                }
                Err(e) => warn!("upstream TLS change refused, the old material stays: {e}"),
            },
        )?;
        Ok(current)
    }
}
