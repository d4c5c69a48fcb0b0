//! What a route does with a JSON body, as pure functions over the parsed tree: trim a bulk
//! request to the items the caller may touch, filter a list response to the items the caller
//! may see, and refuse or strip fields the caller may not change.
//!
//! # Layout
//!
//! - [`Items`]: where a body's items are (a JSON pointer to an array) and where each item's id
//!   is (the item itself, or a pointer inside an object item), with the id's kind.
//! - [`trim`] (one streaming pass, no tree: the fast path) / [`trim_doc`] (on a parsed tree)
//!   → [`TrimResult`]; [`TrimResult::verdict`] applies the route's [`BulkMode`]. Duplicates
//!   follow [`Duplicates`]. [`trim_capturing`] also picks out values the route names.
//! - [`filter_list`] → [`Filtered`]: a list response without the items the caller may not see,
//!   its count fields corrected.
//! - [`check_fields`] → [`FieldOutcome`]: field permissions, refused or stripped.
//! - [`scalar_text`]: a scalar (e.g. a new owner's user id) read from the body.
//! - [`BodyError`]: every way a body is refused, with its status and stable code.
//!
//! Every function re-serializes what it parsed ([`crate::json::write`], or
//! [`crate::json::canonicalize`], which writes the same bytes by copying the stretches of the
//! source already in that spelling): what the CRM (or the client) receives is exactly what was
//! checked, in one spelling. Items keep their
//! original order. The check is a callback, so these functions know nothing of snapshots.
//!
//! # Bulk contract
//!
//! - Each item's id must be readable and canonical for its record type (an integer type takes
//!   a JSON integer or a canonical decimal string; other types a string), else the whole body
//!   is refused with 400 `invalid_item`: a body whose items cannot all be checked is never
//!   forwarded, trimmed or not.
//! - Duplicates (two items naming the same record, in any spelling): [`Duplicates::Reject`]
//!   (the default) refuses the body with 400 `duplicate_item`; [`Duplicates::First`] keeps the
//!   first item naming a record and drops the rest before any check. Of several problems, the
//!   one an item-by-item pass meets first is reported.
//! - [`BulkMode::Trim`]: the allowed items are forwarded in their original order; the removed
//!   ids are reported. No item allowed → refuse.
//! - [`BulkMode::AllOrNothing`]: any denied item → refuse, listing the denied ids.
//! - In both modes a list with no item left to forward is refused, an empty one included: a
//!   legacy CRM may read an empty selection as "all records" (`{"ids":[]}` → 403, never
//!   forwarded).

use std::borrow::Cow;
use std::collections::HashSet;

use crate::catalog::PermId;
use crate::hash::KeyedState;
use crate::ids::{canonical_id, canonical_json_number, IdError, IdKind, RecordId};
use crate::json::{self, Json, JsonError, Limits, Pointer, Scalar, Select, StreamError};

/// Where a body's items are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items {
    /// The array of items (`/ids`, `/data`; `""` for a top-level array).
    pub at: Pointer,
    /// The id inside each item: `""` when the item is the id itself, else a pointer into an
    /// object item (`/id`).
    pub id_at: Pointer,
    pub kind: IdKind,
}

/// How a bulk route treats denied items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BulkMode {
    /// Forward only the allowed items (default).
    #[default]
    Trim,
    /// Any denied item refuses the whole call.
    AllOrNothing,
}

/// How a bulk route treats two items naming the same record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Duplicates {
    /// Refuse the body with 400 `duplicate_item` (default).
    #[default]
    Reject,
    /// Keep the first item naming a record, drop the others before checking.
    First,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    Json(JsonError),
    /// The pointer does not name an array.
    NoItems {
        at: String,
    },
    /// An item whose id cannot be read or is not canonical.
    BadItem {
        index: usize,
        message: String,
    },
    /// Two items name the same record ([`Duplicates::Reject`]).
    DuplicateItem {
        index: usize,
        id: String,
    },
    /// A value the route names (a new owner, a record id) is missing or of the wrong type.
    BadValue {
        at: String,
        message: String,
    },
    /// A top-level key the route does not list (`bulk.keys`).
    UnexpectedKey {
        key: String,
    },
    /// More items than the route's `body.max_items`.
    TooManyItems {
        max: usize,
    },
    /// A list of users where the route takes one new owner (`new_owner` without `list`).
    AssigneeList {
        at: String,
    },
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Json(e) => e.status(),
            BodyError::TooManyItems { .. } => 413,
            _ => 400,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Json(e) => e.code(),
            BodyError::NoItems { .. } => "invalid_body",
            BodyError::BadItem { .. } => "invalid_item",
            BodyError::DuplicateItem { .. } => "duplicate_item",
            BodyError::BadValue { .. } => "invalid_body",
            BodyError::UnexpectedKey { .. } => "unexpected_key",
            BodyError::TooManyItems { .. } => "too_many_items",
            BodyError::AssigneeList { .. } => "assignee_list_not_allowed",
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Json(e) => e.fmt(f),
            BodyError::NoItems { at } => write!(f, "the body holds no list of items at '{at}'"),
            BodyError::BadItem { index, message } => write!(f, "item {index}: {message}"),
            BodyError::DuplicateItem { index, id } => {
                write!(f, "item {index} names record '{id}' again")
            }
            BodyError::BadValue { at, message } => write!(f, "'{at}': {message}"),
            BodyError::UnexpectedKey { key } => write!(
                f,
                "the body's key '{}' is not one this route accepts",
                key.escape_debug()
            ),
            BodyError::TooManyItems { max } => {
                write!(
                    f,
                    "the body holds more than {max} items; send several calls"
                )
            }
            BodyError::AssigneeList { at } => write!(
                f,
                "'{at}': this route takes one new owner (a user id), not a list"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

impl From<JsonError> for BodyError {
    fn from(e: JsonError) -> Self {
        BodyError::Json(e)
    }
}

/// A JSON value as an id of `kind`: a string (canonicalized), or for integer types a plain
/// integer literal. Anything else is the wrong type.
pub fn json_id(v: &Json<'_>, kind: IdKind) -> Result<RecordId, String> {
    scalar_id(&Scalar::of(v), kind)
}

/// A scalar read while streaming as an id of `kind` (the rules of [`json_id`]).
pub fn scalar_id(v: &Scalar<'_>, kind: IdKind) -> Result<RecordId, String> {
    let r: Result<RecordId, IdError> = match v {
        Scalar::String(s) => canonical_id(kind, s),
        Scalar::Number(n) => canonical_json_number(kind, n),
        Scalar::Other(k) => return Err(format!("the id is {k}, not a {} id", kind.name())),
    };
    r.map_err(|e| e.to_string())
}

/// The text of a scalar the route names (a user id: a string, or an integer literal).
pub fn scalar_text<'v>(v: Option<&'v Scalar<'_>>, at: &Pointer) -> Result<&'v str, BodyError> {
    match v {
        Some(Scalar::String(s)) => Ok(s),
        Some(Scalar::Number(n)) if n.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        Some(Scalar::Number(_)) => Err(BodyError::BadValue {
            at: at.to_string(),
            message: "expected a string, found a number that is not a plain integer".into(),
        }),
        // The kind names are `Json::kind`'s, which the streaming pass uses too.
        Some(Scalar::Other("an array")) => Err(BodyError::AssigneeList { at: at.to_string() }),
        Some(Scalar::Other(k)) => Err(BodyError::BadValue {
            at: at.to_string(),
            message: format!("expected a string, found {k}"),
        }),
        None => Err(BodyError::BadValue {
            at: at.to_string(),
            message: "missing".into(),
        }),
    }
}

/// The user ids of a new owner list (`new_owner.list = true`): a non-empty array of at most
/// `max_items` distinct ids, each a string or a plain integer literal (as [`scalar_text`]).
/// Anything else is refused, never guessed: a string (a CRM iterating it would read letters),
/// an empty array (a CRM may read it as "nobody" or as "everyone"), a repeat.
pub fn user_list(
    v: Option<&Json<'_>>,
    at: &Pointer,
    max_items: usize,
) -> Result<Vec<String>, BodyError> {
    let bad = |at: String, message: String| BodyError::BadValue { at, message };
    let items = match v {
        Some(Json::Array(items)) => items,
        Some(other) => {
            return Err(bad(
                at.to_string(),
                format!("expected a list of user ids, found {}", other.kind()),
            ))
        }
        None => return Err(bad(at.to_string(), "missing".into())),
    };
    if items.is_empty() {
        return Err(bad(
            at.to_string(),
            "an empty list of new owners is never forwarded".into(),
        ));
    }
    if items.len() > max_items {
        return Err(BodyError::TooManyItems { max: max_items });
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let who: &str = match item {
            Json::String(s) => s,
            Json::Number(n) if n.bytes().all(|b| b.is_ascii_digit()) => n,
            other => {
                return Err(bad(
                    format!("{at}/{i}"),
                    format!("expected a user id (a string), found {}", other.kind()),
                ))
            }
        };
        if out.iter().any(|o| o == who) {
            return Err(bad(
                format!("{at}/{i}"),
                format!("the user '{who}' is listed twice"),
            ));
        }
        out.push(who.to_string());
    }
    Ok(out)
}

/// The outcome of trimming, before the route's mode is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimResult {
    /// The body with only the allowed items (compact JSON, re-serialized).
    pub forwarded_body: Vec<u8>,
    /// The denied items' ids, in their original order (`Display` gives the canonical
    /// spelling; formatted only where reported).
    pub removed_ids: Vec<RecordId>,
    /// How many items were kept.
    pub kept: usize,
    /// Items dropped as repeats ([`Duplicates::First`]).
    pub duplicates_dropped: usize,
}

/// What to do with a trimmed bulk call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkVerdict {
    /// Forward `forwarded_body`.
    Forward,
    /// 403: nothing forwarded (no item left to forward, the list empty to begin with
    /// included, or `all_or_nothing` with a denied item).
    Refuse,
}

impl TrimResult {
    pub fn verdict(&self, mode: BulkMode) -> BulkVerdict {
        let denied = !self.removed_ids.is_empty();
        if self.kept == 0 || (denied && mode == BulkMode::AllOrNothing) {
            BulkVerdict::Refuse
        } else {
            BulkVerdict::Forward
        }
    }
}

/// The per-item decisions shared by both trimming paths: read each id, then (all read) find
/// the repeats and check the rest.
struct Judge<'s, C> {
    kind: IdKind,
    id_at: &'s Pointer,
    duplicates: Duplicates,
    check: C,
    /// Items beyond this many refuse the body.
    max_items: usize,
    /// The ids read so far, in item order (the position is the item's index).
    ids: Vec<RecordId>,
    removed_ids: Vec<RecordId>,
    kept: usize,
    duplicates_dropped: usize,
}

impl<'s, C: FnMut(&RecordId) -> bool> Judge<'s, C> {
    fn new(spec: &'s Items, duplicates: Duplicates, check: C, expect: usize) -> Self {
        Judge {
            max_items: usize::MAX,
            kind: spec.kind,
            id_at: &spec.id_at,
            duplicates,
            check,
            ids: Vec::with_capacity(expect),
            removed_ids: Vec::new(),
            kept: 0,
            duplicates_dropped: 0,
        }
    }

    /// Read item `index`'s id (items come in order, each once).
    fn read(&mut self, index: usize, id: Option<&Scalar<'_>>) -> Result<(), BodyError> {
        if index >= self.max_items {
            return Err(BodyError::TooManyItems {
                max: self.max_items,
            });
        }
        let id = match id {
            None => {
                return Err(BodyError::BadItem {
                    index,
                    message: format!("no id at '{}'", self.id_at),
                })
            }
            Some(v) => {
                scalar_id(v, self.kind).map_err(|message| BodyError::BadItem { index, message })?
            }
        };
        self.ids.push(id);
        Ok(())
    }

    /// The repeats among the items read (see [`repeats`]); with [`Duplicates::Reject`], the
    /// first repeat refuses the body.
    fn repeats(&self) -> Result<Option<Vec<bool>>, BodyError> {
        let r = repeats(&self.ids);
        if let (Duplicates::Reject, Some(r)) = (self.duplicates, &r) {
            if let Some(index) = r.iter().position(|&x| x) {
                return Err(BodyError::DuplicateItem {
                    index,
                    id: self.ids[index].to_string(),
                });
            }
        }
        Ok(r)
    }

    /// The error to report when reading stopped at `e`: a repeat among the items read
    /// before it comes first, as an item-by-item pass meets it first.
    fn stopped(&self, e: BodyError) -> BodyError {
        self.repeats().err().unwrap_or(e)
    }

    /// Decide every item read: which are forwarded, in item order.
    fn decide(&mut self) -> Result<Vec<bool>, BodyError> {
        let repeats = self.repeats()?;
        let mut keep = Vec::with_capacity(self.ids.len());
        // The checks run back to back: each is a probe into a large table, and in a tight
        // loop the CPU overlaps their cache misses.
        for (index, id) in std::mem::take(&mut self.ids).into_iter().enumerate() {
            let allowed = if repeats.as_ref().is_some_and(|r| r[index]) {
                self.duplicates_dropped += 1;
                false
            } else if (self.check)(&id) {
                self.kept += 1;
                true
            } else {
                self.removed_ids.push(id);
                false
            };
            keep.push(allowed);
        }
        Ok(keep)
    }

    fn result(self, forwarded_body: Vec<u8>) -> TrimResult {
        TrimResult {
            forwarded_body,
            removed_ids: self.removed_ids,
            kept: self.kept,
            duplicates_dropped: self.duplicates_dropped,
        }
    }
}

/// Which items name the same record as an earlier item (`None`: no item does, the usual
/// case). One sort says whether there is any repeat (integer ids sorted as plain numbers);
/// only then does an in-order pass, with a hash keyed at random per call (ids come from the
/// client), say which. Both are O(n log n) or better whatever the ids.
fn repeats(ids: &[RecordId]) -> Option<Vec<bool>> {
    let ints: Vec<u64> = ids
        .iter()
        .map_while(|id| match id {
            RecordId::Int(n) => Some(*n),
            _ => None,
        })
        .collect();
    let any = if ints.len() == ids.len() {
        let mut v = ints;
        v.sort_unstable();
        v.windows(2).any(|w| w[0] == w[1])
    } else {
        let mut v: Vec<&RecordId> = ids.iter().collect();
        v.sort_unstable();
        v.windows(2).any(|w| w[0] == w[1])
    };
    if !any {
        return None;
    }
    let mut seen = HashSet::with_capacity_and_hasher(ids.len(), KeyedState::default());
    Some(ids.iter().map(|id| !seen.insert(id)).collect())
}

/// Parse and trim a bulk body in one streaming pass (module docs). `check` says whether one
/// record is allowed.
pub fn trim(
    body: &[u8],
    limits: &Limits,
    spec: &Items,
    duplicates: Duplicates,
    check: impl FnMut(&RecordId) -> bool,
) -> Result<TrimResult, BodyError> {
    trim_capturing(body, limits, Some((spec, duplicates)), &[], check).map(|c| c.trimmed)
}

/// [`trim`], also capturing the scalars at `captures` (a new owner, record ids the route
/// names); with no `bulk`, only canonicalizes and captures.
pub fn trim_capturing<'a>(
    body: &'a [u8],
    limits: &Limits,
    bulk: Option<(&Items, Duplicates)>,
    captures: &[&Pointer],
    check: impl FnMut(&RecordId) -> bool,
) -> Result<Captured<'a>, BodyError> {
    let id_root = Pointer::default();
    let (items, id_at) = match bulk {
        Some((spec, _)) => (Some(&spec.at), &spec.id_at),
        None => (None, &id_root),
    };
    let default_spec = Items {
        at: Pointer::default(),
        id_at: Pointer::default(),
        kind: IdKind::Integer,
    };
    let (spec, duplicates) = bulk.unwrap_or((&default_spec, Duplicates::Reject));
    // The item count is unknown until the end.
    let mut judge = Judge::new(spec, duplicates, check, 0);
    judge.max_items = limits.max_items;
    let select = Select {
        items,
        id_at,
        captures,
    };
    // The pass only reads ids; repeats and record checks are decided after it.
    let streamed = json::canonicalize(body, limits, &select, |i, id| {
        judge.read(i, id.as_ref()).map(|()| true)
    })
    .map_err(|e| match e {
        StreamError::Json(j) => BodyError::Json(j),
        StreamError::Keep(b) => b,
    });
    let out = streamed.map_err(|e| judge.stopped(e))?;
    if bulk.is_some() && !out.items_found {
        return Err(BodyError::NoItems {
            at: spec.at.to_string(),
        });
    }
    let keep = judge.decide()?;
    let forwarded = if keep.iter().all(|k| *k) {
        out.body
    } else {
        out.without(&keep)
    };
    Ok(Captured {
        trimmed: judge.result(forwarded),
        values: out.captured,
        root_keys: out.root_keys,
    })
}

/// What [`trim_capturing`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured<'a> {
    pub trimmed: TrimResult,
    /// The scalar at each capture pointer (`None`: absent).
    pub values: Vec<Option<Scalar<'a>>>,
    /// The top-level object's keys (for `bulk.keys`).
    pub root_keys: Vec<Cow<'a, str>>,
}

/// Refuse a top-level key outside `allowed` (a bulk route's `keys`): a legacy bulk endpoint
/// may read other keys (`"select_all": true`, a filter) that act on records never checked.
pub fn check_keys<S: AsRef<str>>(keys: &[S], allowed: &[String]) -> Result<(), BodyError> {
    match keys
        .iter()
        .find(|k| !allowed.iter().any(|a| a == k.as_ref()))
    {
        Some(k) => Err(BodyError::UnexpectedKey {
            key: k.as_ref().to_string(),
        }),
        None => Ok(()),
    }
}

/// Trim an already parsed body (when the caller also changes it otherwise, e.g. strips
/// fields). Same decisions as [`trim`].
pub fn trim_doc(
    doc: Json<'_>,
    spec: &Items,
    duplicates: Duplicates,
    check: impl FnMut(&RecordId) -> bool,
) -> Result<TrimResult, BodyError> {
    trim_sized(doc, spec, duplicates, check, 0)
}

pub(crate) fn trim_sized(
    mut doc: Json<'_>,
    spec: &Items,
    duplicates: Duplicates,
    check: impl FnMut(&RecordId) -> bool,
    size_hint: usize,
) -> Result<TrimResult, BodyError> {
    let Some(Json::Array(items)) = spec.at.get_mut(&mut doc) else {
        return Err(BodyError::NoItems {
            at: spec.at.to_string(),
        });
    };
    let mut judge = Judge::new(spec, duplicates, check, items.len());
    for (index, item) in items.iter().enumerate() {
        let id = spec.id_at.get(item).map(Scalar::of);
        if let Err(e) = judge.read(index, id.as_ref()) {
            return Err(judge.stopped(e));
        }
    }
    let keep = judge.decide()?;
    let mut k = keep.iter();
    items.retain(|_| k.next().copied().unwrap_or(false));
    Ok(judge.result(json::to_vec_sized(&doc, size_hint)))
}

/// A filtered list response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    pub body: Vec<u8>,
    pub kept: usize,
    /// Items removed because the caller may not see them.
    pub removed: usize,
    /// Items removed because their id could not be read (fail closed; worth a log line).
    pub unreadable: usize,
}

/// Filter a list response to the items `check` allows (module docs). Each of `counts` that
/// holds a number (or a numeric string) is set to the number of items kept, so neither the
/// count nor a total reveals hidden records (pagination totals become page-local).
pub fn filter_list(
    body: &[u8],
    limits: &Limits,
    spec: &Items,
    counts: &[Pointer],
    mut check: impl FnMut(&RecordId) -> bool,
) -> Result<Filtered, BodyError> {
    let mut doc = json::parse(body, limits)?;
    let Some(Json::Array(items)) = spec.at.get_mut(&mut doc) else {
        return Err(BodyError::NoItems {
            at: spec.at.to_string(),
        });
    };
    let before = items.len();
    let mut unreadable = 0;
    items.retain(|item| {
        match spec
            .id_at
            .get(item)
            .and_then(|v| json_id(v, spec.kind).ok())
        {
            Some(id) => check(&id),
            None => {
                unreadable += 1;
                false
            }
        }
    });
    let kept = items.len();
    for c in counts {
        if let Some(v) = c.get_mut(&mut doc) {
            match v {
                Json::Number(_) => *v = Json::Number(Cow::Owned(kept.to_string())),
                Json::String(s) if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => {
                    *v = Json::String(Cow::Owned(kept.to_string()))
                }
                _ => {}
            }
        }
    }
    Ok(Filtered {
        body: json::to_vec(&doc),
        kept,
        removed: before - kept - unreadable,
        unreadable,
    })
}

/// A body field that needs a permission to be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub at: Pointer,
    pub permission: PermId,
}

/// What a route does with a field the caller may not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldMode {
    /// 403 naming the fields (default).
    #[default]
    Refuse,
    /// Remove the fields and forward the rest.
    Strip,
}

/// The outcome of field permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldOutcome {
    /// No ruled field the caller lacks is present: forward as is.
    Allowed,
    /// 403: the fields (pointers) and the permissions they need, in rule order.
    Refused {
        fields: Vec<String>,
        permissions: Vec<PermId>,
    },
    /// The fields were removed from `doc`; forward its re-serialization.
    Stripped { fields: Vec<String> },
}

/// Check the ruled fields present in `doc` (present = the member exists, whatever its value,
/// `null` included). With [`FieldMode::Strip`] the denied members are removed from `doc`.
pub fn check_fields(
    doc: &mut Json<'_>,
    rules: &[FieldRule],
    mode: FieldMode,
    has: impl Fn(PermId) -> bool,
) -> FieldOutcome {
    let denied: Vec<&FieldRule> = rules
        .iter()
        .filter(|r| r.at.get(doc).is_some() && !has(r.permission))
        .collect();
    if denied.is_empty() {
        return FieldOutcome::Allowed;
    }
    let fields = denied.iter().map(|r| r.at.to_string()).collect();
    match mode {
        FieldMode::Refuse => FieldOutcome::Refused {
            fields,
            permissions: denied.iter().map(|r| r.permission).collect(),
        },
        FieldMode::Strip => {
            for r in denied {
                if let Some((parent, key)) = r.at.split_last() {
                    if let Some(Json::Object(m)) = parent.get_mut(doc) {
                        m.retain(|(k, _)| k != key);
                    }
                }
            }
            FieldOutcome::Stripped { fields }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids_spec(at: &str) -> Items {
        Items {
            at: Pointer::parse(at).unwrap(),
            id_at: Pointer::default(),
            kind: IdKind::Integer,
        }
    }

    fn objects_spec(at: &str, id: &str, kind: IdKind) -> Items {
        Items {
            at: Pointer::parse(at).unwrap(),
            id_at: Pointer::parse(id).unwrap(),
            kind,
        }
    }

    fn strings(ids: &[RecordId]) -> Vec<String> {
        ids.iter().map(ToString::to_string).collect()
    }

    fn even(id: &RecordId) -> bool {
        matches!(id, RecordId::Int(n) if n % 2 == 0)
    }

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn seed_004_twenty_leads_ten_allowed() {
        let ids: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
        let body = format!(
            r#"{{"ids": [{}], "owner_id": "u-rep1", "note": "q3"}}"#,
            ids.join(", ")
        );
        let r = trim(
            body.as_bytes(),
            &Limits::default(),
            &ids_spec("/ids"),
            Duplicates::Reject,
            even,
        )
        .unwrap();
        assert_eq!(r.kept, 10);
        assert_eq!(
            strings(&r.removed_ids),
            ["1", "3", "5", "7", "9", "11", "13", "15", "17", "19"]
        );
        assert_eq!(
            s(&r.forwarded_body),
            r#"{"ids":[2,4,6,8,10,12,14,16,18,20],"owner_id":"u-rep1","note":"q3"}"#
        );
        assert_eq!(r.verdict(BulkMode::Trim), BulkVerdict::Forward);
        assert_eq!(r.verdict(BulkMode::AllOrNothing), BulkVerdict::Refuse);
    }

    #[test]
    fn object_items_keep_everything_else_and_their_order() {
        let body = br#"[{"id":"4","stage":"won","amount":12345678901234567890},{"id":"3"},{"id":2,"x":{"y":[1.50]}}]"#;
        let r = trim(
            body,
            &Limits::default(),
            &objects_spec("", "/id", IdKind::Integer),
            Duplicates::Reject,
            even,
        )
        .unwrap();
        assert_eq!(
            s(&r.forwarded_body),
            r#"[{"id":"4","stage":"won","amount":12345678901234567890},{"id":2,"x":{"y":[1.50]}}]"#
        );
        assert_eq!(strings(&r.removed_ids), ["3"]);
    }

    /// The streaming pass copies clean stretches of the source as they are: whitespace and
    /// escapes written another way must still come out in the one spelling, around kept,
    /// denied and repeated items alike.
    #[test]
    fn whitespace_and_escapes_come_out_in_the_one_spelling() {
        let body = b"\t{ \"items\" : [ {\"id\":1, \"n\":\"\\u0041\\/b\"} ,\n\r{ \"id\" : 2 ,\"n\":[ true , null ]},{\"id\":\"2\"},{\"id\":4,\"n\":\"\\u00e9\\n\"} ] , \"k\\u0065y\" :{ } } ";
        let r = trim(
            body,
            &Limits::default(),
            &objects_spec("/items", "/id", IdKind::Integer),
            Duplicates::First,
            even,
        )
        .unwrap();
        assert_eq!(
            s(&r.forwarded_body),
            "{\"items\":[{\"id\":2,\"n\":[true,null]},{\"id\":4,\"n\":\"\u{e9}\\n\"}],\"key\":{}}"
        );
        assert_eq!((r.kept, r.duplicates_dropped), (2, 1));
        assert_eq!(strings(&r.removed_ids), ["1"]);
        let tree = trim_doc(
            json::parse(body, &Limits::default()).unwrap(),
            &objects_spec("/items", "/id", IdKind::Integer),
            Duplicates::First,
            even,
        )
        .unwrap();
        assert_eq!(r, tree);
    }

    /// A repeat is reported before a later error, as an item-by-item pass meets it first;
    /// an error before the repeat wins.
    #[test]
    fn the_first_problem_in_item_order_is_reported() {
        let spec = ids_spec("/ids");
        let t = |body: &str| {
            trim(
                body.as_bytes(),
                &Limits::default(),
                &spec,
                Duplicates::Reject,
                even,
            )
            .unwrap_err()
            .code()
        };
        assert_eq!(t(r#"{"ids":[1,2,1,true]}"#), "duplicate_item");
        assert_eq!(t(r#"{"ids":[1,2,1,3"#), "duplicate_item");
        assert_eq!(t(r#"{"ids":[1,true,1]}"#), "invalid_item");
        assert_eq!(t(r#"{"ids":[1,2,3,4"#), "invalid_json");
    }

    #[test]
    fn verdicts() {
        let t = |body: &str| {
            trim(
                body.as_bytes(),
                &Limits::default(),
                &ids_spec("/ids"),
                Duplicates::Reject,
                even,
            )
            .unwrap()
        };
        let none = t(r#"{"ids":[1,3]}"#);
        assert_eq!(none.kept, 0);
        assert_eq!(none.verdict(BulkMode::Trim), BulkVerdict::Refuse);
        let all = t(r#"{"ids":[2,4]}"#);
        assert_eq!(all.verdict(BulkMode::AllOrNothing), BulkVerdict::Forward);
        // An empty selection is never forwarded (a legacy CRM may read it as "all").
        let empty = t(r#"{"ids":[]}"#);
        assert_eq!(empty.verdict(BulkMode::Trim), BulkVerdict::Refuse);
        assert_eq!(empty.verdict(BulkMode::AllOrNothing), BulkVerdict::Refuse);
    }

    #[test]
    fn bad_bodies_are_refused_whole() {
        let t = |body: &str, spec: &Items| {
            trim(
                body.as_bytes(),
                &Limits::default(),
                spec,
                Duplicates::Reject,
                |_| true,
            )
            .map(|_| ())
            .map_err(|e| (e.status(), e.code()))
        };
        let ids = ids_spec("/ids");
        assert_eq!(t(r#"{"ids":[1,"017"]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(t(r#"{"ids":[1,-2]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(t(r#"{"ids":[1,2.0]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(t(r#"{"ids":[1,1e1]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(
            t(r#"{"ids":[1,9223372036854775808]}"#, &ids),
            Err((400, "invalid_item"))
        );
        assert_eq!(t(r#"{"ids":[1,null]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(t(r#"{"ids":[1,[2]]}"#, &ids), Err((400, "invalid_item")));
        assert_eq!(t(r#"{"ids":"1,2"}"#, &ids), Err((400, "invalid_body")));
        assert_eq!(t(r#"{"idz":[1]}"#, &ids), Err((400, "invalid_body")));
        assert_eq!(
            t(r#"{"ids":[1,2],"ids":[3]}"#, &ids),
            Err((400, "duplicate_key"))
        );
        assert_eq!(t(r#"{"ids":[1,2]} {}"#, &ids), Err((400, "trailing_data")));
        assert_eq!(t(r#"{"ids":[1,2,1]}"#, &ids), Err((400, "duplicate_item")));
        assert_eq!(
            t(r#"{"ids":[1,"1"]}"#, &ids),
            Err((400, "duplicate_item")),
            "one record, two spellings"
        );
        let objs = objects_spec("/items", "/id", IdKind::Uuid);
        assert_eq!(
            t(
                r#"{"items":[{"id":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"},{"id":"{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"}]}"#,
                &objs
            ),
            Err((400, "duplicate_item"))
        );
        assert_eq!(
            t(r#"{"items":[{"id":17}]}"#, &objs),
            Err((400, "invalid_item"))
        );
        assert_eq!(
            t(
                r#"{"items":[{"ID":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"}]}"#,
                &objs
            ),
            Err((400, "invalid_item"))
        );
        assert_eq!(
            t(
                r#"{"items":[{"id":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","id":"x"}]}"#,
                &objs
            ),
            Err((400, "duplicate_key"))
        );
    }

    #[test]
    fn too_many_items_is_413() {
        let limits = Limits {
            max_items: 3,
            ..Limits::default()
        };
        let spec = ids_spec("/ids");
        let ok = trim(
            br#"{"ids":[1,2,3]}"#,
            &limits,
            &spec,
            Duplicates::Reject,
            even,
        );
        assert_eq!(ok.map(|t| t.kept), Ok(1));
        let e = trim(
            br#"{"ids":[1,2,3,4]}"#,
            &limits,
            &spec,
            Duplicates::Reject,
            even,
        );
        let e = e.unwrap_err();
        assert_eq!((e.status(), e.code()), (413, "too_many_items"));
    }

    #[test]
    fn duplicates_first_keeps_the_first() {
        let r = trim(
            br#"{"ids":[2,"2",4,3,3]}"#,
            &Limits::default(),
            &ids_spec("/ids"),
            Duplicates::First,
            even,
        )
        .unwrap();
        assert_eq!(s(&r.forwarded_body), r#"{"ids":[2,4]}"#);
        assert_eq!((r.kept, r.duplicates_dropped), (2, 2));
        assert_eq!(strings(&r.removed_ids), ["3"]);
    }

    #[test]
    fn lists_are_filtered_and_counts_corrected() {
        let body = br#"{"data":[{"id":1},{"id":2},{"id":"x"},{"id":4},{"no":5}],"total":57,"meta":{"count":"5","page":1},"next":null}"#;
        let counts = [
            Pointer::parse("/total").unwrap(),
            Pointer::parse("/meta/count").unwrap(),
            Pointer::parse("/next").unwrap(),
            Pointer::parse("/absent").unwrap(),
        ];
        let f = filter_list(
            body,
            &Limits::default(),
            &objects_spec("/data", "/id", IdKind::Integer),
            &counts,
            even,
        )
        .unwrap();
        assert_eq!(
            s(&f.body),
            r#"{"data":[{"id":2},{"id":4}],"total":2,"meta":{"count":"2","page":1},"next":null}"#
        );
        assert_eq!((f.kept, f.removed, f.unreadable), (2, 1, 2));
        assert!(filter_list(
            b"{\"error\":\"x\"}",
            &Limits::default(),
            &objects_spec("/data", "/id", IdKind::Integer),
            &[],
            even
        )
        .is_err());
    }

    #[test]
    fn fields_refused_or_stripped() {
        let perms = crate::catalog::Catalog::builtin().unwrap();
        let phone = perms.permission("customer.edit_phone_number").unwrap();
        let name = perms.permission("customer.edit_name_email").unwrap();
        let rules = [
            FieldRule {
                at: Pointer::parse("/phone").unwrap(),
                permission: phone,
            },
            FieldRule {
                at: Pointer::parse("/contact/email").unwrap(),
                permission: name,
            },
            FieldRule {
                at: Pointer::parse("/name").unwrap(),
                permission: name,
            },
        ];
        let body = br#"{"phone":null,"contact":{"email":"a@b","zip":"1"},"zip":"2"}"#;
        let only_phone = |p: PermId| p == phone;
        let mut doc = json::parse(body, &Limits::default()).unwrap();
        assert_eq!(
            check_fields(&mut doc, &rules, FieldMode::Refuse, only_phone),
            FieldOutcome::Refused {
                fields: vec!["/contact/email".into()],
                permissions: vec![name]
            }
        );
        assert_eq!(
            json::to_vec(&doc),
            body.to_vec(),
            "refusing leaves the body alone"
        );
        let out = check_fields(&mut doc, &rules, FieldMode::Strip, |_| false);
        assert_eq!(
            out,
            FieldOutcome::Stripped {
                fields: vec!["/phone".into(), "/contact/email".into()]
            }
        );
        assert_eq!(
            s(&json::to_vec(&doc)),
            r#"{"contact":{"zip":"1"},"zip":"2"}"#
        );
        assert_eq!(
            check_fields(&mut doc, &rules, FieldMode::Refuse, |_| false),
            FieldOutcome::Allowed
        );
    }

    #[test]
    fn values() {
        let doc = json::parse(
            br#"{"owner":"u-1","n":17,"f":1.5,"o":{}}"#,
            &Limits::default(),
        )
        .unwrap();
        let at = |p: &str| {
            let ptr = Pointer::parse(p).unwrap();
            let v = ptr.get(&doc).map(Scalar::of);
            scalar_text(v.as_ref(), &ptr)
                .map(str::to_string)
                .map_err(|e| e.code())
        };
        assert_eq!(at("/owner"), Ok("u-1".to_string()));
        assert_eq!(at("/n"), Ok("17".to_string()));
        assert_eq!(at("/f"), Err("invalid_body"));
        assert_eq!(at("/o"), Err("invalid_body"));
        assert_eq!(at("/missing"), Err("invalid_body"));
    }

    fn arb_item() -> impl Strategy<Value = (serde_json::Value, bool)> {
        // (item, as object?) with ids that are sometimes repeated across items.
        // `extra` holds characters written escaped (`"`, `\\`, control bytes) and non-ASCII.
        (
            0u64..40,
            any::<bool>(),
            any::<bool>(),
            "[a-z\"\\\\\n\u{1}é]{0,5}",
        )
            .prop_map(|(id, as_str, obj, extra)| {
                let idv = if as_str {
                    serde_json::json!(id.to_string())
                } else {
                    serde_json::json!(id)
                };
                if obj {
                    (serde_json::json!({"extra": extra, "id": idv}), true)
                } else {
                    (idv, false)
                }
            })
    }

    proptest! {
        /// The streaming path and the tree path decide and write exactly the same.
        #[test]
        fn streaming_and_tree_trim_agree(
            raw in proptest::collection::vec(arb_item(), 0..40),
            first in any::<bool>(),
            denied in proptest::collection::hash_set(0u64..40, 0..40),
            pretty in any::<bool>(),
        ) {
            let items: Vec<serde_json::Value> = raw.into_iter().map(|(v, _)| v).collect();
            let v = serde_json::json!({"a": 1, "items": items});
            // Pretty: whitespace between all tokens, which the streaming pass must not copy.
            let body = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            let spec = objects_spec("/items", "/id", IdKind::Integer);
            let dup = if first { Duplicates::First } else { Duplicates::Reject };
            let allow = |id: &RecordId| matches!(id, RecordId::Int(n) if !denied.contains(n));
            let streamed = trim(&body, &Limits::default(), &spec, dup, allow);
            let doc = json::parse(&body, &Limits::default()).unwrap();
            let tree = trim_doc(doc, &spec, dup, allow);
            prop_assert_eq!(streamed, tree);
        }

        /// The trimmed body never holds a denied item, holds every allowed item once, in the
        /// original order, and parses back strictly.
        #[test]
        fn trimmed_body_never_holds_a_denied_item(
            raw in proptest::collection::vec(arb_item(), 0..60),
            objects in any::<bool>(),
            denied in proptest::collection::hash_set(0u64..40, 0..40),
        ) {
            let items: Vec<serde_json::Value> = raw.iter()
                .map(|(v, is_obj)| match (objects, is_obj) {
                    (true, true) | (false, false) => v.clone(),
                    (true, false) => serde_json::json!({"id": v}),
                    (false, true) => v["id"].clone(),
                })
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({"bulk": {"items": items}, "tail": 1})).unwrap();
            let spec = objects_spec("/bulk/items", if objects { "/id" } else { "" }, IdKind::Integer);
            let allow = |id: &RecordId| matches!(id, RecordId::Int(n) if !denied.contains(n));
            let r = trim(&body, &Limits::default(), &spec, Duplicates::First, allow).unwrap();
            let out = json::parse(&r.forwarded_body, &Limits::default()).unwrap();
            let kept = spec.at.get(&out).and_then(|v| v.as_array()).unwrap();
            let kept_ids: Vec<u64> = kept.iter().map(|i| match json_id(spec.id_at.get(i).unwrap(), IdKind::Integer).unwrap() {
                RecordId::Int(n) => n,
                _ => unreachable!(),
            }).collect();
            for n in &kept_ids {
                prop_assert!(!denied.contains(n), "denied {} forwarded", n);
            }
            // Expected: first occurrences of allowed ids, in order.
            let mut seen = std::collections::HashSet::new();
            let want: Vec<u64> = items.iter()
                .map(|i| if objects { i["id"].clone() } else { i.clone() })
                .map(|v| v.as_u64().unwrap_or_else(|| v.as_str().unwrap().parse().unwrap()))
                .filter(|n| seen.insert(*n))
                .filter(|n| !denied.contains(n))
                .collect();
            prop_assert_eq!(&kept_ids, &want);
            prop_assert_eq!(r.kept, want.len());
            prop_assert_eq!(out.get("tail"), Some(&Json::Number("1".into())));
            for id in &r.removed_ids {
                prop_assert!(matches!(id, RecordId::Int(n) if denied.contains(n)));
            }
        }
    }
}
