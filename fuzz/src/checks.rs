//! The invariant of each fuzz target, as a function of the fuzzer's bytes that panics when the
//! invariant breaks.
//!
//! This file is compiled twice: by the fuzz crate (`fuzz/src/lib.rs`, for cargo-fuzz) and by the
//! root crate's `tests/fuzz_regressions.rs`, which replays the committed seeds and regression
//! inputs on every `cargo test`, without cargo-fuzz. It may use only crates both have.

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine;
use permgate::body::{self, Duplicates, Items};
use permgate::canon::{self, CanonicalTarget};
use permgate::config::{Config, RouteInfo};
use permgate::identity::Method as IdMethod;
use permgate::ids::{IdKind, RecordId};
use permgate::json::{self, Json, Limits, Pointer};
use permgate::routes::{PathPattern, RouteSpec};

fn demo_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        // The demo config names its snapshot by a relative path; parsing does not read it.
        match Config::parse("demo.toml", permgate::demo::DEMO_CONFIG, Path::new(".")) {
            Ok(c) => c,
            Err(e) => panic!("the demo config compiles: {e:?}"),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// canonicalize

/// The canonicalizer never panics; what it accepts is canonical (absolute, no empty, `.` or `..`
/// segment, no raw byte it refuses) and canonicalizes to itself.
pub fn canonicalize(data: &[u8]) {
    let Ok(t) = canon::canonicalize_target(data) else {
        return;
    };
    check_canonical(&t, data);
}

fn check_canonical(t: &CanonicalTarget, data: &[u8]) {
    assert!(t.path.starts_with('/'), "{data:?} -> {t:?}");
    let inner = t.path.strip_prefix('/').unwrap_or(&t.path);
    let last = inner.split('/').count();
    for (i, seg) in inner.split('/').enumerate() {
        // Only the last segment may be empty (the root path, or a trailing slash).
        assert!(
            !seg.is_empty() || i + 1 == last,
            "empty segment: {data:?} -> {t:?}"
        );
        assert!(seg != "." && seg != "..", "dot segment: {data:?} -> {t:?}");
    }
    assert!(
        t.path.bytes().all(|b| b.is_ascii_graphic()),
        "{data:?} -> {t:?}"
    );
    let again = canon::canonicalize_target(t.path_and_query().as_bytes());
    assert_eq!(again.as_ref(), Ok(t), "not idempotent: {data:?}");
}

// ---------------------------------------------------------------------------------------------
// route_match

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
];
const TOKENS: [&str; 24] = [
    "api",
    "v1",
    "customers",
    "leads",
    "campaigns",
    "bulk-delete",
    "bulk-reassign",
    "1",
    "42",
    "",
    ".",
    "..",
    "%2e%2e",
    "%2F",
    "reports",
    "7.json",
    "notes",
    "settings",
    "billing",
    "__crm",
    "health",
    "%63ustomers",
    "CUSTOMERS",
    "x;y",
];

/// A route is found only when its pattern matches the canonical path and it routes the
/// method; the most specific template for the path decides (a method never falls through to a
/// less specific route); matching the canonical form again gives the same route.
pub fn route_match(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(first) % METHODS.len()];
    // Half the inputs are raw targets, half are built from route-shaped tokens so the fuzzer
    // reaches deep routes quickly.
    let target: Vec<u8> = if first & 0x80 == 0 {
        rest.to_vec()
    } else {
        let mut t = Vec::new();
        for b in rest {
            t.push(b'/');
            t.extend_from_slice(TOKENS[usize::from(*b) % TOKENS.len()].as_bytes());
        }
        t
    };
    let Ok(canonical) = canon::canonicalize_target(&target) else {
        return;
    };
    let Ok(m) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let table = &demo_config().routes;
    let found = table.find_index(&m, &canonical.path);
    let routes = table.routes();
    // The reference: the most specific matching template by segment rank, else regexes.
    let best = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| template_rank(r, &canonical.path).map(|rank| (rank, i)))
        .max_by(|a, b| a.0.cmp(&b.0));
    match best {
        Some((rank, _)) => {
            let same: Vec<usize> = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| template_rank(r, &canonical.path).as_ref() == Some(&rank))
                .map(|(i, _)| i)
                .collect();
            let want = same
                .iter()
                .copied()
                .find(|&i| routes[i].methods.names().contains(&method));
            assert_eq!(found, want, "{method} {:?}", canonical.path);
        }
        None => {
            if let Some(i) = found {
                let PathPattern::Regex { regex, .. } = &routes[i].pattern else {
                    panic!("{method} {:?}: a template matched", canonical.path);
                };
                let anchored = regex_full_match(regex, &canonical.path);
                assert!(anchored, "{method} {:?} -> {regex}", canonical.path);
                assert!(routes[i].methods.names().contains(&method));
            }
        }
    }
    if let Some(i) = found {
        assert!(routes[i].methods.names().contains(&method));
    }
}

fn regex_full_match(re: &str, path: &str) -> bool {
    match regex::Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => r.is_match(path),
        Err(_) => false,
    }
}

/// Per segment: 2 for a literal, 1 for a parameter; `None` if the template does not match.
fn template_rank(r: &RouteSpec<RouteInfo>, path: &str) -> Option<Vec<u8>> {
    let PathPattern::Template(t) = &r.pattern else {
        return None;
    };
    let pat: Vec<&str> = canon::segments(t).collect();
    let got: Vec<&str> = canon::segments(path).collect();
    if pat.len() != got.len() {
        return None;
    }
    let mut rank = Vec::with_capacity(pat.len());
    for (p, g) in pat.iter().zip(&got) {
        if p.starts_with('{') {
            if g.is_empty() {
                return None;
            }
            rank.push(1);
        } else if p == g {
            rank.push(2);
        } else {
            return None;
        }
    }
    Some(rank)
}

// ---------------------------------------------------------------------------------------------
// jwt

/// The JWT front end never panics and never accepts garbage. Inputs starting with an even
/// byte are sent as they are (`Authorization: Bearer <rest>`): none may verify as a JWT. Odd
/// ones are split into a header and a claims part that are signed with the demo key, so the
/// fuzzer explores what a holder of the key can put in a token: whatever verifies must have
/// pinned `HS256`, the demo `kid` or none, the right `iss` and `aud`, a live `exp`/`nbf`, and a
/// user claim that is a non-empty string or an integer.
pub fn jwt(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let verifier = &demo_config().identity;
    if first % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let value = format!("Bearer {text}");
        let Ok(v) = http::HeaderValue::from_str(&value) else {
            return;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, v);
        if let Ok(id) = verifier.identify(&headers, None) {
            assert_ne!(id.method, IdMethod::Jwt, "garbage verified: {text:?}");
        }
        return;
    }
    // header 0xFF claims
    let (head, claims) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!("{}.{}", b64.encode(head), b64.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(permgate::demo::DEMO_SECRET.as_bytes());
    let Ok(sig) = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    ) else {
        return;
    };
    let token = format!("{signing_input}.{sig}");
    let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, v);
    let Ok(id) = verifier.identify(&headers, None) else {
        return;
    };
    assert_eq!(id.method, IdMethod::Jwt);
    let header: serde_json::Value = serde_json::from_slice(head).expect("a verified header");
    assert_eq!(header["alg"], "HS256", "{header}");
    assert!(
        header.get("kid").is_none() || header["kid"] == permgate::demo::DEMO_KID,
        "{header}"
    );
    for named in ["jku", "x5u", "jwk", "x5c"] {
        assert!(header.get(named).is_none(), "{header}");
    }
    let c: serde_json::Value = serde_json::from_slice(claims).expect("verified claims");
    assert_eq!(c["iss"], permgate::demo::DEMO_ISSUER, "{c}");
    let aud_ok = c["aud"] == permgate::demo::DEMO_AUDIENCE
        || c["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == permgate::demo::DEMO_AUDIENCE));
    assert!(aud_ok, "{c}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = c["exp"].as_u64().or(c["exp"].as_f64().map(|f| f as u64));
    assert!(exp.is_some_and(|e| e + 30 >= now), "{c}");
    // `nbf` and `iat` are optional (a CRM's own tokens often lack them), checked when present.
    for claim in ["nbf", "iat"] {
        if c.get(claim).is_some() {
            let t = c[claim].as_u64().or(c[claim].as_f64().map(|f| f as u64));
            assert!(t.is_some_and(|n| n <= now + 30), "{claim}: {c}");
        }
    }
    // The user claim is a non-empty string or an integer (numeric ids are common; a finding of
    // the first run: `"sub": 5` verifies, as designed, as user "5").
    let sub_ok = c["sub"]
        .as_str()
        .is_some_and(|s| !s.is_empty() && s.len() <= 256)
        || c["sub"].is_u64()
        || c["sub"].is_i64();
    assert!(sub_ok, "{c}");
}

// ---------------------------------------------------------------------------------------------
// bulk_filter

fn allowed(id: &RecordId) -> bool {
    // A fixed pseudo-random half of the ids.
    match id {
        RecordId::Int(n) => n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63 == 0,
        RecordId::Uuid(u) => u.count_ones() % 2 == 0,
        RecordId::Str(s) => s.len() % 2 == 0,
    }
}

/// A trimmed bulk body and a filtered list never hold a denied item; every item reported
/// removed was denied; what is forwarded is strict JSON again.
pub fn bulk_filter(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let kind = match first % 3 {
        0 => IdKind::Integer,
        1 => IdKind::Uuid,
        _ => IdKind::String {
            case_insensitive: first & 0x10 != 0,
        },
    };
    let (at, id_at) = match (first >> 2) % 3 {
        0 => ("", ""),
        1 => ("/ids", ""),
        _ => ("/data", "/id"),
    };
    let (Ok(at), Ok(id_at)) = (Pointer::parse(at), Pointer::parse(id_at)) else {
        return;
    };
    let spec = Items { at, id_at, kind };
    let limits = Limits::default();
    let duplicates = if first & 0x40 == 0 {
        Duplicates::Reject
    } else {
        Duplicates::First
    };
    if let Ok(t) = body::trim(body, &limits, &spec, duplicates, allowed) {
        for id in &t.removed_ids {
            assert!(!allowed(id), "removed an allowed item {id}");
        }
        let kept = items_of(&t.forwarded_body, &spec);
        assert_eq!(kept.len(), t.kept, "{:?}", String::from_utf8_lossy(body));
        for id in &kept {
            assert!(
                allowed(id),
                "trimmed body holds denied {id}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
    let counts = [Pointer::parse("/total").unwrap_or_default()];
    if let Ok(f) = body::filter_list(body, &limits, &spec, &counts, allowed) {
        let kept = items_of(&f.body, &spec);
        assert_eq!(kept.len(), f.kept);
        for id in &kept {
            assert!(allowed(id), "filtered list holds denied {id}");
        }
    }
}

/// The ids of the items in a forwarded body (which must be strict JSON).
fn items_of(forwarded: &[u8], spec: &Items) -> Vec<RecordId> {
    let doc = match json::parse(forwarded, &Limits::default()) {
        Ok(d) => d,
        Err(e) => panic!(
            "forwarded body is not strict JSON ({e:?}): {:?}",
            String::from_utf8_lossy(forwarded)
        ),
    };
    let Some(Json::Array(items)) = spec.at.get(&doc) else {
        panic!("forwarded body lost its items array");
    };
    items
        .iter()
        .map(
            |item| match spec.id_at.get(item).map(|v| body::json_id(v, spec.kind)) {
                Some(Ok(id)) => id,
                other => panic!("forwarded item without a readable id: {other:?}"),
            },
        )
        .collect()
}
