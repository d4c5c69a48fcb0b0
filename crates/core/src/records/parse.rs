//! The `records` section's own parser: the section holds millions of small objects of three
//! fixed shapes, which a generic JSON deserializer reads one field struct at a time (most of a
//! large snapshot's parse). This one reads them straight into a [`RecordsDraft`], with ids and
//! names left in the snapshot text (only escaped strings are copied), and splits a large
//! `owners` list between two threads.
//!
//! It is as strict as the serde form it replaces ([`super::RawRecords`]): standard JSON only,
//! unknown, duplicate and missing fields are errors, an id is a string or a non-negative
//! integer, `owner`, `user`, `team` and `role` may be `null` (absent). Every error names its
//! place: the byte offset (the caller turns it into a line) and the entry
//! (`records.owners[12].id`).
//!
//! Why keep a parser of our own (issue 15, decided with measurements), and why this file is
//! over 800 lines (about 1,000 before its tests: one parser, its fast paths and their
//! errors): this section is most of a large snapshot's text, and the snapshot target (1M users
//! and 10M records built in about 3 s on two cores) holds only with it: 2.60 s on a quiet
//! machine (bench/HISTORY.md, 2026-11-23). Against serde with owned strings it was 3–14%
//! faster in wall time and 0.3–0.8 s less CPU per build (HISTORY.md, "own parser for the
//! records section"); against serde with borrowed strings (`&'a str` fields, the alternative
//! the structure review proposed) serde was 34–63% slower at 1M users / 10M records
//! (2026-12-06, measured on a branch that was not kept: the comparison code is not in the
//! tree). It is tested to accept and refuse exactly what the serde form does, at every split
//! point (`reads_what_serde_reads_at_every_split`, `refuses_what_serde_refuses_with_the_place`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::{DraftPrincipal, DraftRef, OwnerRef, RecordsDraft, Span, IN_ARENA, NO_TENANT_NAME};

/// A syntax or shape error in the records section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the snapshot text.
    pub offset: usize,
    /// The entry: its list and index (none: the section itself).
    pub entry: Option<(&'static str, usize)>,
    /// The entry's field, when the error is about one.
    pub key: Option<&'static str>,
    pub message: String,
}

impl ParseError {
    /// `records`, `records.owners[12]` or `records.owners[12].id`.
    pub fn field(&self) -> String {
        match (self.entry, self.key) {
            (None, _) => "records".to_string(),
            (Some((l, i)), None) => format!("records.{l}[{i}]"),
            (Some((l, i)), Some(k)) => format!("records.{l}[{i}].{k}"),
        }
    }
}

/// An error inside an entry, before the caller adds the entry's place.
struct EntryError {
    offset: usize,
    key: Option<&'static str>,
    message: String,
}

type EntryResult<T> = Result<T, EntryError>;

/// A string as read: in place in the text (no escapes), or decoded.
enum Text<'t> {
    Plain(&'t str, usize),
    Owned(String),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Text::Plain(s, _) => s,
            Text::Owned(s) => s,
        }
    }
}

/// A field's value.
enum Val<'t> {
    Str(Text<'t>),
    /// A non-negative integer that fits in 64 bits: its digits, in place.
    Int(&'t str, usize),
    /// Any other number: the message for it as a record id.
    BadNumber(&'static str),
    Null,
}

const FRACTION: &str = "a record id is a string or an integer (no fraction, no exponent)";

struct Cursor<'t> {
    s: &'t str,
    i: usize,
}

impl<'t> Cursor<'t> {
    fn byte(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    /// The next byte that is not JSON whitespace.
    fn peek(&mut self) -> Option<u8> {
        let b = self.s.as_bytes();
        while let Some(c) = b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                return Some(*c);
            }
        }
        None
    }

    /// What is at the cursor (after [`Cursor::peek`]), for messages.
    fn found(&self) -> String {
        match self.byte() {
            None => "the end of the text".to_string(),
            Some(c) if c.is_ascii_graphic() => format!("`{}`", char::from(c)),
            Some(c) => format!("byte 0x{c:02x}"),
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> EntryResult<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(None, format!("expected {what}, found {}", self.found())))
        }
    }

    fn error(&self, key: Option<&'static str>, message: String) -> EntryError {
        EntryError {
            offset: self.i,
            key,
            message,
        }
    }

    /// A string (the cursor at its opening quote).
    fn string(&mut self) -> EntryResult<Text<'t>> {
        let b = self.s.as_bytes();
        let open = self.i;
        let start = open + 1;
        let mut j = start;
        loop {
            match b.get(j) {
                None => {
                    self.i = j;
                    return Err(self.error(None, "unterminated string".into()));
                }
                Some(b'"') => {
                    self.i = j + 1;
                    return Ok(Text::Plain(self.s.get(start..j).unwrap_or(""), start));
                }
                Some(b'\\') => break,
                Some(c) if *c < 0x20 => {
                    self.i = j;
                    return Err(self.error(
                        None,
                        "control character (\\u0000-\\u001F) found while parsing a string".into(),
                    ));
                }
                Some(_) => j += 1,
            }
        }
        // Escapes: find the closing quote, then let serde_json decode (and check) the string.
        while let Some(c) = b.get(j) {
            match c {
                b'\\' => j += 2,
                b'"' => break,
                _ => j += 1,
            }
        }
        let end = (j + 1).min(b.len());
        match serde_json::from_str::<String>(self.s.get(open..end).unwrap_or("")) {
            Ok(s) => {
                self.i = end;
                Ok(Text::Owned(s))
            }
            Err(e) => {
                self.i = open + e.column().saturating_sub(1);
                let m = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                Err(self.error(None, m.strip_suffix(&suffix).unwrap_or(&m).to_string()))
            }
        }
    }

    /// A number (JSON's grammar, strictly).
    fn number(&mut self) -> EntryResult<Val<'t>> {
        let b = self.s.as_bytes();
        let start = self.i;
        let mut j = start;
        let neg = b.get(j) == Some(&b'-');
        if neg {
            j += 1;
        }
        let digits = j;
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
            }
            _ => {
                self.i = j;
                return Err(self.error(None, "invalid number".into()));
            }
        }
        let int_end = j;
        let mut integer = true;
        if b.get(j) == Some(&b'.') {
            integer = false;
            j += 1;
            if !b.get(j).is_some_and(u8::is_ascii_digit) {
                self.i = j;
                return Err(self.error(None, "invalid number".into()));
            }
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            integer = false;
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if !b.get(j).is_some_and(u8::is_ascii_digit) {
                self.i = j;
                return Err(self.error(None, "invalid number".into()));
            }
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
        }
        if b.get(j).is_some_and(|c| c.is_ascii_digit()) {
            // A leading zero followed by digits.
            self.i = j;
            return Err(self.error(None, "invalid number".into()));
        }
        self.i = j;
        let text = self.s.get(digits..int_end).unwrap_or("");
        // As serde_json reads numbers: a negative integer, -0, a fraction, an exponent, or an
        // integer past 64 bits are not record ids.
        Ok(
            if !integer || (neg && (text == "0" || text.parse::<i64>().is_err())) {
                Val::BadNumber(FRACTION)
            } else if neg {
                Val::BadNumber("a record id is never negative")
            } else if text.parse::<u64>().is_err() {
                Val::BadNumber(FRACTION)
            } else {
                Val::Int(text, digits)
            },
        )
    }

    /// A literal (`null`, `true`, `false`) matched in full.
    fn literal(&mut self, word: &str) -> bool {
        if self.s.as_bytes().get(self.i..self.i + word.len()) == Some(word.as_bytes()) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// A field's value: a string, a number or null; anything else is an error.
    fn value(&mut self, key: &'static str) -> EntryResult<Val<'t>> {
        let r = match self.peek() {
            Some(b'"') => self.string().map(Val::Str),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'n') if self.literal("null") => Ok(Val::Null),
            Some(b't') if self.literal("true") => {
                Err(self.error(None, "invalid type: boolean `true`".into()))
            }
            Some(b'f') if self.literal("false") => {
                Err(self.error(None, "invalid type: boolean `false`".into()))
            }
            Some(b'{') => Err(self.error(None, "invalid type: an object".into())),
            Some(b'[') => Err(self.error(None, "invalid type: a list".into())),
            _ => Err(self.error(None, format!("expected a value, found {}", self.found()))),
        };
        r.map_err(|mut e| {
            e.key = Some(key);
            e
        })
    }

    /// One entry: `{"key": value, …}` with each of `keys` at most once, others refused.
    fn entry<const N: usize>(
        &mut self,
        keys: [&'static str; N],
    ) -> EntryResult<[Option<Val<'t>>; N]> {
        let mut vals: [Option<Val<'t>>; N] = std::array::from_fn(|_| None);
        self.expect(b'{', "`{` (a record entry)")?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(vals);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error(
                    None,
                    format!("expected a field name, found {}", self.found()),
                ));
            }
            let at = self.i;
            let name = self.string()?;
            let Some(k) = keys.iter().position(|k| *k == name.as_str()) else {
                self.i = at;
                return Err(self.error(
                    None,
                    format!(
                        "unknown field `{}`, expected {}",
                        name.as_str().escape_debug(),
                        one_of(&keys)
                    ),
                ));
            };
            if vals[k].is_some() {
                self.i = at;
                return Err(self.error(Some(keys[k]), format!("duplicate field `{}`", keys[k])));
            }
            self.expect(b':', "`:`")?;
            vals[k] = Some(self.value(keys[k])?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(vals);
                }
                _ => {
                    return Err(self.error(
                        None,
                        format!("expected `,` or `}}`, found {}", self.found()),
                    ))
                }
            }
        }
    }

    /// After an element of a list: `true` when another follows (the cursor past the comma),
    /// `false` at the list's end (past the `]`).
    fn next_element(&mut self) -> EntryResult<bool> {
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(b']') => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(self.error(None, format!("expected `,` or `]`, found {}", self.found()))),
        }
    }
}

fn one_of(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    format!("one of {}", keys.join(", "))
}

fn missing(c: &Cursor<'_>, key: &'static str) -> EntryError {
    c.error(None, format!("missing field `{key}`"))
}

/// A required string field.
fn required_str<'t>(
    c: &Cursor<'t>,
    v: Option<Val<'t>>,
    key: &'static str,
) -> EntryResult<Text<'t>> {
    match v {
        Some(Val::Str(t)) => Ok(t),
        None => Err(missing(c, key)),
        Some(_) => Err(c.error(Some(key), "invalid type: expected a string".into())),
    }
}

/// An optional string field (`null`: absent).
fn optional_str<'t>(
    c: &Cursor<'t>,
    v: Option<Val<'t>>,
    key: &'static str,
) -> EntryResult<Option<Text<'t>>> {
    match v {
        Some(Val::Str(t)) => Ok(Some(t)),
        None | Some(Val::Null) => Ok(None),
        Some(_) => Err(c.error(Some(key), "invalid type: expected a string".into())),
    }
}

/// A record id: a string, or a non-negative integer (its digits, flagged as a number).
fn id<'t>(c: &Cursor<'t>, v: Option<Val<'t>>, key: &'static str) -> EntryResult<(Text<'t>, bool)> {
    match v {
        Some(Val::Str(t)) => Ok((t, false)),
        Some(Val::Int(s, at)) => Ok((Text::Plain(s, at), true)),
        Some(Val::BadNumber(m)) => Err(c.error(Some(key), m.to_string())),
        Some(Val::Null) => Err(c.error(
            Some(key),
            "invalid type: null, expected a record id: a string or a non-negative integer".into(),
        )),
        None => Err(missing(c, key)),
    }
}

impl<'t> RecordsDraft<'t> {
    /// Where a string lives: in place in the text (offsets fit in 32 bits), else copied into
    /// the arena (an arena past 4 GiB, never seen in practice, stores it empty, which
    /// resolution then refuses).
    fn span(&mut self, t: &Text<'t>) -> Span {
        if let Text::Plain(s, at) = t {
            if at + s.len() <= u32::MAX as usize && s.len() < IN_ARENA as usize {
                return Span {
                    off: *at as u32,
                    len: s.len() as u32,
                };
            }
        }
        let s = t.as_str();
        let off = self.arena.len();
        if off + s.len() > u32::MAX as usize || s.len() >= IN_ARENA as usize {
            return Span {
                off: 0,
                len: IN_ARENA,
            };
        }
        self.arena.push_str(s);
        Span {
            off: off as u32,
            len: s.len() as u32 | IN_ARENA,
        }
    }

    fn draft_ref(&mut self, record_type: &Text<'t>, id: &(Text<'t>, bool)) -> DraftRef {
        // Entries of one type come in runs: the previous entry's type first.
        let name = record_type.as_str();
        let t = match self.last_type {
            Some(t)
                if self
                    .types
                    .names
                    .get(t as usize)
                    .is_some_and(|n| **n == *name) =>
            {
                t
            }
            _ => self.types.intern(name),
        };
        self.last_type = Some(t);
        DraftRef {
            record_type: t,
            span: self.span(&id.0),
            number: id.1,
        }
    }

    /// The type of a compact entry, interned (the previous entry's first; a related entry's
    /// parent type is compared with the previous parent type).
    fn compact_type(&mut self, name: &str, parent: bool) -> u32 {
        let last = if parent {
            self.last_parent_type
        } else {
            self.last_type
        };
        match last {
            Some(t)
                if self
                    .types
                    .names
                    .get(t as usize)
                    .is_some_and(|n| **n == *name) =>
            {
                t
            }
            _ => {
                let t = self.types.intern(name);
                if parent {
                    self.last_parent_type = Some(t);
                } else {
                    self.last_type = Some(t);
                }
                t
            }
        }
    }

    /// An owner entry written as generators write it, `{"type":"lead","id":"17","owner":"u1"}`
    /// (these keys in this order, `id` a string or an integer, `owner` absent or a string; no
    /// whitespace, no escapes), read at a glance. `None`, the cursor unmoved, for any other
    /// writing: the general path reads it (and judges it).
    fn compact_owner(&mut self, c: &mut Cursor<'t>) -> Option<()> {
        let b = c.s.as_bytes();
        let mut j = c.i;
        lit(b, &mut j, b"{\"type\":\"")?;
        let ty = plain(b, &mut j)?;
        lit(b, &mut j, b",\"id\":")?;
        let (id, number) = compact_id(b, &mut j)?;
        let owner = match lit(b, &mut j, b",\"owner\":\"") {
            Some(()) => Some(plain(b, &mut j)?),
            None => None,
        };
        // A tenant snapshot's entries end with their tenant (`,"tenant":"o1"`), as the bench's
        // generator and the database source write them: without this they took the general
        // path, 10M times at the scale target.
        let tenant = match lit(b, &mut j, b",\"tenant\":\"") {
            Some(()) => Some(plain(b, &mut j)?),
            None => None,
        };
        lit(b, &mut j, b"}")?;
        let t = self.compact_type(c.s.get(ty.0 as usize..(ty.0 + ty.1) as usize)?, false);
        if let Some((off, len)) = tenant {
            let (off, end) = (off as usize, (off + len) as usize);
            // The span is between two quotes of a `str`: character boundaries, so the `str`
            // is sliced only for a new name.
            let src = c.s;
            let k = self
                .tenants
                .intern_bytes(b.get(off..end)?, || src.get(off..end).unwrap_or(""));
            if self.owner_tenants.len() != self.owners.len() {
                self.owner_tenants.resize(self.owners.len(), NO_TENANT_NAME);
            }
            self.owner_tenants.push(k);
        }
        let owner = owner.map_or(OwnerRef::None, |(off, len)| {
            OwnerRef::Text(Span { off, len })
        });
        self.owners.push((
            DraftRef {
                record_type: t,
                span: Span {
                    off: id.0,
                    len: id.1,
                },
                number,
            },
            owner,
        ));
        c.i = j;
        Some(())
    }

    /// A related entry written as generators write it (see [`RecordsDraft::compact_owner`]):
    /// `{"type":"note","id":"5","parent_type":"lead","parent_id":"17"}`.
    fn compact_related(&mut self, c: &mut Cursor<'t>) -> Option<()> {
        let b = c.s.as_bytes();
        let mut j = c.i;
        lit(b, &mut j, b"{\"type\":\"")?;
        let ty = plain(b, &mut j)?;
        lit(b, &mut j, b",\"id\":")?;
        let (id, number) = compact_id(b, &mut j)?;
        lit(b, &mut j, b",\"parent_type\":\"")?;
        let pty = plain(b, &mut j)?;
        lit(b, &mut j, b",\"parent_id\":")?;
        let (pid, pnumber) = compact_id(b, &mut j)?;
        lit(b, &mut j, b"}")?;
        let t = self.compact_type(c.s.get(ty.0 as usize..(ty.0 + ty.1) as usize)?, false);
        let pt = self.compact_type(c.s.get(pty.0 as usize..(pty.0 + pty.1) as usize)?, true);
        let r = |record_type, (off, len): (u32, u32), number| DraftRef {
            record_type,
            span: Span { off, len },
            number,
        };
        self.related.push((r(t, id, number), r(pt, pid, pnumber)));
        c.i = j;
        Some(())
    }

    fn owner_entry(&mut self, c: &mut Cursor<'t>) -> EntryResult<()> {
        let [t, i, o, tn] = c.entry(["type", "id", "owner", "tenant"])?;
        let t = required_str(c, t, "type")?;
        let i = id(c, i, "id")?;
        let o = optional_str(c, o, "owner")?;
        let tn = optional_str(c, tn, "tenant")?;
        if let Some(tn) = tn {
            let k = self.tenants.intern(tn.as_str());
            self.owner_tenants.resize(self.owners.len(), NO_TENANT_NAME);
            self.owner_tenants.push(k);
        }
        let r = self.draft_ref(&t, &i);
        let owner = match o {
            None => OwnerRef::None,
            Some(name) => match self.span(&name) {
                s if s.len == IN_ARENA => OwnerRef::Interned(self.users.intern(name.as_str())),
                s => OwnerRef::Text(s),
            },
        };
        self.owners.push((r, owner));
        Ok(())
    }

    fn share_entry(&mut self, c: &mut Cursor<'t>) -> EntryResult<()> {
        let [t, i, u, tm, rl] = c.entry(["type", "id", "user", "team", "role"])?;
        let t = required_str(c, t, "type")?;
        let i = id(c, i, "id")?;
        let u = optional_str(c, u, "user")?;
        let tm = optional_str(c, tm, "team")?;
        let rl = optional_str(c, rl, "role")?;
        let r = self.draft_ref(&t, &i);
        let p = match (u, tm, rl) {
            (Some(u), None, None) => Ok(DraftPrincipal::User(self.users.intern(u.as_str()))),
            (None, Some(t), None) => Ok(DraftPrincipal::Team(self.teams.intern(t.as_str()))),
            (None, None, Some(r)) => Ok(DraftPrincipal::Role(self.roles.intern(r.as_str()))),
            _ => Err("a share names exactly one of user, team, role"),
        };
        self.shares.push((r, p));
        Ok(())
    }

    fn related_entry(&mut self, c: &mut Cursor<'t>) -> EntryResult<()> {
        let [t, i, pt, pi] = c.entry(["type", "id", "parent_type", "parent_id"])?;
        let t = required_str(c, t, "type")?;
        let i = id(c, i, "id")?;
        let pt = required_str(c, pt, "parent_type")?;
        let pi = id(c, pi, "parent_id")?;
        let child = self.draft_ref(&t, &i);
        let parent = self.draft_ref(&pt, &pi);
        self.related.push((child, parent));
        Ok(())
    }

    /// Entries of one list from the cursor (at an entry) to the list's end (past its `]`).
    /// `handover`: where another thread started reading (see [`RecordsDraft::list`]) and the
    /// flag that tells it to give up; returns `Ok(true)` when an entry starts exactly there
    /// (the cursor left on it). `cancel`: this thread is that other one, and gives up when
    /// told.
    fn entries(
        &mut self,
        c: &mut Cursor<'t>,
        list: List,
        handover: Option<(usize, &AtomicBool)>,
        cancel: Option<&AtomicBool>,
    ) -> Result<bool, ParseError> {
        let mut index = 0usize;
        let mut handover = handover;
        let start = c.i;
        loop {
            if index == RESERVE_AFTER {
                self.reserve_for_rest(list, c.i - start, c.s.len() - c.i);
            }
            if let Some((at, flag)) = handover {
                c.peek();
                if c.i == at {
                    return Ok(true);
                }
                if c.i > at {
                    flag.store(true, Ordering::Relaxed);
                    handover = None;
                }
            }
            if index % 1024 == 0 && cancel.is_some_and(|f| f.load(Ordering::Relaxed)) {
                return Ok(false);
            }
            let r = match list {
                List::Owners if self.compact_owner(c).is_some() => Ok(()),
                List::Owners => self.owner_entry(c),
                List::Shares => self.share_entry(c),
                List::Related if self.compact_related(c).is_some() => Ok(()),
                List::Related => self.related_entry(c),
            };
            match r.and_then(|()| c.next_element()) {
                Ok(true) => index += 1,
                Ok(false) => {
                    if let Some((_, flag)) = handover {
                        flag.store(true, Ordering::Relaxed);
                    }
                    return Ok(false);
                }
                Err(e) => {
                    if let Some((_, flag)) = handover {
                        flag.store(true, Ordering::Relaxed);
                    }
                    return Err(ParseError {
                        offset: e.offset,
                        entry: Some((list.name(), index)),
                        key: e.key,
                        message: e.message,
                    });
                }
            }
        }
    }

    /// Room for the rest of a long list, estimated from the entries read so far (`read`
    /// bytes for [`RESERVE_AFTER`] entries) and the text left (`rest` bytes): a list grown by
    /// doubling copied itself into fresh pages at each step, and the second reader's entries
    /// were appended to a list that then grew again (`perf`: a third of the build's page
    /// faults with 10,000 tenants). Room never used is address space, not memory, where the
    /// system overcommits (Linux's default: its pages are never touched), and it is at most
    /// about the bytes of text left (an entry is counted at least its own size); both
    /// readers of a split list reserve up to the end of the text, so
    /// the first one's list also holds the second one's entries when they are appended. Best
    /// effort: when the room cannot be had, the list grows as before.
    fn reserve_for_rest(&mut self, list: List, read: usize, rest: usize) {
        if rest < RESERVE_FROM_BYTES {
            return;
        }
        // At least an entry's own size: the room is then at most about the text left, in
        // bytes, whatever the first entries were.
        let held = match list {
            List::Owners => std::mem::size_of::<(DraftRef, OwnerRef)>() + 4,
            List::Shares => std::mem::size_of::<(DraftRef, Result<DraftPrincipal, &str>)>(),
            List::Related => std::mem::size_of::<(DraftRef, DraftRef)>(),
        };
        let per_entry = read.div_ceil(RESERVE_AFTER).max(held);
        let more = rest / per_entry;
        let more = more + more / 16;
        let _ = match list {
            List::Owners => {
                if !self.owner_tenants.is_empty() {
                    let _ = self.owner_tenants.try_reserve(more);
                }
                self.owners.try_reserve(more)
            }
            List::Shares => self.shares.try_reserve(more),
            List::Related => self.related.try_reserve(more),
        };
    }

    fn list_len(&self, list: List) -> usize {
        match list {
            List::Owners => self.owners.len(),
            List::Shares => self.shares.len(),
            List::Related => self.related.len(),
        }
    }

    /// A list (the cursor at its `[`). A large `owners` list is read by two threads: this one
    /// from the start, another from an entry about `split` bytes in; the other's entries are
    /// taken when this one reaches exactly that entry (both then read the same text from
    /// there, and an entry's parse depends on nothing before it), else they are dropped.
    fn list(
        &mut self,
        c: &mut Cursor<'t>,
        list: List,
        split: Option<usize>,
    ) -> Result<(), ParseError> {
        if c.peek() != Some(b'[') {
            let m = format!(
                "{}: expected a list of record entries, found {}",
                list.name(),
                c.found()
            );
            return Err(ParseError {
                offset: c.i,
                entry: None,
                key: None,
                message: m,
            });
        }
        c.i += 1;
        if c.peek() == Some(b']') {
            c.i += 1;
            return Ok(());
        }
        let Some(split) = split.and_then(|s| entry_start_after(c.s, c.i + s)) else {
            return self.entries(c, list, None, None).map(|_| ());
        };
        let src = self.src;
        let give_up = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let give_up = &give_up;
            let other = std::thread::Builder::new().spawn_scoped(scope, move || {
                let mut d = RecordsDraft::new(src);
                let mut oc = Cursor { s: src, i: split };
                let r = d.entries(&mut oc, list, None, Some(give_up));
                (d, oc.i, r)
            });
            let Ok(other) = other else {
                return self.entries(c, list, None, None).map(|_| ());
            };
            if !self.entries(c, list, Some((split, give_up)), None)? {
                return Ok(()); // the list ended elsewhere: the other read is not used
            }
            let mine = self.list_len(list);
            let Ok((d, end, r)) = other.join() else {
                // The other thread failed (it never should): read the rest here.
                return self.entries(c, list, None, None).map(|_| ());
            };
            if let Err(mut e) = r {
                if let Some((l, i)) = e.entry {
                    e.entry = Some((l, mine + i));
                }
                return Err(e);
            }
            self.adopt(&d);
            c.i = end;
            Ok(())
        })
    }

    /// Take the entries another draft over the same text read (its types, names and escaped
    /// strings renumbered into this one).
    fn adopt(&mut self, d: &RecordsDraft<'t>) {
        let types: Vec<u32> = d.types.names.iter().map(|n| self.types.intern(n)).collect();
        self.last_type = None;
        let same_types = types.iter().enumerate().all(|(i, t)| *t as usize == i);
        // The other draft's owner tenants, renumbered, in line with its owners.
        if !d.owner_tenants.is_empty() {
            let names: Vec<u32> = d
                .tenants
                .names
                .iter()
                .map(|n| self.tenants.intern(n))
                .collect();
            self.owner_tenants.resize(self.owners.len(), NO_TENANT_NAME);
            for k in 0..d.owners.len() {
                let t = d.owner_tenants.get(k).copied().unwrap_or(NO_TENANT_NAME);
                self.owner_tenants
                    .push(names.get(t as usize).copied().unwrap_or(NO_TENANT_NAME));
            }
        }
        if same_types
            && d.arena.is_empty()
            && d.users.names.is_empty()
            && d.teams.names.is_empty()
            && d.roles.names.is_empty()
        {
            // Nothing to renumber (the usual case: one type, names in the text).
            self.owners.extend_from_slice(&d.owners);
            self.shares.extend_from_slice(&d.shares);
            self.related.extend_from_slice(&d.related);
            return;
        }
        let move_ref = |me: &mut Self, r: &DraftRef| DraftRef {
            record_type: types
                .get(r.record_type as usize)
                .copied()
                .unwrap_or(u32::MAX),
            span: me.move_span(d, r.span),
            number: r.number,
        };
        self.owners.reserve(d.owners.len());
        for (r, o) in &d.owners {
            let r = move_ref(self, r);
            let o = match o {
                OwnerRef::None => OwnerRef::None,
                OwnerRef::Text(s) => OwnerRef::Text(self.move_span(d, *s)),
                OwnerRef::Interned(i) => {
                    let name = d.users.names.get(*i as usize).map_or("", |n| &**n);
                    OwnerRef::Interned(self.users.intern(name))
                }
            };
            self.owners.push((r, o));
        }
        for (r, p) in &d.shares {
            let r = move_ref(self, r);
            let name = |names: &[Box<str>], i: u32| -> String {
                names
                    .get(i as usize)
                    .map_or(String::new(), |n| n.to_string())
            };
            let p = match *p {
                Ok(DraftPrincipal::User(u)) => Ok(DraftPrincipal::User(
                    self.users.intern(&name(&d.users.names, u)),
                )),
                Ok(DraftPrincipal::Team(t)) => Ok(DraftPrincipal::Team(
                    self.teams.intern(&name(&d.teams.names, t)),
                )),
                Ok(DraftPrincipal::Role(x)) => Ok(DraftPrincipal::Role(
                    self.roles.intern(&name(&d.roles.names, x)),
                )),
                Err(m) => Err(m),
            };
            self.shares.push((r, p));
        }
        for (a, b) in &d.related {
            let a = move_ref(self, a);
            let b = move_ref(self, b);
            self.related.push((a, b));
        }
    }

    fn move_span(&mut self, d: &RecordsDraft<'t>, s: Span) -> Span {
        if s.len & IN_ARENA == 0 || s.len == IN_ARENA {
            return s;
        }
        let text = d.str_of(s).to_string();
        self.span(&Text::Owned(text))
    }
}

/// `lit` at `j` (then past it).
fn lit(b: &[u8], j: &mut usize, lit: &[u8]) -> Option<()> {
    (b.get(*j..*j + lit.len())? == lit).then(|| *j += lit.len())
}

/// A string without escapes or control characters, `j` past its opening quote (then past its
/// closing one): its offset and length, when they fit a [`Span`].
fn plain(b: &[u8], j: &mut usize) -> Option<(u32, u32)> {
    let start = *j;
    loop {
        match *b.get(*j)? {
            b'"' => break,
            b'\\' => return None,
            c if c < 0x20 => return None,
            _ => *j += 1,
        }
    }
    let span = (u32::try_from(start).ok()?, u32::try_from(*j - start).ok()?);
    *j += 1;
    (span.1 < IN_ARENA && u32::try_from(*j).is_ok()).then_some(span)
}

/// A compact id: a plain string, or an integer of at most 19 digits (so it fits in 64 bits)
/// followed by `,` or `}`; its span and whether it is a number.
fn compact_id(b: &[u8], j: &mut usize) -> Option<((u32, u32), bool)> {
    if b.get(*j) == Some(&b'"') {
        *j += 1;
        return plain(b, j).map(|s| (s, false));
    }
    let start = *j;
    match *b.get(*j)? {
        b'0' => *j += 1,
        b'1'..=b'9' => {
            while b.get(*j).is_some_and(u8::is_ascii_digit) {
                *j += 1;
            }
        }
        _ => return None,
    }
    if *j - start > 19 || !matches!(b.get(*j), Some(b',' | b'}')) {
        return None;
    }
    Some(((u32::try_from(start).ok()?, (*j - start) as u32), true))
}

/// The lists of the section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Owners,
    Shares,
    Related,
}

impl List {
    fn name(self) -> &'static str {
        match self {
            List::Owners => "owners",
            List::Shares => "shares",
            List::Related => "related",
        }
    }
}

/// The first place at or after `from` that looks like the start of a list entry: a `{` whose
/// previous byte other than whitespace is a `,`. Only a guess (it may be inside a string):
/// the first reader confirms it by reaching exactly there.
fn entry_start_after(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut j = from;
    while j < b.len() {
        if b[j] == b'{' {
            let mut k = j;
            while k > 0 && matches!(b[k - 1], b' ' | b'\n' | b'\r' | b'\t') {
                k -= 1;
            }
            if k > 0 && b[k - 1] == b',' {
                return Some(j);
            }
        }
        j += 1;
    }
    None
}

/// A list's room for the rest of the text is reserved after this many entries
/// ([`RecordsDraft::reserve_for_rest`]), when at least this much text is left.
const RESERVE_AFTER: usize = 512;
const RESERVE_FROM_BYTES: usize = 1 << 20;

/// Owners lists past this size (bytes of text from the list's start to the end of the text)
/// are read by two threads (lower under test, so the tests' generated snapshots take that
/// path).
const SPLIT_OWNERS_ABOVE: usize = if cfg!(test) { 64 << 10 } else { 16 << 20 };

/// Parse the `records` value at `at` in `text`: `null` (no section) or the section. Returns
/// the draft and the offset just past the value.
pub(crate) fn parse_records(
    text: &str,
    at: usize,
) -> Result<(Option<RecordsDraft<'_>>, usize), ParseError> {
    // Owners usually hold most of what is left (shares and related are shorter lists): the
    // second thread starts 40% in.
    parse_records_split(text, at, &|rest| {
        (rest > SPLIT_OWNERS_ABOVE).then_some(rest / 5 * 2)
    })
}

/// [`parse_records`], with where to split the owners list (bytes into the rest of the text
/// from the list's start; `None`: one thread) chosen by `split` (tests choose every place).
fn parse_records_split<'t>(
    text: &'t str,
    at: usize,
    split: &dyn Fn(usize) -> Option<usize>,
) -> Result<(Option<RecordsDraft<'t>>, usize), ParseError> {
    let mut c = Cursor { s: text, i: at };
    let err = |c: &Cursor<'_>, message: String| ParseError {
        offset: c.i,
        entry: None,
        key: None,
        message,
    };
    match c.peek() {
        Some(b'n') if c.literal("null") => return Ok((None, c.i)),
        Some(b'{') => c.i += 1,
        _ => {
            let m = format!(
                "expected the records section (an object with owners, shares, related), found {}",
                c.found()
            );
            return Err(err(&c, m));
        }
    }
    let mut draft = RecordsDraft::new(text);
    let mut seen = [false; 3];
    if c.peek() == Some(b'}') {
        c.i += 1;
        return Ok((Some(draft), c.i));
    }
    loop {
        if c.peek() != Some(b'"') {
            let m = format!("expected a field name, found {}", c.found());
            return Err(err(&c, m));
        }
        let at = c.i;
        let name = c.string().map_err(|e| ParseError {
            offset: e.offset,
            entry: None,
            key: None,
            message: e.message,
        })?;
        let list = match name.as_str() {
            "owners" => List::Owners,
            "shares" => List::Shares,
            "related" => List::Related,
            other => {
                c.i = at;
                let m = format!(
                    "unknown field `{}`, expected one of `owners`, `shares`, `related`",
                    other.escape_debug()
                );
                return Err(err(&c, m));
            }
        };
        let slot = list as usize;
        if seen[slot] {
            c.i = at;
            return Err(err(&c, format!("duplicate field `{}`", list.name())));
        }
        seen[slot] = true;
        c.expect(b':', "`:`").map_err(|e| err(&c, e.message))?;
        c.peek();
        let split = (list == List::Owners && text.len() <= u32::MAX as usize)
            .then(|| split(text.len() - c.i))
            .flatten();
        draft.list(&mut c, list, split)?;
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b'}') => {
                c.i += 1;
                return Ok((Some(draft), c.i));
            }
            _ => {
                let m = format!("expected `,` or `}}`, found {}", c.found());
                return Err(err(&c, m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{RawId, RawOwner, RawRecords, RawRelated, RawShare};

    /// The draft as the serde form (ids as written; a share naming not exactly one principal
    /// has none).
    fn as_raw(d: &RecordsDraft<'_>) -> RawRecords {
        let ty = |r: &DraftRef| d.types.names[r.record_type as usize].to_string();
        let id = |r: &DraftRef| {
            if r.number {
                RawId::Number(d.text(r).parse().unwrap())
            } else {
                RawId::Text(d.text(r).to_string())
            }
        };
        RawRecords {
            owners: d
                .owners
                .iter()
                .map(|(r, o)| RawOwner {
                    record_type: ty(r),
                    id: id(r),
                    owner: (!matches!(o, OwnerRef::None)).then(|| d.owner_name(o).to_string()),
                    tenant: None,
                })
                .zip((0..).map(|i| d.owner_tenants.get(i).copied()))
                .map(|(mut o, k)| {
                    o.tenant = k
                        .filter(|k| *k != NO_TENANT_NAME)
                        .map(|k| d.tenants.names[k as usize].to_string());
                    o
                })
                .collect(),
            shares: d
                .shares
                .iter()
                .map(|(r, p)| {
                    let name = |names: &[Box<str>], i: u32| Some(names[i as usize].to_string());
                    let (user, team, role) = match p {
                        Ok(DraftPrincipal::User(u)) => (name(&d.users.names, *u), None, None),
                        Ok(DraftPrincipal::Team(t)) => (None, name(&d.teams.names, *t), None),
                        Ok(DraftPrincipal::Role(x)) => (None, None, name(&d.roles.names, *x)),
                        Err(_) => (None, None, None),
                    };
                    RawShare {
                        record_type: ty(r),
                        id: id(r),
                        user,
                        team,
                        role,
                    }
                })
                .collect(),
            related: d
                .related
                .iter()
                .map(|(c, p)| RawRelated {
                    record_type: ty(c),
                    id: id(c),
                    parent_type: ty(p),
                    parent_id: id(p),
                })
                .collect(),
        }
    }

    /// serde's reading of a section, shares naming not exactly one principal cleared.
    fn serde_reading(section: &str) -> RawRecords {
        let mut r: RawRecords = serde_json::from_str(section).unwrap();
        for s in &mut r.shares {
            let n = [&s.user, &s.team, &s.role]
                .iter()
                .filter(|x| x.is_some())
                .count();
            if n != 1 {
                (s.user, s.team, s.role) = (None, None, None);
            }
        }
        r
    }

    fn parse_at(text: &str, split: Option<usize>) -> Result<RawRecords, ParseError> {
        let (d, end) = parse_records_split(text, 0, &|_| split)?;
        assert_eq!(text[end..].trim(), "", "the whole value read");
        Ok(d.map(|d| as_raw(&d)).unwrap_or_default())
    }

    const SECTION: &str = r#"{ "related": [ {"parent_id": 4, "parent_type": "lead", "id": "n\"1", "type": "note"},
  {"type":"note","id":"5","parent_type":"lead","parent_id":17},{"type":"task","id":6,"parent_type":"lead","parent_id":"1"} ],
  "owners" : [
    {"type": "lead", "id": "1", "owner": "u-rep1"},
    {"type":"lead","id":2,"owner":null},
    { "id" : 18446744073709551615 , "type" : "lead" },
    {"type": "lead", "id": "x,{y", "owner": "u,{\"q"},
    {"type": "contact", "id": "ACME-1", "owner": "\u0061"},
    {"owner": "u-é", "type": "d\u00e9al", "id": "0"},
    {"type": "lead", "id": 0, "owner": "u-rep2"},
    {"type":"lead","id":"},{","owner":"u-a"},
    {"type":"lead","id":12345678901234567890},
    {"type":"lead","id":"7"},
    {"type":"lead","id":"8","owner":"u\u002db"},
    {"type":"lead","id":"9","owner":"u-a","tenant":"org-1"},
    {"type":"lead","id":10,"tenant":"org-2"},
    {"type": "lead", "id": "11", "owner": "u-a", "tenant": "org\u002d1"},
    {"type":"lead","id":"12","owner":"u-b","tenant":"org-2"}
  ],
  "shares": [
    {"type": "lead", "id": "1", "user": "u-rep2"},
    {"type": "lead", "id": 2, "team": "east", "role": null},
    {"type": "lead", "id": "1", "role": "r"},
    {"type": "lead", "id": "1", "user": "a", "team": "b"},
    {"type": "lead", "id": "1"}
  ]
}"#;

    /// The same reading as serde's, whatever the split of the owners list (every byte tried:
    /// splits inside strings that look like an entry's start included).
    #[test]
    fn reads_what_serde_reads_at_every_split() {
        let want = serde_reading(SECTION);
        assert_eq!((want.owners.len(), want.related.len()), (15, 3));
        assert_eq!(want.owners.iter().filter(|o| o.tenant.is_some()).count(), 4);
        assert_eq!(parse_at(SECTION, None).unwrap(), want);
        for split in 1..SECTION.len() {
            assert_eq!(
                parse_at(SECTION, Some(split)).unwrap(),
                want,
                "split {split}"
            );
        }
        assert_eq!(parse_at("null", None).unwrap(), RawRecords::default());
        assert_eq!(parse_at(" {} ", None).unwrap(), RawRecords::default());
        assert_eq!(
            parse_at(r#"{"owners": [], "shares": [ ], "related":[]}"#, None).unwrap(),
            RawRecords::default()
        );
    }

    /// Ids and names without escapes are read in place; escaped ones are decoded.
    #[test]
    fn plain_strings_stay_in_the_text() {
        let text = r#"{"owners": [{"type": "lead", "id": "17", "owner": "u\u0031"}]}"#;
        let (d, _) = parse_records_split(text, 0, &|_| None).unwrap();
        let d = d.unwrap();
        let (r, o) = d.owners[0];
        assert_eq!(r.span.len & IN_ARENA, 0);
        assert_eq!(&text[r.span.off as usize..][..2], "17");
        assert!(matches!(o, OwnerRef::Text(s) if s.len & IN_ARENA != 0));
        assert_eq!(d.owner_name(&o), "u1");
    }

    fn error(section: &str, split: Option<usize>) -> ParseError {
        match parse_records_split(section, 0, &|_| split) {
            Ok(_) => panic!("accepted: {section}"),
            Err(e) => e,
        }
    }

    #[test]
    fn refuses_what_serde_refuses_with_the_place() {
        let entry = |i: usize| format!(r#"{{"type": "lead", "id": "{i}", "owner": "u"}}"#);
        let owners = |bad: &str| {
            let mut v: Vec<String> = (0..40).map(entry).collect();
            v[30] = bad.to_string();
            format!("{{\"owners\": [\n{}\n]}}", v.join(",\n"))
        };
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            (
                r#"{"type": "lead", "id": "1", "id": "2"}"#,
                "owners",
                Some("id"),
                "duplicate field `id`",
            ),
            (
                r#"{"type": "lead", "id": "1", "extra": 1}"#,
                "owners",
                None,
                "unknown field `extra`",
            ),
            (r#"{"type": "lead"}"#, "owners", None, "missing field `id`"),
            (r#"{"id": "1"}"#, "owners", None, "missing field `type`"),
            (
                r#"{"type": 5, "id": "1"}"#,
                "owners",
                Some("type"),
                "expected a string",
            ),
            (
                r#"{"type": "lead", "id": -1}"#,
                "owners",
                Some("id"),
                "never negative",
            ),
            (
                r#"{"type": "lead", "id": -0}"#,
                "owners",
                Some("id"),
                "no fraction",
            ),
            (
                r#"{"type": "lead", "id": 1.5}"#,
                "owners",
                Some("id"),
                "no fraction",
            ),
            (
                r#"{"type": "lead", "id": 1e3}"#,
                "owners",
                Some("id"),
                "no fraction",
            ),
            (
                r#"{"type": "lead", "id": 18446744073709551616}"#,
                "owners",
                Some("id"),
                "no fraction",
            ),
            (
                r#"{"type": "lead", "id": 01}"#,
                "owners",
                Some("id"),
                "invalid number",
            ),
            (
                r#"{"type": "lead", "id": true}"#,
                "owners",
                Some("id"),
                "boolean",
            ),
            (
                r#"{"type": "lead", "id": null}"#,
                "owners",
                Some("id"),
                "null",
            ),
            (
                r#"{"type": "lead", "id": ["1"]}"#,
                "owners",
                Some("id"),
                "a list",
            ),
            (
                r#"{"type": "lead", "id": "1", "owner": 7}"#,
                "owners",
                Some("owner"),
                "expected a string",
            ),
            (
                r#"{"type": "lead", "id": "1\u"}"#,
                "owners",
                Some("id"),
                "string",
            ),
            (
                "{\"type\": \"lead\", \"id\": \"1\t\"}",
                "owners",
                Some("id"),
                "control character",
            ),
            (
                r#"{"type": "lead", "id": "1",}"#,
                "owners",
                None,
                "expected a field name",
            ),
            (
                r#"{"type": "lead" "id": "1"}"#,
                "owners",
                None,
                "expected `,` or `}`",
            ),
            (r#"["lead", "1"]"#, "owners", None, "expected `{`"),
        ];
        for (bad, list, key, msg) in cases {
            let text = owners(bad);
            let line = 32; // the section's first line, then 30 entries
            for split in [None, Some(text.len() / 2), Some(text.len() / 4), Some(3)] {
                let e = error(&text, split);
                assert_eq!(e.entry, Some((*list, 30)), "{bad} (split {split:?}): {e:?}");
                assert_eq!(e.key, *key, "{bad}: {e:?}");
                assert!(e.message.contains(msg), "{bad}: {e:?}");
                assert_eq!(crate::error::line_of(&text, e.offset), line, "{bad}: {e:?}");
            }
        }
        // The list's last entry: its index whichever thread read it.
        let mut v: Vec<String> = (0..40).map(entry).collect();
        v.push(r#"{"type": "lead", "id": "1",}"#.into());
        let text = format!("{{\"owners\": [\n{}\n]}}", v.join(",\n"));
        for split in 1..text.len() {
            let e = error(&text, Some(split));
            assert_eq!(e.entry, Some(("owners", 40)), "split {split}");
        }
    }

    #[test]
    fn refuses_bad_sections() {
        // An entry expected but not there is that entry's error; the rest, the section's.
        let entry = "records.owners[1]";
        for (bad, field, msg) in [
            (
                r#"{"owners": [], "owners": []}"#,
                "records",
                "duplicate field `owners`",
            ),
            (r#"{"owner": []}"#, "records", "unknown field `owner`"),
            (r#"{"owners": {}}"#, "records", "expected a list"),
            (r#"{"owners": null}"#, "records", "expected a list"),
            (
                r#"{"owners": [{"type": "lead", "id": "1"},]}"#,
                entry,
                "expected `{`",
            ),
            (
                r#"{"owners": [{"type": "lead", "id": "1"}}"#,
                "records.owners[0]",
                "expected `,` or `]`",
            ),
            (r#"{"owners": [], }"#, "records", "expected a field name"),
            (
                r#"{"owners": [] "shares": []}"#,
                "records",
                "expected `,` or `}`",
            ),
            (
                r#"{"owners": [{"type": "lead", "id": "1"}"#,
                "records.owners[0]",
                "expected `,` or `]`",
            ),
            (r#"[]"#, "records", "expected the records section"),
            (r#"nul"#, "records", "expected the records section"),
            ("", "records", "expected the records section"),
        ] {
            let e = error(bad, None);
            assert!(e.message.contains(msg), "{bad}: {e:?}");
            assert_eq!(e.field(), field, "{bad}: {e:?}");
        }
    }
}
