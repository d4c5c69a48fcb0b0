//! `[[resource]]`: a collection declared once — its list, create, read, update and delete
//! routes, its bulk routes and sub-routes, its record type and permissions — expanded into
//! ordinary [`RawRoute`]s before the routes compile. An expanded route is compiled by the same
//! code as a hand-written `[[route]]`, so it is exactly what the equivalent block compiles to
//! (a test compiles both and compares); only its origin differs: `resource 'leads' at
//! permgate.toml:40`, shown by `check-config` ([`summary`]) and `explain`.
//!
//! ```toml
//! [[resource]]
//! name = "leads"                 # route names: leads.list, leads.create, leads.read, …
//! path = "/api/leads/"           # the collection; the item is /api/leads/{id:uuid}/
//! id = "uuid"                    # uuid | int | regex:<pattern>
//! record_type = "lead"           # checked on the item routes and the sub-routes (path:id)
//! permission_group = "lead"      # lead.view (list, read), lead.create, lead.update, lead.delete
//! permissions = { delete = "lead.reassign" }   # per action, over the group
//! actions = ["list", "create", "read", "update", "delete"]   # the default; update = PUT + PATCH
//! list = { items = "/results", item_id = "/id", counts = ["/count"] }
//! bulk = [{ path = "bulk/", methods = ["PATCH"], action = "update", items = "/ids" }]
//!
//! [[resource.sub]]               # /api/leads/{id:uuid}/comments/ (+ comments/{comments_id:uuid}/)
//! name = "comments"
//! path = "comments/"
//! id = "uuid"                    # list and read need lead.view, the others lead.update
//! actions = ["list", "create", "delete"]
//!
//! [[resource.sub]]               # one route: methods + permission
//! name = "convert"
//! path = "convert/"
//! methods = ["POST"]
//! permission = "opportunity.create"
//! ```
//!
//! A hand-written `[[route]]` with the same method and path shape as an expanded one is a config
//! error naming both (two routes of equal specificity); to write one of a resource's routes by
//! hand, leave its action out of `actions`.
//!
//! Why one file (~850 lines, its tests in `resource/tests.rs`): a resource, its bulk routes and
//! its sub-routes resolve permissions, paths and record checks the same way, so the rules that
//! make an expanded route what it is are read in one place.

use std::collections::BTreeSet;
use std::ops::Range;

use toml::Spanned;

use super::raw::{
    RawActionPermissions, RawResource, RawResourceBulk, RawResourceSub, RawRoute, ResourceAction,
};
use super::{Access, Config};
use crate::catalog::Catalog;
use crate::error::{line_of, ConfigError};
use crate::ids::IdKind;
use crate::inspect::{RawBulk, RawList, RawRecordRef};

/// The five actions, in the order their routes are listed.
const ALL_ACTIONS: [ResourceAction; 5] = [
    ResourceAction::List,
    ResourceAction::Create,
    ResourceAction::Read,
    ResourceAction::Update,
    ResourceAction::Delete,
];

impl ResourceAction {
    fn name(self) -> &'static str {
        match self {
            ResourceAction::List => "list",
            ResourceAction::Create => "create",
            ResourceAction::Read => "read",
            ResourceAction::Update => "update",
            ResourceAction::Delete => "delete",
        }
    }

    /// The permission's last part under a `permission_group`.
    fn verb(self) -> &'static str {
        match self {
            ResourceAction::List | ResourceAction::Read => "view",
            ResourceAction::Create => "create",
            ResourceAction::Update => "update",
            ResourceAction::Delete => "delete",
        }
    }

    fn methods(self) -> &'static [&'static str] {
        match self {
            ResourceAction::List | ResourceAction::Read => &["GET"],
            ResourceAction::Create => &["POST"],
            ResourceAction::Update => &["PUT", "PATCH"],
            ResourceAction::Delete => &["DELETE"],
        }
    }

    /// On the item path (else on the collection path).
    fn on_item(self) -> bool {
        matches!(
            self,
            ResourceAction::Read | ResourceAction::Update | ResourceAction::Delete
        )
    }
}

impl RawActionPermissions {
    fn get(&self, a: ResourceAction) -> Option<&Spanned<String>> {
        match a {
            ResourceAction::List => self.list.as_ref(),
            ResourceAction::Create => self.create.as_ref(),
            ResourceAction::Read => self.read.as_ref(),
            ResourceAction::Update => self.update.as_ref(),
            ResourceAction::Delete => self.delete.as_ref(),
        }
    }
}

/// One route a resource expands to, ready for the route compile step.
pub(crate) struct Expanded {
    pub(crate) route: RawRoute,
    /// The line of the block it came from (the resource, or its sub or bulk entry).
    pub(crate) line: usize,
    /// For errors: `resource[0] (leads.read)`.
    pub(crate) field: String,
    /// The resource's name.
    pub(crate) resource: String,
}

/// A permission as resolved: its name and where it was written (for the error line).
#[derive(Clone)]
struct Perm {
    name: String,
    span: Range<usize>,
    /// The field it was written in: `resource[0].permission_group`.
    field: String,
    /// How it was found, for an error: `permission_group 'lead'`.
    how: String,
}

/// Where an action's permission comes from: explicit per-action names, then a group.
struct PermSource<'a> {
    /// The block's field: `resource[0]`, `resource[0].sub[1]`.
    field: String,
    explicit: Option<&'a RawActionPermissions>,
    group: Option<&'a Spanned<String>>,
}

impl PermSource<'_> {
    fn resolve(&self, a: ResourceAction) -> Option<Perm> {
        if let Some(p) = self.explicit.and_then(|e| e.get(a)) {
            return Some(Perm {
                name: p.get_ref().clone(),
                span: p.span(),
                field: format!("{}.permissions.{}", self.field, a.name()),
                how: format!("permissions.{}", a.name()),
            });
        }
        self.group.map(|g| Perm {
            name: format!("{}.{}", g.get_ref(), a.verb()),
            span: g.span(),
            field: format!("{}.permission_group", self.field),
            how: format!("permission_group '{}' + '{}'", g.get_ref(), a.verb()),
        })
    }
}

/// Errors of one resource, each at a line and a field.
struct Errs<'a> {
    file: &'a str,
    text: &'a str,
    out: &'a mut Vec<ConfigError>,
    count: usize,
}

impl Errs<'_> {
    /// One error (the same one twice is reported once: a group's unknown `view` is the
    /// list's and the read's).
    fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let e = ConfigError::new(
            self.file,
            Some(line_of(self.text, span.start)),
            field,
            message,
        );
        if !self.out.iter().any(|o| o.to_string() == e.to_string()) {
            self.out.push(e);
        }
        self.count += 1;
    }
}

/// A name part: `[a-z0-9_-]`, not empty.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `{<param>:uuid}` for `id = "uuid"`, and the kind it promises (for the record type check).
fn id_segment(param: &str, id: &str) -> Result<(String, Option<IdKind>), String> {
    match id {
        "uuid" => Ok((format!("{{{param}:uuid}}"), Some(IdKind::Uuid))),
        "int" => Ok((format!("{{{param}:int}}"), Some(IdKind::Integer))),
        _ => match id.strip_prefix("regex:") {
            Some("int" | "uuid") => Err(format!(
                "'{id}': write id = \"{}\"",
                id.trim_start_matches("regex:")
            )),
            Some(re) if !re.is_empty() && !re.contains('/') => {
                match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(_) if regex::Regex::new(re).is_ok() => {
                        Ok((format!("{{{param}:{re}}}"), None))
                    }
                    _ => Err(format!("'{re}' is not a regex that compiles")),
                }
            }
            Some(_) => Err(format!(
                "'{id}': the regex must be one path segment (not empty, no '/')"
            )),
            None => Err(format!(
                "'{id}' is not uuid, int or regex:<pattern> (a typed parameter: a segment that \
                 does not match, such as 'bulk', never reaches the item routes)"
            )),
        },
    }
}

/// `base` + `rel`, one `/` between them.
fn join(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

/// The item path under `collection`: `<collection>{param}` (+ `/` when the collection ends in
/// one, as Django REST spells both).
fn item_path(collection: &str, segment: &str) -> String {
    let mut p = join(collection, segment);
    if collection.ends_with('/') {
        p.push('/');
    }
    p
}

/// The actions asked for, each once (`None`: `default`).
fn actions(
    raw: Option<&Spanned<Vec<ResourceAction>>>,
    default: &[ResourceAction],
    field: &str,
    errs: &mut Errs<'_>,
) -> Vec<ResourceAction> {
    let Some(list) = raw else {
        return default.to_vec();
    };
    let mut seen = BTreeSet::new();
    for a in list.get_ref() {
        if !seen.insert(*a) {
            errs.at(
                list.span(),
                field,
                format!("'{}' is listed twice", a.name()),
            );
        }
    }
    ALL_ACTIONS
        .iter()
        .copied()
        .filter(|a| seen.contains(a))
        .collect()
}

/// A relative path under a collection or an item: `comments/`, not `/comments/`.
fn relative(p: &Spanned<String>, field: &str, under: &str, errs: &mut Errs<'_>) -> bool {
    let s = p.get_ref();
    if s.is_empty() || s.starts_with('/') || s.contains("{*") {
        errs.at(
            p.span(),
            field,
            format!(
                "'{s}': a path relative to the {under} path, e.g. 'comments/' (no leading '/', no catch-all)"
            ),
        );
        return false;
    }
    true
}

/// Expand every `[[resource]]` into routes. A resource with an error adds its errors and no
/// route (so one mistake is reported once, not once per route).
pub(crate) fn expand(
    file: &str,
    text: &str,
    resources: &[Spanned<RawResource>],
    catalog: Option<&Catalog>,
    errors: &mut Vec<ConfigError>,
) -> Vec<Expanded> {
    let mut out = Vec::new();
    let mut names: Vec<(&str, usize)> = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let mut errs = Errs {
            file,
            text,
            out: errors,
            count: 0,
        };
        let line = line_of(text, r.span().start);
        let res = r.get_ref();
        let field = format!("resource[{i}]");
        let name = res.name.get_ref().as_str();
        if !valid_name(name) {
            errs.at(
                res.name.span(),
                &format!("{field}.name"),
                format!("'{name}': lowercase letters, digits, '_' and '-' only"),
            );
        } else if let Some((_, other)) = names.iter().find(|(n, _)| *n == name) {
            errs.at(
                res.name.span(),
                &format!("{field}.name"),
                format!("resource '{name}' is also declared at {file}:{other}"),
            );
        }
        names.push((name, line));
        let routes = expand_one(res, &field, line, catalog, &mut errs);
        if errs.count == 0 {
            out.extend(routes.into_iter().map(|(route, line, field)| Expanded {
                route,
                line,
                field,
                resource: name.to_string(),
            }));
        }
    }
    out
}

/// One resource's routes as `(route, line, field)`; errors go to `errs`.
fn expand_one(
    res: &RawResource,
    field: &str,
    line: usize,
    catalog: Option<&Catalog>,
    errs: &mut Errs<'_>,
) -> Vec<(RawRoute, usize, String)> {
    let text = errs.text;
    let name = res.name.get_ref();
    let mut routes = Vec::new();

    // The collection and the item.
    let collection = res.path.get_ref();
    if !collection.starts_with('/') || collection.contains("{*") {
        errs.at(
            res.path.span(),
            &format!("{field}.path"),
            format!("'{collection}': the collection path starts with '/' and has no catch-all"),
        );
        return routes;
    }
    if collection
        .split('/')
        .any(|s| crate::routes::param_name(s) == Some("id"))
    {
        errs.at(
            res.path.span(),
            &format!("{field}.path"),
            format!(
                "'{collection}' has an '{{id}}' parameter: the item's id is the resource's own"
            ),
        );
        return routes;
    }
    let (segment, id_kind) = match id_segment("id", res.id.get_ref()) {
        Ok(s) => s,
        Err(e) => {
            errs.at(res.id.span(), &format!("{field}.id"), e);
            return routes;
        }
    };
    let item = item_path(collection, &segment);

    // The record type: declared, and of the id's kind.
    let record_type = res.record_type.as_ref().map(|t| t.get_ref().clone());
    if let (Some(t), Some(c)) = (&res.record_type, catalog) {
        let types = c.record_types();
        match types.get(t.get_ref()) {
            None => errs.at(
                t.span(),
                &format!("{field}.record_type"),
                format!(
                    "unknown record type '{}' (declare it as a [[record_type]])",
                    t.get_ref()
                ),
            ),
            Some(id) => {
                let kind = types.kind(id);
                let clash = matches!(
                    (id_kind, kind),
                    (Some(IdKind::Uuid), IdKind::Integer) | (Some(IdKind::Integer), IdKind::Uuid)
                );
                if clash {
                    errs.at(
                        res.id.span(),
                        &format!("{field}.id"),
                        format!(
                            "'{}' but record type '{}' has {} ids: every call would be invalid_record_id",
                            res.id.get_ref(),
                            t.get_ref(),
                            if kind == IdKind::Integer { "integer" } else { "uuid" }
                        ),
                    );
                }
            }
        }
    }
    let records = |unknown: &Option<Spanned<String>>| -> (Vec<RawRecordRef>, Option<String>) {
        match &record_type {
            Some(t) => (
                vec![RawRecordRef {
                    record_type: t.clone(),
                    id: "path:id".into(),
                    permission: None,
                }],
                unknown.as_ref().map(|u| u.get_ref().clone()),
            ),
            None => (Vec::new(), None),
        }
    };

    // Permissions: checked once here, so an unknown one is one error naming its source.
    let source = PermSource {
        field: field.to_string(),
        explicit: res.permissions.as_ref(),
        group: res.permission_group.as_ref(),
    };
    let mut check = |p: &Perm, errs: &mut Errs<'_>| -> bool {
        let known = catalog.is_none_or(|c| c.permission(&p.name).is_some());
        if !known {
            errs.at(
                p.span.clone(),
                &p.field,
                format!(
                    "unknown permission '{}' (from {}; not in the catalogue)",
                    p.name, p.how
                ),
            );
        }
        known
    };
    let spanned = |p: &Perm| Some(Spanned::new(p.span.clone(), p.name.clone()));
    if let Some(g) = &res.permission_group {
        if !crate::catalog::is_valid_id(g.get_ref()) {
            errs.at(
                g.span(),
                &format!("{field}.permission_group"),
                format!("'{}' is not a dotted lowercase id", g.get_ref()),
            );
            return routes;
        }
    }

    let acts = actions(
        res.actions.as_ref(),
        &ALL_ACTIONS,
        &format!("{field}.actions"),
        errs,
    );
    if acts.is_empty() && res.sub.is_empty() && res.bulk.is_empty() {
        errs.at(
            res.actions.as_ref().map_or(res.name.span(), |a| a.span()),
            &format!("{field}.actions"),
            "empty, and no bulk or sub-route: the resource would expand to nothing",
        );
    }
    for a in &acts {
        let Some(p) = source.resolve(*a) else {
            errs.at(
                res.name.span(),
                field,
                format!(
                    "action '{}' has no permission: set permission_group or permissions.{}",
                    a.name(),
                    a.name()
                ),
            );
            continue;
        };
        if !check(&p, errs) {
            continue;
        }
        let (recs, unknown) = if a.on_item() {
            records(&res.unknown_record)
        } else {
            (Vec::new(), None)
        };
        let list = match (a, &res.list) {
            (ResourceAction::List, Some(l)) => match &record_type {
                Some(t) => Some(RawList {
                    record_type: t.clone(),
                    items: l.get_ref().items.clone(),
                    item_id: l.get_ref().item_id.clone(),
                    counts: l.get_ref().counts.clone(),
                    max_bytes: l.get_ref().max_bytes,
                    permission: None,
                }),
                None => {
                    errs.at(
                        l.span(),
                        &format!("{field}.list"),
                        "list filtering needs the resource's record_type",
                    );
                    None
                }
            },
            _ => None,
        };
        routes.push((
            RawRoute {
                name: Some(format!("{name}.{}", a.name())),
                methods: a.methods().iter().map(|m| m.to_string()).collect(),
                path: Some(if a.on_item() {
                    item.clone()
                } else {
                    collection.clone()
                }),
                permission: spanned(&p),
                records: recs,
                unknown_record: unknown,
                list,
                ..RawRoute::default()
            },
            line,
            format!("{field} ({name}.{})", a.name()),
        ));
    }
    if let Some(l) = res
        .list
        .as_ref()
        .filter(|_| !acts.contains(&ResourceAction::List))
    {
        errs.at(
            l.span(),
            &format!("{field}.list"),
            "the resource has no 'list' action to filter",
        );
    }
    if let Some(u) = res
        .unknown_record
        .as_ref()
        .filter(|_| record_type.is_none())
    {
        errs.at(
            u.span(),
            &format!("{field}.unknown_record"),
            "needs the resource's record_type (no record is checked without one)",
        );
    }

    // Bulk routes under the collection.
    for (j, b) in res.bulk.iter().enumerate() {
        let bline = line_of(text, b.span().start);
        let bfield = format!("{field}.bulk[{j}]");
        if let Some(r) = bulk_route(
            b.get_ref(),
            &bfield,
            name,
            collection,
            record_type.as_deref(),
            &source,
            errs,
            &mut check,
        ) {
            let rname = r.name.clone().unwrap_or_default();
            routes.push((r, bline, format!("{bfield} ({rname})")));
        }
    }

    // Sub-routes under the item.
    for (k, s) in res.sub.iter().enumerate() {
        let sline = line_of(text, s.span().start);
        let sfield = format!("{field}.sub[{k}]");
        let sub = s.get_ref();
        let sname = sub.name.get_ref();
        if !valid_name(sname) {
            errs.at(
                sub.name.span(),
                &format!("{sfield}.name"),
                format!("'{sname}': lowercase letters, digits, '_' and '-' only"),
            );
            continue;
        }
        if !relative(&sub.path, &format!("{sfield}.path"), "item", errs) {
            continue;
        }
        let base = join(&item, sub.path.get_ref());
        let (recs, unknown) = records(&res.unknown_record);
        for (route, what) in sub_routes(sub, &sfield, name, &base, &source, errs, &mut check) {
            routes.push((
                RawRoute {
                    records: recs.clone(),
                    unknown_record: unknown.clone(),
                    ..route
                },
                sline,
                format!("{sfield} ({what})"),
            ));
        }
    }
    routes
}

/// One `bulk = [...]` entry as a route.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn bulk_route(
    b: &RawResourceBulk,
    field: &str,
    resource: &str,
    collection: &str,
    record_type: Option<&str>,
    source: &PermSource<'_>,
    errs: &mut Errs<'_>,
    check: &mut impl FnMut(&Perm, &mut Errs<'_>) -> bool,
) -> Option<RawRoute> {
    if !relative(&b.path, &format!("{field}.path"), "collection", errs) {
        return None;
    }
    let Some(record_type) = record_type else {
        errs.at(
            b.path.span(),
            field,
            "a bulk route trims by record: the resource needs a record_type",
        );
        return None;
    };
    let perm = match (&b.action, &b.permission) {
        (Some(a), None) => match source.resolve(*a) {
            Some(p) => p,
            None => {
                errs.at(
                    b.path.span(),
                    &format!("{field}.action"),
                    format!(
                        "action '{}' has no permission: set the resource's permission_group or permissions.{}",
                        a.name(),
                        a.name()
                    ),
                );
                return None;
            }
        },
        (None, Some(p)) => Perm {
            name: p.get_ref().clone(),
            span: p.span(),
            field: format!("{field}.permission"),
            how: "permission".into(),
        },
        _ => {
            errs.at(
                b.path.span(),
                field,
                "set exactly one of 'action' (its permission) or 'permission'",
            );
            return None;
        }
    };
    if !check(&perm, errs) {
        return None;
    }
    let last = match (&b.name, b.action) {
        (Some(n), _) if valid_name(n) => n.clone(),
        (Some(n), _) => {
            errs.at(
                b.path.span(),
                &format!("{field}.name"),
                format!("'{n}': lowercase letters, digits, '_' and '-' only"),
            );
            return None;
        }
        (None, Some(a)) => format!("bulk_{}", a.name()),
        (None, None) => {
            errs.at(
                b.path.span(),
                &format!("{field}.name"),
                "a bulk route with its own 'permission' needs a 'name'",
            );
            return None;
        }
    };
    // The body is the point of a bulk route: on DELETE (a method without one) it is forwarded.
    let allow_body = b
        .methods
        .iter()
        .any(|m| http::Method::from_bytes(m.as_bytes()).is_ok_and(|m| crate::canon::bodiless(&m)));
    Some(RawRoute {
        name: Some(format!("{resource}.{last}")),
        methods: b.methods.clone(),
        path: Some(join(collection, b.path.get_ref())),
        permission: Some(Spanned::new(perm.span.clone(), perm.name.clone())),
        bulk: Some(RawBulk {
            record_type: record_type.to_string(),
            items: b.items.clone(),
            item_id: b.item_id.clone(),
            mode: b.mode.clone(),
            duplicates: b.duplicates.clone(),
            permission: None,
            keys: b.keys.clone(),
        }),
        new_owner: b.new_owner.clone(),
        allow_body,
        ..RawRoute::default()
    })
}

/// A sub's routes (without the parent record check, which the caller adds) and their names.
fn sub_routes(
    sub: &RawResourceSub,
    field: &str,
    resource: &str,
    base: &str,
    parent: &PermSource<'_>,
    errs: &mut Errs<'_>,
    check: &mut impl FnMut(&Perm, &mut Errs<'_>) -> bool,
) -> Vec<(RawRoute, String)> {
    let sname = sub.name.get_ref();
    let prefix = format!("{resource}.{sname}");
    let collection_form = sub.id.is_some()
        || sub.actions.is_some()
        || sub.permission_group.is_some()
        || sub.permissions.is_some();
    match (&sub.methods, &sub.permission, collection_form) {
        // One route.
        (Some(methods), Some(p), false) => {
            let perm = Perm {
                name: p.get_ref().clone(),
                span: p.span(),
                field: format!("{field}.permission"),
                how: "permission".into(),
            };
            if !check(&perm, errs) {
                return Vec::new();
            }
            vec![(
                RawRoute {
                    name: Some(prefix.clone()),
                    methods: methods.clone(),
                    path: Some(base.to_string()),
                    permission: Some(Spanned::new(p.span(), p.get_ref().clone())),
                    ..RawRoute::default()
                },
                prefix,
            )]
        }
        // A sub-collection.
        (None, None, _) => {
            if let Some(g) = &sub.permission_group {
                if !crate::catalog::is_valid_id(g.get_ref()) {
                    errs.at(
                        g.span(),
                        &format!("{field}.permission_group"),
                        format!("'{}' is not a dotted lowercase id", g.get_ref()),
                    );
                    return Vec::new();
                }
            }
            let item = match &sub.id {
                None => None,
                Some(id) => {
                    match id_segment(&format!("{}_id", sname.replace('-', "_")), id.get_ref()) {
                        Ok((seg, _)) => Some(item_path(base, &seg)),
                        Err(e) => {
                            errs.at(id.span(), &format!("{field}.id"), e);
                            return Vec::new();
                        }
                    }
                }
            };
            let default: &[ResourceAction] = if item.is_some() {
                &ALL_ACTIONS
            } else {
                &[ResourceAction::List, ResourceAction::Create]
            };
            let acts = actions(
                sub.actions.as_ref(),
                default,
                &format!("{field}.actions"),
                errs,
            );
            let own = PermSource {
                field: field.to_string(),
                explicit: sub.permissions.as_ref(),
                group: sub.permission_group.as_ref(),
            };
            let mut out = Vec::new();
            for a in acts {
                if a.on_item() && item.is_none() {
                    errs.at(
                        sub.name.span(),
                        &format!("{field}.actions"),
                        format!("'{}' acts on one item: set the sub's 'id'", a.name()),
                    );
                    continue;
                }
                // Related objects follow their parent: seeing them is seeing the parent,
                // changing them is updating it (seed 004).
                let inherited = || {
                    let from = match a {
                        ResourceAction::List | ResourceAction::Read => ResourceAction::Read,
                        _ => ResourceAction::Update,
                    };
                    parent.resolve(from).map(|p| Perm {
                        how: format!("the parent's {} permission ({})", from.name(), p.how),
                        ..p
                    })
                };
                let Some(p) = own.resolve(a).or_else(inherited) else {
                    errs.at(
                        sub.name.span(),
                        field,
                        format!(
                            "action '{}' has no permission: set permission_group or permissions.{}",
                            a.name(),
                            a.name()
                        ),
                    );
                    continue;
                };
                if !check(&p, errs) {
                    continue;
                }
                let route_name = format!("{prefix}.{}", a.name());
                out.push((
                    RawRoute {
                        name: Some(route_name.clone()),
                        methods: a.methods().iter().map(|m| m.to_string()).collect(),
                        path: Some(match (&item, a.on_item()) {
                            (Some(i), true) => i.clone(),
                            _ => base.to_string(),
                        }),
                        permission: Some(Spanned::new(p.span.clone(), p.name.clone())),
                        ..RawRoute::default()
                    },
                    route_name,
                ));
            }
            out
        }
        _ => {
            errs.at(
                sub.name.span(),
                field,
                "either one route ('methods' and 'permission') or a sub-collection ('id', \
                 'actions', 'permission_group', 'permissions'), not both",
            );
            Vec::new()
        }
    }
}

/// `check-config`'s lines for the resources: each with the routes it expanded to.
pub fn summary(config: &Config) -> String {
    let routes = config.routes.routes();
    let mut order: Vec<(&str, &str)> = Vec::new();
    for r in routes {
        if let Some(name) = r.value.resource.as_deref() {
            if !order.iter().any(|(n, _)| *n == name) {
                order.push((name, r.origin.as_str()));
            }
        }
    }
    if order.is_empty() {
        return String::new();
    }
    let expanded = routes.iter().filter(|r| r.value.resource.is_some()).count();
    let mut s = format!(
        "  resources:   {} (expanded to {expanded} of the {} routes)\n",
        order.len(),
        routes.len()
    );
    for (name, origin) in order {
        let origin = origin.rsplit(" at ").next().unwrap_or(origin);
        s.push_str(&format!("    {name} ({origin}):\n"));
        let rows: Vec<[String; 4]> = routes
            .iter()
            .filter(|r| r.value.resource.as_deref() == Some(name))
            .map(|r| {
                let path = match &r.pattern {
                    crate::routes::PathPattern::Template(t) => t.clone(),
                    crate::routes::PathPattern::Regex { regex, .. } => regex.clone(),
                };
                let needs = match r.value.access {
                    Access::Public => "public".to_string(),
                    Access::Permission(p) => config.catalog.permission_name(p).to_string(),
                };
                let checks = match &r.value.inspect {
                    Some(i) if i.bulk.is_some() => ", trims bulk items",
                    Some(i) if i.list.is_some() => ", filters the list",
                    Some(i) if !i.records.is_empty() => ", checks the record",
                    _ => "",
                };
                [
                    r.methods.names().join(","),
                    path,
                    r.value.name.clone(),
                    format!("needs {needs}{checks}"),
                ]
            })
            .collect();
        let width = |k: usize| rows.iter().map(|r| r[k].len()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        for [methods, path, route, needs] in &rows {
            s.push_str(&format!(
                "      {methods:<w0$}  {path:<w1$}  {route:<w2$}  {needs}\n"
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests;
