//! Criterion micro-benchmarks of the decision path, through permgate's public API:
//!
//! - `route_find/1000_routes`: `RouteTable::find` with 1,000 template routes;
//! - `canonicalize/*`: `canon::canonicalize_target` on a plain and an awkward target;
//! - `snapshot/lookup_and_check/1M_users`: user id → index → permission bit, 1,000,000 users;
//! - `identify/hs256`: identification by an HS256 JWT, the same token every time: after the
//!   first call, the verified-token cache's hit path;
//! - `identify/hs256_cold`: the same with a new token every call (100,000 distinct tokens in
//!   turn, more than the cache holds): signature, claims, and the cache insert;
//! - `bulk_trim/{100,1000,10000}_items`: `body::trim` of a bulk body of that many objects,
//!   half of them allowed (parse, checks, the trimmed copy);
//! - `decide/*`: the whole `policy::decide` (header checks, canonicalize, route, identity with
//!   the JWT cached, permission) with 1,000 routes and 1,000,000 users, allowed and denied;
//! - `cpu/decide/*`: the same two, timed on the thread's CPU clock
//!   (`CLOCK_THREAD_CPUTIME_ID`) instead of wall time: on a shared machine wall time also
//!   counts the time other processes held the core.
//!
//! Run: `cargo bench -p permgate-bench --bench decision` (the release profile: fat LTO).
//! The 1M-user snapshot takes a few seconds to build once. The target ("≤ 300 ns median") is
//! about the median: criterion prints the mean; the median is in
//! `target/criterion/<bench>/new/estimates.json`.

// A benchmark, not the gateway: a setup that fails stops the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{encode, EncodingKey, Header};

use permgate::config::Config;
use permgate::policy::{decide, Request};
use permgate::routes::{MethodSet, PathPattern, RouteSpec, RouteTable, TrailingSlash};
use permgate::snapshot::Snapshot;

const USERS: usize = 1_000_000;
const ROLES: [&str; 7] = [
    "sales_rep",
    "customer_service_rep",
    "member",
    "sales_manager",
    "marketing_manager",
    "data_analyst",
    "admin",
];

/// 1,000 routes: the demo config's 87 plus generated resources, each with a list, an item and
/// a sub-collection route.
fn config_with_1000_routes(dir: &std::path::Path) -> Config {
    let mut text = permgate::demo::DEMO_CONFIG.to_string();
    let base = text.matches("[[route]]").count();
    let mut i = 0;
    while base + i < 1000 {
        let n = i / 3;
        let path = match i % 3 {
            0 => format!("/api/v2/resource{n}"),
            1 => format!("/api/v2/resource{n}/{{id}}"),
            _ => format!("/api/v2/resource{n}/{{id}}/items"),
        };
        text.push_str(&format!(
            "\n[[route]]\nname = \"gen{i}\"\nmethods = [\"GET\"]\npath = \"{path}\"\npermission = \"lead.view\"\n"
        ));
        i += 1;
    }
    Config::parse("bench.toml", &text, dir).expect("generated config parses")
}

fn snapshot_json(users: usize) -> String {
    let mut s = String::with_capacity(users * 48);
    s.push_str("{\"version\":\"bench\",\"users\":[");
    for i in 0..users {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":\"u{i:07}\",\"roles\":[\"{}\"]}}",
            ROLES[i % ROLES.len()]
        ));
    }
    s.push_str("]}");
    s
}

fn token(user: &str) -> String {
    token_expiring(user, 3600)
}

/// A token valid for `ttl` seconds more (distinct `ttl`s make distinct tokens).
fn token_expiring(user: &str, ttl: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "sub": user, "iss": permgate::demo::DEMO_ISSUER, "aud": permgate::demo::DEMO_AUDIENCE,
        "iat": now, "nbf": now - 60, "exp": now + ttl,
    });
    let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(permgate::demo::DEMO_KID.into());
    encode(
        &h,
        &claims,
        &EncodingKey::from_secret(permgate::demo::DEMO_SECRET.as_bytes()),
    )
    .expect("token")
}

fn route_find(c: &mut Criterion) {
    let mut routes = Vec::new();
    for n in 0..334 {
        for (k, p) in [
            format!("/api/v1/resource{n}"),
            format!("/api/v1/resource{n}/{{id}}"),
            format!("/api/v1/resource{n}/{{id}}/items"),
        ]
        .into_iter()
        .enumerate()
        {
            if routes.len() < 1000 {
                routes.push(RouteSpec {
                    methods: MethodSet::parse(&["GET"]).expect("methods"),
                    pattern: PathPattern::Template(p),
                    origin: format!("gen:{n}:{k}"),
                    value: n,
                });
            }
        }
    }
    let table = RouteTable::build(routes, TrailingSlash::Strict).expect("table builds");
    let get = Method::GET;
    c.bench_function("route_find/1000_routes/item", |b| {
        b.iter(|| table.find_index(black_box(&get), black_box("/api/v1/resource321/12345")))
    });
    c.bench_function("route_find/1000_routes/sub_collection", |b| {
        b.iter(|| table.find_index(black_box(&get), black_box("/api/v1/resource17/9/items")))
    });
    c.bench_function("route_find/1000_routes/miss", |b| {
        b.iter(|| table.find_index(black_box(&get), black_box("/api/v1/nothing/here")))
    });
}

fn canonicalize(c: &mut Criterion) {
    c.bench_function("canonicalize/plain", |b| {
        b.iter(|| permgate::canon::canonicalize_target(black_box(b"/api/v1/customers/42")))
    });
    c.bench_function("canonicalize/query", |b| {
        b.iter(|| {
            permgate::canon::canonicalize_target(black_box(b"/api/v1/search?q=acme&limit=20"))
        })
    });
    c.bench_function("canonicalize/dot_segments_and_escapes", |b| {
        b.iter(|| {
            permgate::canon::canonicalize_target(black_box(
                b"/api/v1/x/../customers/%34%32/./notes",
            ))
        })
    });
}

/// The decision benchmarks' setup, built once for both clocks.
struct Fixture {
    config: Config,
    snapshot: Snapshot,
    headers: HeaderMap,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir();
        let config = config_with_1000_routes(&dir);
        let text = snapshot_json(USERS);
        let snapshot = Snapshot::build("snapshot.json", &text, &config.catalog)
            .expect("1M-user snapshot builds");
        // u0000000 is a sales_rep (ROLES[0]): may read a customer, may not delete a campaign.
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token("u0000000"))).expect("header"),
        );
        Fixture {
            config,
            snapshot,
            headers,
        }
    })
}

fn decision(c: &mut Criterion) {
    let Fixture {
        config,
        snapshot,
        headers,
    } = fixture();
    let perm = config
        .catalog
        .permission("company.view_customer_management_list")
        .expect("permission");

    c.bench_function("snapshot/lookup_and_check/1M_users", |b| {
        let ids: Vec<String> = (0..1024).map(|i| format!("u{:07}", i * 977)).collect();
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) & 1023;
            let u = snapshot.user_index(black_box(&ids[k])).expect("user");
            snapshot.has_permission(u, perm)
        })
    });

    c.bench_function("identify/hs256", |b| {
        b.iter(|| config.identity.identify(black_box(headers), None))
    });
    // More distinct tokens than the verified-token cache holds (16 × 4,096), in turn: every
    // call verifies.
    let cold: Vec<HeaderMap> = (0..100_000u64)
        .map(|k| {
            let mut h = HeaderMap::new();
            let t = token_expiring("u0000000", 3600 + k);
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
            h
        })
        .collect();
    let mut k = 0;
    c.bench_function("identify/hs256_cold", |b| {
        b.iter(|| {
            k = (k + 1) % cold.len();
            config.identity.identify(black_box(&cold[k]), None)
        })
    });
    decide_benches(c, "");
}

/// `decide/allowed` and `decide/denied`, under any clock (`prefix` keeps their names apart).
fn decide_benches<M: Measurement + 'static>(c: &mut Criterion<M>, prefix: &str) {
    let Fixture {
        config,
        snapshot,
        headers,
    } = fixture();
    let get = Method::GET;
    let delete = Method::DELETE;
    c.bench_function(
        &format!("{prefix}decide/allowed/1000_routes_1M_users"),
        |b| {
            b.iter(|| {
                let r = decide(
                    config,
                    Ok(snapshot),
                    &Request {
                        method: &get,
                        target: black_box(b"/api/v1/customers/42"),
                        headers,
                        peer: None,
                        wire: Default::default(),
                    },
                );
                assert!(r.is_ok());
                r
            })
        },
    );
    c.bench_function(
        &format!("{prefix}decide/denied/1000_routes_1M_users"),
        |b| {
            b.iter(|| {
                decide(
                    config,
                    Ok(snapshot),
                    &Request {
                        method: &delete,
                        target: black_box(b"/api/v1/campaigns/3"),
                        headers,
                        peer: None,
                        wire: Default::default(),
                    },
                )
            })
        },
    );
}

fn decision_cpu(c: &mut Criterion<ThreadCpu>) {
    decide_benches(c, "cpu/");
}

/// The calling thread's CPU time, in ns.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Criterion timing on the measuring thread's CPU clock.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (divisor, unit) = if typical < 1e3 {
            (1.0, "ns CPU")
        } else if typical < 1e6 {
            (1e3, "µs CPU")
        } else {
            (1e6, "ms CPU")
        };
        for v in values {
            *v /= divisor;
        }
        unit
    }
    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        "ns CPU" // no throughput is declared here
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns CPU"
    }
}

fn settings<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

/// `body::trim` of a bulk body of N objects, every other one allowed.
fn bulk_trim(c: &mut Criterion) {
    use permgate::body::{trim, Duplicates, Items};
    use permgate::ids::{IdKind, RecordId};
    use permgate::json::{Limits, Pointer};
    let spec = Items {
        at: Pointer::parse("/items").expect("pointer"),
        id_at: Pointer::parse("/id").expect("pointer"),
        kind: IdKind::Integer,
    };
    let limits = Limits {
        max_bytes: 64 << 20,
        max_depth: 32,
        max_items: 10_000,
    };
    let allowed = |id: &RecordId| matches!(id, RecordId::Int(n) if n % 2 == 0);
    for n in [100usize, 1_000, 10_000] {
        let items: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"owner_id":"u{}","stage":"qualified","amount":1234.50,"note":"call back on Tuesday"}}"#,
                    i % 100
                )
            })
            .collect();
        let body = format!(r#"{{"items":[{}],"owner_id":"u3"}}"#, items.join(","));
        let mut group = c.benchmark_group("bulk_trim");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{n}_items"), |b| {
            b.iter(|| {
                trim(
                    black_box(body.as_bytes()),
                    &limits,
                    &spec,
                    Duplicates::Reject,
                    allowed,
                )
                .expect("trimmed")
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = settings(Criterion::default());
    targets = route_find, canonicalize, decision, bulk_trim
}
criterion_group! {
    name = cpu_benches;
    config = settings(Criterion::default().with_measurement(ThreadCpu));
    targets = decision_cpu
}
criterion_main!(benches, cpu_benches);
