//! The decision log: one JSON line per decision, written by a background thread.
//!
//! The request path only formats nothing and waits on nothing: it hands a [`Record`] to a bounded
//! channel with `try_send`; when the channel is full the record is dropped and counted
//! (`permgate_decision_log_dropped_total`). Denials are always offered; allows are sampled
//! (`decision_log.sample_allows`). Configured fields are masked before writing.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use permgate_core::decision_log::{Settings, Target};

/// One decision, as logged.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Record {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub request_id: String,
    pub user: Option<String>,
    /// `service` when the caller is a service principal (left out for a person).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'static str>,
    /// The tenant the call was decided in (with tenants; left out otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub roles: Option<String>,
    pub method: String,
    /// The canonical path (the raw target when it could not be canonicalized).
    pub path: String,
    pub route: Option<String>,
    pub permission: Option<String>,
    /// `allow`, `deny`, or `shadow_deny` (would deny; forwarded in shadow mode).
    pub decision: &'static str,
    /// Why: the error code of a denial, or `granted_by:<role>` / `public` for an allow.
    pub reason: String,
    pub trimmed: Vec<String>,
    /// The candidate policy's decision (`allow` or the denial code), when one is configured.
    pub candidate: Option<String>,
    pub snapshot_version: Option<String>,
    pub config_hash: String,
    /// The status sent to the client.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The sending side, shared by all proxy workers.
pub struct DecisionLog {
    tx: Option<SyncSender<Record>>,
    settings: Settings,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

impl DecisionLog {
    /// Start the writer thread (none when the target is `Off`).
    pub fn start(settings: Settings) -> std::io::Result<DecisionLog> {
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        if settings.target == Target::Off {
            return Ok(DecisionLog {
                tx: None,
                settings,
                dropped,
                written,
            });
        }
        let out: Box<dyn Write + Send> = match &settings.target {
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            _ => Box::new(std::io::stdout()),
        };
        let (tx, rx) = sync_channel(settings.capacity.max(1));
        let w = written.clone();
        let mask = settings.mask.clone();
        std::thread::Builder::new()
            .name("permgate-decision-log".into())
            .spawn(move || write_loop(rx, out, &mask, &w))?;
        Ok(DecisionLog {
            tx: Some(tx),
            settings,
            dropped,
            written,
        })
    }

    /// A log that writes nothing (tests, tools).
    pub fn off() -> DecisionLog {
        DecisionLog {
            tx: None,
            settings: Settings {
                target: Target::Off,
                ..Settings::default()
            },
            dropped: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Should this decision be offered at all (denials always; allows by sampling)?
    pub fn wants(&self, allow: bool) -> bool {
        self.tx.is_some()
            && (!allow
                || self.settings.sample_allows >= 1.0
                || fastrand::f64() < self.settings.sample_allows)
    }

    /// Hand a record to the writer; never blocks.
    pub fn offer(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn masked(mut r: Record, mask: &[String]) -> Record {
    for field in mask {
        match field.as_str() {
            "user" => r.user = r.user.map(|_| "***".into()),
            "path" => r.path = "***".into(),
            "roles" => r.roles = r.roles.map(|_| "***".into()),
            "trimmed" => r.trimmed = r.trimmed.iter().map(|_| "***".into()).collect(),
            _ => {}
        }
    }
    r
}

fn write_loop(
    rx: Receiver<Record>,
    out: Box<dyn Write + Send>,
    mask: &[String],
    written: &AtomicU64,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        // Block for the first record, then drain what is queued, then flush once.
        let first = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for r in first.into_iter().chain(rx.try_iter()) {
            let r = masked(r, mask);
            if serde_json::to_writer(&mut out, &r).is_ok() && out.write_all(b"\n").is_ok() {
                written.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_masked_and_drops_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let log = DecisionLog::start(Settings {
            target: Target::File(path.clone()),
            capacity: 4,
            sample_allows: 1.0,
            mask: vec!["user".into()],
        })
        .unwrap();
        for i in 0..1000 {
            log.offer(Record {
                request_id: format!("r{i}"),
                user: Some("u-1".into()),
                decision: "deny",
                reason: "forbidden".into(),
                ..Record::default()
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while log.written.load(Ordering::Relaxed) + log.dropped.load(Ordering::Relaxed) < 1000
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            log.written.load(Ordering::Relaxed) + log.dropped.load(Ordering::Relaxed),
            1000
        );
        assert!(
            log.dropped.load(Ordering::Relaxed) > 0,
            "a 4-slot queue drops under a burst"
        );
        std::thread::sleep(Duration::from_millis(300));
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["user"], "***");
        assert_eq!(first["decision"], "deny");
    }

    #[test]
    fn sampling_never_skips_denials() {
        let log = DecisionLog {
            tx: Some(sync_channel(1).0),
            settings: Settings {
                sample_allows: 0.0,
                ..Settings::default()
            },
            dropped: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
        };
        assert!(log.wants(false));
        assert!((0..100).all(|_| !log.wants(true)));
    }
}
