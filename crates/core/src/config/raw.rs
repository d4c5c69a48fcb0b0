//! The config file as written: serde types, strict (`deny_unknown_fields`), with spans for the
//! errors and the defaults of every setting. [`super::Config::parse`] validates and compiles them.

use serde::Deserialize;
use toml::Spanned;

use crate::identity::IdentitySection;
use crate::inspect::{RawBody, RawBulk, RawList, RawNewOwner, RawRecordRef, RawRecordType};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) listen: RawListen,
    pub(crate) upstream: RawUpstream,
    pub(crate) identity: IdentitySection,
    pub(crate) snapshot: RawSnapshot,
    #[serde(default)]
    pub(crate) catalog: Option<RawCatalog>,
    #[serde(default)]
    pub(crate) forward: RawForward,
    #[serde(default)]
    pub(crate) paths: RawPaths,
    #[serde(default)]
    pub(crate) policy: RawPolicy,
    #[serde(default)]
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) decision_log: Option<RawDecisionLog>,
    #[serde(default)]
    pub(crate) rate_limit: RawRateLimits,
    /// `[cors]`: browser front ends on another origin ([`crate::cors`]).
    #[serde(default)]
    pub(crate) cors: Option<crate::cors::RawCors>,
    /// `[tenants]`: where the tenant of a call comes from ([`crate::tenants`]).
    #[serde(default)]
    pub(crate) tenants: Option<crate::tenants::RawTenants>,
    /// Record types, for routes that check records ([`crate::inspect`]).
    #[serde(default, rename = "record_type")]
    pub(crate) record_types: Vec<Spanned<RawRecordType>>,
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    /// `[[resource]]`: a collection declared once, expanded into routes ([`super::resource`]).
    #[serde(default, rename = "resource")]
    pub(crate) resources: Vec<Spanned<RawResource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub(crate) address: Spanned<String>,
    #[serde(default = "default_true")]
    pub(crate) h2c: bool,
    #[serde(default)]
    pub(crate) threads: Option<usize>,
    #[serde(default = "default_drain")]
    pub(crate) drain_seconds: u64,
    #[serde(default)]
    pub(crate) tls: Option<RawListenTls>,
    #[serde(default)]
    pub(crate) upgrade_sock: Option<String>,
    #[serde(default = "default_read_buffer")]
    pub(crate) read_buffer_bytes: Spanned<usize>,
    #[serde(default = "default_write_buffer")]
    pub(crate) write_buffer_bytes: Spanned<usize>,
    #[serde(default = "default_max_headers")]
    pub(crate) max_headers: usize,
    #[serde(default = "default_max_header_bytes")]
    pub(crate) max_header_bytes: usize,
    #[serde(default = "default_body_read_timeout_ms")]
    pub(crate) body_read_timeout_ms: u64,
    #[serde(default = "default_keepalive_timeout_seconds")]
    pub(crate) keepalive_timeout_seconds: u64,
    #[serde(default = "default_h2_max_concurrent_streams")]
    pub(crate) h2_max_concurrent_streams: u32,
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: u64,
    #[serde(default = "default_engine")]
    pub(crate) engine: Spanned<Engine>,
    #[serde(default = "default_true")]
    pub(crate) h1_lane: bool,
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    #[serde(default = "default_backlog")]
    pub(crate) backlog: u32,
    #[serde(default = "default_client_write_timeout_ms")]
    pub(crate) write_timeout_ms: u64,
}

/// The data plane that serves the traffic listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Pingora: the first data plane; more CPU and memory per call, and not the edge hardening
    /// of the default engine. Only in a build with the `pingora` cargo feature.
    Pingora,
    /// hyper (the default): every feature, about a third less CPU per call and 60% less
    /// memory per open connection than Pingora here (`bench/RESULTS.md`).
    #[default]
    Hyper,
}

pub(crate) fn default_engine() -> Spanned<Engine> {
    Spanned::new(0..0, Engine::default())
}

pub(crate) fn default_read_buffer() -> Spanned<usize> {
    Spanned::new(0..0, 16 * 1024)
}

pub(crate) fn default_write_buffer() -> Spanned<usize> {
    Spanned::new(0..0, 1460)
}

pub(crate) fn default_max_headers() -> usize {
    100
}
pub(crate) fn default_max_header_bytes() -> usize {
    32 * 1024
}
pub(crate) fn default_body_read_timeout_ms() -> u64 {
    30_000
}
pub(crate) fn default_keepalive_timeout_seconds() -> u64 {
    60
}
pub(crate) fn default_max_body_bytes() -> u64 {
    64 << 20
}
pub(crate) fn default_h2_max_concurrent_streams() -> u32 {
    100
}
pub(crate) fn default_max_connections() -> usize {
    10_000
}
pub(crate) fn default_backlog() -> u32 {
    4096
}
pub(crate) fn default_client_write_timeout_ms() -> u64 {
    30_000
}

/// `[rate_limit]`: the per-caller token bucket (a route's own is on its `[[route]]` block).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimits {
    #[serde(default)]
    pub(crate) per_caller: Option<RawRateLimit>,
    #[serde(default = "default_max_callers")]
    pub(crate) max_callers: usize,
}

pub(crate) fn default_max_callers() -> usize {
    100_000
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            per_caller: None,
            max_callers: default_max_callers(),
        }
    }
}

/// `{ rate = 50, burst = 100, shadow = false }`: calls per second, calls at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) rate: f64,
    pub(crate) burst: u32,
    #[serde(default)]
    pub(crate) shadow: bool,
}

impl RawRateLimit {
    pub(crate) fn compile(&self) -> Result<crate::limit::Limit, String> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 1_000_000.0) {
            return Err("rate: calls per second, more than 0 and at most 1000000".into());
        }
        if !(1..=1_000_000).contains(&self.burst) {
            return Err("burst: between 1 and 1000000".into());
        }
        Ok(crate::limit::Limit::new(self.rate, self.burst, self.shadow))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenTls {
    pub(crate) cert_file: Spanned<String>,
    pub(crate) key_file: Spanned<String>,
    #[serde(default)]
    pub(crate) client_ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) sni: String,
    #[serde(default)]
    pub(crate) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) cert_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) key_file: Option<Spanned<String>>,
}

pub(crate) fn default_drain() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    #[serde(default)]
    pub(crate) address: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) addresses: Vec<Spanned<String>>,
    #[serde(default = "default_health_ms")]
    pub(crate) health_check_interval_ms: u64,
    #[serde(default = "default_connect_ms")]
    pub(crate) connect_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub(crate) read_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub(crate) write_timeout_ms: u64,
    #[serde(default = "default_total_ms")]
    pub(crate) total_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub(crate) idle_timeout_ms: u64,
    #[serde(default = "default_pool")]
    pub(crate) pool_size: usize,
    #[serde(default = "default_true")]
    pub(crate) keepalive: bool,
    #[serde(default = "default_retry_methods")]
    pub(crate) retry_methods: Vec<Spanned<String>>,
    #[serde(default = "default_upstream_max_connections")]
    pub(crate) max_connections: usize,
    #[serde(default = "default_queue_size")]
    pub(crate) queue_size: usize,
    #[serde(default = "default_queue_timeout_ms")]
    pub(crate) queue_timeout_ms: u64,
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) tls: Option<RawUpstreamTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshot {
    pub(crate) path: Spanned<String>,
    #[serde(default = "default_true")]
    pub(crate) watch: bool,
    #[serde(default = "default_poll_ms")]
    pub(crate) poll_interval_ms: u64,
    #[serde(default)]
    pub(crate) persist_path: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) max_staleness_seconds: u64,
    #[serde(default)]
    pub(crate) on_stale: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) url: Option<Spanned<String>>,
    #[serde(default = "default_pull_ms")]
    pub(crate) pull_interval_ms: u64,
    #[serde(default = "default_pull_timeout_ms")]
    pub(crate) pull_timeout_ms: u64,
    #[serde(default)]
    pub(crate) url_token: Option<String>,
    #[serde(default)]
    pub(crate) public_key: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) database: Option<Spanned<RawDatabase>>,
    /// How long a record learned from a create answer survives full loads that do not hold
    /// it ([`crate::learn`]).
    #[serde(default = "default_learned_ttl_ms")]
    pub(crate) learned_ttl_ms: u64,
}

pub(crate) fn default_learned_ttl_ms() -> u64 {
    60_000
}

/// `[snapshot.database]` as written ([`crate::dbsource`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    pub(crate) url: String,
    #[serde(default = "default_db_poll_ms")]
    pub(crate) poll_interval_ms: u64,
    #[serde(default = "default_db_reconcile_ms")]
    pub(crate) reconcile_interval_ms: u64,
    #[serde(default)]
    pub(crate) session_sql: Vec<String>,
    #[serde(default)]
    pub(crate) tenant_session_sql: Vec<String>,
    pub(crate) queries: crate::dbsource::DbQueries,
    #[serde(default)]
    pub(crate) incremental: Option<crate::dbsource::DbIncremental>,
    #[serde(default)]
    pub(crate) notify_channel: Option<String>,
    /// "off" (default), "require", "verify-full".
    #[serde(default)]
    pub(crate) tls: Option<String>,
    #[serde(default)]
    pub(crate) ca_file: Option<String>,
}

pub(crate) fn default_db_poll_ms() -> u64 {
    2000
}
pub(crate) fn default_db_reconcile_ms() -> u64 {
    300_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDecisionLog {
    /// "stdout", "off", or a file path.
    #[serde(default = "default_log_target")]
    pub(crate) target: String,
    #[serde(default = "default_log_capacity")]
    pub(crate) capacity: usize,
    #[serde(default = "default_sample")]
    pub(crate) sample_allows: f64,
    #[serde(default)]
    pub(crate) mask: Vec<String>,
}

pub(crate) fn default_log_target() -> String {
    "stdout".into()
}
pub(crate) fn default_log_capacity() -> usize {
    65_536
}
pub(crate) fn default_sample() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Spanned<String>,
    #[serde(default)]
    pub(crate) token: Option<String>,
    #[serde(default)]
    pub(crate) token_file: Option<Spanned<String>>,
    #[serde(default = "default_max_snapshot_mb")]
    pub(crate) max_snapshot_mb: u64,
    #[serde(default)]
    pub(crate) protect_metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalog {
    pub(crate) permissions: Vec<Spanned<String>>,
    pub(crate) roles: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForward {
    #[serde(default = "default_user_header")]
    pub(crate) user_header: Spanned<String>,
    #[serde(default = "default_roles_header")]
    pub(crate) roles_header: Spanned<String>,
    #[serde(default = "default_request_id_header")]
    pub(crate) request_id_header: Spanned<String>,
    #[serde(default = "default_true")]
    pub(crate) forward_authorization: bool,
    #[serde(default = "default_strip_headers")]
    pub(crate) strip_headers: Vec<String>,
    #[serde(default = "default_true")]
    pub(crate) set_forwarded_for: bool,
    /// `"strip_list"` (default) or `"allow_list"`.
    #[serde(default)]
    pub(crate) request_headers: Option<Spanned<String>>,
    #[serde(default = "default_allow_headers")]
    pub(crate) allow_headers: Vec<String>,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            user_header: default_user_header(),
            roles_header: default_roles_header(),
            request_id_header: default_request_id_header(),
            forward_authorization: true,
            strip_headers: default_strip_headers(),
            set_forwarded_for: true,
            request_headers: None,
            allow_headers: default_allow_headers(),
        }
    }
}

/// Client headers a legacy CRM may trust for identity or origin; removed by default (their
/// `_` and `.` spellings too: CGI, PHP and others read `X_User_Id` as `X-User-Id`).
pub const DEFAULT_STRIP_HEADERS: [&str; 53] = [
    // Origin and addressing.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-client-ip",
    "x-remote-addr",
    "true-client-ip",
    "x-cluster-client-ip",
    // Rewrites and origin hints some frameworks honour (IIS, Symfony, Spring, Rack).
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-host",
    // Identity set by an authenticating proxy in front of many legacy apps (Apache
    // `REMOTE_USER`, nginx `auth_request`, oauth2-proxy, Kong, Azure App Service, Google IAP,
    // AWS ALB, Cloudflare Access), and ones home-grown CRMs read.
    "remote-user",
    "x-remote-user",
    "x-user",
    "x-user-id",
    "x-user-name",
    "x-username",
    "x-user-email",
    "x-email",
    "x-roles",
    "x-user-roles",
    "x-groups",
    "x-user-groups",
    "x-auth-user",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-consumer-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-ms-client-principal",
    "x-ms-client-principal-id",
    "x-ms-client-principal-name",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-data",
    "cf-access-authenticated-user-email",
];

/// The request headers forwarded in `forward.request_headers = "allow_list"` mode unless
/// `forward.allow_headers` says otherwise: content negotiation, conditional and range requests,
/// the body's own description, and the browser's origin hints. Not `Cookie`: a CRM's session
/// cookie is a second identity beside permgate's; add it where the CRM needs it.
pub const DEFAULT_ALLOW_HEADERS: [&str; 17] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-encoding",
    "content-language",
    "content-type",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "range",
    "referer",
    "user-agent",
];

pub(crate) fn default_allow_headers() -> Vec<String> {
    DEFAULT_ALLOW_HEADERS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub(crate) fn default_strip_headers() -> Vec<String> {
    DEFAULT_STRIP_HEADERS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPaths {
    #[serde(default)]
    pub(crate) trailing_slash: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    pub(crate) unmatched: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) shadow: bool,
    #[serde(default)]
    pub(crate) shadow_roles: Vec<String>,
    #[serde(default)]
    pub(crate) candidate_config: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) methods: Vec<String>,
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) regex: Option<String>,
    #[serde(default)]
    pub(crate) priority: Option<i32>,
    #[serde(default)]
    pub(crate) permission: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) public: bool,
    /// `"passthrough"`: the caller's `Authorization` and API-key header reach the CRM
    /// untouched and unverified (the route is public for permgate's decision).
    #[serde(default)]
    pub(crate) credentials: Option<RouteCredentials>,
    #[serde(default)]
    pub(crate) shadow: bool,
    // What the route inspects beyond its permission ([`crate::inspect`]); all optional.
    #[serde(default)]
    pub(crate) records: Vec<RawRecordRef>,
    #[serde(default)]
    pub(crate) unknown_record: Option<String>,
    #[serde(default)]
    pub(crate) bulk: Option<RawBulk>,
    #[serde(default)]
    pub(crate) list: Option<RawList>,
    #[serde(default)]
    pub(crate) new_owner: Option<RawNewOwner>,
    #[serde(default)]
    pub(crate) fields: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub(crate) on_denied_fields: Option<String>,
    #[serde(default)]
    pub(crate) body: Option<RawBody>,
    /// A token bucket for the route as a whole (every caller together).
    #[serde(default)]
    pub(crate) rate_limit: Option<RawRateLimit>,
    /// A body on GET, HEAD, DELETE, OPTIONS or TRACE is forwarded (else 400 `body_not_allowed`).
    #[serde(default)]
    pub(crate) allow_body: bool,
    /// Request headers this route forwards beside `forward.allow_headers` (allow-list mode).
    #[serde(default)]
    pub(crate) allow_headers: Vec<String>,
    /// What a 2xx answer creates: learned into the live snapshot at once ([`crate::learn`]).
    #[serde(default)]
    pub(crate) creates: Option<crate::learn::RawCreates>,
}

/// `[[resource]]` as written: a collection and its item, declared once ([`super::resource`]
/// expands it into [`RawRoute`]s).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResource {
    /// Route names are `<name>.<action>` (`leads.read`).
    pub(crate) name: Spanned<String>,
    /// The collection path (`/api/leads/`); the item path is `<path>{id:<id>}` (+ `/` when
    /// `path` ends in one).
    pub(crate) path: Spanned<String>,
    /// The id parameter's type: `uuid`, `int` or `regex:<pattern>`.
    pub(crate) id: Spanned<String>,
    /// The record in the item path, checked on the item routes and the sub-routes.
    #[serde(default)]
    pub(crate) record_type: Option<Spanned<String>>,
    /// `lead`: the actions' permissions are `lead.view`, `lead.create`, `lead.update`,
    /// `lead.delete`.
    #[serde(default)]
    pub(crate) permission_group: Option<Spanned<String>>,
    /// Per-action permissions, over `permission_group`.
    #[serde(default)]
    pub(crate) permissions: Option<RawActionPermissions>,
    /// Default: all five.
    #[serde(default)]
    pub(crate) actions: Option<Spanned<Vec<ResourceAction>>>,
    /// `unknown_record` of every route that checks the record.
    #[serde(default)]
    pub(crate) unknown_record: Option<Spanned<String>>,
    /// List filtering on the list route (its type is `record_type`).
    #[serde(default)]
    pub(crate) list: Option<Spanned<RawResourceList>>,
    #[serde(default)]
    pub(crate) bulk: Vec<Spanned<RawResourceBulk>>,
    #[serde(default)]
    pub(crate) sub: Vec<Spanned<RawResourceSub>>,
}

/// The five actions of a resource (and of a sub-collection).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ResourceAction {
    /// `GET <path>`.
    List,
    /// `POST <path>`.
    Create,
    /// `GET <item>`.
    Read,
    /// `PUT` and `PATCH <item>`.
    Update,
    /// `DELETE <item>`.
    Delete,
}

/// `permissions = { list = "…", read = "…" }`: one action's permission, by its full name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawActionPermissions {
    #[serde(default)]
    pub(crate) list: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) create: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) read: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) update: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) delete: Option<Spanned<String>>,
}

/// A resource's `list = { items, item_id?, counts?, max_bytes? }` (a route's `list` without
/// `type` and `permission`: the resource's record type and its list permission).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResourceList {
    pub(crate) items: String,
    #[serde(default)]
    pub(crate) item_id: String,
    #[serde(default)]
    pub(crate) counts: Vec<String>,
    #[serde(default)]
    pub(crate) max_bytes: Option<usize>,
}

/// One of a resource's `bulk = [...]` routes: a route's `bulk` on a path under the collection.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResourceBulk {
    /// The route name's last part (default `bulk_<action>`).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// Relative to the collection path (`bulk/`).
    pub(crate) path: Spanned<String>,
    pub(crate) methods: Vec<String>,
    /// The permission of this resource action, or `permission` (one of the two).
    #[serde(default)]
    pub(crate) action: Option<ResourceAction>,
    #[serde(default)]
    pub(crate) permission: Option<Spanned<String>>,
    pub(crate) items: String,
    #[serde(default)]
    pub(crate) item_id: String,
    #[serde(default)]
    pub(crate) mode: Option<String>,
    #[serde(default)]
    pub(crate) duplicates: Option<String>,
    #[serde(default)]
    pub(crate) keys: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) new_owner: Option<RawNewOwner>,
}

/// `[[resource.sub]]`: routes under the item path (`/api/leads/{id}/comments/`), the parent
/// record checked on each. Either a sub-collection (`actions`, `id`, permissions as for a
/// resource; by default list and read need the parent's read permission, the others its update
/// permission: related objects follow their parent) or one route (`methods` + `permission`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResourceSub {
    pub(crate) name: Spanned<String>,
    /// Relative to the item path (`comments/`).
    pub(crate) path: Spanned<String>,
    #[serde(default)]
    pub(crate) id: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) actions: Option<Spanned<Vec<ResourceAction>>>,
    #[serde(default)]
    pub(crate) permission_group: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) permissions: Option<RawActionPermissions>,
    #[serde(default)]
    pub(crate) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) permission: Option<Spanned<String>>,
}

/// `credentials` of a route.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RouteCredentials {
    /// Forwarded untouched, not verified by permgate (for calls only the CRM can check).
    Passthrough,
}

pub(crate) fn default_true() -> bool {
    true
}
pub(crate) fn default_connect_ms() -> u64 {
    2_000
}
pub(crate) fn default_read_ms() -> u64 {
    30_000
}
pub(crate) fn default_health_ms() -> u64 {
    1_000
}
pub(crate) fn default_poll_ms() -> u64 {
    1_000
}
pub(crate) fn default_pull_ms() -> u64 {
    10_000
}
pub(crate) fn default_pull_timeout_ms() -> u64 {
    5_000
}
pub(crate) fn default_max_snapshot_mb() -> u64 {
    512
}
pub(crate) fn default_total_ms() -> u64 {
    60_000
}
pub(crate) fn default_idle_ms() -> u64 {
    60_000
}
pub(crate) fn default_pool() -> usize {
    1024
}
pub(crate) fn default_retry_methods() -> Vec<Spanned<String>> {
    ["GET", "HEAD", "OPTIONS"].map(spanned).to_vec()
}
pub(crate) fn default_upstream_max_connections() -> usize {
    256
}
pub(crate) fn default_queue_size() -> usize {
    1024
}
pub(crate) fn default_queue_timeout_ms() -> u64 {
    1_000
}
pub(crate) fn spanned(s: &str) -> Spanned<String> {
    Spanned::new(0..0, s.to_string())
}
pub(crate) fn default_user_header() -> Spanned<String> {
    spanned("x-permgate-user")
}
pub(crate) fn default_roles_header() -> Spanned<String> {
    spanned("x-permgate-roles")
}
pub(crate) fn default_request_id_header() -> Spanned<String> {
    spanned("x-request-id")
}
