//! The lane's HTTP/1.1 codec (`permgate::plane::h1`) against hyper on the same bytes.
//!
//! Request side: each request head goes to hyper's HTTP/1.1 server (built as the gateway
//! builds it, over an in-memory stream, with a service that records what it got) and to
//! `h1::parse_head`. A head the lane serves, hyper serves with the same method, target, headers
//! and no body; a head hyper refuses, the lane never serves (it hands it to hyper, which refuses
//! it as before). The heads where the lane deliberately differs are named in [`Expect`].
//!
//! Answer side: each CRM answer goes to hyper's HTTP/1.1 client directly, and to the lane's
//! codec (`h1::parse_answer`, `h1::Chunks`) whose output — the answer head and body the lane
//! would write to its client — goes to hyper's client again. Both must see the same status and
//! body bytes, or both fail; deliberate differences are named in [`Verdict`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use permgate::plane::h1::{self, AnswerEdits, AnswerParse, Chunks, Framing, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Request side

/// What hyper's server made of a request.
#[derive(Debug)]
enum Served {
    /// The service was called: method, target, headers, body bytes (or the body failed).
    Called(Method, String, HeaderMap, Result<Bytes, String>),
    /// hyper answered itself (400, 431, …) or closed: the service never saw it.
    Refused(String),
}

async fn hyper_server(raw: &[u8]) -> Served {
    hyper_server_all(raw).await.remove(0)
}

/// Every request hyper's server serves from `raw` (the first refused or closed ends it).
async fn hyper_server_all(raw: &[u8]) -> Vec<Served> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let seen: Arc<Mutex<Vec<Served>>> = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string());
            let target = parts.uri.to_string();
            record
                .lock()
                .unwrap()
                .push(Served::Called(parts.method, target, parts.headers, body));
            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    // As the gateway builds its HTTP/1.1 server (`plane::run`).
    let mut builder = hyper::server::conn::http1::Builder::new();
    // `half_close`: the client sends its bytes then shuts its write half; hyper still answers.
    builder
        .max_headers(257)
        .max_buf_size(64 * 1024 + 64 * 1024)
        .half_close(true);
    let conn = builder.serve_connection(TokioIo::new(server), service);
    let served = tokio::spawn(conn);
    client.write_all(raw).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
    let mut called = std::mem::take(&mut *seen.lock().unwrap());
    if called.is_empty() {
        called.push(Served::Refused(
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("closed")
                .to_string(),
        ));
    }
    called
}

/// How the lane and hyper are expected to compare on a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The lane serves it: hyper serves it too, with the same method, target and headers, and
    /// no body.
    Same,
    /// The lane hands it to hyper (which then serves or refuses it as it would anyway).
    Hyper,
    /// Deliberate difference: both `Content-Length` and `Transfer-Encoding`. hyper's server
    /// drops the length and reads the body as chunked; the lane refuses the request (400
    /// `ambiguous_framing`) and closes.
    RefusedAmbiguous,
    /// Deliberate difference: a `#fragment` in the target. hyper's URI parser drops it and
    /// serves the rest; the lane keeps the raw target, the decision refuses it
    /// (`invalid_character`) and the connection closes.
    RefusedFragment,
}

fn lane_request(raw: &[u8]) -> (Expect, Option<h1::Head>) {
    match h1::parse_head(raw) {
        Parsed::Ready(head) if head.ambiguous_framing => (Expect::RefusedAmbiguous, Some(head)),
        Parsed::Ready(head) if raw[head.target.clone()].contains(&b'#') => {
            (Expect::RefusedFragment, Some(head))
        }
        Parsed::Ready(head) => (Expect::Same, Some(head)),
        Parsed::Other => (Expect::Hyper, None),
        Parsed::Partial => panic!("partial: {}", String::from_utf8_lossy(raw)),
    }
}

fn many_headers(n: usize) -> Vec<u8> {
    let mut raw = b"GET /many HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..n {
        raw.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

#[tokio::test]
async fn request_heads_agree_with_hyper_server() {
    let big_value = format!(
        "GET /big HTTP/1.1\r\nhost: x\r\ncookie: {}\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("plain GET", b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), Expect::Same),
        (
            "headers kept in order and case of values",
            b"GET /api/v1/customers/42 HTTP/1.1\r\nHost: crm\r\nAuthorization: Bearer T\r\nAccept: */*\r\nX-A: 1\r\nx-a: 2\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        (
            "Connection: close",
            b"GET /a HTTP/1.1\r\nhost: x\r\nConnection: Close\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        (
            "DELETE with Content-Length: 0",
            b"DELETE /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        ("no Host (the decision refuses it)", b"GET /a HTTP/1.1\r\n\r\n".to_vec(), Expect::Same),
        (
            "odd but valid method and target",
            b"PROPFIND /a/%2e%2e/b;x=1?q=%zz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        ("CL + TE", b"POST /a HTTP/1.1\r\nhost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Expect::RefusedAmbiguous),
        ("TE + CL", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 10\r\n\r\n0\r\n\r\n".to_vec(), Expect::RefusedAmbiguous),
        ("fragment", b"GET /a#frag HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), Expect::RefusedFragment),
        ("fragment with a body", b"POST /a?x#f HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab".to_vec(), Expect::RefusedFragment),
        ("duplicate CL, same", b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n".to_vec(), Expect::Hyper),
        ("duplicate CL, different", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(), Expect::Hyper),
        ("CL list", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0, 0\r\n\r\n".to_vec(), Expect::Hyper),
        ("obs-fold", b"GET /a HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n b\r\n\r\n".to_vec(), Expect::Hyper),
        ("space before colon", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a : 1\r\n\r\n".to_vec(), Expect::Hyper),
        ("control byte in a value", b"GET /a HTTP/1.1\r\nhost: x\r\nx: a\x01b\r\n\r\n".to_vec(), Expect::Hyper),
        ("HTTP/1.0", b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n".to_vec(), Expect::Hyper),
        ("HTTP/2 preface-like", b"GET /a HTTP/2.0\r\nhost: x\r\n\r\n".to_vec(), Expect::Hyper),
        ("absolute-form", b"GET http://x/a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), Expect::Hyper),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), Expect::Hyper),
        ("CONNECT", b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n".to_vec(), Expect::Hyper),
        ("Expect: 100-continue, no body", b"GET /a HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n\r\n".to_vec(), Expect::Same),
        ("another expectation", b"GET /a HTTP/1.1\r\nhost: x\r\nexpect: 200-ok\r\n\r\n".to_vec(), Expect::Hyper),
        ("Upgrade", b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".to_vec(), Expect::Hyper),
        ("Connection keep-alive", b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\n\r\n".to_vec(), Expect::Hyper),
        ("two Connection: close", b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\nconnection: close\r\n\r\n".to_vec(), Expect::Hyper),
        ("bare LF line ends", b"GET /a HTTP/1.1\nhost: x\n\n".to_vec(), Expect::Same),
        ("bad method byte", b"G(T /a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), Expect::Hyper),
        ("12 KiB header value", big_value.into_bytes(), Expect::Same),
        ("120 headers", many_headers(120), Expect::Same),
        ("200 headers", many_headers(200), Expect::Hyper),
    ];
    let mut failures = Vec::new();
    for (name, raw, expect) in &cases {
        let (lane, head) = lane_request(raw);
        let hyper = hyper_server(raw).await;
        let ok = match (&lane, &head, &hyper) {
            (Expect::Same, Some(head), Served::Called(method, target, headers, body)) => {
                let same_target = head.uri.to_string() == *target
                    && raw[head.target.clone()] == *target.as_bytes();
                method == head.method
                    && same_target
                    && *headers == head.headers
                    && body.as_ref().is_ok_and(|b| b.is_empty())
            }
            // A head hyper refuses the lane never serves: handed over, hyper refuses it.
            (Expect::Same, _, Served::Refused(_)) => false,
            (Expect::RefusedAmbiguous, Some(head), Served::Called(_, _, headers, _)) => {
                // hyper dropped the length and read the body as chunked; the lane refuses it.
                let mut without_length = head.headers.clone();
                without_length.remove(http::header::CONTENT_LENGTH);
                *headers == without_length
            }
            (Expect::RefusedFragment, Some(head), Served::Called(method, target, ..)) => {
                // hyper served the target without its fragment.
                *method == head.method && !target.contains('#')
            }
            // hyper refuses with a clear 400 or 431.
            (Expect::Hyper, None, Served::Refused(line)) => {
                line.starts_with("HTTP/1.1 400 ") || line.starts_with("HTTP/1.1 431 ")
            }
            (Expect::Hyper, None, Served::Called(..)) => true,
            _ => false,
        };
        println!("{name}: lane {lane:?}, hyper {hyper:?}");
        if !ok || lane != *expect {
            failures.push(format!(
                "{name}: lane {lane:?} (expected {expect:?}), hyper {hyper:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// How the lane and hyper's server compare on a request with a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyExpect {
    /// The lane reads it: hyper reads the same body, or both refuse it (a malformed or cut
    /// body); what follows the body is the same next request for both.
    Same,
    /// The lane hands it to hyper (an unusual framing spelling: hyper reads it, the decision
    /// refuses it as `ambiguous_framing`, or hyper refuses it itself).
    Hyper,
    /// Deliberate difference: the lane refuses a body hyper reads — a chunk size of 16 hex
    /// digits or more, leading zeros included (hyper: until it overflows a u64). Never the
    /// other way round.
    LaneStricter,
}

/// What the lane reads of a request's body: the body bytes, and the next request's target,
/// or why it refuses the body (`Err`; a body cut short is an error too: the connection ends).
/// What the lane read of a body (or why it refused it), and the next request's target.
type LaneBody = (Result<Vec<u8>, String>, Option<String>);

fn lane_body(raw: &[u8]) -> Option<LaneBody> {
    let Parsed::Ready(head) = h1::parse_head(raw) else {
        return None;
    };
    assert!(!head.ambiguous_framing);
    let rest = &raw[head.len..];
    let Some(mut reader) = h1::BodyReader::new(head.body) else {
        return Some((Ok(Vec::new()), next_target(rest)));
    };
    // In two pieces, as reads may cut it.
    let mut out = Vec::new();
    let half = rest.len() / 2;
    let mut used = 0;
    let mut done = false;
    for piece in [&rest[..half], &rest[half..]] {
        match reader.feed(piece, &mut out) {
            Err(why) => return Some((Err(why.to_string()), None)),
            Ok(fed) => {
                used += fed.used;
                if fed.done {
                    done = true;
                    break;
                }
            }
        }
    }
    if !done {
        return Some((Err("cut short".into()), None));
    }
    // What the CRM receives is the same body again.
    let body = match head.body {
        h1::BodyFraming::Chunked => {
            let mut again = h1::BodyReader::new(h1::BodyFraming::Chunked).unwrap();
            let mut plain = Vec::new();
            let fed = again.feed(&out, &mut plain).unwrap();
            assert_eq!(fed.used, out.len());
            assert!(fed.done);
            assert_eq!(again.seen(), reader.seen());
            dechunk_plain(&out)
        }
        _ => out,
    };
    Some((Ok(body), next_target(&rest[used..])))
}

/// The data of a well-formed chunked body (the lane's own output: no extensions, no trailers).
fn dechunk_plain(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n");
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn next_target(rest: &[u8]) -> Option<String> {
    match h1::parse_head(rest) {
        Parsed::Ready(head) => Some(head.uri.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn request_bodies_agree_with_hyper_server() {
    let post = |framing: &str, body: &str| {
        format!("POST /a HTTP/1.1\r\nhost: x\r\n{framing}\r\n{body}").into_bytes()
    };
    let te = "transfer-encoding: chunked\r\n";
    let next = "GET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    let huge_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(20 * 1024));
    let big = "b".repeat(100_000);
    let cases: Vec<(&str, Vec<u8>, BodyExpect)> = vec![
        (
            "length",
            post("content-length: 5\r\n", "hello"),
            BodyExpect::Same,
        ),
        (
            "length, then the next request",
            post("content-length: 5\r\n", &format!("hello{next}")),
            BodyExpect::Same,
        ),
        (
            "length with leading zeros",
            post("content-length: 005\r\n", &format!("hello{next}")),
            BodyExpect::Same,
        ),
        (
            "length, 100 kB",
            post("content-length: 100000\r\n", &big),
            BodyExpect::Same,
        ),
        (
            "length cut short",
            post("content-length: 10\r\n", "hello"),
            BodyExpect::Same,
        ),
        (
            "length 0 on POST",
            post("content-length: 0\r\n", next),
            BodyExpect::Same,
        ),
        (
            "Expect: 100-continue",
            post("expect: 100-continue\r\ncontent-length: 2\r\n", "ok"),
            BodyExpect::Same,
        ),
        (
            "chunked",
            post(te, &format!("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n{next}")),
            BodyExpect::Same,
        ),
        (
            "chunked, extensions",
            post(te, "5;a=b\r\nhello\r\n6 ; c=\"d\"\r\n world\r\n0;z\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, trailers",
            post(te, &format!("2\r\nab\r\n0\r\nx-t: 1\r\nx-u:\r\n\r\n{next}")),
            BodyExpect::Same,
        ),
        (
            "chunked, upper-case hex and leading zeros",
            post(te, "000A\r\n0123456789\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, bad size",
            post(te, "zz\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, negative size",
            post(te, "-2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, 0x size",
            post(te, "0x2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, space before the size",
            post(te, " 2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, two sizes",
            post(te, "2 2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, size overflows a u64",
            post(te, "fffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, 16-digit size",
            post(te, "0000000000000002\r\nab\r\n0\r\n\r\n"),
            BodyExpect::LaneStricter,
        ),
        (
            "chunked, bare LF after the size",
            post(te, "2\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, bare LF after the data",
            post(te, "2\r\nab\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, data longer than its size",
            post(te, "1\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, data shorter than its size",
            post(te, &format!("3\r\nab\r\n0\r\n\r\n{next}")),
            BodyExpect::Same,
        ),
        (
            "chunked, LF in an extension",
            post(te, "2;a\nb\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, 20 KiB extension",
            post(te, &huge_ext),
            BodyExpect::Same,
        ),
        (
            "chunked, obs-fold in a trailer",
            post(te, "2\r\nab\r\n0\r\nx-t: 1\r\n 2\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, trailer without a colon",
            post(te, "2\r\nab\r\n0\r\nbogus\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, trailer with a bad name",
            post(te, "2\r\nab\r\n0\r\nx t: 1\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, control byte in a trailer",
            post(te, "2\r\nab\r\n0\r\nx-t: a\x01b\r\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, bare LF in a trailer",
            post(te, "2\r\nab\r\n0\r\nx-t: 1\n\r\n"),
            BodyExpect::Same,
        ),
        (
            "chunked, no last line",
            post(te, "2\r\nab\r\n0\r\n"),
            BodyExpect::Same,
        ),
        ("chunked, cut short", post(te, "5\r\nhel"), BodyExpect::Same),
        (
            "chunked, then a smuggled request",
            post(te, &format!("0\r\n\r\n{next}")),
            BodyExpect::Same,
        ),
        (
            "Transfer-Encoding: Chunked",
            post("transfer-encoding: Chunked\r\n", "2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Hyper,
        ),
        (
            "gzip, chunked",
            post(
                "transfer-encoding: gzip, chunked\r\n",
                "2\r\nab\r\n0\r\n\r\n",
            ),
            BodyExpect::Hyper,
        ),
        (
            "chunked twice",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
                "2\r\nab\r\n0\r\n\r\n",
            ),
            BodyExpect::Hyper,
        ),
        (
            "identity",
            post("transfer-encoding: identity\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "obs-fold in Transfer-Encoding",
            post("transfer-encoding:\r\n chunked\r\n", "2\r\nab\r\n0\r\n\r\n"),
            BodyExpect::Hyper,
        ),
        (
            "obs-fold in Content-Length",
            post("content-length:\r\n 2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "length twice, same",
            post("content-length: 2\r\ncontent-length: 2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "length twice, different",
            post("content-length: 2\r\ncontent-length: 3\r\n", "abc"),
            BodyExpect::Hyper,
        ),
        (
            "length list",
            post("content-length: 2, 2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "length with a sign",
            post("content-length: +2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "length in hex",
            post("content-length: 0x2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "length overflows a u64",
            post("content-length: 99999999999999999999\r\n", "ab"),
            BodyExpect::Hyper,
        ),
        (
            "another expectation",
            post("expect: 200-ok\r\ncontent-length: 2\r\n", "ab"),
            BodyExpect::Hyper,
        ),
    ];
    let mut failures = Vec::new();
    for (name, raw, expect) in &cases {
        let lane = lane_body(raw);
        let hyper = hyper_server_all(raw).await;
        let hyper_body = match &hyper[0] {
            Served::Called(.., Ok(body)) => Ok(body.to_vec()),
            Served::Called(.., Err(e)) => Err(e.clone()),
            Served::Refused(line) => Err(line.clone()),
        };
        let hyper_next = match hyper.get(1) {
            Some(Served::Called(_, target, ..)) => Some(target.clone()),
            _ => None,
        };
        let got = match &lane {
            None => BodyExpect::Hyper,
            Some((Ok(body), next)) => {
                if hyper_body.as_ref() == Ok(body) && *next == hyper_next {
                    BodyExpect::Same
                } else {
                    failures.push(format!("{name}: the lane reads {lane:?}, hyper {hyper:?}"));
                    continue;
                }
            }
            Some((Err(_), _)) if hyper_body.is_err() => BodyExpect::Same,
            Some((Err(_), _)) => BodyExpect::LaneStricter,
        };
        println!("{name}: lane {lane:?}, hyper {hyper_body:?} then {hyper_next:?}");
        if got != *expect {
            failures.push(format!(
                "{name}: {got:?} (expected {expect:?}): the lane reads {lane:?}, hyper {hyper:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every head in the fuzz seeds: what the lane serves, hyper serves the same way.
#[tokio::test]
async fn fuzz_seed_heads_the_lane_serves_hyper_serves_the_same() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/h1_request");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        let Parsed::Ready(head) = h1::parse_head(&raw) else {
            continue;
        };
        if head.ambiguous_framing || raw[head.target.clone()].contains(&b'#') {
            continue;
        }
        n += 1;
        match hyper_server(&raw).await {
            Served::Called(method, target, headers, body) => {
                assert_eq!(method, head.method);
                assert_eq!(target, head.uri.to_string());
                assert_eq!(headers, head.headers);
                if head.body == h1::BodyFraming::None {
                    assert_eq!(body.unwrap().len(), 0);
                }
            }
            refused => panic!("{}: {refused:?}", String::from_utf8_lossy(&raw)),
        }
    }
    assert!(n > 0);
}

// ---------------------------------------------------------------------------------------------
// Answer side

/// What a hyper client got: the final status and the body, or an error.
type Got = Result<(u16, Bytes), String>;

/// Send `method /` through hyper's client to a peer that answers `answer` then closes.
async fn hyper_client(method: &Method, answer: &[u8]) -> Got {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let answer = answer.to_vec();
    let peer = tokio::spawn(async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if server.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        // Hold the stream until the client is done (dropping it is a close either way).
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
    });
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "crm")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    peer.abort();
    got
}

struct NoEdits;

impl AnswerEdits for NoEdits {
    fn drops(&self, _: &str) -> bool {
        false
    }
    fn add(&self, _: &mut Vec<u8>) {}
}

/// What the lane writes to its client for this CRM answer (head, then the body as framed), or
/// why it refuses the answer (the client gets a 502 then). A body cut short is written as far
/// as it came, then the connection closes.
fn lane_answer(head_request: bool, mut raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    let answer = loop {
        match h1::parse_answer(raw, head_request, &NoEdits, &mut out)? {
            AnswerParse::Informational(n) => raw = &raw[n..],
            AnswerParse::Final(a) => break a,
            AnswerParse::Partial => return Err("the answer head stopped short"),
        }
    };
    let body = &raw[answer.head_len..];
    if answer.framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match answer.framing {
        Framing::Empty => {}
        Framing::Length(n) => out.extend_from_slice(&body[..body.len().min(n as usize)]),
        Framing::UntilClose => out.extend_from_slice(body),
        Framing::Chunked => {
            // Cut where the checker refuses: what was passed on stays written.
            let _ = Chunks::default().feed(body, &mut out);
        }
    }
    Ok(out)
}

/// How the lane and hyper's client compare on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The same status and body, or both fail.
    Same,
    /// Deliberate difference: both `Transfer-Encoding: chunked` and `Content-Length`. hyper's
    /// client reads it as chunked; the lane refuses it (502).
    RefusedAmbiguous,
}

#[tokio::test]
async fn answers_agree_with_hyper_client() {
    let get = Method::GET;
    let head = Method::HEAD;
    let huge_ext = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;{}\r\na\r\n0\r\n\r\n",
        "e".repeat(20 * 1024)
    );
    // Trailer fields after a chunked answer: hyper's client takes 100 (its default
    // `max_headers`), the lane too (`h1::MAX_ANSWER_TRAILERS`); one more fails on both.
    let trailers = |n: usize| {
        let mut a =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n".to_vec();
        for i in 0..n {
            a.extend_from_slice(format!("x-t{i}: v\r\n").as_bytes());
        }
        a.extend_from_slice(b"\r\n");
        a
    };
    let cases: Vec<(&str, &Method, Vec<u8>, Verdict)> = vec![
        ("chunked, 100 trailer fields", &get, trailers(100), Verdict::Same),
        ("chunked, 101 trailer fields", &get, trailers(101), Verdict::Same),
        ("length", &get, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(), Verdict::Same),
        ("length, hop-by-hop", &get, b"HTTP/1.1 200 OK\r\nconnection: x-a, keep-alive\r\nx-a: 1\r\nkeep-alive: t=5\r\ncontent-length: 2\r\n\r\nok".to_vec(), Verdict::Same),
        ("length 0", &get, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(), Verdict::Same),
        ("length twice, same", &get, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok".to_vec(), Verdict::Same),
        ("length twice, different", &get, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!".to_vec(), Verdict::Same),
        ("length with a sign", &get, b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok".to_vec(), Verdict::Same),
        ("length cut short", &get, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(), Verdict::Same),
        ("chunked", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, extensions and trailers", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n5;a=b\r\nhello\r\n6 ; c\r\n world\r\n0\r\nx-t: 1\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, upper-case hex and leading zeros", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n000A\r\n0123456789\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("gzip, chunked", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, bad size", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, data longer than its size", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, size overflows", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, bare LF after size", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".to_vec(), Verdict::Same),
        ("chunked, cut short", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(), Verdict::Same),
        ("chunked, 20 KiB extension", &get, huge_ext.into_bytes(), Verdict::Same),
        ("chunked + length", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(), Verdict::RefusedAmbiguous),
        ("close-delimited", &get, b"HTTP/1.1 200 OK\r\nserver: legacy\r\n\r\nuntil the end".to_vec(), Verdict::Same),
        ("gzip only: close-delimited", &get, b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw bytes".to_vec(), Verdict::Same),
        ("HTTP/1.0", &get, b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), Verdict::Same),
        ("HTTP/1.0 close-delimited", &get, b"HTTP/1.0 200 OK\r\n\r\nold".to_vec(), Verdict::Same),
        ("100 then 200", &get, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(), Verdict::Same),
        ("103 then 201", &get, b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx".to_vec(), Verdict::Same),
        ("204 with a length", &get, b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n".to_vec(), Verdict::Same),
        ("304 with a length", &get, b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\netag: \"x\"\r\n\r\n".to_vec(), Verdict::Same),
        ("HEAD with a length", &head, b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n".to_vec(), Verdict::Same),
        ("HEAD chunked", &head, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(), Verdict::Same),
        ("no reason phrase", &get, b"HTTP/1.1 418 \r\ncontent-length: 0\r\n\r\n".to_vec(), Verdict::Same),
        ("status 099", &get, b"HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n".to_vec(), Verdict::Same),
        ("not HTTP", &get, b"ICY 200 OK\r\n\r\n".to_vec(), Verdict::Same),
        ("obs-fold in the answer", &get, b"HTTP/1.1 200 OK\r\nx-a: 1\r\n 2\r\ncontent-length: 2\r\n\r\nok".to_vec(), Verdict::Same),
    ];
    let mut failures = Vec::new();
    for (name, method, raw, verdict) in &cases {
        let direct = hyper_client(method, raw).await;
        let lane = match lane_answer(**method == Method::HEAD, raw) {
            Ok(written) => hyper_client(method, &written).await,
            Err(why) => Err(format!("refused by the lane: {why}")),
        };
        let ok = match verdict {
            Verdict::Same => match (&direct, &lane) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => true,
                _ => false,
            },
            Verdict::RefusedAmbiguous => direct.is_ok() && lane.is_err(),
        };
        if !ok {
            failures.push(format!("{name}: hyper {direct:?}, lane {lane:?}"));
        }
        println!("{name}: hyper {direct:?} / lane {lane:?}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The trailer cases decide something: 100 fields taken, 101 refused (by both: above).
    assert!(hyper_client(&get, &trailers(100)).await.is_ok());
    assert!(hyper_client(&get, &trailers(101)).await.is_err());
}
