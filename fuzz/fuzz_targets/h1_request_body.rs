#![no_main]
//! Fuzz target: see `permgate_fuzz::h1_request_body` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::h1_request_body(data));
