//! Replays the fuzz targets' committed inputs (`fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/`) through the same invariants the fuzzer checks, so every
//! `cargo test` (and CI) runs them without cargo-fuzz. A crashing input found by fuzzing goes
//! into `fuzz/regressions/<target>/` with the fix.

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
