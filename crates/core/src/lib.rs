//! permgate-core: the authorization core of permgate, an authorization gateway for legacy CRM
//! HTTP APIs.
//!
//! Pure functions over `http` types and our own: no async runtime, no socket, no data plane
//! (`cargo tree -p permgate-core` has no tokio and no hyper; the server crate `permgate` moves
//! the bytes). The only files it reads are the ones a config names (catalogue files, keys,
//! certificates), while that config compiles.
//!
//! # Layout
//!
//! One request, top to bottom, in the order [`policy::decide`] takes them (it runs the first
//! six steps; [`policy`]'s module docs have the table with each step's result and refusals):
//!
//! 1. [`canon`]: the one canonical path we decide on and forward, and the header hygiene rules
//!    (ambiguous input is rejected, never guessed).
//! 2. [`routes`]: the compiled route table; the most specific route wins, whatever the order.
//! 3. [`snapshot`] (the request's one load, done by the caller): who holds which role, compiled
//!    for O(1) lookups; [`records`]: record ownership, shares and related objects (read by
//!    their own fast parser, `records/parse.rs`);
//!    [`hierarchy`]: the manager forest ("X is my report" in O(1)); [`scope`]: record scopes per
//!    permission; [`access`]: the O(1) record check over all of them.
//! 4. [`identity`]: JWT bearer, API keys and trusted identity headers → a caller id
//!    ([`jwks`]: the keys an IdP publishes, as data; the server fetches them).
//! 5. [`tenants`]: the call's tenant (`[tenants]`), from the token, a header or the path; the
//!    snapshot's memberships decide per tenant.
//! 6. [`policy`]: the decision: allow, or a typed denial ([`reject`]: every rejection as a JSON
//!    body with a stable code).
//! 7. [`inspect`]: what a route checks beyond its permission (records in path, query and body,
//!    bulk, list, fields); [`body`]: bulk trimming, list filtering and field permissions;
//!    [`json`]: strict JSON and the streaming canonicalizer they run on.
//!
//! Around it:
//!
//! - [`config`]: the TOML config: raw serde types (`[[resource]]` blocks expanded into routes),
//!   validated and compiled into [`config::Config`]; [`error`]: the located errors (file,
//!   line, field) every file reader reports with.
//! - [`catalog`]: the permission catalogue and role presets, compiled into bitsets ([`perms`]);
//!   [`ids`]: record types and canonical record ids.
//! - [`changes`]: incremental changes to a snapshot, sharing every untouched part (on
//!   [`chunked`], a copy-on-write chunked vector; the fast path in `changes/fast.rs`, the
//!   indexed source-form replay in `changes/replay.rs`), tested equal to a full rebuild.
//! - [`learn`]: `creates` on a route: the record a create call's 2xx answer names, as an
//!   `upsert_record` change the server applies at once.
//! - [`cors`]: browser front ends on another origin: preflights and answer headers.
//! - [`limit`]: rate limits (token buckets per caller and per route), bounded and lock-light.
//! - [`audit`]: what a snapshot change did (roles, permissions, users), for access reviews.
//! - [`explain`]: `permgate explain` / `permgate test`: the decision run offline as a user.
//! - [`dbsource`]: `[snapshot.database]`: the rows of the CRM's own database → a snapshot (the
//!   server runs the queries).
//! - The leaves everything above shares (no module cycle in this crate outside its tests):
//!   [`error`], [`perms`], [`headers`], the keyed hash for client-chosen keys (foldhash, seeded
//!   per map).
//! - [`pem`]: PEM certificates and keys; [`headers`]: the names of the headers permgate sets;
//!   [`decision_log`]: its settings; [`demo`]: the demo's config, snapshot and credentials.
#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod body;
pub mod canon;
pub mod catalog;
pub mod changes;
pub mod chunked;
pub mod config;
pub mod cors;
pub mod dbsource;
pub mod decision_log;
pub mod demo;
pub mod error;
pub mod explain;
mod hash;
pub mod headers;
pub mod hierarchy;
pub mod identity;
pub mod ids;
pub mod inspect;
pub mod json;
pub mod jwks;
pub mod learn;
pub mod limit;
pub mod pem;
pub mod perms;
pub mod policy;
pub mod records;
pub mod reject;
pub mod routes;
pub mod scope;
pub mod snapshot;
pub mod tenants;
