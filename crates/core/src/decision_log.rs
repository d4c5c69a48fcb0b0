//! `[decision_log]` settings as compiled from the config: where decision lines go, how many
//! wait, which allows are sampled, which fields are masked. The writer (a background thread)
//! is the server's (`permgate::decision_log`).

use std::path::PathBuf;

/// Where decision lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
    Off,
}

/// `[decision_log]` compiled.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    /// Records waiting to be written before new ones are dropped.
    pub capacity: usize,
    /// Fraction of allows written (0.0–1.0); denials are always written.
    pub sample_allows: f64,
    /// Fields replaced by `"***"`: any of `user`, `path`, `roles`, `trimmed`.
    pub mask: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target: Target::Stdout,
            capacity: 65_536,
            sample_allows: 1.0,
            mask: Vec::new(),
        }
    }
}
