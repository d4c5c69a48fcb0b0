//! Request canonicalization: the one canonical path the gateway decides on, matches routes
//! against, and forwards upstream — plus the request-header hygiene rules.
//!
//! Why one file (~930 lines without its tests): it is written as a spec, rule by rule, and read as
//! one; every rule is a small pure function.
//!
//! Principle: *nothing unchecked reaches the CRM; ambiguous input is rejected with a clear 4xx,
//! never guessed.* Everything here is a pure function over bytes and [`http`] types.
//!
//! # Request target
//!
//! [`canonicalize_target`] takes the raw request-target (bytes exactly as on the request line,
//! fragment already dropped). It must be in origin-form (`/path[?query]`) and at most
//! [`MAX_TARGET_LEN`] bytes. It is split at the first `?` into path and query.
//!
//! ## Path rules, in the order they apply
//!
//! (In the tables, `\xNN` stands for the raw byte 0xNN.)
//!
//! 1. **Raw bytes.** Allowed: unreserved characters (`A-Z a-z 0-9 - . _ ~`), the sub-delimiters
//!    `! $ & ' ( ) * + , =`, and `:` `@` `/` `%`. Everything else is rejected.
//! 2. **Percent-encoding.** `%` must be followed by two hex digits. Escapes of unreserved
//!    characters are decoded; escapes that would change the path's structure or smuggle control
//!    bytes are rejected; every other escape stays encoded with its hex digits uppercased.
//! 3. **Duplicate slashes** are merged (before dot-segment removal).
//! 4. **Dot segments** (`.` and `..`, including ones spelled `%2e`) are removed exactly as in
//!    RFC 3986 §5.2.4; `..` never climbs above the root.
//! 5. **A trailing slash** is preserved; the route matcher decides what it means.
//!
//! | Input                        | Result                                   | Rule |
//! |------------------------------|------------------------------------------|------|
//! | `/api/contacts/42`           | `/api/contacts/42` (unchanged)           | —    |
//! | `*`, `http://h/x`, `h:80`, empty | error `not_origin_form`             | form |
//! | longer than 8192 bytes       | error `target_too_long` (414)            | form |
//! | `/a\x00b`, `/a\x09b`, `/a\x7fb` | error `control_character`             | 1    |
//! | `/caf\xc3\xa9`               | error `non_ascii`                        | 1    |
//! | `/a\b` (a raw backslash)     | error `backslash`                        | 1    |
//! | `/admin;x=y/users`           | error `path_parameter`                   | 1    |
//! | `/a b`, `/a"b`, `/a<b`, `/a>b`, ``/a`b``, `/a{b`, `/a\|b`, `/a}b`, `/a^b`, `/a#b`, `/a[b`, `/a]b` | error `invalid_character` | 1 |
//! | `/a%`, `/a%4`, `/a%zz`       | error `bad_percent_encoding`             | 2    |
//! | `/%61dmin`                   | `/admin`                                 | 2    |
//! | `/a%7e%2D%5f`                | `/a~-_`                                  | 2    |
//! | `/a%2fb`, `/a%2Fb`           | error `encoded_slash`                    | 2    |
//! | `/a%5cb`                     | error `encoded_backslash`                | 2    |
//! | `/a%3bb`                     | error `encoded_path_parameter`           | 2    |
//! | `/a%00b`, `/a%0a`, `/a%7f`   | error `encoded_control`                  | 2    |
//! | `/a%252F`, `/a%2541`, `/a%25%32%66` | error `double_encoding`           | 2    |
//! | `/a%c0%ae`, `/a%e0%80%ae`    | error `overlong_utf8`                    | 2    |
//! | `/a%3f%20b`                  | `/a%3F%20b`                              | 2    |
//! | `/caf%c3%a9`                 | `/caf%C3%A9`                             | 2    |
//! | `/100%25`, `/a%25x`          | unchanged (a lone `%25` stays encoded)   | 2    |
//! | `//a///b//`                  | `/a/b/`                                  | 3    |
//! | `/a//../b`                   | `/b` (slashes merge first)               | 3, 4 |
//! | `/a/b/c/./../../g`           | `/a/g`                                   | 4    |
//! | `/mid/content=5/../6`        | `/mid/6`                                 | 4    |
//! | `/a/./b`                     | `/a/b`                                   | 4    |
//! | `/../a`, `/./../a`           | `/a`                                     | 4    |
//! | `/a/b/..`, `/a/b/../`        | `/a/`                                    | 4, 5 |
//! | `/a/..`                      | `/` (RFC 3986: the parent of `/a` is `/`) | 4   |
//! | `/a/.`, `/a/./`              | `/a/`                                    | 4, 5 |
//! | `/a/%2e%2e/b`, `/a/.%2E/b`   | `/b` (decoded before dot removal)        | 2, 4 |
//! | `/a/..b/.c/d.`               | unchanged (not dot segments)             | 4    |
//! | `/a/b/`                      | `/a/b/`                                  | 5    |
//!
//! ## Query rules
//!
//! The query gets the same raw-byte checks as the path, except that `;` `/` `?` and (as
//! commonly sent, e.g. `filter[name]=x`) `[` `]` are allowed. `%` must be followed by two hex
//! digits. Otherwise the query is kept byte for byte: no decoding, no case change, no reordering.
//!
//! | Input                 | Result                                  |
//! |-----------------------|-----------------------------------------|
//! | `/a?`                 | path `/a`, no query                     |
//! | `/a?x=1&y=%2f;z`      | path `/a`, query `x=1&y=%2f;z`          |
//! | `/a?q=a/./b?c`        | path `/a`, query `q=a/./b?c`            |
//! | `/a?f[n]=1`           | path `/a`, query `f[n]=1`               |
//! | `/a?x=%`, `/a?x=%g1`  | error `bad_percent_encoding`            |
//! | `/a?x=a b`, `/a?x=<`  | error `invalid_character`               |
//! | `/a?x=\`              | error `backslash`                       |
//!
//! When a target breaks several rules, the error is that of the leftmost offending byte (the
//! path is checked before the query). Every `Ok` result is a fixed point: canonicalizing its
//! [`CanonicalTarget::path_and_query`] returns it unchanged.
//!
//! Escaped non-ASCII bytes are not otherwise validated (`%E9` alone, Latin-1 style, stays
//! `%E9`); only overlong UTF-8 forms — the classic disguise for `.` and `/` — are rejected.
//!
//! # Headers
//!
//! [`check_headers`] rejects:
//!
//! | Condition                                                                 | Error                   |
//! |---------------------------------------------------------------------------|-------------------------|
//! | `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override` present  | `method_override`       |
//! | more than one `Host`, `Authorization` or `Content-Type`                   | `duplicate_header`      |
//! | both `Content-Length` and `Transfer-Encoding`                             | `ambiguous_framing`     |
//! | more than one `Content-Length`, or one that is not plain digits fitting a `u64` | `ambiguous_framing` |
//! | `Transfer-Encoding` other than a single header exactly `chunked` (lowercase) | `ambiguous_framing`  |
//! | `Connection` listing `host`, `content-length`, `transfer-encoding` or `authorization` | `bad_connection_header` |
//! | a method-override name spelled with `_`, `.` or other punctuation (`X_HTTP_Method_Override`) | `method_override`       |
//! | a framing, credential or hop-by-hop name so spelled (`Content_Length`)    | `disguised_header`      |
//!
//! and, in the decision ([`crate::policy`]), an HTTP/1.1 request without `Host`
//! (`missing_host`) and a `Host` or HTTP/2 `:authority` that is not a bare `host[:port]`
//! ([`check_host`]: `invalid_host`).
//!
//! [`hop_by_hop_headers`] lists what a proxy must not forward: `connection`, `keep-alive`,
//! `proxy-connection`, `te`, `trailer`, `upgrade`, `proxy-authorization`, `proxy-authenticate`,
//! plus every valid name listed in `Connection` — except the four protected names above, which
//! it never returns.

use std::fmt;

use http::header::{self, HeaderMap, HeaderName};

/// The longest request-target accepted, in bytes; longer ones get a 414.
pub const MAX_TARGET_LEN: usize = 8192;

/// A request target in canonical form: what routes are matched against and what is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    /// The canonical path; always starts with `/`.
    pub path: String,
    /// The query without its `?`, byte for byte as received; `None` if absent or empty.
    pub query: Option<String>,
}

impl CanonicalTarget {
    /// path + ("?" + query if any) — what is forwarded upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            None => self.path.clone(),
            Some(query) => {
                let mut out = String::with_capacity(self.path.len() + 1 + query.len());
                out.push_str(&self.path);
                out.push('?');
                out.push_str(query);
                out
            }
        }
    }
}

/// Why a request was rejected before reaching the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonError {
    /// The target is not in origin-form (`*`, absolute-form, authority-form or empty).
    NotOriginForm,
    /// The target is longer than [`MAX_TARGET_LEN`].
    TooLong,
    /// A raw control byte (0x00–0x1F, 0x7F).
    ControlCharacter,
    /// A raw byte ≥ 0x80.
    NonAscii,
    /// A raw `\`.
    Backslash,
    /// A raw `;` in the path.
    PathParameter,
    /// Another character not allowed raw (space, `"`, `#`, `<`, `>`, `` ` ``, `{`, `|`, `}`, `^`,
    /// and `[`, `]` in the path).
    InvalidCharacter,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// `%2F`.
    EncodedSlash,
    /// `%5C`.
    EncodedBackslash,
    /// `%3B`.
    EncodedPathParameter,
    /// `%00`–`%1F` or `%7F`.
    EncodedControl,
    /// `%25` followed by two hex digits (such as `%252F`).
    DoubleEncoding,
    /// An overlong UTF-8 sequence in escapes (such as `%C0%AE`, a disguised `.`).
    OverlongUtf8,
    /// A method override header is present.
    MethodOverride,
    /// More than one `Host`, `Authorization` or `Content-Type` header.
    DuplicateHeader,
    /// Conflicting or malformed `Content-Length` / `Transfer-Encoding`.
    AmbiguousFraming,
    /// `Connection` lists a header the proxy must never strip.
    BadConnectionHeader,
    /// A header name spelled with `_`, `.` or other punctuation that a backend reading those as `-` would take for
    /// a framing or credential header (`Content_Length`, `Transfer.Encoding`).
    DisguisedHeader,
    /// More request headers, or more header bytes, than `listen.max_headers` /
    /// `listen.max_header_bytes`.
    HeadersTooLarge,
    /// An HTTP/1.1 request without `Host`.
    MissingHost,
    /// A `Host` (or HTTP/2 `:authority`) that is not a bare `host[:port]`: userinfo, a path,
    /// a query, empty, or other bytes; or an `:authority` and a `Host` that differ.
    InvalidHost,
}

impl CanonError {
    /// Every variant, for documentation and exhaustive tests.
    pub const ALL: [CanonError; 22] = [
        CanonError::NotOriginForm,
        CanonError::TooLong,
        CanonError::ControlCharacter,
        CanonError::NonAscii,
        CanonError::Backslash,
        CanonError::PathParameter,
        CanonError::InvalidCharacter,
        CanonError::BadPercentEncoding,
        CanonError::EncodedSlash,
        CanonError::EncodedBackslash,
        CanonError::EncodedPathParameter,
        CanonError::EncodedControl,
        CanonError::DoubleEncoding,
        CanonError::OverlongUtf8,
        CanonError::MethodOverride,
        CanonError::DuplicateHeader,
        CanonError::AmbiguousFraming,
        CanonError::BadConnectionHeader,
        CanonError::DisguisedHeader,
        CanonError::HeadersTooLarge,
        CanonError::MissingHost,
        CanonError::InvalidHost,
    ];

    /// Stable snake_case error code for the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            CanonError::NotOriginForm => "not_origin_form",
            CanonError::TooLong => "target_too_long",
            CanonError::ControlCharacter => "control_character",
            CanonError::NonAscii => "non_ascii",
            CanonError::Backslash => "backslash",
            CanonError::PathParameter => "path_parameter",
            CanonError::InvalidCharacter => "invalid_character",
            CanonError::BadPercentEncoding => "bad_percent_encoding",
            CanonError::EncodedSlash => "encoded_slash",
            CanonError::EncodedBackslash => "encoded_backslash",
            CanonError::EncodedPathParameter => "encoded_path_parameter",
            CanonError::EncodedControl => "encoded_control",
            CanonError::DoubleEncoding => "double_encoding",
            CanonError::OverlongUtf8 => "overlong_utf8",
            CanonError::MethodOverride => "method_override",
            CanonError::DuplicateHeader => "duplicate_header",
            CanonError::AmbiguousFraming => "ambiguous_framing",
            CanonError::BadConnectionHeader => "bad_connection_header",
            CanonError::DisguisedHeader => "disguised_header",
            CanonError::HeadersTooLarge => "headers_too_large",
            CanonError::MissingHost => "missing_host",
            CanonError::InvalidHost => "invalid_host",
        }
    }

    /// One human sentence for the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            CanonError::NotOriginForm => "The request target must be a path starting with '/'.",
            CanonError::TooLong => "The request target is longer than 8192 bytes.",
            CanonError::ControlCharacter => "The request target contains a control character.",
            CanonError::NonAscii => {
                "The request target contains a non-ASCII byte; percent-encode it."
            }
            CanonError::Backslash => "The request target contains a backslash.",
            CanonError::PathParameter => "The path contains ';' (path parameters are not allowed).",
            CanonError::InvalidCharacter => {
                "The request target contains a character that must be percent-encoded."
            }
            CanonError::BadPercentEncoding => {
                "The request target contains a '%' not followed by two hex digits."
            }
            CanonError::EncodedSlash => "The path contains an encoded slash (%2F).",
            CanonError::EncodedBackslash => "The path contains an encoded backslash (%5C).",
            CanonError::EncodedPathParameter => "The path contains an encoded ';' (%3B).",
            CanonError::EncodedControl => "The path contains an encoded control character.",
            CanonError::DoubleEncoding => "The path contains a double percent-encoding (%25XX).",
            CanonError::OverlongUtf8 => "The path contains an overlong UTF-8 encoding.",
            CanonError::MethodOverride => "Method override headers are not allowed.",
            CanonError::DuplicateHeader => {
                "The request has more than one Host, Authorization or Content-Type header."
            }
            CanonError::AmbiguousFraming => {
                "The request's Content-Length / Transfer-Encoding headers are ambiguous."
            }
            CanonError::BadConnectionHeader => {
                "The Connection header lists a header that cannot be hop-by-hop."
            }
            CanonError::DisguisedHeader => {
                "A header name spells a framing or credential header with '_', '.' or the like."
            }
            CanonError::HeadersTooLarge => "The request has too many or too large headers.",
            CanonError::MissingHost => "An HTTP/1.1 request needs a Host header.",
            CanonError::InvalidHost => {
                "The Host (or :authority) must be a host name or IP address with an optional port."
            }
        }
    }

    /// HTTP status for this error: 414 for [`CanonError::TooLong`], 431 for
    /// [`CanonError::HeadersTooLarge`], 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            CanonError::TooLong => 414,
            CanonError::HeadersTooLarge => 431,
            _ => 400,
        }
    }
}

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for CanonError {}

/// Canonicalize a raw request-target (bytes exactly as on the request line, fragment already
/// dropped). See the [module documentation](self) for the rules.
pub fn canonicalize_target(raw: &[u8]) -> Result<CanonicalTarget, CanonError> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(CanonError::TooLong);
    }
    if raw.first() != Some(&b'/') {
        return Err(CanonError::NotOriginForm);
    }
    let PathScan {
        len: path_len,
        needs_rewrite,
    } = scan_path(raw)?;
    let (path, query) = raw.split_at(path_len);
    // `query` is empty or starts with the `?` that ended the path.
    let query = query.get(1..);
    if let Some(query) = query {
        scan_query(query)?;
    }
    // Both scans reject every byte >= 0x80, so this cannot fail; it is the (cheap) safe way
    // to turn the validated bytes into `str`s.
    let path = std::str::from_utf8(path).map_err(|_| CanonError::NonAscii)?;
    let query = query
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|_| CanonError::NonAscii)?;
    let path = if needs_rewrite {
        rewrite_path(path)?
    } else {
        path.to_owned()
    };
    Ok(CanonicalTarget {
        path,
        query: query.filter(|q| !q.is_empty()).map(str::to_owned),
    })
}

/// Split a canonical path into its segments (without the leading '/'); "/" → no segments;
/// "/a/b/" → ["a","b",""] (a trailing empty segment marks a trailing slash).
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    (!rest.is_empty())
        .then(|| rest.split('/'))
        .into_iter()
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Byte classes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Allowed raw anywhere: unreserved, sub-delims except `;`, `:` and `@`.
    Plain,
    Slash,
    Percent,
    /// `;`: a path parameter in the path, fine in the query.
    Semicolon,
    /// `?`, `[`, `]`: invalid in the path, fine in the query.
    QueryOnly,
    Control,
    NonAscii,
    Backslash,
    /// Never allowed raw: space `"` `#` `<` `>` `^` `` ` `` `{` `|` `}`.
    Invalid,
}

const fn class_of(b: u8) -> Class {
    match b {
        0x00..=0x1F | 0x7F => Class::Control,
        0x80..=0xFF => Class::NonAscii,
        b'/' => Class::Slash,
        b'%' => Class::Percent,
        b'\\' => Class::Backslash,
        b';' => Class::Semicolon,
        b'?' | b'[' | b']' => Class::QueryOnly,
        b'A'..=b'Z'
        | b'a'..=b'z'
        | b'0'..=b'9'
        | b'-'
        | b'.'
        | b'_'
        | b'~'
        | b'!'
        | b'$'
        | b'&'
        | b'\''
        | b'('
        | b')'
        | b'*'
        | b'+'
        | b','
        | b'='
        | b':'
        | b'@' => Class::Plain,
        _ => Class::Invalid,
    }
}

static CLASSES: [Class; 256] = {
    let mut table = [Class::Invalid; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = class_of(i as u8);
        i += 1;
    }
    table
};

fn class(b: u8) -> Class {
    CLASSES[usize::from(b)]
}

/// The error for a byte that is never allowed raw, or `None` if the class may be allowed.
fn raw_byte_error(class: Class) -> Option<CanonError> {
    match class {
        Class::Control => Some(CanonError::ControlCharacter),
        Class::NonAscii => Some(CanonError::NonAscii),
        Class::Backslash => Some(CanonError::Backslash),
        Class::Invalid => Some(CanonError::InvalidCharacter),
        Class::Plain | Class::Slash | Class::Percent | Class::Semicolon | Class::QueryOnly => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The byte encoded by the escape whose `%` is at `at`, if two hex digits follow it.
fn escape_value(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at + 1..at + 3)? {
        &[hi, lo] => Some((hex_value(hi)? << 4) | hex_value(lo)?),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Path

/// What to do with a well-formed escape in the path, or why it is rejected.
fn path_escape_decodes(value: u8) -> Result<bool, CanonError> {
    match value {
        b'/' => Err(CanonError::EncodedSlash),
        b'\\' => Err(CanonError::EncodedBackslash),
        b';' => Err(CanonError::EncodedPathParameter),
        0x00..=0x1F | 0x7F => Err(CanonError::EncodedControl),
        _ => Ok(is_unreserved(value)),
    }
}

/// Result of scanning the path part of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathScan {
    /// Length of the path: up to the first `?` or the end.
    len: usize,
    /// Whether the canonical path differs from the raw one. Exact: `false` iff
    /// `rewrite_path(path) == path`.
    needs_rewrite: bool,
}

/// Validates the path of `target` (which starts with `/`), stopping at the first `?`.
///
/// Look-aheads past an escape may run into the query, but they only ever accept hex digits and
/// `%`, so the `?` ends them just as the end of the path would.
fn scan_path(target: &[u8]) -> Result<PathScan, CanonError> {
    let mut needs_rewrite = false;
    let mut segment_start = 1;
    let mut i = 1;
    while let Some(&b) = target.get(i) {
        match class(b) {
            Class::Plain => i += 1,
            Class::Slash => {
                // An empty segment here is a duplicate slash.
                needs_rewrite |= matches!(&target[segment_start..i], b"" | b"." | b"..");
                i += 1;
                segment_start = i;
            }
            Class::Percent => {
                let value = escape_value(target, i).ok_or(CanonError::BadPercentEncoding)?;
                if path_escape_decodes(value)? {
                    needs_rewrite = true;
                } else {
                    check_escape_context(target, i, value)?;
                    needs_rewrite |= target[i + 1..i + 3].iter().any(u8::is_ascii_lowercase);
                }
                i += 3;
            }
            Class::QueryOnly if b == b'?' => break,
            Class::QueryOnly => return Err(CanonError::InvalidCharacter),
            Class::Semicolon => return Err(CanonError::PathParameter),
            other => return Err(raw_byte_error(other).unwrap_or(CanonError::InvalidCharacter)),
        }
    }
    // A trailing empty segment is a trailing slash, which stays.
    needs_rewrite |= matches!(&target[segment_start..i], b"." | b"..");
    Ok(PathScan {
        len: i,
        needs_rewrite,
    })
}

/// Rejections that depend on what follows a kept escape at `at` with the given value.
fn check_escape_context(path: &[u8], at: usize, value: u8) -> Result<(), CanonError> {
    let next = at + 3;
    match value {
        // `%25` followed by two hex digits once decoded (`%2541`, `%25%34%31`): whoever
        // decodes once more sees a different character than we matched on.
        b'%' => {
            let hex_unit = |at| match decoded_unit(path, at) {
                Some((b, next)) if b.is_ascii_hexdigit() => Some(next),
                _ => None,
            };
            if hex_unit(next).and_then(hex_unit).is_some() {
                return Err(CanonError::DoubleEncoding);
            }
        }
        // Overlong UTF-8 lead byte followed by a continuation byte in the overlong range.
        0xC0 | 0xC1 | 0xE0 | 0xF0 => {
            let overlong_max = match value {
                0xE0 => 0x9F,
                0xF0 => 0x8F,
                _ => 0xBF,
            };
            if path.get(next) == Some(&b'%')
                && escape_value(path, next).is_some_and(|c| (0x80..=overlong_max).contains(&c))
            {
                return Err(CanonError::OverlongUtf8);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The character at `at` as it will appear in the canonical path (an escape of an unreserved
/// character counts as that character; any other escape as `%`), and where the next one starts.
fn decoded_unit(path: &[u8], at: usize) -> Option<(u8, usize)> {
    match *path.get(at)? {
        b'%' => {
            let value = escape_value(path, at)?;
            Some((if is_unreserved(value) { value } else { b'%' }, at + 3))
        }
        b => Some((b, at + 1)),
    }
}

/// Builds the canonical form of a path that `scan_path` accepted: decodes, merges slashes and
/// removes dot segments in one pass, writing each segment once and popping it on `..`.
fn rewrite_path(path: &str) -> Result<String, CanonError> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path.strip_prefix('/').unwrap_or(path);
    loop {
        let (segment, tail) = match rest.split_once('/') {
            Some((segment, tail)) => (segment, Some(tail)),
            None => (rest, None),
        };
        let segment_start = out.len();
        out.push('/');
        push_decoded_segment(&mut out, segment)?;
        let removed = match &out[segment_start + 1..] {
            "" | "." => {
                out.truncate(segment_start);
                true
            }
            ".." => {
                out.truncate(segment_start);
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
                true
            }
            _ => false,
        };
        match tail {
            Some(tail) => rest = tail,
            None => {
                if removed {
                    // `/a/.`, `/a/b/..`, `/a/` all end in a directory: keep the trailing slash.
                    out.push('/');
                }
                return Ok(out);
            }
        }
    }
}

fn push_decoded_segment(out: &mut String, mut segment: &str) -> Result<(), CanonError> {
    const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
    while let Some(pct) = segment.find('%') {
        out.push_str(&segment[..pct]);
        let value = escape_value(segment.as_bytes(), pct).ok_or(CanonError::BadPercentEncoding)?;
        if path_escape_decodes(value)? {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(value >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(value & 0xF)]));
        }
        // The two bytes after `%` are ASCII hex digits, so `pct + 3` is a char boundary.
        segment = &segment[pct + 3..];
    }
    out.push_str(segment);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Query

fn scan_query(query: &[u8]) -> Result<(), CanonError> {
    let mut i = 0;
    while let Some(&b) = query.get(i) {
        match class(b) {
            Class::Plain | Class::Slash | Class::Semicolon | Class::QueryOnly => i += 1,
            Class::Percent => {
                escape_value(query, i).ok_or(CanonError::BadPercentEncoding)?;
                i += 3;
            }
            other => return Err(raw_byte_error(other).unwrap_or(CanonError::InvalidCharacter)),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Headers

const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Names a client must not disguise with `_`, `.` or other punctuation (CGI, PHP, and several Java and Python
/// servers read `Content_Length` as `Content-Length`): the framing and credential headers and
/// the hop-by-hop ones. Disguised identity headers are stripped instead (the glue asks
/// [`disguised_copies`]), since their names come from the config.
const UNDISGUISABLE: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "authorization",
    "proxy-authorization",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// Whether a header-name byte is punctuation other than `-` (`_`, `.`, `~`, `!`, …): CGI
/// (`HTTP_X_REMOTE_USER`) and servers built on it read every one of them as the same separator.
fn disguises(b: u8) -> bool {
    !(b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether header name `name` (lowercase, as `http` stores it) reads as `target` when `_`, `.`
/// and other punctuation are taken for `-`, while not being spelled `target` itself.
pub fn folds_to(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name != target
        && name.bytes().zip(target.bytes()).all(|(a, b)| {
            let a = if disguises(a) { b'-' } else { a };
            a == b
        })
}

/// Header names spelled with `_`, `.` or other punctuation whose `-` reading satisfies
/// `sensitive` (given the folded, lowercase name): copies of identity headers to strip before
/// forwarding.
pub fn disguised_copies(headers: &HeaderMap, sensitive: impl Fn(&str) -> bool) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        if n.bytes().any(disguises) {
            let folded: String = n
                .chars()
                .map(|c| {
                    if c.is_ascii() && disguises(c as u8) {
                        '-'
                    } else {
                        c
                    }
                })
                .collect();
            if sensitive(&folded) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Headers a client must not be able to make the proxy strip via `Connection`.
pub const PROTECTED_HEADERS: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::AUTHORIZATION,
];

/// The hop-by-hop headers every proxy drops (plus whatever `Connection` names).
pub const FIXED_HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// A `_method` query parameter (Rails, Laravel and others honour `?_method=DELETE`) is a method
/// override like the headers: refused. Matched case-insensitively, also percent-encoded.
pub fn check_query(query: &str) -> Result<(), CanonError> {
    for pair in query.split('&') {
        let name = pair.split('=').next().unwrap_or("");
        let decoded = name.replace("%5F", "_").replace("%5f", "_");
        if decoded.eq_ignore_ascii_case("_method") {
            return Err(CanonError::MethodOverride);
        }
    }
    Ok(())
}

/// Request header hygiene: see the [module documentation](self#headers).
pub fn check_headers(headers: &HeaderMap) -> Result<(), CanonError> {
    // One pass over the names present (a handful) rather than a lookup per listed name, each
    // of which parses and hashes the name first.
    if headers
        .keys()
        .any(|name| METHOD_OVERRIDE_HEADERS.contains(&name.as_str()))
    {
        return Err(CanonError::MethodOverride);
    }
    // A second Content-Type could make the CRM read a body permgate inspected as JSON as
    // something else (or the reverse).
    if more_than_one(headers, &header::HOST)
        || more_than_one(headers, &header::AUTHORIZATION)
        || more_than_one(headers, &header::CONTENT_TYPE)
    {
        return Err(CanonError::DuplicateHeader);
    }
    for name in headers.keys() {
        let n = name.as_str();
        if !n.bytes().any(disguises) {
            continue;
        }
        if METHOD_OVERRIDE_HEADERS.iter().any(|m| folds_to(n, m)) {
            return Err(CanonError::MethodOverride);
        }
        if UNDISGUISABLE.iter().any(|m| folds_to(n, m)) {
            return Err(CanonError::DisguisedHeader);
        }
    }

    let mut content_lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let content_length = content_lengths.next();
    if let Some(value) = content_length {
        let bytes = value.as_bytes();
        let is_number = !bytes.is_empty()
            && bytes.iter().all(u8::is_ascii_digit)
            && value.to_str().is_ok_and(|s| s.parse::<u64>().is_ok());
        if content_lengths.next().is_some() || !is_number {
            return Err(CanonError::AmbiguousFraming);
        }
    }
    let mut transfer_encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(value) = transfer_encodings.next() {
        if content_length.is_some()
            || transfer_encodings.next().is_some()
            || value.as_bytes() != b"chunked"
        {
            return Err(CanonError::AmbiguousFraming);
        }
    }

    let strips_protected = connection_tokens(headers).any(|token| {
        PROTECTED_HEADERS
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
    });
    if strips_protected {
        return Err(CanonError::BadConnectionHeader);
    }
    Ok(())
}

/// Is `value` a bare authority, `host[:port]` (RFC 9110 §7.2 without userinfo)? The host is a
/// name of letters, digits, `-`, `.` and `_`, an IPv4 address, or a bracketed IPv6 address;
/// the port 1 to 5 digits up to 65535. Anything else (userinfo `u@h`, a path, a query, a
/// fragment, spaces, a list, empty) is [`CanonError::InvalidHost`].
pub fn check_host(value: &[u8]) -> Result<(), CanonError> {
    const MAX_HOST: usize = 255;
    let (host, rest) = match value.first() {
        Some(b'[') => {
            let end = value
                .iter()
                .position(|&b| b == b']')
                .ok_or(CanonError::InvalidHost)?;
            let inner = &value[1..end];
            let ipv6 = !inner.is_empty()
                && inner
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
            if !ipv6 {
                return Err(CanonError::InvalidHost);
            }
            (&value[..=end], &value[end + 1..])
        }
        _ => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            let host = &value[..end];
            let name = host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if host.is_empty() || !name {
                return Err(CanonError::InvalidHost);
            }
            (host, &value[end..])
        }
    };
    let port_ok = match rest {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|p| p <= 65535)
        }
        _ => false,
    };
    if host.len() > MAX_HOST || !port_ok {
        return Err(CanonError::InvalidHost);
    }
    Ok(())
}

/// Methods whose requests carry no body (RFC 9110 gives a body on them no meaning, and many
/// legacy servers do not read one: they would take it for the next request).
pub fn bodiless(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

/// Does the head declare a body: a `Content-Length` over 0 or any `Transfer-Encoding`?
pub fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|b| *b != b'0'))
}

/// The `Content-Length` a request declares, if one parses (duplicates and garbage are refused
/// by [`check_headers`] before this matters).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// At most `max_count` headers and `max_bytes` of names and values (each header counted as
/// `name: value` plus its line end, as on the wire).
pub fn check_header_limits(
    headers: &HeaderMap,
    max_count: usize,
    max_bytes: usize,
) -> Result<(), CanonError> {
    if headers.len() > max_count {
        return Err(CanonError::HeadersTooLarge);
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if bytes > max_bytes {
        return Err(CanonError::HeadersTooLarge);
    }
    Ok(())
}

/// Is `name` one of [`FIXED_HOP_BY_HOP`]? The same answer as `FIXED_HOP_BY_HOP.contains(name)`
/// (names are lowercase), by one match on the spelling rather than eight `HeaderName`
/// compares: it runs for every header of every forwarded request and answer (issue 18).
pub fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
}

/// Names of headers a proxy must not forward: the fixed hop-by-hop list plus every name listed
/// in `Connection` (lowercased, deduplicated; invalid names ignored). Never includes `host`,
/// `content-length`, `transfer-encoding` or `authorization`.
pub fn hop_by_hop_headers(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = FIXED_HOP_BY_HOP.to_vec();
    for token in connection_tokens(headers) {
        let Ok(name) = HeaderName::from_bytes(token) else {
            continue;
        };
        if !PROTECTED_HEADERS.contains(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn more_than_one(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(name).iter().nth(1).is_some()
}

/// The non-empty, whitespace-trimmed, comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod query_override_tests {
    use super::*;

    #[test]
    fn method_override_in_the_query_is_refused() {
        for q in [
            "_method=DELETE",
            "a=1&_METHOD=put",
            "%5Fmethod=delete",
            "x&_method",
        ] {
            assert_eq!(check_query(q), Err(CanonError::MethodOverride), "{q}");
        }
        for q in ["method=DELETE", "a_method=1", "x=_method", ""] {
            assert_eq!(check_query(q), Ok(()), "{q}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_hop_by_hop_match_is_the_list() {
        for name in &FIXED_HOP_BY_HOP {
            assert!(is_fixed_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "transfer-encoding",
            "authorization",
            "x-connection",
            "connections",
            "t",
            "upgrade-insecure-requests",
            "proxy-authorization2",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_fixed_hop_by_hop(&name), "{name}");
            assert!(!FIXED_HOP_BY_HOP.contains(&name), "{name}");
        }
    }
    use http::HeaderValue;
    use proptest::prelude::*;

    fn canon(raw: &str) -> Result<String, CanonError> {
        canonicalize_target(raw.as_bytes()).map(|t| t.path_and_query())
    }

    /// Input → canonical `path_and_query`.
    const OK_CASES: &[(&str, &str)] = &[
        // Already canonical.
        ("/", "/"),
        ("/api/contacts/42", "/api/contacts/42"),
        ("/a/b/", "/a/b/"),
        ("/a-b_c~d.e/f!$&'()*+,=:@", "/a-b_c~d.e/f!$&'()*+,=:@"),
        ("/a/..b/.c/d./...", "/a/..b/.c/d./..."),
        ("/a/..b/.c/d.", "/a/..b/.c/d."),
        // Percent-encoding: unreserved decoded, the rest uppercased.
        ("/%61dmin", "/admin"),
        ("/%41%5a%61%7a%30%39", "/AZaz09"),
        ("/a%7e%2D%5f%2e", "/a~-_."),
        ("/a%3f%20b", "/a%3F%20b"),
        ("/a%3F%20b", "/a%3F%20b"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%23b%3d%26", "/a%23b%3D%26"),
        ("/a%ff%80", "/a%FF%80"),
        ("/100%25", "/100%25"),
        ("/a%25x", "/a%25x"),
        ("/a%25/b", "/a%25/b"),
        ("/a%254", "/a%254"),
        ("/a%25%25", "/a%25%25"),
        ("/a%25%3F", "/a%25%3F"),
        ("/a%c0", "/a%C0"),
        ("/a%c0/%ae", "/a%C0/%AE"),
        ("/a%c0%41", "/a%C0A"),
        ("/a%e0%a0%80", "/a%E0%A0%80"),
        ("/a%f0%90%80%80", "/a%F0%90%80%80"),
        // Duplicate slashes.
        ("//", "/"),
        ("//a///b//", "/a/b/"),
        ("/a//b", "/a/b"),
        ("/a//../b", "/b"),
        // Dot segments (RFC 3986 §5.2.4 and its examples).
        ("/a/b/c/./../../g", "/a/g"),
        ("/mid/content=5/../6", "/mid/6"),
        ("/a/./b", "/a/b"),
        ("/../a", "/a"),
        ("/./../a", "/a"),
        ("/a/b/..", "/a/"),
        ("/a/b/../", "/a/"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("/a/./", "/a/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/./", "/"),
        ("/../", "/"),
        ("/../../..", "/"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/.%2E/b", "/b"),
        ("/a/%2E./b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2e", "/a/"),
        ("/a/b/%2e%2e", "/a/"),
        ("/a/%2e%2e%2e/b", "/a/.../b"),
        ("/a/b/c/%2e%2e/%2E%2E/%2e%2e/%2e%2e/g", "/g"),
        // RFC 3986 §5.4.1 / §5.4.2, resolved against base path /b/c/d (the `d;p` of the RFC
        // base is a path parameter, which we reject; see ERR_CASES).
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/g", "/g"),
        ("/b/c/d?y", "/b/c/d?y"),
        ("/b/c/g?y", "/b/c/g?y"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../", "/"),
        ("/b/c/../../g", "/g"),
        ("/b/c/../../../g", "/g"),
        ("/b/c/../../../../g", "/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/g..", "/b/c/g.."),
        ("/b/c/..g", "/b/c/..g"),
        ("/b/c/./../g", "/b/g"),
        ("/b/c/./g/.", "/b/c/g/"),
        ("/b/c/g/./h", "/b/c/g/h"),
        ("/b/c/g/../h", "/b/c/h"),
        ("/b/c/g?y/./x", "/b/c/g?y/./x"),
        ("/b/c/g?y/../x", "/b/c/g?y/../x"),
        // Query: kept byte for byte; empty query dropped.
        ("/a?", "/a"),
        ("/?", "/"),
        ("/a/./b?", "/a/b"),
        ("/a?x=1&y=%2f;z", "/a?x=1&y=%2f;z"),
        ("/a?q=a/./b?c", "/a?q=a/./b?c"),
        ("/a?f[n]=1&g[]=2", "/a?f[n]=1&g[]=2"),
        ("/a?%61=%7e", "/a?%61=%7e"),
        ("/a??", "/a??"),
        ("/%2e%2e/a?../b", "/a?../b"),
    ];

    const ERR_CASES: &[(&str, CanonError)] = &[
        ("", CanonError::NotOriginForm),
        ("*", CanonError::NotOriginForm),
        ("http://h/x", CanonError::NotOriginForm),
        ("h:80", CanonError::NotOriginForm),
        ("a/b", CanonError::NotOriginForm),
        ("?a", CanonError::NotOriginForm),
        ("/a\0b", CanonError::ControlCharacter),
        ("/a\tb", CanonError::ControlCharacter),
        ("/a\r\nb", CanonError::ControlCharacter),
        ("/a\x7f", CanonError::ControlCharacter),
        ("/café", CanonError::NonAscii),
        ("/a\\b", CanonError::Backslash),
        ("/a\\..\\b", CanonError::Backslash),
        ("/admin;x=y/users", CanonError::PathParameter),
        ("/admin;/users", CanonError::PathParameter),
        ("/b/c/d;p", CanonError::PathParameter),
        ("/b/c/g;x=1/./y", CanonError::PathParameter),
        ("/b/c/g;x=1/../y", CanonError::PathParameter),
        ("/a b", CanonError::InvalidCharacter),
        ("/a\"b", CanonError::InvalidCharacter),
        ("/a#b", CanonError::InvalidCharacter),
        ("/a<b", CanonError::InvalidCharacter),
        ("/a>b", CanonError::InvalidCharacter),
        ("/a`b", CanonError::InvalidCharacter),
        ("/a{b", CanonError::InvalidCharacter),
        ("/a|b", CanonError::InvalidCharacter),
        ("/a}b", CanonError::InvalidCharacter),
        ("/a^b", CanonError::InvalidCharacter),
        ("/a[b", CanonError::InvalidCharacter),
        ("/a]b", CanonError::InvalidCharacter),
        ("/a%", CanonError::BadPercentEncoding),
        ("/a%4", CanonError::BadPercentEncoding),
        ("/a%zz", CanonError::BadPercentEncoding),
        ("/a%4g", CanonError::BadPercentEncoding),
        ("/a%%41", CanonError::BadPercentEncoding),
        ("/a%u002e", CanonError::BadPercentEncoding),
        ("/a%25%4g", CanonError::BadPercentEncoding),
        ("/a% 1", CanonError::BadPercentEncoding),
        ("/a%2fb", CanonError::EncodedSlash),
        ("/a%2Fb", CanonError::EncodedSlash),
        ("/..%2f..%2fetc", CanonError::EncodedSlash),
        ("/a%5cb", CanonError::EncodedBackslash),
        ("/a%5Cb", CanonError::EncodedBackslash),
        ("/a%3bb", CanonError::EncodedPathParameter),
        ("/a%3B", CanonError::EncodedPathParameter),
        ("/a%00b", CanonError::EncodedControl),
        ("/a%0a", CanonError::EncodedControl),
        ("/a%0D%0A", CanonError::EncodedControl),
        ("/a%1f", CanonError::EncodedControl),
        ("/a%7f", CanonError::EncodedControl),
        ("/a%252F", CanonError::DoubleEncoding),
        ("/a%252f", CanonError::DoubleEncoding),
        ("/a%2541", CanonError::DoubleEncoding),
        ("/a%252e%252e", CanonError::DoubleEncoding),
        ("/a%25%32%66", CanonError::DoubleEncoding),
        ("/a%25%32F", CanonError::DoubleEncoding),
        ("/a%252%46", CanonError::DoubleEncoding),
        ("/a%25ab", CanonError::DoubleEncoding),
        ("/a%c0%ae", CanonError::OverlongUtf8),
        ("/a%C0%AE%C0%AE/", CanonError::OverlongUtf8),
        ("/a%c1%9c", CanonError::OverlongUtf8),
        ("/a%e0%80%ae", CanonError::OverlongUtf8),
        ("/a%e0%9f%bf", CanonError::OverlongUtf8),
        ("/a%f0%80%80%ae", CanonError::OverlongUtf8),
        ("/a%f0%8f%bf%bf", CanonError::OverlongUtf8),
        // Query.
        ("/a?x=%", CanonError::BadPercentEncoding),
        ("/a?x=%g1", CanonError::BadPercentEncoding),
        ("/a?x=%4", CanonError::BadPercentEncoding),
        ("/a?x=a b", CanonError::InvalidCharacter),
        ("/a?x=<", CanonError::InvalidCharacter),
        ("/a?x=#", CanonError::InvalidCharacter),
        ("/a?x=\"", CanonError::InvalidCharacter),
        ("/a?x=\\", CanonError::Backslash),
        ("/a?x=\n", CanonError::ControlCharacter),
        ("/a?x=é", CanonError::NonAscii),
        // The path is checked before the query.
        ("/a b?x=%", CanonError::InvalidCharacter),
    ];

    #[test]
    fn ok_cases() {
        for &(input, expected) in OK_CASES {
            assert_eq!(canon(input), Ok(expected.to_owned()), "input {input:?}");
            // Every expected output is itself canonical.
            assert_eq!(
                canon(expected),
                Ok(expected.to_owned()),
                "output {expected:?}"
            );
        }
    }

    #[test]
    fn err_cases() {
        for &(input, expected) in ERR_CASES {
            assert_eq!(canon(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn raw_bytes() {
        let cases: &[(&[u8], CanonError)] = &[
            (b"/a\xff", CanonError::NonAscii),
            (b"/a\x80b", CanonError::NonAscii),
            (b"/\xc3\xa9", CanonError::NonAscii),
            (b"/a?\xff", CanonError::NonAscii),
            (b"/a\x00\xff", CanonError::ControlCharacter),
            (b"\xff/a", CanonError::NotOriginForm),
        ];
        for &(input, expected) in cases {
            assert_eq!(canonicalize_target(input), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn split_into_path_and_query() {
        let target = canonicalize_target(b"/a/../b?x=1&y=%2F").unwrap();
        assert_eq!(target.path, "/b");
        assert_eq!(target.query.as_deref(), Some("x=1&y=%2F"));
        assert_eq!(target.path_and_query(), "/b?x=1&y=%2F");

        let target = canonicalize_target(b"/a?").unwrap();
        assert_eq!(target.path, "/a");
        assert_eq!(target.query, None);
        assert_eq!(target.path_and_query(), "/a");
    }

    #[test]
    fn length_limit() {
        let mut raw = vec![b'/'];
        raw.resize(MAX_TARGET_LEN, b'a');
        assert!(canonicalize_target(&raw).is_ok());
        raw.push(b'a');
        assert_eq!(canonicalize_target(&raw), Err(CanonError::TooLong));
        assert_eq!(CanonError::TooLong.status(), 414);
    }

    #[test]
    fn error_metadata() {
        let mut codes: Vec<&str> = CanonError::ALL.iter().map(|e| e.code()).collect();
        for error in CanonError::ALL {
            let code = error.code();
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{code}"
            );
            assert!(error.message().ends_with('.'), "{code}");
            assert_eq!(error.to_string(), error.message());
            let expected_status = match error {
                CanonError::TooLong => 414,
                CanonError::HeadersTooLarge => 431,
                _ => 400,
            };
            assert_eq!(error.status(), expected_status, "{code}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CanonError::ALL.len(), "codes are unique");
    }

    #[test]
    fn segments_of_paths() {
        let segs = |p| segments(p).collect::<Vec<_>>();
        assert!(segs("/").is_empty());
        assert_eq!(segs("/a"), ["a"]);
        assert_eq!(segs("/a/b"), ["a", "b"]);
        assert_eq!(segs("/a/b/"), ["a", "b", ""]);
        assert_eq!(segs("/a%2Fb/c"), ["a%2Fb", "c"]);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn header_limits() {
        let h = headers(&[("a", "1"), ("b", "22"), ("b", "3")]);
        assert_eq!(check_header_limits(&h, 3, 100), Ok(()));
        assert_eq!(
            check_header_limits(&h, 2, 100),
            Err(CanonError::HeadersTooLarge)
        );
        // a: 1 (6) + b: 22 (7) + b: 3 (6) = 19 bytes
        assert_eq!(check_header_limits(&h, 3, 19), Ok(()));
        assert_eq!(
            check_header_limits(&h, 3, 18),
            Err(CanonError::HeadersTooLarge)
        );
        assert_eq!(CanonError::HeadersTooLarge.status(), 431);
    }

    #[test]
    fn disguised_framing_and_override_headers_are_refused() {
        for name in [
            "content_length",
            "Content.Length",
            "transfer_encoding",
            "authorization_x",
            "x_http_method_override",
            "X.HTTP.Method",
            "x_method_override",
            "upgrade",
        ] {
            let h = headers(&[(name, "1")]);
            let want = match name.to_ascii_lowercase().as_str() {
                "authorization_x" | "upgrade" => Ok(()),
                n if n.contains("method") => Err(CanonError::MethodOverride),
                _ => Err(CanonError::DisguisedHeader),
            };
            assert_eq!(check_headers(&h), want, "{name}");
        }
        assert!(folds_to("x_permgate_user", "x-permgate-user"));
        assert!(!folds_to("x-permgate-user", "x-permgate-user"));
        assert!(!folds_to("x_permgate_users", "x-permgate-user"));
        assert!(folds_to("x~remote!user", "x-remote-user"));
        assert_eq!(
            check_headers(&headers(&[("content~length", "1")])),
            Err(CanonError::DisguisedHeader)
        );
        let h = headers(&[
            ("x_permgate_user", "a"),
            ("x.remote.user", "b"),
            ("x_kept", "c"),
        ]);
        let sensitive = |n: &str| n.starts_with("x-permgate-") || n == "x-remote-user";
        let got: Vec<String> = disguised_copies(&h, sensitive)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, ["x_permgate_user", "x.remote.user"]);
    }

    type HeaderCase = (
        &'static [(&'static str, &'static str)],
        Result<(), CanonError>,
    );

    #[test]
    fn header_checks() {
        use CanonError::*;
        let cases: &[HeaderCase] = &[
            (&[], Ok(())),
            (
                &[
                    ("host", "crm"),
                    ("authorization", "Bearer x"),
                    ("content-length", "12"),
                    ("connection", "keep-alive, X-Foo"),
                ],
                Ok(()),
            ),
            (&[("transfer-encoding", "chunked")], Ok(())),
            (&[("content-length", "0")], Ok(())),
            (&[("content-length", "0012")], Ok(())),
            (&[("connection", "close")], Ok(())),
            (&[("connection", "hostname, upgrade")], Ok(())),
            (&[("X-HTTP-Method-Override", "DELETE")], Err(MethodOverride)),
            (&[("x-http-method", "PUT")], Err(MethodOverride)),
            (&[("X-Method-Override", "")], Err(MethodOverride)),
            (&[("host", "a"), ("host", "b")], Err(DuplicateHeader)),
            (&[("host", "a"), ("Host", "a")], Err(DuplicateHeader)),
            (
                &[("authorization", "a"), ("authorization", "b")],
                Err(DuplicateHeader),
            ),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                Err(AmbiguousFraming),
            ),
            (
                &[("content-length", "5"), ("content-length", "5")],
                Err(AmbiguousFraming),
            ),
            (&[("content-length", "5, 5")], Err(AmbiguousFraming)),
            (&[("content-length", "+5")], Err(AmbiguousFraming)),
            (&[("content-length", "-1")], Err(AmbiguousFraming)),
            (&[("content-length", "")], Err(AmbiguousFraming)),
            (&[("content-length", "0x10")], Err(AmbiguousFraming)),
            (
                &[("content-length", "99999999999999999999999")],
                Err(AmbiguousFraming),
            ),
            (
                &[("transfer-encoding", "gzip, chunked")],
                Err(AmbiguousFraming),
            ),
            (
                &[("transfer-encoding", "chunked, chunked")],
                Err(AmbiguousFraming),
            ),
            (&[("transfer-encoding", "identity")], Err(AmbiguousFraming)),
            (&[("transfer-encoding", "Chunked")], Err(AmbiguousFraming)),
            (&[("transfer-encoding", "")], Err(AmbiguousFraming)),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(AmbiguousFraming),
            ),
            (&[("connection", "Host")], Err(BadConnectionHeader)),
            (
                &[("connection", "close, content-length")],
                Err(BadConnectionHeader),
            ),
            (
                &[("connection", "  Transfer-Encoding ")],
                Err(BadConnectionHeader),
            ),
            (
                &[("connection", "close"), ("connection", "authorization")],
                Err(BadConnectionHeader),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                check_headers(&headers(pairs)),
                *expected,
                "headers {pairs:?}"
            );
        }
    }

    #[test]
    fn hop_by_hop() {
        let names = |pairs: &[(&str, &str)]| {
            hop_by_hop_headers(&headers(pairs))
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let fixed = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
        ];
        assert_eq!(names(&[]), fixed);
        let listed = names(&[
            ("connection", "X-Foo, keep-alive,,x-foo , X-Bar"),
            (
                "connection",
                "bad name, x-baz, Content-Length, transfer-encoding, host",
            ),
            ("connection", "authorization,x-bar"),
        ]);
        let mut expected = fixed.to_vec();
        expected.extend(["x-foo", "x-bar", "x-baz"]);
        assert_eq!(listed, expected);

        let mut obs_text = HeaderMap::new();
        obs_text.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-a, \xe9t\xe9, x-b").unwrap(),
        );
        let listed: Vec<_> = hop_by_hop_headers(&obs_text);
        assert_eq!(&listed[fixed.len()..], ["x-a", "x-b"]);
    }

    // -----------------------------------------------------------------------------------------
    // Properties

    /// RFC 3986 §5.2.4, transcribed step by step as the reference.
    fn rfc_remove_dot_segments(path: &str) -> String {
        fn pop(output: &mut String) {
            let last = output.rfind('/').unwrap_or(0);
            output.truncate(last);
        }
        let mut input = path.to_owned();
        let mut output = String::new();
        while !input.is_empty() {
            if input.starts_with("../") {
                input.replace_range(..3, "");
            } else if input.starts_with("./") {
                input.replace_range(..2, "");
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".to_owned();
            } else if input.starts_with("/../") {
                input.replace_range(..4, "/");
                pop(&mut output);
            } else if input == "/.." {
                input = "/".to_owned();
                pop(&mut output);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |i| i + start);
                output.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        output
    }

    /// A deliberately naive model of the path rules for paths that are accepted: decode
    /// unreserved escapes and uppercase the others, merge slashes, then RFC dot removal.
    fn reference_path(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut decoded = String::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let value = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap();
                if is_unreserved(value) {
                    decoded.push(char::from(value));
                } else {
                    decoded.push_str(&format!("%{value:02X}"));
                }
                i += 3;
            } else {
                decoded.push(char::from(bytes[i]));
                i += 1;
            }
        }
        while decoded.contains("//") {
            decoded = decoded.replace("//", "/");
        }
        rfc_remove_dot_segments(&decoded)
    }

    fn assert_canonical(target: &CanonicalTarget) {
        let path = &target.path;
        assert!(path.starts_with('/'), "{path:?}");
        assert!(!path.contains("//"), "{path:?}");
        assert!(!path.contains('?'), "{path:?}");
        assert!(
            segments(path).all(|s| s != "." && s != ".."),
            "dot segment in {path:?}"
        );
        for forbidden in ["%2F", "%2f", "%5C", "%5c", "%3B", "%3b", "\\", ";"] {
            assert!(!path.contains(forbidden), "{forbidden} in {path:?}");
        }
        assert!(path.bytes().all(|b| (0x21..0x7F).contains(&b)), "{path:?}");
        let bytes = path.as_bytes();
        for (i, _) in path.match_indices('%') {
            let value = escape_value(bytes, i).expect("well-formed escape");
            assert!(!is_unreserved(value), "encoded unreserved in {path:?}");
            assert!(
                value >= 0x20 && value != 0x7F,
                "encoded control in {path:?}"
            );
            assert!(
                !bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase),
                "lowercase hex in {path:?}"
            );
            let double_encoded = value == b'%'
                && bytes
                    .get(i + 3..i + 5)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            assert!(!double_encoded, "double encoding in {path:?}");
        }
        if let Some(query) = &target.query {
            assert!(!query.is_empty());
            assert!(
                query.bytes().all(|b| (0x21..0x7F).contains(&b)),
                "{query:?}"
            );
        }
    }

    /// Checks every property of one input; returns whether it was accepted.
    fn check_properties(raw: &[u8]) -> Result<bool, TestCaseError> {
        let Ok(target) = canonicalize_target(raw) else {
            return Ok(false);
        };
        assert_canonical(&target);
        let again = canonicalize_target(target.path_and_query().as_bytes());
        prop_assert_eq!(again, Ok(target.clone()), "not idempotent for {:?}", raw);
        prop_assert!(target.path_and_query().len() <= raw.len());
        Ok(true)
    }

    /// Pieces of realistic and hostile paths.
    fn path_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "/", "/", "/", "//", ".", "..", "/./", "/../", "%2e", "%2E", "%2e%2e", ".%2E",
                "%41", "%61", "%7e", "%7E", "%2d", "%25", "%2f", "%5C", "%3b", "%3F", "%20",
                "%c3%a9", "%C0%AE", ";", "\\", "?", "&", "=", "#", " ", "~", "-", "_", "@", ":",
                "%25", "%2525", "%34", "%46", "%66", "%32%46", "%e0", "%80", "%c1", "%bf",
            ])
            .prop_map(str::to_owned),
            4 => "[a-zA-Z0-9._~-]{1,4}",
            2 => any::<u8>().prop_map(|b| format!("%{b:02x}")),
            2 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
            1 => any::<u8>().prop_map(|b| char::from(b).to_string()),
            1 => "[0-9a-fA-F%]{1,3}",
        ]
    }

    fn pathish() -> impl Strategy<Value = String> {
        prop::collection::vec(path_piece(), 0..16)
            .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    /// Pieces stressing escape look-aheads: `%25` next to (encoded) hex digits, UTF-8 leads.
    fn escape_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => prop::sample::select(vec![
                "%25", "%2525", "%25%25", "/", ".", "%2e", "%c0", "%C1", "%e0", "%F0", "%80",
                "%9f", "%BF", "%c3", "%a9", "%3F", "%20",
            ])
            .prop_map(str::to_owned),
            2 => "[0-9a-fA-FgG]",
            2 => "[0-9a-fA-FgG]".prop_map(|c| format!("%{:02x}", c.as_bytes()[0])),
            1 => "[0-9a-fA-FgG]".prop_map(|c| format!("%{:02X}", c.as_bytes()[0])),
        ]
    }

    fn escape_heavy() -> impl Strategy<Value = String> {
        prop::collection::vec(escape_piece(), 0..10)
            .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    /// Pieces that never make a path invalid (no `?`, no `%25`, no rejected escapes).
    fn valid_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "/", "/", "/", "//", ".", "..", "/./", "/../", "%2e", "%2E", "%2e%2e", ".%2E",
                "%41", "%61", "%7e", "%7E", "%2d", "%3F", "%3f", "%20", "%c3%a9", "%E9", "%23",
                "%2B", "!", "$", "&", "'", "(", ")", "*", "+", ",", "=", ":", "@",
            ])
            .prop_map(str::to_owned),
            3 => "[a-zA-Z0-9._~-]{1,4}",
            2 => (0x20u8..0x7F)
                .prop_filter("rejected escape", |b| !b"%/\\;".contains(b))
                .prop_map(|b| format!("%{b:02x}")),
        ]
    }

    fn valid_path() -> impl Strategy<Value = String> {
        prop::collection::vec(valid_piece(), 0..16)
            .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn prop_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..96)) {
            check_properties(&raw)?;
        }

        #[test]
        fn prop_arbitrary_bytes_after_slash(raw in prop::collection::vec(any::<u8>(), 0..96)) {
            let mut target = vec![b'/'];
            target.extend(raw);
            check_properties(&target)?;
        }

        #[test]
        fn prop_pathish(path in pathish(), query in prop::option::of("[ -~]{0,12}")) {
            let raw = match query {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            check_properties(raw.as_bytes())?;
        }

        #[test]
        fn prop_escape_heavy(path in escape_heavy()) {
            check_properties(path.as_bytes())?;
        }

        #[test]
        fn prop_valid_paths_match_rfc_reference(path in valid_path()) {
            let target = canonicalize_target(path.as_bytes());
            prop_assert_eq!(target.clone().map(|t| t.path), Ok(reference_path(&path)));
            prop_assert!(check_properties(path.as_bytes())?);
        }

        /// The fast path (`scan_path` says "unchanged") agrees with the full rewrite.
        #[test]
        fn prop_fast_path_is_exact(path in prop_oneof![pathish(), escape_heavy(), valid_path()]) {
            let path = path.split('?').next().unwrap_or_default();
            if let Ok(PathScan { len, needs_rewrite }) = scan_path(path.as_bytes()) {
                prop_assert_eq!(len, path.len());
                let rewritten = rewrite_path(path).unwrap();
                prop_assert_eq!(needs_rewrite, rewritten != path, "{:?} → {:?}", path, rewritten);
            }
        }
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn a_host_is_a_bare_authority() {
        for ok in [
            "crm.test",
            "crm.test:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:443",
            "crm_01.internal",
            "h:65535",
        ] {
            assert_eq!(check_host(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "", "u@h", "u:p@h", "h/", "h/x", "h?x", "h#f", "h:", "h:65536", "h:123456", "h:8o",
            "h h", "a,b", "[::1", "[]", "[zz]", "[::1]x", ":80", "h:80:80", "http://h", "h\t",
        ] {
            assert_eq!(
                check_host(bad.as_bytes()),
                Err(CanonError::InvalidHost),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_body_is_declared_by_a_length_over_zero_or_an_encoding() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, http::HeaderValue::from_static(v));
            }
            declares_body(&h)
        };
        assert!(!with(&[]));
        assert!(!with(&[("content-length", "0")]));
        assert!(!with(&[("content-length", "000")]));
        assert!(with(&[("content-length", "1")]));
        assert!(with(&[("transfer-encoding", "chunked")]));
    }
}
