//! The in-memory data behind the sample CRM: collections of JSON records keyed by id, plus the
//! few company-wide documents (settings, integrations, exports) that are not collections.
//!
//! Records are kept as JSON objects rather than typed structs on purpose: a legacy CRM accepts
//! whatever fields clients send and echoes them back, and the gateway in front of it must cope
//! with exactly that looseness.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// One record: always a JSON object with at least an `"id"` field.
pub(crate) type Record = Map<String, Value>;

/// The collections served under `/api/v1/{coll}`.
///
/// The discriminants index [`Store::colls`], so the array lookup can never go out of bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coll {
    Customers,
    Leads,
    Deals,
    Campaigns,
    Threads,
    CannedResponses,
    FollowUps,
    Notes,
    Tasks,
    TeamMembers,
    Roles,
    Tags,
    Properties,
    Webhooks,
    Tokens,
}

impl Coll {
    pub(crate) const COUNT: usize = 15;
    pub(crate) const ALL: [Coll; Coll::COUNT] = [
        Coll::Customers,
        Coll::Leads,
        Coll::Deals,
        Coll::Campaigns,
        Coll::Threads,
        Coll::CannedResponses,
        Coll::FollowUps,
        Coll::Notes,
        Coll::Tasks,
        Coll::TeamMembers,
        Coll::Roles,
        Coll::Tags,
        Coll::Properties,
        Coll::Webhooks,
        Coll::Tokens,
    ];

    /// The path segment naming this collection.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coll::Customers => "customers",
            Coll::Leads => "leads",
            Coll::Deals => "deals",
            Coll::Campaigns => "campaigns",
            Coll::Threads => "threads",
            Coll::CannedResponses => "canned-responses",
            Coll::FollowUps => "follow-ups",
            Coll::Notes => "notes",
            Coll::Tasks => "tasks",
            Coll::TeamMembers => "team-members",
            Coll::Roles => "roles",
            Coll::Tags => "tags",
            Coll::Properties => "properties",
            Coll::Webhooks => "webhooks",
            Coll::Tokens => "tokens",
        }
    }

    pub(crate) fn parse(segment: &str) -> Option<Coll> {
        Coll::ALL.into_iter().find(|c| c.name() == segment)
    }

    /// Team members and roles are keyed by strings (`"u-rep1"`, `"sales_rep"`); everything
    /// else by positive integers.
    pub(crate) fn string_ids(self) -> bool {
        matches!(self, Coll::TeamMembers | Coll::Roles)
    }

    /// Whether records of this collection carry `owner_id` / `created_by`.
    pub(crate) fn owned(self) -> bool {
        !self.string_ids()
    }

    /// Singular noun for messages ("lead 7 not found").
    pub(crate) fn singular(self) -> &'static str {
        match self {
            Coll::Customers => "customer",
            Coll::Leads => "lead",
            Coll::Deals => "deal",
            Coll::Campaigns => "campaign",
            Coll::Threads => "thread",
            Coll::CannedResponses => "canned response",
            Coll::FollowUps => "follow-up",
            Coll::Notes => "note",
            Coll::Tasks => "task",
            Coll::TeamMembers => "team member",
            Coll::Roles => "role",
            Coll::Tags => "tag",
            Coll::Properties => "property",
            Coll::Webhooks => "webhook",
            Coll::Tokens => "token",
        }
    }
}

/// A record id. Integer ids sort before string ids, but a collection only ever holds one kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum RecordId {
    Int(u64),
    Str(String),
}

impl RecordId {
    /// Parses a path segment as an id of `coll`. Integer ids accept ASCII digits only (leading
    /// zeros are tolerated, as legacy `parseInt`-style code does: `007` is record 7); anything
    /// else is simply "not found".
    pub(crate) fn parse(coll: Coll, segment: &str) -> Option<RecordId> {
        if coll.string_ids() {
            (!segment.is_empty()).then(|| RecordId::Str(segment.to_owned()))
        } else {
            parse_int_id(segment).map(RecordId::Int)
        }
    }

    /// Reads an id out of a JSON value (`7`, `"7"` or `"u-rep1"`), as bulk bodies carry them.
    pub(crate) fn from_json(coll: Coll, value: &Value) -> Option<RecordId> {
        match value {
            Value::Number(n) if !coll.string_ids() => n.as_u64().map(RecordId::Int),
            Value::String(s) => RecordId::parse(coll, s),
            _ => None,
        }
    }
}

/// Digits only, no sign, no whitespace; `None` for anything else (including overflow).
pub(crate) fn parse_int_id(segment: &str) -> Option<u64> {
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok()
}

/// One collection: records ordered by id (so listings are stable) and the next integer id.
#[derive(Debug, Default)]
pub(crate) struct Collection {
    records: BTreeMap<RecordId, Record>,
    /// Never reused after a delete, like a database sequence.
    next_id: u64,
}

impl Collection {
    pub(crate) fn get(&self, id: &RecordId) -> Option<&Record> {
        self.records.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &RecordId) -> Option<&mut Record> {
        self.records.get_mut(id)
    }

    pub(crate) fn get_int(&self, id: u64) -> Option<&Record> {
        self.records.get(&RecordId::Int(id))
    }

    pub(crate) fn get_int_mut(&mut self, id: u64) -> Option<&mut Record> {
        self.records.get_mut(&RecordId::Int(id))
    }

    pub(crate) fn contains(&self, id: &RecordId) -> bool {
        self.records.contains_key(id)
    }

    pub(crate) fn remove(&mut self, id: &RecordId) -> Option<Record> {
        self.records.remove(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Inserts a seed record under integer id `id`, keeping the sequence ahead of it.
    pub(crate) fn seed_int(&mut self, id: u64, mut record: Record) {
        record.insert("id".into(), Value::from(id));
        self.records.insert(RecordId::Int(id), record);
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// Inserts a seed record under string id `id`.
    pub(crate) fn seed_str(&mut self, id: &str, mut record: Record) {
        record.insert("id".into(), Value::from(id));
        self.records.insert(RecordId::Str(id.to_owned()), record);
    }

    /// Inserts a new record under the next integer id and returns that id.
    pub(crate) fn insert_next(&mut self, mut record: Record) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id.saturating_add(1);
        record.insert("id".into(), Value::from(id));
        self.records.insert(RecordId::Int(id), record);
        id
    }

    /// Inserts a new record under string id `id`; `false` (and nothing inserted) if taken.
    pub(crate) fn insert_str(&mut self, id: &str, mut record: Record) -> bool {
        let key = RecordId::Str(id.to_owned());
        if self.records.contains_key(&key) {
            return false;
        }
        record.insert("id".into(), Value::from(id));
        self.records.insert(key, record);
        true
    }
}

/// Everything the CRM knows. Lives behind one `RwLock`: requests are short and in-memory, so
/// one lock keeps cross-collection actions (lead conversion, bulk ops) trivially consistent.
#[derive(Debug, Default)]
pub(crate) struct Store {
    colls: [Collection; Coll::COUNT],
    /// Thread messages, by thread id (a sub-resource, not a top-level collection).
    pub(crate) messages: BTreeMap<u64, Vec<Record>>,
    pub(crate) next_message_id: u64,
    /// Company settings: top-level fields plus one object per section (`billing`, ...).
    pub(crate) settings: Record,
    /// `slack`, `calendly`, `facebook` → their configuration object.
    pub(crate) integrations: Record,
    pub(crate) exports: BTreeMap<u64, Record>,
    pub(crate) next_export_id: u64,
    pub(crate) next_invitation_id: u64,
    pub(crate) next_attachment_id: u64,
}

impl Store {
    pub(crate) fn coll(&self, coll: Coll) -> &Collection {
        &self.colls[coll as usize]
    }

    pub(crate) fn coll_mut(&mut self, coll: Coll) -> &mut Collection {
        &mut self.colls[coll as usize]
    }

    /// Hands out the next value of a per-store counter (1-based).
    pub(crate) fn bump(counter: &mut u64) -> u64 {
        let id = (*counter).max(1);
        *counter = id.saturating_add(1);
        id
    }
}

/// `record[key]` as a string, if it is one.
pub(crate) fn str_field<'a>(record: &'a Record, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str)
}

/// Seconds since the Unix epoch → `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub(crate) fn iso8601(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The current time as an ISO-8601 string (a clock before 1970 reads as the epoch).
pub(crate) fn now_iso() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    iso8601(secs)
}

/// Howard Hinnant's `civil_from_days`, restricted to days since 1970-01-01 (so no negatives).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(iso8601(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn int_ids_are_digits_only() {
        assert_eq!(parse_int_id("42"), Some(42));
        assert_eq!(parse_int_id("007"), Some(7));
        for bad in [
            "",
            "+4",
            "-1",
            " 4",
            "4a",
            "bulk-reassign",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_int_id(bad), None, "{bad:?}");
        }
    }
}
