//! A realistic legacy CRM REST API over in-memory data, served with hyper.
//!
//! It backs `permgate demo`, the integration tests and the bench harness: the gateway sits in
//! front of it exactly as it would sit in front of the real thing. Like a real legacy app it
//! trusts whatever reaches it (it does no authorization of its own), accepts loose JSON and
//! echoes unknown fields back. Unlike one, it never panics on bad input, and it records every
//! request it receives so tests can assert on what the gateway forwarded.
//!
//! # Layout
//!
//! - this file: the public API ([`start`], [`serve`], [`SampleCrm`], [`CrmOptions`],
//!   [`RecordedRequest`]), the accept loop, the request log and the `/__crm/` test hooks;
//! - `api`: routing and handlers for `/api/v1/...` (synchronous, over the locked store);
//! - `store`: collections of JSON records and the company-wide documents;
//! - `seed`: the deterministic seed data described below.
//!
//! One port serves HTTP/1.1 (keep-alive) and HTTP/2 with prior knowledge (cleartext).
//!
//! # Seed data
//!
//! Nothing is random: every seeded value is a function of the record id and
//! [`CrmOptions::owners`] (by default [`DEMO_USERS`], in this order:
//! `u-admin, u-sm, u-rep1, u-rep2, u-csr, u-mm, u-da, u-member`).
//!
//! | collection          | ids       | notes                                                    |
//! |---------------------|-----------|----------------------------------------------------------|
//! | `customers`         | 1..=60    | name, email, phone, company, zip, time_zone, photo_url, properties{}, subscribed (`id % 5 != 0`), tags |
//! | `leads`             | 1..=40    | title, name, company, status, source, value (`1000 + 500·id`) |
//! | `deals`             | 1..=20    | name, stage, amount (`2500·id`), customer_id = lead_id = id |
//! | `campaigns`         | 1..=8     | name, status, kind, contact_ids = every customer id ≡ id (mod 8) |
//! | `threads`           | 1..=30    | customer_id = id, assignee_id = owner_id, status, tags, snoozed_until; messages `2·id-1`, `2·id` |
//! | `canned-responses`  | 1..=10    | title, shortcut, body, shared_with                       |
//! | `follow-ups`        | 1..=6     | name, status, trigger, steps, customer_ids = [id, id+6, id+12] |
//! | `notes`, `tasks`    | 1..=50, 1..=20 | `parent` = `{"type": ["lead","customer","deal"][(id-1) % 3], "id": (id-1)/3 + 1}` |
//! | `tags`, `properties`, `webhooks`, `tokens` | 1..=8, 1..=5, 1..=3, 1..=3 | small lookup tables |
//! | `team-members`      | user ids  | the demo users (+ any extra owner): name, email, roles, manager_id |
//! | `roles`             | role ids  | `admin, sales_manager, sales_rep, customer_service, marketing_manager, data_analyst, member` |
//!
//! **Ownership formula.** Every record of an integer-id collection with id `N` has
//!
//! - `owner_id   = owners[(N - 1) % owners.len()]` (null if `owners` is empty), and
//! - `created_by = owners[N % owners.len()]` (the owner of record `N + 1`).
//!
//! With the default owners that is: `N ≡ 1 (mod 8)` → `u-admin`, 2 → `u-sm`, 3 → `u-rep1`,
//! 4 → `u-rep2`, 5 → `u-csr`, 6 → `u-mm`, 7 → `u-da`, `N ≡ 0 (mod 8)` → `u-member`. So
//! `u-rep1` owns leads 3, 11, 19, 27, 35 and `u-rep2` owns leads 4, 12, 20, 28, 36.
//! [`CrmOptions::owner_of`] computes it.
//!
//! Team: `u-rep1` and `u-rep2` have `manager_id = "u-sm"`; everyone else has none. Each demo
//! user has one role: admin, sales_manager, sales_rep (both reps), customer_service,
//! marketing_manager, data_analyst, member.
//!
//! # Behaviour worth knowing
//!
//! - New records get the next integer id (never reused), `owner_id` from `x-permgate-user` if
//!   present, else the body's `owner_id`, else null; `created_by` = `x-permgate-user` or null.
//! - `PUT` and `PATCH` both merge the body's top-level fields into the record.
//! - Integer ids are ASCII digits; leading zeros are tolerated (`/leads/007` is lead 7), as in
//!   many legacy apps. Path segments are percent-decoded one at a time; one trailing slash is
//!   ignored. List filters: `owner_id, assignee_id, created_by, status, stage, kind, customer_id`.
//! - Request bodies are capped at [`MAX_BODY_BYTES`] (413 beyond).
//! - `x-crm-delay-ms: N` (0..=60000) delays the answer by N ms, after the request is recorded.
#![forbid(unsafe_code)]

mod api;
mod seed;
mod store;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use api::Reply;
use store::Store;

/// The demo users, in the order used as default owners.
pub const DEMO_USERS: [&str; 8] = [
    "u-admin", "u-sm", "u-rep1", "u-rep2", "u-csr", "u-mm", "u-da", "u-member",
];
/// The header the gateway uses to tell the CRM who is acting.
pub const USER_HEADER: &str = "x-permgate-user";
/// Test hook: delays the response by this many milliseconds.
pub const DELAY_HEADER: &str = "x-crm-delay-ms";
/// Largest accepted value of [`DELAY_HEADER`].
pub const MAX_DELAY_MS: u64 = 60_000;
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How many requests the log keeps by default.
pub const DEFAULT_REQUEST_LOG_CAPACITY: usize = 10_000;

/// How to seed and run the sample CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmOptions {
    /// Owners assigned round-robin to seed records (see the module docs for the formula).
    /// Ids that are not demo users are added to `team-members` as plain members.
    pub owners: Vec<String>,
    /// How many requests [`SampleCrm::requests`] keeps (oldest dropped first).
    pub request_log_capacity: usize,
}

impl Default for CrmOptions {
    fn default() -> Self {
        CrmOptions {
            owners: DEMO_USERS.iter().map(|&u| u.to_owned()).collect(),
            request_log_capacity: DEFAULT_REQUEST_LOG_CAPACITY,
        }
    }
}

impl CrmOptions {
    /// The `owner_id` of seed record `id` in any integer-id collection.
    pub fn owner_of(&self, id: u64) -> Option<&str> {
        seed::cycle_index(self.owners.len(), id)
            .and_then(|i| self.owners.get(i))
            .map(String::as_str)
    }

    /// The `created_by` of seed record `id` in any integer-id collection.
    pub fn creator_of(&self, id: u64) -> Option<&str> {
        self.owner_of(id.saturating_add(1))
    }
}

/// One request as it reached the CRM.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as received (for HTTP/2, the `:path` pseudo-header).
    pub target: String,
    /// `"HTTP/1.1"`, `"HTTP/2.0"`, ...
    pub version: String,
    /// Every header in arrival order, names lowercase, values lossy UTF-8. (Repeated names are
    /// listed together, at the position of the first one: that is how `http::HeaderMap` keeps
    /// them.)
    pub headers: Vec<(String, String)>,
    /// Lossy UTF-8 of the full body (empty if it was rejected as too large).
    pub body: String,
}

impl RecordedRequest {
    /// The first value of header `name` (lowercase), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A bounded ring of the most recent requests.
#[derive(Debug)]
struct RequestLog {
    entries: Mutex<VecDeque<RecordedRequest>>,
    capacity: usize,
}

impl RequestLog {
    fn lock(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, request: RecordedRequest) {
        if self.capacity == 0 {
            return;
        }
        // The record is built before taking the lock, so the critical section is two pointer
        // moves (plus, rarely, dropping the evicted entry).
        let evicted = {
            let mut entries = self.lock();
            let evicted = if entries.len() >= self.capacity {
                entries.pop_front()
            } else {
                None
            };
            entries.push_back(request);
            evicted
        };
        drop(evicted);
    }

    fn snapshot(&self) -> Vec<RecordedRequest> {
        self.lock().iter().cloned().collect()
    }

    fn clear(&self) {
        // Swap out under the lock, free outside it.
        let old = std::mem::take(&mut *self.lock());
        drop(old);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// State shared by every connection.
#[derive(Debug)]
struct Shared {
    store: RwLock<Store>,
    log: RequestLog,
}

/// Handle to a running sample CRM. Dropping it stops the server.
#[derive(Debug)]
pub struct SampleCrm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SampleCrm {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What reached the CRM (outside `/__crm/`), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }

    pub fn clear_requests(&self) {
        self.shared.log.clear();
    }

    /// Stops accepting and aborts the server task, which also closes every open connection.
    pub fn shutdown(self) {
        // Drop does the work; this just names it.
        drop(self);
    }
}

impl Drop for SampleCrm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns the server on the current tokio runtime and returns at once.
pub async fn start(listener: TcpListener, options: CrmOptions) -> std::io::Result<SampleCrm> {
    let addr = listener.local_addr()?;
    let shared = new_shared(&options);
    let task = tokio::spawn(run(listener, Arc::clone(&shared)));
    Ok(SampleCrm { addr, shared, task })
}

/// Runs until the process ends (for `permgate sample-crm --listen ADDR`).
pub async fn serve(addr: SocketAddr, options: CrmOptions) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    log::info!("sample CRM listening on http://{}", listener.local_addr()?);
    run(listener, new_shared(&options)).await;
    Ok(())
}

fn new_shared(options: &CrmOptions) -> Arc<Shared> {
    Arc::new(Shared {
        store: RwLock::new(seed::seed(options)),
        log: RequestLog {
            entries: Mutex::new(VecDeque::new()),
            capacity: options.request_log_capacity,
        },
    })
}

/// The accept loop. Connections live in a `JoinSet` owned by this future, so aborting the
/// server task tears every connection down with it (no stray keep-alive sockets after
/// `shutdown`).
async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The timer lets hyper enforce its header-read timeout on idle/slow HTTP/1 clients.
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Small JSON responses: don't let Nagle hold them back.
                    if let Err(e) = stream.set_nodelay(true) {
                        log::debug!("sample CRM: set_nodelay failed: {e}");
                    }
                    let builder = builder.clone();
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                            log::debug!("sample CRM connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE under load: back off briefly instead of spinning.
                    log::warn!("sample CRM accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set doesn't grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One request: read the body, record it, honour the delay hook, answer.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let is_hook = parts.uri.path() == "/__crm" || parts.uri.path().starts_with("/__crm/");

    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(Reply::bad_request(
            "invalid_body",
            format!("could not read request body: {e}"),
        )),
    };
    if !is_hook {
        let recorded_body = body.as_ref().map_or(&[][..], |b| &b[..]);
        shared.log.push(record(&parts, recorded_body));
    }

    match delay(&parts.headers) {
        Ok(Some(duration)) => tokio::time::sleep(duration).await,
        Ok(None) => {}
        Err(reply) => return Ok(respond(reply)),
    }
    let body = match body {
        Ok(body) => body,
        Err(reply) => return Ok(respond(reply)),
    };

    let reply = if is_hook {
        hook(&shared, &parts.method, parts.uri.path())
    } else {
        let ctx = api::Ctx {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        };
        api::dispatch(&shared.store, &ctx)
    };
    // A created record is also named by `Location` (as REST CRMs answer a create).
    let location = (!is_hook && reply.status == StatusCode::CREATED)
        .then(|| reply.body.as_ref()?.get("id").cloned())
        .flatten()
        .and_then(|id| {
            let id = match id {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s,
                _ => return None,
            };
            let base = parts.uri.path().trim_end_matches('/');
            HeaderValue::from_str(&format!("{base}/{id}")).ok()
        });
    let mut response = respond(reply);
    if let Some(l) = location {
        response.headers_mut().insert(http::header::LOCATION, l);
    }
    Ok(response)
}

fn record(parts: &http::request::Parts, body: &[u8]) -> RecordedRequest {
    // HTTP/1 keeps the request-target as sent (origin or absolute form); HTTP/2 sends it as
    // `:scheme`/`:authority`/`:path`, of which `:path` is the target.
    let target = if parts.version == Version::HTTP_2 {
        parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned())
    } else {
        parts.uri.to_string()
    };
    RecordedRequest {
        method: parts.method.as_str().to_owned(),
        target,
        version: version_name(parts.version).to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Parses the delay hook: absent → `None`; `0..=60000` → that many ms; anything else → 400.
fn delay(headers: &HeaderMap) -> Result<Option<Duration>, Reply> {
    let Some(value) = headers.get(DELAY_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(store::parse_int_id)
        .filter(|&ms| ms <= MAX_DELAY_MS)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            Reply::bad_request(
                "invalid_delay",
                format!("{DELAY_HEADER} must be an integer between 0 and {MAX_DELAY_MS}"),
            )
        })
}

/// `/__crm/...`: test hooks, never recorded.
fn hook(shared: &Shared, method: &Method, path: &str) -> Reply {
    let result = match path {
        "/__crm/requests" => api::only(method, "GET, DELETE").map(|()| {
            if method == Method::DELETE {
                shared.log.clear();
                Reply {
                    status: StatusCode::NO_CONTENT,
                    body: None,
                    allow: None,
                }
            } else {
                match serde_json::to_value(shared.log.snapshot()) {
                    Ok(list) => Reply::ok(list),
                    Err(e) => {
                        Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    }
                }
            }
        }),
        "/__crm/health" => api::only(method, "GET")
            .map(|()| Reply::ok(json!({"status": "ok", "requests_recorded": shared.log.len()}))),
        _ => Err(Reply::not_found(format!("no test hook at {path}"))),
    };
    result.unwrap_or_else(|reply| reply)
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let body = match reply.body {
        None => Bytes::new(),
        Some(value) => serialize(&value),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = reply.status;
    if reply.status != StatusCode::NO_CONTENT {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(allow) = reply.allow {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn serialize(value: &Value) -> Bytes {
    // Serializing a `Value` cannot fail in practice (its keys are strings); still, answer
    // with a well-formed error rather than unwrap.
    serde_json::to_vec(value).map_or_else(
        |_| Bytes::from_static(br#"{"error":"internal","message":"serialization failed"}"#),
        Bytes::from,
    )
}
