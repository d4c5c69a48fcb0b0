//! Routing and handlers for `/api/v1/...`.
//!
//! Why one file (~1,400 lines): the sample CRM's whole REST surface, one handler per endpoint, read
//! like a legacy app's routes file; it is test and demo code, never on the gateway's path.
//!
//! Handlers are synchronous: all data is in memory, so a request takes the store lock, does its
//! work and returns a [`Reply`]; the async shell in the parent module does the I/O. Every error
//! is a `Reply` too (`Err` only to use `?`), so nothing on this path can panic or escape as a
//! transport error.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

use super::seed::{INTEGRATIONS, SETTINGS_SECTIONS};
use super::store::{now_iso, parse_int_id, str_field, Coll, Record, RecordId, Store};
use super::USER_HEADER;

/// The parts of a request a handler may look at.
pub(crate) struct Ctx<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a [u8],
}

/// A response to be serialized: a status, an optional JSON body and, for 405, the `Allow` list.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Option<Value>,
    pub(crate) allow: Option<&'static str>,
}

impl Reply {
    fn with(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            allow: None,
        }
    }

    pub(crate) fn ok(body: Value) -> Reply {
        Reply::with(StatusCode::OK, body)
    }

    fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            allow: None,
        }
    }

    /// The CRM's error shape: `{"error": code, "message": text}`.
    pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
        Reply::with(status, json!({"error": code, "message": message.into()}))
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Reply {
        Reply::error(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn bad_request(code: &str, message: impl Into<String>) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn method_not_allowed(method: &Method, allow: &'static str) -> Reply {
        let mut reply = Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed here (allowed: {allow})"),
        );
        reply.allow = Some(allow);
        reply
    }
}

type Res = Result<Reply, Reply>;

const MAX_PER_PAGE: usize = 200;
const DEFAULT_PER_PAGE: usize = 25;
/// Query parameters that filter collection listings by equality on the field of that name.
const FILTER_KEYS: [&str; 7] = [
    "owner_id",
    "assignee_id",
    "created_by",
    "status",
    "stage",
    "kind",
    "customer_id",
];
/// Cap on search hits per kind, like a real search box.
const SEARCH_LIMIT: usize = 50;

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Locks for reading; a poisoned lock is still usable (handlers do not panic, and a half-applied
/// mutation in a test fixture is better served than turned into a crash loop).
fn read(store: &RwLock<Store>) -> RwLockReadGuard<'_, Store> {
    store.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(store: &RwLock<Store>) -> RwLockWriteGuard<'_, Store> {
    store.write().unwrap_or_else(PoisonError::into_inner)
}

/// `Ok` when the method is in `allow` (a `"GET, POST"` list; HEAD rides on GET), else 405.
pub(crate) fn only(method: &Method, allow: &'static str) -> Result<(), Reply> {
    let name = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    if allow.split(", ").any(|m| m == name) {
        Ok(())
    } else {
        Err(Reply::method_not_allowed(method, allow))
    }
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// The body as a JSON object. An empty body counts as `{}` so that bodiless actions
/// (`POST .../close`) work; anything unparsable is a 400.
fn json_body(ctx: &Ctx<'_>) -> Result<Record, Reply> {
    if ctx.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(ctx.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Reply::bad_request(
            "invalid_body",
            "request body must be a JSON object",
        )),
        Err(e) => Err(Reply::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// The caller as the gateway asserts it (`x-permgate-user`), if any.
fn acting_user<'a>(ctx: &Ctx<'a>) -> Option<&'a str> {
    ctx.headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn opt_str(value: Option<&str>) -> Value {
    value.map_or(Value::Null, Value::from)
}

/// Decodes `%XX` escapes (invalid escapes stay literal; bad UTF-8 becomes U+FFFD). With
/// `plus_as_space`, `+` means a space, as in form-encoded query strings.
pub(crate) fn percent_decode(input: &str, plus_as_space: bool) -> Cow<'_, str> {
    let needs_decoding = input.contains('%') || (plus_as_space && input.contains('+'));
    if !needs_decoding {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(if plus_as_space && b == b'+' { b' ' } else { b });
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The first value of query parameter `key`, decoded.
fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<Cow<'a, str>> {
    query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true) == key).then(|| percent_decode(v, true))
        })
}

struct Page {
    page: usize,
    per_page: usize,
}

impl Page {
    fn from_query(query: Option<&str>) -> Result<Page, Reply> {
        let page = parse_page_param(query, "page", 1, usize::MAX)?;
        let per_page = parse_page_param(query, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
        Ok(Page { page, per_page })
    }

    fn offset(&self) -> usize {
        (self.page - 1).saturating_mul(self.per_page)
    }

    /// Clones the records of this page out of `records` into a list envelope; `total` counts
    /// every record, so one pass serves both filtered and unfiltered listings.
    fn envelope<'r>(&self, records: impl Iterator<Item = &'r Record>) -> Value {
        let start = self.offset();
        let end = start.saturating_add(self.per_page);
        let mut items = Vec::with_capacity(self.per_page.min(64));
        let mut total = 0usize;
        for record in records {
            if (start..end).contains(&total) {
                items.push(Value::Object(record.clone()));
            }
            total += 1;
        }
        json!({"items": items, "page": self.page, "per_page": self.per_page, "total": total})
    }
}

/// A positive integer no larger than `max`; absent means `default`, anything else is a 400.
fn parse_page_param(
    query: Option<&str>,
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, Reply> {
    let Some(raw) = query_param(query, key) else {
        return Ok(default);
    };
    parse_int_id(&raw)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n >= 1 && n <= max)
        .ok_or_else(|| {
            Reply::bad_request(
                "invalid_pagination",
                format!("{key} must be an integer between 1 and {max}, got {raw:?}"),
            )
        })
}

/// A field rendered as query strings compare it: strings as-is, numbers and booleans in
/// their JSON form.
fn field_matches(record: &Record, key: &str, wanted: &str) -> bool {
    match record.get(key) {
        Some(Value::String(s)) => s == wanted,
        Some(Value::Number(n)) => n.to_string() == wanted,
        Some(Value::Bool(b)) => (if *b { "true" } else { "false" }) == wanted,
        Some(Value::Null) | None => wanted == "null",
        Some(_) => false,
    }
}

fn record_not_found(coll: Coll, id: impl Display) -> Reply {
    Reply::not_found(format!("{} {id} not found", coll.singular()))
}

/// Numbers as they would come out of a database: integral sums stay integers.
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        // Exact: integral and well inside i64's range.
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

fn count_by<'r>(records: impl Iterator<Item = &'r Record>, key: &str) -> Value {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        let value = str_field(record, key).unwrap_or("unknown");
        *counts.entry(value.to_owned()).or_default() += 1;
    }
    json!(counts)
}

fn sum_of<'r>(records: impl Iterator<Item = &'r Record>, key: &str) -> f64 {
    records
        .filter_map(|r| r.get(key).and_then(Value::as_f64))
        .sum()
}

/// `body[key]` as a list of strings, required; a 400 names the field otherwise.
fn string_list(body: &Record, key: &str) -> Result<Vec<String>, Reply> {
    let invalid = || {
        Reply::bad_request(
            "invalid_request",
            format!("`{key}` must be an array of strings"),
        )
    };
    let items = body
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(invalid)?;
    items
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(invalid))
        .collect()
}

/// `body[key]` as an array of ids (numbers or strings), required.
fn id_list<'b>(body: &'b Record, key: &str) -> Result<&'b [Value], Reply> {
    body.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| {
            Reply::bad_request(
                "invalid_request",
                format!("`{key}` must be an array of ids"),
            )
        })
}

/// Appends each of `values` to the array `record[key]` unless already there; returns those
/// appended.
fn add_unique(record: &mut Record, key: &str, values: &[Value]) -> Vec<Value> {
    let entry = record
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    let mut added = Vec::new();
    if let Value::Array(list) = entry {
        for value in values {
            if !list.contains(value) {
                list.push(value.clone());
                added.push(value.clone());
            }
        }
    }
    added
}

fn touch(record: &mut Record) {
    record.insert("updated_at".into(), Value::from(now_iso()));
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// Routes a request under `/api/v1/`. Bulk and fixed sub-paths are matched before `{id}`, so
/// `leads/bulk-reassign` never reaches the record handler.
pub(crate) fn dispatch(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Reply {
    route(store, ctx).unwrap_or_else(|reply| reply)
}

fn route(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    let not_found = || Reply::not_found(format!("no route for {} {}", ctx.method, ctx.path));
    let rest = ctx.path.strip_prefix("/api/v1/").ok_or_else(not_found)?;
    // Legacy routers tolerate one trailing slash; any other empty segment is no route.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let raw: Vec<&str> = rest.split('/').collect();
    if raw.len() > 3 || raw.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    // Segments are decoded one by one, so an encoded `%2F` stays inside its segment.
    let decoded: Vec<Cow<'_, str>> = raw.iter().map(|s| percent_decode(s, false)).collect();
    let segs: Vec<&str> = decoded.iter().map(AsRef::as_ref).collect();
    let m = ctx.method;

    match segs.as_slice() {
        ["settings"] => settings_root(store, ctx),
        ["settings", section] => settings_section(store, ctx, section),
        ["integrations", name] => integration(store, ctx, name),
        ["analytics"] => {
            only(m, "GET")?;
            Ok(analytics(&read(store)))
        }
        ["search"] => search(store, ctx),
        ["export"] => create_export(store, ctx),
        ["export", id] => get_export(store, ctx, id),
        ["team-members", "invite"] => invite(store, ctx),
        ["leads", "bulk-reassign"] => bulk_reassign(store, ctx, Coll::Leads),
        ["deals", "bulk-reassign"] => bulk_reassign(store, ctx, Coll::Deals),
        ["customers", "bulk-delete"] => bulk_delete(store, ctx),
        ["threads", "bulk-tag"] => bulk_tag(store, ctx),
        [coll] => {
            let coll = Coll::parse(coll).ok_or_else(not_found)?;
            collection(store, ctx, coll)
        }
        [coll, id] => {
            let coll = Coll::parse(coll).ok_or_else(not_found)?;
            record(store, ctx, coll, id)
        }
        [coll, id, action] => {
            let coll = Coll::parse(coll).ok_or_else(not_found)?;
            sub_resource(store, ctx, coll, id, action).unwrap_or_else(|| Err(not_found()))
        }
        _ => Err(not_found()),
    }
}

// ---------------------------------------------------------------------------------------------
// Generic collections
// ---------------------------------------------------------------------------------------------

fn collection(store: &RwLock<Store>, ctx: &Ctx<'_>, coll: Coll) -> Res {
    only(ctx.method, "GET, POST")?;
    if is_get(ctx.method) {
        let page = Page::from_query(ctx.query)?;
        let filters: Vec<(&str, Cow<'_, str>)> = FILTER_KEYS
            .iter()
            .filter_map(|&key| query_param(ctx.query, key).map(|v| (key, v)))
            .collect();
        let st = read(store);
        let records = st
            .coll(coll)
            .values()
            .filter(|r| filters.iter().all(|(k, v)| field_matches(r, k, v)));
        return Ok(Reply::ok(page.envelope(records)));
    }
    let body = json_body(ctx)?;
    let mut st = write(store);
    let record = create_record(&mut st, coll, body, acting_user(ctx))?;
    Ok(Reply::with(StatusCode::CREATED, Value::Object(record)))
}

/// Fields a freshly created record gets unless the client sent them.
fn defaults(coll: Coll) -> Value {
    match coll {
        Coll::Customers => json!({"subscribed": false, "tags": [], "properties": {}}),
        Coll::Leads => json!({"status": "new"}),
        Coll::Deals => json!({"stage": "prospecting"}),
        Coll::Campaigns => json!({"status": "draft", "contact_ids": []}),
        Coll::Threads => {
            json!({"status": "open", "tags": [], "assignee_id": null, "snoozed_until": null})
        }
        Coll::CannedResponses => json!({"shared_with": []}),
        Coll::FollowUps => json!({"status": "active", "customer_ids": []}),
        Coll::Tasks => json!({"status": "open"}),
        Coll::TeamMembers => json!({"roles": ["member"], "manager_id": null, "active": true}),
        Coll::Roles => json!({"member_ids": []}),
        Coll::Webhooks => json!({"active": true, "events": []}),
        Coll::Notes | Coll::Tags | Coll::Properties | Coll::Tokens => json!({}),
    }
}

/// Inserts a new record built from a client body and returns it as stored.
///
/// Owned collections take `owner_id` from the acting user, else from the body (if a string),
/// else null; `created_by` is the acting user or null. Client-sent `id`s are ignored for
/// integer collections and honoured (if free) for team members and roles.
fn create_record(
    st: &mut Store,
    coll: Coll,
    mut body: Record,
    user: Option<&str>,
) -> Result<Record, Reply> {
    let now = Value::from(now_iso());
    let requested_id = body.remove("id");
    if let Value::Object(defaults) = defaults(coll) {
        for (key, value) in defaults {
            body.entry(key).or_insert(value);
        }
    }
    body.insert("created_at".into(), now.clone());
    body.insert("updated_at".into(), now);

    if coll.owned() {
        let owner = match (user, body.get("owner_id")) {
            (Some(user), _) => Value::from(user),
            (None, Some(Value::String(owner))) => Value::from(owner.as_str()),
            _ => Value::Null,
        };
        body.insert("owner_id".into(), owner);
        body.insert("created_by".into(), opt_str(user));
        let id = st.coll_mut(coll).insert_next(body);
        return st
            .coll(coll)
            .get_int(id)
            .cloned()
            .ok_or_else(|| record_not_found(coll, id));
    }

    let id = match requested_id {
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        None | Some(Value::Null) => {
            let prefix = if coll == Coll::TeamMembers {
                "u"
            } else {
                "role"
            };
            let records = st.coll(coll);
            (records.len() + 1..)
                .map(|n| format!("{prefix}-{n}"))
                .find(|id| !records.contains(&RecordId::Str(id.clone())))
                .unwrap_or_else(|| format!("{prefix}-new"))
        }
        Some(_) => {
            return Err(Reply::bad_request(
                "invalid_request",
                "`id` must be a non-empty string",
            ))
        }
    };
    if !st.coll_mut(coll).insert_str(&id, body) {
        return Err(Reply::error(
            StatusCode::CONFLICT,
            "conflict",
            format!("{} {id} already exists", coll.singular()),
        ));
    }
    let key = RecordId::Str(id);
    st.coll(coll)
        .get(&key)
        .cloned()
        .ok_or_else(|| record_not_found(coll, "new"))
}

fn record(store: &RwLock<Store>, ctx: &Ctx<'_>, coll: Coll, segment: &str) -> Res {
    only(ctx.method, "GET, PUT, PATCH, DELETE")?;
    let id = RecordId::parse(coll, segment).ok_or_else(|| record_not_found(coll, segment))?;

    if is_get(ctx.method) {
        let st = read(store);
        let record = st
            .coll(coll)
            .get(&id)
            .ok_or_else(|| record_not_found(coll, segment))?;
        return Ok(Reply::ok(Value::Object(record.clone())));
    }
    if ctx.method == Method::DELETE {
        let mut st = write(store);
        st.coll_mut(coll)
            .remove(&id)
            .ok_or_else(|| record_not_found(coll, segment))?;
        if let (Coll::Threads, RecordId::Int(thread)) = (coll, &id) {
            st.messages.remove(thread);
        }
        return Ok(Reply::no_content());
    }

    // PUT and PATCH both merge the body's top-level fields into the record (a legacy CRM's idea
    // of "update"); `id` cannot be changed.
    let body = json_body(ctx)?;
    let mut st = write(store);
    let record = st
        .coll_mut(coll)
        .get_mut(&id)
        .ok_or_else(|| record_not_found(coll, segment))?;
    for (key, value) in body {
        if key != "id" {
            record.insert(key, value);
        }
    }
    touch(record);
    Ok(Reply::ok(Value::Object(record.clone())))
}

// ---------------------------------------------------------------------------------------------
// Sub-resources and actions: /api/v1/{coll}/{id}/{action}
// ---------------------------------------------------------------------------------------------

/// `None` when `{coll}/{id}/{action}` is not a route at all (→ 404 "no route").
fn sub_resource(
    store: &RwLock<Store>,
    ctx: &Ctx<'_>,
    coll: Coll,
    segment: &str,
    action: &str,
) -> Option<Res> {
    let allow = match (coll, action) {
        (Coll::Customers, "subscribe" | "unsubscribe" | "photo")
        | (Coll::Leads, "convert")
        | (Coll::Campaigns, "launch")
        | (Coll::Threads, "assign" | "snooze" | "close" | "tags" | "attachments")
        | (Coll::FollowUps, "clone")
        | (Coll::CannedResponses, "share") => "POST",
        (Coll::Customers | Coll::Leads | Coll::Deals, "notes")
        | (Coll::Campaigns, "contacts")
        | (Coll::Threads, "messages")
        | (Coll::FollowUps, "customers") => "GET, POST",
        (Coll::Campaigns, "results") | (Coll::FollowUps, "results") => "GET",
        _ => return None,
    };
    Some(action_inner(store, ctx, coll, segment, action, allow))
}

fn action_inner(
    store: &RwLock<Store>,
    ctx: &Ctx<'_>,
    coll: Coll,
    segment: &str,
    action: &str,
    allow: &'static str,
) -> Res {
    only(ctx.method, allow)?;
    // Every parent with actions has an integer id.
    let id = parse_int_id(segment).ok_or_else(|| record_not_found(coll, segment))?;
    let get = is_get(ctx.method);

    match (coll, action, get) {
        (Coll::Customers | Coll::Leads | Coll::Deals, "notes", true) => {
            let page = Page::from_query(ctx.query)?;
            let st = read(store);
            exists(&st, coll, id)?;
            let parent_type = coll.singular();
            let notes = st.coll(Coll::Notes).values().filter(|note| {
                note.get("parent").is_some_and(|p| {
                    p.get("type").and_then(Value::as_str) == Some(parent_type)
                        && p.get("id").and_then(Value::as_u64) == Some(id)
                })
            });
            Ok(Reply::ok(page.envelope(notes)))
        }
        (Coll::Customers | Coll::Leads | Coll::Deals, "notes", false) => {
            let mut body = json_body(ctx)?;
            let mut st = write(store);
            exists(&st, coll, id)?;
            body.insert("parent".into(), json!({"type": coll.singular(), "id": id}));
            let note = create_record(&mut st, Coll::Notes, body, acting_user(ctx))?;
            Ok(Reply::ok(Value::Object(note)))
        }
        (Coll::Customers, "subscribe" | "unsubscribe", _) => {
            json_body(ctx)?;
            let subscribed = action == "subscribe";
            let mut st = write(store);
            let customer = find_mut(&mut st, coll, id)?;
            let previous = customer.insert("subscribed".into(), Value::from(subscribed));
            touch(customer);
            Ok(Reply::ok(json!({
                "customer_id": id,
                "subscribed": subscribed,
                "previously_subscribed": previous.unwrap_or(Value::Null),
            })))
        }
        (Coll::Customers, "photo", _) => {
            // Uploads are usually raw image bytes; a JSON body may name the URL instead.
            let requested = serde_json::from_slice::<Value>(ctx.body)
                .ok()
                .and_then(|v| {
                    v.get("photo_url")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            let mut st = write(store);
            exists(&st, coll, id)?;
            let upload = Store::bump(&mut st.next_attachment_id);
            let url = requested.unwrap_or_else(|| {
                format!("https://cdn.crm.example/photos/customers/{id}/{upload}.jpg")
            });
            let customer = find_mut(&mut st, coll, id)?;
            customer.insert("photo_url".into(), Value::from(url.as_str()));
            touch(customer);
            Ok(Reply::ok(json!({
                "customer_id": id,
                "photo_url": url,
                "bytes": ctx.body.len(),
            })))
        }
        (Coll::Leads, "convert", _) => convert_lead(store, ctx, id),
        (Coll::Campaigns, "contacts", true) | (Coll::FollowUps, "customers", true) => {
            let key = member_key(coll);
            let st = read(store);
            let record = find(&st, coll, id)?;
            Ok(Reply::ok(json!({
                parent_key(coll): id,
                key: record.get(key).cloned().unwrap_or_else(|| json!([])),
            })))
        }
        (Coll::Campaigns, "contacts", false) | (Coll::FollowUps, "customers", false) => {
            add_customers(store, ctx, coll, id)
        }
        (Coll::Campaigns, "results", _) => {
            let st = read(store);
            Ok(Reply::ok(campaign_results(find(&st, coll, id)?, id)))
        }
        (Coll::Campaigns, "launch", _) => {
            json_body(ctx)?;
            let mut st = write(store);
            let campaign = find_mut(&mut st, coll, id)?;
            let status = str_field(campaign, "status").unwrap_or("draft");
            if matches!(status, "running" | "completed") {
                return Err(Reply::error(
                    StatusCode::CONFLICT,
                    "already_launched",
                    format!("campaign {id} is already {status}"),
                ));
            }
            let now = now_iso();
            campaign.insert("status".into(), Value::from("running"));
            campaign.insert("launched_at".into(), Value::from(now.as_str()));
            touch(campaign);
            let recipients = campaign
                .get("contact_ids")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Ok(Reply::ok(json!({
                "campaign_id": id,
                "status": "running",
                "launched_at": now,
                "recipients": recipients,
            })))
        }
        (Coll::Threads, "messages", true) => {
            let page = Page::from_query(ctx.query)?;
            let st = read(store);
            exists(&st, coll, id)?;
            let messages = st.messages.get(&id).map(Vec::as_slice).unwrap_or_default();
            Ok(Reply::ok(page.envelope(messages.iter())))
        }
        (Coll::Threads, "messages", false) => send_message(store, ctx, id),
        (Coll::Threads, _, _) => thread_action(store, ctx, id, action),
        (Coll::FollowUps, "clone", _) => clone_follow_up(store, ctx, id),
        (Coll::FollowUps, "results", _) => {
            let st = read(store);
            let follow_up = find(&st, coll, id)?;
            let enrolled = follow_up
                .get("customer_ids")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Ok(Reply::ok(json!({
                "follow_up_id": id,
                "status": follow_up.get("status").cloned().unwrap_or(Value::Null),
                "enrolled": enrolled,
                "active": enrolled - enrolled / 2,
                "completed": enrolled / 2,
                "replied": enrolled / 3,
            })))
        }
        (Coll::CannedResponses, "share", _) => share_canned_response(store, ctx, id),
        _ => Err(Reply::not_found(format!(
            "no route for {} {}",
            ctx.method, ctx.path
        ))),
    }
}

fn exists(st: &Store, coll: Coll, id: u64) -> Result<(), Reply> {
    find(st, coll, id).map(|_| ())
}

fn find(st: &Store, coll: Coll, id: u64) -> Result<&Record, Reply> {
    st.coll(coll)
        .get_int(id)
        .ok_or_else(|| record_not_found(coll, id))
}

fn find_mut(st: &mut Store, coll: Coll, id: u64) -> Result<&mut Record, Reply> {
    st.coll_mut(coll)
        .get_int_mut(id)
        .ok_or_else(|| record_not_found(coll, id))
}

/// The customer-list field of campaigns and follow-ups.
fn member_key(coll: Coll) -> &'static str {
    if coll == Coll::Campaigns {
        "contact_ids"
    } else {
        "customer_ids"
    }
}

fn parent_key(coll: Coll) -> &'static str {
    if coll == Coll::Campaigns {
        "campaign_id"
    } else {
        "follow_up_id"
    }
}

/// Bulk-adds existing customers to a campaign's contacts or a follow-up's enrolment.
fn add_customers(store: &RwLock<Store>, ctx: &Ctx<'_>, coll: Coll, id: u64) -> Res {
    let body = json_body(ctx)?;
    let requested = id_list(&body, "customer_ids")?;
    let mut st = write(store);
    exists(&st, coll, id)?;
    let mut found = Vec::new();
    let mut not_found = Vec::new();
    for value in requested {
        match RecordId::from_json(Coll::Customers, value) {
            Some(RecordId::Int(customer))
                if st.coll(Coll::Customers).get_int(customer).is_some() =>
            {
                found.push(Value::from(customer));
            }
            _ => not_found.push(value.clone()),
        }
    }
    let record = find_mut(&mut st, coll, id)?;
    let added = add_unique(record, member_key(coll), &found);
    let already_present: Vec<&Value> = found.iter().filter(|v| !added.contains(v)).collect();
    touch(record);
    Ok(Reply::ok(json!({
        parent_key(coll): id,
        "added": added,
        "already_present": already_present,
        "not_found": not_found,
    })))
}

fn campaign_results(campaign: &Record, id: u64) -> Value {
    let status = str_field(campaign, "status").unwrap_or("draft");
    let contacts = campaign
        .get("contact_ids")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    // Only launched campaigns have sent anything; the funnel ratios are fixed so tests can
    // predict them.
    let sent = if matches!(status, "running" | "completed") {
        contacts
    } else {
        0
    };
    let delivered = sent - sent / 20;
    let opened = delivered * 2 / 5;
    json!({
        "campaign_id": id,
        "status": status,
        "sent": sent,
        "delivered": delivered,
        "bounced": sent - delivered,
        "opened": opened,
        "clicked": opened / 4,
        "unsubscribed": sent / 50,
    })
}

fn convert_lead(store: &RwLock<Store>, ctx: &Ctx<'_>, id: u64) -> Res {
    let body = json_body(ctx)?;
    let create_deal = body
        .get("create_deal")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let user = acting_user(ctx);
    let mut st = write(store);
    let lead = find(&st, Coll::Leads, id)?.clone();
    if str_field(&lead, "status") == Some("converted") {
        return Err(Reply::error(
            StatusCode::CONFLICT,
            "already_converted",
            format!("lead {id} is already converted"),
        ));
    }
    let field = |key: &str| lead.get(key).cloned().unwrap_or(Value::Null);
    // The new records belong to the lead's owner, whoever clicks "convert".
    let owner = field("owner_id");

    let customer = json!({
        "name": field("name"),
        "email": field("email"),
        "phone": field("phone"),
        "company": field("company"),
        "properties": {"source": field("source")},
        "converted_from_lead_id": id,
        "owner_id": owner,
    });
    let customer = create_record(&mut st, Coll::Customers, into_record(customer), None)?;
    let customer_id = customer.get("id").cloned().unwrap_or(Value::Null);
    let deal_id = if create_deal {
        let deal = json!({
            "name": field("title"),
            "amount": field("value"),
            "currency": field("currency"),
            "customer_id": customer_id,
            "lead_id": id,
            "owner_id": owner,
        });
        let deal = create_record(&mut st, Coll::Deals, into_record(deal), None)?;
        deal.get("id").cloned().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    // `created_by` on the new records is whoever converted the lead.
    for (coll, new_id) in [(Coll::Customers, &customer_id), (Coll::Deals, &deal_id)] {
        if let Some(record) = new_id
            .as_u64()
            .and_then(|n| st.coll_mut(coll).get_int_mut(n))
        {
            record.insert("created_by".into(), opt_str(user));
        }
    }

    let lead = find_mut(&mut st, Coll::Leads, id)?;
    lead.insert("status".into(), Value::from("converted"));
    lead.insert("converted_customer_id".into(), customer_id.clone());
    lead.insert("converted_deal_id".into(), deal_id.clone());
    touch(lead);
    Ok(Reply::ok(json!({
        "lead_id": id,
        "customer_id": customer_id,
        "deal_id": deal_id,
        "lead": lead.clone(),
    })))
}

fn into_record(value: Value) -> Record {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn send_message(store: &RwLock<Store>, ctx: &Ctx<'_>, id: u64) -> Res {
    let body = json_body(ctx)?;
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Reply::bad_request("invalid_request", "`body` (the message text) is required")
        })?
        .to_owned();
    let author = acting_user(ctx)
        .map(Value::from)
        .or_else(|| body.get("author_id").filter(|v| v.is_string()).cloned())
        .unwrap_or(Value::Null);
    let mut st = write(store);
    let thread = find(&st, Coll::Threads, id)?;
    let customer_id = thread.get("customer_id").cloned().unwrap_or(Value::Null);
    let message_id = Store::bump(&mut st.next_message_id);
    let now = now_iso();
    let message = into_record(json!({
        "id": message_id,
        "thread_id": id,
        "direction": "outbound",
        "author_id": author,
        "customer_id": customer_id,
        "body": text,
        "sent_at": now,
    }));
    st.messages.entry(id).or_default().push(message.clone());
    let thread = find_mut(&mut st, Coll::Threads, id)?;
    thread.insert("last_message_at".into(), Value::from(now));
    touch(thread);
    Ok(Reply::ok(Value::Object(message)))
}

fn thread_action(store: &RwLock<Store>, ctx: &Ctx<'_>, id: u64, action: &str) -> Res {
    let body = json_body(ctx)?;
    let mut st = write(store);
    if action == "attachments" {
        exists(&st, Coll::Threads, id)?;
        let attachment_id = Store::bump(&mut st.next_attachment_id);
        let filename = body
            .get("filename")
            .and_then(Value::as_str)
            .map_or_else(|| format!("attachment-{attachment_id}.bin"), str::to_owned);
        let attachment = json!({
            "id": attachment_id,
            "filename": filename,
            "size": ctx.body.len(),
            "url": format!("https://cdn.crm.example/attachments/{attachment_id}/{filename}"),
        });
        let thread = find_mut(&mut st, Coll::Threads, id)?;
        add_unique(thread, "attachments", std::slice::from_ref(&attachment));
        touch(thread);
        return Ok(Reply::ok(
            json!({"thread_id": id, "attachment": attachment}),
        ));
    }

    let thread = find_mut(&mut st, Coll::Threads, id)?;
    let reply = match action {
        "assign" => {
            let assignee = match body.get("assignee_id") {
                Some(v @ (Value::String(_) | Value::Null)) => v.clone(),
                _ => {
                    return Err(Reply::bad_request(
                        "invalid_request",
                        "`assignee_id` (a team member id or null) is required",
                    ))
                }
            };
            let previous = thread.insert("assignee_id".into(), assignee.clone());
            json!({
                "thread_id": id,
                "assignee_id": assignee,
                "previous_assignee_id": previous.unwrap_or(Value::Null),
            })
        }
        "snooze" => {
            let until = body
                .get("until")
                .or_else(|| body.get("snoozed_until"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Reply::bad_request("invalid_request", "`until` (a timestamp) is required")
                })?
                .to_owned();
            thread.insert("status".into(), Value::from("snoozed"));
            thread.insert("snoozed_until".into(), Value::from(until.as_str()));
            json!({"thread_id": id, "status": "snoozed", "snoozed_until": until})
        }
        "close" => {
            let previous = thread.insert("status".into(), Value::from("closed"));
            thread.insert("snoozed_until".into(), Value::Null);
            json!({
                "thread_id": id,
                "status": "closed",
                "previous_status": previous.unwrap_or(Value::Null),
            })
        }
        "tags" => {
            let tags: Vec<Value> = string_list(&body, "tags")?
                .into_iter()
                .map(Value::from)
                .collect();
            let added = add_unique(thread, "tags", &tags);
            json!({
                "thread_id": id,
                "added": added,
                "tags": thread.get("tags").cloned().unwrap_or_else(|| json!([])),
            })
        }
        _ => {
            return Err(Reply::not_found(format!(
                "no route for {} {}",
                ctx.method, ctx.path
            )))
        }
    };
    touch(thread);
    Ok(Reply::ok(reply))
}

fn clone_follow_up(store: &RwLock<Store>, ctx: &Ctx<'_>, id: u64) -> Res {
    let body = json_body(ctx)?;
    let user = acting_user(ctx);
    let mut st = write(store);
    let mut copy = find(&st, Coll::FollowUps, id)?.clone();
    let name = match body.get("name").and_then(Value::as_str) {
        Some(name) => name.to_owned(),
        None => format!("{} (copy)", str_field(&copy, "name").unwrap_or("Follow-up")),
    };
    copy.insert("name".into(), Value::from(name));
    // A clone starts paused, so it doesn't message anyone until someone looks at it.
    copy.insert("status".into(), Value::from("paused"));
    copy.insert("cloned_from_id".into(), Value::from(id));
    let clone = create_record(&mut st, Coll::FollowUps, copy, user)?;
    Ok(Reply::ok(json!({"source_id": id, "follow_up": clone})))
}

fn share_canned_response(store: &RwLock<Store>, ctx: &Ctx<'_>, id: u64) -> Res {
    let body = json_body(ctx)?;
    let key = if body.contains_key("shared_with") {
        "shared_with"
    } else {
        "team_member_ids"
    };
    let requested = string_list(&body, key)?;
    let mut st = write(store);
    exists(&st, Coll::CannedResponses, id)?;
    let (found, not_found): (Vec<String>, Vec<String>) = requested.into_iter().partition(|m| {
        st.coll(Coll::TeamMembers)
            .contains(&RecordId::Str(m.clone()))
    });
    let found: Vec<Value> = found.into_iter().map(Value::from).collect();
    let response = find_mut(&mut st, Coll::CannedResponses, id)?;
    let added = add_unique(response, "shared_with", &found);
    touch(response);
    Ok(Reply::ok(json!({
        "canned_response_id": id,
        "added": added,
        "shared_with": response.get("shared_with").cloned().unwrap_or_else(|| json!([])),
        "not_found": not_found,
    })))
}

// ---------------------------------------------------------------------------------------------
// Bulk operations
// ---------------------------------------------------------------------------------------------

/// Splits bulk `ids` into existing integer ids of `coll` (deduplicated, in request order) and
/// the raw values that named nothing.
fn partition_ids(st: &Store, coll: Coll, ids: &[Value]) -> (Vec<u64>, Vec<Value>) {
    let mut found: Vec<u64> = Vec::new();
    let mut not_found = Vec::new();
    for value in ids {
        match RecordId::from_json(coll, value) {
            Some(RecordId::Int(id)) if st.coll(coll).get_int(id).is_some() => {
                if !found.contains(&id) {
                    found.push(id);
                }
            }
            _ => not_found.push(value.clone()),
        }
    }
    (found, not_found)
}

/// `POST /leads/bulk-reassign`, `POST /deals/bulk-reassign`: `{"ids": [...], "owner_id"}`.
fn bulk_reassign(store: &RwLock<Store>, ctx: &Ctx<'_>, coll: Coll) -> Res {
    only(ctx.method, "POST")?;
    let body = json_body(ctx)?;
    let ids = id_list(&body, "ids")?;
    let owner = match body.get("owner_id") {
        Some(v @ (Value::String(_) | Value::Null)) => v.clone(),
        _ => {
            return Err(Reply::bad_request(
                "invalid_request",
                "`owner_id` (a team member id or null) is required",
            ))
        }
    };
    let mut st = write(store);
    let (updated, not_found) = partition_ids(&st, coll, ids);
    for &id in &updated {
        if let Some(record) = st.coll_mut(coll).get_int_mut(id) {
            record.insert("owner_id".into(), owner.clone());
            touch(record);
        }
    }
    Ok(Reply::ok(json!({
        "updated": updated,
        "not_found": not_found,
        "owner_id": owner,
    })))
}

fn bulk_delete(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "POST")?;
    let body = json_body(ctx)?;
    let ids = id_list(&body, "ids")?;
    let mut st = write(store);
    let (deleted, not_found) = partition_ids(&st, Coll::Customers, ids);
    for &id in &deleted {
        st.coll_mut(Coll::Customers).remove(&RecordId::Int(id));
    }
    Ok(Reply::ok(
        json!({"deleted": deleted, "not_found": not_found}),
    ))
}

fn bulk_tag(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "POST")?;
    let body = json_body(ctx)?;
    let ids = id_list(&body, "ids")?;
    let tags: Vec<Value> = string_list(&body, "tags")?
        .into_iter()
        .map(Value::from)
        .collect();
    let mut st = write(store);
    let (updated, not_found) = partition_ids(&st, Coll::Threads, ids);
    for &id in &updated {
        if let Some(thread) = st.coll_mut(Coll::Threads).get_int_mut(id) {
            add_unique(thread, "tags", &tags);
            touch(thread);
        }
    }
    Ok(Reply::ok(json!({
        "updated": updated,
        "not_found": not_found,
        "tags": tags,
    })))
}

// ---------------------------------------------------------------------------------------------
// Company-wide endpoints
// ---------------------------------------------------------------------------------------------

fn settings_root(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "GET, PUT")?;
    if is_get(ctx.method) {
        return Ok(Reply::ok(Value::Object(read(store).settings.clone())));
    }
    let body = json_body(ctx)?;
    let mut st = write(store);
    st.settings.extend(body);
    Ok(Reply::ok(Value::Object(st.settings.clone())))
}

fn settings_section(store: &RwLock<Store>, ctx: &Ctx<'_>, section: &str) -> Res {
    if !SETTINGS_SECTIONS.contains(&section) {
        return Err(Reply::not_found(format!(
            "no settings section named {section:?}"
        )));
    }
    only(ctx.method, "GET, PUT")?;
    section_document(store, ctx, section, |st| &mut st.settings)
}

fn integration(store: &RwLock<Store>, ctx: &Ctx<'_>, name: &str) -> Res {
    if !INTEGRATIONS.contains(&name) {
        return Err(Reply::not_found(format!("no integration named {name:?}")));
    }
    only(ctx.method, "GET, PUT")?;
    section_document(store, ctx, name, |st| &mut st.integrations)
}

/// GET returns `doc[key]`; PUT merges the body's fields into it.
fn section_document(
    store: &RwLock<Store>,
    ctx: &Ctx<'_>,
    key: &str,
    doc: fn(&mut Store) -> &mut Record,
) -> Res {
    let body = if is_get(ctx.method) {
        None
    } else {
        Some(json_body(ctx)?)
    };
    let mut st = write(store);
    let entry = doc(&mut st)
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(body) = body {
        match &mut *entry {
            Value::Object(section) => section.extend(body),
            other => *other = Value::Object(body),
        }
    }
    Ok(Reply::ok(entry.clone()))
}

fn analytics(st: &Store) -> Reply {
    let customers = st.coll(Coll::Customers);
    let leads = st.coll(Coll::Leads);
    let deals = st.coll(Coll::Deals);
    let threads = st.coll(Coll::Threads);
    let campaigns = st.coll(Coll::Campaigns);
    let open_leads = leads
        .values()
        .filter(|l| !matches!(str_field(l, "status"), Some("won" | "lost" | "converted")));
    let won_deals = deals
        .values()
        .filter(|d| str_field(d, "stage") == Some("closed_won"));
    Reply::ok(json!({
        "customers": {
            "total": customers.len(),
            "subscribed": customers
                .values()
                .filter(|c| c.get("subscribed") == Some(&Value::Bool(true)))
                .count(),
        },
        "leads": {
            "total": leads.len(),
            "by_status": count_by(leads.values(), "status"),
            "pipeline_value": number(sum_of(open_leads, "value")),
        },
        "deals": {
            "total": deals.len(),
            "by_stage": count_by(deals.values(), "stage"),
            "amount_total": number(sum_of(deals.values(), "amount")),
            "won_amount": number(sum_of(won_deals, "amount")),
        },
        "threads": {
            "total": threads.len(),
            "by_status": count_by(threads.values(), "status"),
        },
        "campaigns": {
            "total": campaigns.len(),
            "by_status": count_by(campaigns.values(), "status"),
        },
        "generated_at": now_iso(),
    }))
}

fn search(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "GET")?;
    let query = query_param(ctx.query, "q")
        .map(|q| q.trim().to_lowercase())
        .filter(|q| !q.is_empty())
        .ok_or_else(|| Reply::bad_request("missing_query", "query parameter `q` is required"))?;
    let matches = |record: &Record, keys: &[&str]| {
        keys.iter()
            .any(|key| str_field(record, key).is_some_and(|v| v.to_lowercase().contains(&query)))
    };
    let st = read(store);
    let hits = |coll: Coll, keys: &[&str]| -> Vec<Value> {
        st.coll(coll)
            .values()
            .filter(|r| matches(r, keys))
            .take(SEARCH_LIMIT)
            .map(|r| Value::Object(r.clone()))
            .collect()
    };
    let customers = hits(Coll::Customers, &["name"]);
    let leads = hits(Coll::Leads, &["name", "title", "company"]);
    Ok(Reply::ok(json!({
        "query": query,
        "total": customers.len() + leads.len(),
        "customers": customers,
        "leads": leads,
    })))
}

fn invite(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "POST")?;
    let body = json_body(ctx)?;
    let email = body
        .get("email")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|e| e.contains('@'))
        .ok_or_else(|| Reply::bad_request("invalid_request", "`email` must be an email address"))?
        .to_owned();
    let roles = match (body.get("roles"), body.get("role")) {
        (Some(_), _) => string_list(&body, "roles")?,
        (None, Some(Value::String(role))) => vec![role.clone()],
        (None, _) => vec!["member".to_owned()],
    };
    let user = acting_user(ctx);
    let mut st = write(store);
    let taken = st
        .coll(Coll::TeamMembers)
        .values()
        .any(|m| str_field(m, "email").is_some_and(|e| e.eq_ignore_ascii_case(&email)));
    if taken {
        return Err(Reply::error(
            StatusCode::CONFLICT,
            "already_member",
            format!("{email} is already on the team"),
        ));
    }
    let invitation_id = Store::bump(&mut st.next_invitation_id);
    // The invitee shows up as an inactive team member until they accept.
    let member_id = format!("u-invite-{invitation_id}");
    let member = json!({
        "id": member_id,
        "name": body.get("name").cloned().unwrap_or_else(|| Value::from(email.as_str())),
        "email": email,
        "roles": roles,
        "manager_id": body.get("manager_id").cloned().unwrap_or(Value::Null),
        "active": false,
        "invited_by": opt_str(user),
    });
    create_record(&mut st, Coll::TeamMembers, into_record(member), user)?;
    Ok(Reply::ok(json!({
        "invitation_id": invitation_id,
        "team_member_id": member_id,
        "email": email,
        "roles": roles,
        "status": "pending",
        "invited_by": opt_str(user),
    })))
}

fn create_export(store: &RwLock<Store>, ctx: &Ctx<'_>) -> Res {
    only(ctx.method, "POST")?;
    let body = json_body(ctx)?;
    let collection = match body.get("collection") {
        None | Some(Value::Null) => "all".to_owned(),
        Some(Value::String(name)) if name == "all" || Coll::parse(name).is_some() => name.clone(),
        Some(other) => {
            return Err(Reply::bad_request(
                "invalid_request",
                format!("cannot export collection {other}"),
            ))
        }
    };
    let format = match body.get("format").and_then(Value::as_str) {
        None => "csv",
        Some(f @ ("csv" | "json")) => f,
        Some(other) => {
            return Err(Reply::bad_request(
                "invalid_request",
                format!("unknown export format {other:?} (csv or json)"),
            ))
        }
    };
    let mut st = write(store);
    let export_id = Store::bump(&mut st.next_export_id);
    let export = into_record(json!({
        "export_id": export_id,
        "status": "queued",
        "collection": collection,
        "format": format,
        "requested_by": opt_str(acting_user(ctx)),
        "requested_at": now_iso(),
        "download_url": null,
    }));
    st.exports.insert(export_id, export.clone());
    Ok(Reply::with(StatusCode::ACCEPTED, Value::Object(export)))
}

/// Exports finish as soon as someone asks: the first GET flips them to `completed`.
fn get_export(store: &RwLock<Store>, ctx: &Ctx<'_>, segment: &str) -> Res {
    only(ctx.method, "GET")?;
    let missing = || Reply::not_found(format!("export {segment} not found"));
    let id = parse_int_id(segment).ok_or_else(missing)?;
    let mut st = write(store);
    let export = st.exports.get_mut(&id).ok_or_else(missing)?;
    if str_field(export, "status") == Some("queued") {
        let format = str_field(export, "format").unwrap_or("csv").to_owned();
        export.insert("status".into(), Value::from("completed"));
        export.insert("completed_at".into(), Value::from(now_iso()));
        export.insert(
            "download_url".into(),
            Value::from(format!("https://exports.crm.example/{id}.{format}")),
        );
    }
    Ok(Reply::ok(Value::Object(export.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("plain", false), "plain");
        assert_eq!(percent_decode("a%20b", false), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%C3%A9", false), "é");
        assert_eq!(percent_decode("%FF", false), "\u{FFFD}");
    }

    #[test]
    fn query_params() {
        let q = Some("page=2&per_page=5&q=ada+l%C3%B6&&flag");
        assert_eq!(query_param(q, "page").as_deref(), Some("2"));
        assert_eq!(query_param(q, "q").as_deref(), Some("ada lö"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(None, "page"), None);
    }

    #[test]
    fn pagination_bounds() {
        assert!(Page::from_query(None).is_ok());
        assert!(Page::from_query(Some("per_page=200")).is_ok());
        for bad in [
            "per_page=201",
            "per_page=0",
            "page=0",
            "page=-1",
            "page=x",
            "page=",
        ] {
            let err = Page::from_query(Some(bad)).err();
            assert_eq!(
                err.map(|r| r.status),
                Some(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
        let huge = Page::from_query(Some("page=18446744073709551615&per_page=200"));
        assert!(huge.is_ok_and(|p| p.offset() == usize::MAX));
    }

    #[test]
    fn method_lists() {
        assert!(only(&Method::HEAD, "GET, POST").is_ok());
        assert!(only(&Method::POST, "GET, POST").is_ok());
        let err = only(&Method::DELETE, "GET, POST").err();
        assert_eq!(err.and_then(|r| r.allow), Some("GET, POST"));
    }
}
