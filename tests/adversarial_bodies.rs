//! The attacker's suite, part 2: bodies on an inspected (bulk) route, raw on the wire. Each case
//! says the status; whatever reaches the CRM is parsed and must hold only leads the caller may
//! reassign (for allowed calls: exactly the trimmed, canonical body).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

mod common;

use common::*;

/// Lead N is owned by this user in the sample CRM (its documented formula).
fn owner(n: u32) -> &'static str {
    [
        "u-admin", "u-sm", "u-rep1", "u-rep2", "u-csr", "u-mm", "u-da", "u-member",
    ][(n as usize - 1) % 8]
}

/// u-sm (sales manager) may reassign leads of their own and of their reports (u-rep1, u-rep2):
/// leads 2, 3, 4, 10, 11, 12, …; not 1, 5, 6, 7, 8, 9.
fn snapshot() -> String {
    let owners: Vec<String> = (1..=40)
        .map(|n| format!(r#"{{"type":"lead","id":"{n}","owner":"{}"}}"#, owner(n)))
        .collect();
    let mut v: serde_json::Value = serde_json::from_str(permgate::demo::DEMO_SNAPSHOT).unwrap();
    v["roles"].as_array_mut().unwrap().push(
        serde_json::json!({"id": "lead_manager", "permissions": ["lead.view@subordinates", "lead.reassign@subordinates"]}),
    );
    for u in v["users"].as_array_mut().unwrap() {
        if u["id"] == "u-sm" {
            u["roles"] = serde_json::json!(["lead_manager"]);
        }
    }
    v["records"] =
        serde_json::from_str(&format!(r#"{{"owners":[{}]}}"#, owners.join(","))).unwrap();
    serde_json::to_string_pretty(&v).unwrap()
}

fn config() -> String {
    let text = demo_config_text().replacen(
        "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"",
        "path = \"/api/v1/leads/bulk-reassign\"\npermission = \"lead.reassign\"\nbulk = { type = \"lead\", items = \"/ids\", keys = [\"ids\", \"owner_id\"] }\nnew_owner = { at = \"/owner_id\" }",
        1,
    );
    assert!(text.contains("bulk = {"));
    text + "\n[[record_type]]\nname = \"lead\"\nid = \"integer\"\n"
}

fn in_scope(id: u64) -> bool {
    (1..=40).contains(&id) && matches!(owner(id as u32), "u-sm" | "u-rep1" | "u-rep2")
}

fn post(extra: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /api/v1/leads/bulk-reassign HTTP/1.1\r\nHost: crm\r\n{}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        format_args!("Authorization: Bearer {}", token("u-sm")),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

const JSON: &str = "Content-Type: application/json\r\n";

/// (name, extra headers, body, status, exact body the CRM receives if forwarded)
type BodyCase = (String, String, Vec<u8>, u16, Option<&'static str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_on_an_inspected_route() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("permgate.toml"), config()).unwrap();
    std::fs::write(dir.path().join("snapshot.json"), snapshot()).unwrap();
    let h = Harness::start_with(&dir.path().join("permgate.toml")).await;

    let mut cases: Vec<BodyCase> = Vec::new();
    let mut add = |name: &str, extra: &str, body: &[u8], status: u16, crm: Option<&'static str>| {
        cases.push((name.into(), extra.into(), body.to_vec(), status, crm));
    };
    let trimmed = Some(r#"{"ids":[2,3],"owner_id":"u-rep2"}"#);
    add(
        "trim",
        JSON,
        br#"{"ids":[2,1,3,5],"owner_id":"u-rep2"}"#,
        200,
        trimmed,
    );
    add(
        "whitespace",
        JSON,
        b" {\n\"ids\" : [ 2 , 1 , 3 ] ,\t\"owner_id\":\"u-rep2\" }\r\n",
        200,
        trimmed,
    );
    add(
        "escaped key alone",
        JSON,
        br#"{"\u0069ds":[2,1,3],"owner_id":"u-rep2"}"#,
        200,
        trimmed,
    );
    add(
        "escaped value",
        JSON,
        br#"{"ids":[2,3],"owner_id":"u-\u0072ep2"}"#,
        200,
        trimmed,
    );
    add(
        "charset utf-8",
        "Content-Type: application/json; charset=utf-8\r\n",
        br#"{"ids":[2,3],"owner_id":"u-rep2"}"#,
        200,
        trimmed,
    );
    add(
        "nothing in scope",
        JSON,
        br#"{"ids":[1,5,6],"owner_id":"u-rep2"}"#,
        403,
        None,
    );
    add(
        "assignee out of scope",
        JSON,
        br#"{"ids":[2,3],"owner_id":"u-csr"}"#,
        403,
        None,
    );
    add(
        "assignee with NUL",
        JSON,
        br#"{"ids":[2],"owner_id":"u-rep2\u0000"}"#,
        403,
        None,
    );
    // Parser differentials: anything two parsers could read differently is refused whole.
    for (name, body) in [
        (
            "duplicate key",
            &br#"{"ids":[2],"ids":[1],"owner_id":"u-rep2"}"#[..],
        ),
        (
            "duplicate key, escaped",
            br#"{"ids":[2],"\u0069ds":[1],"owner_id":"u-rep2"}"#,
        ),
        (
            "duplicate key, escaped first",
            br#"{"\u0069ds":[1],"ids":[2],"owner_id":"u-rep2"}"#,
        ),
        (
            "duplicate owner",
            br#"{"ids":[2],"owner_id":"u-rep2","owner_id":"u-admin"}"#,
        ),
        ("duplicate item", br#"{"ids":[2,2],"owner_id":"u-rep2"}"#),
        (
            "duplicate item, other spelling",
            br#"{"ids":[2,2.0],"owner_id":"u-rep2"}"#,
        ),
        (
            "id beyond u64",
            br#"{"ids":[18446744073709551618],"owner_id":"u-rep2"}"#,
        ),
        ("id 1e400", br#"{"ids":[1e400],"owner_id":"u-rep2"}"#),
        ("id float", br#"{"ids":[2.5],"owner_id":"u-rep2"}"#),
        ("id exponent", br#"{"ids":[2e0],"owner_id":"u-rep2"}"#),
        ("id negative", br#"{"ids":[-2],"owner_id":"u-rep2"}"#),
        ("id leading zero", br#"{"ids":[02],"owner_id":"u-rep2"}"#),
        ("id string", br#"{"ids":["02"],"owner_id":"u-rep2"}"#),
        ("id hex", br#"{"ids":[0x2],"owner_id":"u-rep2"}"#),
        ("id NaN", br#"{"ids":[NaN],"owner_id":"u-rep2"}"#),
        ("id Infinity", br#"{"ids":[Infinity],"owner_id":"u-rep2"}"#),
        ("id true", br#"{"ids":[true],"owner_id":"u-rep2"}"#),
        ("id null", br#"{"ids":[null],"owner_id":"u-rep2"}"#),
        ("id array", br#"{"ids":[[2]],"owner_id":"u-rep2"}"#),
        ("id object", br#"{"ids":[{"id":2}],"owner_id":"u-rep2"}"#),
        ("ids not an array", br#"{"ids":2,"owner_id":"u-rep2"}"#),
        ("ids missing", br#"{"owner_id":"u-rep2"}"#),
        (
            "owner not a string",
            br#"{"ids":[2],"owner_id":["u-rep2"]}"#,
        ),
        ("owner missing", br#"{"ids":[2]}"#),
        (
            "unknown key",
            br#"{"ids":[2],"owner_id":"u-rep2","select_all":true}"#,
        ),
        (
            "unknown key, escaped",
            br#"{"ids":[2],"owner_id":"u-rep2","\u0073elect_all":true}"#,
        ),
        ("BOM", b"\xef\xbb\xbf{\"ids\":[2],\"owner_id\":\"u-rep2\"}"),
        ("UTF-16 BOM", b"\xff\xfe{\x00}\x00"),
        ("block comment", br#"{"ids":[2]/*,1*/,"owner_id":"u-rep2"}"#),
        ("line comment", b"{\"ids\":[2],\"owner_id\":\"u-rep2\"}// x"),
        (
            "hash comment",
            b"# x\n{\"ids\":[2],\"owner_id\":\"u-rep2\"}",
        ),
        ("trailing data", br#"{"ids":[2],"owner_id":"u-rep2"} x"#),
        (
            "two documents",
            br#"{"ids":[2],"owner_id":"u-rep2"}{"ids":[1],"owner_id":"u-rep2"}"#,
        ),
        ("trailing comma", br#"{"ids":[2,],"owner_id":"u-rep2"}"#),
        (
            "trailing comma in object",
            br#"{"ids":[2],"owner_id":"u-rep2",}"#,
        ),
        ("single quotes", br#"{'ids':[2],'owner_id':'u-rep2'}"#),
        ("unquoted key", br#"{ids:[2],"owner_id":"u-rep2"}"#),
        ("invalid UTF-8", b"{\"ids\":[2],\"owner_id\":\"u-rep\xff\"}"),
        (
            "overlong UTF-8",
            b"{\"ids\":[2],\"owner_id\":\"u-rep\xc0\xb2\"}",
        ),
        (
            "lone surrogate",
            br#"{"ids":[2],"owner_id":"u-rep2\ud800"}"#,
        ),
        (
            "raw control character",
            b"{\"ids\":[2],\"owner_id\":\"u-\x01rep2\"}",
        ),
        (
            "NUL after document",
            b"{\"ids\":[2],\"owner_id\":\"u-rep2\"}\x00",
        ),
        ("empty body", b""),
        ("null", b"null"),
        ("array top level", br#"[2,3]"#),
        ("unterminated", br#"{"ids":[2],"owner_id":"u-rep2""#),
    ] {
        add(name, JSON, body, 400, None);
    }
    let deep = format!(
        "{{\"ids\":[2],\"owner_id\":\"u-rep2\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    add("deep nesting", JSON, deep.as_bytes(), 400, None);
    let deep_ids = format!(
        "{{\"ids\":{}2{},\"owner_id\":\"u-rep2\"}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    add("deep nesting in ids", JSON, deep_ids.as_bytes(), 400, None);
    // Content types and encodings: only JSON in UTF-8, uncompressed, is read.
    let ok_body = br#"{"ids":[2,3],"owner_id":"u-rep2"}"#;
    for ct in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "Content-Type: multipart/form-data; boundary=x\r\n",
        "Content-Type: application/xml\r\n",
        "Content-Type: application/json; charset=utf-16\r\n",
        "Content-Type: application/json; charset=latin1\r\n",
        "Content-Type: application/json; charset=utf-7\r\n",
        "Content-Type: application/json, text/plain\r\n",
        "Content-Type: application/jsonx\r\n",
    ] {
        add(&format!("content type {ct:?}"), ct, ok_body, 415, None);
    }
    add(
        "two content types",
        "Content-Type: application/json\r\nContent-Type: text/plain\r\n",
        ok_body,
        400,
        None,
    );
    for enc in [
        "gzip",
        "deflate",
        "br",
        "zstd",
        "compress",
        "gzip, identity",
        "x-unknown",
    ] {
        add(
            &format!("content-encoding {enc}"),
            &format!("{JSON}Content-Encoding: {enc}\r\n"),
            ok_body,
            415,
            None,
        );
    }
    // Oversized: more than the route's body limit (4 MiB by default).
    let big = format!(
        "{{\"ids\":[{}],\"owner_id\":\"u-rep2\"}}",
        vec!["2"; 2_200_000].join(",")
    );
    add("over the body limit", JSON, big.as_bytes(), 413, None);
    let many: Vec<String> = (1..=10_001).map(|n| n.to_string()).collect();
    let many = format!("{{\"ids\":[{}],\"owner_id\":\"u-rep2\"}}", many.join(","));
    add(
        "more items than body.max_items",
        JSON,
        many.as_bytes(),
        413,
        None,
    );
    let n = cases.len();
    for (name, extra, body, status, crm) in cases {
        h.clear();
        let r = h.raw(&post(&extra, &body));
        assert_eq!(r.status, status, "{name}: {r:?}");
        if status >= 400 {
            assert!(r.json()["request_id"].is_string(), "{name}: {r:?}");
        }
        let got = h.received();
        match crm {
            None => assert!(got.is_empty(), "{name}: the CRM received {got:?}"),
            Some(want) => {
                assert_eq!(got.len(), 1, "{name}: {got:?}");
                assert_eq!(got[0].body, want, "{name}");
                assert_eq!(
                    recorded_header(&got[0], "content-length"),
                    vec![want.len().to_string().as_str()],
                    "{name}"
                );
            }
        }
        for r in &got {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            for id in v["ids"].as_array().unwrap() {
                assert!(in_scope(id.as_u64().unwrap()), "{name}: forwarded {id}");
            }
        }
    }
    println!("adversarial class bodies: {n} cases");
    // A chunked body is read whole and forwarded with a Content-Length.
    h.clear();
    let body = br#"{"ids":[1,2,3],"owner_id":"u-rep2"}"#;
    let mut req = format!(
        "POST /api/v1/leads/bulk-reassign HTTP/1.1\r\nHost: crm\r\nAuthorization: Bearer {}\r\n{JSON}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        token("u-sm")
    )
    .into_bytes();
    for piece in body.chunks(5) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = h.raw(&req);
    assert_eq!(r.status, 200, "{r:?}");
    let got = h.received();
    assert_eq!(got[0].body, r#"{"ids":[2,3],"owner_id":"u-rep2"}"#);
    assert!(recorded_header(&got[0], "transfer-encoding").is_empty());
}
