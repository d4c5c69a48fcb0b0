#![no_main]
//! Fuzz target: see `permgate_fuzz::canonicalize` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::canonicalize(data));
