//! Located errors: every problem found in a config, catalogue or snapshot file names the file,
//! the line and the field. Every module that reads one of those files reports through here
//! (none of them needs the config module for it).

use std::fmt;

/// A located problem in a config, catalogue or snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(file: &str, line: Option<usize>, field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A TOML parse or type error, located by its span.
    pub fn from_toml(file: &str, text: &str, e: &toml::de::Error) -> Self {
        ConfigError {
            file: file.to_string(),
            line: e.span().map(|s| line_of(text, s.start)),
            field: String::new(),
            message: e.message().trim().to_string(),
        }
    }
}

/// The line where a dotted field (`upstream.pool_size`, `upstream.tls.sni`) is set in TOML text:
/// the `key =` line inside its table, else the table's header, else `None` (not in the file: a
/// default). Used for errors found after parsing, where serde spans are not at hand.
pub fn locate(text: &str, field: &str) -> Option<usize> {
    let (table, key) = field.rsplit_once('.')?;
    let mut current = String::new();
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if current == table {
                header = Some(i + 1);
            }
            continue;
        }
        if current == table {
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    header
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
