#![no_main]
//! Fuzz target: see `permgate_fuzz::jwt` for the invariant.
libfuzzer_sys::fuzz_target!(|data: &[u8]| permgate_fuzz::jwt(data));
