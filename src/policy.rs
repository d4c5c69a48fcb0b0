//! The decision: one pure function from a request's parts, the config and the snapshot to a
//! [`Permit`] or a [`Denied`]. No I/O; the proxy glue and (later) `explain` call the same code.
//!
//! Order (README "How a decision is taken"):
//! 1. header hygiene (400), 2. canonical path (400/414), 3. route match (unmatched: 404 or 403
//!    as configured), 4. public route → allow, 5. snapshot loaded and fresh enough (else 503), 6. exactly one
//!    valid credential (401/400), 7. known, enabled user (401/403), 8. the route's permission
//!    through any of the user's roles (else 403 naming the permission).

use std::net::IpAddr;

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
}

/// An allowed call: what to forward, and who makes it.
#[derive(Debug, Clone)]
pub struct Permit {
    pub canonical: CanonicalTarget,
    /// Index of the matched route in the config's table.
    pub route: usize,
    /// The caller, unless the route is public.
    pub caller: Option<Caller>,
}

#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub user: UserIdx,
    pub method: identity::Method,
}

/// A refused call, with what the logs need to explain it.
#[derive(Debug, Clone)]
pub struct Denied {
    pub rejection: Rejection,
    pub route: Option<usize>,
    pub user: Option<String>,
}

impl Denied {
    fn bare(rejection: Rejection) -> Self {
        Denied {
            rejection,
            route: None,
            user: None,
        }
    }
}

/// The route of a permit or denial.
pub fn route_info(config: &Config, idx: usize) -> &RouteInfo {
    &config.routes.routes()[idx].value
}

/// Decide one request.
///
/// `snapshot` is the request's snapshot, or the rejection that stands for it (none loaded yet,
/// or stale with `on_stale = fail_closed`); it only matters for protected routes.
pub fn decide(
    config: &Config,
    snapshot: Result<&Snapshot, Rejection>,
    req: &Request<'_>,
) -> Result<Permit, Denied> {
    canon::check_headers(req.headers)
        .map_err(|e| Denied::bare(Rejection::new(e.status(), e.code(), e.message())))?;
    let canonical = canon::canonicalize_target(req.target)
        .and_then(|c| match &c.query {
            Some(q) => canon::check_query(q).map(|()| c),
            None => Ok(c),
        })
        .map_err(|e| Denied::bare(Rejection::new(e.status(), e.code(), e.message())))?;
    let Some(route_idx) = config.routes.find_index(req.method, &canonical.path) else {
        return Err(Denied::bare(match config.unmatched {
            Unmatched::NotFound => Rejection::route_not_found(),
            Unmatched::Forbidden => Rejection::new(
                403,
                "route_not_allowed",
                "no route in the gateway's config allows this method and path",
            ),
        }));
    };
    let permission = match route_info(config, route_idx).access {
        Access::Public => {
            return Ok(Permit {
                canonical,
                route: route_idx,
                caller: None,
            })
        }
        Access::Permission(p) => p,
    };
    let deny = |rejection: Rejection, user: Option<String>| Denied {
        rejection,
        route: Some(route_idx),
        user,
    };
    let snapshot = snapshot.map_err(|r| deny(r, None))?;
    let who = config
        .identity
        .identify(req.headers, req.peer)
        .map_err(|r| deny(r, None))?;
    let user = match &who.credential {
        Credential::User(id) => snapshot.user_index(id).ok_or_else(|| {
            deny(
                Rejection::new(
                    401,
                    "unknown_user",
                    "the caller is not a user known to the gateway",
                ),
                Some(id.clone()),
            )
        })?,
        Credential::ApiKey(digest) => snapshot.user_by_api_key(digest).ok_or_else(|| {
            deny(
                Rejection::new(401, "invalid_api_key", "the API key is not valid"),
                None,
            )
        })?,
    };
    let u = snapshot.user(user);
    if u.disabled {
        return Err(deny(
            Rejection::new(403, "user_disabled", "the caller's account is disabled"),
            Some(u.id.to_string()),
        ));
    }
    if !snapshot.has_permission(user, permission) {
        return Err(deny(
            Rejection::forbidden(config.catalog.permission_name(permission)),
            Some(u.id.to_string()),
        ));
    }
    Ok(Permit {
        canonical,
        route: route_idx,
        caller: Some(Caller {
            user,
            method: who.method,
        }),
    })
}
