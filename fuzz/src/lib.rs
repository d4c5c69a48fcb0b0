//! The fuzz targets' invariants (one function per target, in `checks`).
#[path = "checks.rs"]
mod checks;
pub use checks::*;
