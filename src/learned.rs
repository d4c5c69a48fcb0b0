//! The records learned from the CRM's create answers ([`crate::learn`]) that no full load has
//! confirmed yet, and what a full load does with them.
//!
//! The full load (the snapshot file, URL or database) is the truth. When one is swapped in:
//!
//! - a learned record it holds is confirmed: the loaded one is what counts (owner, shares,
//!   parent), and it is forgotten here;
//! - a learned record it does not hold is put back on top of it (the same `upsert_record`,
//!   through the same validated, journaled path) while it is younger than
//!   `snapshot.learned_ttl_ms`: the load may have been read before the CRM committed it;
//! - older than that, it is dropped (the call naming it is then judged as for any unknown
//!   record), counted in `permgate_learned_dropped_total` and logged.
//!
//! A change from the admin API that upserts or removes a learned record settles it too: the
//! operator's word stands, it is not put back by the next load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::changes::Change;
use crate::ids::{canonical_id, canonical_json_number, RecordId, RecordTypes};
use crate::records::RawId;
use crate::snapshot::Snapshot;

/// One learned record awaiting a full load that holds it.
struct Entry {
    /// The `upsert_record` applied.
    change: Change,
    /// Its type's name and canonical id (type ids may be renumbered by a config reload).
    record_type: String,
    id: RecordId,
    at: Instant,
}

/// What a full load did with the learned records.
pub struct Settled {
    /// Still young and absent from the load: to put back on top of it.
    pub reapply: Vec<Change>,
    /// Absent and older than the bound: dropped (type and canonical id, for the log).
    pub dropped: Vec<String>,
    pub confirmed: usize,
}

/// The learned records not yet confirmed, and the counters of `/status` and `/metrics`.
#[derive(Default)]
pub struct Learned {
    pending: Mutex<Vec<Entry>>,
    /// Records learned from create answers (applied to the live snapshot).
    pub learned: AtomicU64,
    /// 2xx create answers whose record was not learned (answer too large, not JSON, no id,
    /// a bad id, or refused by the snapshot).
    pub not_learned: AtomicU64,
    /// Learned records a full load then held.
    pub confirmed: AtomicU64,
    /// Learned records dropped: absent from a full load after `snapshot.learned_ttl_ms`.
    pub dropped: AtomicU64,
}

fn key_of(change: &Change, types: &RecordTypes) -> Option<(String, RecordId)> {
    let (Change::UpsertRecord {
        record_type, id, ..
    }
    | Change::RemoveRecord { record_type, id }) = change
    else {
        return None;
    };
    let kind = types.kind(types.get(record_type)?);
    let id = match id {
        RawId::Number(n) => canonical_json_number(kind, &n.to_string()),
        RawId::Text(s) => canonical_id(kind, s),
    }
    .ok()?;
    Some((record_type.clone(), id))
}

/// Does `snapshot` already hold the record this change names?
pub fn known(snapshot: &Snapshot, change: &Change, types: &RecordTypes) -> bool {
    key_of(change, types).is_some_and(|(t, id)| {
        types
            .get(&t)
            .is_some_and(|t| snapshot.records().find(t, &id).is_some())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Learned {
    /// Learned records awaiting confirmation.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// A learned `upsert_record` went live (the caller holds the state's writer lock).
    pub fn add(&self, change: Change, types: &RecordTypes) {
        let Some((record_type, id)) = key_of(&change, types) else {
            return;
        };
        self.learned.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.pending);
        pending.retain(|e| !(e.record_type == record_type && e.id == id));
        pending.push(Entry {
            change,
            record_type,
            id,
            at: Instant::now(),
        });
    }

    /// An admin batch upserting or removing these records settles them (the caller holds the
    /// writer lock).
    pub fn settle(&self, changes: &[Change], types: &RecordTypes) {
        let keys: Vec<(String, RecordId)> =
            changes.iter().filter_map(|c| key_of(c, types)).collect();
        if keys.is_empty() {
            return;
        }
        lock(&self.pending)
            .retain(|e| !keys.iter().any(|(t, i)| *t == e.record_type && *i == e.id));
    }

    /// A full load `loaded` is about to go live (the caller holds the writer lock): confirm
    /// what it holds, keep what is younger than `ttl`, drop the rest.
    pub fn reconcile(&self, loaded: &Snapshot, types: &RecordTypes, ttl: Duration) -> Settled {
        let mut pending = lock(&self.pending);
        let mut settled = Settled {
            reapply: Vec::new(),
            dropped: Vec::new(),
            confirmed: 0,
        };
        pending.retain(|e| {
            let held = types
                .get(&e.record_type)
                .is_some_and(|t| loaded.records().find(t, &e.id).is_some());
            if held {
                settled.confirmed += 1;
                false
            } else if e.at.elapsed() < ttl && types.get(&e.record_type).is_some() {
                settled.reapply.push(e.change.clone());
                true
            } else {
                settled
                    .dropped
                    .push(format!("{} '{}'", e.record_type, e.id));
                false
            }
        });
        self.confirmed
            .fetch_add(settled.confirmed as u64, Ordering::Relaxed);
        self.dropped
            .fetch_add(settled.dropped.len() as u64, Ordering::Relaxed);
        settled
    }

    /// A learned record that could not be put back on a full load: dropped too.
    pub fn drop_one(&self, change: &Change, types: &RecordTypes) {
        if let Some((t, id)) = key_of(change, types) {
            lock(&self.pending).retain(|e| !(e.record_type == t && e.id == id));
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `/status`'s `learned` object.
    pub fn status(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "pending": self.pending(),
            "learned": load(&self.learned),
            "not_learned": load(&self.not_learned),
            "confirmed": load(&self.confirmed),
            "dropped": load(&self.dropped),
        })
    }
}
