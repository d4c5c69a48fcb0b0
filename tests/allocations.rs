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
