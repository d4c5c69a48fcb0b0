//! Record types and record ids: one canonical form per record, so that no spelling of an id
//! can slip past a check that another spelling would fail.
//!
//! # Layout
//!
//! - [`IdKind`]: how a record type spells its ids (integer, UUID, string).
//! - [`RecordTypes`]: the record types the config declares (`[[record_type]]`), interned to
//!   [`RecordTypeId`]s; related types name the parent types they inherit visibility from.
//! - [`RecordId`]: a canonical id. [`canonical_id`] parses one spelling (from a path, a query or
//!   a JSON string) and [`canonical_json_number`] a JSON number literal; both refuse what they
//!   cannot map to exactly one record.
//!
//! # Canonical spellings
//!
//! | kind | accepted | refused |
//! |---|---|---|
//! | `integer` | ASCII digits, no sign, no leading zero (`0` itself is fine), at most `9223372036854775807` (`i64::MAX`) | `017`, `+17`, `-1`, ` 17`, `17.0`, `1e3`, `0x11`, `１７` (full-width), empty, anything above `i64::MAX` |
//! | `uuid` | 32 hex digits, as `8-4-4-4-12` with hyphens or without any; any letter case; optionally in braces `{…}` or after a `urn:uuid:` prefix (any case) | other hyphen positions, braces with the prefix, whitespace, any other length or character |
//! | `string` | 1–128 characters from `A-Z a-z 0-9 - _ . :`, compared byte for byte (or ASCII-case-folded with `case_insensitive = true`) | anything else (spaces, `%`, `/`, non-ASCII, …) |
//!
//! Why these choices:
//! - **Integers are refused, not normalized**, when spelled with leading zeros: a CRM may read
//!   `017` as 17 (`intval`) or as octal 15 (`parseInt` of old, `oct`), and permgate cannot know
//!   which. Above `i64::MAX` a CRM may saturate or wrap (`intval` gives `PHP_INT_MAX`), reading
//!   another record than the one checked.
//! - **UUIDs are normalized**: every accepted spelling denotes exactly one 128-bit value, and a
//!   CRM either reads that value or finds no record, so checking the value is sound. The
//!   canonical display is lowercase with hyphens.
//! - **Strings** are opaque to permgate, so only characters with one meaning are accepted: none
//!   needs percent-encoding in a path, none is whitespace a database might trim. For CRMs whose
//!   database compares ids without case (MySQL's default collations), declare the type
//!   `case_insensitive`: ids are then folded to lowercase, in the snapshot and in requests alike.
//!
//! Canonicalization is idempotent: the display form of a canonical id parses back to itself.

use std::collections::HashMap;
use std::fmt;

/// How a record type spells its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Integer,
    Uuid,
    String { case_insensitive: bool },
}

impl IdKind {
    /// The config spelling: `integer`, `uuid`, `string`.
    pub fn parse(s: &str, case_insensitive: bool) -> Result<IdKind, String> {
        match (s, case_insensitive) {
            ("integer", false) => Ok(IdKind::Integer),
            ("uuid", false) => Ok(IdKind::Uuid),
            ("string", ci) => Ok(IdKind::String {
                case_insensitive: ci,
            }),
            ("integer" | "uuid", true) => Err(format!(
                "case_insensitive applies to string ids only ('{s}' ids are normalized already)"
            )),
            (other, _) => Err(format!(
                "'{other}' is not an id kind (one of: integer, uuid, string)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IdKind::Integer => "integer",
            IdKind::Uuid => "uuid",
            IdKind::String { .. } => "string",
        }
    }
}

/// The longest string id accepted.
pub const MAX_STRING_ID: usize = 128;

/// A canonical record id. Two spellings of the same record give equal `RecordId`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordId {
    Int(u64),
    Uuid(u128),
    Str(Box<str>),
}

impl fmt::Display for RecordId {
    /// The canonical spelling (what [`canonical_id`] maps back to the same id).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordId::Int(n) => write!(f, "{n}"),
            RecordId::Uuid(u) => {
                let h = format!("{u:032x}");
                write!(
                    f,
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            }
            RecordId::Str(s) => f.write_str(s),
        }
    }
}

/// Why a spelling was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub kind: IdKind,
    pub message: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a canonical {} id: {}",
            self.kind.name(),
            self.message
        )
    }
}

impl std::error::Error for IdError {}

/// Parse one spelling of an id of `kind` into its canonical form, or refuse it (module docs).
pub fn canonical_id(kind: IdKind, s: &str) -> Result<RecordId, IdError> {
    let err = |message| IdError { kind, message };
    match kind {
        IdKind::Integer => parse_integer(s).map(RecordId::Int).map_err(err),
        IdKind::Uuid => parse_uuid(s).map(RecordId::Uuid).map_err(err),
        IdKind::String { case_insensitive } => {
            if s.is_empty() || s.len() > MAX_STRING_ID {
                return Err(err("a string id has 1 to 128 characters"));
            }
            if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
            {
                return Err(err(
                    "a string id holds only A-Z a-z 0-9 and - _ . : (no spaces, no escapes)",
                ));
            }
            Ok(RecordId::Str(if case_insensitive {
                s.to_ascii_lowercase().into_boxed_str()
            } else {
                s.into()
            }))
        }
    }
}

/// A JSON number literal (exactly as it appears in the body) as an id of `kind`. Only
/// integer ids may be numbers, and only plain non-negative integer literals (`17`, not `17.0`,
/// `1.7e1` or `-0`): anything else is the wrong type.
pub fn canonical_json_number(kind: IdKind, literal: &str) -> Result<RecordId, IdError> {
    match kind {
        IdKind::Integer => canonical_id(kind, literal),
        _ => Err(IdError {
            kind,
            message: "ids of this type are JSON strings, not numbers",
        }),
    }
}

fn parse_integer(s: &str) -> Result<u64, &'static str> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err("empty");
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return Err("only the digits 0-9 (no sign, space, point or exponent)");
    }
    if b.len() > 1 && b[0] == b'0' {
        return Err("leading zeros are refused (a CRM may read 017 as 17 or as octal 15)");
    }
    match s.parse::<u64>() {
        Ok(n) if n <= i64::MAX as u64 => Ok(n),
        _ => Err("above 9223372036854775807"),
    }
}

fn parse_uuid(s: &str) -> Result<u128, &'static str> {
    const PREFIX: &str = "urn:uuid:";
    let body = if s.len() >= PREFIX.len()
        && s.is_char_boundary(PREFIX.len())
        && s[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
    {
        &s[PREFIX.len()..]
    } else if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        inner
    } else {
        s
    };
    let b = body.as_bytes();
    let hex: Vec<u8> = match b.len() {
        32 => b.to_vec(),
        36 => {
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return Err("hyphens go at positions 8-4-4-4-12, or nowhere");
            }
            b.iter().copied().filter(|&c| c != b'-').collect()
        }
        _ => return Err("32 hex digits, with hyphens as 8-4-4-4-12 or without any"),
    };
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err("32 hex digits, with hyphens as 8-4-4-4-12 or without any");
    }
    // 32 ASCII hex digits: always a valid u128 in base 16.
    std::str::from_utf8(&hex)
        .ok()
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .ok_or("32 hex digits")
}

/// An interned record type: its index in [`RecordTypes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordTypeId(u16);

impl RecordTypeId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One declared record type.
#[derive(Debug, Clone)]
pub struct RecordType {
    pub name: String,
    pub id_kind: IdKind,
    /// For related objects (notes, tasks, call logs): the types of record they may belong to,
    /// whose visibility they inherit. A parent type never has parents itself, so visibility is
    /// decided in one step.
    pub parents: Vec<RecordTypeId>,
}

/// The record types of a config. Empty by default: a config that checks records declares them.
#[derive(Debug, Clone, Default)]
pub struct RecordTypes {
    types: Vec<RecordType>,
    by_name: HashMap<String, RecordTypeId>,
}

/// A record type as declared, before validation: `(name, id kind, parent type names)`.
pub struct RecordTypeSpec<'a> {
    pub name: &'a str,
    pub id_kind: IdKind,
    pub parents: &'a [String],
}

impl RecordTypes {
    /// Intern declared types. Errors are `(index of the declaration, message)`; the types
    /// come back with them, holding every valid declaration (so a config reports one broken
    /// declaration once, not again at every route that names another type).
    pub fn build(specs: &[RecordTypeSpec<'_>]) -> (RecordTypes, Vec<(usize, String)>) {
        let mut errors = Vec::new();
        let mut out = RecordTypes::default();
        // The declaration each type came from (a duplicate declaration makes no type).
        let mut declared_at = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if !crate::perms::is_valid_role_id(s.name) || s.name.contains('-') {
                errors.push((
                    i,
                    format!(
                        "'{}' is not a valid record type name (lowercase letters, digits, _)",
                        s.name
                    ),
                ));
                continue;
            }
            if out.by_name.contains_key(s.name) {
                errors.push((i, format!("record type '{}' is declared twice", s.name)));
                continue;
            }
            if out.types.len() >= usize::from(u16::MAX) {
                errors.push((i, "too many record types".into()));
                continue;
            }
            let id = RecordTypeId(out.types.len() as u16);
            out.by_name.insert(s.name.to_string(), id);
            declared_at.push(i);
            out.types.push(RecordType {
                name: s.name.to_string(),
                id_kind: s.id_kind,
                parents: Vec::new(),
            });
        }
        // Parents, once every name is known.
        for (i, s) in specs.iter().enumerate() {
            let Some(me) = out.by_name.get(s.name).copied() else {
                continue;
            };
            if declared_at[me.index()] != i {
                continue; // a duplicate declaration; already reported
            }
            let mut parents = Vec::new();
            for p in s.parents {
                match out.by_name.get(p.as_str()) {
                    None => errors.push((i, format!("parents: unknown record type '{p}'"))),
                    Some(pid) if *pid == me => {
                        errors.push((i, format!("parents: '{p}' cannot be its own parent")))
                    }
                    Some(pid) => {
                        let parent_spec = specs.iter().find(|x| x.name == p.as_str());
                        if parent_spec.is_some_and(|x| !x.parents.is_empty()) {
                            errors.push((
                                i,
                                format!(
                                    "parents: '{p}' has parents itself; related objects hang \
                                     directly under a lead/contact/deal (one level)"
                                ),
                            ));
                        } else if !parents.contains(pid) {
                            parents.push(*pid);
                        }
                    }
                }
            }
            out.types[me.index()].parents = parents;
        }
        (out, errors)
    }

    pub fn get(&self, name: &str) -> Option<RecordTypeId> {
        self.by_name.get(name).copied()
    }

    pub fn info(&self, id: RecordTypeId) -> &RecordType {
        &self.types[id.index()]
    }

    pub fn name(&self, id: RecordTypeId) -> &str {
        &self.types[id.index()].name
    }

    pub fn kind(&self, id: RecordTypeId) -> IdKind {
        self.types[id.index()].id_kind
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = RecordTypeId> {
        (0..self.types.len()).map(|i| RecordTypeId(i as u16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STR: IdKind = IdKind::String {
        case_insensitive: false,
    };
    const STR_CI: IdKind = IdKind::String {
        case_insensitive: true,
    };

    #[test]
    fn integers() {
        for (s, n) in [
            ("0", 0),
            ("17", 17),
            ("9223372036854775807", i64::MAX as u64),
        ] {
            assert_eq!(
                canonical_id(IdKind::Integer, s),
                Ok(RecordId::Int(n)),
                "{s}"
            );
        }
        for s in [
            "",
            "017",
            "00",
            "+17",
            "-1",
            "-0",
            " 17",
            "17 ",
            "17.0",
            "1e3",
            "0x11",
            "１７",
            "9223372036854775808",
            "18446744073709551616",
            "1_000",
        ] {
            assert!(canonical_id(IdKind::Integer, s).is_err(), "{s:?}");
        }
        assert!(canonical_json_number(IdKind::Integer, "17").is_ok());
        for lit in ["17.0", "1.7e1", "-0", "-1", "1E2"] {
            assert!(
                canonical_json_number(IdKind::Integer, lit).is_err(),
                "{lit}"
            );
        }
        assert!(canonical_json_number(IdKind::Uuid, "17").is_err());
        assert!(canonical_json_number(STR, "17").is_err());
    }

    #[test]
    fn uuids_normalize_every_accepted_spelling() {
        let want = RecordId::Uuid(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);
        for s in [
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
            "6ba7b8109dad11d180b400c04fd430c8",
            "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
            "{6BA7B8109DAD11D180B400C04FD430C8}",
            "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "URN:UUID:6ba7b8109dad11d180b400c04fd430c8",
        ] {
            assert_eq!(canonical_id(IdKind::Uuid, s), Ok(want.clone()), "{s}");
        }
        assert_eq!(want.to_string(), "6ba7b810-9dad-11d1-80b4-00c04fd430c8");
        for s in [
            "",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8a",
            "6ba7b8109-dad-11d1-80b4-00c04fd430c8",
            "6ba7b810-9dad-11d1-80b400c04fd430c8-",
            "6ba7b810-9dad-11d1-80b4-00c04fd430cg",
            " 6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "{6ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "urn:uuid:{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
            "{urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
            "6ba7b810_9dad_11d1_80b4_00c04fd430c8",
            "+ba7b810-9dad-11d1-80b4-00c04fd430c8",
            "ééééééééééééééééé",
        ] {
            assert!(canonical_id(IdKind::Uuid, s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn strings() {
        assert_eq!(
            canonical_id(STR, "ACME-0001:x.y_z"),
            Ok(RecordId::Str("ACME-0001:x.y_z".into()))
        );
        assert_eq!(
            canonical_id(STR_CI, "ACME-0001"),
            Ok(RecordId::Str("acme-0001".into()))
        );
        assert_ne!(canonical_id(STR, "ABC"), canonical_id(STR, "abc"));
        let long = "a".repeat(MAX_STRING_ID + 1);
        for s in [
            "",
            "a b",
            " a",
            "a%20",
            "a/b",
            "é",
            "a\0",
            long.as_str(),
            "a+b",
        ] {
            assert!(canonical_id(STR, s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn kinds_and_types() {
        assert_eq!(IdKind::parse("integer", false), Ok(IdKind::Integer));
        assert!(IdKind::parse("uuid", true).is_err());
        assert!(IdKind::parse("int", false).is_err());
        let parents = vec!["lead".to_string(), "deal".to_string()];
        let none: Vec<String> = vec![];
        let (t, errs) = RecordTypes::build(&[
            RecordTypeSpec {
                name: "lead",
                id_kind: IdKind::Integer,
                parents: &none,
            },
            RecordTypeSpec {
                name: "deal",
                id_kind: IdKind::Uuid,
                parents: &none,
            },
            RecordTypeSpec {
                name: "note",
                id_kind: IdKind::Integer,
                parents: &parents,
            },
        ]);
        assert!(errs.is_empty());
        let note = t.get("note").unwrap();
        assert_eq!(t.info(note).parents.len(), 2);
        assert_eq!(t.kind(t.get("deal").unwrap()), IdKind::Uuid);

        let bad_parent = vec!["note".to_string()];
        let (partial, errs) = RecordTypes::build(&[
            RecordTypeSpec {
                name: "lead",
                id_kind: IdKind::Integer,
                parents: &none,
            },
            RecordTypeSpec {
                name: "note",
                id_kind: IdKind::Integer,
                parents: &parents, // "deal" is unknown here
            },
            RecordTypeSpec {
                name: "comment",
                id_kind: IdKind::Integer,
                parents: &bad_parent, // a parent with parents
            },
            RecordTypeSpec {
                name: "lead",
                id_kind: IdKind::Integer,
                parents: &none,
            },
            RecordTypeSpec {
                name: "Bad-Name",
                id_kind: IdKind::Integer,
                parents: &none,
            },
        ]);
        let idx: Vec<usize> = errs.iter().map(|e| e.0).collect();
        assert_eq!(idx, vec![3, 4, 1, 2], "{errs:?}");
        // The valid part stays: lead, note (with its known parent), comment.
        assert_eq!(partial.len(), 3);
        assert_eq!(partial.info(partial.get("note").unwrap()).parents.len(), 1);
    }

    fn any_kind() -> impl Strategy<Value = IdKind> {
        prop_oneof![
            Just(IdKind::Integer),
            Just(IdKind::Uuid),
            Just(STR),
            Just(STR_CI)
        ]
    }

    proptest! {
        /// Canonicalization is idempotent: the canonical spelling of any accepted input parses
        /// back to the same id, whatever the input looked like.
        #[test]
        fn canonicalization_is_idempotent(kind in any_kind(), s in "\\PC{0,40}|[0-9]{1,20}|(urn:uuid:|\\{)?[0-9a-fA-F-]{32,36}\\}?|[A-Za-z0-9._:-]{1,20}") {
            if let Ok(id) = canonical_id(kind, &s) {
                let again = canonical_id(kind, &id.to_string());
                prop_assert_eq!(again.as_ref(), Ok(&id));
                prop_assert_eq!(again.map(|a| a.to_string()), Ok(id.to_string()));
            }
        }

        /// Two UUID spellings are the same record exactly when their hex digits agree.
        #[test]
        fn uuid_spellings_agree(v in any::<u128>(), upper in any::<bool>(), hyphens in any::<bool>(), wrap in 0u8..3) {
            let mut h = format!("{v:032x}");
            if hyphens {
                h = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            }
            if upper {
                h = h.to_uppercase();
            }
            let s = match wrap { 0 => h, 1 => format!("{{{h}}}"), _ => format!("urn:uuid:{h}") };
            prop_assert_eq!(canonical_id(IdKind::Uuid, &s), Ok(RecordId::Uuid(v)));
        }

        /// Every integer in range has exactly one accepted spelling.
        #[test]
        fn one_spelling_per_integer(n in 0u64..=(i64::MAX as u64), zeros in 1usize..3) {
            prop_assert_eq!(canonical_id(IdKind::Integer, &n.to_string()), Ok(RecordId::Int(n)));
            let padded = format!("{}{n}", "0".repeat(zeros));
            prop_assert!(canonical_id(IdKind::Integer, &padded).is_err());
        }
    }
}
