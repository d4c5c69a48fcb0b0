//! permgate — an authorization gateway for legacy CRM HTTP APIs.
//!
//! # Layout
//!
//! The authorization core does no I/O and knows no data plane: it is pure functions over
//! `http` types and our own, so the data plane can change without touching it. (It is held by
//! review, not yet by the compiler: splitting it into its own crate is issue 15.)
//!
//! - [`canon`]: request canonicalization — the one canonical path we decide on and forward,
//!   and the header hygiene rules (ambiguous input is rejected, never guessed).
//! - [`catalog`]: the permission catalogue and role presets, compiled into bitsets.
//! - [`config`]: the TOML config: raw serde types, validated into [`config::Config`], with errors
//!   that name the file, line and field.
//! - [`routes`]: the compiled route table; the most specific route wins, whatever the order.
//! - [`snapshot`]: who holds which role, compiled for O(1) lookups, swapped atomically.
//! - [`changes`]: incremental changes to a snapshot: a new version sharing every untouched
//!   part with the previous one, tested equal to a full rebuild.
//! - [`chunked`]: the copy-on-write chunked vector those versions share.
//! - [`identity`]: JWT bearer, API keys and trusted identity headers → a caller id.
//! - [`jwks`]: keys from an IdP's JWKS URL or OIDC discovery, kept fresh by the control
//!   thread (the store is data; the fetch is in [`control`]).
//! - [`policy`]: the decision: allow, or a typed denial.
//! - [`ids`]: record types and canonical record ids (one spelling per record, or a refusal).
//! - [`scope`]: record scopes (`all`, `subordinates`, `team`, `own`, `shared`) per permission.
//! - [`hierarchy`]: the manager forest as an Euler tour: "X is my report" in O(1).
//! - [`records`]: record ownership, shares and related objects in the snapshot; the O(1)
//!   record check.
//! - [`json`]: strict JSON bodies (duplicate keys, depth, trailing data, UTF-8) and the one
//!   writer; a streaming canonicalizer for bulk bodies.
//! - [`body`]: bulk trimming, list filtering and field permissions as pure functions.
//! - [`inspect`]: what a route inspects (records in path/query/body, bulk, list, fields),
//!   from config to the request-time checks the glue calls.
//! - [`limit`]: rate limits (token buckets per caller and per route), bounded and lock-light.
//! - [`reject`]: every rejection as a JSON body with a stable error code.
//! - [`audit`]: what a snapshot change did (roles, permissions, users), for access reviews.
//! - [`explain`]: `permgate explain` / `permgate test`: the decision run offline as a user.
//! - [`dbsource`]: `[snapshot.database]`: the rows of the CRM's own database → a snapshot.
//! - [`live`]: the config + snapshot pair behind one atomic pointer, and every way it changes
//!   (reload, new snapshot, incremental changes), validated off the request path.
//! - [`exchange`]: what every data plane shares around a call: `admit` (the one decision,
//!   rate limits, what to do next), the edit of what the CRM receives, the headers answered,
//!   body checks and list filtering, the decision log line and metrics (`finish`).
//! - [`pem`], [`certs`]: PEM parsing and the certificate material that reloads itself.
//!
//! Only the glue touches sockets:
//!
//! - [`plane`]: the default data plane (hyper and tokio): its listener (connection cap,
//!   backlog, binary upgrade in `plane::handover`), hyper's HTTP/1.1 and HTTP/2 server, and
//!   toward the CRM its own pool (`plane::pool`) behind a per-instance cap (`plane::gate`);
//!   `plane::lane` serves plain HTTP/1.1 with its own loop, driving the sans-I/O codec
//!   [`plane::h1`] (request head, answer head and framing, chunk checks; fuzzed, and tested
//!   against hyper on the same bytes); `plane::fragments` watches what
//!   hyper's HTTP/1 server reads for a `#fragment` its URI parser would drop.
//! - `proxy`: the Pingora data plane (the only module importing Pingora), built only with the
//!   `pingora` cargo feature.
//! - [`sample_crm`]: a realistic legacy CRM over in-memory data (hyper), for the demo, the tests
//!   and the bench; never needed in production.
//! - [`control`]: the control thread: admin API, snapshot file watcher, SIGHUP, staleness.
//! - [`admin`]: the admin API (its own listener, bearer token), with `/metrics`.
//! - [`metrics`]: Prometheus counters and histograms (atomics; bounded labels).
//! - [`decision_log`]: one JSON line per decision, from a bounded background writer.
//! - [`demo`]: the `permgate demo` subcommand.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod canon;
pub mod catalog;
pub mod certs;
pub mod changes;
pub mod chunked;
pub mod config;
pub mod control;
pub mod cors;
pub mod dbsource;
pub mod decision_log;
pub mod demo;
pub mod exchange;
pub mod explain;
pub mod hierarchy;
pub mod identity;
pub mod ids;
pub mod inspect;
pub mod json;
pub mod jwks;
pub mod limit;
pub mod live;
pub mod metrics;
pub mod pem;
pub mod plane;
pub mod policy;
#[cfg(feature = "pingora")]
pub mod proxy;
pub mod records;
pub mod reject;
pub mod routes;
pub mod sample_crm;
pub mod scope;
pub mod snapshot;

/// Write `text` to stdout and flush it. A reader that left early (`permgate check-config x |
/// head -1`: a closed pipe) is not an error: the rest is dropped quietly (`println!` would
/// panic). `Err`: any other write error, for the caller to report.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}
