//! What a route inspects beyond its permission: the records it names (path, query, body), a
//! bulk item list to trim, a new owner to check, fields that need their own permission, a list
//! response to filter. Config parsing and the pure request-time checks; the proxy glue buffers
//! bodies and calls these.
//!
//! Why one file (~1,110 lines without its tests): each inspection's config and its request-time
//! check sit together, so a setting and what it does are read in one place.
//!
//! # Layout
//!
//! - Config: [`RawRecordType`] (`[[record_type]]`) → [`build_record_types`]; the route fields
//!   ([`RawInspect`]) → [`compile`] → [`Inspect`], hung on the route.
//! - Request time, in the order the glue calls them (each a pure function of the snapshot,
//!   the caller and the request's parts):
//!   1. [`check_head`]: records named in the path and the query (no body needed);
//!   2. [`check_body`] (only when [`Inspect::reads_body`]): the strict parse, records named in
//!      the body, the new owner, field permissions, bulk trimming → [`Forward`] (the body to
//!      send, re-serialized) or a [`Denial`];
//!   3. [`filter_response`] (only when [`Inspect::filters_response`]): a list response
//!      without the items the caller may not see.
//! - [`effective_permissions`]: the caller's roles, permissions and scopes, as JSON (for a
//!   `GET /_permgate/me`).
//!
//! # Route config
//!
//! ```toml
//! [[record_type]]
//! name = "lead"
//! id = "integer"            # integer | uuid | string (case_insensitive = true for strings)
//!
//! [[record_type]]
//! name = "note"
//! id = "integer"
//! parents = ["lead", "contact", "deal"]   # related objects inherit their parent's visibility
//!
//! [[route]]
//! methods = ["GET"]
//! path = "/api/v1/leads/{id}"
//! permission = "lead.view"
//! records = [{ type = "lead", id = "path:id" }]  # path:<param> | query:<name> | body:<pointer>
//! unknown_record = "deny"   # a record the snapshot does not know: deny (default) | allow
//!
//! [[route]]                 # two records: both are checked
//! methods = ["POST"]
//! path = "/api/v1/leads/{id}/merge"
//! permission = "lead.update"
//! records = [{ type = "lead", id = "path:id" },
//!            { type = "lead", id = "body:/into", permission = "lead.delete" }]
//!
//! [[route]]
//! methods = ["POST"]
//! path = "/api/v1/leads/bulk-reassign"
//! permission = "lead.reassign"
//! new_owner = { at = "/owner_id" }           # the new owner must be within the caller's scope
//!                           # list = true: `at` holds a list of user ids ("assigned_to":
//!                           # ["u1", "u2"]), every one checked; see [`check_body`]
//! bulk = { type = "lead", items = "/ids", keys = ["ids", "owner_id"] }
//!                           # item_id = "/id" for object items; mode = "trim" | "all_or_nothing";
//!                           # duplicates = "reject" | "first"; keys: the only top-level keys
//!                           # accepted (a legacy "select_all": true would reach unchecked records)
//! body = { max_bytes = 4194304, max_depth = 32, max_items = 10000 }
//!
//! [[route]]
//! methods = ["GET"]
//! path = "/api/v1/leads"
//! permission = "lead.view"
//! list = { type = "lead", items = "/data", item_id = "/id", counts = ["/total"] }
//!
//! [[route]]
//! methods = ["PATCH"]
//! path = "/api/v1/customers/{id}"
//! permission = "company.view_customer_management_list"
//! fields = { "/phone" = "customer.edit_phone_number", "/email" = "customer.edit_name_email" }
//! on_denied_fields = "refuse"   # refuse (403 naming the fields) | strip
//! ```
//!
//! Each record, bulk, list and new-owner check uses the route's permission unless it names
//! its own. A route that inspects nothing is untouched by all of this (its body streams).
//!
//! # Request-time codes
//!
//! | outcome | status | code |
//! |---|---|---|
//! | a record id in the path/query/body that is not canonical, or missing | 400 | `invalid_record_id` |
//! | the query names the id parameter twice (also as `id[]`, `%69d`, or after `;`) | 400 | `ambiguous_query` |
//! | a record out of the caller's scope, or unknown to the snapshot with `unknown_record = "deny"` (the same answer, so existence does not leak) | 403 | `record_forbidden` |
//! | a bulk call with no item left to forward (an empty list included), or `all_or_nothing` with a denied item | 403 | `bulk_forbidden` (+ `denied_ids`) |
//! | a new owner outside the caller's scope, or unknown (every one of a list: any one → the call) | 403 | `assignee_forbidden` (+ `denied_assignees`) |
//! | a list of users where the route takes one new owner (no `list = true`) | 400 | `assignee_list_not_allowed` |
//! | `list = true` and not a list, an empty list, an item not a user id, a user listed twice | 400 | `invalid_body` |
//! | a field the caller may not change, `on_denied_fields = "refuse"` | 403 | `field_forbidden` (+ `fields`) |
//! | the caller lacks a permission a record or item check names | 403 | `forbidden` (+ `permission`) |
//! | a top-level key a bulk route's `keys` does not list | 400 | `unexpected_key` |
//! | a body that fails the strict parse, or whose items cannot all be read | 400/413 | [`crate::json`] and [`crate::body`] codes |

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::access::{
    check_assignee, check_record, RecordCheck, RecordDecision, Refusal, UnknownRecord,
};
use crate::body::{
    self, BodyError, BulkMode, BulkVerdict, Duplicates, FieldMode, FieldOutcome, FieldRule, Items,
    TrimResult,
};
use crate::catalog::{Catalog, PermId};
use crate::ids::{canonical_id, IdKind, RecordId, RecordTypeId, RecordTypeSpec, RecordTypes};
use crate::json::{self, Limits, Pointer, Scalar, MAX_DEPTH_LIMIT, MAX_ITEMS_LIMIT};
use crate::reject::Rejection;
use crate::snapshot::{Snapshot, UserIdx};

// ---- config --------------------------------------------------------------------------------

/// `[[record_type]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecordType {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub parents: Vec<String>,
}

/// Validate the declared record types. Errors are `(index of the declaration, message)`; the
/// valid declarations come back with them ([`RecordTypes::build`]).
pub fn build_record_types(raw: &[&RawRecordType]) -> (RecordTypes, Vec<(usize, String)>) {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        match IdKind::parse(&r.id, r.case_insensitive) {
            Ok(kind) => specs.push((
                i,
                RecordTypeSpec {
                    name: &r.name,
                    id_kind: kind,
                    parents: &r.parents,
                },
            )),
            Err(e) => errors.push((i, format!("id: {e}"))),
        }
    }
    let only: Vec<RecordTypeSpec<'_>> = specs
        .iter()
        .map(|(_, s)| RecordTypeSpec {
            name: s.name,
            id_kind: s.id_kind,
            parents: s.parents,
        })
        .collect();
    let (types, e) = RecordTypes::build(&only);
    errors.extend(e.into_iter().map(|(j, m)| (specs[j].0, m)));
    errors.sort_by_key(|(i, _)| *i);
    (types, errors)
}

/// `records = [{ type, id, permission? }]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecordRef {
    #[serde(rename = "type")]
    pub record_type: String,
    pub id: String,
    #[serde(default)]
    pub permission: Option<String>,
}

/// `bulk = { type, items, item_id?, mode?, duplicates?, permission?, keys? }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBulk {
    #[serde(rename = "type")]
    pub record_type: String,
    pub items: String,
    #[serde(default)]
    pub item_id: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub duplicates: Option<String>,
    #[serde(default)]
    pub permission: Option<String>,
    /// The only top-level keys the body may hold (default: any).
    #[serde(default)]
    pub keys: Option<Vec<String>>,
}

/// `list = { type, items, item_id?, counts?, max_bytes?, permission? }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    #[serde(rename = "type")]
    pub record_type: String,
    pub items: String,
    #[serde(default)]
    pub item_id: String,
    #[serde(default)]
    pub counts: Vec<String>,
    #[serde(default)]
    pub max_bytes: Option<usize>,
    #[serde(default)]
    pub permission: Option<String>,
}

/// `new_owner = { at, permission?, list? }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNewOwner {
    pub at: String,
    #[serde(default)]
    pub permission: Option<String>,
    /// `at` holds a list of user ids (`"assigned_to": ["u1", "u2"]`), each checked.
    #[serde(default)]
    pub list: bool,
}

/// `body = { max_bytes?, max_depth?, max_items? }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    #[serde(default)]
    pub max_bytes: Option<usize>,
    #[serde(default)]
    pub max_depth: Option<usize>,
    #[serde(default)]
    pub max_items: Option<usize>,
}

/// A route's inspection fields as written (each optional; see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawInspect<'a> {
    pub records: &'a [RawRecordRef],
    pub unknown_record: Option<&'a str>,
    pub bulk: Option<&'a RawBulk>,
    pub list: Option<&'a RawList>,
    pub new_owner: Option<&'a RawNewOwner>,
    pub fields: Option<&'a BTreeMap<String, String>>,
    pub on_denied_fields: Option<&'a str>,
    pub body: Option<&'a RawBody>,
}

impl RawInspect<'_> {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.unknown_record.is_none()
            && self.bulk.is_none()
            && self.list.is_none()
            && self.new_owner.is_none()
            && self.fields.is_none()
            && self.on_denied_fields.is_none()
            && self.body.is_none()
    }
}

/// Where a record id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A `{name}` segment of the route's template, at this segment index of the path.
    Path { name: String, segment: usize },
    /// A query parameter.
    Query(String),
    /// A value in the JSON body.
    Body(Pointer),
}

/// One record a route names.
#[derive(Debug, Clone)]
pub struct RecordRef {
    pub record_type: RecordTypeId,
    pub kind: IdKind,
    pub source: IdSource,
    pub permission: PermId,
}

/// A bulk item list to trim.
#[derive(Debug, Clone)]
pub struct Bulk {
    pub record_type: RecordTypeId,
    pub items: Items,
    pub mode: BulkMode,
    pub duplicates: Duplicates,
    pub permission: PermId,
    /// The only top-level keys the body may hold (`None`: any).
    pub keys: Option<Vec<String>>,
}

/// A list response to filter.
#[derive(Debug, Clone)]
pub struct List {
    pub record_type: RecordTypeId,
    pub items: Items,
    pub counts: Vec<Pointer>,
    pub permission: PermId,
    pub limits: Limits,
}

/// The new owner named in the body.
#[derive(Debug, Clone)]
pub struct NewOwner {
    pub at: Pointer,
    pub permission: PermId,
    /// `at` holds a non-empty array of distinct user ids (each checked), not one id.
    pub list: bool,
}

/// What a route inspects, compiled.
#[derive(Debug, Clone)]
pub struct Inspect {
    pub records: Vec<RecordRef>,
    pub unknown: UnknownRecord,
    pub bulk: Option<Bulk>,
    pub list: Option<List>,
    pub new_owner: Option<NewOwner>,
    pub fields: Vec<FieldRule>,
    pub field_mode: FieldMode,
    /// Limits for the request body (when it is read).
    pub body_limits: Limits,
}

/// The default limit of a list response read for filtering.
pub const DEFAULT_LIST_MAX_BYTES: usize = 8 << 20;
/// The largest body limit a route may set.
pub const MAX_BODY_LIMIT: usize = 64 << 20;

impl Inspect {
    /// Must the request body be buffered and checked ([`check_body`])?
    pub fn reads_body(&self) -> bool {
        self.bulk.is_some()
            || self.new_owner.is_some()
            || !self.fields.is_empty()
            || self
                .records
                .iter()
                .any(|r| matches!(r.source, IdSource::Body(_)))
    }

    /// Must the response body be buffered and filtered ([`filter_response`])?
    pub fn filters_response(&self) -> bool {
        self.list.is_some()
    }
}

/// Compile a route's inspection fields. `template` is the route's path template (`None` for a
/// regex route), `permission` its permission (`None` for a public route). `Ok(None)`: the
/// route inspects nothing. Errors are messages for the route's line.
pub fn compile(
    raw: &RawInspect<'_>,
    permission: Option<PermId>,
    template: Option<&str>,
    catalog: &Catalog,
) -> Result<Option<Inspect>, Vec<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let Some(route_permission) = permission else {
        return Err(vec![
            "a public route checks no records, bodies or fields (give it a permission)".into(),
        ]);
    };
    let types = catalog.record_types();
    let mut errors = Vec::new();
    let perm = |field: &str, p: &Option<String>, errors: &mut Vec<String>| match p {
        None => Some(route_permission),
        Some(name) => match catalog.permission(name) {
            Some(id) => Some(id),
            None => {
                errors.push(format!(
                    "{field}.permission: unknown permission '{name}' (not in the catalogue)"
                ));
                None
            }
        },
    };
    let record_type = |field: &str, name: &str, errors: &mut Vec<String>| match types.get(name) {
        Some(t) => Some(t),
        None => {
            errors.push(format!(
                "{field}.type: unknown record type '{name}' (declare it as a [[record_type]])"
            ));
            None
        }
    };
    let pointer = |field: &str, s: &str, errors: &mut Vec<String>| match Pointer::parse(s) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(format!("{field}: {e}"));
            None
        }
    };

    // Records.
    let mut records = Vec::new();
    for (j, r) in raw.records.iter().enumerate() {
        let field = format!("records[{j}]");
        let t = record_type(&field, &r.record_type, &mut errors);
        let p = perm(&field, &r.permission, &mut errors);
        let source = if let Some(name) = r.id.strip_prefix("path:") {
            match template.and_then(|t| param_segment(t, name)) {
                Some(segment) => Some(IdSource::Path {
                    name: name.to_string(),
                    segment,
                }),
                None => {
                    errors.push(format!(
                        "{field}.id: the route's path template has no '{{{name}}}' segment \
                         (record ids in the path need a template route)"
                    ));
                    None
                }
            }
        } else if let Some(name) = r.id.strip_prefix("query:") {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                errors.push(format!(
                    "{field}.id: '{name}' is not a query parameter name"
                ));
                None
            } else {
                Some(IdSource::Query(name.to_string()))
            }
        } else if let Some(ptr) = r.id.strip_prefix("body:") {
            pointer(&format!("{field}.id"), ptr, &mut errors).map(IdSource::Body)
        } else {
            errors.push(format!(
                "{field}.id: '{}' is not path:<param>, query:<name> or body:<json pointer>",
                r.id
            ));
            None
        };
        if let (Some(t), Some(p), Some(source)) = (t, p, source) {
            records.push(RecordRef {
                record_type: t,
                kind: types.kind(t),
                source,
                permission: p,
            });
        }
    }
    let unknown = match one_of(
        "unknown_record",
        raw.unknown_record,
        &["deny", "allow"],
        &mut errors,
    ) {
        Some("allow") => UnknownRecord::Allow,
        _ => UnknownRecord::Deny,
    };

    // Body limits.
    let mut body_limits = Limits::default();
    if let Some(b) = raw.body {
        if let Some(n) = b.max_bytes {
            if n == 0 || n > MAX_BODY_LIMIT {
                errors.push(format!(
                    "body.max_bytes: must be between 1 and {MAX_BODY_LIMIT}"
                ));
            }
            body_limits.max_bytes = n;
        }
        if let Some(d) = b.max_depth {
            if d == 0 || d > MAX_DEPTH_LIMIT {
                errors.push(format!(
                    "body.max_depth: must be between 1 and {MAX_DEPTH_LIMIT}"
                ));
            }
            body_limits.max_depth = d;
        }
        if let Some(n) = b.max_items {
            if n == 0 || n > MAX_ITEMS_LIMIT {
                errors.push(format!(
                    "body.max_items: must be between 1 and {MAX_ITEMS_LIMIT}"
                ));
            }
            body_limits.max_items = n;
        }
    }

    // Bulk.
    let bulk = raw.bulk.and_then(|b| {
        let t = record_type("bulk", &b.record_type, &mut errors);
        let p = perm("bulk", &b.permission, &mut errors);
        let at = pointer("bulk.items", &b.items, &mut errors);
        let id_at = pointer("bulk.item_id", &b.item_id, &mut errors);
        let mode = match one_of(
            "bulk.mode",
            b.mode.as_deref(),
            &["trim", "all_or_nothing"],
            &mut errors,
        ) {
            Some("all_or_nothing") => BulkMode::AllOrNothing,
            _ => BulkMode::Trim,
        };
        let duplicates = match one_of(
            "bulk.duplicates",
            b.duplicates.as_deref(),
            &["reject", "first"],
            &mut errors,
        ) {
            Some("first") => Duplicates::First,
            _ => Duplicates::Reject,
        };
        Some(Bulk {
            record_type: t?,
            items: Items {
                at: at?,
                id_at: id_at?,
                kind: types.kind(t?),
            },
            mode,
            duplicates,
            permission: p?,
            keys: b.keys.clone(),
        })
    });

    // List.
    let list = raw.list.and_then(|l| {
        let t = record_type("list", &l.record_type, &mut errors);
        let p = perm("list", &l.permission, &mut errors);
        let at = pointer("list.items", &l.items, &mut errors);
        let id_at = pointer("list.item_id", &l.item_id, &mut errors);
        let counts: Vec<Option<Pointer>> = l
            .counts
            .iter()
            .enumerate()
            .map(|(k, c)| pointer(&format!("list.counts[{k}]"), c, &mut errors))
            .collect();
        let max_bytes = l.max_bytes.unwrap_or(DEFAULT_LIST_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_BODY_LIMIT {
            errors.push(format!(
                "list.max_bytes: must be between 1 and {MAX_BODY_LIMIT}"
            ));
        }
        Some(List {
            record_type: t?,
            items: Items {
                at: at?,
                id_at: id_at?,
                kind: types.kind(t?),
            },
            counts: counts.into_iter().collect::<Option<Vec<_>>>()?,
            permission: p?,
            limits: Limits {
                max_bytes,
                max_depth: body_limits.max_depth,
                max_items: body_limits.max_items,
            },
        })
    });

    // New owner.
    let new_owner = raw.new_owner.and_then(|n| {
        let at = pointer("new_owner.at", &n.at, &mut errors);
        if at.as_ref().is_some_and(Pointer::is_root) {
            errors.push("new_owner.at: name the field holding the new owner's user id".into());
        }
        let p = perm("new_owner", &n.permission, &mut errors);
        Some(NewOwner {
            at: at?,
            permission: p?,
            list: n.list,
        })
    });

    // Fields.
    let mut fields = Vec::new();
    if let Some(map) = raw.fields {
        if map.is_empty() {
            errors.push("fields: empty (remove it, or name at least one field)".into());
        }
        for (ptr, p) in map {
            let at = pointer(&format!("fields.\"{ptr}\""), ptr, &mut errors);
            if at.as_ref().is_some_and(Pointer::is_root) {
                errors.push("fields: a field pointer names a member, not the whole body".into());
                continue;
            }
            match (at, catalog.permission(p)) {
                (Some(at), Some(permission)) => fields.push(FieldRule { at, permission }),
                (_, None) => errors.push(format!(
                    "fields.\"{ptr}\": unknown permission '{p}' (not in the catalogue)"
                )),
                _ => {}
            }
        }
    }
    if raw.on_denied_fields.is_some() && raw.fields.is_none() {
        errors.push("on_denied_fields: the route has no fields".into());
    }
    let field_mode = match one_of(
        "on_denied_fields",
        raw.on_denied_fields,
        &["refuse", "strip"],
        &mut errors,
    ) {
        Some("strip") => FieldMode::Strip,
        _ => FieldMode::Refuse,
    };

    if errors.is_empty() {
        Ok(Some(Inspect {
            records,
            unknown,
            bulk,
            list,
            new_owner,
            fields,
            field_mode,
            body_limits,
        }))
    } else {
        Err(errors)
    }
}

/// A setting that must be one of `allowed` (an error names the field), passed through.
fn one_of<'v>(
    field: &str,
    v: Option<&'v str>,
    allowed: &[&str],
    errors: &mut Vec<String>,
) -> Option<&'v str> {
    if let Some(v) = v {
        if !allowed.contains(&v) {
            errors.push(format!(
                "{field}: '{v}' is not one of: {}",
                allowed.join(", ")
            ));
        }
    }
    v
}

/// The segment index of `{name}` (or `{name:type}`) in a path template
/// (`/api/v1/leads/{id}` → 3 for `id`).
pub(crate) fn param_segment(template: &str, name: &str) -> Option<usize> {
    template
        .strip_prefix('/')?
        .split('/')
        .position(|s| !s.starts_with("{*") && crate::routes::param_name(s) == Some(name))
}

// ---- request time --------------------------------------------------------------------------

/// A refused call: the rejection, plus the lists a 403 names (merged into the JSON body by the
/// glue: `"denied_ids"`, `"fields"`, `"denied_assignees"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rejection: Rejection,
    pub denied_ids: Vec<String>,
    pub fields: Vec<String>,
    /// The new owners refused (`assignee_forbidden`), in the body's order.
    pub denied_assignees: Vec<String>,
}

impl Denial {
    fn new(rejection: Rejection) -> Self {
        Denial {
            rejection,
            denied_ids: Vec::new(),
            fields: Vec::new(),
            denied_assignees: Vec::new(),
        }
    }

    fn bad_id(what: &str, e: impl std::fmt::Display) -> Self {
        Denial::new(Rejection::new(
            400,
            "invalid_record_id",
            format!("{what}: {e}"),
        ))
    }

    fn body(e: &BodyError) -> Self {
        Denial::new(Rejection::new(e.status(), e.code(), e.to_string()))
    }
}

/// The percent-decoded text of a query component (`+` is a space, as a form decoder reads it).
fn query_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The decoded value of query parameter `name`. Refused as ambiguous when a CRM could read
/// another value than permgate: the name twice, in any spelling (percent-encoded, with `[]`
/// or `[key]` as PHP and Rails read it, or after a `;`, which some frameworks split on).
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, &'static str> {
    let Some(q) = query else { return Ok(None) };
    let mut found: Option<String> = None;
    for pair in q.split(['&', ';']) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(k) = query_decode(k) else {
            return Err("a query parameter name is not valid percent-encoded UTF-8");
        };
        let base = k.split('[').next().unwrap_or("");
        if base != name && k != name {
            continue;
        }
        if found.is_some() || k != name {
            return Err("the record id parameter appears more than once, or as an array");
        }
        found = Some(query_decode(v).ok_or("the record id is not valid percent-encoded UTF-8")?);
    }
    Ok(found)
}

fn record_denial(
    snapshot: &Snapshot,
    catalog: &Catalog,
    d: RecordDecision,
    perm: PermId,
    t: RecordTypeId,
    id: &RecordId,
) -> Denial {
    let name = catalog.permission_name(perm);
    match d {
        RecordDecision::Denied(Refusal::NoPermission) => {
            Denial::new(Rejection::forbidden(catalog.permission_shared(perm)))
        }
        _ => {
            let _ = snapshot;
            let mut r = Rejection::new(
                403,
                "record_forbidden",
                format!(
                    "this call needs the permission '{name}' on {} '{id}'",
                    catalog.record_types().name(t)
                ),
            );
            r.permission = Some(catalog.permission_shared(perm));
            Denial::new(r)
        }
    }
}

fn check_one(
    snapshot: &Snapshot,
    catalog: &Catalog,
    user: UserIdx,
    unknown: UnknownRecord,
    r: &RecordRef,
    id: &RecordId,
) -> Result<(), Denial> {
    let d = check_record(snapshot, user, r.permission, r.record_type, id);
    if d.allows(unknown) {
        Ok(())
    } else {
        Err(record_denial(
            snapshot,
            catalog,
            d,
            r.permission,
            r.record_type,
            id,
        ))
    }
}

/// Phase 1, with the request head: the records the path and the query name. `path` is the
/// canonical path the route matched, `query` the query as received.
pub fn check_head(
    snapshot: &Snapshot,
    catalog: &Catalog,
    user: UserIdx,
    inspect: &Inspect,
    path: &str,
    query: Option<&str>,
) -> Result<(), Denial> {
    for r in &inspect.records {
        let Some(id) = head_id(r, path, query)? else {
            continue;
        };
        check_one(snapshot, catalog, user, inspect.unknown, r, &id)?;
    }
    Ok(())
}

/// The id of a record the path or the query names (`None`: the record is in the body).
fn head_id(r: &RecordRef, path: &str, query: Option<&str>) -> Result<Option<RecordId>, Denial> {
    let text = match &r.source {
        IdSource::Path { name, segment } => path
            .strip_prefix('/')
            .and_then(|p| p.split('/').nth(*segment))
            .map(str::to_string)
            .ok_or_else(|| Denial::bad_id(&format!("path parameter '{name}'"), "missing"))?,
        IdSource::Query(name) => match query_param(query, name) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err(Denial::bad_id(
                    &format!("query parameter '{name}'"),
                    "missing",
                ))
            }
            Err(m) => return Err(Denial::new(Rejection::new(400, "ambiguous_query", m))),
        },
        IdSource::Body(_) => return Ok(None),
    };
    canonical_id(r.kind, &text)
        .map(Some)
        .map_err(|e| Denial::bad_id("the record id", e))
}

/// Which of the caller's roles grants `permission` on an allowed call, for the decision log's
/// `granted_by` and `explain`: the first of the caller's roles (in role order: the catalogue's
/// presets, then the snapshot's custom roles) that holds the permission with a scope covering
/// every record the path and the query name under that permission. When no single role covers
/// them all, the first covering role of each record, joined with `+`. Records in the body, bulk
/// items and list items are judged against the union of the roles' scopes, item by item, and
/// are not attributed; with no record in the path or query this is the first role holding the
/// permission. `None`: no role holds it.
pub fn granting_role<'s>(
    snapshot: &'s Snapshot,
    user: UserIdx,
    permission: PermId,
    inspect: Option<&Inspect>,
    path: &str,
    query: Option<&str>,
) -> Option<Cow<'s, str>> {
    let roles = snapshot.roles();
    let grant = snapshot.grant(snapshot.user(user));
    let holders = || {
        grant.roles.iter().copied().filter(|r| {
            roles
                .get(usize::from(*r))
                .is_some_and(|x| x.permissions.contains(permission))
        })
    };
    // The records the path and query name under this permission (none on most routes: no
    // allocation then).
    let mut records = Vec::new();
    if let Some(i) = inspect {
        for r in i.records.iter().filter(|r| r.permission == permission) {
            if let Ok(Some(id)) = head_id(r, path, query) {
                records.push((r.record_type, id));
            }
        }
    }
    let unknown = inspect.map_or(UnknownRecord::Deny, |i| i.unknown);
    let covers = |role: u16, (t, id): &(RecordTypeId, RecordId)| {
        RecordCheck::for_role(snapshot, user, role, permission, *t).allows(id, unknown)
    };
    if let Some(r) = holders().find(|r| records.iter().all(|rec| covers(*r, rec))) {
        return Some(Cow::Borrowed(snapshot.role_id(r)));
    }
    let mut names: Vec<&str> = Vec::new();
    for rec in &records {
        if let Some(r) = holders().find(|r| covers(*r, rec)) {
            let name = snapshot.role_id(r);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    (!names.is_empty()).then(|| Cow::Owned(names.join("+")))
}

/// What to forward after [`check_body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The body to send the CRM, re-serialized from what was checked (set `Content-Length`
    /// to its length).
    pub body: Vec<u8>,
    /// Bulk items removed (original order); report them to the caller (`Display` is the
    /// canonical spelling).
    pub removed_ids: Vec<RecordId>,
    /// Bulk items kept.
    pub kept: usize,
    /// Bulk items dropped as repeats (`duplicates = "first"`).
    pub duplicates_dropped: usize,
    /// Fields stripped (`on_denied_fields = "strip"`).
    pub stripped_fields: Vec<String>,
}

/// Phase 2, with the whole request body (buffered up to `inspect.body_limits.max_bytes`; a
/// longer body is 413 without reading further). Content type and encoding are the glue's to
/// check before (only `application/json`, no `Content-Encoding`).
///
/// Checks: the strict parse, records named in the body, the new owner(s), field permissions,
/// bulk trimming. Nothing is forwarded on any failure. Routes without field rules take one
/// streaming pass (parse, trim and re-serialize together, no tree); routes with field rules
/// parse a tree, since stripping edits it, and so do routes whose new owner is a list (the
/// streaming pass captures scalars only).
///
/// A new owner list (`new_owner.list = true`) must be a non-empty array of distinct user ids
/// (strings, or plain integers), at most `body.max_items`; anything else is 400 `invalid_body`
/// (a string is refused too: a CRM that iterates it would read its letters as user ids). Every
/// listed user is checked like a single new owner; any one unknown or outside the caller's
/// scope refuses the whole call (403 `assignee_forbidden`, `denied_assignees` naming each
/// refused one): the assignees apply to every item of a bulk call, so no item could be kept.
/// On a route without `list`, an array there is 400 `assignee_list_not_allowed`.
pub fn check_body(
    snapshot: &Snapshot,
    catalog: &Catalog,
    user: UserIdx,
    inspect: &Inspect,
    body: &[u8],
) -> Result<Forward, Denial> {
    // The values the route names in the body: records first, then the new owner.
    let mut wanted: Vec<&Pointer> = inspect
        .records
        .iter()
        .filter_map(|r| match &r.source {
            IdSource::Body(p) => Some(p),
            _ => None,
        })
        .collect();
    // A list of new owners is read from the tree (below), one new owner while streaming.
    let owner_list = inspect.new_owner.as_ref().filter(|n| n.list);
    if let Some(n) = inspect.new_owner.as_ref().filter(|n| !n.list) {
        wanted.push(&n.at);
    }
    let mut assignees: Vec<String> = Vec::new();
    // A bulk permission the caller lacks entirely: say so rather than list every item.
    if let Some(b) = &inspect.bulk {
        if !snapshot.has_permission(user, b.permission) {
            return Err(Denial::new(Rejection::forbidden(
                catalog.permission_shared(b.permission),
            )));
        }
    }
    let rc = inspect
        .bulk
        .as_ref()
        .map(|b| RecordCheck::new(snapshot, user, b.permission, b.record_type));
    let check = |id: &RecordId| rc.as_ref().is_some_and(|rc| rc.allows(id, inspect.unknown));
    let bulk = inspect.bulk.as_ref().map(|b| (&b.items, b.duplicates));

    let allowed_keys = inspect.bulk.as_ref().and_then(|b| b.keys.as_deref());
    let (t, values, stripped_fields): (TrimResult, Vec<Option<Scalar<'_>>>, _) =
        if inspect.fields.is_empty() && owner_list.is_none() {
            let c = body::trim_capturing(body, &inspect.body_limits, bulk, &wanted, check)
                .map_err(|e| Denial::body(&e))?;
            if let Some(allowed) = allowed_keys {
                body::check_keys(&c.root_keys, allowed).map_err(|e| Denial::body(&e))?;
            }
            (c.trimmed, c.values, Vec::new())
        } else {
            let mut doc =
                json::parse(body, &inspect.body_limits).map_err(|e| Denial::body(&e.into()))?;
            if let Some(allowed) = allowed_keys {
                let keys: Vec<&str> = match &doc {
                    json::Json::Object(m) => m.iter().map(|(k, _)| &**k).collect(),
                    _ => Vec::new(),
                };
                body::check_keys(&keys, allowed).map_err(|e| Denial::body(&e))?;
            }
            let values = wanted.iter().map(|p| p.get(&doc).map(Scalar::of)).collect();
            if let Some(n) = owner_list {
                assignees = body::user_list(n.at.get(&doc), &n.at, inspect.body_limits.max_items)
                    .map_err(|e| Denial::body(&e))?;
            }
            let has = |p: PermId| snapshot.has_permission(user, p);
            let stripped =
                match body::check_fields(&mut doc, &inspect.fields, inspect.field_mode, has) {
                    FieldOutcome::Allowed => Vec::new(),
                    FieldOutcome::Stripped { fields } => fields,
                    FieldOutcome::Refused {
                        fields,
                        permissions,
                    } => {
                        let names: Vec<&str> = permissions
                            .iter()
                            .map(|p| catalog.permission_name(*p))
                            .collect();
                        let mut r = Rejection::new(
                            403,
                            "field_forbidden",
                            format!(
                                "changing {} needs the permission '{}'",
                                fields.join(", "),
                                names.join("', '")
                            ),
                        );
                        r.permission = permissions.first().map(|p| catalog.permission_shared(*p));
                        let mut d = Denial::new(r);
                        d.fields = fields;
                        return Err(d);
                    }
                };
            let t = match bulk {
                Some((items, dup)) => body::trim_sized(doc, items, dup, check, body.len())
                    .map_err(|e| Denial::body(&e))?,
                None => TrimResult {
                    forwarded_body: json::to_vec_sized(&doc, body.len()),
                    removed_ids: Vec::new(),
                    kept: 0,
                    duplicates_dropped: 0,
                },
            };
            (t, values, stripped)
        };

    // Records named in the body.
    let mut k = 0;
    for r in &inspect.records {
        let IdSource::Body(at) = &r.source else {
            continue;
        };
        let what = format!("body value '{at}'");
        let v = values
            .get(k)
            .and_then(Option::as_ref)
            .ok_or_else(|| Denial::bad_id(&what, "missing"))?;
        k += 1;
        let id = body::scalar_id(v, r.kind).map_err(|e| Denial::bad_id(&what, e))?;
        check_one(snapshot, catalog, user, inspect.unknown, r, &id)?;
    }
    // The new owner(s).
    if let Some(n) = &inspect.new_owner {
        if n.list {
            check_new_owners(snapshot, catalog, user, n, &assignees)?;
        } else {
            let who = body::scalar_text(values.get(k).and_then(Option::as_ref), &n.at)
                .map_err(|e| Denial::body(&e))?;
            check_new_owners(snapshot, catalog, user, n, std::slice::from_ref(&who))?;
        }
    }
    let Some(b) = &inspect.bulk else {
        return Ok(Forward {
            body: t.forwarded_body,
            removed_ids: Vec::new(),
            kept: 0,
            duplicates_dropped: 0,
            stripped_fields,
        });
    };
    match t.verdict(b.mode) {
        BulkVerdict::Forward => Ok(Forward {
            body: t.forwarded_body,
            removed_ids: t.removed_ids,
            kept: t.kept,
            duplicates_dropped: t.duplicates_dropped,
            stripped_fields,
        }),
        BulkVerdict::Refuse => {
            let name = catalog.permission_name(b.permission);
            let message = if t.removed_ids.is_empty() && t.kept == 0 {
                // A legacy CRM may read an empty selection as "all records".
                "the bulk list is empty: an empty selection is never forwarded".to_string()
            } else {
                format!(
                    "{} of {} items need the permission '{name}' on records outside the caller's scope",
                    t.removed_ids.len(),
                    t.removed_ids.len() + t.kept
                )
            };
            let mut r = Rejection::new(403, "bulk_forbidden", message);
            r.permission = Some(catalog.permission_shared(b.permission));
            let mut d = Denial::new(r);
            d.denied_ids = t.removed_ids.iter().map(ToString::to_string).collect();
            Err(d)
        }
    }
}

/// Every new owner in the caller's scope for `n.permission`, or the denial naming each one
/// that is not (unknown to the gateway, or outside the scope).
fn check_new_owners<S: AsRef<str>>(
    snapshot: &Snapshot,
    catalog: &Catalog,
    user: UserIdx,
    n: &NewOwner,
    who: &[S],
) -> Result<(), Denial> {
    let mut unknown = 0;
    let mut denied: Vec<String> = Vec::new();
    for w in who {
        let w = w.as_ref();
        let Some(target) = snapshot.user_index(w) else {
            unknown += 1;
            denied.push(w.to_string());
            continue;
        };
        match check_assignee(snapshot, user, n.permission, target) {
            Ok(()) => {}
            Err(Refusal::NoPermission) => {
                return Err(Denial::new(Rejection::forbidden(
                    catalog.permission_shared(n.permission),
                )))
            }
            Err(Refusal::OutOfScope) => denied.push(w.to_string()),
        }
    }
    let message = match denied.as_slice() {
        [] => return Ok(()),
        [one] if unknown == 1 => {
            format!("the new owner '{one}' is not a user known to the gateway")
        }
        [one] => format!(
            "records can be assigned only within the caller's scope; '{one}' is outside it"
        ),
        several => format!(
            "records can be assigned only within the caller's scope; these new owners are outside it or unknown to the gateway: '{}'",
            several.join("', '")
        ),
    };
    let mut r = Rejection::new(403, "assignee_forbidden", message);
    r.permission = Some(catalog.permission_shared(n.permission));
    let mut d = Denial::new(r);
    d.denied_assignees = denied;
    Err(d)
}

/// Phase 3: a list response (2xx, JSON, buffered up to `list.limits.max_bytes`) without the
/// items the caller may not see, counts corrected. An error means the response cannot be
/// filtered: the glue answers 502 and sends nothing of it (fail closed).
pub fn filter_response(
    snapshot: &Snapshot,
    user: UserIdx,
    inspect: &Inspect,
    body: &[u8],
) -> Result<body::Filtered, BodyError> {
    let Some(l) = &inspect.list else {
        return Err(BodyError::NoItems { at: String::new() });
    };
    let rc = RecordCheck::new(snapshot, user, l.permission, l.record_type);
    let check = |id: &RecordId| rc.allows(id, inspect.unknown);
    body::filter_list(body, &l.limits, &l.items, &l.counts, check)
}

/// The caller's roles, permissions and their scopes, for a front end to show only the options
/// the user has: `{"user", "roles": [...], "permissions": {"lead.view": "own+shared", ...}}`.
pub fn effective_permissions(
    snapshot: &Snapshot,
    catalog: &Catalog,
    user: UserIdx,
) -> serde_json::Value {
    let u = snapshot.user(user);
    let g = snapshot.grant(u);
    let permissions: serde_json::Map<String, serde_json::Value> = g
        .permissions
        .iter()
        .map(|p| {
            (
                catalog.permission_name(p).to_string(),
                serde_json::Value::String(g.scopes.get(p).to_string()),
            )
        })
        .collect();
    let mut v = serde_json::json!({
        "user": &*u.id,
        "principal": if u.service { "service" } else { "user" },
        "roles": g.roles.iter().map(|r| snapshot.role_id(*r)).collect::<Vec<_>>(),
        "permissions": permissions,
    });
    // With tenants: the tenant these roles hold in (the call's).
    if u.tenant != crate::snapshot::NO_TENANT {
        if let Some(o) = v.as_object_mut() {
            o.insert("tenant".into(), snapshot.tenant_id(u.tenant).into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::tests::snapshot;

    fn raw_route(toml_text: &str) -> (Vec<RawRecordRef>, RawRouteFields) {
        let f: RawRouteFields = toml::from_str(toml_text).unwrap();
        (f.records.clone(), f)
    }

    /// The inspection fields of a route, as config.rs reads them.
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawRouteFields {
        #[serde(default)]
        records: Vec<RawRecordRef>,
        #[serde(default)]
        unknown_record: Option<String>,
        #[serde(default)]
        bulk: Option<RawBulk>,
        #[serde(default)]
        list: Option<RawList>,
        #[serde(default)]
        new_owner: Option<RawNewOwner>,
        #[serde(default)]
        fields: Option<BTreeMap<String, String>>,
        #[serde(default)]
        on_denied_fields: Option<String>,
        #[serde(default)]
        body: Option<RawBody>,
    }

    fn compile_route(
        c: &Catalog,
        toml_text: &str,
        perm: Option<&str>,
        template: Option<&str>,
    ) -> Result<Option<Inspect>, Vec<String>> {
        let (records, f) = raw_route(toml_text);
        let raw = RawInspect {
            records: &records,
            unknown_record: f.unknown_record.as_deref(),
            bulk: f.bulk.as_ref(),
            list: f.list.as_ref(),
            new_owner: f.new_owner.as_ref(),
            fields: f.fields.as_ref(),
            on_denied_fields: f.on_denied_fields.as_deref(),
            body: f.body.as_ref(),
        };
        compile(&raw, perm.map(|p| c.permission(p).unwrap()), template, c)
    }

    fn inspect(c: &Catalog, toml_text: &str, perm: &str, template: &str) -> Inspect {
        compile_route(c, toml_text, Some(perm), Some(template))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn config_errors_name_the_field() {
        let (c, _) = snapshot();
        let e = compile_route(
            &c,
            r#"records = [{ type = "lead", id = "path:lead_id" }, { type = "opportunity", id = "query:x" }, { type = "lead", id = "header:x", permission = "lead.nope" }]
               unknown_record = "maybe"
               bulk = { type = "lead", items = "ids", mode = "some" }
               fields = { "/phone" = "customer.nope", "" = "lead.view" }
               body = { max_depth = 1000 }"#,
            Some("lead.view"),
            Some("/api/leads/{id}"),
        )
        .unwrap_err();
        for want in [
            "records[0].id: the route's path template has no '{lead_id}' segment",
            "records[1].type: unknown record type 'opportunity'",
            "records[2].permission: unknown permission 'lead.nope'",
            "records[2].id: 'header:x' is not path:<param>",
            "unknown_record: 'maybe' is not one of: deny, allow",
            "bulk.items: 'ids' is not a JSON pointer",
            "bulk.mode: 'some' is not one of: trim, all_or_nothing",
            "fields.\"/phone\": unknown permission 'customer.nope'",
            "fields: a field pointer names a member",
            "body.max_depth: must be between 1 and 128",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
        assert!(compile_route(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }]"#,
            None,
            Some("/a/{id}")
        )
        .unwrap_err()[0]
            .contains("public route"));
        assert!(compile_route(&c, "", Some("lead.view"), None)
            .unwrap()
            .is_none());
        assert!(compile_route(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }]"#,
            Some("lead.view"),
            None
        )
        .unwrap_err()[0]
            .contains("need a template route"));
        assert!(
            compile_route(&c, r#"on_denied_fields = "strip""#, Some("lead.view"), None)
                .unwrap_err()[0]
                .contains("no fields")
        );
        let i = inspect(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }]"#,
            "lead.view",
            "/api/v1/leads/{id}/notes",
        );
        assert_eq!(
            i.records[0].source,
            IdSource::Path {
                name: "id".into(),
                segment: 3
            }
        );
        assert!(!i.reads_body() && !i.filters_response());
    }

    #[test]
    fn record_types_from_config() {
        let raw: Vec<RawRecordType> = toml::from_str::<BTreeMap<String, Vec<RawRecordType>>>(
            r#"record_type = [
                { name = "lead", id = "integer" },
                { name = "contact", id = "string", case_insensitive = true },
                { name = "note", id = "integer", parents = ["lead", "contact"] },
                { name = "deal", id = "guid" },
                { name = "call", id = "integer", parents = ["deal"] },
            ]"#,
        )
        .unwrap()
        .remove("record_type")
        .unwrap();
        let refs: Vec<&RawRecordType> = raw.iter().collect();
        let (partial, e) = build_record_types(&refs);
        assert_eq!(partial.len(), 4, "lead, contact, note, call");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, 3);
        assert!(e[0].1.contains("'guid' is not an id kind"));
        assert_eq!(e[1].0, 4, "{e:?}");
        assert!(e[1].1.contains("unknown record type 'deal'"));
        let (ok, none) = build_record_types(&refs[..3]);
        assert!(none.is_empty());
        assert_eq!(ok.info(ok.get("note").unwrap()).parents.len(), 2);
    }

    /// `granted_by` names a role whose own scope covers the records the path and query name,
    /// not merely the first role holding the permission.
    #[test]
    fn the_granting_role_covers_the_record() {
        let c = crate::records::tests::catalog();
        let s = Snapshot::build(
            "s.json",
            r#"{"roles": [{"id": "a_own", "permissions": ["lead.view@own"]},
                          {"id": "b_shared", "permissions": ["lead.view@shared"]},
                          {"id": "c_all", "permissions": ["lead.view"]}],
                "users": [{"id": "u-x", "roles": ["b_shared", "a_own"]}, {"id": "u-y", "roles": ["a_own"]},
                          {"id": "u-z", "roles": ["a_own", "c_all"]}],
                "records": {"owners": [{"type": "lead", "id": "1", "owner": "u-x"},
                                       {"type": "lead", "id": "2", "owner": "u-y"}],
                            "shares": [{"type": "lead", "id": "2", "user": "u-x"}]}}"#,
            &c,
        )
        .unwrap();
        let perm = c.permission("lead.view").unwrap();
        let i = inspect(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }, { type = "lead", id = "query:other" }]"#,
            "lead.view",
            "/api/v1/leads/{id}",
        );
        let one = inspect(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }]"#,
            "lead.view",
            "/api/v1/leads/{id}",
        );
        let u = |id| s.user_index(id).unwrap();
        let role = |user, inspect: Option<&Inspect>, path, query| {
            granting_role(&s, u(user), perm, inspect, path, query)
        };
        // Roles in role order (a_own before b_shared, whatever the user's list says).
        assert_eq!(
            role("u-x", Some(&one), "/api/v1/leads/1", None).as_deref(),
            Some("a_own")
        );
        // Lead 2 is shared with u-x: only b_shared covers it (the first holder, a_own, does not).
        assert_eq!(
            role("u-x", Some(&one), "/api/v1/leads/2", None).as_deref(),
            Some("b_shared")
        );
        // Two records no single role covers: each one's covering role.
        assert_eq!(
            role("u-x", Some(&i), "/api/v1/leads/2", Some("other=1")).as_deref(),
            Some("b_shared+a_own")
        );
        assert_eq!(
            role("u-x", Some(&i), "/api/v1/leads/1", Some("other=1")).as_deref(),
            Some("a_own")
        );
        // An `all` scope covers a record the snapshot does not know; no record: the first holder.
        assert_eq!(
            role("u-z", Some(&one), "/api/v1/leads/99", None).as_deref(),
            Some("c_all")
        );
        assert_eq!(
            role("u-z", None, "/api/v1/leads", None).as_deref(),
            Some("a_own")
        );
        assert_eq!(
            role("u-x", None, "/x", None).as_deref(),
            Some("a_own"),
            "no record named"
        );
        let campaign = c.permission("campaign.delete").unwrap();
        assert_eq!(
            granting_role(&s, u("u-x"), campaign, None, "/x", None),
            None
        );
    }

    #[test]
    fn head_checks_path_and_query() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let i = inspect(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }]"#,
            "lead.view",
            "/api/v1/leads/{id}",
        );
        let head = |user, path| {
            check_head(&s, &c, u(user), &i, path, None)
                .map_err(|d| (d.rejection.status, d.rejection.code))
        };
        assert_eq!(head("u-rep1", "/api/v1/leads/1"), Ok(()));
        assert_eq!(
            head("u-rep1", "/api/v1/leads/2"),
            Err((403, "record_forbidden"))
        );
        assert_eq!(
            head("u-rep1", "/api/v1/leads/404"),
            Err((403, "record_forbidden")),
            "unknown: same answer"
        );
        assert_eq!(
            head("u-rep1", "/api/v1/leads/01"),
            Err((400, "invalid_record_id"))
        );
        assert_eq!(
            head("u-rep1", "/api/v1/leads/%31"),
            Err((400, "invalid_record_id"))
        );
        assert_eq!(head("u-camp", "/api/v1/leads/1"), Err((403, "forbidden")));
        assert_eq!(head("u-admin", "/api/v1/leads/404"), Ok(()));
        let d = check_head(&s, &c, u("u-rep1"), &i, "/api/v1/leads/2", None).unwrap_err();
        assert_eq!(d.rejection.permission.as_deref(), Some("lead.view"));
        assert!(
            d.rejection.message().contains("lead '2'"),
            "{}",
            d.rejection.message()
        );

        let allow = inspect(
            &c,
            "records = [{ type = \"lead\", id = \"path:id\" }]\nunknown_record = \"allow\"",
            "lead.view",
            "/api/v1/leads/{id}",
        );
        assert_eq!(
            check_head(&s, &c, u("u-rep1"), &allow, "/api/v1/leads/404", None),
            Ok(())
        );
        assert!(check_head(&s, &c, u("u-rep1"), &allow, "/api/v1/leads/2", None).is_err());

        let q = inspect(
            &c,
            r#"records = [{ type = "lead", id = "query:lead" }]"#,
            "lead.view",
            "/api/v1/notes",
        );
        let head = |query| {
            check_head(&s, &c, u("u-rep1"), &q, "/api/v1/notes", query)
                .map_err(|d| d.rejection.code)
        };
        assert_eq!(head(Some("lead=1&x=2")), Ok(()));
        assert_eq!(head(Some("x=%32&lead=%31")), Ok(()), "percent-decoded");
        assert_eq!(head(Some("lead=2")), Err("record_forbidden"));
        assert_eq!(head(Some("lead=1&lead=2")), Err("ambiguous_query"));
        assert_eq!(head(Some("lead=1&%6cead=2")), Err("ambiguous_query"));
        assert_eq!(head(Some("lead=1;lead=2")), Err("ambiguous_query"));
        assert_eq!(head(Some("lead[]=2")), Err("ambiguous_query"));
        assert_eq!(head(Some("lead=1&lead[x]=2")), Err("ambiguous_query"));
        assert_eq!(head(Some("leads=2")), Err("invalid_record_id"));
        assert_eq!(head(None), Err("invalid_record_id"));
        assert_eq!(head(Some("lead=+1")), Err("invalid_record_id"));
        assert_eq!(head(Some("lead=")), Err("invalid_record_id"));
    }

    #[test]
    fn merge_checks_both_records() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let i = inspect(
            &c,
            r#"records = [{ type = "lead", id = "path:id" }, { type = "lead", id = "body:/into", permission = "lead.update" }]"#,
            "lead.update",
            "/api/v1/leads/{id}/merge",
        );
        assert!(i.reads_body());
        let run = |user, path, body: &str| {
            check_head(&s, &c, u(user), &i, path, None)
                .and_then(|()| check_body(&s, &c, u(user), &i, body.as_bytes()))
                .map(|f| String::from_utf8(f.body).unwrap())
                .map_err(|d| d.rejection.code)
        };
        assert_eq!(
            run("u-rep1", "/api/v1/leads/1/merge", r#"{ "into": 4 }"#),
            Ok(r#"{"into":4}"#.into())
        );
        assert_eq!(
            run("u-rep1", "/api/v1/leads/1/merge", r#"{"into": 2}"#),
            Err("record_forbidden")
        );
        assert_eq!(
            run("u-rep1", "/api/v1/leads/2/merge", r#"{"into": 1}"#),
            Err("record_forbidden")
        );
        assert_eq!(
            run("u-rep1", "/api/v1/leads/1/merge", r#"{"into": "04"}"#),
            Err("invalid_record_id")
        );
        assert_eq!(
            run("u-rep1", "/api/v1/leads/1/merge", r#"{}"#),
            Err("invalid_record_id")
        );
        assert_eq!(
            run(
                "u-rep1",
                "/api/v1/leads/1/merge",
                r#"{"into": 4, "into": 2}"#
            ),
            Err("duplicate_key")
        );
    }

    fn strings(ids: &[RecordId]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    /// `new_owner.list`: every listed user is checked; any one refused refuses the call and is
    /// named; the list's shape is strict; a route without `list` refuses a list.
    #[test]
    fn new_owner_lists_check_every_assignee() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let list = inspect(
            &c,
            r#"new_owner = { at = "/assigned_to", list = true }
               bulk = { type = "lead", items = "/ids" }"#,
            "lead.reassign",
            "/api/v1/leads/bulk-assign",
        );
        let run = |i: &Inspect, user, body: &str| check_body(&s, &c, u(user), i, body.as_bytes());
        // rep1's scope for lead.reassign is subordinates: rep1 and jr are in it.
        let f = run(
            &list,
            "u-rep1",
            r#"{"ids":[1,2], "assigned_to":["u-rep1","u-jr"]}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(f.body).unwrap(),
            r#"{"ids":[1],"assigned_to":["u-rep1","u-jr"]}"#,
            "checked, trimmed and forwarded as the streaming path would"
        );
        assert_eq!(strings(&f.removed_ids), ["2"]);
        // One outside the scope (a peer) and one unknown: the call is refused, both named.
        let d = run(
            &list,
            "u-rep1",
            r#"{"ids":[1],"assigned_to":["u-jr","u-rep2","u-ghost"]}"#,
        )
        .unwrap_err();
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (403, "assignee_forbidden")
        );
        assert_eq!(d.denied_assignees, ["u-rep2", "u-ghost"]);
        assert!(d.denied_ids.is_empty());
        let m = d.rejection.message();
        assert!(m.contains("'u-rep2', 'u-ghost'"), "{m}");
        assert_eq!(d.rejection.permission.as_deref(), Some("lead.reassign"));
        // Only one refused: the message of a single new owner.
        let d = run(&list, "u-rep1", r#"{"ids":[1],"assigned_to":["u-rep2"]}"#).unwrap_err();
        assert_eq!(d.denied_assignees, ["u-rep2"]);
        assert!(d.rejection.message().ends_with("'u-rep2' is outside it"));
        // Without the permission at all: forbidden, as for one new owner.
        let d = run(&list, "u-camp", r#"{"ids":[1],"assigned_to":["u-camp"]}"#).unwrap_err();
        assert_eq!(d.rejection.code, "forbidden");
        // The shape is strict: each of these is 400 invalid_body, nothing forwarded.
        for (body, says) in [
            (r#"{"ids":[1],"assigned_to":"u-jr"}"#, "found a string"),
            (r#"{"ids":[1],"assigned_to":[]}"#, "empty list"),
            (
                r#"{"ids":[1],"assigned_to":["u-jr",null]}"#,
                "'/assigned_to/1'",
            ),
            (
                r#"{"ids":[1],"assigned_to":["u-jr",["u-jr"]]}"#,
                "found an array",
            ),
            (
                r#"{"ids":[1],"assigned_to":["u-jr",1.5]}"#,
                "found a number",
            ),
            (
                r#"{"ids":[1],"assigned_to":["u-jr","u-jr"]}"#,
                "listed twice",
            ),
            (r#"{"ids":[1],"assigned_to":null}"#, "found null"),
            (r#"{"ids":[1]}"#, "missing"),
        ] {
            let d = run(&list, "u-rep1", body).unwrap_err();
            assert_eq!(
                (d.rejection.status, d.rejection.code),
                (400, "invalid_body"),
                "{body}"
            );
            assert!(d.rejection.message().contains(says), "{body}: {d:?}");
        }
        // A list longer than body.max_items is 413, like a bulk list.
        let short = inspect(
            &c,
            r#"new_owner = { at = "/to", list = true }
               body = { max_items = 2 }"#,
            "lead.reassign",
            "/x",
        );
        let d = run(&short, "u-rep1", r#"{"to":["u-rep1","u-jr","u-x"]}"#).unwrap_err();
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (413, "too_many_items")
        );
        // With field rules too (the same tree), and a list of one.
        let fields = inspect(
            &c,
            r#"new_owner = { at = "/to", list = true }
               fields = { "/phone" = "customer.edit_phone_number" }"#,
            "lead.reassign",
            "/x",
        );
        assert!(run(&fields, "u-rep1", r#"{"to":["u-jr"]}"#).is_ok());
        // A route that takes one new owner refuses a list with its own code, and a single
        // refused owner is named too.
        let single = inspect(
            &c,
            r#"new_owner = { at = "/owner_id" }
               bulk = { type = "lead", items = "/ids" }"#,
            "lead.reassign",
            "/api/v1/leads/bulk-reassign",
        );
        let d = run(&single, "u-rep1", r#"{"ids":[1],"owner_id":["u-jr"]}"#).unwrap_err();
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (400, "assignee_list_not_allowed")
        );
        assert!(d.rejection.message().contains("'/owner_id'"), "{d:?}");
        let d = run(&single, "u-rep1", r#"{"ids":[1],"owner_id":"u-rep2"}"#).unwrap_err();
        assert_eq!(d.denied_assignees, ["u-rep2"]);
    }

    #[test]
    fn seed_004_bulk_reassign_through_the_snapshot() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let i = inspect(
            &c,
            r#"new_owner = { at = "/owner_id" }
               bulk = { type = "lead", items = "/ids" }"#,
            "lead.reassign",
            "/api/v1/leads/bulk-reassign",
        );
        // rep1 reassigns leads 1..5 to jr: own 1, jr's 3 (a subordinate); 2 (peer), 4 (shared
        // with rep1, but reassign's scope is subordinates), 5 (unowned) and 404 (unknown) go.
        let f = check_body(
            &s,
            &c,
            u("u-rep1"),
            &i,
            br#"{"ids":[1,2,3,4,5,404],"owner_id":"u-jr"}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(f.body).unwrap(),
            r#"{"ids":[1,3],"owner_id":"u-jr"}"#
        );
        assert_eq!(strings(&f.removed_ids), ["2", "4", "5", "404"]);
        assert_eq!(f.kept, 2);
        let err = |user, body: &str| check_body(&s, &c, u(user), &i, body.as_bytes()).unwrap_err();
        let d = err("u-rep1", r#"{"ids":[2,4],"owner_id":"u-jr"}"#);
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (403, "bulk_forbidden")
        );
        assert_eq!(d.denied_ids, ["2", "4"]);
        // An empty selection is refused too: a legacy CRM may read it as "all".
        let d = err("u-rep1", r#"{"ids":[],"owner_id":"u-jr"}"#);
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (403, "bulk_forbidden")
        );
        assert!(d.denied_ids.is_empty());
        assert!(d.rejection.message().contains("empty"), "{d:?}");
        assert_eq!(
            err("u-rep1", r#"{"ids":[1],"owner_id":"u-rep2"}"#)
                .rejection
                .code,
            "assignee_forbidden"
        );
        assert_eq!(
            err("u-rep1", r#"{"ids":[1],"owner_id":"u-ghost"}"#)
                .rejection
                .code,
            "assignee_forbidden"
        );
        assert_eq!(
            err("u-rep1", r#"{"ids":[1]}"#).rejection.code,
            "invalid_body"
        );
        assert_eq!(
            err("u-camp", r#"{"ids":[1],"owner_id":"u-camp"}"#)
                .rejection
                .code,
            "forbidden"
        );
        // The manager reaches the whole subtree, and assigns within it.
        let f = check_body(
            &s,
            &c,
            u("u-sm"),
            &i,
            br#"{"ids":[1,2,3,4],"owner_id":"u-rep2"}"#,
        )
        .unwrap();
        assert_eq!(strings(&f.removed_ids), ["4"]);
        // Only the listed top-level keys.
        let keyed = inspect(
            &c,
            r#"bulk = { type = "lead", items = "/ids", keys = ["ids", "owner_id"] }"#,
            "lead.reassign",
            "/x",
        );
        let ok = check_body(
            &s,
            &c,
            u("u-sm"),
            &keyed,
            br#"{"ids":[1],"owner_id":"u-jr"}"#,
        );
        assert_eq!(ok.unwrap().kept, 1);
        let d = check_body(
            &s,
            &c,
            u("u-sm"),
            &keyed,
            br#"{"ids":[1],"select_all":true}"#,
        )
        .unwrap_err();
        assert_eq!(
            (d.rejection.status, d.rejection.code),
            (400, "unexpected_key")
        );
        let tree = inspect(
            &c,
            "bulk = { type = \"lead\", items = \"/ids\", keys = [\"ids\"] }\nfields = { \"/x\" = \"lead.view\" }",
            "lead.reassign",
            "/x",
        );
        let d = check_body(&s, &c, u("u-sm"), &tree, br#"{"ids":[1],"all":1}"#).unwrap_err();
        assert_eq!(d.rejection.code, "unexpected_key");
        // all_or_nothing.
        let strict = inspect(
            &c,
            r#"bulk = { type = "lead", items = "/ids", mode = "all_or_nothing" }"#,
            "lead.reassign",
            "/x",
        );
        assert_eq!(
            check_body(&s, &c, u("u-sm"), &strict, br#"{"ids":[1,4]}"#)
                .unwrap_err()
                .denied_ids,
            ["4"]
        );
        assert_eq!(
            check_body(&s, &c, u("u-sm"), &strict, br#"{"ids":[1,3]}"#)
                .unwrap()
                .kept,
            2
        );
    }

    #[test]
    fn fields_on_a_route() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let refuse = inspect(
            &c,
            r#"fields = { "/phone" = "customer.edit_phone_number" }"#,
            "lead.view",
            "/c/{id}",
        );
        let d =
            check_body(&s, &c, u("u-rep1"), &refuse, br#"{"phone":"1","name":"x"}"#).unwrap_err();
        assert_eq!(
            (d.rejection.code, d.fields.clone()),
            ("field_forbidden", vec!["/phone".to_string()])
        );
        assert_eq!(
            d.rejection.permission.as_deref(),
            Some("customer.edit_phone_number")
        );
        assert!(check_body(&s, &c, u("u-admin"), &refuse, br#"{"phone":"1"}"#).is_ok());
        assert!(check_body(&s, &c, u("u-rep1"), &refuse, br#"{"name":"x"}"#).is_ok());
        let strip = inspect(&c, "fields = { \"/phone\" = \"customer.edit_phone_number\" }\non_denied_fields = \"strip\"", "lead.view", "/c/{id}");
        let f = check_body(&s, &c, u("u-rep1"), &strip, br#"{"phone":"1","name":"x"}"#).unwrap();
        assert_eq!(String::from_utf8(f.body).unwrap(), r#"{"name":"x"}"#);
        assert_eq!(f.stripped_fields, ["/phone"]);
    }

    #[test]
    fn list_responses_hold_only_visible_records() {
        let (c, s) = snapshot();
        let u = |id| s.user_index(id).unwrap();
        let i = inspect(
            &c,
            r#"list = { type = "lead", items = "/data", item_id = "/id", counts = ["/total"] }"#,
            "lead.view",
            "/api/v1/leads",
        );
        assert!(i.filters_response() && !i.reads_body());
        let body =
            br#"{"data":[{"id":1},{"id":2},{"id":3},{"id":4},{"id":5},{"id":404}],"total":6}"#;
        let f = filter_response(&s, u("u-rep1"), &i, body).unwrap();
        assert_eq!(
            String::from_utf8(f.body).unwrap(),
            r#"{"data":[{"id":1},{"id":4}],"total":2}"#
        );
        let f = filter_response(&s, u("u-sm"), &i, body).unwrap();
        assert_eq!(
            String::from_utf8(f.body).unwrap(),
            r#"{"data":[{"id":1},{"id":2},{"id":3}],"total":3}"#
        );
        let f = filter_response(&s, u("u-admin"), &i, body).unwrap();
        assert_eq!(f.kept, 6);
    }

    #[test]
    fn effective_permissions_list_scopes() {
        let (c, s) = snapshot();
        let v = effective_permissions(&s, &c, s.user_index("u-rep1").unwrap());
        assert_eq!(v["user"], "u-rep1");
        assert_eq!(v["roles"], serde_json::json!(["rep_limited"]));
        assert_eq!(v["permissions"]["lead.view"], "own+shared");
        assert_eq!(v["permissions"]["lead.reassign"], "subordinates");
        assert!(v["permissions"].get("lead.delete").is_none());
        let a = effective_permissions(&s, &c, s.user_index("u-admin").unwrap());
        assert_eq!(a["permissions"]["campaign.delete"], "all");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Config;
    use crate::snapshot::Snapshot;

    const BASE: &str = r#"
[listen]
address = "127.0.0.1:0"

[upstream]
address = "127.0.0.1:9"

[identity.api_keys]
header = "x-api-key"

[snapshot]
path = "snapshot.json"
"#;

    const RECORDS: &str = r#"
[[record_type]]
name = "lead"
id = "integer"

[[record_type]]
name = "note"
id = "integer"
parents = ["lead"]

[[route]]
methods = ["GET"]
path = "/api/v1/leads/{id}"
permission = "lead.view"
records = [{ type = "lead", id = "path:id" }]

[[route]]
methods = ["POST"]
path = "/api/v1/leads/bulk-reassign"
permission = "lead.reassign"
new_owner = { at = "/owner_id" }
bulk = { type = "lead", items = "/ids", mode = "trim", duplicates = "first" }
body = { max_bytes = 65536 }

[[route]]
methods = ["GET"]
path = "/api/v1/leads"
permission = "lead.view"

[route.list]
type = "lead"
items = "/data"
item_id = "/id"
counts = ["/total"]

[[route]]
methods = ["GET"]
path = "/health"
public = true
"#;

    #[test]
    fn a_config_with_records_compiles_and_builds_its_snapshot() {
        let text = format!("{BASE}{RECORDS}");
        let config = Config::parse("c.toml", &text, std::path::Path::new(".")).unwrap();
        let routes = config.routes.routes();
        let get = routes[0].value.inspect.as_ref().unwrap();
        assert_eq!(get.records.len(), 1);
        let bulk = routes[1].value.inspect.as_ref().unwrap();
        assert!(bulk.reads_body());
        assert_eq!(bulk.body_limits.max_bytes, 65536);
        assert!(routes[2].value.inspect.as_ref().unwrap().filters_response());
        assert!(routes[3].value.inspect.is_none());
        let types = config.catalog.record_types();
        assert_eq!(types.len(), 2);
        let s = Snapshot::build(
            "s.json",
            r#"{"users":[{"id":"a","roles":["sales_rep"]}],
                "records":{"owners":[{"type":"lead","id":"1","owner":"a"}],
                           "related":[{"type":"note","id":"2","parent_type":"lead","parent_id":"1"}]}}"#,
            &config.catalog,
        )
        .unwrap();
        assert_eq!(s.records().stats().records, 2);
    }

    #[test]
    fn record_settings_errors_are_located() {
        let broken = RECORDS
            .replacen("id = \"integer\"\nparents", "id = \"serial\"\nparents", 1)
            .replacen("items = \"/ids\"", "items = \"ids\"", 1)
            .replacen("item_id = \"/id\"", "item_id = \"id\"", 1);
        let text = format!("{BASE}{broken}");
        let errs: Vec<String> = Config::parse("c.toml", &text, std::path::Path::new("."))
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        for want in [
            "c.toml:18: record_type[1]: id: 'serial' is not an id kind",
            "c.toml:29: route[1]: bulk.items: 'ids' is not a JSON pointer",
            "c.toml:37: route[2]: list.item_id: 'id' is not a JSON pointer",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
        assert_eq!(
            errs.len(),
            3,
            "one error per mistake, no cascade: {errs:#?}"
        );
        // An unknown field in a record setting is refused like every other unknown field.
        let typo = RECORDS.replacen("mode = \"trim\"", "mood = \"trim\"", 1);
        let e = Config::parse(
            "c.toml",
            &format!("{BASE}{typo}"),
            std::path::Path::new("."),
        )
        .unwrap_err();
        assert!(e[0].to_string().contains("mood"), "{}", e[0]);
        // A snapshot naming an undeclared type is refused against this config.
        let config = Config::parse(
            "c.toml",
            &format!("{BASE}{RECORDS}"),
            std::path::Path::new("."),
        )
        .unwrap();
        let e = Snapshot::build(
            "s.json",
            r#"{"users":[],"records":{"owners":[{"type":"deal","id":"1"}]}}"#,
            &config.catalog,
        )
        .unwrap_err();
        assert!(
            e[0].to_string().contains("unknown record type 'deal'"),
            "{}",
            e[0]
        );
    }
}
