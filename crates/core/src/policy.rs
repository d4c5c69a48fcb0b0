//! The decision: one pure function from a request's parts, the config and the snapshot to a
//! [`Permit`] or a [`Denied`]. No I/O; every data plane, `explain` and `permgate test` call the
//! same code.
//!
//! # The pipeline
//!
//! One request, top to bottom ([`decide`] reads in this order; README "How a decision is
//! taken"), each step a function with its typed result:
//!
//! | step | function | result | refused with |
//! |---|---|---|---|
//! | 1. canonicalize | [`canonicalize`]: header hygiene, declared length, the one canonical target | [`CanonicalTarget`] | 400, 413, 414, 431 |
//! | 2. route | [`route`]: the most specific route for method and path (a CORS preflight in `crm` mode, a public route: allowed here) | [`Routed`] | 404 or 403 (`unmatched`), 400 `body_not_allowed` |
//! | 3. load the snapshot | the caller's one load per request ([`decide`]'s `snapshot`) | `&Snapshot` | 503 (none yet, or stale and `fail_closed`) |
//! | 4. identify | [`crate::identity::Verifier::identify`]: exactly one valid credential | [`identity::Identified`] | 401, 400 |
//! | 5. tenant | [`crate::tenants::tenant_of`]: the call's tenant from every configured source (`[tenants]`; none without it) | `Option<Arc<str>>` | 400 (`tenant_missing`, `tenant_ambiguous`, `tenant_invalid`), 401 (`untrusted_tenant_header`) |
//! | 6. decide | [`authorize`]: a known, enabled user holding the route's permission (in the call's tenant), records in path and query in scope | [`Permit`] | 401, 403 (naming the permission; `not_a_member`) |
//! | 7. inspect | [`crate::inspect::check_body`] and the list filter, run by the data plane on the body and the answer | trimmed body, filtered list | 403, 400, 413 |
//!
//! The server's `exchange::admit` runs steps 1–6 through [`decide`] (then rate limits and the
//! choice of what to do with the body), and step 7 once the body is read.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::canon::{self, CanonicalTarget};
use crate::config::{Access, Config, RouteInfo, Unmatched};
use crate::identity::{self, Credential};
use crate::reject::Rejection;
use crate::snapshot::{Snapshot, UserIdx};

/// The parts of a request the decision reads.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The request-target as received (origin-form bytes).
    pub target: &'a [u8],
    pub headers: &'a HeaderMap,
    /// The TCP peer, for trusted identity headers.
    pub peer: Option<IpAddr>,
    /// What the data plane knows of the request beyond its head's fields.
    pub wire: Wire<'a>,
}

/// Facts of a request that its header map does not carry, from the data plane.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wire<'a> {
    /// HTTP/1.1: a `Host` is required (RFC 9112 §3.2; HTTP/1.0 may omit it, HTTP/2 has
    /// `:authority`).
    pub host_required: bool,
    /// HTTP/2's `:authority`, checked as a `Host` is.
    pub authority: Option<&'a str>,
    /// A body follows: a `Content-Length` over 0, any `Transfer-Encoding`, or HTTP/2 DATA.
    pub body: bool,
}

impl Wire<'_> {
    /// What the head's fields alone tell (a body declared by `Content-Length` or
    /// `Transfer-Encoding`, looked for only on a [`bodiless`] method; no `Host` rule).
    pub fn from_head(method: &Method, headers: &HeaderMap) -> Self {
        Wire {
            host_required: false,
            authority: None,
            body: bodiless(method) && canon::declares_body(headers),
        }
    }
}

/// Methods whose requests carry no body: [`canon::bodiless`], kept here too for the data
/// planes (it lives in `canon`, a leaf, so that `config` can use it without a module cycle).
pub use crate::canon::bodiless;

/// An allowed call: what to forward, and who makes it.
#[derive(Debug, Clone)]
pub struct Permit {
    pub canonical: CanonicalTarget,
    /// Index of the matched route in the config's table (`None` only for a call forwarded in
    /// shadow mode that matched no route).
    pub route: Option<usize>,
    /// The caller, unless the route is public.
    pub caller: Option<Caller>,
}

#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user: UserIdx,
    pub method: identity::Method,
}

/// A refused call, with what the logs need to explain it, and what shadow mode needs to
/// forward it anyway. Returned by value, not boxed: a denial allocates nothing of its own.
#[derive(Debug, Clone)]
pub struct Denied {
    pub rejection: Rejection,
    pub route: Option<usize>,
    /// The claimed user id of a caller the snapshot does not know (for the logs; a known
    /// caller is `caller`, and the logs take its id from the snapshot).
    pub user: Option<Arc<str>>,
    /// The canonical target, when the request got that far (never set for a 400 on the path
    /// or headers: ambiguous input is never forwarded, not even in shadow mode).
    pub canonical: Option<CanonicalTarget>,
    /// The identified caller, when the denial came after identification.
    pub caller: Option<Caller>,
}

impl Denied {
    pub fn bare(rejection: Rejection) -> Self {
        Denied {
            rejection,
            route: None,
            user: None,
            canonical: None,
            caller: None,
        }
    }
}

/// The route of a permit or denial.
pub fn route_info(config: &Config, idx: usize) -> &RouteInfo {
    &config.routes.routes()[idx].value
}

/// Decide one request: steps 1 to 6 of the pipeline (module docs), in order.
///
/// `snapshot` is the request's snapshot, or the rejection that stands for it (none loaded yet,
/// or stale with `on_stale = fail_closed`); it only matters for protected routes.
pub fn decide(
    config: &Config,
    snapshot: Result<&Snapshot, Rejection>,
    req: &Request<'_>,
) -> Result<Permit, Denied> {
    let canonical = canonicalize(config, req)?;
    let (canonical, route_idx, permission) = match route(config, req, canonical)? {
        Routed::Public(permit) => return Ok(permit),
        Routed::Protected(c, r, p) => (c, r, p),
    };
    let snapshot = match snapshot {
        Ok(s) => s,
        Err(rejection) => return Err(denied(rejection, route_idx, None, None, canonical)),
    };
    let who = match config.identity.identify(req.headers, req.peer) {
        Ok(who) => who,
        Err(rejection) => return Err(denied(rejection, route_idx, None, None, canonical)),
    };
    let segment = route_info(config, route_idx).tenant_segment;
    let tenant = match crate::tenants::tenant_of(
        config.tenants.as_ref(),
        &config.identity,
        &who,
        req.headers,
        req.peer,
        segment.map(|s| (canonical.path.as_str(), s)),
    ) {
        Ok(t) => t.map(|t| Arc::<str>::from(&*t)),
        Err(rejection) => return Err(denied(rejection, route_idx, None, None, canonical)),
    };
    authorize(
        config,
        snapshot,
        canonical,
        route_idx,
        permission,
        who,
        tenant.as_deref(),
    )
}

/// Decide as a given user, without credentials (for `permgate explain` and `permgate test`):
/// the same canonicalization, route match and permission check as [`decide`].
pub fn decide_as(
    config: &Config,
    snapshot: &Snapshot,
    method: &Method,
    target: &[u8],
    user: Option<&str>,
    tenant: Option<&str>,
) -> Result<Permit, Denied> {
    let headers = HeaderMap::new();
    let req = Request {
        method,
        target,
        headers: &headers,
        peer: None,
        wire: Wire::default(),
    };
    let canonical = canonicalize(config, &req)?;
    let (canonical, route_idx, permission) = match route(config, &req, canonical)? {
        Routed::Public(permit) => return Ok(permit),
        Routed::Protected(c, r, p) => (c, r, p),
    };
    let Some(user) = user else {
        return Err(Denied {
            rejection: Rejection::new(
                401,
                "missing_credentials",
                "this route needs a bearer token or an API key",
            ),
            route: Some(route_idx),
            user: None,
            canonical: Some(canonical),
            caller: None,
        });
    };
    let who = identity::Identified {
        credential: Credential::User(user.into()),
        method: identity::Method::Jwt,
        tenant: None,
    };
    // The tenant given, else the route's path parameter (`[tenants] from = "path:…"`); the
    // same strictness: both, differing, is ambiguous.
    let from_path = route_info(config, route_idx)
        .tenant_segment
        .zip(config.tenants.as_ref())
        .and_then(|(s, _)| {
            canonical
                .path
                .strip_prefix('/')
                .and_then(|p| p.split('/').nth(s))
                .map(str::to_string)
        });
    let tenant = match (tenant, from_path.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(denied(
                Rejection::new(
                    400,
                    "tenant_ambiguous",
                    "this call names more than one tenant (its sources disagree, or a tenant header is repeated)",
                ),
                route_idx,
                None,
                None,
                canonical,
            ))
        }
        (Some(a), _) => Some(a.to_string()),
        (None, b) => b.map(str::to_string),
    };
    if config.tenants.is_some() && tenant.is_none() {
        return Err(denied(
            Rejection::new(
                400,
                "tenant_missing",
                "this call names no tenant (the gateway is tenant-aware: see [tenants] from)",
            ),
            route_idx,
            None,
            None,
            canonical,
        ));
    }
    authorize(
        config,
        snapshot,
        canonical,
        route_idx,
        permission,
        who,
        tenant.as_deref(),
    )
}

/// The principal that acts for `user` in the call's tenant: `user` itself without tenants
/// (neither in the config nor in the snapshot); else its membership of the tenant, or
/// `tenant_missing` / `not_a_member`. A tenant-aware config with a snapshot without tenants,
/// or the reverse, is refused when either is loaded (the server's `tenants_mismatch`); were
/// one live anyway, every call would be refused here (fail closed).
pub fn member_in(
    snapshot: &Snapshot,
    user: UserIdx,
    tenant: Option<&str>,
) -> Result<UserIdx, Rejection> {
    match (tenant, snapshot.has_tenants()) {
        (None, false) => Ok(user),
        (None, true) => Err(Rejection::new(
            400,
            "tenant_missing",
            "this call names no tenant (the snapshot has tenants: configure [tenants] from)",
        )),
        (Some(t), _) => snapshot
            .tenant_index(t)
            .and_then(|ti| snapshot.member(user, ti))
            .ok_or_else(|| crate::tenants::not_a_member(t)),
    }
}

/// The snapshot's user for a verified credential, or 401 (with the claimed id, for the logs).
fn resolve_user(
    snapshot: &Snapshot,
    credential: &Credential,
) -> Result<UserIdx, (Rejection, Option<Arc<str>>)> {
    match credential {
        Credential::User(id) => snapshot.user_index(id).ok_or_else(|| {
            (
                Rejection::new(
                    401,
                    "unknown_user",
                    "the caller is not a user known to the gateway",
                ),
                Some(id.clone()),
            )
        }),
        Credential::ApiKey(digest) => snapshot.user_by_api_key(digest).ok_or_else(|| {
            (
                Rejection::new(401, "invalid_api_key", "the API key is not valid"),
                None,
            )
        }),
    }
}

/// A denial after the route match (the canonical target moves into it: no copy).
fn denied(
    rejection: Rejection,
    route_idx: usize,
    user: Option<Arc<str>>,
    caller: Option<Caller>,
    canonical: CanonicalTarget,
) -> Denied {
    Denied {
        rejection,
        route: Some(route_idx),
        user,
        canonical: Some(canonical),
        caller,
    }
}

/// Step 5: the identified caller against the route's permission and the records its path and
/// query name.
pub fn authorize(
    config: &Config,
    snapshot: &Snapshot,
    canonical: CanonicalTarget,
    route_idx: usize,
    permission: crate::catalog::PermId,
    who: identity::Identified,
    tenant: Option<&str>,
) -> Result<Permit, Denied> {
    let person = match resolve_user(snapshot, &who.credential) {
        Ok(user) => user,
        Err((rejection, id)) => return Err(denied(rejection, route_idx, id, None, canonical)),
    };
    // The caller in the call's tenant (its membership): roles, teams, manager from there.
    let user = match member_in(snapshot, person, tenant) {
        Ok(m) => m,
        Err(rejection) => {
            let caller = Caller {
                user: person,
                method: who.method,
            };
            return Err(denied(rejection, route_idx, None, Some(caller), canonical));
        }
    };
    let u = snapshot.user(user);
    let caller = Caller {
        user,
        method: who.method,
    };
    let refused = if u.disabled {
        Some(Rejection::new(
            403,
            "user_disabled",
            "the caller's account is disabled",
        ))
    } else if !snapshot.has_permission(user, permission) {
        Some(Rejection::forbidden(
            config.catalog.permission_shared(permission),
        ))
    } else {
        // Records named in the path or query: the permission's scope must cover each of them.
        route_info(config, route_idx)
            .inspect
            .as_ref()
            .and_then(|inspect| {
                crate::inspect::check_head(
                    snapshot,
                    &config.catalog,
                    user,
                    inspect,
                    &canonical.path,
                    canonical.query.as_deref(),
                )
                .err()
                .map(|d| d.rejection)
            })
    };
    match refused {
        Some(rejection) => Err(denied(rejection, route_idx, None, Some(caller), canonical)),
        None => Ok(Permit {
            canonical,
            route: Some(route_idx),
            caller: Some(caller),
        }),
    }
}

/// Step 2's result.
pub enum Routed {
    /// Allowed without a caller: a public route, or a CORS preflight the CRM answers.
    Public(Permit),
    /// A route that needs its permission: the canonical target, the route, the permission.
    Protected(CanonicalTarget, usize, crate::catalog::PermId),
}

/// A malformed request (headers, target, query): refused before anything else is looked at.
fn canon_denied(e: canon::CanonError) -> Denied {
    Denied::bare(Rejection::new(e.status(), e.code(), e.message()))
}

/// Header hygiene: limits, framing and override headers, `Host` (and HTTP/2's `:authority`).
fn hygiene(config: &Config, req: &Request<'_>) -> Result<(), canon::CanonError> {
    let l = &config.listen;
    canon::check_header_limits(req.headers, l.max_headers, l.max_header_bytes)?;
    canon::check_headers(req.headers)?;
    let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
    match (host, req.wire.authority) {
        (None, None) if req.wire.host_required => Err(canon::CanonError::MissingHost),
        (None, None) => Ok(()),
        (Some(h), None) => canon::check_host(h),
        (None, Some(a)) => canon::check_host(a.as_bytes()),
        // Both (HTTP/2): each valid, and the same authority.
        (Some(h), Some(a)) => {
            canon::check_host(h)?;
            canon::check_host(a.as_bytes())?;
            if h.eq_ignore_ascii_case(a.as_bytes()) {
                Ok(())
            } else {
                Err(canon::CanonError::InvalidHost)
            }
        }
    }
}

/// A body on a method that has none, on a route that does not take one (`allow_body`), is
/// refused: a CRM that does not read it would take it for the next request (the CL.0 class).
/// Never forwarded, not even in shadow mode.
fn refuse_body(route: Option<usize>) -> Denied {
    let mut d = Denied::bare(Rejection::new(
        400,
        "body_not_allowed",
        "this method takes no request body on this route",
    ));
    d.route = route;
    d
}

/// Step 1: header hygiene, the declared length, the one canonical target (path and query).
pub fn canonicalize(config: &Config, req: &Request<'_>) -> Result<CanonicalTarget, Denied> {
    hygiene(config, req).map_err(canon_denied)?;
    // A declared body over the gateway's limit is refused before anything is forwarded (a
    // streamed body that grows past it is cut off by the data plane).
    if canon::declared_length(req.headers).is_some_and(|n| n > config.listen.max_body_bytes) {
        return Err(Denied::bare(Rejection::body_too_large()));
    }
    canon::canonicalize_target(req.target)
        .and_then(|c| match &c.query {
            Some(q) => canon::check_query(q).map(|()| c),
            None => Ok(c),
        })
        .map_err(canon_denied)
}

/// Step 2: the route for the method and canonical path; a public route (or a CORS preflight in
/// `crm` mode) is allowed here.
pub fn route(
    config: &Config,
    req: &Request<'_>,
    canonical: CanonicalTarget,
) -> Result<Routed, Denied> {
    let body_refused = req.wire.body && bodiless(req.method);
    // `[cors] mode = "crm"`: a preflight goes to the CRM without credentials (the caller is
    // nobody: the forwarded head carries none), and only one a browser could be sending for a
    // call permgate routes: an allowed origin, method and headers, a route for the requested
    // method on this path; without its query. Anything else is refused here, not forwarded.
    if let Some(cors) = config
        .cors
        .as_ref()
        .filter(|c| c.mode == crate::cors::Mode::Crm)
        .filter(|_| crate::cors::is_preflight(req.method, req.headers))
    {
        if body_refused {
            return Err(refuse_body(None));
        }
        cors.check_preflight(req.headers).map_err(Denied::bare)?;
        let requested = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if requested.is_none_or(|m| config.routes.find_index(&m, &canonical.path).is_none()) {
            return Err(Denied::bare(Rejection::route_not_found()));
        }
        let mut canonical = canonical;
        canonical.query = None;
        return Ok(Routed::Public(Permit {
            canonical,
            route: None,
            caller: None,
        }));
    }
    let Some(route_idx) = config.routes.find_index(req.method, &canonical.path) else {
        if body_refused {
            return Err(refuse_body(None));
        }
        let mut d = Denied::bare(match config.unmatched {
            Unmatched::NotFound => Rejection::route_not_found(),
            Unmatched::Forbidden => Rejection::new(
                403,
                "route_not_allowed",
                "no route in the gateway's config allows this method and path",
            ),
        });
        d.canonical = Some(canonical);
        return Err(d);
    };
    let route = route_info(config, route_idx);
    if body_refused && !route.allow_body {
        return Err(refuse_body(Some(route_idx)));
    }
    Ok(match route.access {
        Access::Public => Routed::Public(Permit {
            canonical,
            route: Some(route_idx),
            caller: None,
        }),
        Access::Permission(p) => Routed::Protected(canonical, route_idx, p),
    })
}

/// Which of the caller's roles grants the route's permission on this allowed call (for the
/// decision log's `granted_by` and `explain`): a role whose scope covers the records the path
/// and query name ([`crate::inspect::granting_role`] says which). Computed only when asked.
pub fn granting_role<'s>(
    config: &Config,
    snapshot: &'s Snapshot,
    user: UserIdx,
    route: usize,
    permission: crate::catalog::PermId,
    canonical: &CanonicalTarget,
) -> Option<std::borrow::Cow<'s, str>> {
    crate::inspect::granting_role(
        snapshot,
        user,
        permission,
        route_info(config, route).inspect.as_deref(),
        &canonical.path,
        canonical.query.as_deref(),
    )
}

/// Does shadow mode turn this denial into a forwarded call? Only denials that got past
/// canonicalization qualify: ambiguous input is never forwarded.
pub fn shadow_permit(
    config: &Config,
    snapshot: Option<&Snapshot>,
    denied: &Denied,
) -> Option<Permit> {
    let canonical = denied.canonical.clone()?;
    let route_shadow = denied.route.is_some_and(|r| route_info(config, r).shadow);
    let role_shadow = !config.shadow_roles.is_empty()
        && match (denied.caller, snapshot) {
            (Some(c), Some(s)) => s
                .grant(s.user(c.user))
                .roles
                .iter()
                .any(|r| config.shadow_roles.iter().any(|x| x == s.role_id(*r))),
            _ => false,
        };
    (config.shadow || route_shadow || role_shadow).then_some(Permit {
        canonical,
        route: denied.route,
        caller: denied.caller,
    })
}

/// The path of the effective-permissions endpoint the gateway answers itself.
pub const ME_PATH: &str = "/_permgate/me";

/// `GET /_permgate/me`: the caller's roles, permissions and scopes, so a CRM front end can show
/// only the options the user has. Same identity rules as any protected route.
pub fn effective_permissions(
    config: &Config,
    snapshot: Result<&Snapshot, Rejection>,
    req: &Request<'_>,
) -> Result<serde_json::Value, Rejection> {
    hygiene(config, req).map_err(|e| Rejection::new(e.status(), e.code(), e.message()))?;
    let snapshot = snapshot?;
    let who = config.identity.identify(req.headers, req.peer)?;
    let tenant = crate::tenants::tenant_of(
        config.tenants.as_ref(),
        &config.identity,
        &who,
        req.headers,
        req.peer,
        None,
    )?;
    let person = resolve_user(snapshot, &who.credential).map_err(|(r, _)| r)?;
    if snapshot.user(person).disabled {
        return Err(Rejection::new(
            403,
            "user_disabled",
            "the caller's account is disabled",
        ));
    }
    let user = member_in(snapshot, person, tenant.as_deref())?;
    if snapshot.user(user).disabled {
        return Err(Rejection::new(
            403,
            "user_disabled",
            "the caller's account is disabled",
        ));
    }
    Ok(crate::inspect::effective_permissions(
        snapshot,
        &config.catalog,
        user,
    ))
}
