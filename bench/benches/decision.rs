//! Criterion micro-benchmarks of the decision path, through permgate's public API:
//!
//! - `route_find/1000_routes`: `RouteTable::find` with 1,000 template routes;
//! - `canonicalize/*`: `canon::canonicalize_target` on a plain and an awkward target;
//! - `snapshot/lookup_and_check/1M_users`: user id → index → permission bit, 1,000,000 users;
//! - `identify/hs256`: JWT verification (HS256, no cache: permgate verifies every time);
//! - `decide/*`: the whole `policy::decide` (canonicalize, route, identity, permission) with
//!   1,000 routes and 1,000,000 users, allowed and denied.
//!
//! Run: `cargo bench -p permgate-bench --bench decision` (the release profile: fat LTO).
//! The 1M-user snapshot takes a few seconds to build once.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "sub": user, "iss": permgate::demo::DEMO_ISSUER, "aud": permgate::demo::DEMO_AUDIENCE,
        "iat": now, "nbf": now - 60, "exp": now + 3600,
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

fn decision(c: &mut Criterion) {
    let dir = std::env::temp_dir();
    let config = config_with_1000_routes(&dir);
    let text = snapshot_json(USERS);
    let snapshot =
        Snapshot::build("snapshot.json", &text, &config.catalog).expect("1M-user snapshot builds");
    drop(text);
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

    // u0000000 is a sales_rep (ROLES[0]): may read a customer, may not delete a campaign.
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token("u0000000"))).expect("header"),
    );
    c.bench_function("identify/hs256", |b| {
        b.iter(|| config.identity.identify(black_box(&headers), None))
    });
    let get = Method::GET;
    let delete = Method::DELETE;
    c.bench_function("decide/allowed/1000_routes_1M_users", |b| {
        b.iter(|| {
            let r = decide(
                &config,
                Ok(&snapshot),
                &Request {
                    method: &get,
                    target: black_box(b"/api/v1/customers/42"),
                    headers: &headers,
                    peer: None,
                },
            );
            assert!(r.is_ok());
            r
        })
    });
    c.bench_function("decide/denied/1000_routes_1M_users", |b| {
        b.iter(|| {
            decide(
                &config,
                Ok(&snapshot),
                &Request {
                    method: &delete,
                    target: black_box(b"/api/v1/campaigns/3"),
                    headers: &headers,
                    peer: None,
                },
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = route_find, canonicalize, decision
}
criterion_main!(benches);
