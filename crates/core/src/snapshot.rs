//! The snapshot: who holds which role. Compiled once, off the request path, into flat tables
//! with O(1) lookups, then swapped in whole; a request loads it once and keeps it to the end.
//!
//! Why one file (~1,620 lines without its tests): the source form, its validation and the compiled
//! tables of users and roles are one build step; records, changes and the record check are their
//! own modules.
//!
//! Source form (JSON, strict: unknown or duplicate keys are errors):
//!
//! ```json
//! { "version": "2026-11-23.1",
//!   "roles": [ { "id": "regional_rep", "name": "Regional rep", "permissions": ["lead.*"] } ],
//!   "users": [ { "id": "u-rep1", "name": "Riley Rep", "roles": ["sales_rep"], "teams": ["east"],
//!                "manager": "u-sm", "api_keys": ["sha256:<64 hex>"], "disabled": false } ],
//!   "services": [ { "id": "svc-billing", "name": "Billing sync", "roles": ["billing_sync"],
//!                   "api_keys": ["sha256:<64 hex>"], "disabled": false } ] }
//! ```
//!
//! A service (optional `services`) is a principal that is not a person: an org or integration
//! API key with roles. It is decided like a user (its roles' permissions and scopes) but has
//! no team, no manager and owns no record, so only an `all` scope reaches records for it; it
//! is reached only through its API keys (a JWT or trusted header naming its id is an unknown
//! user), and its id shares the users' namespace (unique across both).
//!
//! Roles are the catalogue's presets plus the snapshot's custom roles (any named subset of the
//! catalogue; a custom role may not reuse a preset's id). A user's permissions are the union of
//! their roles' permissions, precomputed per distinct role combination (users share it), and so
//! are their record scopes (`"lead.view@own+shared"`, [`crate::scope`]): the union over roles.
//!
//! An optional `records` section holds record ownership, shares and related objects
//! ([`crate::records`] for the format); it is read in one streaming pass and compiled into flat
//! tables, so a snapshot of ten million records needs no intermediate struct per record. The
//! manager forest is precomputed as an Euler tour ([`Hierarchy`]): "is X my report, at any
//! depth" is one interval test.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::catalog::{is_valid_role_id, Catalog, PermId, PermSet};
use crate::chunked::Chunked;
use crate::error::{line_of, ConfigError};
use crate::hash::KeyedState;
use crate::hierarchy::Hierarchy;
use crate::records::{
    OwnerNames, PreparedOwners, RawRecords, RecordStore, RecordsDraft, Resolve,
    MAX_USERS_WITH_RECORDS, OWNER_NAMES_FROM,
};
use crate::scope::PermScopes;

mod compact;

/// The snapshot's source form. Public so incremental changes can be applied to it.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the source produced it (Unix seconds); the snapshot's age counts from here, else
    /// from when it was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<u64>,
    #[serde(default)]
    pub roles: Vec<RawRole>,
    pub users: Vec<RawUser>,
    /// Principals that are not people (org or integration keys), decided like users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<RawService>,
    /// The tenants (organisations); empty: one implicit tenant (module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<RawTenant>,
    /// Record ownership, shares and related objects ([`crate::records`]). Written last: the
    /// build reads the records on another thread while it compiles what comes before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<RawRecords>,
}

/// A tenant in source form.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A user's membership of one tenant: their roles, teams and manager there.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawMembership {
    pub tenant: String,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// The form [`Snapshot::build`] reads: [`RawSnapshot`] with the records read into a compact
/// draft (their own parser, [`crate::records::parse`]) instead of one struct per record.
/// Same fields, same strictness.
struct BuildForm<'t> {
    version: Option<String>,
    generated_at: Option<u64>,
    roles: Vec<RawRole>,
    users: Chunks<UserForm<'t>>,
    services: Vec<ServiceForm<'t>>,
    records: Option<RecordsDraft<'t>>,
    tenants: Vec<TenantForm<'t>>,
    /// Which of [`BUILD_FIELDS`] were read (each at most once).
    seen: [bool; BUILD_FIELDS.len()],
}

/// [`RawTenant`] as [`Snapshot::build`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantForm<'t> {
    #[serde(borrow)]
    id: Name<'t>,
    #[serde(borrow, default, rename = "name")]
    _name: Option<Name<'t>>,
}

/// [`RawMembership`] as [`Snapshot::build`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipForm<'t> {
    #[serde(borrow)]
    tenant: Name<'t>,
    #[serde(borrow)]
    roles: Few<Name<'t>>,
    #[serde(borrow, default)]
    teams: Few<Name<'t>>,
    #[serde(borrow, default)]
    manager: Option<Name<'t>>,
}

/// [`RawService`] as [`Snapshot::build`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceForm<'t> {
    #[serde(borrow)]
    id: Name<'t>,
    #[serde(borrow, default)]
    name: Option<Name<'t>>,
    #[serde(borrow)]
    roles: Vec<Name<'t>>,
    #[serde(borrow, default)]
    api_keys: Vec<Name<'t>>,
    #[serde(default)]
    disabled: bool,
    /// With tenants: the one tenant the service belongs to (required then).
    #[serde(borrow, default)]
    tenant: Option<Name<'t>>,
}

/// [`RawUser`] as [`Snapshot::build`] reads it: the strings borrowed from the text (copied only
/// when escaped), so a million users are not four million small allocations, made and freed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserForm<'t> {
    #[serde(borrow)]
    id: Name<'t>,
    #[serde(borrow, default)]
    name: Option<Name<'t>>,
    #[serde(borrow, default, rename = "email")]
    _email: Option<Name<'t>>,
    /// Required without tenants; with tenants, roles are per membership.
    #[serde(borrow, default)]
    roles: Option<Few<Name<'t>>>,
    #[serde(borrow, default)]
    teams: Few<Name<'t>>,
    #[serde(borrow, default)]
    manager: Option<Name<'t>>,
    #[serde(borrow, default)]
    api_keys: Vec<Name<'t>>,
    #[serde(default)]
    disabled: bool,
    #[serde(borrow, default)]
    memberships: Option<Few<MembershipForm<'t>>>,
}

/// A long list of the snapshot text (its users), read into chunks of 65,536 elements: a
/// million users are not one array grown by doubling, copied at each step and its pages
/// touched twice.
struct Chunks<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

const CHUNK_SHIFT: u32 = 16;

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunks<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.chunks
            .get(i >> CHUNK_SHIFT)?
            .get(i & ((1 << CHUNK_SHIFT) - 1))
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    fn push(&mut self, v: T) {
        // The first chunk grows as a `Vec` does (a small snapshot allocates little); the
        // next ones are made whole.
        match self.chunks.last_mut() {
            Some(c) if c.len() < 1 << CHUNK_SHIFT => c.push(v),
            _ => {
                let mut c = Vec::with_capacity(if self.chunks.is_empty() {
                    0
                } else {
                    1 << CHUNK_SHIFT
                });
                c.push(v);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunks<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Chunks<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Chunks<T>, A::Error> {
                let mut out = Chunks::default();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A list of the snapshot text that mostly holds one element (a user's roles, teams,
/// memberships): that one kept in place, not in an allocation of its own. serde's `Vec` starts
/// at four elements, so a user of a snapshot with tenants cost three allocations (576 bytes)
/// made and freed; measured by `permgate-bench snapshot --tenants`.
type Few<T> = smallvec::SmallVec<[T; 1]>;

/// A string of the snapshot text: borrowed, or decoded when it holds escapes.
struct Name<'t>(std::borrow::Cow<'t, str>);

impl std::ops::Deref for Name<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de: 't, 't> Deserialize<'de> for Name<'t> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'t>(std::marker::PhantomData<&'t ()>);
        impl<'de: 't, 't> serde::de::Visitor<'de> for V<'t> {
            type Value = Name<'t>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'t>, E> {
                Ok(Name(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'t>, E> {
                Ok(Name(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

const BUILD_FIELDS: [&str; 7] = [
    "version",
    "generated_at",
    "roles",
    "users",
    "records",
    "services",
    "tenants",
];

/// Skip JSON whitespace from `i`.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
    {
        i += 1;
    }
    i
}

/// A parse error at byte `at` of the snapshot text, located (line, and column in the message).
fn fail_at(file: &str, text: &str, at: usize, message: String) -> ConfigError {
    ConfigError {
        file: file.to_string(),
        line: Some(line_of(text, at)),
        field: String::new(),
        message: format!(
            "{message} at line {} column {}",
            line_of(text, at),
            column_of(text, at)
        ),
    }
}

/// What is at byte `at`, for a parse error.
fn found_at(b: &[u8], at: usize) -> String {
    match b.get(at) {
        None => "the end of the text".to_string(),
        Some(c) => format!("`{}`", char::from(*c).escape_debug()),
    }
}

/// An error of the records section's parser, located in the whole text.
fn records_error(file: &str, text: &str, e: crate::records::parse::ParseError) -> ConfigError {
    ConfigError::new(
        file,
        Some(line_of(text, e.offset)),
        &e.field(),
        format!("{} (column {})", e.message, column_of(text, e.offset)),
    )
}

impl<'t> BuildForm<'t> {
    /// Parse a snapshot text: the top-level object by hand, each field's value with serde
    /// except `records` (its own parser). An error is located (line, and column in the
    /// message) in the whole text. (The build reads the records aside: [`Snapshot::build`];
    /// this one pass is what the tests compare it with.)
    #[cfg(test)]
    fn parse(file: &str, text: &'t str) -> Result<BuildForm<'t>, ConfigError> {
        let (mut form, at) = Self::start(file, text)?;
        form.fields(file, text, at, false)?;
        Ok(form)
    }

    /// [`BuildForm::parse`] up to the value of `records`, left unread: the form so far and
    /// where that value starts (`None`: the text has no records, and is read whole). The
    /// caller reads the records (on another thread, while it compiles the users) and gives
    /// them to [`BuildForm::rest_from_records`], which reads the rest of the text.
    fn parse_until_records(
        file: &str,
        text: &'t str,
    ) -> Result<(BuildForm<'t>, Option<usize>), ConfigError> {
        let (mut form, at) = Self::start(file, text)?;
        let records = form.fields(file, text, at, true)?;
        Ok((form, records))
    }

    /// The records section as another thread read it (from the offset
    /// [`BuildForm::parse_until_records`] gave, with the fields it had `seen`), then the rest
    /// of the text, into a form of their own: the same result, errors included, as
    /// [`BuildForm::parse`] of the whole text.
    fn rest_from_records(
        file: &str,
        text: &'t str,
        at: usize,
        seen: [bool; BUILD_FIELDS.len()],
    ) -> Result<BuildForm<'t>, ConfigError> {
        let mut rest = BuildForm::empty(seen);
        let (draft, next) =
            RecordsDraft::parse(text, at).map_err(|e| records_error(file, text, e))?;
        rest.records = draft;
        if let Some(i) = rest.after_value(file, text, next)? {
            rest.fields(file, text, i, false)?;
        }
        Ok(rest)
    }

    /// The rest (from the records on) holds fields the users' compile needed: roles,
    /// services, tenants, or users (the head and the rest are compiled again as one form).
    fn needs_merge(head: &BuildForm<'t>, rest: &BuildForm<'t>) -> bool {
        [2, 3, 5, 6].iter().any(|k| rest.seen[*k] && !head.seen[*k])
    }

    /// The fields `rest` read (its `seen` started as this form's), moved in: the form
    /// [`BuildForm::parse`] makes of the whole text.
    fn absorb(&mut self, rest: BuildForm<'t>) {
        let new = |k: usize| rest.seen[k] && !self.seen[k];
        if new(0) {
            self.version = rest.version;
        }
        if new(1) {
            self.generated_at = rest.generated_at;
        }
        if new(2) {
            self.roles = rest.roles;
        }
        if new(3) {
            self.users = rest.users;
        }
        if new(5) {
            self.services = rest.services;
        }
        if new(6) {
            self.tenants = rest.tenants;
        }
        self.records = rest.records;
        self.seen = rest.seen;
    }

    /// A form with nothing read, `seen` the fields read elsewhere.
    fn empty(seen: [bool; BUILD_FIELDS.len()]) -> BuildForm<'t> {
        BuildForm {
            version: None,
            generated_at: None,
            roles: Vec::new(),
            users: Chunks::default(),
            services: Vec::new(),
            records: None,
            tenants: Vec::new(),
            seen,
        }
    }

    /// The opening of the snapshot object: an empty form and where its first field starts.
    fn start(file: &str, text: &'t str) -> Result<(BuildForm<'t>, usize), ConfigError> {
        let b = text.as_bytes();
        let mut i = skip_ws(b, 0);
        if b.get(i) != Some(&b'{') {
            return Err(fail_at(
                file,
                text,
                i,
                format!(
                    "expected the snapshot (a JSON object), found {}",
                    found_at(b, i)
                ),
            ));
        }
        i = skip_ws(b, i + 1);
        if b.get(i) == Some(&b'}') {
            return Err(fail_at(file, text, i, "missing field `users`".into()));
        }
        Ok((BuildForm::empty([false; BUILD_FIELDS.len()]), i))
    }

    /// The fields from `i` (at a field's name) to the end of the object. With
    /// `until_records`, stops at the value of `records` and returns where it starts.
    fn fields(
        &mut self,
        file: &str,
        text: &'t str,
        mut i: usize,
        until_records: bool,
    ) -> Result<Option<usize>, ConfigError> {
        let b = text.as_bytes();
        let fail = |at: usize, message: String| fail_at(file, text, at, message);
        loop {
            let at = i;
            if b.get(i) != Some(&b'"') {
                return Err(fail(
                    i,
                    format!("expected a field name, found {}", found_at(b, i)),
                ));
            }
            let (key, next) = sub_value::<String>(file, text, i)?;
            let Some(k) = BUILD_FIELDS.iter().position(|f| *f == key) else {
                return Err(fail(
                    at,
                    format!(
                        "unknown field `{}`, expected one of `version`, `generated_at`, `roles`, `users`, `records`, `services`, `tenants`",
                        key.escape_debug()
                    ),
                ));
            };
            if self.seen[k] {
                return Err(fail(at, format!("duplicate field `{}`", BUILD_FIELDS[k])));
            }
            self.seen[k] = true;
            i = skip_ws(b, next);
            if b.get(i) != Some(&b':') {
                return Err(fail(i, format!("expected `:`, found {}", found_at(b, i))));
            }
            i = skip_ws(b, i + 1);
            i = match k {
                0 => sub_value(file, text, i).map(|(v, n)| {
                    self.version = v;
                    n
                })?,
                1 => sub_value(file, text, i).map(|(v, n)| {
                    self.generated_at = v;
                    n
                })?,
                2 => sub_value(file, text, i).map(|(v, n)| {
                    self.roles = v;
                    n
                })?,
                3 if b.get(i) == Some(&b'[') => {
                    // Element by element: a user in the generators' form at a glance
                    // ([`compact`]), any other with serde.
                    i = skip_ws(b, i + 1);
                    if b.get(i) != Some(&b']') {
                        loop {
                            let (u, next) = match compact::user(text, i) {
                                Some(u) => u,
                                None => sub_value::<UserForm<'t>>(file, text, i)?,
                            };
                            self.users.push(u);
                            i = skip_ws(b, next);
                            match b.get(i) {
                                Some(b',') => i = skip_ws(b, i + 1),
                                Some(b']') => break,
                                _ => {
                                    return Err(fail(
                                        i,
                                        format!("expected `,` or `]`, found {}", found_at(b, i)),
                                    ))
                                }
                            }
                            if b.get(i) == Some(&b']') {
                                return Err(fail(i, "trailing comma".into()));
                            }
                        }
                    }
                    i + 1
                }
                3 => sub_value(file, text, i).map(|(v, n)| {
                    self.users = v;
                    n
                })?,
                5 => sub_value(file, text, i).map(|(v, n)| {
                    self.services = v;
                    n
                })?,
                6 => sub_value(file, text, i).map(|(v, n)| {
                    self.tenants = v;
                    n
                })?,
                _ if until_records => return Ok(Some(i)),
                _ => {
                    let (draft, next) =
                        RecordsDraft::parse(text, i).map_err(|e| records_error(file, text, e))?;
                    self.records = draft;
                    next
                }
            };
            match self.after_value(file, text, i)? {
                Some(next) => i = next,
                None => return Ok(None),
            }
        }
    }

    /// After a field's value (ending before `i`): where the next field starts, or `None` at
    /// the end of the object (the text checked to its end, `users` required).
    fn after_value(&self, file: &str, text: &str, i: usize) -> Result<Option<usize>, ConfigError> {
        let b = text.as_bytes();
        let i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => return Ok(Some(skip_ws(b, i + 1))),
            Some(b'}') => {}
            _ => {
                return Err(fail_at(
                    file,
                    text,
                    i,
                    format!("expected `,` or `}}`, found {}", found_at(b, i)),
                ))
            }
        }
        let end = skip_ws(b, i + 1);
        if end < b.len() {
            return Err(fail_at(file, text, end, "trailing characters".into()));
        }
        if !self.seen[3] {
            return Err(fail_at(file, text, i, "missing field `users`".into()));
        }
        Ok(None)
    }
}

/// The 1-based column of a byte offset (in characters).
fn column_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    let start = text.as_bytes()[..at]
        .iter()
        .rposition(|c| *c == b'\n')
        .map_or(0, |p| p + 1);
    text.get(start..at)
        .map_or(at - start, |s| s.chars().count())
        + 1
}

/// One JSON value of `text` at `at`, read with serde: the value and the offset past it. A
/// serde error is located in the whole text.
fn sub_value<'t, T: Deserialize<'t>>(
    file: &str,
    text: &'t str,
    at: usize,
) -> Result<(T, usize), ConfigError> {
    let rest = text.get(at..).unwrap_or("");
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<T>();
    let located = |line: usize, column: usize, message: &str| {
        let (abs_line, abs_col) = if line <= 1 {
            (
                line_of(text, at),
                column_of(text, at) + column.saturating_sub(1),
            )
        } else {
            (line_of(text, at) + line - 1, column)
        };
        ConfigError {
            file: file.to_string(),
            line: Some(abs_line),
            field: String::new(),
            message: format!("{message} at line {abs_line} column {abs_col}"),
        }
    };
    match values.next() {
        Some(Ok(v)) => Ok((v, at + values.byte_offset())),
        Some(Err(e)) => {
            let m = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            Err(located(
                e.line(),
                e.column(),
                m.strip_suffix(&suffix).unwrap_or(&m),
            ))
        }
        None => Err(located(1, rest.len() + 1, "EOF while parsing a value")),
    }
}

/// The most errors reported for the records section (then one line counts the rest).
const MAX_RECORD_ERRORS: usize = 100;

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub permissions: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Empty with tenants (roles are per membership then).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// With tenants: the user's roles, teams and manager per tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<RawMembership>,
}

/// A service principal in source form (module docs).
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// With tenants: the tenant the service belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A role as the snapshot knows it (preset or custom).
#[derive(Debug, Clone)]
pub struct SnapshotRole {
    pub id: String,
    pub permissions: PermSet,
    /// The record scope of each permission it grants.
    pub scopes: PermScopes,
    pub custom: bool,
}

/// The union of a role combination, shared by every user holding exactly those roles.
#[derive(Debug, Clone)]
pub struct Grant {
    pub permissions: PermSet,
    /// The effective record scope per permission: the union over the roles.
    pub scopes: PermScopes,
    pub roles: Box<[u16]>,
    /// Comma-separated role ids, ready for the forwarded roles header.
    pub roles_header: Box<str>,
}

/// One user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Box<str>,
    pub name: Option<Box<str>>,
    pub grant: u32,
    pub manager: Option<u32>,
    pub teams: Box<[u32]>,
    pub disabled: bool,
    /// SHA-256 digests of the user's API keys (to drop them when the user changes).
    pub api_keys: Box<[[u8; 32]]>,
    /// A service principal (the snapshot's `services`), not a person: reached only by its
    /// API keys, never by id; no team, no manager, no record of its own.
    pub service: bool,
    /// With tenants: the tenant of a membership or a service; [`NO_TENANT`] for a person (and
    /// for everyone in a snapshot without tenants).
    pub tenant: u32,
    /// A membership's person (whose id, keys and records it stands for); the entry itself
    /// otherwise.
    pub person: UserIdx,
    /// A person's memberships, `(tenant, membership)` sorted by tenant (empty without tenants).
    pub memberships: Box<[(u32, UserIdx)]>,
}

/// [`User::tenant`] of a principal that belongs to no one tenant.
pub const NO_TENANT: u32 = u32::MAX;

impl User {
    /// Is this entry one user's membership of one tenant (not a person, not a service)?
    pub fn is_membership(&self) -> bool {
        self.tenant != NO_TENANT && !self.service
    }
}

pub use crate::records::UserIdx;

/// Users per chunk: a changed user copies 64 users, not a million.
pub(crate) const USER_CHUNK_SHIFT: u32 = 6;

/// A map shared between snapshot versions: a large base, shared as is, and a small overlay of
/// what changed since (`None`: removed). Lookups read the overlay first (skipped while empty);
/// the overlay is merged into a new base when it grows past a quarter of the base.
#[derive(Debug, Clone)]
pub(crate) struct Layered<K: Hash + Eq> {
    base: Arc<HashMap<K, UserIdx, KeyedState>>,
    over: Arc<HashMap<K, Option<UserIdx>, KeyedState>>,
}

impl<K: Hash + Eq + Clone> Layered<K> {
    fn new(base: HashMap<K, UserIdx, KeyedState>) -> Self {
        Layered {
            base: Arc::new(base),
            over: Arc::new(HashMap::default()),
        }
    }

    #[inline]
    pub(crate) fn get<Q>(&self, k: &Q) -> Option<UserIdx>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.over.is_empty() {
            if let Some(v) = self.over.get(k) {
                return *v;
            }
        }
        self.base.get(k).copied()
    }

    /// Set (`Some`) or remove (`None`) a key in a new version.
    pub(crate) fn set(&mut self, k: K, v: Option<UserIdx>) {
        Arc::make_mut(&mut self.over).insert(k, v);
    }

    /// Merge the overlay into a new base when it has grown large (amortized: a full copy
    /// every `base / 4` changes at the least).
    pub(crate) fn compact_if_large(&mut self) {
        if self.over.len() <= 65_536.max(self.base.len() / 4) {
            return;
        }
        let mut base = (*self.base).clone();
        for (k, v) in self.over.iter() {
            match v {
                Some(v) => base.insert(k.clone(), *v),
                None => base.remove(k),
            };
        }
        self.base = Arc::new(base);
        self.over = Arc::new(HashMap::default());
    }
}

/// A compiled snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// From the source, or `blake3:<16 hex>` of the content.
    pub version: String,
    pub loaded_at: SystemTime,
    /// When the source produced it; `loaded_at` when the source does not say.
    pub produced_at: SystemTime,
    // Every part is shared with the versions derived from this one by incremental changes
    // ([`crate::changes`]) where the changes did not touch it.
    pub(crate) roles: Arc<Vec<SnapshotRole>>,
    pub(crate) role_idx: Arc<HashMap<String, u16>>,
    pub(crate) grants: Arc<Vec<Grant>>,
    pub(crate) grant_of: Arc<HashMap<Box<[u16]>, u32>>,
    pub(crate) users: Chunked<User, USER_CHUNK_SHIFT>,
    /// Team names: those of users, and those named by shares (so a share made before a team's
    /// first member reaches that member, as a rebuild would).
    pub(crate) teams: Arc<Vec<String>>,
    pub(crate) team_of: Arc<HashMap<String, u32, KeyedState>>,
    /// How many users list each team (a change may share only with a team that has members).
    pub(crate) team_members: Arc<Vec<u32>>,
    pub(crate) by_id: Layered<Box<str>>,
    pub(crate) api_keys: Layered<[u8; 32]>,
    /// The service principals by id (few; never in `by_id`, which resolves people only).
    pub(crate) services: Arc<HashMap<Box<str>, UserIdx>>,
    pub(crate) hierarchy: Arc<Hierarchy>,
    /// Each user's manager ([`crate::hierarchy::NO_MANAGER`]: none), what the hierarchy is
    /// built from.
    pub(crate) managers: Arc<Vec<u32>>,
    pub(crate) records: RecordStore,
    /// The tenants' ids (empty: no tenants, one implicit tenant) and their index.
    pub(crate) tenants: Arc<Vec<Box<str>>>,
    pub(crate) tenant_idx: Arc<HashMap<Box<str>, u32>>,
    /// How many entries of `users` are memberships (of a person who lists them).
    pub(crate) membership_count: usize,
    /// How many entries of `users` are memberships an incremental change removed (detached
    /// from their person, reached by nothing: [`crate::changes`]); 0 after a full build.
    pub(crate) detached: usize,
    /// How long each phase of the full build that made this version took, in order
    /// ([`Snapshot::build_phases`]); empty for a version an incremental batch made.
    pub(crate) build_phases: Arc<[(&'static str, Duration)]>,
}

/// The clock of a full build: each phase's time, taken when it ends ([`Snapshot::build_phases`]).
struct PhaseClock {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    fn start() -> Self {
        PhaseClock {
            last: Instant::now(),
            phases: Vec::with_capacity(16),
        }
    }

    /// The phase `name` ends now.
    fn end(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now.duration_since(self.last)));
        self.last = now;
    }
}

/// The grant of a role combination (sorted, deduplicated): the existing one, or a new one.
pub(crate) fn grant_for(
    grants: &mut Vec<Grant>,
    grant_of: &mut HashMap<Box<[u16]>, u32>,
    roles: &[SnapshotRole],
    catalog: &Catalog,
    combo: &[u16],
) -> u32 {
    if let Some(g) = grant_of.get(combo) {
        return *g;
    }
    let mut permissions = PermSet::default();
    let mut scopes = PermScopes::none(catalog.permissions().len());
    for r in combo {
        permissions.union_with(&roles[usize::from(*r)].permissions);
        scopes.union_with(&roles[usize::from(*r)].scopes);
    }
    let roles_header = combo
        .iter()
        .map(|r| roles[usize::from(*r)].id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    grants.push(Grant {
        permissions,
        scopes,
        roles: combo.into(),
        roles_header: roles_header.into_boxed_str(),
    });
    let g = (grants.len() - 1) as u32;
    grant_of.insert(combo.into(), g);
    g
}

/// An API key as written (`sha256:<64 hex>`) → its digest.
pub(crate) fn parse_key_digest(k: &str) -> Option<[u8; 32]> {
    k.strip_prefix("sha256:")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
}

/// Is this a user id the snapshot accepts? Visible ASCII only: the id is forwarded in a header
/// and written in logs, and a CRM that trims " u-admin" must not see another user than the one
/// we checked.
pub(crate) fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// `blake3:<16 hex>` of a snapshot's text: its version when the source gives none.
fn content_hash(text: &str) -> String {
    format!(
        "blake3:{}",
        hex::encode(&blake3::hash(text.as_bytes()).as_bytes()[..8])
    )
}

/// The byte offsets of a text's newlines ([`line_in`]).
fn newline_offsets(text: &str) -> Vec<usize> {
    text.bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i)
        .collect()
}

/// [`line_of`] through the text's [`newline_offsets`]: the 1-based line of a byte offset.
fn line_in(newlines: &[usize], offset: usize) -> usize {
    newlines.partition_point(|n| *n < offset) + 1
}

/// Byte offsets of the elements of the top-level array `key` in a JSON text, so errors about
/// `users[12]` can name a line. Best effort: returns nothing on text it does not understand.
fn element_offsets(text: &str, key: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut out = Vec::new();
    let mut in_target = false;
    let mut last_string: Option<(usize, usize)> = None;
    let mut expect_element = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if in_target && depth == 2 && expect_element {
                    out.push(start - 1);
                    expect_element = false;
                }
                last_string = Some((start, i.min(b.len())));
            }
            b'{' | b'[' => {
                if in_target && depth == 2 && expect_element {
                    out.push(i);
                    expect_element = false;
                }
                depth += 1;
                if depth == 2 && c == b'[' {
                    if let Some((s, e)) = last_string {
                        in_target = &text[s..e] == key;
                        expect_element = in_target;
                    }
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth < 2 {
                    in_target = false;
                }
            }
            b',' if in_target && depth == 2 => expect_element = true,
            c if !c.is_ascii_whitespace() && in_target && depth == 2 && expect_element => {
                out.push(i);
                expect_element = false;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Byte offsets of the elements of the array found under the object keys `path` (e.g.
/// `["records", "owners"]`), for locating errors. Best effort, like [`element_offsets`]; run
/// only when there are errors to locate.
fn nested_element_offsets(text: &str, path: &[&str]) -> Vec<usize> {
    struct Frame {
        array: bool,
        target: bool,
        expect_key: bool,
        at_element: bool,
    }
    let b = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    // The object keys leading to the current container ("" for array positions).
    let mut keys: Vec<String> = Vec::new();
    let mut last_key = String::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b':' {
            i += 1;
            continue;
        }
        // A value starts here: note it when it is an element of the target array.
        let value_start = !matches!(c, b'}' | b']' | b',')
            && !stack.last().is_some_and(|f| !f.array && f.expect_key);
        if value_start {
            if let Some(top) = stack.last_mut() {
                if top.array && top.at_element {
                    top.at_element = false;
                    if top.target {
                        out.push(i);
                    }
                }
            }
        }
        match c {
            b'{' | b'[' => {
                let key = match stack.last() {
                    Some(f) if !f.array => last_key.clone(),
                    _ => String::new(),
                };
                if !stack.is_empty() {
                    keys.push(key);
                }
                let target = c == b'['
                    && keys.len() == path.len()
                    && keys.iter().zip(path).all(|(a, b)| a == b);
                stack.push(Frame {
                    array: c == b'[',
                    target,
                    expect_key: c == b'{',
                    at_element: c == b'[',
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                if !stack.is_empty() {
                    keys.pop();
                }
                i += 1;
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    if top.array {
                        top.at_element = true;
                    } else {
                        top.expect_key = true;
                    }
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if let Some(top) = stack.last_mut() {
                    if !top.array && top.expect_key {
                        last_key = text.get(start..i.min(b.len())).unwrap_or("").to_string();
                        top.expect_key = false;
                    }
                }
                i += 1;
            }
            _ => {
                // A scalar: skip to the next structural byte.
                while i < b.len()
                    && !matches!(b[i], b',' | b'}' | b']')
                    && !b[i].is_ascii_whitespace()
                {
                    i += 1;
                }
            }
        }
    }
    out
}

/// What [`Snapshot::compile`] made: the snapshot, or the rest of the text to merge into the
/// head (it held fields the compile needed).
enum Built<'t> {
    Done(Box<Snapshot>),
    Merge(Box<BuildForm<'t>>),
}

impl<'t> Built<'t> {
    fn done(self) -> Option<Snapshot> {
        match self {
            Built::Done(s) => Some(*s),
            Built::Merge(_) => None,
        }
    }
    #[cfg(test)]
    fn unwrap(self) -> Snapshot {
        self.done().unwrap()
    }
}

/// The owners' name table of a form's users (the persons, in the form's order).
fn owner_names(users: &Chunks<UserForm<'_>>) -> OwnerNames {
    OwnerNames::new(&|f: &mut dyn FnMut(&str, UserIdx)| {
        for (i, u) in users.iter().enumerate() {
            f(&u.id, i as UserIdx);
        }
    })
}

/// The records and the fields after them, read on another thread: the call that waits for
/// them.
type RestOfText<'a, 't> =
    &'a mut dyn FnMut() -> Result<(BuildForm<'t>, Option<Ahead>), ConfigError>;

/// What the records' reader hands over with the records, for a large draft with tenants: the
/// owners' name table (made on a thread of its own from the memberships on), and the owners
/// it prepared with it (while the users' compile ended on the other core) until the compile
/// called for the records.
type Ahead = (OwnerNames, Option<PreparedOwners>);

/// A build that cannot finish for a reason of its own (never seen): this error rather than a
/// snapshot half made.
fn internal(file: &str, what: &str) -> Vec<ConfigError> {
    vec![ConfigError::new(
        file,
        None,
        "",
        format!("{what} (an internal error: please report it)"),
    )]
}

/// [`Snapshot::compile`] of a whole form never asks for the text again; were it to, this is
/// the error.
fn unread(file: &str) -> Vec<ConfigError> {
    internal(file, "the snapshot was not read whole")
}

impl Snapshot {
    /// Parse and compile a snapshot against a catalogue. Every problem is reported with its
    /// place; a snapshot with any error is refused whole.
    pub fn build(file: &str, text: &str, catalog: &Catalog) -> Result<Snapshot, Vec<ConfigError>> {
        // A large snapshot without a version gets the hash of its content: computed on a
        // second thread while this one parses (the head of the text says whether a version
        // is likely; when wrong either way, only the time differs).
        let head = &text.as_bytes()[..text.len().min(4096)];
        let versioned = head.windows(9).any(|w| w == b"\"version\"");
        std::thread::scope(|scope| {
            let early =
                (text.len() > 16 << 20 && !versioned).then(|| scope.spawn(|| content_hash(text)));
            Self::build_with(file, text, catalog, move || {
                early
                    .and_then(|h| h.join().ok())
                    .unwrap_or_else(|| content_hash(text))
            })
        })
    }

    fn build_with<'t>(
        file: &str,
        text: &'t str,
        catalog: &Catalog,
        content_hash: impl FnOnce() -> String,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let mut clock = PhaseClock::start();
        let mut hash = Some(content_hash);
        let mut version = || {
            hash.take()
                .map_or_else(|| self::content_hash(text), |h| h())
        };
        // The text up to the records here; the records (and what follows them) on another
        // thread, while this one compiles the users (the draft is independent of them).
        let (mut head, records_at) =
            BuildForm::parse_until_records(file, text).map_err(|e| vec![e])?;
        clock.end(if records_at.is_some() {
            "parse (to the records)"
        } else {
            "parse"
        });
        let whole = |form: &mut BuildForm<'t>,
                     clock: &mut PhaseClock,
                     version: &mut dyn FnMut() -> String| {
            let built = Self::compile(file, text, catalog, form, None, clock, version);
            if let Some(d) = form.records.as_mut() {
                d.free_elsewhere();
            }
            built.and_then(|s| s.done().ok_or_else(|| unread(file)))
        };
        let Some(at) = records_at else {
            return whole(&mut head, &mut clock, &mut version);
        };
        let seen = head.seen;
        let read_rest = move || BuildForm::rest_from_records(file, text, at, seen);
        // No users before the records (a text written records first): nothing to compile
        // meanwhile, so the rest is read here and the form compiled whole. The same when the
        // users have memberships and no tenants came first: the tenants follow the records
        // (or the text is refused), and a compile without them would be done again.
        let tenants_after = !head.seen[6] && head.users.iter().any(|u| u.memberships.is_some());
        if !head.seen[3] || tenants_after {
            head.absorb(read_rest().map_err(|e| vec![e])?);
            clock.end("records and the rest read");
            return whole(&mut head, &mut clock, &mut version);
        }
        // With tenants, a large draft's owners are resolved through a table of the user ids
        // made on a thread of its own from the memberships on (the compile says when: started
        // with the compile, it took a share of both cores while they were busiest), and the
        // reader, once done, prepares the owners for their placement with it until the
        // compile calls for the records: the other core is otherwise idle while the users'
        // compile ends. (Without tenants the compile makes the table from its start: there is
        // no such wait.) Not when the rest holds fields the compile needs (it is compiled again
        // whole).
        let stop = std::sync::atomic::AtomicBool::new(false);
        let ahead_wanted =
            !head.tenants.is_empty() && text.len().saturating_sub(at) >= OWNER_NAMES_FROM * 16;
        let (names_go, names_asked) = std::sync::mpsc::channel::<()>();
        let (names_made, names_got) = std::sync::mpsc::channel::<OwnerNames>();
        // Set when the reader will not use the table (then not made, if not begun).
        let unwanted = std::sync::atomic::AtomicBool::new(false);
        let head_ref = &head;
        let stop_ref = &stop;
        let unwanted_ref = &unwanted;
        // Waits for the compile's word (none: the sender was dropped, the compile had errors
        // or called for the records first), then makes the table for the reader.
        let names_thread = move || {
            if names_asked.recv().is_ok() && !unwanted_ref.load(Ordering::Relaxed) {
                let _ = names_made.send(owner_names(&head_ref.users));
            }
        };
        let read_ahead = move || -> Result<(BuildForm<'t>, Option<Ahead>), ConfigError> {
            let rest = read_rest();
            let draft = match &rest {
                Ok(r) if ahead_wanted && !BuildForm::needs_merge(head_ref, r) => r
                    .records
                    .as_ref()
                    .filter(|d| d.owners_len() >= OWNER_NAMES_FROM),
                _ => None,
            };
            if draft.is_none() {
                unwanted_ref.store(true, Ordering::Relaxed);
            }
            let ahead = match draft {
                Some(d) => {
                    // (No table: its thread could not start, or no word came.)
                    names_got.recv().ok().map(|names| {
                        let prepared = RecordStore::prepare_owners(
                            d,
                            catalog.record_types(),
                            &names,
                            stop_ref,
                        );
                        (names, prepared)
                    })
                }
                None => None,
            };
            Ok((rest?, ahead))
        };
        let built = std::thread::scope(|scope| {
            let names = if ahead_wanted {
                std::thread::Builder::new()
                    .spawn_scoped(scope, names_thread)
                    .ok()
            } else {
                None
            };
            let mut reader = Some(std::thread::Builder::new().spawn_scoped(scope, read_ahead));
            if !matches!(reader, Some(Ok(_))) {
                unwanted.store(true, Ordering::Relaxed);
            }
            // The compile's word to the table's thread: sent once, or the sender dropped.
            let names_go = std::cell::Cell::new(Some(names_go));
            let go = || {
                if let Some(tx) = names_go.take() {
                    let _ = tx.send(());
                }
            };
            let mut rest = || {
                // No word sent yet (the compile had errors): none now (the sender dropped, so
                // the table's thread and the reader, waiting on it, go on). The owners'
                // preparation ends with the piece in hand.
                drop(names_go.take());
                stop.store(true, Ordering::Relaxed);
                match reader.take() {
                    Some(Ok(h)) => h.join().unwrap_or_else(|_| read_rest().map(|r| (r, None))),
                    _ => read_rest().map(|r| (r, None)),
                }
            };
            let built = Self::compile(
                file,
                text,
                catalog,
                &head,
                Some((at, &mut rest, &go)),
                &mut clock,
                &mut version,
            );
            // (A compile refused before it called for the records: the reader's preparation
            // ends now, not after every piece, and a table not begun is not made.)
            stop.store(true, Ordering::Relaxed);
            unwanted.store(true, Ordering::Relaxed);
            drop(names_go.take());
            // Joined here, so that a panic there is this build's to ignore (it made its own
            // table then), not the scope's.
            if let Some(h) = names {
                let _ = h.join();
            }
            built
        })?;
        match built {
            Built::Done(s) => Ok(*s),
            // Roles, services or tenants after the records (the users were compiled without
            // them): the head and the rest make the one-pass form (each field is in exactly
            // one of them), compiled again whole. Our own writers never come here: the
            // database source and `RawSnapshot` write roles, services and tenants before the
            // records, or (derived tenants) the records first, which is read in place above.
            Built::Merge(rest) => {
                head.absorb(*rest);
                clock.end("merge (roles, services or tenants after the records)");
                whole(&mut head, &mut clock, &mut version)
            }
        }
    }

    /// Compile a parsed form. `rest`: the form holds the text up to its records (where they
    /// start), and this gives the records and the fields after them (read on another thread
    /// meanwhile); a parse error there wins over the users' errors, as in one pass.
    /// [`Built::Merge`]: the rest holds roles, services or tenants (or users), which the
    /// compile did not see (the caller merges it into the form and compiles that). With
    /// `rest`, the records draft is freed on another thread here; without, the caller frees
    /// the form's.
    fn compile<'t>(
        file: &str,
        text: &'t str,
        catalog: &Catalog,
        raw: &BuildForm<'t>,
        rest: Option<(usize, RestOfText<'_, 't>, &dyn Fn())>,
        clock: &mut PhaseClock,
        content_hash: &mut dyn FnMut() -> String,
    ) -> Result<Built<'t>, Vec<ConfigError>> {
        // The records (and fields after them) read by the other thread, once joined.
        let mut tail: Option<BuildForm<'t>> = None;
        // With the rest to come, the owners' name table is made when the text from the
        // records on could hold 4,096 owners (an entry is at least 16 bytes): speculative, and
        // unused when the owners list is shorter (the shares, the related objects and the
        // fields after the records count in that text too).
        let many_owners = match &rest {
            Some((at, _, _)) => text.len().saturating_sub(*at) >= OWNER_NAMES_FROM * 16,
            None => raw
                .records
                .as_ref()
                .is_some_and(|d| d.owners_len() >= OWNER_NAMES_FROM),
        };
        let built = std::thread::scope(|scope| {
            // A large draft's owners are resolved through a table of the user ids: made on
            // another core while this one compiles the users. With the records being read and
            // tenants, the build's own thread makes it from the memberships on and the reader
            // hands it over (`Ahead`; started with the compile, it took a share of both cores
            // while they were busiest).
            // Without tenants there is no memberships phase to hide it: it starts with the
            // compile (started late, it was waited for, 80 ms).
            // (None when no thread can be started: the records build makes it then.)
            let names_table = || {
                std::thread::Builder::new()
                    .spawn_scoped(scope, || owner_names(&raw.users))
                    .ok()
            };
            let owner_names = if many_owners && (rest.is_none() || raw.tenants.is_empty()) {
                names_table()
            } else {
                None
            };
            // The reader's (with tenants).
            let mut ahead: Option<Ahead> = None;
            // Where each user and role starts, and where the text's lines start, for locating
            // errors: scans of the whole text, so made only when there is an error to locate,
            // once (a scan per error made a snapshot with an error per user quadratic: hours
            // at a million users).
            let user_lines = std::cell::OnceCell::new();
            let role_lines = std::cell::OnceCell::new();
            let newlines: std::cell::OnceCell<Vec<usize>> = std::cell::OnceCell::new();
            let line = |offsets: &std::cell::OnceCell<Vec<usize>>, key: &str, i: usize| {
                offsets
                    .get_or_init(|| element_offsets(text, key))
                    .get(i)
                    .map(|o| line_in(newlines.get_or_init(|| newline_offsets(text)), *o))
            };
            let mut errors = Vec::new();

            // Roles: presets, then custom.
            let mut roles: Vec<SnapshotRole> = catalog
                .roles()
                .iter()
                .map(|r| SnapshotRole {
                    id: r.id.clone(),
                    permissions: r.permissions,
                    scopes: r.scopes.clone(),
                    custom: false,
                })
                .collect();
            for (i, r) in raw.roles.iter().enumerate() {
                let field = format!("roles[{i}]");
                let at =
                    |m: String| ConfigError::new(file, line(&role_lines, "roles", i), &field, m);
                if !is_valid_role_id(&r.id) {
                    errors.push(at(format!("'{}' is not a valid role id", r.id)));
                    continue;
                }
                if roles.iter().any(|x| x.id == r.id) {
                    errors.push(at(format!(
                        "role '{}' is already defined (presets cannot be redefined)",
                        r.id
                    )));
                    continue;
                }
                match catalog.expand_scoped_at(&r.permissions) {
                    Ok(g) => roles.push(SnapshotRole {
                        id: r.id.clone(),
                        permissions: g.permissions,
                        scopes: g.scopes,
                        custom: true,
                    }),
                    Err((k, e)) => {
                        errors.push(ConfigError::new(
                            file,
                            line(&role_lines, "roles", i),
                            &format!("{field}.permissions[{k}]"),
                            format!("role '{}': {e}", r.id),
                        ));
                        // Still known (granting nothing; the snapshot is refused anyway): one
                        // error for the role, not one more per user holding it.
                        roles.push(SnapshotRole {
                            id: r.id.clone(),
                            permissions: PermSet::default(),
                            scopes: PermScopes::none(catalog.permissions().len()),
                            custom: true,
                        });
                    }
                }
                let _ = (&r.name, &r.description);
            }
            if roles.len() > usize::from(u16::MAX) {
                errors.push(ConfigError::new(file, None, "roles", "too many roles"));
            }
            let role_idx: HashMap<&str, u16, KeyedState> = roles
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id.as_str(), i as u16))
                .collect();

            // Tenants: ids, unique.
            let mut tenant_idx: HashMap<Box<str>, u32> = HashMap::new();
            let mut tenant_ids: Vec<Box<str>> = Vec::new();
            let tenant_lines = std::cell::OnceCell::new();
            for (i, t) in raw.tenants.iter().enumerate() {
                let at = |m: String| {
                    ConfigError::new(
                        file,
                        line(&tenant_lines, "tenants", i),
                        &format!("tenants[{i}].id"),
                        m,
                    )
                };
                if !is_valid_user_id(&t.id) {
                    errors.push(at(format!(
                        "'{}' is not a valid tenant id (1–256 visible ASCII characters, no spaces or commas)",
                        t.id.escape_debug()
                    )));
                } else if tenant_idx
                    .insert((*t.id).into(), tenant_ids.len() as u32)
                    .is_some()
                {
                    errors.push(at(format!("tenant '{}' appears twice", t.id)));
                } else {
                    tenant_ids.push((*t.id).into());
                }
            }
            let tenanted = !raw.tenants.is_empty();

            // Users, first pass: ids.
            // The keyed fast hash of the records' names, not SipHash.
            let mut by_id: HashMap<Box<str>, UserIdx, KeyedState> =
                HashMap::with_capacity_and_hasher(raw.users.len(), KeyedState::default());
            // The keys are made first, then inserted in a loop of their own. With an allocation
            // between two inserts, the core cannot overlap their cache misses in the table. In
            // isolation, 1M ids take 480 ms interleaved and 130 ms this way.
            // (Sized up front: the chunks' iterator gives no size hint.)
            let mut keys: Vec<Box<str>> = Vec::with_capacity(raw.users.len());
            keys.extend(raw.users.iter().map(|u| Box::<str>::from(&*u.id)));
            for (i, (u, key)) in raw.users.iter().zip(keys).enumerate() {
                if !is_valid_user_id(&u.id) {
                    errors.push(ConfigError::new(
                    file,
                    line(&user_lines, "users", i),
                    &format!("users[{i}].id"),
                    format!("'{}' is not a valid user id (1–256 visible ASCII characters, no spaces or commas)", u.id.escape_debug()),
                ));
                } else if by_id.insert(key, i as UserIdx).is_some() {
                    errors.push(ConfigError::new(
                        file,
                        line(&user_lines, "users", i),
                        &format!("users[{i}].id"),
                        format!("user '{}' appears twice", u.id),
                    ));
                }
            }

            clock.end("tenants and user ids");
            // Second pass: roles, grants, managers, keys.
            let mut grants: Vec<Grant> = Vec::new();
            let mut grant_of: HashMap<Box<[u16]>, u32> = HashMap::new();
            let mut teams: Vec<String> = Vec::new();
            // The keyed fast hash (a lookup per user or membership), not SipHash.
            let mut team_of: HashMap<String, u32, KeyedState> = HashMap::default();
            let mut api_keys: HashMap<[u8; 32], UserIdx, KeyedState> = HashMap::default();
            // Room for the memberships too (they follow the services): a million more entries
            // were a doubling of the whole array, copied.
            let membership_total: usize = if tenanted {
                raw.users
                    .iter()
                    .map(|u| u.memberships.as_ref().map_or(0, |m| m.len()))
                    .sum()
            } else {
                0
            };
            let mut users =
                Vec::with_capacity(raw.users.len() + raw.services.len() + membership_total);
            let mut combo = Vec::new();
            // The id of principal `i` (users, then services), for a duplicate key's message.
            let principal_id = |i: UserIdx| -> &str {
                let i = i as usize;
                match raw.users.get(i) {
                    Some(u) => &u.id,
                    None => raw.services.get(i - raw.users.len()).map_or("", |s| &s.id),
                }
            };
            // What users and services share: roles → grant, then keys → digests (located
            // errors, in the order of one pass: roles, manager, keys).
            let mut last_grant: Option<(Vec<u16>, u32)> = None;
            let mut grant_of_roles =
                |role_names: &[Name<'_>],
                 at: &dyn Fn(&str, String) -> ConfigError,
                 errors: &mut Vec<ConfigError>| {
                    combo.clear();
                    for (j, r) in role_names.iter().enumerate() {
                        match role_idx.get(&**r) {
                            Some(idx) => combo.push(*idx),
                            None => errors
                                .push(at(&format!("roles[{j}]"), format!("unknown role '{r}'"))),
                        }
                    }
                    combo.sort_unstable();
                    combo.dedup();
                    // Users come in long runs of one role combination (every person of a
                    // snapshot with tenants holds none): the last one's grant, unhashed.
                    if let Some((last, g)) = &last_grant {
                        if *last == combo {
                            return *g;
                        }
                    }
                    let g = grant_for(&mut grants, &mut grant_of, &roles, catalog, &combo);
                    last_grant = Some((combo.clone(), g));
                    g
                };
            let mut digests_of = |idx: UserIdx,
                                  keys: &[Name<'_>],
                                  at: &dyn Fn(&str, String) -> ConfigError,
                                  errors: &mut Vec<ConfigError>| {
                let mut digests = Vec::with_capacity(keys.len());
                for (j, k) in keys.iter().enumerate() {
                    match parse_key_digest(k) {
                            Some(d) => {
                                digests.push(d);
                                if let Some(other) = api_keys.insert(d, idx) {
                                    errors.push(at(
                                        &format!("api_keys[{j}]"),
                                        format!(
                                            "the same API key is also held by '{}'",
                                            principal_id(other)
                                        ),
                                    ));
                                }
                            }
                            None => errors.push(at(
                                &format!("api_keys[{j}]"),
                                "must be 'sha256:' followed by 64 hex digits (the key's SHA-256, never the key)"
                                    .into(),
                            )),
                        }
                }
                digests.into_boxed_slice()
            };
            // The managers looked up first, in a loop of their own (as the ids above: lookups
            // between allocations do not overlap their cache misses). `None`: none named.
            let mut manager_of: Vec<Option<Option<UserIdx>>> = Vec::new();
            if !tenanted {
                manager_of.reserve_exact(raw.users.len());
                manager_of.extend(
                    raw.users
                        .iter()
                        .map(|u| u.manager.as_ref().map(|m| by_id.get(&**m).copied())),
                );
            }
            for (i, u) in raw.users.iter().enumerate() {
                let at = |field: &str, m: String| {
                    ConfigError::new(
                        file,
                        line(&user_lines, "users", i),
                        &format!("users[{i}].{field}"),
                        m,
                    )
                };
                let no_roles: &[Name<'_>] = &[];
                let role_names = match (&u.roles, tenanted) {
                    (Some(r), false) => r.as_slice(),
                    (None, false) => {
                        errors.push(at("roles", "missing field `roles`".into()));
                        no_roles
                    }
                    (r, true) => {
                        if r.as_ref().is_some_and(|r| !r.is_empty())
                            || !u.teams.is_empty()
                            || u.manager.is_some()
                        {
                            errors.push(at(
                                "roles",
                                "with tenants, roles, teams and manager are per membership: write them in the user's memberships".into(),
                            ));
                        }
                        no_roles
                    }
                };
                if u.memberships.is_some() && !tenanted {
                    errors.push(at(
                        "memberships",
                        "memberships need the snapshot's tenants section".into(),
                    ));
                }
                let grant = grant_of_roles(role_names, &at, &mut errors);
                let manager = match (u.manager.as_ref(), manager_of.get(i)) {
                    (Some(_), Some(Some(Some(idx)))) => Some(*idx),
                    (Some(m), Some(Some(None))) => {
                        errors.push(at("manager", format!("unknown user '{m}'")));
                        None
                    }
                    // None named, or tenants (a membership's manager, below).
                    _ => None,
                };
                let mut team_ids = Vec::with_capacity(u.teams.len());
                for t in u.teams.iter().filter(|_| !tenanted) {
                    let id = match team_of.get(&**t) {
                        Some(id) => *id,
                        None => {
                            let next = teams.len() as u32;
                            team_of.insert(t.to_string(), next);
                            teams.push(t.to_string());
                            next
                        }
                    };
                    team_ids.push(id);
                }
                let api_keys = digests_of(i as UserIdx, &u.api_keys, &at, &mut errors);
                users.push(User {
                    id: (*u.id).into(),
                    name: u.name.as_deref().map(Into::into),
                    grant,
                    manager,
                    teams: team_ids.into_boxed_slice(),
                    disabled: u.disabled,
                    api_keys,
                    service: false,
                    tenant: NO_TENANT,
                    person: i as UserIdx,
                    memberships: Box::default(),
                });
            }
            // Services: after the users, never in `by_id` (reached by key only), ids unique
            // across both.
            let service_lines = std::cell::OnceCell::new();
            let mut services: HashMap<Box<str>, UserIdx> = HashMap::new();
            for (i, sv) in raw.services.iter().enumerate() {
                let at = |field: &str, m: String| {
                    ConfigError::new(
                        file,
                        line(&service_lines, "services", i),
                        &format!("services[{i}].{field}"),
                        m,
                    )
                };
                if !is_valid_user_id(&sv.id) {
                    errors.push(at(
                        "id",
                        format!(
                            "'{}' is not a valid id (1–256 visible ASCII characters, no spaces or commas)",
                            sv.id.escape_debug()
                        ),
                    ));
                } else if by_id.contains_key(&*sv.id) {
                    errors.push(at("id", format!("'{}' is also a user's id", sv.id)));
                } else if services
                    .insert((*sv.id).into(), (raw.users.len() + i) as UserIdx)
                    .is_some()
                {
                    errors.push(at("id", format!("service '{}' appears twice", sv.id)));
                }
                let idx = (raw.users.len() + i) as UserIdx;
                let tenant = match (&sv.tenant, tenanted) {
                    (None, false) => NO_TENANT,
                    (Some(_), false) => {
                        errors.push(at(
                            "tenant",
                            "a tenant needs the snapshot's tenants section".into(),
                        ));
                        NO_TENANT
                    }
                    (None, true) => {
                        errors.push(at(
                            "tenant",
                            "with tenants, a service belongs to one: name it".into(),
                        ));
                        NO_TENANT
                    }
                    (Some(t), true) => match tenant_idx.get(&**t) {
                        Some(t) => *t,
                        None => {
                            errors.push(at("tenant", format!("unknown tenant '{t}'")));
                            NO_TENANT
                        }
                    },
                };
                let grant = grant_of_roles(&sv.roles, &at, &mut errors);
                let api_keys = digests_of(idx, &sv.api_keys, &at, &mut errors);
                users.push(User {
                    id: (*sv.id).into(),
                    name: sv.name.as_deref().map(Into::into),
                    grant,
                    manager: None,
                    teams: Box::default(),
                    disabled: sv.disabled,
                    api_keys,
                    service: true,
                    tenant,
                    person: idx,
                    memberships: Box::default(),
                });
            }

            clock.end("users and services");
            // With the records read aside and tenants: the owners' name table is made now
            // (`Ahead`), unless the compile is refused anyway.
            if let Some((_, _, names_go)) = &rest {
                if errors.is_empty() {
                    names_go();
                }
            }
            // Memberships: one entry each, after the services, standing for its person in its
            // tenant (roles, teams, manager of that tenant); each person lists theirs.
            let first_membership = users.len();
            // The tenants by id for the memberships' lookups (one each): the keyed fast hash.
            let tenant_fast: HashMap<&str, u32, KeyedState> = tenant_ids
                .iter()
                .enumerate()
                .map(|(i, t)| (&**t, i as u32))
                .collect();
            // Where each membership was written (user, membership), for errors.
            let mut membership_at: Vec<(usize, usize)> = Vec::with_capacity(membership_total);
            let mut manager_names: Vec<Option<&Name<'_>>> = Vec::with_capacity(membership_total);
            // Each person's one membership `(tenant, entry)` (`MANY`: more than one, read from
            // the person; `NO_TENANT`: none), so resolving a manager reads 8 bytes of a dense
            // array rather than the person's entry and then their list, two cache misses each
            // for a million managers.
            const MANY: u32 = NO_TENANT - 1;
            let mut sole: Vec<(u32, UserIdx)> = if tenanted {
                vec![(NO_TENANT, 0); raw.users.len()]
            } else {
                Vec::new()
            };
            for (i, u) in raw.users.iter().enumerate() {
                let Some(ms) = u.memberships.as_ref().filter(|_| tenanted) else {
                    continue;
                };
                let mut mine: Vec<(u32, UserIdx)> = Vec::with_capacity(ms.len());
                for (j, m) in ms.iter().enumerate() {
                    let at = |field: &str, msg: String| {
                        ConfigError::new(
                            file,
                            line(&user_lines, "users", i),
                            &format!("users[{i}].memberships[{j}].{field}"),
                            msg,
                        )
                    };
                    let Some(t) = tenant_fast.get(&*m.tenant).copied() else {
                        errors.push(at("tenant", format!("unknown tenant '{}'", m.tenant)));
                        continue;
                    };
                    if mine.iter().any(|(x, _)| *x == t) {
                        errors.push(at(
                            "tenant",
                            format!(
                                "user '{}' has a second membership of tenant '{}'",
                                u.id, m.tenant
                            ),
                        ));
                        continue;
                    }
                    let grant = grant_of_roles(&m.roles, &at, &mut errors);
                    let mut team_ids = Vec::with_capacity(m.teams.len());
                    for t in &m.teams {
                        let id = match team_of.get(&**t) {
                            Some(id) => *id,
                            None => {
                                let next = teams.len() as u32;
                                team_of.insert(t.to_string(), next);
                                teams.push(t.to_string());
                                next
                            }
                        };
                        team_ids.push(id);
                    }
                    let idx = users.len() as UserIdx;
                    mine.push((t, idx));
                    membership_at.push((i, j));
                    manager_names.push(m.manager.as_ref());
                    users.push(User {
                        id: (*u.id).into(),
                        name: None,
                        grant,
                        manager: None,
                        teams: team_ids.into_boxed_slice(),
                        disabled: u.disabled,
                        api_keys: Box::default(),
                        service: false,
                        tenant: t,
                        person: i as UserIdx,
                        memberships: Box::default(),
                    });
                }
                mine.sort_unstable();
                sole[i] = match mine.as_slice() {
                    [] => (NO_TENANT, 0),
                    [one] => *one,
                    _ => (MANY, 0),
                };
                users[i].memberships = mine.into_boxed_slice();
            }
            // Managers within the tenant: the manager's own membership of it.
            for (k, name) in manager_names.iter().enumerate() {
                let Some(name) = name else { continue };
                let idx = first_membership + k;
                let (i, j) = membership_at[k];
                let tenant = users[idx].tenant;
                let found = by_id
                    .get(&***name)
                    .and_then(|p| match sole.get(*p as usize) {
                        Some((t, m)) if *t == tenant => Some(*m),
                        Some((MANY, _)) => users[*p as usize]
                            .memberships
                            .iter()
                            .find(|(t, _)| *t == tenant)
                            .map(|(_, m)| *m),
                        _ => None,
                    });
                match found {
                    Some(m) => users[idx].manager = Some(m),
                    None => errors.push(ConfigError::new(
                        file,
                        line(&user_lines, "users", i),
                        &format!("users[{i}].memberships[{j}].manager"),
                        if by_id.contains_key(&***name) {
                            format!(
                                "manager '{name}' is not a member of tenant '{}'",
                                tenant_ids.get(tenant as usize).map_or("", |t| t)
                            )
                        } else {
                            format!("unknown user '{name}'")
                        },
                    )),
                }
            }
            let membership_count = users.len() - first_membership;
            clock.end("memberships");
            // The records: read by now, or waited for. Their parse errors (and the text's
            // after them) are reported before the users' errors, as in one pass.
            if let Some((_, rest, _)) = rest {
                let (t, made) = rest().map_err(|e| vec![e])?;
                // Fields the users' compile needed, after the records: merged by the caller.
                if BuildForm::needs_merge(raw, &t) {
                    return Ok(Built::Merge(Box::new(t)));
                }
                tail = Some(t);
                ahead = made;
                clock.end("records read (wait)");
            }
            let tail = tail.as_ref();
            let draft = tail.map_or(raw.records.as_ref(), |t| t.records.as_ref());
            let version = tail
                .and_then(|t| t.version.as_ref())
                .or(raw.version.as_ref());
            let generated_at = tail.and_then(|t| t.generated_at).or(raw.generated_at);

            if !errors.is_empty() {
                return Err(errors);
            }
            let managers: Vec<u32> = users
                .iter()
                .map(|u| u.manager.unwrap_or(crate::hierarchy::NO_MANAGER))
                .collect();
            let mut team_members = vec![0u32; teams.len()];
            for u in &users {
                for t in u.teams.iter() {
                    team_members[*t as usize] += 1;
                }
            }
            let user_count = users.len();
            if draft.is_some() && user_count >= MAX_USERS_WITH_RECORDS {
                return Err(vec![ConfigError::new(
                    file,
                    None,
                    "records",
                    "a snapshot with records holds fewer than 2^30 users",
                )]);
            }
            // The users into their chunks (a copy of the whole array, 200 MB at the scale
            // target) on another thread while the hierarchy and the records are built (the
            // other core had nothing to do during the hierarchy); here when no thread can be
            // started.
            let (to_chunker, chunker_gets) = std::sync::mpsc::channel::<Vec<User>>();
            let chunker = std::thread::Builder::new()
                .spawn_scoped(scope, move || {
                    chunker_gets.recv().ok().map(Chunked::from_vec)
                })
                .ok();
            let mut users = Some(users);
            if chunker.is_some() {
                if let Some(u) = users.take() {
                    users = to_chunker.send(u).err().map(|back| back.0);
                }
            }
            // (The only message: the chunker's `recv` ends either way.) A refusal after this
            // (a manager loop) waits for the chunker: rare, and a refusal.
            drop(to_chunker);
            // Entry `c`'s id, from the form (the users are with the chunker by now): a person's,
            // a service's (never in a manager chain), or a membership's person's.
            let id_of = |c: usize| -> &str {
                match c.checked_sub(first_membership) {
                    Some(k) => membership_at
                        .get(k)
                        .and_then(|(i, _)| raw.users.get(*i))
                        .map_or("", |u| &*u.id),
                    None => match raw.users.get(c) {
                        Some(u) => &u.id,
                        None => raw
                            .services
                            .get(c - raw.users.len())
                            .map_or("", |sv| &*sv.id),
                    },
                }
            };
            // The manager relation must be a forest: it is when the tour from the entries
            // without a manager reaches every entry. When it does not, walk up from each user,
            // with memoised colours, to name the loops.
            let (hierarchy, forest) = Hierarchy::build_flat_reaching(&managers);
            if !forest {
                let mut state = vec![0u8; user_count]; // 0 unvisited, 1 on the current path, 2 done
                for start in 0..user_count {
                    let mut path = Vec::new();
                    let mut cur = Some(start);
                    while let Some(c) = cur {
                        match state[c] {
                            2 => break,
                            1 => {
                                let (u, field) = match c.checked_sub(first_membership) {
                                    Some(k) => {
                                        let (i, j) = membership_at[k];
                                        (i, format!("users[{i}].memberships[{j}].manager"))
                                    }
                                    None => (c, format!("users[{c}].manager")),
                                };
                                errors.push(ConfigError::new(
                                    file,
                                    line(&user_lines, "users", u),
                                    &field,
                                    format!(
                                        "the manager chain of '{}' loops back to itself",
                                        id_of(c)
                                    ),
                                ));
                                break;
                            }
                            _ => {
                                state[c] = 1;
                                path.push(c);
                                cur = managers
                                    .get(c)
                                    .filter(|m| **m != crate::hierarchy::NO_MANAGER)
                                    .map(|m| *m as usize);
                            }
                        }
                    }
                    for p in path {
                        state[p] = 2;
                    }
                }
            }

            if !errors.is_empty() {
                return Err(errors);
            }
            clock.end("hierarchy");
            // Teams named by shares get an index too (module docs of `Snapshot::teams`).
            if let Some(draft) = draft {
                for name in draft.team_names() {
                    if !team_of.contains_key(name) {
                        team_of.insert(name.to_string(), teams.len() as u32);
                        teams.push(name.to_string());
                        team_members.push(0);
                    }
                }
            }
            clock.end("teams");
            let (ahead_names, prepared) = match ahead {
                Some((n, p)) => (Some(n), p),
                None => (None, None),
            };
            let owner_names = owner_names.and_then(|h| h.join().ok()).or(ahead_names);
            clock.end("owner names (wait)");
            let records = match draft {
                None => RecordStore::default(),
                Some(draft) => {
                    let user = |id: &str| by_id.get(id).copied();
                    let team = |name: &str| team_of.get(name).copied();
                    let role = |id: &str| role_idx.get(id).copied();
                    // People only: a service owns no record and is shared none.
                    // (The persons: the users' first entries, in the form's order.)
                    let user_ids = |f: &mut dyn FnMut(&str, UserIdx)| {
                        for (i, u) in raw.users.iter().enumerate() {
                            f(&u.id, i as UserIdx);
                        }
                    };
                    let resolve = Resolve {
                        user: &user,
                        user_ids: &user_ids,
                        team: &team,
                        role: &role,
                        owner_names: owner_names.as_ref(),
                    };
                    let tenant = |name: &str| tenant_idx.get(name).copied();
                    RecordStore::build_with_tenants(
                        draft,
                        catalog.record_types(),
                        &resolve,
                        tenanted.then_some(&tenant as &dyn Fn(&str) -> Option<u32>),
                        prepared,
                        MAX_RECORD_ERRORS,
                        &mut |lap| clock.end(lap),
                    )
                    .map_err(|errs| {
                        let mut offsets: HashMap<&str, Vec<usize>> = HashMap::new();
                        errs.into_iter()
                            .map(|e| {
                                let offs = offsets.entry(e.list).or_insert_with(|| {
                                    nested_element_offsets(text, &["records", e.list])
                                });
                                let field = match (e.list, e.field) {
                                    ("records", _) => "records".to_string(),
                                    (l, "") => format!("records.{l}[{}]", e.index),
                                    (l, f) => format!("records.{l}[{}].{f}", e.index),
                                };
                                ConfigError::new(
                                    file,
                                    offs.get(e.index).map(|o| line_of(text, *o)),
                                    &field,
                                    e.message,
                                )
                            })
                            .collect::<Vec<_>>()
                    })?
                }
            };
            if draft.is_some() {
                clock.end("record tenants");
            }
            // The owners' name table (tens of megabytes at scale): freed on another thread.
            if let Some(n) = owner_names {
                let _ = std::thread::Builder::new().spawn(move || drop(n));
            }
            let version = match version {
                Some(v) if !v.is_empty() => v.clone(),
                _ => content_hash(),
            };
            clock.end("version");
            let loaded_at = SystemTime::now();
            let produced_at = generated_at
                .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                .unwrap_or(loaded_at);
            let role_idx: HashMap<String, u16> = role_idx
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            // The users in their chunks and the tables shared.
            let users = match (users, chunker) {
                (Some(u), _) => Chunked::from_vec(u),
                (None, Some(h)) => h.join().ok().flatten().ok_or_else(|| {
                    internal(file, "the users were lost on their way into chunks")
                })?,
                (None, None) => return Err(internal(file, "the users were not kept")),
            };
            let by_id = Layered::new(by_id);
            let api_keys = Layered::new(api_keys);
            clock.end("assemble");
            Ok(Built::Done(Box::new(Snapshot {
                version,
                loaded_at,
                produced_at,
                roles: Arc::new(roles),
                role_idx: Arc::new(role_idx),
                grants: Arc::new(grants),
                grant_of: Arc::new(grant_of),
                users,
                teams: Arc::new(teams),
                team_of: Arc::new(team_of),
                team_members: Arc::new(team_members),
                by_id,
                api_keys,
                services: Arc::new(services),
                hierarchy: Arc::new(hierarchy),
                managers: Arc::new(managers),
                records,
                tenants: Arc::new(tenant_ids),
                tenant_idx: Arc::new(tenant_idx),
                membership_count,
                detached: 0,
                build_phases: std::mem::take(&mut clock.phases).into(),
            })))
        });
        // The records draft's lists (hundreds of megabytes at scale) are freed on another
        // thread; the rest of the parsed form here.
        if let Some(draft) = tail.as_mut().and_then(|t| t.records.as_mut()) {
            draft.free_elsewhere();
        }
        built
    }

    /// The manager forest, for "is X my report at any depth" in O(1).
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The snapshot's records (empty when it has none).
    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// How old the snapshot is (from `generated_at`, else from when it was loaded).
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.produced_at)
            .unwrap_or_default()
    }

    pub fn user_index(&self, id: &str) -> Option<UserIdx> {
        self.by_id.get(id)
    }

    pub fn user_by_api_key(&self, digest: &[u8; 32]) -> Option<UserIdx> {
        self.api_keys.get(digest)
    }

    pub fn user(&self, idx: UserIdx) -> &User {
        &self.users[idx as usize]
    }

    pub fn grant(&self, user: &User) -> &Grant {
        &self.grants[user.grant as usize]
    }

    /// Does this user hold this permission through any of their roles?
    pub fn has_permission(&self, idx: UserIdx, p: PermId) -> bool {
        self.grant(self.user(idx)).permissions.contains(p)
    }

    /// The roles (preset and custom) known to this snapshot.
    pub fn roles(&self) -> &[SnapshotRole] {
        &self.roles
    }

    pub fn role_id(&self, idx: u16) -> &str {
        &self.roles[usize::from(idx)].id
    }

    pub fn team_name(&self, idx: u32) -> &str {
        &self.teams[idx as usize]
    }

    /// The people (not the service principals, not the memberships).
    pub fn users(&self) -> impl Iterator<Item = &User> + '_ {
        self.users
            .iter()
            .filter(|u| !u.service && !u.is_membership())
    }

    /// Does the snapshot declare tenants (else one implicit tenant)?
    pub fn has_tenants(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// A tenant's index by id.
    pub fn tenant_index(&self, id: &str) -> Option<u32> {
        self.tenant_idx.get(id).copied()
    }

    /// A tenant's id ("" for [`NO_TENANT`]).
    pub fn tenant_id(&self, idx: u32) -> &str {
        self.tenants.get(idx as usize).map_or("", |t| t)
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// How long each phase of the full build that made this version took, in order (parse,
    /// tenants and user ids, users and services, memberships, hierarchy, teams, the wait for
    /// the owners' name table, record owners, related records, record shares, record tenants,
    /// version, assemble); empty for a
    /// version an incremental batch made. With records, the parse is of the text up to them
    /// ("parse (to the records)"). With users before the records (and, when they have
    /// memberships, the tenants), the records are read on another thread while the users are
    /// compiled, and "records read (wait)" follows "memberships" (the wait for that thread;
    /// the three phases before it share the cores with it). Otherwise "records and the rest
    /// read" follows the parse. When roles, services or tenants follow the records, the phases of the compile that could not be used come
    /// first, then "merge (…)" and the whole compile's. "assemble" waits for the users' chunks,
    /// made on another thread during the records. They cover the build from its parse to the
    /// snapshot made (the caller's content-hash thread and the drop of the parsed form are not
    /// in them). For benches and the next person who makes a build faster.
    pub fn build_phases(&self) -> &[(&'static str, Duration)] {
        &self.build_phases
    }

    pub fn membership_count(&self) -> usize {
        self.membership_count
    }

    /// The principal that acts for `idx` (a person or a service) in `tenant`: the person's
    /// membership of it, the service itself if it belongs to it, else `None`. With
    /// [`NO_TENANT`] (a snapshot without tenants), `idx` itself. A binary search in the
    /// person's few memberships.
    #[inline]
    pub fn member(&self, idx: UserIdx, tenant: u32) -> Option<UserIdx> {
        if tenant == NO_TENANT {
            return Some(idx);
        }
        let u = self.user(idx);
        if u.service || u.is_membership() {
            return (u.tenant == tenant).then_some(idx);
        }
        u.memberships
            .binary_search_by_key(&tenant, |(t, _)| *t)
            .ok()
            .and_then(|k| u.memberships.get(k))
            .map(|(_, m)| *m)
    }

    /// The service principals.
    pub fn services(&self) -> impl Iterator<Item = &User> + '_ {
        self.services.values().map(|i| self.user(*i))
    }

    /// The people (service principals not counted).
    pub fn user_count(&self) -> usize {
        self.users.len() - self.services.len() - self.membership_count - self.detached
    }

    /// A service principal by id (never found by [`Snapshot::user_index`]).
    pub fn service_index(&self, id: &str) -> Option<UserIdx> {
        self.services.get(id).copied()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn custom_role_count(&self) -> usize {
        self.roles.iter().filter(|r| r.custom).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().unwrap()
    }

    #[test]
    fn roles_union_and_sharing() {
        let c = catalog();
        let s = Snapshot::build(
            "s.json",
            r#"{"roles":[{"id":"deleter","permissions":["campaign.delete"]}],
                "users":[{"id":"a","roles":["sales_rep","deleter"]},{"id":"b","roles":["deleter","sales_rep"]},
                         {"id":"c","roles":["member"],"manager":"a","api_keys":["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]}]}"#,
            &c,
        )
        .unwrap();
        let a = s.user_index("a").unwrap();
        let b = s.user_index("b").unwrap();
        assert_eq!(
            s.user(a).grant,
            s.user(b).grant,
            "same roles share one grant"
        );
        let del = c.permission("campaign.delete").unwrap();
        assert!(s.has_permission(a, del));
        let cu = s.user_index("c").unwrap();
        assert!(!s.has_permission(cu, del));
        assert_eq!(
            s.user_by_api_key(&crate::identity::api_key_digest("test")),
            Some(cu)
        );
        assert_eq!(
            s.grant(s.user(a)).roles_header.as_ref(),
            "sales_rep,deleter"
        );
        assert!(s.version.starts_with("blake3:"));
    }

    /// A manager loop is named by its first person, whose id is read from the form (the
    /// users are on their way into chunks by then), with a service among the entries.
    #[test]
    fn a_manager_loop_is_named_by_its_person() {
        let c = catalog();
        let text = r#"{"users":[{"id":"a","roles":[],"manager":"b"},{"id":"b","roles":[],"manager":"a"},
            {"id":"c","roles":[],"manager":"a"}],"services":[{"id":"s","roles":[]}]}"#;
        let errs: Vec<String> = Snapshot::build("s.json", text, &c)
            .err()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("users[0].manager")
                && errs[0].contains("the manager chain of 'a' loops back to itself"),
            "{errs:?}"
        );
    }

    /// The version of a snapshot without one: the first 8 bytes of the BLAKE3 hash of its text
    /// (the BLAKE3 paper's test vector for the empty input), the same whether it was computed
    /// aside while the build ran (a text over 16 MiB) or after it.
    #[test]
    fn an_unversioned_snapshot_is_named_by_the_blake3_of_its_text() {
        assert_eq!(content_hash(""), "blake3:af1349b9f5f9a1a6");
        let c = catalog();
        let users: Vec<String> = (0..200_000)
            .map(|i| {
                format!(
                    r#"{{"id":"user-{i:07}","roles":["admin"],"name":"{}"}}"#,
                    "x".repeat(60)
                )
            })
            .collect();
        let text = format!(r#"{{"users":[{}]}}"#, users.join(",\n"));
        assert!(
            text.len() > 16 << 20,
            "the hash is computed aside: {}",
            text.len()
        );
        let s = Snapshot::build("s.json", &text, &c).unwrap();
        assert_eq!(s.version, content_hash(&text));
        assert_eq!(
            s.version,
            format!("blake3:{}", &blake3::hash(text.as_bytes()).to_hex()[..16])
        );
    }

    #[test]
    fn every_error_is_located() {
        let c = catalog();
        let text = "{\n  \"users\": [\n    {\"id\": \"a\", \"roles\": [\"admin\"]},\n    {\"id\": \"b\", \"roles\": [\"nope\"], \"manager\": \"zz\"},\n    {\"id\": \"a\", \"roles\": []}\n  ]\n}";
        let errs = Snapshot::build("s.json", text, &c).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("s.json:5: users[2].id") && m.contains("twice")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("s.json:4: users[1].roles[0]")
                    && m.contains("unknown role 'nope'")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("s.json:4: users[1].manager")),
            "{msgs:?}"
        );
    }

    /// The errors come in the order of one pass: ids first, then user by user (roles,
    /// manager, keys).
    #[test]
    fn user_errors_keep_the_order_of_one_pass() {
        let c = catalog();
        let key = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "{{\"users\": [\n{}\n]}}",
            [
                r#"{"id": "a", "roles": ["nope"], "manager": "x1", "api_keys": ["bad"]}"#
                    .to_string(),
                format!(r#"{{"id": "b", "roles": [], "api_keys": ["{key}"]}}"#),
                r#"{"id": "a b", "roles": ["no2", "no3"]}"#.to_string(),
                r#"{"id": "c", "roles": [], "manager": "x2"}"#.to_string(),
                format!(
                    r#"{{"id": "d", "roles": ["no4"], "manager": "x3", "api_keys": ["{key}"]}}"#
                ),
                r#"{"id": "b", "roles": []}"#.to_string(),
            ]
            .join(",\n")
        );
        let errs = Snapshot::build("s.json", &text, &c).unwrap_err();
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{:?} {}", e.line, e.field))
            .collect();
        let want = [
            "Some(4) users[2].id",
            "Some(7) users[5].id",
            "Some(2) users[0].roles[0]",
            "Some(2) users[0].manager",
            "Some(2) users[0].api_keys[0]",
            "Some(4) users[2].roles[0]",
            "Some(4) users[2].roles[1]",
            "Some(5) users[3].manager",
            "Some(6) users[4].roles[0]",
            "Some(6) users[4].manager",
            "Some(6) users[4].api_keys[0]",
        ];
        assert_eq!(got, want, "{errs:?}");
        assert!(errs[10].message.contains("also held by 'b'"), "{errs:?}");
    }

    /// A service principal: decided by its roles, reached by key only, not a person; its
    /// errors located like a user's.
    #[test]
    fn services_are_key_only_principals_with_roles() {
        let c = catalog();
        let key = |k: &str| format!("sha256:{}", hex::encode(crate::identity::api_key_digest(k)));
        let text = format!(
            r#"{{"users":[{{"id":"a","roles":["member"],"api_keys":["{}"]}}],
                "services":[{{"id":"svc","name":"Sync","roles":["data_analyst"],"api_keys":["{}"]}}]}}"#,
            key("ka"),
            key("ks")
        );
        let s = Snapshot::build("s.json", &text, &c).unwrap();
        let svc = s
            .user_by_api_key(&crate::identity::api_key_digest("ks"))
            .unwrap();
        assert!(s.user(svc).service);
        assert_eq!(&*s.user(svc).id, "svc");
        assert_eq!(s.user_index("svc"), None, "never reached by id");
        assert_eq!(s.users().count(), 1);
        assert_eq!(s.services().count(), 1);
        let analytics = c.permission("company.access_analytics").unwrap();
        assert!(s.has_permission(svc, analytics));
        assert_eq!(s.grant(s.user(svc)).roles_header.as_ref(), "data_analyst");

        let text = format!(
            "{{\"users\": [{{\"id\": \"a\", \"roles\": [], \"api_keys\": [\"{}\"]}}],\n\"services\": [\n{}\n]}}",
            key("ka"),
            [
                format!(r#"{{"id": "a", "roles": ["nope"], "api_keys": ["{}"]}}"#, key("ka")),
                r#"{"id": "s", "roles": []}"#.to_string(),
                r#"{"id": "s", "roles": [], "api_keys": ["bad"]}"#.to_string(),
            ]
            .join(",\n")
        );
        let errs = Snapshot::build("s.json", &text, &c).unwrap_err();
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{:?} {}", e.line, e.field))
            .collect();
        assert_eq!(
            got,
            [
                "Some(3) services[0].id",
                "Some(3) services[0].roles[0]",
                "Some(3) services[0].api_keys[0]",
                "Some(5) services[2].id",
                "Some(5) services[2].api_keys[0]",
            ],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("also a user's id"), "{errs:?}");
        assert!(errs[2].message.contains("also held by 'a'"), "{errs:?}");
        assert!(errs[3].message.contains("twice"), "{errs:?}");
    }

    #[test]
    fn strict_json() {
        let c = catalog();
        for bad in [
            r#"{"users":[{"id":"a","roles":[],"rolez":[]}]}"#,
            r#"{"users":[{"id":"a","roles":[],"roles":["admin"]}]}"#,
            r#"{"users":[]} trailing"#,
            r#"{"users":[{"id":"a","roles":[]}],"users":[]}"#,
            r#"{"users":[{"id":"a","roles":[],"api_keys":["plaintext"]}]}"#,
            r#"{"roles":[{"id":"admin","permissions":[]}],"users":[]}"#,
            r#"{"roles":[{"id":"x","permissions":["no.such"]}],"users":[]}"#,
            r#"{"users":[{"id":"a","roles":[],"manager":"b"},{"id":"b","roles":[],"manager":"a"}]}"#,
            r#"{"users":[{"id":"a","roles":[],"manager":"a"}]}"#,
        ] {
            assert!(Snapshot::build("s.json", bad, &c).is_err(), "{bad}");
        }
    }

    /// An error per user, each located on its own line (one newline index for all: a scan of
    /// the text per error was quadratic), roles after the records too (the compile that runs
    /// while the records are read, then again once they are).
    #[test]
    fn every_users_error_names_its_line() {
        let c = crate::records::tests::catalog();
        let users: Vec<String> = (0..3000)
            .map(|i| format!(r#"{{"id":"u{i}","roles":["nope"]}}"#))
            .collect();
        for (before, after) in [(r#""roles":[],"#, ""), ("", r#","roles":[]"#)] {
            let text = format!(
                "{{{before}\n\"users\":[\n{}\n],\n\"records\":{{\"owners\":[]}}{after}}}",
                users.join(",\n")
            );
            let errors = Snapshot::build("s.json", &text, &c).unwrap_err();
            assert_eq!(errors.len(), 3000);
            for (i, e) in errors.iter().enumerate() {
                assert_eq!(e.line, Some(i + 3), "{e}");
                assert!(
                    e.to_string().contains(&format!("users[{i}].roles[0]")),
                    "{e}"
                );
            }
        }
    }

    /// What a build made, to compare two builds: the version, every entry of the users (with
    /// its grant's roles), the tenants, the records' sizes, each lead's owner and flags, and
    /// `generated_at`.
    fn summary(s: &Snapshot, c: &Catalog) -> String {
        let users: Vec<String> = (0..s.users.len())
            .map(|i| {
                let u = &s.users[i];
                format!("{u:?} {}", s.grants[u.grant as usize].roles_header)
            })
            .collect();
        let owners: Vec<String> = (0..200)
            .filter_map(|i| {
                let t = c.record_types().get("lead")?;
                let f = s.records.find(t, &crate::ids::RecordId::Int(i))?;
                // (Not its number: a slot of a table keyed afresh by each build.)
                Some(format!("{i}:{:?}:{}", f.owner, f.flags))
            })
            .collect();
        format!(
            "{} {:?} {users:?} {:?} {:?} {owners:?}",
            s.version,
            s.tenants,
            s.records.stats(),
            // `generated_at` (the tests' are small), not the time of the build.
            s.produced_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .ok()
                .filter(|s| *s < 1_000_000)
        )
    }

    /// The records are read on another thread while the users are compiled: the result,
    /// errors included, is the one-pass result (the whole form parsed, then compiled) wherever
    /// the records are and whatever follows them (users, roles, services or tenants after
    /// them: read in place, or merged and compiled again).
    #[test]
    fn records_read_aside_build_what_one_pass_builds() {
        let c = crate::records::tests::catalog();
        let strings = |e: Vec<ConfigError>| e.iter().map(ToString::to_string).collect::<Vec<_>>();
        let one_pass = |text: &str| -> Result<String, Vec<String>> {
            let form = BuildForm::parse("s.json", text).map_err(|e| vec![e.to_string()])?;
            let mut clock = PhaseClock::start();
            let mut hash = || content_hash(text);
            let built = Snapshot::compile("s.json", text, &c, &form, None, &mut clock, &mut hash);
            built.map(|s| summary(&s.unwrap(), &c)).map_err(strings)
        };
        let aside = |text: &str| {
            Snapshot::build("s.json", text, &c)
                .map(|s| summary(&s, &c))
                .map_err(strings)
        };
        let roles = r#""roles":[{"id":"rep","permissions":["lead.view@own+shared"]}]"#;
        let users =
            r#""users":[{"id":"a","roles":["rep"]},{"id":"b","roles":["rep"],"manager":"a"}]"#;
        let records = r#""records":{"owners":[{"type":"lead","id":"1","owner":"a"},{"type":"lead","id":2,"owner":"b"}],"shares":[{"type":"lead","id":"1","user":"b"}],"related":[{"type":"note","id":"10","parent_type":"lead","parent_id":"1"}]}"#;
        let service = r#""services":[{"id":"svc","roles":["rep"]}]"#;
        let tenants = r#""tenants":[{"id":"o1"}]"#;
        let members = r#""users":[{"id":"a","memberships":[{"tenant":"o1","roles":["rep"]}]}]"#;
        let t_records =
            r#""records":{"owners":[{"type":"lead","id":"1","owner":"a","tenant":"o1"}]}"#;
        let bad_user = r#""users":[{"id":"a","roles":["nope"]}]"#;
        let bad_records = r#""records":{"owners":[{"type":"lead","id":1.5}]}"#;
        let unknown_owner = r#""records":{"owners":[{"type":"lead","id":"1","owner":"zz"}]}"#;
        let cases = [
            // The records last, first, between.
            format!("{{{roles},{users},{records}}}"),
            format!("{{{records},{roles},{users}}}"),
            format!("{{{roles},{records},{users}}}"),
            format!("{{{users},{records},{roles}}}"),
            format!("{{{roles},{users},{records},{service}}}"),
            format!("{{{roles},{service},{users},{records}}}"),
            format!("{{{tenants},{roles},{members},{t_records}}}"),
            format!("{{{roles},{members},{t_records},{tenants}}}"),
            format!("{{{roles},{users},{records},\"version\":\"v9\",\"generated_at\":5}}"),
            format!("{{\"version\":\"v1\",{roles},{users},{records}}}"),
            format!("{{{roles},{users},\"records\":null}}"),
            format!("{{{roles},{users},\"records\":{{}},\"generated_at\":7}}"),
            // Parse errors after, in and around the records.
            format!("{{{roles},{users},{records},\"version\":7}}"),
            format!("{{{roles},{users},{records},\"users\":[]}}"),
            format!("{{{roles},{users},{records},\"extra\":1}}"),
            format!("{{{roles},{users},{records}"),
            format!("{{{roles},{users},{records}}} x"),
            format!("{{{roles},{users},{records},}}"),
            format!("{{{roles},{records}}}"),
            format!("{{{roles},{users},{bad_records}}}"),
            format!("{{{roles},{users},\"records\":[]}}"),
            // A user's error and a parse error in the records: the parse error, alone.
            format!("{{{roles},{bad_user},{bad_records}}}"),
            format!("{{{roles},{bad_user},{records},\"version\":7}}"),
            // A user's error, the records fine; a records' error.
            format!("{{{roles},{bad_user},{records}}}"),
            format!("{{{roles},{users},{unknown_owner}}}"),
            format!("{{{roles},{users},{records},{bad_user}}}"),
        ];
        for text in &cases {
            assert_eq!(aside(text), one_pass(text), "{text}");
        }
        // Which way each went, by its phases: read aside, in place (no users before the
        // records), merged (roles after them).
        let phases = |text: &str| -> Vec<&'static str> {
            let s = Snapshot::build("s.json", text, &c).unwrap();
            s.build_phases().iter().map(|(n, _)| *n).collect()
        };
        let aside_phases = phases(&cases[0]);
        assert_eq!(
            aside_phases[..2],
            ["parse (to the records)", "tenants and user ids"]
        );
        assert!(aside_phases.contains(&"records read (wait)"));
        assert!(!aside_phases.iter().any(|p| p.starts_with("merge")));
        let in_place = phases(&cases[1]);
        assert_eq!(
            in_place[..3],
            [
                "parse (to the records)",
                "records and the rest read",
                "tenants and user ids"
            ]
        );
        assert!(!in_place.contains(&"records read (wait)"));
        // Memberships and no tenants before the records: in place too (the tenants follow).
        assert_eq!(phases(&cases[7])[1], "records and the rest read");
        let merged = phases(&cases[3]);
        assert_eq!(
            merged[..6],
            [
                "parse (to the records)",
                "tenants and user ids",
                "users and services",
                "memberships",
                "merge (roles, services or tenants after the records)",
                "tenants and user ids"
            ]
        );
        // A records section long enough for the owners' name table (made on another thread
        // during the users' compile), its version after it.
        let many: Vec<String> = (0..5000)
            .map(|i| {
                format!(
                    r#"{{"type":"lead","id":"{i}","owner":"{}"}}"#,
                    ["a", "b"][i % 2]
                )
            })
            .collect();
        let text = format!(
            "{{{roles},{users},\"records\":{{\"owners\":[{}]}},\"version\":\"big\"}}",
            many.join(",")
        );
        let built = aside(&text);
        assert!(
            built.as_ref().is_ok_and(|s| s.starts_with("big ")),
            "{built:?}"
        );
        assert_eq!(built, one_pass(&text));
    }

    /// With tenants, the reader makes the owners' name table and prepares the owners while
    /// the users' compile ends: the snapshot is the one-pass snapshot (owners, flags, each
    /// record's tenant), with an owner id longer than the table holds, and an unknown owner
    /// is the one-pass error.
    #[test]
    fn owners_prepared_by_the_reader_build_what_one_pass_builds() {
        let c = crate::records::tests::catalog();
        let long = "a-user-id-longer-than-23-bytes";
        let one_pass = |text: &str| {
            let form = BuildForm::parse("s.json", text).unwrap();
            let mut clock = PhaseClock::start();
            let mut hash = || content_hash(text);
            Snapshot::compile("s.json", text, &c, &form, None, &mut clock, &mut hash)
                .map(|b| b.unwrap())
        };
        let view = |s: &Snapshot| {
            let t = c.record_types().get("lead").unwrap();
            let leads: Vec<_> = (0..6_000u64)
                .map(|i| {
                    s.records()
                        .find(t, &crate::ids::RecordId::Int(i))
                        .map(|f| (f.owner, f.flags, s.records().tenant_of(f.number)))
                })
                .collect();
            (summary(s, &c), leads)
        };
        let text = |unknown: Option<usize>| {
            // Enough users that the compile is still going when the reader is done (so that
            // the reader prepares pieces: all of them, in a debug build here).
            let users: Vec<String> = (0..30_000)
                .map(|i| format!("u{i}"))
                .chain([long.to_string()])
                .map(|id| {
                    format!(
                        r#"{{"id":"{id}","memberships":[{{"tenant":"o{}","roles":["rep"]}}]}}"#,
                        id.len() % 3
                    )
                })
                .collect();
            let owners: Vec<String> = (0..6_000usize)
                .map(|i| {
                    let owner = match i {
                        _ if unknown == Some(i) => "zz".to_string(),
                        3_000..=3_020 => long.to_string(),
                        _ => format!("u{}", i % 300),
                    };
                    let tenant = owner.len() % 3;
                    format!(r#"{{"type":"lead","id":{i},"owner":"{owner}","tenant":"o{tenant}"}}"#)
                })
                .collect();
            let related: Vec<String> = (0..1_500)
                .map(|i| {
                    format!(r#"{{"type":"note","id":"{i}","parent_type":"lead","parent_id":{i}}}"#)
                })
                .collect();
            format!(
                r#"{{"tenants":[{{"id":"o0"}},{{"id":"o1"}},{{"id":"o2"}}],"roles":[{{"id":"rep","permissions":["lead.view@own"]}}],"users":[{}],"records":{{"owners":[{}],"related":[{}]}},"version":"v"}}"#,
                users.join(","),
                owners.join(","),
                related.join(",")
            )
        };
        let t = text(None);
        let want = view(&one_pass(&t).unwrap());
        assert_eq!(want.1[3_010].map(|l| l.2), Some((long.len() % 3) as u32));
        // The reader's preparation stops wherever the compile is: several builds.
        for _ in 0..5 {
            assert!(view(&Snapshot::build("s.json", &t, &c).unwrap()) == want);
        }
        // The one error of a text, built and compiled in one pass: the same.
        let strings = |e: Vec<ConfigError>| e.iter().map(ToString::to_string).collect::<Vec<_>>();
        let one_error = |t: &str| {
            let a = Snapshot::build("s.json", t, &c)
                .map(|_| ())
                .map_err(strings);
            assert_eq!(a, one_pass(t).map(|_| ()).map_err(strings));
            let a = a.unwrap_err();
            assert_eq!(a.len(), 1, "{a:?}");
            a[0].clone()
        };
        assert!(one_error(&text(Some(4_500))).contains("unknown user 'zz'"));
        // A user's error: the compile never asks for the table; the build ends, with the
        // one-pass errors.
        let t = text(None).replacen(
            r#""memberships":[{"tenant":"o1""#,
            r#""memberships":[{"tenant":"o9""#,
            1,
        );
        assert!(one_error(&t).contains("unknown tenant 'o9'"));
    }

    /// The top level is read by hand, each field's value by serde (the records by their own
    /// parser): errors are located in the whole text, as one serde pass located them.
    #[test]
    fn top_level_errors_are_located_in_the_whole_text() {
        let c = catalog();
        let err = |text: &str| -> String {
            let e = Snapshot::build("s.json", text, &c).unwrap_err();
            assert_eq!(e.len(), 1, "{e:?}");
            e[0].to_string()
        };
        for (text, want) in [
            (
                "{\n\"users\": [\n  {\"id\": \"a\", \"roles\": [], \"rolez\": []}\n]}",
                "s.json:3: unknown field `rolez`",
            ),
            ("{\"users\": []}\n\n x", "s.json:3: trailing characters at line 3 column 2"),
            ("{\"users\": [], \"users\": []}", "s.json:1: duplicate field `users`"),
            ("{\"version\": \"1\"}", "s.json:1: missing field `users`"),
            ("{}", "s.json:1: missing field `users`"),
            ("{\"users\": [], \"extra\": 1}", "s.json:1: unknown field `extra`"),
            ("[]", "s.json:1: expected the snapshot (a JSON object)"),
            ("", "s.json:1: expected the snapshot (a JSON object)"),
            ("{\"users\": []", "s.json:1: expected `,` or `}`"),
            ("{\"users\" []}", "s.json:1: expected `:`"),
            ("{\"users\": [],}", "s.json:1: expected a field name, found `}`"),
            ("{\"users\": [], \"version\": 7}", "s.json:1: invalid type: integer `7`"),
            // The users list is read element by element (`compact`, else serde).
            (
                "{\"users\": [{\"id\":\"a\",\"roles\":[]} {\"id\":\"b\"}]}",
                "s.json:1: expected `,` or `]`, found `{` at line 1 column 34",
            ),
            (
                "{\"users\": [{\"id\":\"a\",\"roles\":[]},\n]}",
                "s.json:2: trailing comma at line 2 column 1",
            ),
            ("{\"users\": 5}", "s.json:1: invalid type: integer `5`, expected a sequence"),
            ("{\"users\": [5]}", "s.json:1: invalid type: integer `5`"),
            (
                "{\"users\": [{\"id\":\"a\",\"roles\":[]}",
                "s.json:1: expected `,` or `]`, found the end of the text",
            ),
            (
                "{\"users\": [],\n \"records\": {\"owners\": [\n{\"type\": \"lead\", \"id\": 1.5}]}}",
                "s.json:3: records.owners[0].id: a record id is a string or an integer",
            ),
        ] {
            let got = err(text);
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
        // The place of an error inside a value: where serde over the whole text puts it.
        for text in [
            "{\"users\": [{\"id\": \"a\", \"roles\": 5}]}",
            "{\"roles\": [],\n \"users\": [\n {\"id\": \"a\",\n  \"roles\": [\"x\"], \"teams\": {}}]}",
        ] {
            let whole = serde_json::from_str::<RawSnapshot>(text).unwrap_err();
            let got = err(text);
            let place = format!("at line {} column {}", whole.line(), whole.column());
            assert!(got.ends_with(&place), "{got} vs {whole}");
        }
        // Optional fields may be null; strings may hold escapes.
        let s = Snapshot::build(
            "s.json",
            r#"{"version": null, "generated_at": null, "records": null,
                "users": [{"id": "\u0061", "roles": ["adm\u0069n"], "manager": null, "teams": ["t\"1"]}]}"#,
            &c,
        )
        .unwrap();
        assert!(s.version.starts_with("blake3:"));
        let a = s.user_index("a").unwrap();
        assert_eq!(s.team_name(s.user(a).teams[0]), "t\"1");
        assert_eq!(s.records().stats().records, 0);
    }

    #[test]
    fn element_offsets_finds_array_items() {
        let t = r#"{"roles":[], "users": [ {"id":"a,[]"} , {"x":[1,{}]} ]}"#;
        let offs = element_offsets(t, "users");
        assert_eq!(offs.len(), 2);
        assert_eq!(&t[offs[0]..offs[0] + 1], "{");
        assert!(element_offsets(t, "roles").is_empty());
    }
}
