//! The TOML config: raw serde types (strict: unknown fields are errors), validated and compiled
//! into [`Config`]. A bad file gives every error, each naming the file, line and field; it is
//! never half-applied and never panics.
//!
//! Why one file (~1,620 lines without its tests): [`Config::parse`] is one pass that gathers every
//! error of the file, each with its line, and its sections depend on each other (catalogue before
//! routes and roles, forward rules before routes); the raw serde types are apart, in
//! `config/raw.rs`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::catalog::{Catalog, PermId};
use crate::identity::Verifier;
use crate::inspect::{Inspect, RawInspect, RawRecordType};
use crate::routes::{MethodSet, PathPattern, RouteSpec, RouteTable, TrailingSlash};

pub use crate::error::{line_of, locate, ConfigError};
pub use crate::headers::HeaderSet;
use raw::*;
pub use raw::{Engine, DEFAULT_ALLOW_HEADERS, DEFAULT_STRIP_HEADERS};

mod raw;
mod resource;
use crate::headers::RESERVED_HEADERS;
pub use resource::summary as resource_summary;

// ---- validated types ----------------------------------------------------------------------

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No identity needed.
    Public,
    /// A valid identity holding this permission.
    Permission(PermId),
}

/// What a route maps to.
#[derive(Debug, Clone)]
pub struct RouteInfo {
    pub name: String,
    pub access: Access,
    /// Shadow mode for this route: decide and log, but forward what would be denied.
    pub shadow: bool,
    /// Records, bulk items, fields or list responses the route checks beyond its permission;
    /// `None` for most routes (their bodies stream untouched).
    pub inspect: Option<Box<Inspect>>,
    /// The route's own rate limit (all callers together) and its bucket. The bucket lives
    /// with the compiled config: a config reload starts it full again.
    pub rate_limit: Option<Arc<crate::limit::RouteBucket>>,
    /// A body on a method that has none (GET, HEAD, DELETE, OPTIONS, TRACE) is forwarded.
    pub allow_body: bool,
    /// Allow-list mode: the request headers this route forwards, when it adds some to
    /// `forward.allow_headers` (merged at load); `None`: the global set.
    pub allow_headers: Option<HeaderSet>,
    /// `credentials = "passthrough"`: a public route whose `Authorization` and API-key header
    /// are forwarded untouched (never verified by permgate).
    pub passthrough: bool,
    /// The `[[resource]]` this route was expanded from (`None`: a `[[route]]`).
    pub resource: Option<String>,
    /// What the route's 2xx answer creates, learned into the live snapshot at once
    /// ([`crate::learn`]).
    pub creates: Option<Box<crate::learn::Creates>>,
    /// `[tenants] from = "path:<param>"`: the segment of this route's path holding the
    /// tenant (0-based after the leading `/`); `None`: the route's path names none.
    pub tenant_segment: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub address: String,
    pub h2c: bool,
    pub threads: usize,
    /// On SIGTERM: stop accepting, then let requests in flight finish for this long.
    pub drain_seconds: u64,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with these files, reloaded when they change.
    pub tls: Option<ListenTls>,
    /// Where the listening socket is handed to a new process on a binary upgrade (SIGQUIT).
    pub upgrade_sock: PathBuf,
    /// Per-connection socket buffers (bytes): what each open client connection holds while it
    /// waits, so they bound idle memory; 0 disables buffering in that direction.
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Most request headers (431 `headers_too_large` above; Pingora's own cap is 256).
    pub max_headers: usize,
    /// Most bytes of request headers, names and values (431 above).
    pub max_header_bytes: usize,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// How long an idle HTTP/1.1 keep-alive connection (or an idle HTTP/2 connection) is kept.
    pub keepalive_timeout_seconds: u64,
    /// Most concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// The largest request body on any route (declared length → 413 before anything is
    /// forwarded; a streamed body that grows past it is cut off). Inspected routes also have
    /// their own `body.max_bytes`.
    pub max_body_bytes: u64,
    /// The data plane.
    pub engine: Engine,
    /// hyper engine: plain HTTP/1.1 connections served by permgate's own loop toward a plain
    /// HTTP CRM (less CPU per call); what it does not handle goes to hyper (`plane::lane`).
    pub h1_lane: bool,
    /// hyper engine: most client connections open at once; beyond, new ones wait in the
    /// listen backlog (not accepted) until one closes. Read at start.
    pub max_connections: usize,
    /// hyper engine: the listen backlog (connections the kernel completes before they are
    /// accepted; capped by `net.core.somaxconn`). Read at start.
    pub backlog: u32,
    /// hyper engine: a write to a client that makes no progress for this long (a client that
    /// does not read its answer) closes the connection.
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// TLS to the CRM.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub sni: String,
    /// PEM bundle of the CAs to trust; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key (PEM) presented to the CRM (mutual TLS).
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// The first (or only) CRM instance.
    pub address: SocketAddr,
    /// Every CRM instance; more than one: round robin over the healthy ones.
    pub addresses: Vec<SocketAddr>,
    pub health_check_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// The whole upstream exchange: connect, request, response headers and body.
    pub total_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle keep-alive connections kept per CRM instance (0 when `keepalive` is off).
    pub pool_size: usize,
    /// Reuse CRM connections between calls (`upstream.keepalive`, and `pool_size > 0`). Off:
    /// every call opens its own connection, asks `Connection: close`, and closes it after the
    /// answer (no late byte of one answer can be read as another caller's).
    pub keepalive: bool,
    /// Methods re-sent once on a fresh connection when a reused one closed before any answer
    /// (`upstream.retry_methods`); any other method gets 502 `upstream_error` instead.
    pub retry_methods: Vec<http::Method>,
    /// Calls in flight at once per CRM instance (`upstream.max_connections`; 0: no cap).
    pub max_connections: usize,
    /// Calls waiting for one of those at most (beyond: 503 `upstream_busy` at once).
    pub queue_size: usize,
    /// Longest wait in that queue (then 503 `upstream_busy`).
    pub queue_timeout: Duration,
    /// When set, the `Host` sent to the CRM (else the client's, as received).
    pub host: Option<http::HeaderValue>,
    pub tls: Option<UpstreamTls>,
}

/// The headers permgate sets on forwarded calls; client copies are always removed.
#[derive(Debug, Clone)]
pub struct Forward {
    pub user_header: HeaderName,
    pub roles_header: HeaderName,
    pub request_id_header: HeaderName,
    pub forward_authorization: bool,
    /// Client headers always removed (see [`DEFAULT_STRIP_HEADERS`]).
    pub strip_headers: HeaderSet,
    /// Set `X-Forwarded-For` to the TCP peer (after removing the client's).
    pub set_forwarded_for: bool,
    /// Which client request headers reach the CRM.
    pub request_headers: RequestHeaders,
    /// Allow-list mode: the client headers forwarded on every route (see
    /// [`DEFAULT_ALLOW_HEADERS`]); a route may add its own ([`RouteInfo::allow_headers`]).
    pub allow_headers: HeaderSet,
}

/// Which client request headers reach the CRM (`forward.request_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestHeaders {
    /// All but the hop-by-hop ones, `forward.strip_headers`, credentials and permgate's own.
    StripList,
    /// Only `forward.allow_headers` (and the route's), the framing headers (`Host`,
    /// `Content-Length`, `Transfer-Encoding`), a verified JWT in `Authorization` when
    /// `forward_authorization` is on, and the headers permgate sets.
    AllowList,
}

/// What happens when the snapshot is older than `snapshot.max_staleness_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Keep serving with the old snapshot (logged, and shown in /status).
    Serve,
    /// Refuse protected calls with 503 `snapshot_stale` until a fresh snapshot arrives.
    FailClosed,
}

/// Where the snapshot comes from and how fresh it must be.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    /// The snapshot file (read at start; watched when `watch`).
    pub path: PathBuf,
    pub watch: bool,
    pub poll_interval: Duration,
    /// Where each accepted snapshot is persisted (temp file + rename), and read back at start
    /// when the source cannot be read.
    pub persist_path: Option<PathBuf>,
    /// Zero: no limit.
    pub max_staleness: Duration,
    pub on_stale: OnStale,
    /// An HTTP(S) source pulled every `pull_interval` with `If-None-Match`. When set, it is
    /// authoritative: the file is read only at start (as a fallback) and not watched.
    pub url: Option<String>,
    pub pull_interval: Duration,
    pub pull_timeout: Duration,
    /// A bearer token sent to the URL source.
    pub url_token: Option<String>,
    /// When set, a pulled snapshot must carry a valid ed25519 signature of its body (base64, in
    /// the `x-snapshot-signature` response header) by this key.
    pub public_key: Option<[u8; 32]>,
    /// The CRM's own database ([`crate::dbsource`]). When set, it is authoritative like `url`.
    pub database: Option<crate::dbsource::DbSource>,
    /// A record learned from a create answer ([`crate::learn`]) that a full load does not hold
    /// is put back on top of it while younger than this, then dropped.
    pub learned_ttl: Duration,
}

/// The admin API: its own listener, never the traffic port.
#[derive(Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token (protected endpoints compare it in constant time).
    pub token: String,
    pub max_snapshot_bytes: usize,
    /// `GET /metrics` needs the token too (it is open by default, like the probes).
    pub protect_metrics: bool,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// How an unmatched route is refused (both deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// 404 `route_not_found` (default).
    NotFound,
    /// 403 `route_not_allowed`.
    Forbidden,
}

/// `[rate_limit]`.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// One token bucket per caller (its user id; the client IP for an anonymous caller).
    pub per_caller: Option<crate::limit::Limit>,
    /// Most callers tracked at once (idle buckets are evicted first).
    pub max_callers: usize,
}

/// A validated, compiled config.
pub struct Config {
    /// The file it came from (for messages).
    pub file: String,
    /// Short hash of the config text, for status and logs.
    pub hash: String,
    pub listen: Listen,
    pub upstream: Upstream,
    pub identity: Verifier,
    pub snapshot: SnapshotSource,
    pub admin: Option<Admin>,
    pub catalog: Catalog,
    pub forward: Forward,
    pub routes: RouteTable<RouteInfo>,
    pub unmatched: Unmatched,
    /// Read at start only (the writer thread is not restarted on reload).
    pub decision_log: crate::decision_log::Settings,
    /// Shadow mode for every route.
    pub shadow: bool,
    /// Shadow mode for callers holding any of these roles.
    pub shadow_roles: Vec<String>,
    /// A candidate config (with its own snapshot) evaluated beside this one on live traffic;
    /// disagreements are counted and logged, never enforced.
    pub candidate_config: Option<PathBuf>,
    pub rate_limit: RateLimits,
    /// `[cors]` (boxed: most configs have none).
    pub cors: Option<Box<crate::cors::Cors>>,
    /// `[tenants]`: where a call's tenant comes from; `None`: one implicit tenant.
    pub tenants: Option<crate::tenants::TenantSources>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("hash", &self.hash)
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

/// A header name from config: valid, lowercase.
fn header_name(
    file: &str,
    text: &str,
    field: &str,
    value: &Spanned<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(value.get_ref().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            let line = (value.span().end > 0).then(|| line_of(text, value.span().start));
            errors.push(ConfigError::new(
                file,
                line,
                field,
                format!("'{}' is not a valid header name", value.get_ref()),
            ));
            None
        }
    }
}

impl Config {
    /// Compile config text. `base` resolves the relative paths it names. (The server's
    /// `permgate::config::load` reads the file and adds the checks only it can make.)
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| vec![ConfigError::from_toml(file, text, &e)])?;
        let mut errors = Vec::new();
        let at = |s: std::ops::Range<usize>| Some(line_of(text, s.start));

        // Catalogue first: routes and roles refer to it.
        let catalog = match &raw.catalog {
            None => Catalog::builtin(),
            Some(c) => {
                let read =
                    |list: &[Spanned<String>], field: &str, errors: &mut Vec<ConfigError>| {
                        let mut out = Vec::new();
                        for p in list {
                            let full = base.join(p.get_ref());
                            match std::fs::read_to_string(&full) {
                                Ok(t) => out.push((full.display().to_string(), t)),
                                Err(e) => errors.push(ConfigError::new(
                                    file,
                                    at(p.span()),
                                    field,
                                    format!("cannot read '{}': {e}", full.display()),
                                )),
                            }
                        }
                        out
                    };
                let perms = read(&c.permissions, "catalog.permissions", &mut errors);
                let roles = read(&c.roles, "catalog.roles", &mut errors);
                Catalog::build(&perms, &roles)
            }
        };
        let mut catalog = match catalog {
            Ok(c) => Some(c),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        // Record types ride on the catalogue: the snapshot's records are built against them.
        if !raw.record_types.is_empty() {
            let decls: Vec<&RawRecordType> = raw.record_types.iter().map(|r| r.get_ref()).collect();
            let (types, errs) = crate::inspect::build_record_types(&decls);
            for (i, m) in errs {
                errors.push(ConfigError::new(
                    file,
                    at(raw.record_types[i].span()),
                    &format!("record_type[{i}]"),
                    m,
                ));
            }
            if let Some(c) = catalog.as_mut() {
                c.set_record_types(types);
            }
        }

        let threads = raw.listen.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        for (v, field) in [
            (&raw.listen.read_buffer_bytes, "listen.read_buffer_bytes"),
            (&raw.listen.write_buffer_bytes, "listen.write_buffer_bytes"),
        ] {
            if *v.get_ref() > 1024 * 1024 {
                errors.push(ConfigError::new(
                    file,
                    locate(text, field),
                    field,
                    "at most 1048576 (each open connection holds this much)",
                ));
            }
        }
        if threads == 0 || threads > 256 {
            errors.push(ConfigError::new(
                file,
                locate(text, "listen.threads"),
                "listen.threads",
                "must be between 1 and 256",
            ));
        }
        let l = &raw.listen;
        for (field, ok, range) in [
            (
                "listen.max_headers",
                (1..=256).contains(&l.max_headers),
                "between 1 and 256",
            ),
            (
                "listen.max_header_bytes",
                (1024..=1_048_575).contains(&l.max_header_bytes),
                "between 1024 and 1048575",
            ),
            (
                "listen.body_read_timeout_ms",
                (100..=600_000).contains(&l.body_read_timeout_ms),
                "between 100 and 600000",
            ),
            (
                "listen.keepalive_timeout_seconds",
                (1..=3600).contains(&l.keepalive_timeout_seconds),
                "between 1 and 3600",
            ),
            (
                "listen.h2_max_concurrent_streams",
                (1..=10_000).contains(&l.h2_max_concurrent_streams),
                "between 1 and 10000",
            ),
            ("listen.max_body_bytes", l.max_body_bytes >= 1, "at least 1"),
            (
                "listen.max_connections",
                (1..=1_000_000).contains(&l.max_connections),
                "between 1 and 1000000",
            ),
            (
                "listen.backlog",
                (1..=65_535).contains(&l.backlog),
                "between 1 and 65535",
            ),
            (
                "listen.write_timeout_ms",
                (100..=3_600_000).contains(&l.write_timeout_ms),
                "between 100 and 3600000",
            ),
            (
                "rate_limit.max_callers",
                (1..=10_000_000).contains(&raw.rate_limit.max_callers),
                "between 1 and 10000000",
            ),
        ] {
            if !ok {
                errors.push(ConfigError::new(
                    file,
                    locate(text, field),
                    field,
                    format!("must be {range}"),
                ));
            }
        }
        if raw.listen.address.get_ref().parse::<SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                file,
                at(raw.listen.address.span()),
                "listen.address",
                format!(
                    "'{}' is not an IP:port address",
                    raw.listen.address.get_ref()
                ),
            ));
        }
        // One CRM (`address`) or several (`addresses`, round robin with health checks).
        let listed: Vec<&Spanned<String>> =
            match (&raw.upstream.address, raw.upstream.addresses.as_slice()) {
                (Some(a), []) => vec![a],
                (None, list) if !list.is_empty() => list.iter().collect(),
                _ => {
                    errors.push(ConfigError::new(
                        file,
                        locate(text, "upstream.address"),
                        "upstream",
                        "set exactly one of 'address' or 'addresses' (a non-empty list)",
                    ));
                    Vec::new()
                }
            };
        let mut upstream_addrs = Vec::new();
        for a in &listed {
            match a
                .get_ref()
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
            {
                Some(addr) => upstream_addrs.push(addr),
                None => errors.push(ConfigError::new(
                    file,
                    at(a.span()),
                    "upstream.address",
                    format!("'{}' is not a resolvable host:port", a.get_ref()),
                )),
            }
        }
        let upstream_addr = upstream_addrs.first().copied();
        if raw.upstream.health_check_interval_ms < 50 {
            errors.push(ConfigError::new(
                file,
                locate(text, "upstream.health_check_interval_ms"),
                "upstream.health_check_interval_ms",
                "must be at least 50",
            ));
        }
        let u = &raw.upstream;
        for (name, v) in [
            ("upstream.connect_timeout_ms", u.connect_timeout_ms),
            ("upstream.read_timeout_ms", u.read_timeout_ms),
            ("upstream.write_timeout_ms", u.write_timeout_ms),
            ("upstream.total_timeout_ms", u.total_timeout_ms),
            ("upstream.idle_timeout_ms", u.idle_timeout_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                errors.push(ConfigError::new(
                    file,
                    locate(text, name),
                    name,
                    "must be between 1 and 3600000",
                ));
            }
        }
        if u.queue_timeout_ms == 0 || u.queue_timeout_ms > 3_600_000 {
            errors.push(ConfigError::new(
                file,
                locate(text, "upstream.queue_timeout_ms"),
                "upstream.queue_timeout_ms",
                "must be between 1 and 3600000",
            ));
        }
        let mut retry_methods = Vec::new();
        for m in &u.retry_methods {
            let name = m.get_ref();
            match http::Method::from_bytes(name.as_bytes()) {
                Ok(method) if name.bytes().all(|b| b.is_ascii_uppercase()) => {
                    retry_methods.push(method)
                }
                _ => errors.push(ConfigError::new(
                    file,
                    at(m.span()),
                    "upstream.retry_methods",
                    format!("'{name}' is not an HTTP method name (upper case, as GET)"),
                )),
            }
        }

        let mut identity = match Verifier::build(&raw.identity, file, text, base) {
            Ok(v) => Some(v),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        let tenants = match (&raw.tenants, identity.as_mut()) {
            (Some(t), Some(identity)) => match t.build(identity) {
                Ok(t) => {
                    if let Some(claim) = &t.claim {
                        identity.set_tenant_claim(claim);
                    }
                    Some(t)
                }
                Err(messages) => {
                    for m in messages {
                        errors.push(ConfigError::new(
                            file,
                            locate(text, "tenants.from"),
                            "tenants.from",
                            m,
                        ));
                    }
                    None
                }
            },
            _ => None,
        };

        let f = &raw.forward;
        let user_header = header_name(
            file,
            text,
            "forward.user_header",
            &f.user_header,
            &mut errors,
        );
        let roles_header = header_name(
            file,
            text,
            "forward.roles_header",
            &f.roles_header,
            &mut errors,
        );
        let request_id_header = header_name(
            file,
            text,
            "forward.request_id_header",
            &f.request_id_header,
            &mut errors,
        );

        // permgate's own header names: distinct, and never a reserved or credential header.
        {
            let mut own: Vec<(&str, &Spanned<String>)> = vec![
                ("forward.user_header", &f.user_header),
                ("forward.roles_header", &f.roles_header),
                ("forward.request_id_header", &f.request_id_header),
            ];
            own.sort_by_key(|(_, v)| v.get_ref().to_ascii_lowercase());
            for w in own.windows(2) {
                if w[0].1.get_ref().eq_ignore_ascii_case(w[1].1.get_ref()) {
                    errors.push(ConfigError::new(
                        file,
                        (w[1].1.span().end > 0).then(|| line_of(text, w[1].1.span().start)),
                        w[1].0,
                        format!(
                            "'{}' is also {}; each header needs its own name",
                            w[1].1.get_ref(),
                            w[0].0
                        ),
                    ));
                }
            }
            for (field, v) in &own {
                let name = v.get_ref().to_ascii_lowercase();
                let credential = identity
                    .as_ref()
                    .is_some_and(|i| i.credential_headers().any(|h| h.as_str() == name));
                if RESERVED_HEADERS.contains(&name.as_str()) || credential {
                    errors.push(ConfigError::new(
                        file,
                        (v.span().end > 0).then(|| line_of(text, v.span().start)),
                        field,
                        format!("'{name}' is reserved (framing, routing, hop-by-hop or a credential header)"),
                    ));
                }
            }
        }
        let mut strip_headers = Vec::new();
        for h in &f.strip_headers {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if !RESERVED_HEADERS.contains(&n.as_str()) => strip_headers.push(n),
                _ => errors.push(ConfigError::new(
                    file,
                    locate(text, "forward.strip_headers"),
                    "forward.strip_headers",
                    format!("'{h}' is not a valid header name, or one permgate handles itself"),
                )),
            }
        }
        let strip_headers = HeaderSet::new(strip_headers);
        let request_headers = match f.request_headers.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("strip_list") => RequestHeaders::StripList,
            Some("allow_list") => RequestHeaders::AllowList,
            Some(other) => {
                errors.push(ConfigError::new(
                    file,
                    locate(text, "forward.request_headers"),
                    "forward.request_headers",
                    format!("'{other}' is not one of: strip_list, allow_list"),
                ));
                RequestHeaders::StripList
            }
        };
        // A name in an allow list: valid, and not one permgate handles itself (framing,
        // hop-by-hop, credentials, its own headers) or always strips.
        let own_names = [&f.user_header, &f.roles_header, &f.request_id_header];
        let allowed_name = |h: &str| -> Result<HeaderName, String> {
            let n = HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("'{h}' is not a valid header name"))?;
            let name = n.as_str();
            let handled = [
                "host",
                "content-length",
                "transfer-encoding",
                "authorization",
            ]
            .contains(&name)
                || crate::canon::FIXED_HOP_BY_HOP.contains(&n)
                || name.starts_with(crate::headers::OWN_HEADER_PREFIX)
                || own_names
                    .iter()
                    .any(|o| o.get_ref().eq_ignore_ascii_case(name))
                || identity
                    .as_ref()
                    .is_some_and(|i| i.credential_headers().any(|c| c == n));
            if handled {
                return Err(format!("'{h}' is a header permgate handles itself"));
            }
            if strip_headers.contains(name) {
                return Err(format!(
                    "'{h}' is in forward.strip_headers (stripped names are never forwarded)"
                ));
            }
            Ok(n)
        };
        let mut allow_headers = Vec::new();
        for h in &f.allow_headers {
            match allowed_name(h) {
                Ok(n) => allow_headers.push(n),
                Err(m) => errors.push(ConfigError::new(
                    file,
                    locate(text, "forward.allow_headers"),
                    "forward.allow_headers",
                    m,
                )),
            }
        }
        let file_exists = |p: &Spanned<String>, field: &str, errors: &mut Vec<ConfigError>| {
            let full = base.join(p.get_ref());
            if !full.is_file() {
                errors.push(ConfigError::new(
                    file,
                    at(p.span()),
                    field,
                    format!("cannot read '{}'", full.display()),
                ));
            }
            full
        };
        let listen_tls = raw.listen.tls.as_ref().map(|t| ListenTls {
            cert_file: file_exists(&t.cert_file, "listen.tls.cert_file", &mut errors),
            key_file: file_exists(&t.key_file, "listen.tls.key_file", &mut errors),
            client_ca_file: t
                .client_ca_file
                .as_ref()
                .map(|c| file_exists(c, "listen.tls.client_ca_file", &mut errors)),
        });
        let upstream_tls = raw.upstream.tls.as_ref().map(|t| {
            if t.sni.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    locate(text, "upstream.tls.sni"),
                    "upstream.tls.sni",
                    "the CRM's TLS server name is required",
                ));
            }
            // The files are parsed here too, so a bad one is refused by check-config and by a
            // reload (the proxy re-reads them when they change, keeping the last good ones).
            let mut pem = |p: &Spanned<String>, field: &str, key: bool| {
                let full = base.join(p.get_ref());
                let parsed = if key {
                    crate::pem::private_key(&full).map(|_| ())
                } else {
                    crate::pem::certificates(&full).map(|_| ())
                };
                if let Err(e) = parsed {
                    errors.push(ConfigError::new(file, at(p.span()), field, e));
                }
                full
            };
            let ca_file = t
                .ca_file
                .as_ref()
                .map(|c| pem(c, "upstream.tls.ca_file", false));
            let client = match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((
                    pem(c, "upstream.tls.cert_file", false),
                    pem(k, "upstream.tls.key_file", true),
                )),
                (None, None) => None,
                (Some(c), None) | (None, Some(c)) => {
                    errors.push(ConfigError::new(
                        file,
                        at(c.span()),
                        "upstream.tls",
                        "a client certificate needs both cert_file and key_file",
                    ));
                    None
                }
            };
            UpstreamTls {
                sni: t.sni.clone(),
                ca_file,
                client,
            }
        });
        let upstream_host = match &raw.upstream.host {
            None => None,
            Some(h) => match http::HeaderValue::from_str(h) {
                Ok(v) if !h.is_empty() && h.parse::<http::uri::Authority>().is_ok() => Some(v),
                _ => {
                    errors.push(ConfigError::new(
                        file,
                        locate(text, "upstream.host"),
                        "upstream.host",
                        format!("'{h}' is not a host[:port]"),
                    ));
                    None
                }
            },
        };

        let trailing_slash = match raw.paths.trailing_slash.as_ref() {
            None => TrailingSlash::Strict,
            Some(s) => match s.get_ref().as_str() {
                "strict" => TrailingSlash::Strict,
                "either" => TrailingSlash::Either,
                other => {
                    errors.push(ConfigError::new(
                        file,
                        at(s.span()),
                        "paths.trailing_slash",
                        format!("'{other}' is not one of: strict, either"),
                    ));
                    TrailingSlash::Strict
                }
            },
        };
        let unmatched = match raw.policy.unmatched.as_ref() {
            None => Unmatched::NotFound,
            Some(s) => match s.get_ref().as_str() {
                "not_found" => Unmatched::NotFound,
                "forbidden" => Unmatched::Forbidden,
                other => {
                    errors.push(ConfigError::new(
                        file,
                        at(s.span()),
                        "policy.unmatched",
                        format!("'{other}' is not one of: not_found, forbidden (both deny)"),
                    ));
                    Unmatched::NotFound
                }
            },
        };

        let sn = &raw.snapshot;
        let on_stale = match sn.on_stale.as_ref() {
            None => OnStale::Serve,
            Some(v) => match v.get_ref().as_str() {
                "serve" => OnStale::Serve,
                "fail_closed" => OnStale::FailClosed,
                other => {
                    errors.push(ConfigError::new(
                        file,
                        at(v.span()),
                        "snapshot.on_stale",
                        format!("'{other}' is not one of: serve, fail_closed"),
                    ));
                    OnStale::Serve
                }
            },
        };
        if sn.poll_interval_ms < 50 || sn.poll_interval_ms > 3_600_000 {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.poll_interval_ms"),
                "snapshot.poll_interval_ms",
                "must be between 50 and 3600000",
            ));
        }
        if let Some(u) = &sn.url {
            let ok = (u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
                && u.get_ref().parse::<http::Uri>().is_ok();
            if !ok {
                errors.push(ConfigError::new(
                    file,
                    at(u.span()),
                    "snapshot.url",
                    format!("'{}' is not an http:// or https:// URL", u.get_ref()),
                ));
            }
        }
        if sn.pull_interval_ms < 100 || sn.pull_timeout_ms == 0 || sn.pull_timeout_ms > 600_000 {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.pull_interval_ms"),
                "snapshot.pull_interval_ms",
                "pull_interval_ms must be at least 100 and pull_timeout_ms between 1 and 600000",
            ));
        }
        let public_key = match &sn.public_key {
            None => None,
            Some(k) => {
                use base64::Engine;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(k.get_ref().trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .filter(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_ok());
                if key.is_none() {
                    errors.push(ConfigError::new(
                        file,
                        at(k.span()),
                        "snapshot.public_key",
                        "must be a base64 ed25519 public key (32 bytes)",
                    ));
                }
                key
            }
        };
        let database = sn.database.as_ref().map(|d| {
            let line = at(d.span());
            let d = d.get_ref();
            // At the setting's own line when it is written, else the section's.
            let mut bad = |field: &str, m: &str| {
                errors.push(ConfigError::new(
                    file,
                    locate(text, field).or(line),
                    field,
                    m,
                ));
            };
            if sn.url.is_some() {
                bad("snapshot.database", "set url or database, not both");
            }
            // The driver's own parse (the server's, `permgate::config::load`) checks the rest.
            if !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
                bad(
                    "snapshot.database.url",
                    "must be a postgres:// URL (postgres://user:password@host:port/dbname)",
                );
            }
            if !(100..=3_600_000).contains(&d.poll_interval_ms) {
                bad(
                    "snapshot.database.poll_interval_ms",
                    "must be between 100 and 3600000",
                );
            }
            if d.reconcile_interval_ms < d.poll_interval_ms {
                bad(
                    "snapshot.database.reconcile_interval_ms",
                    "must be at least poll_interval_ms",
                );
            }
            if sn.max_staleness_seconds > 0
                && Duration::from_secs(sn.max_staleness_seconds)
                    < Duration::from_millis(d.reconcile_interval_ms)
            {
                // A quiet database is reloaded only every reconcile interval: a shorter
                // staleness limit would call a healthy source stale.
                bad(
                    "snapshot.max_staleness_seconds",
                    "must be at least snapshot.database.reconcile_interval_ms (or 0)",
                );
            }
            if d.queries.users.trim().is_empty() {
                bad("snapshot.database.queries.users", "must not be empty");
            }
            // Tenants: the memberships query and `[tenants]` go together (the snapshot and the
            // config must agree on tenants, `permgate::live::tenants_mismatch`).
            let blank = |q: &Option<String>| q.as_deref().is_none_or(|q| q.trim().is_empty());
            match (raw.tenants.is_some(), blank(&d.queries.memberships)) {
                (true, true) => bad(
                    "snapshot.database.queries.memberships",
                    "required with [tenants]: the SQL yielding user_id, tenant, roles (and teams, manager) per membership",
                ),
                (false, false) => bad(
                    "snapshot.database.queries.memberships",
                    "memberships need [tenants] (where a call's tenant comes from); without tenants, roles come from the users query",
                ),
                _ => {}
            }
            if !d.tenant_session_sql.is_empty() && blank(&d.queries.tenants) {
                bad(
                    "snapshot.database.tenant_session_sql",
                    "needs snapshot.database.queries.tenants (the tenants it runs for)",
                );
            }
            if !blank(&d.queries.tenants) && raw.tenants.is_none() {
                bad(
                    "snapshot.database.queries.tenants",
                    "tenants need [tenants] (where a call's tenant comes from)",
                );
            }
            if let Some(inc) = &d.incremental {
                if !blank(&inc.memberships) && blank(&d.queries.memberships) {
                    bad(
                        "snapshot.database.incremental.memberships",
                        "needs snapshot.database.queries.memberships",
                    );
                }
                if d.queries.cursor.is_none() {
                    bad(
                        "snapshot.database.incremental",
                        "needs snapshot.database.queries.cursor (its value is the queries' $1)",
                    );
                }
                if inc.overlap_ms > d.reconcile_interval_ms {
                    bad(
                        "snapshot.database.incremental.overlap_ms",
                        "must be at most reconcile_interval_ms",
                    );
                }
                let none = [
                    &inc.users,
                    &inc.owners,
                    &inc.shares,
                    &inc.related,
                    &inc.memberships,
                ]
                .iter()
                    .all(|q| q.as_deref().is_none_or(|q| q.trim().is_empty()));
                if none {
                    bad(
                        "snapshot.database.incremental",
                        "names none of users, memberships, owners, shares, related",
                    );
                }
            }
            // A channel is an identifier: LISTEN quotes it, so no SQL reaches the server.
            let channel_ok = |c: &str| {
                !c.is_empty()
                    && c.len() <= 63
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if d.notify_channel.as_deref().is_some_and(|c| !channel_ok(c)) {
                bad(
                    "snapshot.database.notify_channel",
                    "must be 1 to 63 ASCII letters, digits or _",
                );
            }
            let tls = match d.tls.as_deref() {
                None | Some("off") => crate::dbsource::DbTls::Off,
                Some("require") => crate::dbsource::DbTls::Require,
                Some("verify-full") => crate::dbsource::DbTls::VerifyFull,
                Some(_) => {
                    bad(
                        "snapshot.database.tls",
                        "must be \"off\", \"require\" or \"verify-full\"",
                    );
                    crate::dbsource::DbTls::Off
                }
            };
            let ca_file = d.ca_file.as_ref().map(|f| base.join(f));
            if let Some(f) = &ca_file {
                if tls != crate::dbsource::DbTls::VerifyFull {
                    bad(
                        "snapshot.database.ca_file",
                        "is used only with tls = \"verify-full\"",
                    );
                } else if let Err(e) = crate::pem::certificates(f) {
                    bad("snapshot.database.ca_file", &e);
                }
            }
            crate::dbsource::DbSource {
                incremental: d.incremental.clone(),
                notify_channel: d.notify_channel.clone(),
                tls,
                ca_file,
                url: d.url.clone(),
                poll_interval: Duration::from_millis(d.poll_interval_ms),
                reconcile_interval: Duration::from_millis(d.reconcile_interval_ms),
                session_sql: d.session_sql.clone(),
                tenant_session_sql: d.tenant_session_sql.clone(),
                queries: d.queries.clone(),
            }
        });
        if public_key.is_some() && sn.url.is_none() {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.public_key"),
                "snapshot.public_key",
                "a public key needs a url source (pulled snapshots are the ones verified)",
            ));
        }
        let snapshot_source = SnapshotSource {
            path: base.join(sn.path.get_ref()),
            watch: sn.watch,
            poll_interval: Duration::from_millis(sn.poll_interval_ms),
            persist_path: sn.persist_path.as_ref().map(|p| base.join(p.get_ref())),
            max_staleness: Duration::from_secs(sn.max_staleness_seconds),
            on_stale,
            url: sn.url.as_ref().map(|u| u.get_ref().clone()),
            pull_interval: Duration::from_millis(sn.pull_interval_ms),
            pull_timeout: Duration::from_millis(sn.pull_timeout_ms),
            url_token: sn.url_token.clone(),
            public_key,
            database,
            learned_ttl: Duration::from_millis(sn.learned_ttl_ms),
        };
        if !(1..=86_400_000).contains(&sn.learned_ttl_ms) {
            errors.push(ConfigError::new(
                file,
                locate(text, "snapshot.learned_ttl_ms"),
                "snapshot.learned_ttl_ms",
                "must be between 1 and 86400000",
            ));
        }
        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let listen = match a.listen.get_ref().parse::<SocketAddr>() {
                    Ok(l) => Some(l),
                    Err(_) => {
                        errors.push(ConfigError::new(
                            file,
                            at(a.listen.span()),
                            "admin.listen",
                            format!("'{}' is not an IP:port address", a.listen.get_ref()),
                        ));
                        None
                    }
                };
                if raw.listen.address.get_ref() == a.listen.get_ref() {
                    errors.push(ConfigError::new(
                        file,
                        at(a.listen.span()),
                        "admin.listen",
                        "the admin API must not share the traffic port",
                    ));
                }
                let token = match (&a.token, &a.token_file) {
                    (Some(t), None) => Some(t.clone()),
                    (None, Some(f)) => match std::fs::read_to_string(base.join(f.get_ref())) {
                        Ok(t) => Some(t.trim().to_string()),
                        Err(e) => {
                            errors.push(ConfigError::new(
                                file,
                                at(f.span()),
                                "admin.token_file",
                                format!("cannot read '{}': {e}", f.get_ref()),
                            ));
                            None
                        }
                    },
                    _ => {
                        errors.push(ConfigError::new(
                            file,
                            at(a.listen.span()),
                            "admin",
                            "set exactly one of token, token_file",
                        ));
                        None
                    }
                };
                if token.as_ref().is_some_and(|t| t.len() < 16) {
                    errors.push(ConfigError::new(
                        file,
                        at(a.listen.span()),
                        "admin.token",
                        "the admin token must be at least 16 characters",
                    ));
                }
                match (listen, token) {
                    (Some(listen), Some(token)) => Some(Admin {
                        listen,
                        token,
                        max_snapshot_bytes: (a.max_snapshot_mb as usize).saturating_mul(1 << 20),
                        protect_metrics: a.protect_metrics,
                    }),
                    _ => None,
                }
            }
        };

        let decision_log = match &raw.decision_log {
            None => crate::decision_log::Settings::default(),
            Some(d) => {
                use crate::decision_log::{Settings, Target};
                if !(0.0..=1.0).contains(&d.sample_allows) {
                    errors.push(ConfigError::new(
                        file,
                        locate(text, "decision_log.sample_allows"),
                        "decision_log.sample_allows",
                        "must be between 0.0 and 1.0",
                    ));
                }
                if d.capacity == 0 || d.capacity > 10_000_000 {
                    errors.push(ConfigError::new(
                        file,
                        locate(text, "decision_log.capacity"),
                        "decision_log.capacity",
                        "must be between 1 and 10000000",
                    ));
                }
                for m in &d.mask {
                    if !["user", "path", "roles", "trimmed"].contains(&m.as_str()) {
                        errors.push(ConfigError::new(
                            file,
                            locate(text, "decision_log.mask"),
                            "decision_log.mask",
                            format!("'{m}' is not one of: user, path, roles, trimmed"),
                        ));
                    }
                }
                Settings {
                    target: match d.target.as_str() {
                        "stdout" => Target::Stdout,
                        "off" => Target::Off,
                        path => Target::File(base.join(path)),
                    },
                    capacity: d.capacity,
                    sample_allows: d.sample_allows,
                    mask: d.mask.clone(),
                }
            }
        };

        let per_caller = match raw
            .rate_limit
            .per_caller
            .as_ref()
            .map(RawRateLimit::compile)
        {
            None => None,
            Some(Ok(limit)) => Some(limit),
            Some(Err(e)) => {
                errors.push(ConfigError::new(
                    file,
                    locate(text, "rate_limit.per_caller"),
                    "rate_limit.per_caller",
                    e,
                ));
                None
            }
        };

        let cors = match &raw.cors {
            None => None,
            Some(c) => {
                if *raw.listen.engine.get_ref() == Engine::Pingora {
                    errors.push(ConfigError::new(
                        file,
                        locate(text, "listen.engine"),
                        "cors",
                        "[cors] is served by the hyper engine only: remove listen.engine = \"pingora\"",
                    ));
                }
                let id_header = raw.forward.request_id_header.get_ref().to_ascii_lowercase();
                match c.build(file, text, &id_header) {
                    Ok(c) => Some(Box::new(c)),
                    Err(mut e) => {
                        errors.append(&mut e);
                        None
                    }
                }
            }
        };

        // Routes: those the resources expand to first (so a hand-written route that clashes
        // with one is the route reported), then the hand-written ones, all compiled alike.
        let mut specs = Vec::new();
        let expanded = resource::expand(file, text, &raw.resources, catalog.as_ref(), &mut errors);
        let declared = expanded
            .iter()
            .map(|e| (e.line, e.field.clone(), &e.route, Some(e.resource.as_str())))
            .chain(raw.routes.iter().enumerate().map(|(i, r)| {
                (
                    line_of(text, r.span().start),
                    format!("route[{i}]"),
                    r.get_ref(),
                    None,
                )
            }));
        for (line, field, route, from_resource) in declared {
            let err = |m: String| ConfigError::new(file, Some(line), &field, m);
            let methods = match MethodSet::parse(&route.methods) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(err(format!("methods: {e}")));
                    continue;
                }
            };
            let pattern = match (&route.path, &route.regex) {
                (Some(_), None) if route.priority.is_some() => {
                    errors.push(err(
                        "'priority' orders regex routes only; template routes are ordered by specificity".into(),
                    ));
                    continue;
                }
                (Some(p), None) => PathPattern::Template(p.clone()),
                (None, Some(r)) => PathPattern::Regex {
                    regex: r.clone(),
                    priority: route.priority.unwrap_or(0),
                },
                _ => {
                    errors.push(err("set exactly one of 'path' or 'regex'".into()));
                    continue;
                }
            };
            let passthrough = route.credentials == Some(RouteCredentials::Passthrough);
            // Unverified credentials go to exactly the paths named: no catch-all, no regex.
            if passthrough
                && (route.regex.is_some()
                    || route.path.as_deref().is_some_and(|p| p.contains("{*")))
            {
                errors.push(err(
                    "credentials = \"passthrough\": name exact paths (a template without {*rest}), not a catch-all or a regex".into(),
                ));
                continue;
            }
            if passthrough && route.permission.is_some() {
                errors.push(err(
                    "credentials = \"passthrough\": the route is public for permgate (its credentials are the CRM's to check), so it takes no 'permission'".into(),
                ));
                continue;
            }
            let access = match (&route.permission, route.public || passthrough) {
                (Some(p), false) => match catalog.as_ref().map(|c| c.permission(p.get_ref())) {
                    Some(Some(id)) => Access::Permission(id),
                    Some(None) => {
                        // The permission's own line, not the route's.
                        errors.push(ConfigError::new(
                            file,
                            Some(line_of(text, p.span().start)),
                            &field,
                            format!(
                                "permission: unknown permission '{}' (not in the catalogue)",
                                p.get_ref()
                            ),
                        ));
                        continue;
                    }
                    None => continue, // the catalogue itself failed; already reported
                },
                (None, true) => Access::Public,
                (Some(_), true) => {
                    errors.push(err("a public route takes no 'permission'".into()));
                    continue;
                }
                (None, false) => {
                    errors.push(err(
                        "set 'permission' (or 'public = true'); nothing is allowed by default"
                            .into(),
                    ));
                    continue;
                }
            };
            if passthrough
                && (!route.records.is_empty()
                    || route.unknown_record.is_some()
                    || route.bulk.is_some()
                    || route.list.is_some()
                    || route.new_owner.is_some()
                    || route.fields.is_some()
                    || route.on_denied_fields.is_some()
                    || route.body.is_some())
            {
                errors.push(err(
                    "credentials = \"passthrough\": permgate knows no caller on this route, so it takes no records, bulk, list, new_owner, fields or body checks".into(),
                ));
                continue;
            }
            let inspect = match catalog.as_ref() {
                None => None,
                Some(c) => {
                    let raw_inspect = RawInspect {
                        records: &route.records,
                        unknown_record: route.unknown_record.as_deref(),
                        bulk: route.bulk.as_ref(),
                        list: route.list.as_ref(),
                        new_owner: route.new_owner.as_ref(),
                        fields: route.fields.as_ref(),
                        on_denied_fields: route.on_denied_fields.as_deref(),
                        body: route.body.as_ref(),
                    };
                    let permission = match access {
                        Access::Permission(p) => Some(p),
                        Access::Public => None,
                    };
                    match crate::inspect::compile(
                        &raw_inspect,
                        permission,
                        route.path.as_deref(),
                        c,
                    ) {
                        Ok(i) => i.map(Box::new),
                        Err(messages) => {
                            errors.extend(messages.into_iter().map(&err));
                            continue;
                        }
                    }
                }
            };
            if !route.allow_headers.is_empty() && request_headers != RequestHeaders::AllowList {
                errors.push(err(
                    "allow_headers: needs forward.request_headers = \"allow_list\" (every header not stripped is forwarded already)".into(),
                ));
                continue;
            }
            let mut route_allow = Vec::new();
            for h in &route.allow_headers {
                match allowed_name(h) {
                    Ok(n) => route_allow.push(n),
                    Err(m) => errors.push(err(format!("allow_headers: {m}"))),
                }
            }
            let route_allow = (!route_allow.is_empty())
                .then(|| HeaderSet::new(allow_headers.iter().cloned().chain(route_allow)));
            let creates = match (&route.creates, catalog.as_ref()) {
                (None, _) | (Some(_), None) => None,
                (Some(_), Some(_)) if access == Access::Public => {
                    errors.push(err(
                        "creates: permgate knows no caller on a public route, so it learns nothing from it (give the route a permission)".into(),
                    ));
                    continue;
                }
                (Some(_), Some(_)) if *raw.listen.engine.get_ref() == Engine::Pingora => {
                    errors.push(err(
                        "creates: records are learned from answers by the hyper engine only: remove listen.engine = \"pingora\" or this route's creates".into(),
                    ));
                    continue;
                }
                (Some(_), Some(_)) if route.list.is_some() || route.bulk.is_some() => {
                    errors.push(err(
                        "creates: a list or bulk route creates no single record; declare creates on the create route".into(),
                    ));
                    continue;
                }
                (Some(c), Some(cat)) => match crate::learn::compile(
                    c,
                    &route.methods,
                    route.path.as_deref(),
                    cat.record_types(),
                ) {
                    Ok(c) => Some(Box::new(c)),
                    Err(messages) => {
                        errors.extend(messages.into_iter().map(&err));
                        continue;
                    }
                },
            };
            let name = route.name.clone().unwrap_or_else(|| {
                format!(
                    "{} {}",
                    route.methods.join(","),
                    route
                        .path
                        .as_deref()
                        .or(route.regex.as_deref())
                        .unwrap_or("")
                )
            });
            let rate_limit = match route.rate_limit.as_ref().map(RawRateLimit::compile) {
                None => None,
                Some(Ok(limit)) => Some(Arc::new(crate::limit::RouteBucket::new(limit))),
                Some(Err(e)) => {
                    errors.push(err(format!("rate_limit.{e}")));
                    continue;
                }
            };
            if let Some(other) = specs
                .iter()
                .find(|s: &&RouteSpec<RouteInfo>| s.value.name == name)
            {
                errors.push(err(format!(
                    "route name '{name}' is also used at {}",
                    other.origin
                )));
                continue;
            }
            specs.push(RouteSpec {
                methods,
                pattern,
                origin: match from_resource {
                    Some(r) => format!("resource '{r}' at {file}:{line}"),
                    None => format!("{file}:{line}"),
                },
                value: RouteInfo {
                    name,
                    access,
                    shadow: route.shadow,
                    inspect,
                    rate_limit,
                    allow_body: route.allow_body,
                    allow_headers: route_allow,
                    passthrough,
                    resource: from_resource.map(String::from),
                    creates,
                    tenant_segment: tenants
                        .as_ref()
                        .and_then(|t| t.path.as_deref())
                        .zip(route.path.as_deref())
                        .and_then(|(name, template)| crate::inspect::param_segment(template, name)),
                },
            });
        }
        if raw.routes.is_empty() && raw.resources.is_empty() {
            errors.push(ConfigError::new(
                file,
                None,
                "route",
                "no [[route]] or [[resource]]: every call would be denied; add the CRM's routes",
            ));
        }
        let routes = match RouteTable::build(specs, trailing_slash) {
            Ok(t) => Some(t),
            Err(errs) => {
                for (origin, message) in errs {
                    let line = origin.rsplit(':').next().and_then(|l| l.parse().ok());
                    errors.push(ConfigError::new(file, line, "route", message));
                }
                None
            }
        };

        match (
            errors.is_empty(),
            catalog,
            identity,
            routes,
            upstream_addr,
            user_header,
            roles_header,
            request_id_header,
        ) {
            (
                true,
                Some(catalog),
                Some(identity),
                Some(routes),
                Some(address),
                Some(user_header),
                Some(roles_header),
                Some(request_id_header),
            ) => Ok(Config {
                file: file.to_string(),
                hash: hex::encode(&Sha256::digest(text.as_bytes())[..8]),
                listen: Listen {
                    address: raw.listen.address.into_inner(),
                    h2c: raw.listen.h2c,
                    threads,
                    drain_seconds: raw.listen.drain_seconds,
                    tls: listen_tls,
                    read_buffer_bytes: *raw.listen.read_buffer_bytes.get_ref(),
                    write_buffer_bytes: *raw.listen.write_buffer_bytes.get_ref(),
                    upgrade_sock: raw
                        .listen
                        .upgrade_sock
                        .as_ref()
                        .map(|p| base.join(p))
                        .unwrap_or_else(|| PathBuf::from("/tmp/permgate-upgrade.sock")),
                    max_headers: raw.listen.max_headers,
                    max_header_bytes: raw.listen.max_header_bytes,
                    body_read_timeout: Duration::from_millis(raw.listen.body_read_timeout_ms),
                    keepalive_timeout_seconds: raw.listen.keepalive_timeout_seconds,
                    h2_max_concurrent_streams: raw.listen.h2_max_concurrent_streams,
                    max_body_bytes: raw.listen.max_body_bytes,
                    engine: *raw.listen.engine.get_ref(),
                    h1_lane: raw.listen.h1_lane,
                    max_connections: raw.listen.max_connections,
                    backlog: raw.listen.backlog,
                    write_timeout: Duration::from_millis(raw.listen.write_timeout_ms),
                },
                upstream: Upstream {
                    address,
                    addresses: upstream_addrs,
                    health_check_interval: Duration::from_millis(u.health_check_interval_ms),
                    connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                    read_timeout: Duration::from_millis(u.read_timeout_ms),
                    write_timeout: Duration::from_millis(u.write_timeout_ms),
                    total_timeout: Duration::from_millis(u.total_timeout_ms),
                    idle_timeout: Duration::from_millis(u.idle_timeout_ms),
                    pool_size: if u.keepalive { u.pool_size } else { 0 },
                    keepalive: u.keepalive && u.pool_size > 0,
                    retry_methods,
                    max_connections: u.max_connections,
                    queue_size: u.queue_size,
                    queue_timeout: Duration::from_millis(u.queue_timeout_ms),
                    host: upstream_host,
                    tls: upstream_tls,
                },
                identity,
                snapshot: snapshot_source,
                admin,
                catalog,
                forward: Forward {
                    user_header,
                    roles_header,
                    request_id_header,
                    forward_authorization: f.forward_authorization,
                    strip_headers,
                    set_forwarded_for: f.set_forwarded_for,
                    request_headers,
                    allow_headers: HeaderSet::new(allow_headers),
                },
                routes,
                unmatched,
                decision_log,
                shadow: raw.policy.shadow,
                shadow_roles: raw.policy.shadow_roles.clone(),
                candidate_config: raw
                    .policy
                    .candidate_config
                    .as_ref()
                    .map(|c| base.join(c.get_ref())),
                rate_limit: RateLimits {
                    per_caller,
                    max_callers: raw.rate_limit.max_callers,
                },
                cors,
                tenants,
            }),
            _ => {
                if errors.is_empty() {
                    errors.push(ConfigError::new(file, None, "", "the config is invalid"));
                }
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_keys_tables_and_defaults() {
        let text = "[listen]\naddress = \"x\"\n\n[upstream]\naddress = \"y\"\npool_size = 0\n\n[upstream.tls]\nsni = \"\"\n";
        assert_eq!(locate(text, "upstream.pool_size"), Some(6));
        assert_eq!(
            locate(text, "upstream.read_timeout_ms"),
            Some(4),
            "a default: the table"
        );
        assert_eq!(locate(text, "upstream.tls.sni"), Some(9));
        assert_eq!(locate(text, "listen.address"), Some(2));
        assert_eq!(locate(text, "admin.listen"), None);
    }

    #[test]
    fn keepalive_off_or_no_pool_keeps_nothing_and_retry_methods_are_method_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
        let with = |extra: &str| {
            crate::demo::DEMO_CONFIG.replacen(
                "pool_size = 1024",
                &format!("pool_size = 1024\n{extra}"),
                1,
            )
        };
        let c = Config::parse("c.toml", &with(""), dir.path()).unwrap();
        assert!(c.upstream.keepalive);
        assert_eq!(c.upstream.max_connections, 256);
        assert_eq!(
            c.upstream.retry_methods,
            [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS]
        );
        let c = Config::parse("c.toml", &with("keepalive = false"), dir.path()).unwrap();
        assert_eq!((c.upstream.keepalive, c.upstream.pool_size), (false, 0));
        let text = crate::demo::DEMO_CONFIG.replacen("pool_size = 1024", "pool_size = 0", 1);
        let c = Config::parse("c.toml", &text, dir.path()).unwrap();
        assert!(!c.upstream.keepalive);
        let text = with("retry_methods = [\"GET\", \"get\"]");
        let errs = Config::parse("c.toml", &text, dir.path()).unwrap_err();
        let line = text
            .lines()
            .position(|l| l.starts_with("retry_methods"))
            .unwrap()
            + 1;
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("c.toml:{line}: upstream.retry_methods: 'get'"))),
            "{msgs:?}"
        );
    }

    #[test]
    fn value_errors_found_after_parsing_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
        let text = crate::demo::DEMO_CONFIG
            .replacen(
                "pool_size = 1024",
                "pool_size = 1024\nqueue_timeout_ms = 0",
                1,
            )
            .replacen("threads = 1", "threads = 0", 1);
        let errs = Config::parse("c.toml", &text, dir.path()).unwrap_err();
        let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.contains(&format!(
                "c.toml:{}: upstream.queue_timeout_ms: must be between 1 and 3600000",
                line("queue_timeout_ms")
            )),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("c.toml:{}: listen.threads", line("threads")))),
            "{msgs:?}"
        );
    }

    #[test]
    fn allow_lists_refuse_what_permgate_handles_and_need_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snapshot.json"), crate::demo::DEMO_SNAPSHOT).unwrap();
        let parse = |forward: &str, route: &str| {
            let text = crate::demo::DEMO_CONFIG
                .replacen("[forward]\n", &format!("[forward]\n{forward}"), 1)
                .replacen(
                    "name = \"customers.read\"\n",
                    &format!("name = \"customers.read\"\n{route}"),
                    1,
                );
            Config::parse("c.toml", &text, dir.path())
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        };
        let allow = "request_headers = \"allow_list\"\n";
        assert_eq!(
            parse(allow, "allow_headers = [\"x-crm-tenant\"]\n"),
            Vec::<String>::new()
        );
        let errs = parse(
            &format!("{allow}allow_headers = [\"accept\", \"authorization\", \"x-forwarded-for\", \"te\", \"x-permgate-user\"]\n"),
            "",
        );
        for name in ["authorization", "te", "x-permgate-user"] {
            assert!(
                errs.iter().any(|e| e.contains(&format!(
                    "forward.allow_headers: '{name}' is a header permgate handles itself"
                ))),
                "{name}: {errs:?}"
            );
        }
        assert!(
            errs.iter()
                .any(|e| e.contains("'x-forwarded-for' is in forward.strip_headers")),
            "{errs:?}"
        );
        let errs = parse("request_headers = \"allow\"\n", "");
        assert!(
            errs.iter().any(|e| e.contains(
                "forward.request_headers: 'allow' is not one of: strip_list, allow_list"
            )),
            "{errs:?}"
        );
        let errs = parse("", "allow_headers = [\"x-crm-tenant\"]\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("allow_headers: needs forward.request_headers")),
            "{errs:?}"
        );
        let errs = parse(allow, "allow_headers = [\"host\"]\n");
        assert!(
            errs.iter().any(|e| e
                .contains("route[3]: allow_headers: 'host' is a header permgate handles itself")),
            "{errs:?}"
        );
    }
}
