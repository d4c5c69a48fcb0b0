//! Heap allocations of one decision (issue 5: a denied call must cost no more than an allowed
//! one). A counting global allocator, per thread, around `policy::decide` with the demo config
//! and snapshot and a cached JWT. Counts, not times: they are the same on every machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may
#![allow(unsafe_code)] // a counting `GlobalAlloc` is an unsafe impl

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use http::{HeaderMap, HeaderValue, Method};
use permgate::config::Config;
use permgate::policy::{decide, Request};
use permgate::snapshot::Snapshot;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_of<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

#[test]
fn a_denied_decision_allocates_no_more_than_an_allowed_one() {
    let dir = std::env::temp_dir();
    let config = Config::parse("demo.toml", permgate::demo::DEMO_CONFIG, &dir).unwrap();
    let snapshot = Snapshot::build(
        "snapshot.json",
        permgate::demo::DEMO_SNAPSHOT,
        &config.catalog,
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {}", permgate::demo::demo_token("u-rep1", 3600));
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&bearer).unwrap(),
    );
    let call = |method: &Method, target: &[u8]| {
        decide(
            &config,
            Ok(&snapshot),
            &Request {
                method,
                target,
                headers: &headers,
                peer: None,
                wire: Default::default(),
            },
        )
    };
    let (get, delete) = (Method::GET, Method::DELETE);
    // The first call verifies the token and fills the cache.
    assert!(call(&get, b"/api/v1/customers/42").is_ok());

    let (allowed, permit) = allocations_of(|| call(&get, b"/api/v1/customers/42"));
    assert!(permit.is_ok());
    let (denied, refusal) = allocations_of(|| call(&delete, b"/api/v1/campaigns/3"));
    let d = refusal.unwrap_err();
    assert_eq!(d.rejection.code, "forbidden");
    assert_eq!(d.rejection.permission.as_deref(), Some("campaign.delete"));
    assert!(d.caller.is_some());
    // Both own only the canonical path (a `String`); the denial adds nothing: no message, no
    // copied permission name or user id, no box.
    assert_eq!(allowed, 1, "allowed decision");
    assert_eq!(denied, allowed, "denied decision");
}

/// Issue 15 item 5: every request's handling on hyper's path runs in a `request` span naming
/// its id. At the default level (`info`) that span is off and must cost no allocation: making
/// it, entering it and a debug line inside it allocate nothing, under the binary's own
/// subscriber.
#[test]
fn a_request_span_allocates_nothing_at_the_default_level() {
    let subscriber = permgate::diagnostics::subscriber("");
    tracing::subscriber::with_default(subscriber, || {
        let once = || {
            let span = permgate::diagnostics::request_span("00ab34cd56ef7890");
            let _in = span.enter();
            tracing::debug!(target: "permgate::plane", "a pooled CRM connection closed");
            span.is_disabled()
        };
        // The first use registers the callsites (once per process).
        assert!(once());
        let (n, disabled) = allocations_of(once);
        assert!(disabled, "the request span is off at info");
        assert_eq!(n, 0, "a disabled request span allocates nothing");
    });
    // The same span when debug is on: enabled, so the check above can fail.
    let subscriber = permgate::diagnostics::subscriber("debug");
    tracing::subscriber::with_default(subscriber, || {
        assert!(!permgate::diagnostics::request_span("00ab34cd56ef7890").is_disabled());
    });
}
