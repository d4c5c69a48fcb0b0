//! Learning a record from the CRM's answer to a create call (`creates` on a route): the record
//! a 2xx answer names becomes an `upsert_record` change ([`crate::changes`]) the server applies
//! to its live snapshot at once, so a caller may act on what they just created without waiting
//! for the next full load.
//!
//! ```toml
//! [[route]]
//! methods = ["POST"]
//! path = "/api/v1/leads"
//! permission = "lead.create"
//! creates = { type = "lead", id = "/id" }        # a JSON pointer into the 2xx answer body
//!
//! [[route]]
//! methods = ["POST"]
//! path = "/api/v1/leads/{lead_id}/notes"
//! permission = "lead.update"
//! creates = { type = "note", id = "location", parent = "{lead_id}" }
//!                 # id = "location": the last path segment of the answer's Location header;
//!                 # parent: a path parameter naming the record the new one belongs to
//!                 # (parent_type = "lead" when the type declares several parents);
//!                 # owner = "caller" (default) | "none"; max_answer_bytes = 65536
//! ```
//!
//! Config: [`RawCreates`] → [`compile`] → [`Creates`], hung on the route. Request time (pure):
//! [`id_from_location`] or [`id_from_body`], then [`Creates::change`]. Whatever fails here
//! leaves the answer untouched: the record is simply not learned (the server counts and logs
//! it).

use serde::Deserialize;

use crate::changes::{Change, RecordRef};
use crate::ids::{canonical_id, canonical_json_number, RecordId, RecordTypeId, RecordTypes};
use crate::json::{self, Json, Limits, Pointer};
use crate::records::RawId;

/// The most of an answer body read for the id by default.
pub const DEFAULT_MAX_ANSWER_BYTES: usize = 64 << 10;
/// The most a config may set.
pub const MAX_ANSWER_LIMIT: usize = 4 << 20;

/// `creates = { ... }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCreates {
    #[serde(rename = "type")]
    pub record_type: String,
    pub id: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub parent_type: Option<String>,
    #[serde(default)]
    pub max_answer_bytes: Option<usize>,
}

/// Where the new record's id is in the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdAt {
    /// A JSON pointer into the answer body.
    Body(Pointer),
    /// The last path segment of the `Location` header.
    Location,
}

/// What a create route's 2xx answer creates (compiled).
#[derive(Debug, Clone)]
pub struct Creates {
    pub record_type: RecordTypeId,
    /// The type's name, as the change names it.
    pub type_name: String,
    pub id: IdAt,
    /// The caller owns the new record (else: nobody).
    pub owner_is_caller: bool,
    /// The record it belongs to: its type, and the path segment index holding its id.
    pub parent: Option<(RecordTypeId, String, usize)>,
    /// The most of the answer body read for the id.
    pub max_answer_bytes: usize,
}

/// Compile `creates` for a route with these methods and path template (`None`: a regex
/// route). Errors name the field under `creates.`.
pub fn compile(
    raw: &RawCreates,
    methods: &[String],
    template: Option<&str>,
    types: &RecordTypes,
) -> Result<Creates, Vec<String>> {
    let mut errors = Vec::new();
    if let Some(m) = methods
        .iter()
        .find(|m| !m.eq_ignore_ascii_case("POST") && !m.eq_ignore_ascii_case("PUT"))
    {
        errors.push(format!(
            "creates: a route that creates answers POST or PUT only (not '{m}')"
        ));
    }
    let record_type = types.get(&raw.record_type);
    if record_type.is_none() {
        errors.push(format!(
            "creates.type: unknown record type '{}' (declare it as a [[record_type]])",
            raw.record_type
        ));
    }
    let id = if raw.id == "location" {
        Some(IdAt::Location)
    } else if raw.id.is_empty() || raw.id.starts_with('/') {
        match Pointer::parse(&raw.id) {
            Ok(p) => Some(IdAt::Body(p)),
            Err(e) => {
                errors.push(format!("creates.id: {e}"));
                None
            }
        }
    } else {
        errors.push(format!(
            "creates.id: '{}' is neither a JSON pointer into the answer body (\"/id\") nor \"location\"",
            raw.id
        ));
        None
    };
    let owner_is_caller = match raw.owner.as_deref() {
        None | Some("caller") => true,
        Some("none") => false,
        Some(other) => {
            errors.push(format!(
                "creates.owner: '{other}' is not one of: caller, none"
            ));
            true
        }
    };
    let parent = match (&raw.parent, record_type) {
        (None, _) => {
            if raw.parent_type.is_some() {
                errors.push("creates.parent_type: needs creates.parent".into());
            }
            None
        }
        (Some(_), None) => None, // the type's own error is enough
        (Some(p), Some(t)) => {
            let declared = &types.info(t).parents;
            let name = p
                .strip_prefix('{')
                .and_then(|p| p.strip_suffix('}'))
                .filter(|n| !n.is_empty() && !n.contains(['{', '}', '*', ':']));
            let segment = match (name, template) {
                (None, _) => {
                    errors.push(format!(
                        "creates.parent: '{p}' is not a path parameter (\"{{lead_id}}\")"
                    ));
                    None
                }
                (Some(_), None) => {
                    errors.push(
                        "creates.parent: a parent from the path needs a template route (path, not regex)"
                            .into(),
                    );
                    None
                }
                (Some(n), Some(tpl)) => match crate::inspect::param_segment(tpl, n) {
                    Some(s) => Some(s),
                    None => {
                        errors.push(format!(
                            "creates.parent: the route's path template has no '{{{n}}}' segment"
                        ));
                        None
                    }
                },
            };
            let parent_type = match &raw.parent_type {
                Some(pt) => match types.get(pt) {
                    Some(x) if declared.contains(&x) => Some(x),
                    Some(_) => {
                        errors.push(format!(
                            "creates.parent_type: '{pt}' is not among the parents record type '{}' declares",
                            raw.record_type
                        ));
                        None
                    }
                    None => {
                        errors.push(format!("creates.parent_type: unknown record type '{pt}'"));
                        None
                    }
                },
                None => match declared.as_slice() {
                    [only] => Some(*only),
                    [] => {
                        errors.push(format!(
                            "creates.parent: record type '{}' declares no parents (add parents = [...] to its [[record_type]])",
                            raw.record_type
                        ));
                        None
                    }
                    _ => {
                        errors.push(format!(
                            "creates.parent_type: record type '{}' declares several parents; name the one in the path",
                            raw.record_type
                        ));
                        None
                    }
                },
            };
            match (parent_type, segment) {
                (Some(pt), Some(s)) => Some((pt, types.name(pt).to_string(), s)),
                _ => None,
            }
        }
    };
    let max_answer_bytes = raw.max_answer_bytes.unwrap_or(DEFAULT_MAX_ANSWER_BYTES);
    if max_answer_bytes == 0 || max_answer_bytes > MAX_ANSWER_LIMIT {
        errors.push(format!(
            "creates.max_answer_bytes: must be between 1 and {MAX_ANSWER_LIMIT}"
        ));
    }
    match (errors.is_empty(), record_type, id) {
        (true, Some(record_type), Some(id)) => Ok(Creates {
            record_type,
            type_name: raw.record_type.clone(),
            id,
            owner_is_caller,
            parent,
            max_answer_bytes,
        }),
        _ => Err(errors),
    }
}

/// Why a record was not learned (for the log line; the answer is passed on unchanged).
pub type NotLearned = String;

/// The new record's id from the `Location` header values of the answer: exactly one value,
/// visible ASCII; its path (after any `scheme://authority`, before any `?` or `#`) ends in a
/// non-empty segment that is a canonical id of the type.
pub fn id_from_location(
    creates: &Creates,
    types: &RecordTypes,
    values: &[&[u8]],
) -> Result<RecordId, NotLearned> {
    let value = match values {
        [] => return Err("the answer has no Location header".into()),
        [one] => *one,
        _ => return Err("the answer has several Location headers".into()),
    };
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("the Location header is not visible ASCII")?;
    let path = match text.find("://") {
        Some(i) => {
            let rest = &text[i + 3..];
            rest.find('/').map_or("", |j| &rest[j..])
        }
        None => text,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segment = path.rsplit('/').next().unwrap_or_default();
    if segment.is_empty() {
        return Err(format!("the Location '{text}' ends in no id segment"));
    }
    canonical_id(types.kind(creates.record_type), segment)
        .map_err(|e| format!("the Location's last segment: {e}"))
}

/// The new record's id from the answer body: strict JSON (at most `max_answer_bytes`), the
/// pointer names a string or a plain integer that is a canonical id of the type.
pub fn id_from_body(
    creates: &Creates,
    types: &RecordTypes,
    body: &[u8],
) -> Result<RecordId, NotLearned> {
    let IdAt::Body(pointer) = &creates.id else {
        return Err("the route reads its id from the Location header".into());
    };
    let limits = Limits {
        max_bytes: creates.max_answer_bytes,
        ..Limits::default()
    };
    let doc = json::parse(body, &limits).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let kind = types.kind(creates.record_type);
    let at = pointer.as_str();
    let id = match pointer.get(&doc) {
        None => return Err(format!("the answer has nothing at '{at}'")),
        Some(Json::String(s)) => canonical_id(kind, s),
        Some(Json::Number(n)) => canonical_json_number(kind, n),
        Some(other) => {
            return Err(format!(
                "the answer's '{at}' is {}, not an id",
                other.kind()
            ))
        }
    };
    id.map_err(|e| format!("the answer's '{at}': {e}"))
}

impl Creates {
    /// The `upsert_record` change for a record of this route's type with this id, created by
    /// `caller` (a user id) on the canonical `path`, in the call's `tenant` (with tenants: the
    /// record belongs to the tenant the call was allowed in). `Err`: the parent's id in the
    /// path is not canonical, or the owner would be the caller and there is none.
    pub fn change(
        &self,
        types: &RecordTypes,
        id: &RecordId,
        caller: Option<&str>,
        path: &str,
        tenant: Option<&str>,
    ) -> Result<Change, NotLearned> {
        let owner = match (self.owner_is_caller, caller) {
            (false, _) => None,
            (true, Some(c)) => Some(c.to_string()),
            (true, None) => return Err("no caller to own the record".into()),
        };
        let parent = match &self.parent {
            None => None,
            Some((t, name, segment)) => {
                let text = path
                    .strip_prefix('/')
                    .and_then(|p| p.split('/').nth(*segment))
                    .ok_or("the path has no parent segment")?;
                let pid = canonical_id(types.kind(*t), text)
                    .map_err(|e| format!("the parent's id in the path: {e}"))?;
                Some(RecordRef {
                    record_type: name.clone(),
                    id: RawId::Text(pid.to_string()),
                })
            }
        };
        Ok(Change::UpsertRecord {
            record_type: self.type_name.clone(),
            id: RawId::Text(id.to_string()),
            owner,
            parent,
            tenant: tenant.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::ids::RecordTypeSpec;

    fn types() -> RecordTypes {
        let parents = vec!["lead".to_string()];
        let (t, errors) = RecordTypes::build(&[
            RecordTypeSpec {
                name: "lead",
                id_kind: crate::ids::IdKind::Integer,
                parents: &[],
            },
            RecordTypeSpec {
                name: "note",
                id_kind: crate::ids::IdKind::Uuid,
                parents: &parents,
            },
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        t
    }

    fn raw(toml_text: &str) -> RawCreates {
        toml::from_str(toml_text).unwrap()
    }

    fn post() -> Vec<String> {
        vec!["POST".into()]
    }

    #[test]
    fn config_errors_name_the_field() {
        let t = types();
        let cases = [
            (
                "type = \"deal\"\nid = \"/id\"",
                "creates.type: unknown record type 'deal'",
            ),
            (
                "type = \"lead\"\nid = \"id\"",
                "creates.id: 'id' is neither",
            ),
            (
                "type = \"lead\"\nid = \"/id\"\nowner = \"bob\"",
                "creates.owner",
            ),
            (
                "type = \"lead\"\nid = \"/id\"\nparent = \"{x}\"",
                "declares no parents",
            ),
            (
                "type = \"note\"\nid = \"/id\"\nparent = \"lead_id\"",
                "is not a path parameter",
            ),
            (
                "type = \"note\"\nid = \"/id\"\nparent = \"{nope}\"",
                "no '{nope}' segment",
            ),
            (
                "type = \"note\"\nid = \"/id\"\nparent = \"{lead_id}\"\nparent_type = \"note\"",
                "not among the parents",
            ),
            (
                "type = \"lead\"\nid = \"/id\"\nparent_type = \"lead\"",
                "needs creates.parent",
            ),
            (
                "type = \"lead\"\nid = \"/id\"\nmax_answer_bytes = 0",
                "creates.max_answer_bytes",
            ),
        ];
        for (text, says) in cases {
            let e = compile(&raw(text), &post(), Some("/leads/{lead_id}/notes"), &t).unwrap_err();
            assert!(e.iter().any(|m| m.contains(says)), "{text}: {e:?}");
        }
        let e = compile(
            &raw("type = \"lead\"\nid = \"/id\""),
            &["POST".into(), "GET".into()],
            Some("/leads"),
            &t,
        )
        .unwrap_err();
        assert!(e[0].contains("POST or PUT only"), "{e:?}");
        assert!(toml::from_str::<RawCreates>("type = \"lead\"\nid = \"/id\"\nx = 1").is_err());
    }

    #[test]
    fn ids_come_from_the_body_or_the_location() {
        let t = types();
        let c = compile(
            &raw("type = \"lead\"\nid = \"/data/id\""),
            &post(),
            None,
            &t,
        )
        .unwrap();
        assert_eq!(
            id_from_body(&c, &t, br#"{"data":{"id":42}}"#),
            Ok(RecordId::Int(42))
        );
        assert_eq!(
            id_from_body(&c, &t, br#"{"data":{"id":"42"}}"#),
            Ok(RecordId::Int(42))
        );
        for bad in [
            &br#"{"data":{"id":042}}"#[..],
            br#"{"data":{"id":"042"}}"#,
            br#"{"data":{"id":null}}"#,
            br#"{"data":{}}"#,
            br#"{"data":{"id":1},"data":{"id":2}}"#,
            b"<html>created</html>",
            b"",
        ] {
            assert!(
                id_from_body(&c, &t, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let small = compile(
            &raw("type = \"lead\"\nid = \"/id\"\nmax_answer_bytes = 8"),
            &post(),
            None,
            &t,
        )
        .unwrap();
        assert!(id_from_body(&small, &t, br#"{"id":4200000}"#).is_err());
        let loc = compile(
            &raw("type = \"lead\"\nid = \"location\""),
            &post(),
            None,
            &t,
        )
        .unwrap();
        for (value, want) in [
            ("/api/v1/leads/17", Some(17)),
            ("http://crm.example:8080/api/v1/leads/17?x=1", Some(17)),
            ("17", Some(17)),
            ("/api/v1/leads/17/", None),
            ("/api/v1/leads/017", None),
            ("http://crm.example", None),
            ("/api/v1/leads/a b", None),
        ] {
            let got = id_from_location(&loc, &t, &[value.as_bytes()]).ok();
            assert_eq!(got, want.map(RecordId::Int), "{value}");
        }
        assert!(id_from_location(&loc, &t, &[]).is_err());
        assert!(id_from_location(&loc, &t, &[b"/leads/1", b"/leads/2"]).is_err());
    }

    #[test]
    fn the_change_names_the_caller_and_the_parent_from_the_path() {
        let t = types();
        let c = compile(
            &raw("type = \"note\"\nid = \"location\"\nparent = \"{lead_id}\""),
            &post(),
            Some("/api/v1/leads/{lead_id}/notes"),
            &t,
        )
        .unwrap();
        let id = canonical_id(t.kind(c.record_type), "0a0b0c0d0e0f00000000000000000001").unwrap();
        let change = c
            .change(&t, &id, Some("u-1"), "/api/v1/leads/7/notes", None)
            .unwrap();
        let Change::UpsertRecord {
            record_type,
            id,
            owner,
            parent,
            ..
        } = change
        else {
            panic!("not an upsert")
        };
        assert_eq!(record_type, "note");
        assert_eq!(
            id,
            RawId::Text("0a0b0c0d-0e0f-0000-0000-000000000001".into())
        );
        assert_eq!(owner.as_deref(), Some("u-1"));
        assert_eq!(
            parent,
            Some(RecordRef {
                record_type: "lead".into(),
                id: RawId::Text("7".into())
            })
        );
        assert!(c
            .change(&t, &RecordId::Int(1), None, "/api/v1/leads/7/notes", None)
            .is_err());
        assert!(c
            .change(
                &t,
                &RecordId::Int(1),
                Some("u-1"),
                "/api/v1/leads/07/notes",
                None
            )
            .is_err());
    }
}
