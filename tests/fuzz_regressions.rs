//! Replays the fuzz targets' committed inputs (`fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/`) through the same invariants the fuzzer checks, so every
//! `cargo test` (and CI) runs them without cargo-fuzz. A crashing input found by fuzzing goes
//! into `fuzz/regressions/<target>/` with the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} breaks the invariant", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "no committed inputs for {target}");
}

#[test]
fn canonicalize_inputs() {
    replay("canonicalize", checks::canonicalize);
}

#[test]
fn route_match_inputs() {
    replay("route_match", checks::route_match);
}

#[test]
fn jwt_inputs() {
    replay("jwt", checks::jwt);
}

#[test]
fn bulk_filter_inputs() {
    replay("bulk_filter", checks::bulk_filter);
}

#[test]
fn h1_request_inputs() {
    replay("h1_request", checks::h1_request);
}

#[test]
fn h1_request_body_inputs() {
    replay("h1_request_body", checks::h1_request_body);
}

#[test]
fn h1_answer_inputs() {
    replay("h1_answer", checks::h1_answer);
}

/// A short bounded mutation run of each target, in every `cargo test` (CI included): the
/// committed inputs mutated (byte flips, inserts, deletes, repeats, splices between inputs and
/// tokens that matter to the parsers) and run through the same invariant. It needs no
/// cargo-fuzz; the coverage-guided runs are in `fuzz/README.md`. Deterministic by default;
/// `PERMGATE_FUZZ_SEED` and `PERMGATE_FUZZ_ITERS` (per target, default 3,000) vary it. A
/// failure prints the seed, the iteration and the input in hex: commit that input under
/// `fuzz/regressions/<target>/` with the fix.
fn mutate_run(target: &str, check: fn(&[u8])) {
    const TOKENS: &[&[u8]] = &[
        b"..",
        b"%2e",
        b"%2E%2e",
        b"%2f",
        b"%5c",
        b"%00",
        b"%25",
        b"/",
        b"\\",
        b";",
        b"?",
        b"#",
        b"\"",
        b"\\u0000",
        b"\\\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"1e999",
        b"-0",
        b"\xef\xbb\xbf",
        b"\xc0\xae",
        b"\xff",
        b"null",
        b"true",
        b"{\"a\":1,\"a\":2}",
        b"eyJhbGciOiJub25lIn0",
        b".",
    ];
    // The HTTP/1 targets' own tokens (the others' runs stay as they were).
    const H1_TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b"#",
        b"\x00",
        b"\xff",
        b"content-length: 0\r\n",
        b"Content-Length: 12\r\n",
        b"transfer-encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"connection: close\r\n",
        b"Connection: keep-alive, x-a\r\n",
        b"expect: 100-continue\r\n",
        b"upgrade: h2c\r\n",
        b"HTTP/1.1 ",
        b"HTTP/1.0 ",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b" 204 ",
        b" 304 ",
        b"0\r\n\r\n",
        b"ffffffff",
        b";ext=\"x\"",
        b"x-trailer: 1\r\n",
    ];
    let tokens = if target.starts_with("h1_") {
        H1_TOKENS
    } else {
        TOKENS
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for dir in ["seeds", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            inputs.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
        }
    }
    assert!(!inputs.is_empty(), "no committed inputs for {target}");
    let seed: u64 = std::env::var("PERMGATE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7065_726d_6761_7465);
    let iters: usize = std::env::var("PERMGATE_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000);
    let mut rng = fastrand::Rng::with_seed(seed ^ target.len() as u64);
    let mut failure = None;
    for i in 0..iters {
        let mut data = inputs[rng.usize(..inputs.len())].clone();
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(..=data.len());
            match rng.u8(..6) {
                0 if !data.is_empty() => {
                    let k = rng.usize(..data.len());
                    data[k] ^= 1 << rng.u8(..8);
                }
                1 => data.insert(at, rng.u8(..)),
                2 if at < data.len() => {
                    let end = (at + rng.usize(1..=8)).min(data.len());
                    data.drain(at..end);
                }
                3 if at < data.len() => {
                    let end = (at + rng.usize(1..=16)).min(data.len());
                    let span = data[at..end].to_vec();
                    data.splice(
                        at..at,
                        span.iter()
                            .copied()
                            .cycle()
                            .take(span.len() * rng.usize(1..=4)),
                    );
                }
                4 => {
                    let other = &inputs[rng.usize(..inputs.len())];
                    let from = rng.usize(..=other.len());
                    data.splice(
                        at..at,
                        other[from..].iter().copied().take(rng.usize(1..=32)),
                    );
                }
                _ => {
                    let t = tokens[rng.usize(..tokens.len())];
                    data.splice(at..at, t.iter().copied());
                }
            }
        }
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failure = Some((i, data));
            break;
        }
    }
    if let Some((i, data)) = failure {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        panic!("{target}: iteration {i} (seed {seed}) breaks the invariant; input (hex): {hex}");
    }
}

#[test]
fn canonicalize_mutations() {
    mutate_run("canonicalize", checks::canonicalize);
}

#[test]
fn route_match_mutations() {
    mutate_run("route_match", checks::route_match);
}

#[test]
fn jwt_mutations() {
    mutate_run("jwt", checks::jwt);
}

#[test]
fn bulk_filter_mutations() {
    mutate_run("bulk_filter", checks::bulk_filter);
}

#[test]
fn h1_request_mutations() {
    mutate_run("h1_request", checks::h1_request);
}

#[test]
fn h1_request_body_mutations() {
    mutate_run("h1_request_body", checks::h1_request_body);
}

#[test]
fn h1_answer_mutations() {
    mutate_run("h1_answer", checks::h1_answer);
}

/// The trailer-field caps on the committed inputs (`fuzz/regressions/`): hyper's server takes
/// 257 fields after a chunked request body, its client 100 after a chunked answer; the last
/// field allowed is taken, one more refused, by the lane's readers and the reference decoder
/// alike.
#[test]
fn trailer_caps_on_the_committed_inputs() {
    use permgate::plane::h1::{self, BodyReader, Chunks, Parsed};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let taken_by_reference = |data: &[u8], max: usize| {
        matches!(
            checks::reference_dechunk(data, max),
            checks::Dechunked::Done(..)
        )
    };
    for (file, taken) in [
        ("h1_request_body/trailers-257-taken", true),
        ("h1_request_body/trailers-258-refused", false),
    ] {
        let data = std::fs::read(root.join(file)).unwrap();
        let raw = &data[1..];
        let Parsed::Ready(head) = h1::parse_head(raw) else {
            panic!("{file}: not a head the lane serves")
        };
        let body = &raw[head.len..];
        let mut reader = BodyReader::new(head.body).unwrap();
        let verdict = reader.feed(body, &mut Vec::new());
        assert_eq!(verdict.is_ok_and(|f| f.done), taken, "{file}: {verdict:?}");
        assert_eq!(verdict.is_err(), !taken, "{file}");
        assert_eq!(
            taken_by_reference(body, h1::MAX_REQUEST_TRAILERS),
            taken,
            "{file}"
        );
    }
    for (file, taken) in [
        ("h1_answer/trailers-100-taken", true),
        ("h1_answer/trailers-101-refused", false),
    ] {
        let data = std::fs::read(root.join(file)).unwrap();
        let body = &data[1..];
        let verdict = Chunks::default().feed(body, &mut Vec::new());
        assert_eq!(
            verdict,
            if taken {
                Ok(Some(body.len()))
            } else {
                Err("too many trailer fields")
            },
            "{file}"
        );
        assert_eq!(
            taken_by_reference(body, h1::MAX_ANSWER_TRAILERS),
            taken,
            "{file}"
        );
    }
}
