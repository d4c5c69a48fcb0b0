#![no_main]
//! Fuzz target: see `permgate_fuzz::route_match` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::route_match(data));
