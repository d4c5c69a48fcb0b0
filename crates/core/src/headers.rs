//! The names of the headers permgate itself sets, shared by the decision (which strips client
//! copies) and the data planes (which write them); the names config may not use; a set of names
//! looked up without hashing.

use http::HeaderName;

/// Prefix of every header permgate sets; client copies of any of them are removed.
pub const OWN_HEADER_PREFIX: &str = "x-permgate-";

/// Response headers of a trimmed bulk call: how many items were removed, and which.
pub const REMOVED_COUNT: &str = "x-permgate-removed-count";
pub const REMOVED_IDS: &str = "x-permgate-removed-ids";
/// Sent to the CRM beside the user header when the caller is a service principal (value
/// `service`); never sent for a person. Client copies are removed like every `x-permgate-*`.
pub const PRINCIPAL_HEADER: &str = "x-permgate-principal";

/// Most removed ids listed in the header (the count is exact).
pub const MAX_REMOVED_LISTED: usize = 200;

/// Header names that config may never use for permgate's own headers or credentials: the
/// framing, routing and hop-by-hop headers, and `Authorization` (only the JWT lives there).
pub(crate) const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "content-type",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "cookie",
];

/// Header names looked up without hashing: by length, then byte for byte among the few of
/// that length (built once, at load).
#[derive(Debug, Clone, Default)]
pub struct HeaderSet {
    by_len: Vec<Vec<HeaderName>>,
}

impl HeaderSet {
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut set = HeaderSet::default();
        for n in names {
            set.insert(n);
        }
        set
    }

    fn insert(&mut self, name: HeaderName) {
        let len = name.as_str().len();
        if self.by_len.len() <= len {
            self.by_len.resize_with(len + 1, Vec::new);
        }
        if !self.by_len[len].contains(&name) {
            self.by_len[len].push(name);
        }
    }

    /// Is `name` (lowercase, as `http` stores names) in the set?
    pub fn contains(&self, name: &str) -> bool {
        self.by_len
            .get(name.len())
            .is_some_and(|names| names.iter().any(|n| n.as_str() == name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &HeaderName> {
        self.by_len.iter().flatten()
    }
}
