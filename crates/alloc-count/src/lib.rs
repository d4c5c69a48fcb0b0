//! Nothing: this crate exists for its test, `tests/allocations.rs`, which counts the heap
//! allocations of one decision with a counting global allocator (an `unsafe impl GlobalAlloc`).
//! It is a crate of its own so that every other crate of the workspace inherits
//! `unsafe_code = "forbid"`, which no file can allow back (see this crate's Cargo.toml).
#![forbid(unsafe_code)]
