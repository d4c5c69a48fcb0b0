//! Strict JSON bodies: one parse that refuses anything two parsers could read two ways, a tree
//! that keeps what was read, and a writer that re-serializes it.
//!
//! Why one file (~1,180 lines without its tests): the strict parser, the tree, the writer and the
//! streaming canonicalizer share one grammar and one set of limits; our own rather than serde_json
//! because serde_json's `Value` silently keeps the last of duplicate keys and keeps an exact
//! number literal only with its crate-wide `arbitrary_precision` feature.
//!
//! # Layout
//!
//! - [`parse`]: bytes → [`Json`], or a [`JsonError`] with its status (400/413) and stable code.
//! - [`Json`]: the parsed tree; objects keep their members in order, numbers keep their exact
//!   literal, strings are decoded (borrowed from the body when they hold no escape).
//! - [`write()`] / [`to_vec`]: the tree back to compact JSON, with strings in one canonical
//!   escaping, so the CRM receives exactly what was checked, in one spelling.
//! - [`Pointer`]: an RFC 6901 JSON pointer (`/data/0/id`), parsed once at config load.
//!
//! # What is refused
//!
//! | input | error code | status |
//! |---|---|---|
//! | larger than the route's limit | `body_too_large` | 413 |
//! | a UTF-8 byte order mark | `body_bom` | 400 |
//! | not UTF-8 | `body_not_utf8` | 400 |
//! | empty, or anything outside RFC 8259's grammar (trailing commas, comments, single quotes, `NaN`, leading zeros, raw control characters in strings, lone surrogate escapes, numbers out of f64 range) | `invalid_json` | 400 |
//! | data after the value | `trailing_data` | 400 |
//! | the same key twice in one object, at any depth, compared after decoding escapes (`"a"` and `"\u0061"` are the same key) | `duplicate_key` | 400 |
//! | nesting deeper than the route's limit | `json_too_deep` | 400 |
//!
//! Why not `serde_json::Value`: it keeps the last of two duplicate keys (a parser differential
//! with a CRM that keeps the first), and it re-serializes numbers through `f64`
//! (`12345678901234567890123` becomes `1.2345678901234568e22`), so the CRM would not receive
//! what the client sent. This parser accepts exactly serde_json's grammar (the property tests
//! check it against serde_json) and adds the rules above.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Limits for one route's bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    /// The deepest nesting of arrays and objects (the top-level value is depth 1).
    pub max_depth: usize,
    /// The most items a bulk body's list may hold (more: 413 `too_many_items`).
    pub max_items: usize,
}

/// Items in one bulk call by default: a caller with more sends several calls.
pub const DEFAULT_MAX_ITEMS: usize = 10_000;
/// The most a config may allow.
pub const MAX_ITEMS_LIMIT: usize = 1_000_000;

/// 4 MiB: a bulk call of 10 000 items of up to ~400 bytes each fits. It is buffered per call
/// in flight, so the default stays a few MiB; a route may set up to
/// [`crate::inspect::MAX_BODY_LIMIT`].
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// The deepest limit a config may set (the parser recurses once per level).
pub const MAX_DEPTH_LIMIT: usize = 128;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_items: DEFAULT_MAX_ITEMS,
        }
    }
}

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// The literal exactly as written (valid per RFC 8259); owned only when permgate wrote it
    /// (a corrected count).
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in their original order; keys are unique (checked).
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Why a body was refused; `offset` is a byte offset into the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    TooLarge { limit: usize },
    Bom,
    NotUtf8 { offset: usize },
    Invalid { offset: usize, what: &'static str },
    Trailing { offset: usize },
    DuplicateKey { offset: usize, key: String },
    TooDeep { offset: usize, limit: usize },
}

impl JsonError {
    pub fn status(&self) -> u16 {
        match self {
            JsonError::TooLarge { .. } => 413,
            _ => 400,
        }
    }

    /// The stable error code (README "How a decision is taken").
    pub fn code(&self) -> &'static str {
        match self {
            JsonError::TooLarge { .. } => "body_too_large",
            JsonError::Bom => "body_bom",
            JsonError::NotUtf8 { .. } => "body_not_utf8",
            JsonError::Invalid { .. } => "invalid_json",
            JsonError::Trailing { .. } => "trailing_data",
            JsonError::DuplicateKey { .. } => "duplicate_key",
            JsonError::TooDeep { .. } => "json_too_deep",
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::TooLarge { limit } => {
                write!(
                    f,
                    "the body is larger than this route's limit of {limit} bytes"
                )
            }
            JsonError::Bom => f.write_str("the body starts with a byte order mark"),
            JsonError::NotUtf8 { offset } => write!(f, "the body is not UTF-8 (byte {offset})"),
            JsonError::Invalid { offset, what } => {
                write!(f, "the body is not valid JSON at byte {offset}: {what}")
            }
            JsonError::Trailing { offset } => {
                write!(
                    f,
                    "the body holds data after the JSON value (byte {offset})"
                )
            }
            JsonError::DuplicateKey { offset, key } => write!(
                f,
                "the key '{}' appears twice in one object (byte {offset})",
                key.escape_debug()
            ),
            JsonError::TooDeep { offset, limit } => write!(
                f,
                "the body nests deeper than {limit} levels (byte {offset})"
            ),
        }
    }
}

impl std::error::Error for JsonError {}

/// Parse a body strictly (module docs).
pub fn parse<'a>(body: &'a [u8], limits: &Limits) -> Result<Json<'a>, JsonError> {
    if body.len() > limits.max_bytes {
        return Err(JsonError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(JsonError::Bom);
    }
    let text = std::str::from_utf8(body).map_err(|e| JsonError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut p = Parser {
        text,
        b: body,
        i: 0,
        max_depth: limits.max_depth.min(MAX_DEPTH_LIMIT),
        items: Vec::new(),
        members: Vec::new(),
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(JsonError::Trailing { offset: p.i });
    }
    Ok(v)
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    max_depth: usize,
    /// Scratch stacks: a container's children are collected here, then moved into one
    /// exactly sized allocation when it closes (no regrowth per container).
    items: Vec<Json<'a>>,
    members: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &'static str) -> JsonError {
        JsonError::Invalid {
            offset: self.i,
            what,
        }
    }

    fn invalid<T>(&self, what: &'static str) -> Result<T, JsonError> {
        Err(self.error(what))
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Json<'a>) -> Result<Json<'a>, JsonError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            self.invalid("expected a value")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        match self.b.get(self.i) {
            None => self.invalid("unexpected end of the body"),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.invalid("expected a value"),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > self.max_depth {
            Err(JsonError::TooDeep {
                offset: self.i,
                limit: self.max_depth,
            })
        } else {
            Ok(())
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        self.enter(depth)?;
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Array(Vec::new()));
        }
        let base = self.items.len();
        loop {
            self.ws();
            let v = self.value(depth)?;
            self.items.push(v);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(self.items.drain(base..).collect()));
                }
                _ => return self.invalid("expected ',' or ']'"),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        self.enter(depth)?;
        let start = self.i;
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Json::Object(Vec::new()));
        }
        let base = self.members.len();
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return self.invalid("expected a key (a string)");
            }
            let key = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return self.invalid("expected ':'");
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            self.members.push((key, v));
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return self.invalid("expected ',' or '}'"),
            }
        }
        // Duplicate keys, compared decoded. Small objects: pairwise; larger: a set.
        let members = &self.members[base..];
        let dup = if members.len() <= 8 {
            members
                .iter()
                .enumerate()
                .find(|(i, (k, _))| members[..*i].iter().any(|(k2, _)| k2 == k))
                .map(|(_, (k, _))| k.to_string())
        } else {
            let mut seen = HashSet::with_capacity(members.len());
            members
                .iter()
                .find(|(k, _)| !seen.insert(&**k))
                .map(|(k, _)| k.to_string())
        };
        if let Some(key) = dup {
            return Err(JsonError::DuplicateKey { offset: start, key });
        }
        Ok(Json::Object(self.members.drain(base..).collect()))
    }

    fn number(&mut self) -> Result<Json<'a>, JsonError> {
        let start = self.i;
        let digits = |p: &mut Parser<'a>| {
            let rest = p.b.get(p.i..).unwrap_or_default();
            let n = rest
                .iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            p.i += n;
            n
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                if self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    return self.invalid("a number has no leading zeros");
                }
            }
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return self.invalid("expected digits"),
        }
        let mut exp = false;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return self.invalid("expected digits after '.'");
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            exp = true;
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return self.invalid("expected digits in the exponent");
            }
        }
        let lit = &self.text[start..self.i];
        // Like serde_json: a number beyond f64's range is refused. Only a long literal or one
        // with an exponent can be.
        if (exp || lit.len() > 300) && !lit.parse::<f64>().is_ok_and(f64::is_finite) {
            self.i = start;
            return self.invalid("number out of range");
        }
        Ok(Json::Number(Cow::Borrowed(lit)))
    }

    /// Skip string bytes that need no attention: anything but `"`, `\` and control bytes.
    fn skip_plain(&mut self) {
        self.i = skip_plain_from(self.b, self.i);
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok());
        match h {
            Some(v) => {
                self.i += 4;
                Ok(v)
            }
            None => self.invalid("expected 4 hex digits after \\u"),
        }
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.i += 1; // the opening quote
        let start = self.i;
        // Fast path: no escape.
        self.skip_plain();
        match self.b.get(self.i) {
            None => return self.invalid("unterminated string"),
            Some(b'"') => {
                let s = &self.text[start..self.i];
                self.i += 1;
                return Ok(Cow::Borrowed(s));
            }
            Some(b'\\') => {}
            Some(_) => return self.invalid("a raw control character in a string"),
        }
        let mut out = String::from(&self.text[start..self.i]);
        loop {
            let run = self.i;
            self.skip_plain();
            out.push_str(&self.text[run..self.i]);
            match self.b.get(self.i) {
                None => return self.invalid("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(e) = self.b.get(self.i).copied() else {
                        return self.invalid("unterminated escape");
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return self.invalid("a lone surrogate escape");
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return self.invalid("a lone surrogate escape");
                                }
                                0x10000
                                    + ((u32::from(hi) - 0xD800) << 10)
                                    + (u32::from(lo) - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return self.invalid("a lone surrogate escape");
                            } else {
                                u32::from(hi)
                            };
                            match char::from_u32(c) {
                                Some(ch) => out.push(ch),
                                None => return self.invalid("an invalid \\u escape"),
                            }
                        }
                        _ => {
                            self.i -= 1;
                            return self.invalid("an invalid escape");
                        }
                    }
                }
                Some(_) => return self.invalid("a raw control character in a string"),
            }
        }
    }
}

/// The first index at or after `i` holding `"`, `\` or a control byte (below 0x20), or
/// `b.len()`. Eight bytes at a time (SWAR): in each word, a byte equal to `"` or `\` becomes
/// zero after an XOR, and "is zero" / "is below 0x20" are the classic borrow tricks
/// (`(x - 0x01..) & !x & 0x80..`). A borrow only carries into bytes *above* a flagged one, so
/// the lowest flag is always exact (`skip_plain_is_bytewise` checks it against the plain loop).
fn skip_plain_from(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTE: u64 = ONES * b'"' as u64;
    const BACKSLASH: u64 = ONES * b'\\' as u64;
    const SPACE: u64 = ONES * 0x20;
    while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*chunk);
        let q = w ^ QUOTE;
        let s = w ^ BACKSLASH;
        let hits = ((q.wrapping_sub(ONES) & !q)
            | (s.wrapping_sub(ONES) & !s)
            | (w.wrapping_sub(SPACE) & !w))
            & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    let rest = b.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(rest.len())
}

/// A scalar read while streaming ([`canonicalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'a> {
    String(Cow<'a, str>),
    /// The literal as written.
    Number(&'a str),
    /// Not a string or a number: what it was (`"an object"`, `"null"`, …).
    Other(&'static str),
}

impl<'a> Scalar<'a> {
    /// A tree node as a scalar.
    pub fn of(v: &Json<'a>) -> Scalar<'a> {
        match v {
            Json::String(s) => Scalar::String(s.clone()),
            Json::Number(Cow::Borrowed(n)) => Scalar::Number(n),
            other => Scalar::Other(other.kind()),
        }
    }
}

/// What [`canonicalize`] picks out of a body while it writes it.
#[derive(Debug, Clone, Copy)]
pub struct Select<'p> {
    /// An array whose elements are offered one by one to the `keep` callback.
    pub items: Option<&'p Pointer>,
    /// Inside each element: where its id is (`""`: the element itself).
    pub id_at: &'p Pointer,
    /// Scalars to capture at these absolute pointers (a new owner, a record id).
    pub captures: &'p [&'p Pointer],
}

/// The output of [`canonicalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// The body as compact JSON in permgate's one spelling, with the elements `keep`
    /// refused left out.
    pub body: Vec<u8>,
    /// Did `items` name an array?
    pub items_found: bool,
    /// The scalar at each capture pointer (`None`: absent).
    pub captured: Vec<Option<Scalar<'a>>>,
    /// The keys of the top-level object, in order (empty for any other top-level value).
    pub root_keys: Vec<Cow<'a, str>>,
    /// Where each element `keep` kept sits in `body` (without its separating comma), in
    /// order, and where the items array's elements start and end: a caller can still leave
    /// elements out afterwards ([`Canonical::without`]).
    pub item_spans: Vec<(usize, usize)>,
    pub items_inner: (usize, usize),
}

impl Canonical<'_> {
    /// The body without the kept elements whose `keep[i]` is `false` (`keep` in the order of
    /// [`Canonical::item_spans`]). Deciding after the pass lets a caller run its record checks
    /// in one tight loop, where the CPU overlaps their memory accesses.
    pub fn without(&self, keep: &[bool]) -> Vec<u8> {
        let (open, close) = self.items_inner;
        let mut out = Vec::with_capacity(self.body.len());
        out.extend_from_slice(&self.body[..open]);
        let mut first = true;
        for (&(start, end), _) in self.item_spans.iter().zip(keep).filter(|(_, k)| **k) {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&self.body[start..end]);
            first = false;
        }
        out.extend_from_slice(&self.body[close..]);
        out
    }
}

/// Why [`canonicalize`] stopped: the body, or the `keep` callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError<E> {
    Json(JsonError),
    Keep(E),
}

impl<E> From<JsonError> for StreamError<E> {
    fn from(e: JsonError) -> Self {
        StreamError::Json(e)
    }
}

/// Parse a body with exactly the rules of [`parse`] and write it back as [`write()`] would, in
/// one pass and without building a tree: the bulk-trimming fast path. Each element of the
/// `select.items` array is written, then offered to `keep(index, id)` with the scalar at
/// `select.id_at` inside it (`None` when absent); when `keep` answers `false` the element is
/// taken back out. The first error stops everything; no output is returned then.
///
/// Outside whitespace and escaped strings a body is already in the one spelling, so the
/// output is the source copied in runs: a clean item (no whitespace, no escape) is one copy.
pub fn canonicalize<'a, E>(
    body: &'a [u8],
    limits: &Limits,
    select: &Select<'_>,
    keep: impl FnMut(usize, Option<Scalar<'a>>) -> Result<bool, E>,
) -> Result<Canonical<'a>, StreamError<E>> {
    if body.len() > limits.max_bytes {
        return Err(JsonError::TooLarge {
            limit: limits.max_bytes,
        }
        .into());
    }
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(JsonError::Bom.into());
    }
    let text = std::str::from_utf8(body).map_err(|e| JsonError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut st = Stream {
        p: Parser {
            text,
            b: body,
            i: 0,
            max_depth: limits.max_depth.min(MAX_DEPTH_LIMIT),
            items: Vec::new(),
            members: Vec::new(),
        },
        out: Vec::with_capacity(body.len()),
        keys: Vec::new(),
        path: Vec::new(),
        select: *select,
        captured: vec![None; select.captures.len()],
        item_root: None,
        item_id: None,
        items_found: false,
        root_keys: Vec::new(),
        item_spans: Vec::new(),
        items_inner: (0, 0),
        run: 0,
        keep,
    };
    st.ws();
    st.value(0)?;
    st.ws();
    st.flush();
    if st.p.i != body.len() {
        return Err(JsonError::Trailing { offset: st.p.i }.into());
    }
    Ok(Canonical {
        body: st.out,
        items_found: st.items_found,
        captured: st.captured,
        root_keys: st.root_keys,
        item_spans: st.item_spans,
        items_inner: st.items_inner,
    })
}

/// A step of the current path: a key (an index into `Stream::keys`) or an array index.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Key(usize),
    Index(usize),
}

struct Stream<'a, 'p, F> {
    p: Parser<'a>,
    out: Vec<u8>,
    /// The keys of every open object, in order (each object's keys from its frame start).
    keys: Vec<Cow<'a, str>>,
    path: Vec<Seg>,
    select: Select<'p>,
    captured: Vec<Option<Scalar<'a>>>,
    /// The path length of the element being offered, while inside one.
    item_root: Option<usize>,
    item_id: Option<Scalar<'a>>,
    items_found: bool,
    root_keys: Vec<Cow<'a, str>>,
    item_spans: Vec<(usize, usize)>,
    items_inner: (usize, usize),
    /// Where the source bytes not yet copied to `out` start. Outside whitespace and escaped
    /// strings a body is already in the one spelling, so the output is the source copied in
    /// runs: a run ends at whitespace (skipped), an escaped string (rewritten), and around
    /// each selected element (so that it can be left out).
    run: usize,
    keep: F,
}

impl<'a, E, F: FnMut(usize, Option<Scalar<'a>>) -> Result<bool, E>> Stream<'a, '_, F> {
    /// Copy the pending run of source bytes (up to the read position) to the output.
    fn flush(&mut self) {
        let i = self.p.i;
        if i > self.run {
            self.out.extend_from_slice(&self.p.b[self.run..i]);
        }
        self.run = i;
    }

    /// Skip whitespace, which ends the pending run.
    fn ws(&mut self) {
        let at = self.p.i;
        self.p.ws();
        if self.p.i != at {
            self.out.extend_from_slice(&self.p.b[self.run..at]);
            self.run = self.p.i;
        }
    }

    /// A string just read from `at` (its opening quote): one the parser could borrow holds
    /// nothing to escape and stays in the run as written; a decoded one is written in the
    /// one escaping.
    // The variant is the point here (borrowed = written as is), so the Cow itself is taken.
    #[allow(clippy::ptr_arg)]
    fn string_read(&mut self, at: usize, s: &Cow<'_, str>) {
        if let Cow::Owned(o) = s {
            self.out.extend_from_slice(&self.p.b[self.run..at]);
            write_str(o, &mut self.out);
            self.run = self.p.i;
        }
    }

    /// Does `path[from..]` equal the pointer's tokens?
    fn at(&self, from: usize, ptr: &Pointer) -> bool {
        let segs = &self.path[from..];
        segs.len() == ptr.tokens.len()
            && segs.iter().zip(&ptr.tokens).all(|(s, t)| match s {
                Seg::Key(k) => self.keys.get(*k).is_some_and(|k| k == t),
                Seg::Index(i) => Pointer::index(t) == Some(*i),
            })
    }

    fn value(&mut self, depth: usize) -> Result<(), StreamError<E>> {
        // What this value is to the selection: the id of the current element, a capture,
        // the items array itself.
        let is_id = self
            .item_root
            .is_some_and(|r| self.path.len() - r == self.select.id_at.tokens.len())
            && self
                .item_root
                .is_some_and(|r| self.at(r, self.select.id_at));
        let capture = self
            .select
            .captures
            .iter()
            .position(|c| c.tokens.len() == self.path.len() && self.at(0, c));
        let is_items = self.item_root.is_none()
            && self
                .select
                .items
                .is_some_and(|it| it.tokens.len() == self.path.len() && self.at(0, it));
        let scalar = match self.p.b.get(self.p.i) {
            None => return Err(self.p.error("unexpected end of the body").into()),
            Some(b'{') => {
                self.object(depth + 1)?;
                Scalar::Other("an object")
            }
            Some(b'[') => {
                if is_items {
                    self.items_found = true;
                    self.items_array(depth + 1)?;
                } else {
                    self.array(depth + 1)?;
                }
                Scalar::Other("an array")
            }
            Some(b'"') => {
                let at = self.p.i;
                let s = self.p.string()?;
                self.string_read(at, &s);
                Scalar::String(s)
            }
            Some(b'-' | b'0'..=b'9') => {
                let Json::Number(n) = self.p.number()? else {
                    return Err(JsonError::Invalid {
                        offset: self.p.i,
                        what: "expected a number",
                    }
                    .into());
                };
                match n {
                    Cow::Borrowed(n) => Scalar::Number(n),
                    Cow::Owned(_) => Scalar::Other("a number"),
                }
            }
            Some(_) => {
                let (word, kind): (&'static [u8], &'static str) = match self.p.b[self.p.i] {
                    b't' => (b"true", "a boolean"),
                    b'f' => (b"false", "a boolean"),
                    _ => (b"null", "null"),
                };
                self.p.literal(word, Json::Null)?;
                Scalar::Other(kind)
            }
        };
        if is_id {
            self.item_id = Some(scalar.clone());
        }
        if let Some(c) = capture {
            if let Some(slot) = self.captured.get_mut(c) {
                *slot = Some(scalar);
            }
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), StreamError<E>> {
        self.p.enter(depth)?;
        let start = self.p.i;
        self.p.i += 1;
        self.ws();
        if self.p.b.get(self.p.i) == Some(&b'}') {
            self.p.i += 1;
            return Ok(());
        }
        let base = self.keys.len();
        loop {
            self.ws();
            if self.p.b.get(self.p.i) != Some(&b'"') {
                return Err(self.p.error("expected a key (a string)").into());
            }
            let at = self.p.i;
            let key = self.p.string()?;
            self.string_read(at, &key);
            self.ws();
            if self.p.b.get(self.p.i) != Some(&b':') {
                return Err(self.p.error("expected ':'").into());
            }
            self.p.i += 1;
            self.ws();
            self.keys.push(key);
            self.path.push(Seg::Key(self.keys.len() - 1));
            let r = self.value(depth);
            self.path.pop();
            r?;
            self.ws();
            match self.p.b.get(self.p.i) {
                Some(b',') => self.p.i += 1,
                Some(b'}') => {
                    self.p.i += 1;
                    break;
                }
                _ => return Err(self.p.error("expected ',' or '}'").into()),
            }
        }
        let frame = &self.keys[base..];
        let dup = if frame.len() <= 8 {
            frame
                .iter()
                .enumerate()
                .find(|(i, k)| frame[..*i].contains(k))
                .map(|(_, k)| k.to_string())
        } else {
            let mut seen = HashSet::with_capacity(frame.len());
            frame
                .iter()
                .find(|k| !seen.insert(&***k))
                .map(|k| k.to_string())
        };
        if let Some(key) = dup {
            return Err(JsonError::DuplicateKey { offset: start, key }.into());
        }
        if depth == 1 {
            self.root_keys = self.keys.drain(base..).collect();
        }
        self.keys.truncate(base);
        Ok(())
    }

    /// An ordinary array; `offer` makes its elements the selected items.
    fn array_with(&mut self, depth: usize, offer: bool) -> Result<(), StreamError<E>> {
        self.p.enter(depth)?;
        self.p.i += 1;
        if offer {
            self.flush();
            self.items_inner = (self.out.len(), self.out.len());
        }
        self.ws();
        if self.p.b.get(self.p.i) == Some(&b']') {
            self.p.i += 1;
            return Ok(());
        }
        let mut index = 0;
        let mut written = 0;
        loop {
            self.ws();
            // A selected element is copied on its own (its separating comma written here,
            // not copied), so that it can be taken back out.
            if offer {
                self.flush();
            }
            let mark = self.out.len();
            if offer && written > 0 {
                self.out.push(b',');
            }
            let start = self.out.len();
            self.path.push(Seg::Index(index));
            if offer {
                self.item_root = Some(self.path.len());
                self.item_id = None;
            }
            let r = self.value(depth);
            if offer {
                self.item_root = None;
            }
            self.path.pop();
            r?;
            if offer {
                self.flush();
            }
            let kept = if offer {
                let id = self.item_id.take();
                (self.keep)(index, id).map_err(StreamError::Keep)?
            } else {
                true
            };
            if kept {
                written += 1;
                if offer {
                    self.item_spans.push((start, self.out.len()));
                }
            } else {
                self.out.truncate(mark);
            }
            index += 1;
            self.ws();
            match self.p.b.get(self.p.i) {
                Some(b',') => {
                    self.p.i += 1;
                    if offer {
                        self.run = self.p.i;
                    }
                }
                Some(b']') => {
                    if offer {
                        self.flush();
                        self.items_inner.1 = self.out.len();
                    }
                    self.p.i += 1;
                    return Ok(());
                }
                _ => return Err(self.p.error("expected ',' or ']'").into()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), StreamError<E>> {
        self.array_with(depth, false)
    }

    fn items_array(&mut self, depth: usize) -> Result<(), StreamError<E>> {
        self.array_with(depth, true)
    }
}

/// Write a value as compact JSON.
pub fn write(v: &Json<'_>, out: &mut Vec<u8>) {
    match v {
        Json::Null => out.extend_from_slice(b"null"),
        Json::Bool(true) => out.extend_from_slice(b"true"),
        Json::Bool(false) => out.extend_from_slice(b"false"),
        Json::Number(n) => out.extend_from_slice(n.as_bytes()),
        Json::String(s) => write_str(s, out),
        Json::Array(items) => {
            out.push(b'[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(x, out);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            out.push(b'{');
            for (i, (k, x)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(x, out);
            }
            out.push(b'}');
        }
    }
}

/// A value as compact JSON.
pub fn to_vec(v: &Json<'_>) -> Vec<u8> {
    to_vec_sized(v, 0)
}

/// A value as compact JSON, reserving `hint` bytes first (e.g. the size of the body it was
/// parsed from).
pub fn to_vec_sized(v: &Json<'_>, hint: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(hint);
    write(v, &mut out);
    out
}

/// A string in the one escaping permgate writes: `"` and `\` escaped, control characters as
/// `\n`-style or `\u00XX` escapes, everything else as UTF-8.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = s.as_bytes();
    // Copy runs that need no escape whole; escape the byte that ends each run.
    while let Some(i) = rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
    {
        out.extend_from_slice(&rest[..i]);
        let c = rest[i];
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// An RFC 6901 JSON pointer: `""` is the whole document, `/data/0/id` a path into it (`~0` is
/// `~`, `~1` is `/`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pointer {
    tokens: Vec<String>,
    text: String,
}

impl Pointer {
    pub fn parse(s: &str) -> Result<Pointer, String> {
        if s.is_empty() {
            return Ok(Pointer::default());
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("'{s}' is not a JSON pointer (it starts with '/')"));
        };
        let mut tokens = Vec::new();
        for t in rest.split('/') {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "'{s}': '~' is followed by 0 or 1 in a JSON pointer"
                            ))
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            tokens.push(out);
        }
        Ok(Pointer {
            tokens,
            text: s.to_string(),
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_root(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The last token and the pointer to its parent (`None` for the root).
    pub fn split_last(&self) -> Option<(Pointer, &str)> {
        let (last, init) = self.tokens.split_last()?;
        let text = self
            .text
            .rfind('/')
            .map(|i| self.text[..i].to_string())
            .unwrap_or_default();
        Some((
            Pointer {
                tokens: init.to_vec(),
                text,
            },
            last,
        ))
    }

    fn index(token: &str) -> Option<usize> {
        let canonical = token == "0" || (!token.starts_with('0') && !token.is_empty());
        if canonical && token.bytes().all(|b| b.is_ascii_digit()) {
            token.parse().ok()
        } else {
            None
        }
    }

    /// The value this pointer names, if any.
    pub fn get<'v, 'a>(&self, mut v: &'v Json<'a>) -> Option<&'v Json<'a>> {
        for t in &self.tokens {
            v = match v {
                Json::Object(m) => m.iter().find(|(k, _)| k == t).map(|(_, x)| x)?,
                Json::Array(a) => a.get(Pointer::index(t)?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// The value this pointer names, mutably.
    pub fn get_mut<'v, 'a>(&self, mut v: &'v mut Json<'a>) -> Option<&'v mut Json<'a>> {
        for t in &self.tokens {
            v = match v {
                Json::Object(m) => m.iter_mut().find(|(k, _)| k == t).map(|(_, x)| x)?,
                Json::Array(a) => a.get_mut(Pointer::index(t)?)?,
                _ => return None,
            };
        }
        Some(v)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<Json<'_>, JsonError> {
        parse(s.as_bytes(), &Limits::default())
    }

    fn code(s: &str) -> &'static str {
        match p(s) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn refusals_and_their_codes() {
        for (s, want) in [
            ("", "invalid_json"),
            ("   ", "invalid_json"),
            ("[1,]", "invalid_json"),
            ("{\"a\":1,}", "invalid_json"),
            ("[01]", "invalid_json"),
            ("[1.]", "invalid_json"),
            ("[.5]", "invalid_json"),
            ("[+1]", "invalid_json"),
            ("[NaN]", "invalid_json"),
            ("[Infinity]", "invalid_json"),
            ("['a']", "invalid_json"),
            ("[1e400]", "invalid_json"),
            ("[-1e400]", "invalid_json"),
            ("\"\\ud800\"", "invalid_json"),
            ("\"\\udc00\"", "invalid_json"),
            ("\"\\ud800\\u0041\"", "invalid_json"),
            ("\"\\x41\"", "invalid_json"),
            ("\"a\u{1}b\"", "invalid_json"),
            ("\"a\tb\"", "invalid_json"),
            ("/* c */ 1", "invalid_json"),
            ("tru", "invalid_json"),
            ("{\"a\" 1}", "invalid_json"),
            ("{1:1}", "invalid_json"),
            ("1 2", "trailing_data"),
            ("{} {}", "trailing_data"),
            ("[]x", "trailing_data"),
            ("{\"a\":1,\"a\":2}", "duplicate_key"),
            ("{\"a\":1,\"\\u0061\":2}", "duplicate_key"),
            ("[{\"x\":{\"k\":1,\"k\":1}}]", "duplicate_key"),
            ("\u{feff}{}", "body_bom"),
        ] {
            assert_eq!(code(s), want, "{s:?}");
        }
        assert_eq!(
            parse(b"[\"\xff\"]", &Limits::default()).unwrap_err().code(),
            "body_not_utf8"
        );
        let big = format!("[{}]", "1,".repeat(100) + "1");
        let small = Limits {
            max_bytes: 50,
            max_depth: 4,
            ..Limits::default()
        };
        let e = parse(big.as_bytes(), &small).unwrap_err();
        assert_eq!((e.status(), e.code()), (413, "body_too_large"));
        assert_eq!(parse(b"[[[[1]]]]", &small).map(|_| ()), Ok(()));
        let e = parse(b"[[[[[1]]]]]", &small).unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "json_too_deep"));
        // Far deeper than any limit: refused, never a stack overflow.
        let deep = "[".repeat(100_000);
        assert_eq!(code(&deep), "json_too_deep");
        // Duplicates in a large object (the set path).
        let wide: Vec<String> = (0..20).map(|i| format!("\"k{}\":1", i % 19)).collect();
        assert_eq!(code(&format!("{{{}}}", wide.join(","))), "duplicate_key");
    }

    #[test]
    fn accepted_values_keep_their_spelling() {
        let v = p(" {\"n\": 12345678901234567890123, \"f\": 1.10, \"e\": 1E2, \"z\": -0, \"s\": \"a\\/b\\u00e9\\ud83d\\ude00\", \"t\": [true,false,null], \"u\": \"\u{2028}\"} ").unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            "{\"n\":12345678901234567890123,\"f\":1.10,\"e\":1E2,\"z\":-0,\"s\":\"a/bé😀\",\"t\":[true,false,null],\"u\":\"\u{2028}\"}"
        );
        assert_eq!(
            v.get("n"),
            Some(&Json::Number("12345678901234567890123".into()))
        );
        assert!(matches!(v.get("s"), Some(Json::String(Cow::Owned(_)))));
        assert!(matches!(
            p("\"plain\"").unwrap(),
            Json::String(Cow::Borrowed("plain"))
        ));
        let ctl = Json::String("a\u{1}\"\\\n\u{7f}".into());
        assert_eq!(
            String::from_utf8(to_vec(&ctl)).unwrap(),
            "\"a\\u0001\\\"\\\\\\n\u{7f}\""
        );
    }

    #[test]
    fn pointers() {
        let v = p(r#"{"data":[{"id":1},{"id":2}],"a/b":{"~":3},"":4}"#).unwrap();
        let get = |s: &str| Pointer::parse(s).unwrap().get(&v).cloned();
        assert_eq!(get("/data/1/id"), Some(Json::Number("2".into())));
        assert_eq!(get("/a~1b/~0"), Some(Json::Number("3".into())));
        assert_eq!(get("/"), Some(Json::Number("4".into())));
        assert_eq!(get(""), Some(v.clone()));
        assert_eq!(get("/data/01"), None);
        assert_eq!(get("/data/-"), None);
        assert_eq!(get("/data/2"), None);
        assert_eq!(get("/nope"), None);
        assert!(Pointer::parse("data").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        let ptr = Pointer::parse("/data/0/id").unwrap();
        let (parent, last) = ptr.split_last().unwrap();
        assert_eq!((parent.as_str(), last), ("/data/0", "id"));
        let mut m = v.clone();
        *Pointer::parse("/data/0/id")
            .unwrap()
            .get_mut(&mut m)
            .unwrap() = Json::Null;
        assert_eq!(
            Pointer::parse("/data/0/id").unwrap().get(&m),
            Some(&Json::Null)
        );
    }

    /// Our tree as a serde_json value, for comparing with serde_json.
    fn to_serde(v: &Json<'_>) -> serde_json::Value {
        match v {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => serde_json::Value::Bool(*b),
            // Integers through serde_json; other numbers through Rust's correctly rounded
            // parse (serde_json's default float parse can be off by one ulp).
            Json::Number(n) => serde_json::from_str::<serde_json::Value>(n)
                .ok()
                .filter(|v| v.is_u64() || v.is_i64())
                .unwrap_or_else(|| serde_json::json!(n.parse::<f64>().unwrap())),
            Json::String(s) => serde_json::Value::String(s.to_string()),
            Json::Array(a) => serde_json::Value::Array(a.iter().map(to_serde).collect()),
            Json::Object(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), to_serde(v)))
                    .collect(),
            ),
        }
    }

    /// Equal, with floats within one part in 10^15 (serde_json's own float parse may be off
    /// by an ulp; ours keeps the literal).
    fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match (a, b) {
            (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-15
            }
            (V::Array(x), V::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (V::Object(x), V::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, a), (k2, b))| k1 == k2 && same(a, b))
            }
            _ => a == b,
        }
    }

    fn arb_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            (-1e300f64..1e300).prop_map(|f| serde_json::json!(f)),
            "\\PC*|[\\x00-\\x1f\"\\\\/]*".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Mutations of valid JSON text: the parser must never accept what serde_json refuses.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            arb_value(),
            any::<bool>(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
        )
            .prop_map(|(v, pretty, edits)| {
                let mut b = if pretty {
                    serde_json::to_vec_pretty(&v).unwrap()
                } else {
                    serde_json::to_vec(&v).unwrap()
                };
                for (at, byte, op) in edits {
                    if b.is_empty() {
                        break;
                    }
                    let i = at.index(b.len());
                    const BYTES: &[u8] = b"{}[],:\"\\ 0-1e.tfn\x01\xff";
                    let byte = BYTES[usize::from(byte) % BYTES.len()];
                    match op {
                        0 => b[i] = byte,
                        1 => b.insert(i, byte),
                        _ => {
                            b.remove(i);
                        }
                    }
                }
                b
            })
    }

    fn stream(
        b: &[u8],
        items: Option<&str>,
        id_at: &str,
        keep_ids: &[&str],
    ) -> Result<(String, Vec<Option<Scalar<'static>>>), String> {
        let items = items.map(|p| Pointer::parse(p).unwrap());
        let id_at = Pointer::parse(id_at).unwrap();
        let cap = Pointer::parse("/owner").unwrap();
        let caps = [&cap];
        let sel = Select {
            items: items.as_ref(),
            id_at: &id_at,
            captures: &caps,
        };
        let owned: &'static [u8] = Box::leak(b.to_vec().into_boxed_slice());
        canonicalize(
            owned,
            &Limits::default(),
            &sel,
            |_, id| -> Result<bool, String> {
                match id {
                    Some(Scalar::Number(n)) => Ok(keep_ids.contains(&n)),
                    Some(Scalar::String(s)) => Ok(keep_ids.contains(&&*s)),
                    Some(Scalar::Other(k)) => Err(format!("id is {k}")),
                    None => Err("no id".into()),
                }
            },
        )
        .map(|c| (String::from_utf8(c.body).unwrap(), c.captured))
        .map_err(|e| match e {
            StreamError::Json(j) => j.code().to_string(),
            StreamError::Keep(k) => k,
        })
    }

    #[test]
    fn streaming_selects_and_captures() {
        let body = br#" { "owner" : "u\u002d1", "ids": [ 1 , "2", 3, {"x":1} ], "n": [[1], {"a": [1,2]}] } "#;
        assert_eq!(
            stream(body, Some("/ids"), "", &["1", "3"]).unwrap_err(),
            "id is an object"
        );
        let body =
            br#" { "owner" : "u\u002d1", "ids": [ 1 , "2", 3, 4 ], "n": [[1], {"a": [1,2]}] } "#;
        let (out, caps) = stream(body, Some("/ids"), "", &["1", "3"]).unwrap();
        assert_eq!(out, r#"{"owner":"u-1","ids":[1,3],"n":[[1],{"a":[1,2]}]}"#);
        assert_eq!(caps, vec![Some(Scalar::String("u-1".into()))]);
        let (out, _) = stream(body, Some("/ids"), "", &[]).unwrap();
        assert_eq!(out, r#"{"owner":"u-1","ids":[],"n":[[1],{"a":[1,2]}]}"#);
        let (out, _) = stream(body, Some("/ids"), "", &["4"]).unwrap();
        assert_eq!(out, r#"{"owner":"u-1","ids":[4],"n":[[1],{"a":[1,2]}]}"#);
        // Object items with nested ids; a nested array named like the items is not them.
        let body = br#"{"items":[{"k":{"id":7},"ids":[9]},{"k":{"id":8}}]}"#;
        let (out, _) = stream(body, Some("/items"), "/k/id", &["8"]).unwrap();
        assert_eq!(out, r#"{"items":[{"k":{"id":8}}]}"#);
        assert_eq!(
            stream(body, Some("/items"), "/nope", &[]).unwrap_err(),
            "no id"
        );
        // Every parse error of the tree parser, with the same code.
        for bad in [
            &b"{\"a\":1,\"a\":2}"[..],
            b"[1,]",
            b"[1] x",
            b"\xef\xbb\xbf[]",
            b"[\"\xff\"]",
            b"{\"ids\":[1,01]}",
        ] {
            let tree = parse(bad, &Limits::default()).unwrap_err().code();
            assert_eq!(
                stream(bad, Some("/ids"), "", &["1"]).unwrap_err(),
                tree,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep =
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]";
        assert_eq!(stream(deep, None, "", &[]).unwrap_err(), "json_too_deep");
    }

    /// The plain loop the word-at-a-time scan replaces.
    fn skip_plain_bytewise(b: &[u8], i: usize) -> usize {
        let rest = b.get(i..).unwrap_or_default();
        i + rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .unwrap_or(rest.len())
    }

    #[test]
    fn skip_plain_finds_each_stop_byte_at_every_position() {
        // Every byte value at every position of a 17-byte run (two words and a tail), after
        // every kind of neighbour (a borrow out of a lower byte must not hide or fake a stop).
        for before in [b'a', 0x00, 0x1f, 0x20, b'"', b'\\', 0x7f, 0x80, 0xff] {
            for at in 0..17 {
                for c in 0..=255u8 {
                    let mut b = vec![b'x'; 17];
                    if at > 0 {
                        b[at - 1] = before;
                    }
                    b[at] = c;
                    for start in [0, at.saturating_sub(1), at] {
                        assert_eq!(
                            skip_plain_from(&b, start),
                            skip_plain_bytewise(&b, start),
                            "{b:?} from {start}"
                        );
                    }
                }
            }
        }
        assert_eq!(skip_plain_from(b"abc", 5), 5);
    }

    proptest! {
        /// The word-at-a-time scan stops where the byte loop does, on any bytes (biased
        /// towards the bytes it looks for and their neighbours) from any start.
        #[test]
        fn skip_plain_is_bytewise(
            b in proptest::collection::vec(prop_oneof![
                any::<u8>(),
                prop::sample::select(vec![b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xa0, 0xff]),
                Just(b'a'),
            ], 0..64),
            start in 0usize..70,
        ) {
            prop_assert_eq!(skip_plain_from(&b, start), skip_plain_bytewise(&b, start));
        }

        /// Long strings (several words each) with escapes and raw control bytes in them:
        /// the tree parser, the streaming writer and serde_json agree on every one.
        #[test]
        fn long_strings_agree_with_serde_json(
            parts in proptest::collection::vec(("[a-z ]{0,20}", prop::sample::select(vec!["\\\"", "\\\\", "\\n", "\\u0041", "\\ud83d\\ude00", "\u{e9}", "\u{1}", "\"", "\\", "\\x", "\t"])), 0..6),
        ) {
            let inner: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
            let doc = format!("{{\"k{inner}\":\"{inner}\",\"v\":[\"{inner}\"]}}");
            let ours = parse(doc.as_bytes(), &Limits::default());
            let theirs = serde_json::from_str::<serde_json::Value>(&doc);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => prop_assert_eq!(&to_serde(o), t),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{:?}: ours {:?}, serde_json {:?}", doc, ours.as_ref().err(), theirs.as_ref().err()),
            }
            let sel = Select { items: None, id_at: &Pointer::default(), captures: &[] };
            let streamed = canonicalize(doc.as_bytes(), &Limits::default(), &sel, |_, _| -> Result<bool, ()> { Ok(true) })
                .map(|c| c.body)
                .map_err(|e| match e { StreamError::Json(j) => j, StreamError::Keep(()) => unreachable!() });
            prop_assert_eq!(ours.map(|v| to_vec(&v)), streamed);
        }

        /// Streaming writes exactly what parse + write would, and refuses exactly what parse
        /// refuses (on valid documents and on mutated near-JSON alike).
        #[test]
        fn streaming_equals_tree(b in mutated()) {
            let tree = parse(&b, &Limits::default()).map(|v| to_vec(&v));
            let sel = Select { items: None, id_at: &Pointer::default(), captures: &[] };
            let streamed = canonicalize(&b, &Limits::default(), &sel, |_, _| -> Result<bool, ()> { Ok(true) })
                .map(|c| c.body)
                .map_err(|e| match e { StreamError::Json(j) => j.code(), StreamError::Keep(()) => "keep" });
            prop_assert_eq!(tree.map_err(|e| e.code()), streamed);
        }

        /// Every document serde_json writes, we read to the same value; what we write back,
        /// serde_json reads to the same value again; and our output is a fixed point.
        #[test]
        fn agrees_with_serde_json(v in arb_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_vec_pretty(&v).unwrap() } else { serde_json::to_vec(&v).unwrap() };
            let ours = parse(&text, &Limits { max_bytes: usize::MAX, max_depth: 64, ..Limits::default() }).unwrap();
            prop_assert_eq!(to_serde(&ours), v.clone());
            let out = to_vec(&ours);
            let theirs = serde_json::from_slice::<serde_json::Value>(&out).unwrap();
            prop_assert!(same(&theirs, &v), "{} vs {}", theirs, v);
            let again = parse(&out, &Limits { max_bytes: usize::MAX, max_depth: 64, ..Limits::default() }).unwrap();
            prop_assert_eq!(to_serde(&again), v);
            prop_assert_eq!(to_vec(&again), out);
        }

        /// On arbitrary near-JSON bytes: whatever we accept, serde_json accepts and reads the
        /// same; whatever serde_json accepts, we accept unless it has a duplicate key.
        #[test]
        fn never_more_lenient_than_serde_json(b in mutated()) {
            let ours = parse(&b, &Limits { max_bytes: usize::MAX, max_depth: 64, ..Limits::default() });
            let theirs = serde_json::from_slice::<serde_json::Value>(&b);
            match (&ours, &theirs) {
                (Ok(o), Ok(t)) => prop_assert!(same(&to_serde(o), t), "{:?}", String::from_utf8_lossy(&b)),
                (Ok(_), Err(e)) => prop_assert!(false, "we accepted what serde_json refuses: {}: {:?}", e, String::from_utf8_lossy(&b)),
                (Err(e), Ok(_)) => prop_assert_eq!(e.code(), "duplicate_key", "{:?}", String::from_utf8_lossy(&b)),
                (Err(_), Err(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    /// A tree built by hand, with a borrowed string full of characters to escape, is still
    /// written as valid JSON (the no-rescan shortcut is only for the parser's own strings).
    #[test]
    fn handmade_borrowed_strings_are_escaped() {
        let v = Json::Object(vec![(
            Cow::Borrowed("k\"ey"),
            Json::String(Cow::Borrowed("a\"b\\c\n\u{1}")),
        )]);
        let out = to_vec(&v);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"k\"ey":"a\"b\\c\n\u0001"}"#
        );
        assert_eq!(parse(&out, &Limits::default()).unwrap(), v);
    }
}
