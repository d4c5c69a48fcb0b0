//! The compiled route table: method + canonical path → route.
//!
//! Rules (also in the README):
//! - A **template** route (`/api/v1/campaigns/{id}`) is matched segment by segment against the
//!   canonical path. At each segment a literal beats a typed parameter (`{id:int}`: ASCII digits;
//!   `{id:uuid}`: 8-4-4-4-12 hex digits, either case; `{code:<regex>}`: the regex matches the
//!   whole segment), which beats an untyped `{param}`, which beats a trailing `{*rest}`
//!   catch-all; among typed parameters at one position `int` is tried before `uuid` (they never
//!   both match) before a regex (at most one regex parameter per position: two could overlap).
//!   The first segment where two matching templates differ decides, so the most specific route
//!   wins whatever the declaration order. A typed parameter that does not match lets the path
//!   fall through to the next candidate: `/cases/bulk/` never reaches `/cases/{id:uuid}/`.
//! - A **regex** route must match the whole canonical path (it is anchored for you). Regex routes
//!   are a fallback, tried only when no template matches, highest `priority` first.
//! - Two routes that could match the same request with equal specificity are a build error:
//!   templates of the same shape with overlapping methods, or regex routes of equal priority
//!   with overlapping methods (whether two regexes overlap is not decided; equal priority is
//!   refused outright).
//! - The path decides first: the most specific route *for the path* is chosen whatever its
//!   methods, then the method must be one it routes. `PUT /customers/bulk-delete` is denied
//!   when `bulk-delete` routes only POST, even if `PUT /customers/{id}` exists: a method is never
//!   passed down to a less specific route (legacy handlers often ignore the method).
//! - No match: `None` — the caller denies (deny by default).
//!
//! Matching walks a segment trie (a few literal children compared in turn, more in a hash map),
//! so its cost grows with the path's depth, not with the number of routes.

use std::collections::HashMap;

use crate::hash::KeyedState;

use regex::Regex;

/// HTTP methods a route may name.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A set of methods as a bitmask over [`METHODS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u8);

impl MethodSet {
    pub fn parse(names: &[impl AsRef<str>]) -> Result<MethodSet, String> {
        if names.is_empty() {
            return Err("a route needs at least one method".into());
        }
        let mut bits = 0u8;
        for name in names {
            let name = name.as_ref();
            match METHODS.iter().position(|m| *m == name) {
                Some(i) => bits |= 1 << i,
                None => {
                    return Err(format!(
                        "unknown method '{name}' (one of {})",
                        METHODS.join(", ")
                    ))
                }
            }
        }
        Ok(MethodSet(bits))
    }

    /// The bit of one request method; `None` for a method no route can name.
    pub fn of(method: &http::Method) -> Option<MethodSet> {
        METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .map(|i| MethodSet(1 << i))
    }

    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

/// Where a route's path pattern comes from.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `/api/v1/campaigns/{id}`: literal segments, `{name}` parameters, a final `{*name}`.
    Template(String),
    /// A regex matched against the whole canonical path.
    Regex { regex: String, priority: i32 },
}

/// One route as given to [`RouteTable::build`].
#[derive(Debug, Clone)]
pub struct RouteSpec<T> {
    pub methods: MethodSet,
    pub pattern: PathPattern,
    /// Where the route was declared (for errors): e.g. `permgate.toml:42`.
    pub origin: String,
    /// What the route maps to (permission, name, …); the table does not look inside.
    pub value: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    Param,
    Typed(ParamType),
    CatchAll,
}

/// What a typed parameter accepts.
#[derive(Debug, Clone)]
enum ParamType {
    Int,
    Uuid,
    /// The source (what makes two the same) and the anchored regex.
    Regex(String, Regex),
}

impl PartialEq for ParamType {
    fn eq(&self, other: &Self) -> bool {
        self.order_key() == other.order_key()
    }
}
impl Eq for ParamType {}

impl ParamType {
    /// The order typed parameters are tried in at one position, and their identity.
    fn order_key(&self) -> (u8, &str) {
        match self {
            ParamType::Int => (0, ""),
            ParamType::Uuid => (1, ""),
            ParamType::Regex(src, _) => (2, src),
        }
    }

    fn matches(&self, seg: &str) -> bool {
        match self {
            ParamType::Int => !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()),
            ParamType::Uuid => {
                seg.len() == 36
                    && seg.bytes().enumerate().all(|(i, b)| match i {
                        8 | 13 | 18 | 23 => b == b'-',
                        _ => b.is_ascii_hexdigit(),
                    })
            }
            ParamType::Regex(_, re) => re.is_match(seg),
        }
    }
}

/// The name of a template segment's parameter: `id` for `{id}`, `{id:uuid}` or `{*id}`.
pub fn param_name(segment: &str) -> Option<&str> {
    let inner = segment.strip_prefix('{')?.strip_suffix('}')?;
    let inner = inner.strip_prefix('*').unwrap_or(inner);
    Some(inner.split_once(':').map_or(inner, |(name, _)| name))
}

/// Whether `/a/` and `/a` name the same route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrailingSlash {
    /// They are different paths (a template ending in `/` matches only the slashed form).
    #[default]
    Strict,
    /// One trailing slash is ignored when matching (the path is forwarded as sent).
    Either,
}

#[derive(Debug, Default)]
struct Node {
    literal: Literals,
    /// Typed parameters, in [`ParamType::order_key`] order.
    typed: Vec<(ParamType, Node)>,
    param: Option<Box<Node>>,
    /// Routes ending in `{*rest}` here: match one or more remaining segments.
    catch_all: Vec<(MethodSet, usize)>,
    /// Routes ending exactly here.
    terminal: Vec<(MethodSet, usize)>,
}

/// A node's literal children: a few compared in turn (most nodes: `api`, `v1`), many in a
/// hash map keyed at random per table (lookups are client paths; the keys come from the config).
#[derive(Debug)]
enum Literals {
    Few(Vec<(Box<str>, Node)>),
    Many(HashMap<Box<str>, Node, KeyedState>),
}

impl Default for Literals {
    fn default() -> Self {
        Literals::Few(Vec::new())
    }
}

impl Literals {
    /// Up to this many children are compared in turn.
    const FEW: usize = 8;

    fn get(&self, seg: &str) -> Option<&Node> {
        match self {
            Literals::Few(v) => v.iter().find(|(k, _)| **k == *seg).map(|(_, n)| n),
            Literals::Many(m) => m.get(seg),
        }
    }

    /// The child for `seg`, added if missing.
    fn entry(&mut self, seg: &str) -> &mut Node {
        if let Literals::Few(v) = self {
            if v.len() >= Self::FEW && !v.iter().any(|(k, _)| **k == *seg) {
                let many = std::mem::take(v).into_iter().collect();
                *self = Literals::Many(many);
            }
        }
        match self {
            Literals::Few(v) => {
                let i = match v.iter().position(|(k, _)| **k == *seg) {
                    Some(i) => i,
                    None => {
                        v.push((seg.into(), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Literals::Many(m) => m.entry(seg.into()).or_default(),
        }
    }
}

/// A compiled route table.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<RouteSpec<T>>,
    root: Node,
    /// Regex routes, highest priority first: (regex, methods, route index, priority).
    regexes: Vec<(Regex, MethodSet, usize, i32)>,
    trailing_slash: TrailingSlash,
}

fn parse_template(t: &str, trailing_slash: TrailingSlash) -> Result<Vec<Seg>, String> {
    let Some(rest) = t.strip_prefix('/') else {
        return Err(format!("path template '{t}' must start with '/'"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segs = Vec::new();
    let parts: Vec<&str> = rest.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (catch_all, inner) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            let (name, kind) = match inner.split_once(':') {
                Some((n, k)) => (n, Some(k)),
                None => (inner, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad parameter '{part}' in '{t}'"));
            }
            if catch_all && !last {
                return Err(format!(
                    "catch-all '{part}' must be the last segment of '{t}'"
                ));
            }
            let seg = match (catch_all, kind) {
                (true, Some(_)) => {
                    return Err(format!("catch-all '{part}' in '{t}' cannot have a type"))
                }
                (true, None) => Seg::CatchAll,
                (false, None) => Seg::Param,
                (false, Some("int")) => Seg::Typed(ParamType::Int),
                (false, Some("uuid")) => Seg::Typed(ParamType::Uuid),
                (false, Some("")) => {
                    return Err(format!("parameter '{part}' in '{t}' has an empty type"))
                }
                (false, Some(re)) => match Regex::new(&format!("^(?:{re})$")) {
                    Ok(r) if Regex::new(re).is_ok() => Seg::Typed(ParamType::Regex(re.into(), r)),
                    _ => {
                        return Err(format!(
                            "parameter '{part}' in '{t}': '{re}' is not int, uuid or a regex that compiles"
                        ))
                    }
                },
            };
            segs.push(seg);
        } else if part.is_empty() {
            if !last {
                return Err(format!("empty segment ('//') in '{t}'"));
            }
            // A trailing slash: a literal empty segment in strict mode, dropped otherwise.
            if trailing_slash == TrailingSlash::Strict {
                segs.push(Seg::Literal(String::new()));
            }
        } else {
            // A literal must already be in canonical form, or it could never match.
            match crate::canon::canonicalize_target(format!("/{part}").as_bytes()) {
                Ok(c) if c.path == format!("/{part}") && c.query.is_none() => {}
                _ => {
                    return Err(format!(
                        "segment '{part}' of '{t}' is not in canonical form (see the README's path rules)"
                    ))
                }
            }
            if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "segment '{part}' of '{t}' mixes text and a parameter; use a regex route"
                ));
            }
            segs.push(Seg::Literal((*part).to_string()));
        }
    }
    Ok(segs)
}

impl<T> RouteTable<T> {
    /// Compile routes. Every problem is reported, each naming the route's origin.
    pub fn build(
        routes: Vec<RouteSpec<T>>,
        trailing_slash: TrailingSlash,
    ) -> Result<RouteTable<T>, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut root = Node::default();
        let mut regexes: Vec<(Regex, MethodSet, usize, i32)> = Vec::new();
        for (idx, route) in routes.iter().enumerate() {
            match &route.pattern {
                PathPattern::Template(t) => {
                    let segs = match parse_template(t, trailing_slash) {
                        Ok(s) => s,
                        Err(e) => {
                            errors.push((route.origin.clone(), e));
                            continue;
                        }
                    };
                    let mut node = &mut root;
                    let mut catch_all = false;
                    let mut clash = None;
                    for seg in &segs {
                        node = match seg {
                            Seg::Literal(l) => node.literal.entry(l),
                            Seg::Param => node.param.get_or_insert_with(Default::default),
                            Seg::Typed(ty) => {
                                // Two regex parameters at one position could both match: which
                                // wins would depend on the declaration order.
                                if let ParamType::Regex(src, _) = ty {
                                    if let Some((ParamType::Regex(other, _), _)) = node
                                        .typed
                                        .iter()
                                        .find(|(t, _)| matches!(t, ParamType::Regex(s, _) if s != src))
                                    {
                                        clash = Some(format!(
                                            "route '{t}': a second regex parameter ('{src}' beside '{other}') at the same position; use one regex, or a regex route"
                                        ));
                                        break;
                                    }
                                }
                                let i = match node.typed.iter().position(|(t, _)| t == ty) {
                                    Some(i) => i,
                                    None => {
                                        let at = node
                                            .typed
                                            .iter()
                                            .position(|(t, _)| t.order_key() > ty.order_key())
                                            .unwrap_or(node.typed.len());
                                        node.typed.insert(at, (ty.clone(), Node::default()));
                                        at
                                    }
                                };
                                &mut node.typed[i].1
                            }
                            Seg::CatchAll => {
                                catch_all = true;
                                break;
                            }
                        };
                    }
                    if let Some(e) = clash {
                        errors.push((route.origin.clone(), e));
                        continue;
                    }
                    let slot = if catch_all {
                        &mut node.catch_all
                    } else {
                        &mut node.terminal
                    };
                    if let Some((_, other)) = slot.iter().find(|(m, _)| m.overlaps(route.methods)) {
                        errors.push((
                            route.origin.clone(),
                            format!(
                                "route '{t}' conflicts with the route at {}: same shape and an overlapping method, so neither is more specific",
                                routes[*other].origin
                            ),
                        ));
                        continue;
                    }
                    slot.push((route.methods, idx));
                }
                PathPattern::Regex { regex, priority } => {
                    // Compile the user's regex alone first, so `a)|(.*` cannot escape the anchors.
                    if let Err(e) = Regex::new(regex) {
                        errors.push((route.origin.clone(), format!("regex does not compile: {e}")));
                        continue;
                    }
                    let re = match Regex::new(&format!("^(?:{regex})$")) {
                        Ok(r) => r,
                        Err(e) => {
                            errors.push((
                                route.origin.clone(),
                                format!("regex does not compile: {e}"),
                            ));
                            continue;
                        }
                    };
                    if let Some((_, _, other, _)) = regexes
                        .iter()
                        .find(|(_, m, _, p)| p == priority && m.overlaps(route.methods))
                    {
                        errors.push((
                            route.origin.clone(),
                            format!(
                                "regex route conflicts with the regex route at {}: equal priority {priority} and an overlapping method; give one a higher priority",
                                routes[*other].origin
                            ),
                        ));
                        continue;
                    }
                    regexes.push((re, route.methods, idx, *priority));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        regexes.sort_by_key(|r| std::cmp::Reverse(r.3));
        Ok(RouteTable {
            routes,
            root,
            regexes,
            trailing_slash,
        })
    }

    /// The most specific route for this method and canonical path, or `None` (deny).
    pub fn find(&self, method: &http::Method, path: &str) -> Option<&RouteSpec<T>> {
        self.find_index(method, path).map(|i| &self.routes[i])
    }

    /// Like [`RouteTable::find`], giving the route's index in [`RouteTable::routes`].
    pub fn find_index(&self, method: &http::Method, path: &str) -> Option<usize> {
        let m = MethodSet::of(method)?;
        let mut p = path.strip_prefix('/')?;
        if self.trailing_slash == TrailingSlash::Either {
            p = p.strip_suffix('/').unwrap_or(p);
        }
        let slot = find_in(&self.root, (!p.is_empty()).then_some(p));
        if let Some(slot) = slot {
            // The most specific path decides; a method it does not route is denied, never
            // passed down to a less specific route.
            return slot.iter().find(|(ms, _)| ms.overlaps(m)).map(|(_, i)| *i);
        }
        let first = self
            .regexes
            .iter()
            .find(|(re, _, _, _)| re.is_match(path))?;
        let priority = first.3;
        self.regexes
            .iter()
            .skip_while(|r| r.3 > priority)
            .take_while(|r| r.3 == priority)
            .find(|(re, methods, _, _)| methods.overlaps(m) && re.is_match(path))
            .map(|(_, _, i, _)| *i)
    }

    pub fn routes(&self) -> &[RouteSpec<T>] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The routes of the most specific template matching this path, whatever their methods:
/// the first non-empty slot in literal → param → catch-all order.
/// `segs` is the rest of the path without its leading `/` (`None`: no segment left; `""`
/// is one empty segment), split as `str::split('/')` would, one segment at a time.
fn find_in<'n>(node: &'n Node, segs: Option<&str>) -> Option<&'n [(MethodSet, usize)]> {
    let Some(segs) = segs else {
        return (!node.terminal.is_empty()).then_some(node.terminal.as_slice());
    };
    let (first, rest) = match segs.bytes().position(|b| b == b'/') {
        Some(i) => (&segs[..i], segs.get(i + 1..)),
        None => (segs, None),
    };
    if let Some(child) = node.literal.get(first) {
        if let Some(found) = find_in(child, rest) {
            return Some(found);
        }
    }
    // A parameter never matches an empty segment (a trailing slash or an empty path part).
    if !first.is_empty() {
        for (ty, child) in &node.typed {
            if ty.matches(first) {
                if let Some(found) = find_in(child, rest) {
                    return Some(found);
                }
            }
        }
        if let Some(child) = &node.param {
            if let Some(found) = find_in(child, rest) {
                return Some(found);
            }
        }
        if !node.catch_all.is_empty() {
            return Some(node.catch_all.as_slice());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    fn spec(methods: &[&str], t: &str, v: &'static str) -> RouteSpec<&'static str> {
        RouteSpec {
            methods: MethodSet::parse(methods).unwrap(),
            pattern: PathPattern::Template(t.into()),
            origin: format!("test:{v}"),
            value: v,
        }
    }

    fn regex(methods: &[&str], r: &str, priority: i32, v: &'static str) -> RouteSpec<&'static str> {
        RouteSpec {
            methods: MethodSet::parse(methods).unwrap(),
            pattern: PathPattern::Regex {
                regex: r.into(),
                priority,
            },
            origin: format!("test:{v}"),
            value: v,
        }
    }

    fn table(routes: Vec<RouteSpec<&'static str>>) -> RouteTable<&'static str> {
        RouteTable::build(routes, TrailingSlash::Strict).unwrap()
    }

    fn find(t: &RouteTable<&'static str>, m: &str, p: &str) -> Option<&'static str> {
        t.find(&Method::from_bytes(m.as_bytes()).unwrap(), p)
            .map(|r| r.value)
    }

    #[test]
    fn most_specific_wins() {
        let t = table(vec![
            spec(&["GET"], "/api/{*rest}", "catchall"),
            spec(&["GET"], "/api/v1/campaigns/{id}", "param"),
            spec(&["GET"], "/api/v1/campaigns/stats", "literal"),
            spec(&["DELETE"], "/api/v1/campaigns/{id}", "delete"),
            regex(&["GET"], r"/api/v1/reports/\d+", 0, "regex"),
        ]);
        assert_eq!(find(&t, "GET", "/api/v1/campaigns/stats"), Some("literal"));
        assert_eq!(find(&t, "GET", "/api/v1/campaigns/7"), Some("param"));
        // The literal path decides; it routes only GET, so DELETE is denied rather than passed
        // down to the {id} route.
        assert_eq!(find(&t, "DELETE", "/api/v1/campaigns/stats"), None);
        assert_eq!(find(&t, "DELETE", "/api/v1/campaigns/8"), Some("delete"));
        // Same for a catch-all below a more specific path: POST /api/v1/campaigns/7 is not
        // routed by the {id} routes, and the catch-all (GET only anyway) is never consulted.
        assert_eq!(find(&t, "GET", "/api/v1/other"), Some("catchall"));
        // The catch-all template wins over a regex: regexes are the fallback.
        assert_eq!(find(&t, "GET", "/api/v1/reports/9"), Some("catchall"));
        assert_eq!(find(&t, "POST", "/api/v1/campaigns/7"), None);
        assert_eq!(find(&t, "GET", "/other"), None);
        assert_eq!(find(&t, "GET", "/api"), None, "a catch-all needs a segment");
        assert_eq!(find(&t, "TRACE", "/api/x"), None);
    }

    /// Typed parameters: literal > int > uuid > regex > untyped > catch-all at each position; a
    /// typed parameter that does not match falls through (`/cases/bulk/` is not a case id).
    #[test]
    fn typed_parameters() {
        let t = table(vec![
            spec(&["GET", "PUT"], "/cases/{id:uuid}", "case"),
            spec(&["GET"], "/cases/{n:int}", "number"),
            spec(&["GET"], "/cases/{code:[A-Z]{3}}", "code"),
            spec(&["POST"], "/cases/bulk", "bulk"),
            spec(&["GET"], "/cases/{other}", "untyped"),
            spec(&["GET"], "/cases/{id:uuid}/notes", "notes"),
            spec(&["GET"], "/files/{*rest}", "files"),
            spec(&["GET"], "/files/{id:int}", "file"),
        ]);
        let uuid = "/cases/0e2a3f0c-8a1b-4c2d-9e3f-a1b2c3d4e5f6";
        assert_eq!(find(&t, "GET", uuid), Some("case"));
        assert_eq!(
            find(&t, "GET", &uuid.to_uppercase().replace("/CASES", "/cases")),
            Some("case")
        );
        assert_eq!(find(&t, "PUT", uuid), Some("case"));
        assert_eq!(find(&t, "GET", &format!("{uuid}/notes")), Some("notes"));
        assert_eq!(find(&t, "GET", "/cases/42"), Some("number"));
        assert_eq!(find(&t, "GET", "/cases/ABC"), Some("code"));
        assert_eq!(find(&t, "GET", "/cases/ABCD"), Some("untyped"));
        // The literal decides for its path: a GET there is not passed to a parameter route.
        assert_eq!(find(&t, "GET", "/cases/bulk"), None);
        assert_eq!(find(&t, "POST", "/cases/bulk"), Some("bulk"));
        // Not a uuid (wrong shape, braces): the untyped route, never the uuid one.
        assert_eq!(
            find(&t, "PUT", "/cases/0e2a3f0c8a1b4c2d9e3fa1b2c3d4e5f6"),
            None
        );
        assert_eq!(
            find(&t, "GET", "/cases/0e2a3f0c8a1b4c2d9e3fa1b2c3d4e5f6"),
            Some("untyped")
        );
        assert_eq!(find(&t, "GET", "/files/7"), Some("file"));
        assert_eq!(find(&t, "GET", "/files/x"), Some("files"));
        // Declared in another order: the same answers.
        let mut routes = vec![
            spec(&["GET"], "/cases/{other}", "untyped"),
            spec(&["GET"], "/cases/{code:[A-Z]{3}}", "code"),
            spec(&["GET"], "/cases/{n:int}", "number"),
            spec(&["GET", "PUT"], "/cases/{id:uuid}", "case"),
        ];
        let t2 = table(std::mem::take(&mut routes));
        assert_eq!(find(&t2, "GET", "/cases/42"), Some("number"));
        assert_eq!(find(&t2, "GET", uuid), Some("case"));
        assert_eq!(find(&t2, "GET", "/cases/ABC"), Some("code"));
        // Two regex parameters at one position, a typed catch-all, a bad type: build errors.
        for bad in [
            vec![
                spec(&["GET"], "/a/{x:[a-z]+}", "1"),
                spec(&["PUT"], "/a/{y:[0-9a-z]+}", "2"),
            ],
            vec![spec(&["GET"], "/a/{*x:int}", "1")],
            vec![spec(&["GET"], "/a/{x:(}", "1")],
            vec![spec(&["GET"], "/a/{x:}", "1")],
        ] {
            assert!(RouteTable::build(bad, TrailingSlash::Strict).is_err());
        }
        // Same type and shape, overlapping methods: a conflict, as for untyped parameters.
        assert!(RouteTable::build(
            vec![
                spec(&["GET"], "/a/{x:int}", "1"),
                spec(&["GET"], "/a/{y:int}", "2"),
            ],
            TrailingSlash::Strict
        )
        .is_err());
        assert_eq!(param_name("{id:uuid}"), Some("id"));
        assert_eq!(param_name("{*rest}"), Some("rest"));
        assert_eq!(param_name("id"), None);
    }

    #[test]
    fn regex_is_anchored_and_ordered_by_priority() {
        let t = table(vec![
            regex(&["GET"], r"/r/\d+", 1, "digits"),
            regex(&["GET"], r"/r/.+", 0, "any"),
        ]);
        assert_eq!(find(&t, "GET", "/r/12"), Some("digits"));
        assert_eq!(find(&t, "GET", "/r/ab"), Some("any"));
        assert_eq!(find(&t, "GET", "/x/r/12"), None);
    }

    #[test]
    fn conflicts_are_build_errors() {
        let e = RouteTable::build(
            vec![
                spec(&["GET", "PUT"], "/a/{id}", "one"),
                spec(&["PUT"], "/a/{other}", "two"),
            ],
            TrailingSlash::Strict,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].0.contains("two") && e[0].1.contains("test:one"),
            "{e:?}"
        );
        let e = RouteTable::build(
            vec![regex(&["GET"], "/a", 0, "x"), regex(&["GET"], "/b", 0, "y")],
            TrailingSlash::Strict,
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        let e = RouteTable::build(vec![regex(&["GET"], "/a(", 0, "x")], TrailingSlash::Strict)
            .unwrap_err();
        assert!(e[0].1.contains("regex"));
        // Different methods on the same shape are fine.
        assert!(RouteTable::build(
            vec![
                spec(&["GET"], "/a/{id}", "g"),
                spec(&["DELETE"], "/a/{id}", "d")
            ],
            TrailingSlash::Strict
        )
        .is_ok());
    }

    #[test]
    fn bad_templates_are_errors() {
        for t in [
            "a/b",
            "/a//b",
            "/a/{*rest}/b",
            "/a/{}",
            "/a/x{id}",
            "/a/%2e%2e",
            "/a/../b",
            "/a/%61",
        ] {
            assert!(
                RouteTable::build(vec![spec(&["GET"], t, "x")], TrailingSlash::Strict).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn trailing_slash_policy() {
        let strict = table(vec![spec(&["GET"], "/a/b", "x")]);
        assert_eq!(find(&strict, "GET", "/a/b/"), None);
        assert_eq!(find(&strict, "GET", "/a/b"), Some("x"));
        let either =
            RouteTable::build(vec![spec(&["GET"], "/a/b", "x")], TrailingSlash::Either).unwrap();
        assert_eq!(find(&either, "GET", "/a/b/"), Some("x"));
        assert_eq!(find(&either, "GET", "/a/b"), Some("x"));
        assert_eq!(find(&either, "GET", "/a/b//"), None);
        // A parameter never matches an empty segment.
        let p = table(vec![spec(&["GET"], "/a/{id}", "x")]);
        assert_eq!(find(&p, "GET", "/a/"), None);
    }

    #[test]
    fn root_route() {
        let t = table(vec![spec(&["GET"], "/", "root")]);
        assert_eq!(find(&t, "GET", "/"), Some("root"));
        assert_eq!(find(&t, "GET", "/x"), None);
    }

    // ---- properties -------------------------------------------------------------------------

    /// A naive oracle: does template `t` match `path`, and with which specificity key.
    fn naive(t: &str, path: &str) -> Option<Vec<u8>> {
        let tsegs: Vec<&str> = t[1..].split('/').collect();
        let psegs: Vec<&str> = path[1..].split('/').collect();
        let mut key = Vec::new();
        for (i, ts) in tsegs.iter().enumerate() {
            if ts.starts_with("{*") {
                if psegs.len() <= i
                    || psegs[i..].iter().all(|s| s.is_empty())
                    || psegs[i].is_empty()
                {
                    return None;
                }
                key.push(0);
                return Some(key);
            }
            let ps = psegs.get(i)?;
            if ts.starts_with('{') {
                if ps.is_empty() {
                    return None;
                }
                key.push(1);
            } else if ts == ps {
                key.push(2);
            } else {
                return None;
            }
        }
        (psegs.len() == tsegs.len()).then_some(key)
    }

    fn template() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("{id}".to_string()),
        ];
        (prop::collection::vec(seg, 1..4), any::<bool>()).prop_map(|(segs, catch)| {
            let mut t = format!("/{}", segs.join("/"));
            if catch {
                t.push_str("/{*rest}");
            }
            t
        })
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..6)
            .prop_map(|s| format!("/{}", s.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The trie agrees with a brute-force oracle — the matching template with the highest
        /// specificity key decides, then its method must match — whatever the declaration
        /// order; nothing is found where no route matches (deny by default), and a method is
        /// never passed down to a less specific route.
        #[test]
        fn most_specific_wins_whatever_the_order(
            templates in prop::collection::vec((template(), any::<bool>()), 1..8),
            paths in prop::collection::vec(path(), 1..8),
            seed in any::<u64>(),
        ) {
            let mut uniq: Vec<(String, &'static str)> = Vec::new();
            for (t, post) in templates {
                // Same-shape duplicates would be a (tested) conflict; keep one of each shape.
                let shape = t.replace("{id}", "{}");
                if !uniq.iter().any(|(u, _)| u.replace("{id}", "{}") == shape) {
                    uniq.push((t, if post { "POST" } else { "GET" }));
                }
            }
            let names: Vec<(&'static str, &'static str)> = uniq
                .iter()
                .map(|(t, m)| (&*Box::leak(t.clone().into_boxed_str()), *m))
                .collect();
            let mk = |order: &[usize]| {
                table(order.iter().map(|&i| spec(&[names[i].1], names[i].0, names[i].0)).collect())
            };
            let forward: Vec<usize> = (0..names.len()).collect();
            let mut shuffled = forward.clone();
            fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
            let (t1, t2) = (mk(&forward), mk(&shuffled));
            for p in &paths {
                let best = names
                    .iter()
                    .filter_map(|(n, m)| naive(n, p).map(|k| (k, *n, *m)))
                    .max_by(|a, b| a.0.cmp(&b.0));
                for method in ["GET", "POST"] {
                    let expected = best.as_ref().filter(|b| b.2 == method).map(|b| b.1);
                    prop_assert_eq!(find(&t1, method, p), expected, "{} {}", method, p);
                    prop_assert_eq!(find(&t2, method, p), expected, "{} {} (shuffled)", method, p);
                }
                prop_assert_eq!(find(&t1, "DELETE", p), None);
            }
        }
    }
}
