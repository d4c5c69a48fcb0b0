//! The invariant of each fuzz target, as a function of the fuzzer's bytes that panics when the
//! invariant breaks.
//!
//! This file is compiled twice: by the fuzz crate (`fuzz/src/lib.rs`, for cargo-fuzz) and by the
//! root crate's `tests/fuzz_regressions.rs`, which replays the committed seeds and regression
//! inputs on every `cargo test`, without cargo-fuzz. It may use only crates both have.
//!
//! Why one file (~880 lines): it is included whole, by path, by both crates, so every target's
//! invariant is in the one file they share; each `pub fn` (one per target: canonicalize,
//! route_match, jwt, bulk_filter, h1_request, h1_request_body, h1_answer, the dechunker's
//! reference) is independent of the others and read on its own, with its helpers below it.

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

// ---------------------------------------------------------------------------------------------
// h1_request

/// The lane's request-head parser never panics, and what it takes is what it says:
/// - its length is the one `httparse` gives for the same bytes;
/// - both `Content-Length` and `Transfer-Encoding` are never taken but to be refused
///   (`ambiguous_framing`, or for a fragment in the target; the connection closed);
/// - a target with a `#fragment` is never taken but to be refused (the connection closed, the
///   decision's canonicalizer refuses the target);
/// - anything else it takes is HTTP/1.1, origin-form, not `CONNECT`, without a body
///   (`Content-Length: 0` at most), `Transfer-Encoding`, `Expect`, `Upgrade` or a `Connection`
///   but a single `close`;
/// - its method, target and headers written out again parse (by `httparse` and by itself) to the
///   same.
pub fn h1_request(data: &[u8]) {
    use permgate::plane::h1::{self, Parsed};
    let Parsed::Ready(head) = h1::parse_head(data) else {
        return;
    };
    let mut slots = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    assert_eq!(
        req.parse(data).ok(),
        Some(httparse::Status::Complete(head.len)),
        "{data:?}"
    );
    assert_eq!(req.version, Some(1), "{data:?}");
    let target = &data[head.target.clone()];
    assert_eq!(req.path.map(str::as_bytes), Some(target), "{data:?}");
    assert!(target.starts_with(b"/"), "{data:?}");
    assert_ne!(head.method, http::Method::CONNECT, "{data:?}");
    let has = |name: &str| head.headers.contains_key(name);
    let fragment = target.contains(&b'#');
    // Both framings: refused as such, or for its fragment (the fragment is looked at first).
    if has("content-length") && has("transfer-encoding") {
        assert!(head.ambiguous_framing || fragment, "{data:?}");
    }
    if head.ambiguous_framing {
        assert!(head.close, "{data:?}");
        assert!(
            has("content-length") && has("transfer-encoding"),
            "{data:?}"
        );
    }
    if fragment {
        assert!(head.close, "{data:?}");
        assert!(canon::canonicalize_target(target).is_err(), "{data:?}");
        assert!(!head.uri.to_string().contains('#'), "{data:?}");
    }
    if !head.ambiguous_framing && !fragment {
        assert!(!has("upgrade"), "{data:?}");
        // One `Expect: 100-continue` at most.
        let expects: Vec<_> = head.headers.get_all("expect").iter().collect();
        assert!(expects.len() <= 1, "{data:?}");
        assert!(
            expects
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
            "{data:?}"
        );
        assert_eq!(head.expect_continue, expects.len() == 1, "{data:?}");
        // The body's framing: one plain length, or one `chunked` alone; as the head says.
        let lengths: Vec<_> = head.headers.get_all("content-length").iter().collect();
        let codings: Vec<_> = head.headers.get_all("transfer-encoding").iter().collect();
        assert!(lengths.len() <= 1 && codings.len() <= 1, "{data:?}");
        assert!(lengths.is_empty() || codings.is_empty(), "{data:?}");
        let length = lengths.first().map(|v| {
            let v = v.to_str().unwrap_or("x");
            assert!(v.bytes().all(|b| b.is_ascii_digit()), "{data:?}");
            v.parse::<u64>().ok()
        });
        assert!(
            codings.iter().all(|v| v.as_bytes() == b"chunked"),
            "{data:?}"
        );
        let expected = match (length, codings.len()) {
            (Some(Some(0)), _) | (None, 0) => h1::BodyFraming::None,
            (Some(Some(n)), _) => h1::BodyFraming::Length(n),
            (None, _) => h1::BodyFraming::Chunked,
            (Some(None), _) => panic!("a length that is not a u64 taken: {data:?}"),
        };
        assert_eq!(head.body, expected, "{data:?}");
        let connection: Vec<_> = head.headers.get_all("connection").iter().collect();
        assert!(connection.len() <= 1, "{data:?}");
        assert!(
            connection
                .iter()
                .all(|v| v.as_bytes().eq_ignore_ascii_case(b"close")),
            "{data:?}"
        );
        assert_eq!(head.close, connection.len() == 1, "{data:?}");
    }
    // Written out again: the same head.
    let mut again = Vec::new();
    again.extend_from_slice(head.method.as_str().as_bytes());
    again.push(b' ');
    again.extend_from_slice(target);
    again.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        again.extend_from_slice(name.as_str().as_bytes());
        again.extend_from_slice(b": ");
        again.extend_from_slice(value.as_bytes());
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let mut re = httparse::Request::new(&mut slots);
    assert_eq!(
        re.parse(&again).ok(),
        Some(httparse::Status::Complete(again.len())),
        "{again:?}"
    );
    assert_eq!(re.method, Some(head.method.as_str()), "{again:?}");
    assert_eq!(re.path.map(str::as_bytes), Some(target), "{again:?}");
    assert_eq!(re.headers.len(), head.headers.len(), "{again:?}");
    let Parsed::Ready(second) = h1::parse_head(&again) else {
        panic!("written out again, not taken: {data:?} -> {again:?}");
    };
    assert_eq!(second.len, again.len());
    assert_eq!(second.method, head.method, "{again:?}");
    assert_eq!(second.uri, head.uri, "{again:?}");
    assert_eq!(second.headers, head.headers, "{again:?}");
    assert_eq!(
        (second.close, second.ambiguous_framing),
        (head.close, head.ambiguous_framing),
        "{again:?}"
    );
    if !fragment {
        assert_eq!(
            (second.body, second.expect_continue),
            (head.body, head.expect_continue),
            "{again:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// h1_request_body

/// A request (head, body, maybe the next request), the first byte picking the pieces the body
/// is fed in: the lane's request-body reader (`plane::h1::BodyReader`) gives the same verdict
/// and output whatever the pieces; a length body is its first `Content-Length` bytes, done
/// exactly when they are all there; a chunked body is taken exactly when
/// [`reference_dechunk`] takes it (but for the 16 KiB bound on extensions and trailers), ends
/// where it ends, counts the same body bytes, and what the CRM receives dechunks to the same
/// body. Nothing past the body's end is consumed.
pub fn h1_request_body(data: &[u8]) {
    use permgate::plane::h1::{self, BodyFraming, BodyReader, Fed, Parsed};
    let Some((&first, raw)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first) + 1;
    let Parsed::Ready(head) = h1::parse_head(raw) else {
        return;
    };
    let Some(mut whole) = BodyReader::new(head.body) else {
        return;
    };
    assert!(!head.ambiguous_framing, "{data:?}");
    let rest = &raw[head.len..];
    let mut out = Vec::new();
    let verdict = whole.feed(rest, &mut out);
    // In pieces.
    let mut reader = BodyReader::new(head.body).unwrap_or_else(|| unreachable!());
    let mut out_pieces = Vec::new();
    let mut at = 0;
    let mut pieces_verdict = Ok(Fed {
        used: 0,
        done: false,
    });
    for p in rest.chunks(piece) {
        match reader.feed(p, &mut out_pieces) {
            Ok(Fed { used, done: false }) => {
                assert_eq!(used, p.len(), "{data:?}");
                at += used;
                pieces_verdict = Ok(Fed {
                    used: at,
                    done: false,
                });
            }
            Ok(Fed { used, done: true }) => {
                pieces_verdict = Ok(Fed {
                    used: at + used,
                    done: true,
                });
                break;
            }
            Err(e) => {
                pieces_verdict = Err(e);
                break;
            }
        }
    }
    assert_eq!(verdict.is_ok(), pieces_verdict.is_ok(), "{data:?}");
    if verdict.is_ok() {
        assert_eq!(verdict, pieces_verdict, "pieces of {piece}: {data:?}");
        assert_eq!(out, out_pieces, "pieces of {piece}: {data:?}");
        assert_eq!(whole.seen(), reader.seen(), "{data:?}");
    }
    match head.body {
        BodyFraming::None => unreachable!(),
        BodyFraming::Length(n) => {
            let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            assert_eq!(
                verdict,
                Ok(Fed {
                    used: take,
                    done: take as u64 == n
                }),
                "{data:?}"
            );
            assert_eq!(out, &rest[..take], "{data:?}");
            assert_eq!(whole.seen(), take as u64);
        }
        BodyFraming::Chunked => {
            let reference = reference_dechunk(rest, h1::MAX_REQUEST_TRAILERS);
            let small = rest.len() <= h1::MAX_CHUNK_META;
            match verdict {
                Ok(Fed { used, done: true }) => {
                    let Dechunked::Done(body, end) = reference else {
                        panic!("the reader takes what the reference refuses: {data:?}");
                    };
                    assert_eq!(used, end, "{data:?}");
                    assert_eq!(whole.seen(), body.len() as u64, "{data:?}");
                    assert_eq!(
                        reference_dechunk(&out, 0),
                        Dechunked::Done(body, out.len()),
                        "the CRM receives {out:?} from {data:?}"
                    );
                }
                Ok(Fed { done: false, used }) => {
                    assert_eq!(used, rest.len(), "{data:?}");
                    assert_eq!(reference, Dechunked::Incomplete, "{data:?}");
                }
                Err(_) if small => assert!(
                    !matches!(reference, Dechunked::Done(..)),
                    "the reader refuses what the reference takes: {data:?}"
                ),
                Err(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// h1_answer

/// An answer-side edit set with no context: drops and adds nothing, a fixed date.
struct NoEdits;

impl permgate::plane::h1::AnswerEdits for NoEdits {
    fn drops(&self, _: &str) -> bool {
        false
    }
    fn add(&self, _: &mut Vec<u8>) {}
    fn date(&self, head: &mut Vec<u8>) {
        head.extend_from_slice(b"date: D\r\n");
    }
}

/// What a chunked body is, by a line-by-line reading of RFC 9112 §7.1 written apart from the
/// lane's byte-at-a-time checker: `chunk-size [BWS] [; ext] CRLF data CRLF`…, `0`…, trailer
/// fields (at most `max_trailers` of them: hyper's server takes 257 after a request body, its
/// client 100 after an answer), an empty line. A line ends at its first CR, which a LF must
/// follow.
#[derive(Debug, PartialEq, Eq)]
pub enum Dechunked {
    /// The body, and where the chunked stream ended.
    Done(Vec<u8>, usize),
    Incomplete,
    Bad,
}

pub fn reference_dechunk(data: &[u8], max_trailers: usize) -> Dechunked {
    // The next line from `at`: `(line, where the next starts)`.
    fn line(data: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ()> {
        let rest = &data[at..];
        match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => Ok(None),
            Some(i) if rest[i] == b'\n' => Err(()),
            Some(i) if i + 1 == rest.len() => Ok(None),
            Some(i) if rest[i + 1] == b'\n' => Ok(Some((&rest[..i], at + i + 2))),
            Some(_) => Err(()),
        }
    }
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (size_line, next) = match line(data, at) {
            Err(()) => return Dechunked::Bad,
            Ok(None) => return Dechunked::Incomplete,
            Ok(Some(l)) => l,
        };
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 || digits > 15 {
            return Dechunked::Bad;
        }
        let after = &size_line[digits..];
        let ws = after
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if !(after[ws..].is_empty() || after[ws] == b';') {
            return Dechunked::Bad;
        }
        let hex = std::str::from_utf8(&size_line[..digits]).unwrap_or("0");
        let size = u64::from_str_radix(hex, 16).unwrap_or(0) as usize;
        at = next;
        if size == 0 {
            // Trailer lines, then the empty one.
            let mut fields = 0;
            loop {
                match line(data, at) {
                    Err(()) => return Dechunked::Bad,
                    Ok(None) => return Dechunked::Incomplete,
                    Ok(Some((l, next))) => {
                        at = next;
                        if l.is_empty() {
                            return Dechunked::Done(body, at);
                        }
                        // A field: `token ":" value`, the value visible bytes, spaces and
                        // tabs (as `httparse` reads hyper's trailers); no obs-fold.
                        let Some(colon) = l.iter().position(|&b| b == b':') else {
                            return Dechunked::Bad;
                        };
                        let token =
                            |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
                        let value = |b: &u8| *b == b'\t' || (*b >= 0x20 && *b != 0x7f);
                        if colon == 0
                            || !l[..colon].iter().all(token)
                            || !l[colon + 1..].iter().all(value)
                        {
                            return Dechunked::Bad;
                        }
                        fields += 1;
                        if fields > max_trailers {
                            return Dechunked::Bad;
                        }
                    }
                }
            }
        }
        if data.len() - at < size {
            return Dechunked::Incomplete;
        }
        body.extend_from_slice(&data[at..at + size]);
        at += size;
        match &data[at..] {
            [] | [b'\r'] => return Dechunked::Incomplete,
            [b'\r', b'\n', ..] => at += 2,
            _ => return Dechunked::Bad,
        }
    }
}

/// The lane's chunk checker fed `data` in pieces of `piece` bytes: its verdict and output.
fn lane_dechunk(data: &[u8], piece: usize) -> (Result<Option<usize>, &'static str>, Vec<u8>) {
    let mut chunks = permgate::plane::h1::Chunks::default();
    let mut out = Vec::new();
    let mut at = 0;
    for p in data.chunks(piece.max(1)) {
        match chunks.feed(p, &mut out) {
            Ok(None) => at += p.len(),
            Ok(Some(n)) => return (Ok(Some(at + n)), out),
            Err(e) => return (Err(e), out),
        }
    }
    (Ok(None), out)
}

/// The chunk checker agrees with [`reference_dechunk`] on `data` (never more lenient; as strict
/// but for its bound on extensions and trailers), whatever the pieces it is fed in, and what it
/// passes on is the same body, chunked again.
fn check_chunks(data: &[u8], piece: usize) {
    let (verdict, out) = lane_dechunk(data, piece);
    let (whole, whole_out) = lane_dechunk(data, data.len());
    assert_eq!(
        verdict.is_ok(),
        whole.is_ok(),
        "pieces of {piece}: {data:?}"
    );
    if let (Ok(a), Ok(b)) = (verdict, whole) {
        assert_eq!(a, b, "pieces of {piece}: {data:?}");
        assert_eq!(out, whole_out, "pieces of {piece}: {data:?}");
    }
    let reference = reference_dechunk(data, permgate::plane::h1::MAX_ANSWER_TRAILERS);
    let small = data.len() <= permgate::plane::h1::MAX_CHUNK_META;
    let taken = matches!(reference, Dechunked::Done(..));
    match verdict {
        Ok(Some(end)) => {
            let Dechunked::Done(body, ref_end) = reference else {
                panic!("the checker takes what the reference refuses: {data:?}");
            };
            assert_eq!(end, ref_end, "{data:?}");
            assert_eq!(
                reference_dechunk(&out, 0),
                Dechunked::Done(body, out.len()),
                "passed on: {out:?} from {data:?}"
            );
        }
        Ok(None) => assert_eq!(reference, Dechunked::Incomplete, "{data:?}"),
        Err(_) if small => assert!(
            !taken,
            "the checker refuses what the reference takes: {data:?}"
        ),
        Err(_) => {}
    }
    if small && taken {
        assert!(matches!(verdict, Ok(Some(_))), "{data:?}");
    }
}

/// The answer-head parser never panics; a final answer's framing is consistent with its head
/// and with the head written for the client (which parses, keeps the status, and holds no
/// hop-by-hop header, one framing at most); 1xx answers before it are skipped; a chunked
/// body is checked by [`check_chunks`]. The first byte picks: bit 0, the answer is to a HEAD;
/// bit 1, the rest is a chunked body on its own; bits 2–7, the pieces the body is fed in.
pub fn h1_answer(data: &[u8]) {
    use permgate::plane::h1::{self, AnswerParse, Framing};
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let head_request = first & 1 == 1;
    let piece = usize::from(first >> 2) + 1;
    if first & 2 == 2 {
        check_chunks(rest, piece);
        return;
    }
    let mut head = Vec::new();
    let answer = loop {
        match h1::parse_answer(rest, head_request, &NoEdits, &mut head) {
            Ok(AnswerParse::Informational(n)) => {
                assert!(n > 0 && n <= rest.len(), "{data:?}");
                rest = &rest[n..];
            }
            Ok(AnswerParse::Final(a)) => break a,
            Ok(AnswerParse::Partial) | Err(_) => return,
        }
    };
    let mut slots = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
    let mut crm = httparse::Response::new(&mut slots);
    assert_eq!(
        crm.parse(rest).ok(),
        Some(httparse::Status::Complete(answer.head_len)),
        "{data:?}"
    );
    let status = crm.code.unwrap_or(0);
    assert_eq!(status, answer.status);
    assert!((200..=999).contains(&status), "{data:?}");
    let crm_has = |name: &str| {
        crm.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name))
    };
    let no_body = head_request || status == 204 || status == 304;
    assert_eq!(answer.framing == Framing::Empty, no_body, "{data:?}");
    match answer.framing {
        Framing::Chunked | Framing::UntilClose => assert!(!crm_has("content-length")),
        Framing::Length(_) => assert!(!crm_has("transfer-encoding")),
        Framing::Empty => {}
    }
    if answer.framing == Framing::Chunked {
        assert!(crm_has("transfer-encoding"), "{data:?}");
    }
    if answer.framing == Framing::UntilClose {
        assert!(!answer.reusable, "{data:?}");
    }
    // The client's head.
    head.extend_from_slice(b"\r\n");
    let mut slots = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS + 4];
    let mut client = httparse::Response::new(&mut slots);
    assert_eq!(
        client.parse(&head).ok(),
        Some(httparse::Status::Complete(head.len())),
        "{head:?} from {data:?}"
    );
    assert_eq!(client.code, Some(status));
    let count = |name: &str| {
        client
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(count(hop), 0, "{hop} in {head:?}");
    }
    let (lengths, chunked) = (count("content-length"), count("transfer-encoding"));
    match answer.framing {
        Framing::Length(n) => {
            assert_eq!((lengths, chunked), (1, 0), "{head:?}");
            let written = client
                .headers
                .iter()
                .find(|h| h.name == "content-length")
                .map(|h| h.value);
            assert_eq!(written, Some(n.to_string().as_bytes()), "{head:?}");
        }
        Framing::Chunked => assert_eq!((lengths, chunked), (0, 1), "{head:?}"),
        Framing::UntilClose => assert_eq!((lengths, chunked), (0, 0), "{head:?}"),
        Framing::Empty => assert!(lengths <= 1 && chunked == 0, "{head:?}"),
    }
    assert!(count("date") >= 1, "{head:?}");
    if answer.framing == Framing::Chunked {
        check_chunks(&rest[answer.head_len..], piece);
    }
}
