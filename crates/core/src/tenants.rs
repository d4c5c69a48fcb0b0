//! Tenants: where the tenant of a call comes from (`[tenants]` in the config), and the call's
//! tenant read from a request, strictly.
//!
//! ```toml
//! [tenants]
//! from = ["claim:org_id", "path:org"]   # or one string; claim:<jwt claim> | header:<name> | path:<param>
//! ```
//!
//! Every source that gives a value must give the same one; none giving a value is
//! `tenant_missing`, two values that differ (sources that disagree, a header sent twice) are
//! `tenant_ambiguous` — never guessed. A `header:` source is read only from a peer the trusted
//! identity header is accepted from (`[identity.trusted_header] trusted_cidrs`): from any other
//! peer the header is refused (`untrusted_tenant_header`), and it is never forwarded (the CRM
//! gets the tenant decided on in `x-permgate-tenant`). The snapshot's memberships then decide
//! ([`crate::snapshot`]).

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::identity::{Identified, Verifier};
use crate::reject::Rejection;

/// The header the CRM receives the call's tenant in (client copies removed, as every
/// `x-permgate-*` header).
pub const TENANT_HEADER: &str = "x-permgate-tenant";

/// `[tenants]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    from: OneOrMany,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The compiled `[tenants]` section: the sources of a call's tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantSources {
    /// A JWT claim (read by the identity's verifier, [`Identified::tenant`]).
    pub claim: Option<String>,
    /// A header set by a trusted peer.
    pub header: Option<HeaderName>,
    /// A path parameter of the matched route (its segment per route: `RouteInfo::tenant_segment`).
    pub path: Option<String>,
}

impl RawTenants {
    /// Compile; `Err`: the messages (the caller locates them at `tenants.from`).
    pub fn build(&self, identity: &Verifier) -> Result<TenantSources, Vec<String>> {
        let list: Vec<&str> = match &self.from {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        };
        let mut out = TenantSources::default();
        let mut errors = Vec::new();
        if list.is_empty() {
            errors.push(
                "name at least one source: claim:<name>, header:<name> or path:<param>".into(),
            );
        }
        for s in list {
            let (kind, name) = s.split_once(':').unwrap_or((s, ""));
            if name.is_empty() {
                errors.push(format!(
                    "'{s}' is not claim:<name>, header:<name> or path:<param>"
                ));
                continue;
            }
            let dup = match kind {
                "claim" => {
                    if !identity.has_jwt() {
                        errors.push(format!("'{s}': a claim source needs [identity.jwt]"));
                    }
                    out.claim.replace(name.to_string()).is_some()
                }
                "header" => {
                    if !identity.has_trusted_header() {
                        errors.push(format!(
                            "'{s}': a header source is trusted only from the peers of [identity.trusted_header] trusted_cidrs; configure it"
                        ));
                    }
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) if !h.as_str().starts_with(crate::headers::OWN_HEADER_PREFIX) => {
                            out.header.replace(h).is_some()
                        }
                        _ => {
                            errors.push(format!("'{s}': not a header name permgate can read (x-permgate-* are its own)"));
                            false
                        }
                    }
                }
                "path" => out.path.replace(name.to_string()).is_some(),
                _ => {
                    errors.push(format!(
                        "'{s}' is not claim:<name>, header:<name> or path:<param>"
                    ));
                    false
                }
            };
            if dup {
                errors.push(format!("'{kind}:' is named twice"));
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

fn missing() -> Rejection {
    Rejection::new(
        400,
        "tenant_missing",
        "this call names no tenant (the gateway is tenant-aware: see [tenants] from)",
    )
}

fn ambiguous() -> Rejection {
    Rejection::new(
        400,
        "tenant_ambiguous",
        "this call names more than one tenant (its sources disagree, or a tenant header is repeated)",
    )
}

/// The call's tenant, from every configured source: `Ok(None)` only without `[tenants]`.
/// `path_segment`: the route's segment holding the `path:` parameter (0-based, after the
/// leading `/`), `None` when the route has none or no route applies (`/_permgate/me`).
pub fn tenant_of<'a>(
    sources: Option<&TenantSources>,
    identity: &Verifier,
    who: &'a Identified,
    headers: &'a HeaderMap,
    peer: Option<IpAddr>,
    path: Option<(&'a str, usize)>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(sources) = sources else {
        return Ok(None);
    };
    let mut found: Option<Cow<'a, str>> = None;
    let mut offer = |v: Cow<'a, str>| -> Result<(), Rejection> {
        if v.is_empty() || v.len() > 256 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Rejection::new(
                400,
                "tenant_invalid",
                "the call's tenant is empty, too long or not visible ASCII",
            ));
        }
        match &found {
            Some(f) if *f != v => Err(ambiguous()),
            Some(_) => Ok(()),
            None => {
                found = Some(v);
                Ok(())
            }
        }
    };
    if sources.claim.is_some() {
        if let Some(t) = &who.tenant {
            offer(Cow::Borrowed(t))?;
        }
    }
    if let Some(h) = &sources.header {
        let mut values = headers.get_all(h).iter();
        if let Some(first) = values.next() {
            if values.next().is_some() {
                return Err(ambiguous());
            }
            if !identity.is_trusted_peer(peer) {
                return Err(Rejection::new(
                    401,
                    "untrusted_tenant_header",
                    "the tenant header is accepted only from trusted peers",
                ));
            }
            let v = first.to_str().map_err(|_| {
                Rejection::new(
                    400,
                    "tenant_invalid",
                    "the tenant header is not visible ASCII",
                )
            })?;
            offer(Cow::Borrowed(v.trim()))?;
        }
    }
    if let Some((path, segment)) = path {
        if let Some(v) = path
            .strip_prefix('/')
            .and_then(|p| p.split('/').nth(segment))
        {
            offer(Cow::Borrowed(v))?;
        }
    }
    found.map(Some).ok_or_else(missing)
}

/// 403 `not_a_member`: the caller has no membership in the call's tenant.
pub fn not_a_member(tenant: &str) -> Rejection {
    Rejection::new(
        403,
        "not_a_member",
        format!("the caller is not a member of tenant '{tenant}'"),
    )
}
