//! permgate — an authorization gateway for legacy CRM HTTP APIs: the server.
//!
//! # Layout
//!
//! The workspace (see its `Cargo.toml`):
//!
//! - `permgate-core` (`crates/core`): the authorization core, pure functions with no runtime and
//!   no socket: canonicalization, routes, identity, snapshot, records, policy, body checks,
//!   config compilation, explain. Its modules are re-exported here at the same paths
//!   (`permgate::policy`, `permgate::snapshot`, …).
//! - `permgate` (this crate, the binary `permgate`): everything that runs — the data planes,
//!   live state, the control thread, the admin API, metrics, the decision log writer.
//! - `permgate-sample-crm` (`crates/sample-crm`): a realistic legacy CRM for the demo, the
//!   tests and the bench.
//! - `permgate-bench` (`bench/`): the side-by-side bench harness.
//! - `permgate-alloc-count` (`crates/alloc-count`): one test, the heap allocations of a
//!   decision, counted by a global allocator (the only `unsafe` code in the workspace).
//!
//! This crate:
//!
//! - [`config`]: loading the config: the core compiles it, this adds what only the server build
//!   knows (which engines it has, which database URLs its driver takes).
//! - [`live`]: the config + snapshot pair behind one atomic pointer, and every way it changes
//!   (reload, new snapshot, incremental changes), validated off the request path.
//! - [`learned`]: records learned from create answers until a full load confirms or drops them.
//! - [`exchange`]: what every data plane shares around a call: `admit` (the one decision, rate
//!   limits, what to do next), the edit of what the CRM receives, the headers answered, body
//!   checks and list filtering, the decision log line and metrics (`finish`).
//! - [`plane`]: the default data plane (hyper and tokio): its listener (connection cap,
//!   backlog, binary upgrade in `plane::handover`), hyper's HTTP/1.1 and HTTP/2 server, and
//!   toward the CRM its own pool (`plane::pool`) behind a per-instance cap (`plane::gate`);
//!   `plane::lane` serves plain HTTP/1.1 with its own loop (an idle connection keeps no buffer:
//!   `plane::lane::spare`), driving the sans-I/O codec
//!   [`plane::h1`] (request head, answer head and framing, chunk checks; fuzzed, and tested
//!   against hyper on the same bytes); `plane::fragments` watches what
//!   hyper's HTTP/1 server reads for a `#fragment` its URI parser would drop; `plane::learn`
//!   reads a create route's 2xx answer for the new record's id and learns it before answering.
//! - `proxy`: the Pingora data plane (the only module importing Pingora), built only with the
//!   `pingora` cargo feature.
//! - [`certs`]: the certificate material that reloads itself.
//! - [`control`]: the control thread: admin API, snapshot file watcher and sources (file, URL,
//!   database), JWKS refresh, SIGHUP, staleness.
//! - [`admin`]: the admin API (its own listener, bearer token), with `/metrics`.
//! - [`metrics`]: Prometheus counters and histograms (atomics; bounded labels).
//! - [`decision_log`]: one JSON line per decision, from a bounded background writer.
//! - [`demo`]: the `permgate demo` subcommand.
//! - [`diagnostics`]: the gateway's own log lines (`tracing`, `RUST_LOG`), a request's id as a
//!   field.
#![forbid(unsafe_code)]

pub use permgate_core::{
    access, audit, body, canon, catalog, changes, chunked, cors, dbsource, error, explain, headers,
    hierarchy, identity, ids, inspect, json, jwks, learn, limit, pem, policy, records, reject,
    routes, scope, snapshot, tenants,
};

pub mod admin;
pub mod certs;
pub mod config;
pub mod control;
pub mod decision_log;
pub mod demo;
pub mod diagnostics;
pub mod exchange;
pub mod learned;
pub mod live;
pub mod metrics;
pub mod plane;
#[cfg(feature = "pingora")]
pub mod proxy;
/// The sample CRM (`crates/sample-crm`), in a build with the `demo` feature (the default).
#[cfg(feature = "demo")]
pub use permgate_sample_crm as sample_crm;

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
