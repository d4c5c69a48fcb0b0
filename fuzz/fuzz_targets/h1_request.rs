#![no_main]
//! Fuzz target: see `permgate_fuzz::h1_request` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::h1_request(data));
