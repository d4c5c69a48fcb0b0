//! What every data plane does around the decision, free of any proxy library: the per-call
//! state, the headers forwarded to the CRM and sent back to the caller, the media-type check of
//! an inspected body, and the access log, decision log and counters at the end of a call.
//!
//! Why one file (~850 lines): it is the one place every data plane shares around a call; splitting
//! it would let the planes drift again, which is what it exists to prevent.
//!
//! [`crate::proxy`] (Pingora) and [`crate::plane`] (hyper) both call these, so the two planes
//! forward, answer and log a call the same way.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use crate::config::{Access, RequestHeaders};
use crate::decision_log::{self, Record};
use crate::identity;
use crate::limit::CallerKey;
use crate::live::{Live, State};
use crate::metrics::{Limited, Outcome, UpstreamError};
use crate::policy::{self, Denied, Permit};
use crate::reject::Rejection;

pub use permgate_core::headers::{
    MAX_REMOVED_LISTED, OWN_HEADER_PREFIX, PRINCIPAL_HEADER, REMOVED_COUNT, REMOVED_IDS,
};

/// The hop-by-hop headers present in a request or in the CRM's answer, never passed on: the
/// fixed ones (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`,
/// `Proxy-Authorization`, `Proxy-Authenticate`) and every name its `Connection` header lists
/// (never `Host`, `Content-Length`, `Transfer-Encoding` or `Authorization`). Usually none is
/// there: one pass over the names present, no lookup by name, no allocation.
pub fn hop_headers_present(headers: &HeaderMap) -> Vec<HeaderName> {
    let listed = if headers.contains_key(http::header::CONNECTION) {
        crate::canon::hop_by_hop_headers(headers)
    } else {
        Vec::new()
    };
    headers
        .keys()
        .filter(|n| crate::canon::is_fixed_hop_by_hop(n) || listed.contains(n))
        .cloned()
        .collect()
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Per-call state, from the request's arrival to its log line.
pub struct Ctx {
    pub request_id: String,
    /// Bytes of a streamed request body seen so far (capped by `listen.max_body_bytes`).
    pub body_seen: u64,
    /// The TCP peer's address.
    pub peer: Option<IpAddr>,
    /// When the upstream exchange must be over (`upstream.total_timeout_ms` from the decision).
    pub deadline: Option<Instant>,
    pub live: Option<Arc<Live>>,
    pub permit: Option<Permit>,
    /// The denial: answered, or forwarded anyway in shadow mode (then `permit` is set too).
    pub denied: Option<Denied>,
    pub started: Instant,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<Duration>,
    pub upstream_status: Option<u16>,
    /// The candidate policy's decision: `Ok` allow, `Err(code)` deny.
    pub candidate: Option<Result<(), &'static str>>,
    /// The request body was checked (and possibly trimmed) before forwarding.
    pub body_checked: bool,
    /// Bulk items removed before forwarding (canonical spellings).
    pub removed_ids: Vec<String>,
    /// `[cors]`: the request's `Origin` when it is allowed (every answer then carries the
    /// CORS headers). Always `None` without `[cors]`.
    pub cors_origin: Option<HeaderValue>,
    /// `[cors]`: a CORS preflight (answered by the gateway, or by the CRM in `mode = "crm"`).
    pub preflight: bool,
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

/// A request id: `n` as 16 lowercase hex digits (as `format!("{n:016x}")`, without the
/// formatting machinery: a few hundred instructions fewer per call, issue 18).
fn request_id(n: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    String::from_utf8_lossy(&digits).into_owned()
}

impl Ctx {
    pub fn new() -> Self {
        Ctx {
            request_id: request_id(fastrand::u64(..)),
            body_seen: 0,
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
            removed_ids: Vec::new(),
            cors_origin: None,
            preflight: false,
        }
    }

    /// The header that carries the request id (`forward.request_id_header`).
    pub fn id_header(&self) -> HeaderName {
        self.live.as_ref().map_or_else(
            || HeaderName::from_static("x-request-id"),
            |l| l.config.forward.request_id_header.clone(),
        )
    }

    /// How long one wait for more of the client's request body may last
    /// (`listen.body_read_timeout_ms`; 30 s before the config is known).
    pub fn body_read_timeout(&self) -> Duration {
        self.live.as_ref().map_or(Duration::from_secs(30), |l| {
            l.config.listen.body_read_timeout
        })
    }

    /// How long one wait for the CRM's answer (or the next piece of it) may last
    /// (`upstream.read_timeout_ms`; 30 s before the config is known).
    pub fn upstream_read_timeout(&self) -> Duration {
        self.live
            .as_ref()
            .map_or(Duration::from_secs(30), |l| l.config.upstream.read_timeout)
    }

    /// How long the next wait for the client's request body may last: `listen.body_read_timeout`,
    /// and never past the call's total deadline. Every body reader (hyper's path, the lane's
    /// checked and streamed bodies) waits this long, then answers 408 `request_timeout`.
    pub fn body_wait(&self) -> Duration {
        let idle = self.body_read_timeout();
        self.deadline.map_or(idle, |d| {
            idle.min(d.saturating_duration_since(Instant::now()))
        })
    }

    /// The inspection settings of the permitted route, if it has any.
    pub fn inspect(&self) -> Option<&crate::inspect::Inspect> {
        let (live, permit) = (self.live.as_ref()?, self.permit.as_ref()?);
        policy::route_info(&live.config, permit.route?)
            .inspect
            .as_deref()
    }

    /// Does the permitted route filter its response (a list route)?
    pub fn filters_response(&self) -> bool {
        self.inspect().is_some_and(|i| i.filters_response())
    }

    /// Record a denial answered by the gateway after a permit (a body refused on a route that
    /// only filters its response): logged as a denial, not as a forwarded call.
    pub fn deny_after_permit(&mut self, rejection: Rejection) {
        if let Some(permit) = self.permit.take() {
            self.denied = Some(Denied {
                rejection,
                route: permit.route,
                user: None,
                canonical: None,
                caller: permit.caller,
            });
        }
    }
}

/// The request head forwarded to the CRM, as [`edit_upstream`] changes it (each data plane
/// implements it for its own request type).
pub trait UpstreamHead {
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), &'static str>;
    fn set_uri(&mut self, uri: http::Uri);
}

impl UpstreamHead for http::request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), &'static str> {
        self.headers.insert(name, value);
        Ok(())
    }

    fn set_uri(&mut self, uri: http::Uri) {
        self.uri = uri;
    }
}

/// Allow-list mode: the framing headers the data planes need, `Authorization` (kept only when
/// it is a verified JWT to forward, decided beside), and the listed names.
fn forwarded_in_allow_list(name: &HeaderName, set: &crate::config::HeaderSet) -> bool {
    *name == http::header::HOST
        || *name == http::header::CONTENT_LENGTH
        || *name == http::header::TRANSFER_ENCODING
        || *name == AUTHORIZATION
        || set.contains(name.as_str())
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

/// Turn a permitted request into what the CRM receives: exactly the canonical target; no
/// hop-by-hop header, no client copy of the identity headers (whatever their spelling) and no
/// consumed credential (unless the config forwards its kind, or the route passes credentials
/// through); the caller's id and roles (and [`PRINCIPAL_HEADER`] for a service) and the request
/// id added. `Err`: nothing may be forwarded (fail closed).
pub fn edit_upstream(
    head: &mut impl UpstreamHead,
    raw_target: &[u8],
    ctx: &Ctx,
) -> Result<(), &'static str> {
    let (Some(live), Some(permit)) = (&ctx.live, &ctx.permit) else {
        // Fail closed: nothing reaches the CRM without a permit.
        return Err("no permit in context");
    };
    let config = &live.config;
    // Forward exactly the canonical target; rebuild the URI only when it differs from what
    // was received (the common case is already canonical).
    if !is_target(raw_target, &permit.canonical) {
        head.set_uri(
            permit
                .canonical
                .path_and_query()
                .parse()
                .map_err(|_| "canonical path is not a URI")?,
        );
    }
    let f = &config.forward;
    // The names that depend on what the client sent (none, usually: no allocation).
    let headers = head.headers();
    let mut named = hop_headers_present(headers);
    // `[tenants] from = "header:…"`: read from trusted peers only, and never forwarded (the
    // CRM gets the tenant decided on, in `x-permgate-tenant`).
    let tenant_header = config.tenants.as_ref().and_then(|t| t.header.as_ref());
    // The same names spelled with `_`, `.` or other punctuation (CGI and PHP read them as `-`).
    let sensitive = |folded: &str| {
        folded.starts_with(OWN_HEADER_PREFIX)
            || [&f.user_header, &f.roles_header, &f.request_id_header]
                .iter()
                .any(|h| h.as_str() == folded)
            || f.strip_headers.contains(folded)
            || config
                .identity
                .credential_headers()
                .any(|h| h.as_str() == folded)
            || tenant_header.is_some_and(|h| h.as_str() == folded)
    };
    named.extend(crate::canon::disguised_copies(headers, sensitive));
    let route = permit.route.map(|r| policy::route_info(config, r));
    let method = permit.caller.map(|c| c.method);
    // The caller's credential as sent reaches the CRM on a passthrough route (unverified:
    // the CRM's to check), and when the config forwards the kind that was verified: a JWT in
    // `Authorization` (`forward.forward_authorization`), an API key in its own header or in
    // `Authorization` (`identity.api_keys.forward`; only one credential is ever presented, so
    // whichever of the two is there is the key). Otherwise neither goes upstream.
    let forward_key = route.is_some_and(|r| r.passthrough)
        || (method == Some(identity::Method::ApiKey) && config.identity.forwards_api_keys());
    let drop_authorization =
        !(forward_key || (f.forward_authorization && method == Some(identity::Method::Jwt)));
    let key_header = config.identity.api_key_header().filter(|_| forward_key);
    // A list route's response is filtered: ask the CRM for it uncompressed.
    let drop_accept_encoding = ctx.filters_response();
    // Allow-list mode: the route's set (the global one merged with its own), else the global.
    let allowed = match f.request_headers {
        RequestHeaders::StripList => None,
        RequestHeaders::AllowList => Some(
            route
                .and_then(|r| r.allow_headers.as_ref())
                .unwrap_or(&f.allow_headers),
        ),
    };
    // Every other name that never goes upstream as the client sent it: one pass over the
    // names present (a handful) rather than a lookup of each of these in the map.
    let stripped = |name: &HeaderName| {
        if key_header == Some(name) {
            return false;
        }
        name.as_str().starts_with(OWN_HEADER_PREFIX)
            || *name == f.user_header
            || *name == f.roles_header
            || *name == f.request_id_header
            || config.identity.credential_headers().any(|h| h == name)
            || tenant_header == Some(name)
            || f.strip_headers.contains(name.as_str())
            || (drop_authorization && *name == AUTHORIZATION)
            || (drop_accept_encoding && *name == http::header::ACCEPT_ENCODING)
            // A browser's preflight carries no cookie: one that does is not a browser's.
            || (ctx.preflight && *name == http::header::COOKIE)
            || allowed.is_some_and(|set| !forwarded_in_allow_list(name, set))
    };
    for name in headers.keys() {
        if stripped(name) && !named.contains(name) {
            named.push(name.clone());
        }
    }
    for name in &named {
        head.remove(name);
    }
    let value = |s: &str| HeaderValue::from_str(s).map_err(|_| "identity is not a header value");
    if f.set_forwarded_for {
        if let Some(ip) = ctx.peer {
            head.set(
                HeaderName::from_static(X_FORWARDED_FOR),
                forwarded_for(ip).ok_or("the peer is not a header value")?,
            )?;
        }
    }
    if let Some(host) = &config.upstream.host {
        head.set(http::header::HOST, host.clone())?;
    }
    match (permit.caller, &live.snapshot) {
        // Cannot happen (a caller is resolved through the snapshot); fail closed if it does.
        (Some(_), None) => return Err("caller without a snapshot"),
        (Some(caller), Some(snapshot)) => {
            let user = snapshot.user(caller.user);
            head.set(f.user_header.clone(), value(&user.id)?)?;
            if user.service {
                head.set(
                    HeaderName::from_static(PRINCIPAL_HEADER),
                    HeaderValue::from_static("service"),
                )?;
            }
            head.set(
                f.roles_header.clone(),
                value(&snapshot.grant(user).roles_header)?,
            )?;
            if user.tenant != crate::snapshot::NO_TENANT {
                head.set(
                    HeaderName::from_static(crate::tenants::TENANT_HEADER),
                    value(snapshot.tenant_id(user.tenant))?,
                )?;
            }
        }
        (None, _) => {}
    }
    head.set(f.request_id_header.clone(), value(&ctx.request_id)?)?;
    Ok(())
}

/// The peer's address as an `X-Forwarded-For` value, as `ip.to_string()` spells it; an IPv4
/// one written out by hand (std's `Display` for it costs over a thousand instructions, per
/// forwarded call: issue 18).
fn forwarded_for(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut out = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            out[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            out[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        out[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&out[..n]).ok()
}

/// The request id as a response header value. Marked never-indexed: HPACK (HTTP/2) would
/// otherwise look every new id up in the connection's table, insert it and evict another entry
/// to make room, for a value that never comes again.
pub fn request_id_value(request_id: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(request_id).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// [`response_headers`] inserted into `headers`; the usual answer (no checked body) gets its
/// request id without the list being built (issue 18: one allocation fewer per call).
pub fn insert_response_headers(ctx: &Ctx, headers: &mut HeaderMap) {
    if ctx.body_checked {
        for (name, value) in response_headers(ctx) {
            headers.insert(name, value);
        }
    } else if let Some(v) = request_id_value(&ctx.request_id) {
        headers.insert(ctx.id_header(), v);
    }
}

/// Headers the gateway adds to a forwarded call's response: the request id, and on a checked
/// bulk call how many items were removed, and which (the documented contract of a trimmed call).
pub fn response_headers(ctx: &Ctx) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(3);
    if let Some(v) = request_id_value(&ctx.request_id) {
        out.push((ctx.id_header(), v));
    }
    if ctx.body_checked {
        out.push((
            HeaderName::from_static(REMOVED_COUNT),
            HeaderValue::from(ctx.removed_ids.len()),
        ));
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
            if let Ok(v) = HeaderValue::from_str(&ids) {
                out.push((HeaderName::from_static(REMOVED_IDS), v));
            }
        }
    }
    out
}

/// An inspected body must be `application/json` in UTF-8, uncompressed (else 415).
pub fn check_json_media(headers: &HeaderMap) -> Result<(), Rejection> {
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
        return Err(Rejection::new(
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
        return Err(Rejection::new(
            415,
            "unsupported_media_type",
            "a compressed request body is not accepted on this route",
        ));
    }
    Ok(())
}

/// A rejection's JSON body with the lists a bulk, field or new-owner denial names
/// (`denied_ids`, `fields`, `denied_assignees`).
pub fn body_with_lists(
    rejection: &Rejection,
    request_id: &str,
    denied_ids: &[String],
    fields: &[String],
    denied_assignees: &[String],
) -> Vec<u8> {
    let body = rejection.body(request_id);
    if denied_ids.is_empty() && fields.is_empty() && denied_assignees.is_empty() {
        return body;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        if !denied_ids.is_empty() {
            o.insert("denied_ids".into(), serde_json::json!(denied_ids));
        }
        if !fields.is_empty() {
            o.insert("fields".into(), serde_json::json!(fields));
        }
        if !denied_assignees.is_empty() {
            o.insert(
                "denied_assignees".into(),
                serde_json::json!(denied_assignees),
            );
        }
    }
    serde_json::to_vec(&v).unwrap_or(body)
}

/// The end of a call: the request-time histogram, the route's counters, the access line
/// (debug) and the decision log.
pub fn finish(state: &State, ctx: &Ctx, method: &http::Method, raw_target: &[u8], status: u16) {
    let total = ctx.started.elapsed();
    let metrics = &state.metrics;
    metrics.request_seconds.observe(total);
    let Some(live) = &ctx.live else { return };
    let snapshot = live.snapshot.as_deref();
    let (outcome, decision) = match (&ctx.permit, &ctx.denied) {
        (Some(_), Some(_)) => (Outcome::ShadowDeny, "shadow_deny"),
        (Some(_), None) => (Outcome::Allow, "allow"),
        // A preflight the gateway answered (`[cors]`): nothing was forwarded.
        (None, None) if ctx.preflight => (Outcome::Allow, "preflight"),
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
    let log = &state.decision_log;
    // Every disagreement with the candidate is logged, whatever the sampling.
    let disagrees = ctx
        .candidate
        .is_some_and(|c| c.is_ok() != (outcome == Outcome::Allow));
    let to_log = disagrees || log.wants(outcome == Outcome::Allow);
    // The access line is debug-level (the decision log carries the same facts): build the
    // strings below only when someone will read them.
    if !to_log && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let caller = ctx
        .permit
        .as_ref()
        .and_then(|p| p.caller)
        .or_else(|| ctx.denied.as_ref().and_then(|d| d.caller));
    let user = match (caller, snapshot) {
        (Some(c), Some(s)) => Some(s.user(c.user).id.to_string()),
        _ => ctx
            .denied
            .as_ref()
            .and_then(|d| d.user.as_deref().map(str::to_string)),
    };
    let route_info = route.map(|r| policy::route_info(&live.config, r));
    let permission = route_info.and_then(|r| match r.access {
        Access::Permission(p) => Some(p),
        Access::Public => None,
    });
    let reason = match (&ctx.denied, route_info.map(|r| r.access), caller, snapshot) {
        (Some(d), _, _, _) => d.rejection.code.to_string(),
        (None, Some(Access::Public), _, _) if route_info.is_some_and(|r| r.passthrough) => {
            "passthrough".to_string()
        }
        (None, Some(Access::Public), _, _) => "public".to_string(),
        (None, Some(Access::Permission(p)), Some(c), Some(s)) => {
            let granted = match (route, &ctx.permit) {
                (Some(r), Some(permit)) => {
                    policy::granting_role(&live.config, s, c.user, r, p, &permit.canonical)
                }
                _ => None,
            };
            format!("granted_by:{}", granted.as_deref().unwrap_or("?"))
        }
        _ => String::new(),
    };
    let path = ctx
        .permit
        .as_ref()
        .map(|p| p.canonical.path.clone())
        .or_else(|| {
            ctx.denied
                .as_ref()
                .and_then(|d| d.canonical.as_ref().map(|c| c.path.clone()))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(raw_target).into_owned());
    tracing::debug!(
        request_id = %ctx.request_id,
        "method={} path={:?} status={status} decision={decision} code={reason} user={:?} route={:?}",
        method,
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
            principal: match (caller, snapshot) {
                (Some(c), Some(s)) if s.user(c.user).service => Some("service"),
                _ => None,
            },
            tenant: match (caller, snapshot) {
                (Some(c), Some(s)) if s.user(c.user).tenant != crate::snapshot::NO_TENANT => {
                    Some(s.tenant_id(s.user(c.user).tenant).to_string())
                }
                _ => None,
            },
            user,
            method: method.to_string(),
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

/// A CORS preflight the gateway answers itself (`[cors]` with `mode = "gateway"`), on any
/// path, before any route or identity is looked at (a preflight carries no credentials) and
/// without forwarding anything. `None`: not such a call (decide it with [`admit_request`]);
/// `Some(Ok)`: answer 204 with [`cors_headers`]; `Some(Err)`: 403 `cors_forbidden`, without
/// CORS headers (`ctx.denied` is set). A data plane calls this for `OPTIONS` only.
pub fn answer_preflight(
    state: &State,
    ctx: &mut Ctx,
    method: &http::Method,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Option<Result<(), Rejection>> {
    let live = state.live();
    let cors = live.config.cors.as_deref()?;
    if cors.mode != crate::cors::Mode::Gateway || !crate::cors::is_preflight(method, headers) {
        return None;
    }
    let verdict = cors.check_preflight(headers);
    ctx.peer = peer;
    ctx.preflight = true;
    let answer = match verdict {
        Ok(origin) => {
            ctx.cors_origin = Some(origin);
            Ok(())
        }
        Err(rejection) => {
            ctx.denied = Some(Denied::bare(rejection.clone()));
            Err(rejection)
        }
    };
    ctx.live = Some(live);
    Some(answer)
}

/// Set the CORS headers of an answer (`[cors]`; nothing without it). `forwarded`: the CRM's
/// answer, whose own `Access-Control-*` headers are replaced by the gateway's, except on a
/// preflight the CRM answers (`mode = "crm"`), passed as it came.
pub fn cors_headers(ctx: &Ctx, headers: &mut HeaderMap, forwarded: bool) {
    if let Some(cors) = cors_of(ctx, forwarded) {
        cors.apply(headers, ctx.cors_origin.as_ref(), ctx.preflight, forwarded);
    }
}

/// The `[cors]` settings that apply to an answer to this call (`None` without `[cors]`). The
/// CRM's answer to a preflight (`mode = "crm"`) gets the gateway's CORS headers too, in place of
/// its own: the CRM may refuse a preflight (its status passes) but never widen what the config
/// allows.
pub fn cors_of(ctx: &Ctx, _forwarded: bool) -> Option<&crate::cors::Cors> {
    ctx.live.as_ref()?.config.cors.as_deref()
}

/// What to do with a call once it is decided.
#[derive(Debug)]
pub enum Admission {
    /// The gateway's own endpoint ([`policy::ME_PATH`]): 200 with this JSON body, or refused.
    Me(Result<Vec<u8>, Rejection>),
    /// Refused (`ctx.denied` is set): answer with the rejection.
    Deny(Rejection),
    /// Forward the call with its body streamed (`ctx.permit` is set).
    Stream,
    /// Read the body whole (at most this many bytes, 413 beyond), forward it as it came, and
    /// filter the list response.
    Buffer(usize),
    /// Read the body and check it ([`crate::inspect::check_body`]); forward only the checked copy.
    Check,
}

/// [`admit_request`] for a data plane that has only the request head: a body is what its
/// `Content-Length` or `Transfer-Encoding` declares, and a missing `Host` is not checked.
pub fn admit(
    state: &State,
    ctx: &mut Ctx,
    method: &http::Method,
    target: &[u8],
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Admission {
    admit_request(
        state,
        ctx,
        &policy::Request {
            method,
            target,
            headers,
            peer,
            wire: policy::Wire::from_head(method, headers),
        },
    )
}

/// Decide one call: the one load of the live config and snapshot (kept in `ctx` to the end, so
/// a swap never changes a call in flight), the decision, the candidate policy's verdict, and
/// what the data plane must do next.
pub fn admit_request(state: &State, ctx: &mut Ctx, request: &policy::Request<'_>) -> Admission {
    admit_request_since(state, ctx, request, Instant::now())
}

/// [`admit_request`] with the decision's start already read: `since` (the HTTP/1.1 lane
/// passes `ctx.started`, read just before: one clock read fewer per call, issue 18).
pub fn admit_request_since(
    state: &State,
    ctx: &mut Ctx,
    request: &policy::Request<'_>,
    since: Instant,
) -> Admission {
    let live = state.live();
    let (method, target, peer) = (request.method, request.target, request.peer);
    if let Some(cors) = &live.config.cors {
        ctx.cors_origin = cors.allowed_origin(request.headers);
        ctx.preflight = crate::cors::is_preflight(method, request.headers);
    }
    // The gateway's own endpoint: the caller's effective permissions. A byte-prefix test
    // first keeps every other request from paying a second canonicalization; other
    // spellings of the path fall through to the route table (unmatched: denied).
    if method == http::Method::GET
        && target.starts_with(policy::ME_PATH.as_bytes())
        && crate::canon::canonicalize_target(target)
            .is_ok_and(|c| c.path == policy::ME_PATH && c.query.is_none())
    {
        let answer =
            policy::effective_permissions(&live.config, state.snapshot_for_request(&live), request)
                .map(|json| serde_json::to_vec(&json).unwrap_or_default());
        ctx.live = Some(live);
        return Admission::Me(answer);
    }
    let decided_at = since;
    let decision = policy::decide(&live.config, state.snapshot_for_request(&live), request);
    // One clock read for the decision's time and the start of the total timeout.
    let decided = Instant::now();
    state
        .metrics
        .decision_seconds
        .observe(decided.saturating_duration_since(decided_at));
    // A candidate policy is judged on the same request, never enforced.
    if let Some(c) = state.candidate() {
        let verdict = policy::decide(
            &c.config,
            c.snapshot.as_deref().ok_or_else(Rejection::not_ready),
            request,
        );
        let candidate = verdict.map(|_| ()).map_err(|d| d.rejection.code);
        state.metrics.candidate(decision.is_ok(), candidate.is_ok());
        ctx.candidate = Some(candidate);
    }
    ctx.deadline = Some(decided + live.config.upstream.total_timeout);
    ctx.peer = peer;
    ctx.live = Some(live.clone());
    let inspect = |permit: &Permit| {
        permit
            .route
            .and_then(|r| policy::route_info(&live.config, r).inspect.as_deref())
    };
    match decision {
        Ok(permit) => {
            if let Some(rejection) = over_limit(state, &live, ctx, &permit) {
                return refuse_over_limit(ctx, permit, rejection);
            }
            let next = match inspect(&permit) {
                Some(i) if i.reads_body() => Admission::Check,
                Some(i) if i.filters_response() => Admission::Buffer(i.body_limits.max_bytes),
                _ => Admission::Stream,
            };
            ctx.permit = Some(permit);
            next
        }
        Err(denied) => {
            match policy::shadow_permit(&live.config, live.snapshot.as_deref(), &denied) {
                // Shadow mode: logged and counted as a would-be denial, forwarded anyway (a
                // list response is still filtered; a body is not checked).
                Some(permit) => {
                    if let Some(rejection) = over_limit(state, &live, ctx, &permit) {
                        return refuse_over_limit(ctx, permit, rejection);
                    }
                    let next = match inspect(&permit).filter(|i| i.filters_response()) {
                        Some(i) => Admission::Buffer(i.body_limits.max_bytes),
                        None => Admission::Stream,
                    };
                    ctx.permit = Some(permit);
                    ctx.denied = Some(denied);
                    next
                }
                None => {
                    let rejection = denied.rejection.clone();
                    ctx.denied = Some(denied);
                    Admission::Deny(rejection)
                }
            }
        }
    }
}

/// The rate limits of a call about to be forwarded: `[rate_limit] per_caller` (keyed by the
/// caller's user id, or the client's address when it is anonymous), then its route's own.
/// `None` under them (or over a shadow one: counted and logged, forwarded); over one that is
/// enforced, the rejection: 429 `rate_limited` with `Retry-After`. Nothing is looked at when
/// no limit is configured.
fn over_limit(state: &State, live: &Live, ctx: &Ctx, permit: &Permit) -> Option<Rejection> {
    let per_caller = live.config.rate_limit.per_caller.as_ref();
    let route = permit
        .route
        .and_then(|r| policy::route_info(&live.config, r).rate_limit.as_deref());
    if per_caller.is_none() && route.is_none() {
        return None;
    }
    let now = state.clock.nanos(ctx.started);
    let mut caller_over = None;
    if let Some(limit) = per_caller {
        let user = match (permit.caller, live.snapshot.as_deref()) {
            (Some(c), Some(s)) => Some(&*s.user(c.user).id),
            _ => None,
        };
        let key = match (user, ctx.peer) {
            (Some(id), _) => CallerKey::User(id),
            (None, Some(ip)) => CallerKey::Ip(ip),
            (None, None) => CallerKey::Ip(IpAddr::from([0u8; 4])),
        };
        let max = live.config.rate_limit.max_callers;
        if let Err(wait) = state.callers.check(key, limit, now, max) {
            caller_over = Some((Limited::Caller, limit.shadow, wait));
        }
    }
    // A call refused by the caller's limit takes nothing from the route's.
    let route_over = match (route, caller_over) {
        (Some(bucket), None | Some((_, true, _))) => bucket
            .check(now)
            .err()
            .map(|wait| (Limited::Route, bucket.limit.shadow, wait)),
        _ => None,
    };
    let mut refused = None;
    for (limited, shadow, wait) in [caller_over, route_over].into_iter().flatten() {
        if let Some(c) = live.counters(permit.route) {
            c.rate_limited(limited, shadow);
        }
        if !shadow {
            refused = Some(Rejection::rate_limited(limited == Limited::Route, wait));
            continue;
        }
        tracing::info!(
            request_id = %ctx.request_id,
            "shadow: over {} rate limit (429 rate_limited when enforced, retry after {wait}s)",
            match limited {
                Limited::Caller => "the caller's",
                Limited::Route => "the route's",
            }
        );
    }
    refused
}

/// A call refused by [`over_limit`]: logged and counted as a denial of its route.
fn refuse_over_limit(ctx: &mut Ctx, permit: Permit, rejection: Rejection) -> Admission {
    ctx.denied = Some(Denied {
        rejection: rejection.clone(),
        route: permit.route,
        user: None,
        canonical: Some(permit.canonical),
        caller: permit.caller,
    });
    Admission::Deny(rejection)
}

/// Check a body read whole on a [`Admission::Check`] call. `Ok`: what to forward (`ctx` notes
/// the removed items); `Err`: the rejection and its JSON body (`ctx.denied` is set).
pub fn check_body(
    ctx: &mut Ctx,
    body: &[u8],
) -> Result<crate::inspect::Forward, (Rejection, Vec<u8>)> {
    let fail = |ctx: &mut Ctx, rejection: Rejection, d: Option<&crate::inspect::Denial>| {
        let (ids, fields, assignees) = d.map_or((&[][..], &[][..], &[][..]), |d| {
            (&d.denied_ids[..], &d.fields[..], &d.denied_assignees[..])
        });
        let body = body_with_lists(&rejection, &ctx.request_id, ids, fields, assignees);
        let (route, caller) = ctx
            .permit
            .take()
            .map_or((None, None), |p| (p.route, p.caller));
        // The caller (if any) is known: the logs take its id from the snapshot.
        ctx.denied = Some(Denied {
            rejection: rejection.clone(),
            route,
            user: None,
            canonical: None,
            caller,
        });
        Err((rejection, body))
    };
    let (Some(live), Some(inspect)) = (ctx.live.clone(), ctx.inspect()) else {
        return fail(ctx, Rejection::internal(), None);
    };
    let caller = ctx.permit.as_ref().and_then(|p| p.caller);
    let (Some(caller), Some(snapshot)) = (caller, live.snapshot.as_deref()) else {
        // A checking route always has a caller resolved through the snapshot.
        return fail(ctx, Rejection::internal(), None);
    };
    match crate::inspect::check_body(snapshot, &live.config.catalog, caller.user, inspect, body) {
        Ok(forward) => {
            ctx.removed_ids = forward.removed_ids.iter().map(|i| i.to_string()).collect();
            ctx.body_checked = true;
            Ok(forward)
        }
        Err(d) => fail(ctx, d.rejection.clone(), Some(&d)),
    }
}

/// Filter a list response read whole. `Err(why)`: it cannot be filtered (the caller must get
/// none of it).
pub fn filter_list(ctx: &Ctx, body: &[u8]) -> Result<Vec<u8>, String> {
    let (Some(live), Some(permit), Some(inspect)) = (&ctx.live, &ctx.permit, ctx.inspect()) else {
        return Err("no inspection settings".into());
    };
    let (Some(caller), Some(snapshot)) = (permit.caller, live.snapshot.as_deref()) else {
        return Err("no caller".into());
    };
    let filtered = crate::inspect::filter_response(snapshot, caller.user, inspect, body)
        .map_err(|e| e.to_string())?;
    if let Some(c) = live.counters(permit.route) {
        c.trimmed(filtered.removed as u64);
    }
    Ok(filtered.body)
}

/// The most bytes of a list response read for filtering (`list.max_bytes`).
pub fn list_limit(ctx: &Ctx) -> usize {
    ctx.inspect()
        .and_then(|i| i.list.as_ref())
        .map_or(0, |l| l.limits.max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_spells_addresses_as_display_does() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.100.9",
            "255.255.255.255",
            "1.22.103.240",
            "::1",
            "::ffff:10.1.2.3",
            "2001:db8::8:800:200c:417a",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        ips.extend((0..200).map(|_| IpAddr::from(fastrand::u32(..).to_be_bytes())));
        for ip in ips {
            let v = forwarded_for(ip).expect("a value");
            assert_eq!(v.to_str().expect("ascii"), ip.to_string());
        }
    }

    #[test]
    fn request_ids_are_16_hex_digits() {
        for n in [
            0,
            1,
            0xabc,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            fastrand::u64(..),
        ] {
            assert_eq!(request_id(n), format!("{n:016x}"));
        }
    }

    #[test]
    fn hop_by_hop_answer_headers() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("content-length", HeaderValue::from_static("2"));
        assert!(hop_headers_present(&h).is_empty());
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.append(
            "connection",
            HeaderValue::from_static("X-Secret, content-length"),
        );
        let mut names: Vec<String> = hop_headers_present(&h)
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["connection", "keep-alive", "upgrade", "x-secret"]);
    }

    #[test]
    fn the_request_id_is_never_indexed_by_hpack() {
        let v = request_id_value("00ab34cd56ef7890").unwrap();
        assert_eq!(v, "00ab34cd56ef7890");
        assert!(v.is_sensitive());
        // Not a header value: no header rather than a broken one.
        assert!(request_id_value("a\nb").is_none());
    }
}

/// Why the CRM gave no answer, as every engine names it (hyper's path, the lane, Pingora).
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// No answer within `upstream.read_timeout` / `connect_timeout` / the total deadline.
    Timeout,
    /// No connection could be opened.
    Connect,
    /// The connection failed or the answer was not HTTP.
    Other,
}

impl Failure {
    /// The answer to the client (502/504) and the `permgate_upstream_errors_total` kind: one
    /// mapping for every engine.
    pub fn rejection(self) -> (Rejection, UpstreamError) {
        match self {
            Failure::Timeout => (Rejection::upstream_timeout(), UpstreamError::Timeout),
            Failure::Connect => (
                Rejection::upstream_unavailable(),
                UpstreamError::Unavailable,
            ),
            Failure::Other => (Rejection::upstream_error(), UpstreamError::Other),
        }
    }
}
