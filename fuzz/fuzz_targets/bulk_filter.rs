#![no_main]
//! Fuzz target: see `permgate_fuzz::bulk_filter` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::bulk_filter(data));
