//! The audit log: every authorization decision, allowed or denied, with who, what and why.
//!
//! Records are JSON lines appended to a file (opened once, O_APPEND), sent to journald as
//! structured fields when journald runs (`ACCELGATE_UID`, `ACCELGATE_PID`, `ACCELGATE_OPERATION`,
//! `ACCELGATE_TARGET`, `ACCELGATE_DECISION`, `ACCELGATE_GATE`, ...), and kept in a bounded ring
//! in memory for `Manager.AuditLog`. An operator answers "who flashed this card, and who tried"
//! from it.

pub mod journal;

pub use journal::{Journal, JOURNAL_SOCKET};

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

const RING_SIZE: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {0}")]
    Open(String, #[source] std::io::Error),
}

/// One decision.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// Seconds since the epoch, with microseconds.
    pub time: f64,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub sender: &'a str,
    pub operation: &'a str,
    pub target: &'a str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The gate that decided: `identity`, `role`, `caller-caps`, `polkit`, `device-limits`.
    pub gate: &'static str,
    pub reason: &'a str,
}

pub struct AuditLog {
    file: Option<Mutex<File>>,
    journal: Option<Journal>,
    ring: Mutex<VecDeque<String>>,
}

impl AuditLog {
    /// An audit log appending to `path` (or only kept in memory and traced when `None`), and
    /// sending to journald when its socket exists.
    pub fn open(path: Option<&Path>) -> Result<AuditLog, AuditError> {
        AuditLog::open_with_journal(path, Some(Path::new(JOURNAL_SOCKET)))
    }

    /// Like [`AuditLog::open`], with journald's socket at `journal` (`None`: no journald). A
    /// socket that is missing or refuses connections means no journald, not an error: the file
    /// and the ring still hold every record.
    pub fn open_with_journal(
        path: Option<&Path>,
        journal: Option<&Path>,
    ) -> Result<AuditLog, AuditError> {
        let journal = journal
            .filter(|socket| socket.exists())
            .and_then(|socket| match Journal::connect(socket) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!("audit: journald at {} unusable: {e}", socket.display());
                    None
                }
            });
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| AuditError::Open(p.display().to_string(), e))?,
            )),
            None => None,
        };
        Ok(AuditLog {
            file,
            journal,
            ring: Mutex::new(VecDeque::with_capacity(RING_SIZE)),
        })
    }

    pub fn record(&self, mut rec: AuditRecord<'_>) {
        rec.time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let Ok(line) = serde_json::to_string(&rec) else {
            return;
        };
        if rec.decision == "deny" {
            tracing::info!(target: "audit", "{line}");
        } else {
            tracing::debug!(target: "audit", "{line}");
        }
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            // One write per record keeps lines whole under O_APPEND.
            if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                tracing::error!("audit log write failed: {e}");
            }
        }
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.send(&journal_fields(&rec)) {
                tracing::error!("audit record not sent to journald: {e}");
            }
        }
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RING_SIZE {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    /// Whether records also go to journald.
    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// The newest `max` records, oldest first.
    pub fn recent(&self, max: usize) -> Vec<String> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .skip(ring.len().saturating_sub(max))
            .cloned()
            .collect()
    }
}

/// The journald entry of a record.
fn journal_fields<'a>(rec: &'a AuditRecord<'a>) -> Vec<(&'static str, std::borrow::Cow<'a, str>)> {
    use std::borrow::Cow;
    let who = match (rec.uid, rec.pid) {
        (Some(uid), Some(pid)) => format!("uid {uid} (pid {pid})"),
        (Some(uid), None) => format!("uid {uid}"),
        _ => format!("unidentified caller {}", rec.sender),
    };
    let message = format!(
        "{} {} on {} for {who}: gate {}: {}",
        rec.decision, rec.operation, rec.target, rec.gate, rec.reason
    );
    let mut fields: Vec<(&'static str, Cow<'a, str>)> = vec![
        ("MESSAGE", Cow::Owned(message)),
        // A denial is worth a look (warning); an allow is routine (info).
        (
            "PRIORITY",
            Cow::Borrowed(if rec.decision == "deny" { "4" } else { "6" }),
        ),
        ("SYSLOG_IDENTIFIER", Cow::Borrowed("accelgated")),
        ("ACCELGATE_SENDER", Cow::Borrowed(rec.sender)),
        ("ACCELGATE_OPERATION", Cow::Borrowed(rec.operation)),
        ("ACCELGATE_TARGET", Cow::Borrowed(rec.target)),
        ("ACCELGATE_DECISION", Cow::Borrowed(rec.decision)),
        ("ACCELGATE_GATE", Cow::Borrowed(rec.gate)),
        ("ACCELGATE_REASON", Cow::Borrowed(rec.reason)),
    ];
    if let Some(uid) = rec.uid {
        fields.push(("ACCELGATE_UID", Cow::Owned(uid.to_string())));
    }
    if let Some(pid) = rec.pid {
        fields.push(("ACCELGATE_PID", Cow::Owned(pid.to_string())));
    }
    fields
}
