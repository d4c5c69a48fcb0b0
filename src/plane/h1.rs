//! The lane's HTTP/1.1 codec, sans I/O: bytes in, typed results and bytes to write out. No
//! sockets, no tasks, no timers; the one clock is [`date_header`]'s (a cached `Date` value),
//! which [`AnswerEdits::date`] lets a caller replace. `plane::lane` drives it; the fuzz
//! targets (`fuzz/`, `h1_request` and `h1_answer`) and the differential test against hyper
//! (`tests/h1_differential.rs`) call it directly.
//!
//! What it handles:
//! - **The client's request head** ([`parse_head`]): parsed by `httparse` (hyper's own parser)
//!   and sorted into what the lane serves ([`Parsed::Ready`]: HTTP/1.1, an origin-form target,
//!   no body or one framed in a plain spelling ([`BodyFraming`]), no `Upgrade`, no `Expect` but
//!   a single `100-continue`, no `Connection` but a single `close`), what hyper serves
//!   ([`Parsed::Other`]: HTTP/1.0, absolute-form, `CONNECT`, another spelling of the framing, a
//!   head `httparse` refuses, …) and the two heads the lane
//!   refuses itself whatever else they hold: both `Content-Length` and `Transfer-Encoding`
//!   ([`Head::ambiguous_framing`], where hyper's server would read the body as chunked) and a
//!   target with a `#fragment` (kept in [`Head::target`]; the decision refuses it). Both close
//!   the connection after the answer.
//! - **The CRM's answer head** ([`parse_answer`]): its status (1xx but 101 skipped as
//!   [`AnswerParse::Informational`], 101 and non-statuses refused), its framing
//!   ([`Framing`]: none for HEAD, 204 and 304; a `Content-Length`; chunked when
//!   `Transfer-Encoding` ends in `chunked`; else until the CRM closes; both framings, a bad or
//!   two different lengths refused) and whether the connection can be reused; the client's
//!   answer head written from it without the hop-by-hop headers (and those the CRM's
//!   `Connection` names, never a protected one), the framing written anew, and what the caller
//!   adds ([`AnswerEdits`]).
//! - **Request bodies** ([`BodyReader`]): a length passed as it is, chunks checked by
//!   [`Chunks`], the end found (the next request starts there); fuzzed (`h1_request_body`) and
//!   tested against hyper's server (`tests/h1_differential.rs`).
//! - **Chunked bodies** ([`Chunks`], answers and requests): sizes and line ends checked exactly
//!   as they stream through, trailer fields checked as `httparse` reads them, extensions and
//!   trailers dropped, the end found.
//! - **Answer head writing** ([`status_line`], [`header`], [`number`], [`date_header`]).

use std::time::SystemTime;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING,
    UPGRADE,
};
use http::{Method, Uri};

/// Request headers parsed here at most (more: hyper's parser, then the decision's 431).
pub const MAX_HEADERS: usize = 128;
/// The CRM's answer head: at most this many headers (else 502; hyper's client takes about
/// 400 KiB of head, legacy CRMs' cookies can be large).
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// Headers `exchange::edit_upstream` may add to a forwarded request (user, roles, principal,
/// tenant, request id, `X-Forwarded-For`, `Host`): room kept for them in a parsed head's map.
const ADDED_HEADERS: usize = 7;
/// Longest chunk extension or trailer section of a chunked answer.
pub const MAX_CHUNK_META: usize = 16 * 1024;
/// Most trailer fields a chunked request body may end with: hyper's server counts them
/// against its `max_headers` (257, as `plane::run` builds it); one more is malformed (400).
pub const MAX_REQUEST_TRAILERS: usize = 257;
/// Most trailer fields a chunked answer may end with (hyper's client: its default 100).
pub const MAX_ANSWER_TRAILERS: usize = 100;

/// A request head the lane serves (or refuses itself).
#[derive(Debug)]
pub struct Head {
    /// Bytes of the head, its blank line included (the body or next request starts there).
    pub len: usize,
    pub method: Method,
    pub uri: Uri,
    /// Where the request-target is in the head's bytes, exactly as sent (`uri` has dropped a
    /// `#fragment`; the decision refuses one).
    pub target: std::ops::Range<usize>,
    pub headers: HeaderMap,
    /// The client sent `Connection: close`: its last request on this connection (or the
    /// target has a `#fragment`: refused, the connection closed, whatever follows unread).
    pub close: bool,
    /// Both `Content-Length` and `Transfer-Encoding`: refused here (400 `ambiguous_framing`)
    /// and the connection closed, as the README promises, where hyper's server would drop
    /// `Content-Length` and read the body as chunked.
    pub ambiguous_framing: bool,
    /// How the body that follows the head is framed ([`BodyFraming::None`] with
    /// [`Head::ambiguous_framing`]: it cannot be known).
    pub body: BodyFraming,
    /// `Expect: 100-continue`: `100 Continue` is written before the body is read (as hyper's
    /// server writes it when the body is first polled; never when the call is refused).
    pub expect_continue: bool,
}

/// How a request body the lane serves is framed: only the plain spellings, which hyper's
/// server and the decision's header checks (`canon::check_headers`) read the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (`Content-Length: 0`, or no framing header).
    None,
    /// One `Content-Length` of plain digits, over 0.
    Length(u64),
    /// One `Transfer-Encoding: chunked`, exactly so spelled, and no `Content-Length`.
    Chunked,
}

// Returned once per request and matched at once: boxing `Head` would cost an allocation.
/// What [`parse_head`] made of the bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// A head the lane serves (or refuses itself: [`Head::ambiguous_framing`], a fragment).
    Ready(Head),
    /// Not a whole head yet: read more.
    Partial,
    /// Not for the lane: hyper serves it.
    Other,
}

/// Parse a request head (`httparse`, as hyper does) and say whether the lane serves it.
pub fn parse_head(bytes: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    if !path.starts_with('/') {
        return Parsed::Other;
    }
    // A fragment has no place in a request-target (the URI parser drops it silently): the
    // lane refuses it itself whatever else the request holds, then closes the connection.
    let fragment = path.contains('#');
    let target = {
        let at = path.as_ptr() as usize - bytes.as_ptr() as usize;
        at..at + path.len()
    };
    // One copy of the head, shared by the target and every header value (issue 18: one
    // allocation rather than one per value; the same checks as `HeaderValue::from_bytes`).
    let shared = bytes::Bytes::copy_from_slice(&bytes[..len]);
    let share = |part: &[u8]| {
        let at = (part.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
        match at.checked_add(part.len()) {
            Some(end) if !part.is_empty() && end <= len => shared.slice(at..end),
            _ => bytes::Bytes::copy_from_slice(part),
        }
    };
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(method.as_bytes()),
        Uri::from_maybe_shared(share(path.as_bytes())),
    ) else {
        return Parsed::Other;
    };
    // No tunnels: hyper's path answers CONNECT with 405 before any decision.
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    // Room for the headers the gateway adds before forwarding (the caller's id and roles, the
    // request id, …): the map is not grown again per call.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + ADDED_HEADERS);
    let mut body = BodyFraming::None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_maybe_shared(share(h.value)),
        ) else {
            return Parsed::Other;
        };
        // The body's framing, in its plain spellings only (one header, one value): anything
        // else is hyper's to read (and the decision's to refuse), as before.
        let plain_framing = if name == CONTENT_LENGTH {
            match (plain_length(h.value), body, headers.contains_key(&name)) {
                (Some(0), BodyFraming::None, false) => true,
                (Some(n), BodyFraming::None, false) => {
                    body = BodyFraming::Length(n);
                    true
                }
                _ => false,
            }
        } else if name == TRANSFER_ENCODING {
            let single = h.value == b"chunked" && !headers.contains_key(&name);
            if single && body == BodyFraming::None && !headers.contains_key(CONTENT_LENGTH) {
                body = BodyFraming::Chunked;
            }
            single && body == BodyFraming::Chunked
        } else {
            true
        };
        // Connection-level requests are hyper's to handle, but for a single
        // `Connection: close` (the connection ends after this call's answer).
        let close = name == CONNECTION
            && h.value.eq_ignore_ascii_case(b"close")
            && !headers.contains_key(&name);
        // A single `Expect: 100-continue` as hyper's server reads it; any other expectation
        // is hyper's.
        let continues = name == EXPECT
            && h.value.eq_ignore_ascii_case(b"100-continue")
            && !headers.contains_key(&name);
        expect_continue |= continues;
        if !fragment
            && (!plain_framing
                || (name == CONNECTION && !close)
                || (name == EXPECT && !continues)
                || name == UPGRADE)
        {
            // Hyper's to serve, unless its framing is ambiguous: both framings are looked for
            // only here, so a request without these headers pays nothing for it.
            return ambiguous_framing(req.headers, len, method, uri, target);
        }
        headers.append(name, value);
    }
    let close = fragment || headers.contains_key(CONNECTION);
    Parsed::Ready(Head {
        len,
        method,
        uri,
        target,
        headers,
        close,
        ambiguous_framing: false,
        // A fragment is refused before any body is read: the connection closes unread.
        body: if fragment { BodyFraming::None } else { body },
        expect_continue,
    })
}

/// A `Content-Length` value of plain digits fitting a `u64` (what `canon::check_headers`
/// accepts; hyper's server accepts no less).
fn plain_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A request head with a body: [`Parsed::Other`] (hyper serves it), or, when it has both
/// `Content-Length` and `Transfer-Encoding` (in any order, any spelling of the name), a head
/// the lane refuses itself: hyper's server would drop `Content-Length`, read the body as
/// chunked and close after the answer; the documented answer is 400 `ambiguous_framing`.
fn ambiguous_framing(
    raw: &[httparse::Header<'_>],
    len: usize,
    method: Method,
    uri: Uri,
    target: std::ops::Range<usize>,
) -> Parsed {
    let has = |name: &str| raw.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if !(has("content-length") && has("transfer-encoding")) {
        return Parsed::Other;
    }
    let mut headers = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    Parsed::Ready(Head {
        len,
        method,
        uri,
        target,
        headers,
        // Where its body ends cannot be known: the connection ends after the answer.
        close: true,
        ambiguous_framing: true,
        body: BodyFraming::None,
        expect_continue: false,
    })
}

/// How the CRM's answer body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the CRM closes (the client's connection closes after it too).
    UntilClose,
}

/// The CRM's answer head, turned into the client's.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub framing: Framing,
    /// Bytes of the head in the connection's buffer, and bytes buffered in all.
    pub head_len: usize,
    /// Set by the caller that reads ([`parse_answer`] leaves it 0).
    pub buffered: usize,
    /// The CRM did not ask to close.
    pub reusable: bool,
}

/// What [`parse_answer`] made of the bytes.
#[derive(Debug)]
pub enum AnswerParse {
    /// Not a whole head yet: read more.
    Partial,
    /// A 1xx answer (not 101) of this many bytes: skipped, the final answer follows.
    Informational(usize),
    Final(Answer),
}

/// Headers never passed from the CRM to the client: the hop-by-hop ones (plus those the
/// answer's `Connection` names, never a protected one), and the framing, which is written anew.
pub fn not_passed(name: &str) -> bool {
    crate::canon::FIXED_HOP_BY_HOP
        .iter()
        .any(|n| n.as_str().eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("content-length")
}

/// A header the gateway sets itself: a CRM's `Connection` cannot remove it.
pub fn protected(name: &str) -> bool {
    crate::canon::PROTECTED_HEADERS
        .iter()
        .any(|n| n.as_str().eq_ignore_ascii_case(name))
}

/// What the caller changes in a forwarded answer's head beyond the hop-by-hop headers and the
/// framing (the lane: its request-id header, `[cors]`).
pub trait AnswerEdits {
    /// Drop this header of the CRM's too.
    fn drops(&self, name: &str) -> bool;
    /// Write the caller's own headers (after the CRM's, before the framing).
    fn add(&self, head: &mut Vec<u8>);
    /// Write a `Date` header (the CRM sent none).
    fn date(&self, head: &mut Vec<u8>) {
        date_header(head);
    }
}

/// Parse the CRM's answer head (`head_request`: it answers a HEAD, no body follows); the
/// client's head is written to `head`, all but its blank line: the caller ends it (a
/// `Connection: close` may go first).
pub fn parse_answer(
    bytes: &[u8],
    head_request: bool,
    edits: &impl AnswerEdits,
    head: &mut Vec<u8>,
) -> Result<AnswerParse, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(AnswerParse::Partial),
        Err(_) => return Err("the answer head is not HTTP/1.1"),
    };
    let status = resp.code.ok_or("no status")?;
    match status {
        0..=99 => return Err("the answer's status is not a status"),
        101 => return Err("101 Switching Protocols was not asked for"),
        100..=199 => return Ok(AnswerParse::Informational(len)),
        _ => {}
    }
    // Framing (RFC 9112 §6.3) and what `Connection` says.
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut reusable = resp.version == Some(1);
    let mut listed: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != v) {
                return Err("two different Content-Length values");
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in std::str::from_utf8(h.value)
                .map_err(|_| "bad Connection")?
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                if token.eq_ignore_ascii_case("close") {
                    reusable = false;
                } else if !protected(token) {
                    listed.push(token);
                }
            }
        }
    }
    let no_body = head_request || status == 204 || status == 304;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(_), Some(_)) => return Err("both Transfer-Encoding and Content-Length"),
        (false, Some(true), None) => Framing::Chunked,
        (false, Some(false), None) | (false, None, None) => Framing::UntilClose,
        (false, None, Some(n)) => Framing::Length(n),
    };
    head.clear();
    let reason = resp
        .reason
        .filter(|r| !r.is_empty())
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason());
    status_line(head, status, reason);
    let mut dated = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if not_passed(name)
            || listed.iter().any(|n| n.eq_ignore_ascii_case(name))
            || edits.drops(name)
        {
            continue;
        }
        dated |= name.eq_ignore_ascii_case("date");
        let start = head.len();
        head.extend_from_slice(name.as_bytes());
        head[start..].make_ascii_lowercase();
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    edits.add(head);
    match framing {
        Framing::Length(n) => number(head, b"content-length", n),
        Framing::Chunked => header(head, b"transfer-encoding", b"chunked"),
        // The connection closes after it (`Lane::forward` says so).
        Framing::UntilClose => {}
        // HEAD and 304 keep the length the CRM declared.
        Framing::Empty => {
            if let (Some(n), false) = (length, status == 204) {
                number(head, b"content-length", n);
            }
        }
    }
    if !dated {
        edits.date(head);
    }
    // The head is ended by `Call::end_head`.
    Ok(AnswerParse::Final(Answer {
        status,
        framing,
        head_len: len,
        buffered: 0,
        reusable: reusable && framing != Framing::UntilClose,
    }))
}

/// `HTTP/1.1 <status> <reason>` and its line end.
pub fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and its line end.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `name: <n>` and its line end.
pub fn number(out: &mut Vec<u8>, name: &[u8], n: u64) {
    header(out, name, itoa::Buffer::new().format(n).as_bytes());
}

/// `date: <IMF-fixdate>`, formatted once a second per thread (as hyper does).
pub fn date_header(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        header(out, b"date", c.1.as_bytes());
    });
}

/// Where a chunked body ends (RFC 9112 §7.1), checked as it streams through: sizes and line
/// ends must be exact; chunk extensions and trailer fields are dropped (as hyper's path does).
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
    /// Bytes left in the current chunk, or the size being read.
    size: u64,
    digits: u8,
    /// Bytes of this chunk's extensions, or of the trailer section, seen so far (bounded).
    meta: usize,
    /// Bytes of chunk data passed so far (the body's length without its framing).
    data: u64,
    /// Trailer fields seen so far.
    trailers: usize,
    /// Pass only the chunks' data on (a body read whole), not the chunked framing.
    bare: bool,
    /// A chunked request body (its trailer fields capped at [`MAX_REQUEST_TRAILERS`]), not an
    /// answer ([`MAX_ANSWER_TRAILERS`]).
    request: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    Trailer,
    /// In a trailer field's name (a token, then `:`).
    TrailerName,
    TrailerLine,
    TrailerLf,
    EndLf,
}

impl Chunks {
    /// Take in `data`; what the client receives is appended to `out`. `Ok(Some(n))`: the body
    /// ended after the first `n` bytes of `data`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + v;
                        if !self.bare {
                            out.push(b);
                        }
                    }
                    b';' if self.digits > 0 => self.state = Ext,
                    b' ' | b'\t' if self.digits > 0 => self.state = SizeWs,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err("bad chunk size"),
                },
                // Whitespace after the size: only more of it, an extension or the line end.
                SizeWs => match b {
                    b' ' | b'\t' => self.meta_byte()?,
                    b';' => self.state = Ext,
                    b'\r' => self.state = SizeLf,
                    _ => return Err("bad chunk size"),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err("bare LF in a chunk extension"),
                    _ => self.meta_byte()?,
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err("bad chunk size line end");
                    }
                    if !self.bare {
                        out.extend_from_slice(b"\r\n");
                    }
                    (self.digits, self.meta) = (0, 0);
                    self.state = if self.size == 0 { Trailer } else { Data };
                }
                Data => {
                    let n = (self.size.min((data.len() - i) as u64)) as usize;
                    out.extend_from_slice(&data[i..i + n]);
                    self.size -= n as u64;
                    self.data += n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err("chunk longer than its size");
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err("bad chunk data line end");
                    }
                    if !self.bare {
                        out.extend_from_slice(b"\r\n");
                    }
                    self.state = Size;
                }
                // Trailer fields are dropped, but checked as hyper checks them (`httparse`): a
                // token name, `:`, a value of visible bytes, spaces and tabs; no obs-fold.
                Trailer => match b {
                    b'\r' => self.state = EndLf,
                    b'\n' => return Err("bare LF in the trailer section"),
                    b' ' | b'\t' => return Err("obs-fold in the trailer section"),
                    _ if is_tchar(b) => {
                        self.meta_byte()?;
                        self.state = TrailerName;
                    }
                    _ => return Err("bad trailer field name"),
                },
                TrailerName => match b {
                    b':' => {
                        self.meta_byte()?;
                        self.state = TrailerLine;
                    }
                    _ if is_tchar(b) => self.meta_byte()?,
                    _ => return Err("bad trailer field name"),
                },
                TrailerLine => match b {
                    b'\r' => self.state = TrailerLf,
                    b'\n' => return Err("bare LF in a trailer field"),
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.meta_byte()?,
                    _ => return Err("control byte in a trailer field"),
                },
                TrailerLf => {
                    if b != b'\n' {
                        return Err("bad trailer line end");
                    }
                    self.trailers += 1;
                    let max = if self.request {
                        MAX_REQUEST_TRAILERS
                    } else {
                        MAX_ANSWER_TRAILERS
                    };
                    if self.trailers > max {
                        return Err("too many trailer fields");
                    }
                    self.state = Trailer;
                }
                EndLf => {
                    if b != b'\n' {
                        return Err("bad last line end");
                    }
                    if !self.bare {
                        out.extend_from_slice(b"\r\n");
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    /// Bytes of chunk data passed so far.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    fn meta_byte(&mut self) -> Result<(), &'static str> {
        self.meta += 1;
        if self.meta > MAX_CHUNK_META {
            return Err("chunk extensions or trailers too large");
        }
        Ok(())
    }
}

/// A token byte (RFC 9110 §5.6.2), as a field name is spelled.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request body on its way to the CRM (RFC 9112 §6.3), sans I/O: bytes of the client's
/// connection in, the bytes the CRM receives out (a length passed as it is; chunks checked
/// exactly as [`Chunks`] checks an answer's, their extensions and trailer fields dropped, as
/// hyper's path drops them), and where the body ends — the next request starts there.
#[derive(Debug)]
pub enum BodyReader {
    /// Bytes of a `Content-Length` body still to come.
    Length {
        left: u64,
        seen: u64,
    },
    Chunked(Chunks),
}

/// What [`BodyReader::feed`] made of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input taken (the rest belongs to the next request).
    pub used: usize,
    /// The body ended within them.
    pub done: bool,
}

impl BodyReader {
    /// `None` for [`BodyFraming::None`]: no body to read.
    pub fn new(framing: BodyFraming) -> Option<Self> {
        match framing {
            BodyFraming::None => None,
            BodyFraming::Length(n) => Some(BodyReader::Length { left: n, seen: 0 }),
            BodyFraming::Chunked => Some(BodyReader::Chunked(Chunks {
                request: true,
                ..Chunks::default()
            })),
        }
    }

    /// As [`BodyReader::new`], for a body read whole: only its bytes come out (a chunked
    /// body's framing, extensions and trailers dropped).
    pub fn bare(framing: BodyFraming) -> Option<Self> {
        match framing {
            BodyFraming::Chunked => Some(BodyReader::Chunked(Chunks {
                request: true,
                bare: true,
                ..Chunks::default()
            })),
            other => Self::new(other),
        }
    }

    /// Take in what the client sent; what the CRM receives is appended to `out`. An error: the
    /// body is malformed (a bad chunk size or line end, extensions or trailers over
    /// [`MAX_CHUNK_META`]): the request is refused (400) and the connection closed.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<Fed, &'static str> {
        match self {
            BodyReader::Length { left, seen } => {
                let n = (*left).min(data.len() as u64) as usize;
                out.extend_from_slice(&data[..n]);
                *left -= n as u64;
                *seen += n as u64;
                Ok(Fed {
                    used: n,
                    done: *left == 0,
                })
            }
            BodyReader::Chunked(chunks) => Ok(match chunks.feed(data, out)? {
                Some(used) => Fed { used, done: true },
                None => Fed {
                    used: data.len(),
                    done: false,
                },
            }),
        }
    }

    /// Bytes of the body (without its framing) taken so far: `listen.max_body_bytes` caps it.
    pub fn seen(&self) -> u64 {
        match self {
            BodyReader::Length { seen, .. } => *seen,
            BodyReader::Chunked(c) => c.data_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(pieces: &[&[u8]]) -> (Result<Option<usize>, &'static str>, Vec<u8>) {
        let mut c = Chunks::default();
        let mut out = Vec::new();
        let mut last = Ok(None);
        for p in pieces {
            last = c.feed(p, &mut out);
            if !matches!(last, Ok(None)) {
                break;
            }
        }
        (last, out)
    }

    #[test]
    fn chunked_bodies_pass_whole_and_end_where_they_end() {
        let body = b"5 \r\nhello\r\n6 ;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (end, out) = dechunk(&[body]);
        assert_eq!(end, Ok(Some(body.len() - 4)));
        assert_eq!(out, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        // The same, a byte at a time.
        let pieces: Vec<&[u8]> = body[..body.len() - 4].chunks(1).collect();
        let (end, out2) = dechunk(&pieces);
        assert_eq!(end, Ok(Some(1)));
        assert_eq!(out2, out);
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"g\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"ffffffffffffffff\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n",
        ] {
            assert!(
                dechunk(&[bad]).0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Unfinished is not an error: more is read.
        assert_eq!(dechunk(&[b"5\r\nhel"]).0, Ok(None));
    }

    #[test]
    fn the_lane_takes_plain_http11_requests_and_plain_body_framings() {
        let ready = |raw: &[u8]| match parse_head(raw) {
            Parsed::Ready(h) => Some((h.body, h.expect_continue)),
            _ => None,
        };
        assert_eq!(
            ready(b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n"),
            Some((BodyFraming::None, false))
        );
        assert_eq!(
            ready(b"DELETE /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"),
            Some((BodyFraming::None, false))
        );
        assert_eq!(
            ready(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab"),
            Some((BodyFraming::Length(2), false))
        );
        assert_eq!(
            ready(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0002\r\n\r\nab"),
            Some((BodyFraming::Length(2), false))
        );
        assert_eq!(
            ready(b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some((BodyFraming::Chunked, false))
        );
        assert_eq!(
            ready(
                b"PUT /a HTTP/1.1\r\nhost: x\r\nExpect: 100-Continue\r\ncontent-length: 3\r\n\r\n"
            ),
            Some((BodyFraming::Length(3), true))
        );
        assert!(matches!(
            parse_head(b"GET /a HTTP/1.1\r\nhost: x\r\nConnection: Close\r\n\r\n"),
            Parsed::Ready(Head { close: true, .. })
        ));
        assert!(matches!(
            parse_head(b"GET /a HTTP/1.1\r\nhost: x\r\n"),
            Parsed::Partial
        ));
        for other in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"GET http://x/a HTTP/1.1\r\nhost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nhost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nab",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 2, 2\r\n\r\nab",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: +2\r\n\r\nab",
            b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, x-secret\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\nconnection: close\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nexpect: 200-ok\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nexpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nupgrade: h2c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: x\r\nx: a\x01b\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(other), Parsed::Other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// Feed `pieces` to a reader for `framing`: (the last result, what the CRM gets).
    fn read_body(framing: BodyFraming, pieces: &[&[u8]]) -> (Result<Fed, &'static str>, Vec<u8>) {
        let mut reader = BodyReader::new(framing).unwrap();
        let mut out = Vec::new();
        let mut last = Ok(Fed {
            used: 0,
            done: false,
        });
        for p in pieces {
            last = reader.feed(p, &mut out);
            if !matches!(last, Ok(Fed { done: false, .. })) {
                break;
            }
        }
        (last, out)
    }

    #[test]
    fn request_bodies_end_where_their_framing_says_and_the_rest_is_the_next_request() {
        assert!(BodyReader::new(BodyFraming::None).is_none());
        let (fed, out) = read_body(BodyFraming::Length(5), &[b"he", b"lloGET /"]);
        assert_eq!(
            fed,
            Ok(Fed {
                used: 3,
                done: true
            })
        );
        assert_eq!(out, b"hello");
        let raw = b"5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\nGET /";
        let (fed, out) = read_body(BodyFraming::Chunked, &[raw]);
        assert_eq!(
            fed,
            Ok(Fed {
                used: raw.len() - 5,
                done: true
            })
        );
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        let mut reader = BodyReader::new(BodyFraming::Chunked).unwrap();
        let _ = reader.feed(b"3\r\nabc\r\n2\r\nd", &mut Vec::new());
        assert_eq!(reader.seen(), 4);
        let (fed, _) = read_body(BodyFraming::Chunked, &[b"3\r\nabcd\r\n"]);
        assert!(fed.is_err());
    }

    /// The lane's edits, minus the context: drops `x-request-id`, adds one, a fixed date.
    struct Fixed;

    impl AnswerEdits for Fixed {
        fn drops(&self, name: &str) -> bool {
            name.eq_ignore_ascii_case("x-request-id")
        }
        fn add(&self, head: &mut Vec<u8>) {
            header(head, b"x-request-id", b"r1");
        }
        fn date(&self, head: &mut Vec<u8>) {
            header(head, b"date", b"D");
        }
    }

    /// `(framing, reusable, the client's head)` of a final answer.
    fn answer(raw: &[u8], head_request: bool) -> Result<(Framing, bool, String), &'static str> {
        let mut head = Vec::new();
        match parse_answer(raw, head_request, &Fixed, &mut head)? {
            AnswerParse::Final(a) => {
                assert_eq!(a.buffered, 0);
                assert!(a.head_len <= raw.len());
                Ok((a.framing, a.reusable, String::from_utf8(head).unwrap()))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_length_passes_and_the_hop_by_hop_headers_do_not() {
        let (framing, reusable, head) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-a, keep-alive\r\nX-A: 1\r\nKeep-Alive: t=5\r\nX-Request-Id: crm\r\nX-B: 2\r\n\r\nhello",
            false,
        )
        .unwrap();
        assert_eq!((framing, reusable), (Framing::Length(5), true));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-b: 2\r\nx-request-id: r1\r\ncontent-length: 5\r\ndate: D\r\n"
        );
        // The same length twice is one length; two different ones, or a bad one, are refused.
        let twice = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(answer(twice, false).unwrap().0, Framing::Length(5));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(
                answer(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunked_is_the_last_coding_and_never_with_a_length() {
        let (framing, reusable, head) = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nDate: X\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing, reusable), (Framing::Chunked, true));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: X\r\nx-request-id: r1\r\ntransfer-encoding: chunked\r\n"
        );
        // Not chunked last: read until the CRM closes, and the connection is not reused.
        let (framing, reusable, _) = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        assert!(answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn no_framing_or_http10_or_close_means_until_close_or_not_reused() {
        let (framing, reusable, head) = answer(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        assert_eq!(head, "HTTP/1.1 200 OK\r\nx-request-id: r1\r\ndate: D\r\n");
        let (framing, reusable, _) =
            answer(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false).unwrap();
        assert_eq!((framing, reusable), (Framing::Length(1), false));
        let (framing, reusable, _) = answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: Close\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing, reusable), (Framing::Length(1), false));
    }

    #[test]
    fn head_204_and_304_have_no_body_and_keep_a_declared_length_but_204() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n";
        let (framing, _, head) = answer(raw, true).unwrap();
        assert_eq!(framing, Framing::Empty);
        assert!(head.contains("content-length: 7\r\n"), "{head}");
        let raw = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n";
        let (framing, _, head) = answer(raw, false).unwrap();
        assert_eq!(framing, Framing::Empty);
        assert!(head.contains("content-length: 7\r\n"), "{head}");
        let raw = b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n";
        let (framing, reusable, head) = answer(raw, false).unwrap();
        assert_eq!((framing, reusable), (Framing::Empty, true));
        assert!(!head.contains("content-length"), "{head}");
        // No body, so both framings are not ambiguous there.
        let raw =
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(answer(raw, false).unwrap().0, Framing::Empty);
    }

    #[test]
    fn informational_answers_are_skipped_and_101_refused() {
        let mut head = Vec::new();
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert!(matches!(
            parse_answer(raw, false, &Fixed, &mut head),
            Ok(AnswerParse::Informational(25))
        ));
        let raw = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n";
        assert!(matches!(
            parse_answer(raw, false, &Fixed, &mut head),
            Ok(AnswerParse::Informational(n)) if n == raw.len()
        ));
        for bad in [
            &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..],
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ] {
            assert!(
                parse_answer(bad, false, &Fixed, &mut head).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\nx: 1\r\n", false, &Fixed, &mut head),
            Ok(AnswerParse::Partial)
        ));
    }

    #[test]
    fn a_protected_header_named_by_connection_still_passes_and_no_reason_gets_the_canonical_one() {
        let (_, _, head) = answer(
            b"HTTP/1.1 404 \r\nconnection: x-request-id, x-c\r\nx-c: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(!head.contains("x-c"), "{head}");
    }

    #[test]
    fn both_framings_and_a_fragment_are_ready_to_be_refused_and_close() {
        let raw = b"POST /a HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        match parse_head(raw) {
            Parsed::Ready(h) => {
                assert!(h.ambiguous_framing && h.close);
                assert_eq!(h.len, raw.len());
                assert_eq!(h.headers.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        let raw = b"GET /a#frag HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n";
        match parse_head(raw) {
            Parsed::Ready(h) => {
                assert!(h.close && !h.ambiguous_framing);
                assert_eq!(&raw[h.target.clone()], b"/a#frag");
                assert_eq!(h.uri.path(), "/a");
            }
            other => panic!("{other:?}"),
        }
    }
}
