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

#[cfg(test)]
mod tests {
    use crate::catalog::Catalog;
    use crate::snapshot::{Snapshot, NO_TENANT};

    fn build(text: &str) -> Result<Snapshot, Vec<String>> {
        let c = Catalog::builtin().unwrap();
        Snapshot::build("s.json", text, &c)
            .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
    }

    /// Each of `want` is in `errs` (a substring of one), in that order.
    fn in_order(errs: &[String], want: &[&str]) {
        let at: Vec<Option<usize>> = want
            .iter()
            .map(|w| errs.iter().position(|e| e.contains(w)))
            .collect();
        assert!(
            at.iter().all(Option::is_some),
            "want {want:?}\ngot {errs:?}"
        );
        assert!(at.windows(2).all(|p| p[0] < p[1]), "order: {errs:?}");
    }

    const GOOD: &str = r#"{
  "tenants": [{"id": "a"}, {"id": "b"}],
  "users": [
    {"id": "u", "memberships": [{"tenant": "b", "roles": ["sales_rep"], "teams": ["east"], "manager": "m"},
                                {"tenant": "a", "roles": ["admin"]}]},
    {"id": "m", "memberships": [{"tenant": "b", "roles": ["sales_manager"]}]}
  ],
  "services": [{"id": "svc", "roles": ["data_analyst"], "tenant": "a"}]
}"#;

    #[test]
    fn memberships_are_principals_per_tenant() {
        let s = build(GOOD).unwrap();
        assert!(s.has_tenants());
        assert_eq!(s.user_count(), 2, "memberships are not users");
        assert_eq!(s.membership_count(), 3);
        let (a, b) = (s.tenant_index("a").unwrap(), s.tenant_index("b").unwrap());
        let u = s.user_index("u").unwrap();
        let m = s.user_index("m").unwrap();
        let ua = s.member(u, a).unwrap();
        let ub = s.member(u, b).unwrap();
        assert_ne!(ua, ub);
        assert_eq!(&*s.user(ua).id, "u");
        assert_eq!(s.user(ua).person, u);
        assert_eq!(s.grant(s.user(ua)).roles_header.as_ref(), "admin");
        assert_eq!(s.grant(s.user(ub)).roles_header.as_ref(), "sales_rep");
        // The person holds nothing of its own: only through a membership.
        assert!(s.grant(s.user(u)).roles.is_empty());
        // The manager is the manager's membership of the same tenant.
        let mb = s.member(m, b).unwrap();
        assert_eq!(s.user(ub).manager, Some(mb));
        assert!(s.hierarchy().is_at_or_below(mb, ub));
        assert_eq!(s.member(m, a), None, "m is no member of a");
        let svc = s.service_index("svc").unwrap();
        assert_eq!(s.member(svc, a), Some(svc));
        assert_eq!(s.member(svc, b), None);
        // Without tenants: everyone stands for themselves.
        let plain = build(r#"{"users":[{"id":"u","roles":["admin"]}]}"#).unwrap();
        assert!(!plain.has_tenants());
        let p = plain.user_index("u").unwrap();
        assert_eq!(plain.member(p, NO_TENANT), Some(p));
        assert_eq!(plain.user(p).tenant, NO_TENANT);
    }

    #[test]
    fn bad_tenant_snapshots_are_refused_with_the_place() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"tenants":[{"id":"a"},{"id":"a"}],"users":[]}"#,
                "tenants[1].id: tenant 'a' appears twice",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","memberships":[{"tenant":"x","roles":[]}]}]}"#,
                "users[0].memberships[0].tenant: unknown tenant 'x'",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","memberships":[{"tenant":"a","roles":[]},{"tenant":"a","roles":["admin"]}]}]}"#,
                "users[0].memberships[1].tenant: user 'u' has a second membership of tenant 'a'",
            ),
            (
                r#"{"tenants":[{"id":"a"},{"id":"b"}],"users":[{"id":"u","memberships":[{"tenant":"a","roles":[],"manager":"m"}]},{"id":"m","memberships":[{"tenant":"b","roles":[]}]}]}"#,
                "users[0].memberships[0].manager: manager 'm' is not a member of tenant 'a'",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","memberships":[{"tenant":"a","roles":["nope"]}]}]}"#,
                "users[0].memberships[0].roles[0]: unknown role 'nope'",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","roles":["admin"]}]}"#,
                "users[0].roles: with tenants, roles, teams and manager are per membership",
            ),
            (
                r#"{"users":[{"id":"u","roles":[],"memberships":[]}]}"#,
                "users[0].memberships: memberships need the snapshot's tenants section",
            ),
            (
                r#"{"users":[{"id":"u"}]}"#,
                "users[0].roles: missing field `roles`",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[],"services":[{"id":"s","roles":[]}]}"#,
                "services[0].tenant: with tenants, a service belongs to one",
            ),
            (
                r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","memberships":[{"tenant":"a","roles":[],"manager":"v"}]},{"id":"v","memberships":[{"tenant":"a","roles":[],"manager":"u"}]}],
                   "services":[{"id":"s","roles":[],"tenant":"a"}]}"#,
                "memberships[0].manager: the manager chain of 'u' loops back to itself",
            ),
        ];
        for (text, want) in cases {
            let errs = build(text).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "{text}\nwant: {want}\ngot: {errs:?}"
            );
        }
    }

    /// Without tenants: ids and managers are looked up in passes of their own (the keys made
    /// first, the managers looked up before the users are written); a manager named before
    /// their own entry is found, and the errors come in the text's order.
    #[test]
    fn ids_and_managers_without_tenants() {
        let ok = build(
            r#"{"users":[{"id":"a","roles":[],"manager":"b"},{"id":"b","roles":[],"manager":"c"},{"id":"c","roles":[]}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let idx = |id: &str| ok.user_index(id).unwrap();
        assert_eq!(ok.user(idx("a")).manager, Some(idx("b")));
        assert_eq!(ok.user(idx("b")).manager, Some(idx("c")));
        assert_eq!(ok.user(idx("c")).manager, None);
        let errs = build(
            r#"{"users":[{"id":"a","roles":[],"manager":"ghost"},{"id":"b c","roles":[]},{"id":"a","roles":[],"manager":"a"},{"id":"d","roles":["nope"],"manager":"zed"}]}"#,
        )
        .err()
        .unwrap_or_default();
        let want = [
            "users[1].id: 'b c' is not a valid user id",
            "users[2].id: user 'a' appears twice",
            "users[0].manager: unknown user 'ghost'",
            "users[3].roles[0]: unknown role 'nope'",
            "users[3].manager: unknown user 'zed'",
        ];
        in_order(&errs, &want);
    }

    /// A full build says how long each of its phases took, in order; without records, no
    /// record phases.
    #[test]
    fn a_full_build_times_its_phases() {
        let started = std::time::Instant::now();
        let s = build(GOOD).unwrap_or_else(|e| panic!("{e:?}"));
        let took = started.elapsed();
        let names: Vec<&str> = s.build_phases().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "parse",
                "tenants and user ids",
                "users and services",
                "memberships",
                "hierarchy",
                "teams",
                "owner names (wait)",
                "version",
                "assemble"
            ]
        );
        let sum: std::time::Duration = s.build_phases().iter().map(|(_, d)| *d).sum();
        assert!(sum <= took, "{sum:?} > {took:?}");
        let text = "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:9\"\n[identity.api_keys]\nheader = \"x-api-key\"\n[snapshot]\npath = \"s.json\"\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n[[route]]\nmethods = [\"GET\"]\npath = \"/x\"\npermission = \"lead.view\"\n";
        let c = crate::config::Config::parse("c.toml", text, std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let r = Snapshot::build(
            "s.json",
            r#"{"tenants":[{"id":"a"}],"users":[{"id":"u","memberships":[{"tenant":"a","roles":["admin"]}]}],"records":{"owners":[{"type":"lead","id":"1","owner":"u","tenant":"a"}]}}"#,
            &c.catalog,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let names: Vec<&str> = r.build_phases().iter().map(|(n, _)| *n).collect();
        assert!(
            names.starts_with(&[
                "parse (to the records)",
                "tenants and user ids",
                "users and services",
                "memberships",
                "records read (wait)",
                "hierarchy"
            ]),
            "{names:?}"
        );
        assert!(
            names.ends_with(&[
                "record owners",
                "related records",
                "record shares",
                "record tenants",
                "version",
                "assemble"
            ]),
            "{names:?}"
        );
    }

    /// Several membership errors at once come in the order of the text (the memberships are
    /// numbered in a pass of their own before their entries are written), managers' last.
    #[test]
    fn membership_errors_come_in_the_texts_order() {
        let text = r#"{"tenants":[{"id":"a"},{"id":"b"}],"users":[
            {"id":"u","memberships":[{"tenant":"a","roles":["nope"],"manager":"ghost"},{"tenant":"x","roles":[]},{"tenant":"b","roles":["nope2"]}]},
            {"id":"v","memberships":[{"tenant":"b","roles":[]},{"tenant":"b","roles":[]},{"tenant":"a","roles":[],"manager":"w"}]},
            {"id":"w","memberships":[{"tenant":"b","roles":[]}]}]}"#;
        let errs = build(text).err().unwrap_or_default();
        let want = [
            "users[0].memberships[0].roles[0]: unknown role 'nope'",
            "users[0].memberships[1].tenant: unknown tenant 'x'",
            "users[0].memberships[2].roles[0]: unknown role 'nope2'",
            "users[1].memberships[1].tenant: user 'v' has a second membership of tenant 'b'",
            "users[0].memberships[0].manager: unknown user 'ghost'",
            "users[1].memberships[2].manager: manager 'w' is not a member of tenant 'a'",
        ];
        in_order(&errs, &want);
        assert_eq!(errs.len(), want.len(), "{errs:?}");
        // A manager with memberships in two tenants is found in each (read from the person).
        let ok = r#"{"tenants":[{"id":"a"},{"id":"b"}],"users":[
            {"id":"r","memberships":[{"tenant":"b","roles":[],"manager":"m"},{"tenant":"a","roles":[],"manager":"m"}]},
            {"id":"m","memberships":[{"tenant":"a","roles":[]},{"tenant":"b","roles":[]}]}]}"#;
        let s = build(ok).unwrap_or_else(|e| panic!("{e:?}"));
        let (r, m) = (s.user_index("r").unwrap(), s.user_index("m").unwrap());
        for t in [0, 1] {
            let (rt, mt) = (s.member(r, t).unwrap(), s.member(m, t).unwrap());
            assert_eq!(s.user(rt).manager, Some(mt), "tenant {t}");
            assert_eq!((s.user(rt).tenant, s.user(mt).tenant), (t, t));
        }
    }

    #[test]
    fn records_carry_their_tenant() {
        let c = {
            let text = "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:9\"\n[identity.api_keys]\nheader = \"x-api-key\"\n[snapshot]\npath = \"s.json\"\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n[[record_type]]\nname = \"note\"\nid = \"integer\"\nparents = [\"lead\"]\n[[route]]\nmethods = [\"GET\"]\npath = \"/x\"\npermission = \"lead.view\"\n";
            crate::config::Config::parse("c.toml", text, std::path::Path::new(".")).unwrap()
        };
        let b = |records: &str| {
            Snapshot::build(
                "s.json",
                &format!(
                    r#"{{"tenants":[{{"id":"a"}},{{"id":"b"}}],"users":[{{"id":"u","memberships":[{{"tenant":"a","roles":["admin"]}}]}}],"records":{records}}}"#
                ),
                &c.catalog,
            )
            .map_err(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        let s = b(r#"{"owners":[{"type":"lead","id":"1","owner":"u","tenant":"a"},{"type":"lead","id":"2","tenant":"b"}],"related":[{"type":"note","id":"9","parent_type":"lead","parent_id":"2"}]}"#).unwrap();
        let lead = c.catalog.record_types().get("lead").unwrap();
        let note = c.catalog.record_types().get("note").unwrap();
        let id = |k, t: &str| crate::ids::canonical_id(k, t).unwrap();
        let kind = c.catalog.record_types().kind(lead);
        let r = s.records();
        let one = r.find(lead, &id(kind, "1")).unwrap();
        let two = r.find(lead, &id(kind, "2")).unwrap();
        let nine = r.find(note, &id(kind, "9")).unwrap();
        assert_eq!(r.tenant_of(one.number), s.tenant_index("a").unwrap());
        assert_eq!(r.tenant_of(two.number), s.tenant_index("b").unwrap());
        assert_eq!(
            r.tenant_of(nine.number),
            s.tenant_index("b").unwrap(),
            "a note takes its lead's"
        );
        // The admin of a may not reach b's lead, whatever its scope.
        let u = s
            .member(s.user_index("u").unwrap(), s.tenant_index("a").unwrap())
            .unwrap();
        let view = c.catalog.permission("lead.view").unwrap();
        let check = crate::access::RecordCheck::new(&s, u, view, lead);
        assert!(check.check(&id(kind, "1")).allows(Default::default()));
        assert!(!check.check(&id(kind, "2")).allows(Default::default()));
        // Errors: a record without a tenant, an unknown one, a tenant without tenants.
        let e = b(r#"{"owners":[{"type":"lead","id":"1"}]}"#).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.contains("records.owners[0].tenant: missing field `tenant`")),
            "{e:?}"
        );
        let e = b(r#"{"owners":[{"type":"lead","id":"1","tenant":"z"}]}"#).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.contains("records.owners[0].tenant: unknown tenant 'z'")),
            "{e:?}"
        );
        let e = Snapshot::build(
            "s.json",
            r#"{"users":[],"records":{"owners":[{"type":"lead","id":"1","tenant":"a"}]}}"#,
            &c.catalog,
        )
        .err()
        .unwrap();
        assert!(
            e.iter().any(|e| e
                .to_string()
                .contains("needs the snapshot's tenants section")),
            "{e:?}"
        );
    }
}

/// The changes API on a snapshot with tenants ([`crate::changes`]): memberships, record
/// tenants and new tenants, each bad change one located error.
#[cfg(test)]
mod change_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use crate::changes::Change;
    use crate::ids::{canonical_id, RecordId};
    use crate::records::tests::catalog;
    use crate::snapshot::{RawSnapshot, Snapshot};

    const BASE: &str = r#"{
  "tenants": [{"id": "a"}, {"id": "b"}],
  "users": [
    {"id": "u", "memberships": [{"tenant": "a", "roles": ["admin"]}, {"tenant": "b", "roles": ["sales_rep"]}]},
    {"id": "m", "memberships": [{"tenant": "b", "roles": ["sales_manager"]}]},
    {"id": "w", "memberships": [{"tenant": "a", "roles": ["sales_rep"]}]}
  ],
  "records": {"owners": [{"type": "lead", "id": 1, "owner": "w", "tenant": "a"}],
              "related": [{"type": "note", "id": 9, "parent_type": "lead", "parent_id": 1}]}
}"#;

    /// The incremental path's errors, when the gateway takes it for this batch (`None`: the
    /// batch goes through a full build).
    fn fast_errors(batch: &str) -> Option<Vec<String>> {
        let c = catalog();
        let base = Snapshot::build("s.json", BASE, &c).unwrap();
        let changes: Vec<Change> = serde_json::from_str(batch).unwrap();
        if base.needs_rebuild(&changes, &c) {
            return None;
        }
        Some(base.apply(&changes, &c).err().unwrap_or_default())
    }

    /// The source-form path (and a full build); the incremental path, when the gateway takes
    /// it, accepts and refuses the same.
    fn apply(batch: &str) -> Result<Snapshot, String> {
        let changes: Vec<Change> = serde_json::from_str(batch).map_err(|e| e.to_string())?;
        let full = full_build(&changes);
        if let Some(fast) = fast_errors(batch) {
            assert_eq!(
                fast.is_empty(),
                full.is_ok(),
                "{batch}: {fast:?} {:?}",
                full.as_ref().err()
            );
        }
        full
    }

    fn full_build(changes: &[Change]) -> Result<Snapshot, String> {
        let c = catalog();
        let mut raw = RawSnapshot::parse(BASE).unwrap();
        raw.apply(changes, c.record_types())?;
        let roles = crate::changes::check_member_roles(changes, &c, &raw);
        if !roles.is_empty() {
            return Err(roles.join("; "));
        }
        Snapshot::build("s.json", &raw.to_json(), &c).map_err(|e| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn roles(s: &Snapshot, user: &str, tenant: &str) -> Option<String> {
        let m = s.member(s.user_index(user)?, s.tenant_index(tenant)?)?;
        Some(s.grant(s.user(m)).roles_header.to_string())
    }

    fn lead_tenant(s: &Snapshot, id: u64) -> Option<String> {
        let c = catalog();
        let t = c.record_types().get("lead").unwrap();
        let id: RecordId = canonical_id(c.record_types().kind(t), &id.to_string()).unwrap();
        let f = s.records.find(t, &id)?;
        Some(s.tenant_id(s.records.tenant_of(f.number)).to_string())
    }

    #[test]
    fn memberships_records_and_tenants_change_in_a_batch() {
        let s = apply(
            r#"[{"op":"upsert_tenant","tenant":{"id":"c","name":"New org"}},
                {"op":"set_membership","user":"w","tenant":"c","roles":["sales_manager"]},
                {"op":"set_membership","user":"u","tenant":"c","roles":["sales_rep"],"manager":"w"},
                {"op":"set_roles","user":"u","tenant":"b","roles":["sales_manager"]},
                {"op":"remove_membership","user":"m","tenant":"b"},
                {"op":"set_membership","user":"m","tenant":"a","roles":["sales_rep"]},
                {"op":"upsert_record","type":"lead","id":2,"owner":"u","tenant":"c"},
                {"op":"upsert_record","type":"note","id":10,"owner":"u","tenant":"a","parent":{"type":"lead","id":1}},
                {"op":"set_owner","type":"note","id":9,"owner":"w"}]"#,
        )
        .unwrap();
        assert_eq!(roles(&s, "w", "c").as_deref(), Some("sales_manager"));
        assert_eq!(roles(&s, "u", "c").as_deref(), Some("sales_rep"));
        assert_eq!(roles(&s, "u", "b").as_deref(), Some("sales_manager"));
        assert_eq!(roles(&s, "u", "a").as_deref(), Some("admin"), "untouched");
        assert_eq!(roles(&s, "m", "b"), None, "membership removed");
        assert_eq!(roles(&s, "m", "a").as_deref(), Some("sales_rep"));
        let (u, w, c) = (
            s.user_index("u").unwrap(),
            s.user_index("w").unwrap(),
            s.tenant_index("c").unwrap(),
        );
        assert_eq!(s.user(s.member(u, c).unwrap()).manager, s.member(w, c));
        assert_eq!(lead_tenant(&s, 2).as_deref(), Some("c"));
        assert_eq!(lead_tenant(&s, 1).as_deref(), Some("a"));
    }

    #[test]
    fn each_bad_change_is_one_located_error() {
        for (batch, says) in [
            (
                r#"[{"op":"upsert_record","type":"lead","id":2,"owner":"u"}]"#,
                "changes[0].tenant: missing",
            ),
            (
                r#"[{"op":"upsert_record","type":"lead","id":2,"owner":"u","tenant":"zz"}]"#,
                "changes[0].tenant: unknown tenant 'zz'",
            ),
            (
                r#"[{"op":"upsert_tenant","tenant":{"id":"c"}},{"op":"set_roles","user":"u","roles":["admin"]}]"#,
                "changes[1].tenant: missing",
            ),
            (
                r#"[{"op":"set_teams","user":"w","tenant":"b","teams":["east"]}]"#,
                "changes[0]: user 'w' has no membership in tenant 'b' (set_membership adds one)",
            ),
            (
                r#"[{"op":"remove_membership","user":"w","tenant":"b"}]"#,
                "changes[0]: user 'w' has no membership in tenant 'b'",
            ),
            (
                r#"[{"op":"set_manager","user":"u","tenant":"b","manager":"w"}]"#,
                "changes[0].manager: 'w' is not a member of tenant 'b'",
            ),
            (
                r#"[{"op":"set_membership","user":"w","tenant":"b","roles":[],"manager":"nobody"}]"#,
                "changes[0].manager: unknown user 'nobody'",
            ),
            (
                r#"[{"op":"upsert_record","type":"note","id":10,"tenant":"b","parent":{"type":"lead","id":1}}]"#,
                "changes[0].tenant: 'b' is not the parent's tenant 'a'",
            ),
            (
                // No parent named: note 9 keeps lead 1, and so tenant a, even when a later
                // change of the batch removes it (the source form held this only at the end).
                r#"[{"op":"upsert_record","type":"note","id":9,"tenant":"b"},{"op":"remove_record","type":"note","id":9}]"#,
                "changes[0].tenant: 'b' is not the parent's tenant 'a'",
            ),
            (
                r#"[{"op":"set_membership","user":"w","tenant":"b","roles":["admin","nope"]}]"#,
                "changes[0].roles[1]: unknown role 'nope'",
            ),
            (
                r#"[{"op":"upsert_tenant","tenant":{"id":"has space"}}]"#,
                "changes[0].tenant.id: 'has space' is not a valid tenant id",
            ),
        ] {
            let e = apply(batch)
                .err()
                .unwrap_or_else(|| panic!("{batch}: accepted"));
            assert!(e.contains(says), "{batch}: {e}");
            // The incremental path, where the gateway takes it, says the same.
            if let Some(fast) = fast_errors(batch) {
                assert!(fast.iter().any(|m| m.contains(says)), "{batch}: {fast:?}");
            }
        }
    }

    /// A known record moved to another tenant: here when it has no related objects (the
    /// same snapshot as a full build's), through a full build when it has (they follow it
    /// there), also to a tenant the batch adds.
    #[test]
    fn a_record_moves_here_unless_related_objects_follow_it() {
        let c = catalog();
        let base_text = BASE.replace(
            r#""owners": [{"type": "lead", "id": 1, "owner": "w", "tenant": "a"}]"#,
            r#""owners": [{"type": "lead", "id": 1, "owner": "w", "tenant": "a"},
                          {"type": "lead", "id": 3, "owner": "w", "tenant": "a"}]"#,
        );
        assert_ne!(base_text, BASE);
        let base = Snapshot::build("s.json", &base_text, &c).unwrap();
        let full = |changes: &[Change]| {
            let mut raw = RawSnapshot::parse(&base_text).unwrap();
            raw.apply(changes, c.record_types()).unwrap();
            Snapshot::build("s.json", &raw.to_json(), &c).unwrap()
        };
        let batch = |text: &str| serde_json::from_str::<Vec<Change>>(text).unwrap();
        // Lead 3 (no note): here, as a full build makes it.
        let moved = batch(
            r#"[{"op":"upsert_record","type":"lead","id":3,"owner":"u","tenant":"b"},
                {"op":"set_owner","type":"note","id":9,"owner":"u"}]"#,
        );
        assert!(!base.needs_rebuild(&moved, &c));
        let fast = base.apply(&moved, &c).unwrap().snapshot;
        let slow = full(&moved);
        for s in [&fast, &slow] {
            assert_eq!(lead_tenant(s, 3).as_deref(), Some("b"));
            assert_eq!(lead_tenant(s, 1).as_deref(), Some("a"));
        }
        let (lead, c_types) = (c.record_types().get("lead").unwrap(), c.record_types());
        let id3: RecordId = canonical_id(c_types.kind(lead), "3").unwrap();
        let view = c.permission("lead.view").unwrap();
        for (user, tenant) in [("u", "a"), ("u", "b"), ("w", "a")] {
            let decide = |s: &Snapshot| {
                let m = s.member(s.user_index(user).unwrap(), s.tenant_index(tenant).unwrap());
                m.map(|m| {
                    crate::access::RecordCheck::new(s, m, view, lead)
                        .check(&id3)
                        .allows(Default::default())
                })
            };
            assert_eq!(decide(&fast), decide(&slow), "{user} in {tenant}");
        }
        // Lead 1 has a note: a full build, also when the tenant is new in the batch.
        for text in [
            r#"[{"op":"upsert_record","type":"lead","id":1,"owner":"u","tenant":"b"}]"#,
            r#"[{"op":"upsert_tenant","tenant":{"id":"c"}},
                {"op":"upsert_record","type":"lead","id":1,"owner":"u","tenant":"c"}]"#,
        ] {
            let moved = batch(text);
            assert!(base.needs_rebuild(&moved, &c), "{text}");
            let slow = full(&moved);
            let to = lead_tenant(&slow, 1).unwrap();
            assert_ne!(to, "a");
            let c_types = c.record_types();
            let note = c_types.get("note").unwrap();
            let nine = slow
                .records
                .find(note, &canonical_id(c_types.kind(note), "9").unwrap())
                .unwrap();
            assert_eq!(
                slow.tenant_id(slow.records.tenant_of(nine.number)),
                to,
                "the note follows"
            );
        }
        // A move to the same tenant, and a new lead: no build.
        let same = batch(
            r#"[{"op":"upsert_record","type":"lead","id":1,"owner":"u","tenant":"a"},
                {"op":"upsert_record","type":"lead","id":4,"owner":"u","tenant":"b"}]"#,
        );
        assert!(!base.needs_rebuild(&same, &c));
    }

    #[test]
    fn without_tenants_a_change_naming_one_is_refused_both_ways() {
        let c = catalog();
        let plain = r#"{"users":[{"id":"u","roles":["admin"]}]}"#;
        let s = Snapshot::build("s.json", plain, &c).unwrap();
        for (batch, says) in [
            (
                r#"[{"op":"set_roles","user":"u","roles":[],"tenant":"a"}]"#,
                "changes[0].tenant: the snapshot has no tenants",
            ),
            (
                r#"[{"op":"upsert_record","type":"lead","id":1,"owner":"u","tenant":"a"}]"#,
                "changes[0].tenant: the snapshot has no tenants",
            ),
            (
                r#"[{"op":"set_membership","user":"u","tenant":"a","roles":[]}]"#,
                "changes[0].tenant: the snapshot has no tenants",
            ),
            (
                r#"[{"op":"upsert_tenant","tenant":{"id":"a"}}]"#,
                "changes[0]: the snapshot has no tenants",
            ),
        ] {
            let changes: Vec<Change> = serde_json::from_str(batch).unwrap();
            let fast = s.apply(&changes, &c).err().unwrap();
            assert!(fast[0].contains(says), "{batch}: {fast:?}");
            let mut raw = RawSnapshot::parse(plain).unwrap();
            let slow = raw.apply(&changes, c.record_types()).err().unwrap();
            assert!(slow.contains(says), "{batch}: {slow}");
        }
    }
}
