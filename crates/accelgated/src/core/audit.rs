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

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decided {
    Allow,
    Deny,
}

impl Decided {
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Allow => "allow",
            Decided::Deny => "deny",
        }
    }
}

/// The gate that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateName {
    /// The caller could not be identified by the transport.
    Identity,
    Role,
    CallerCaps,
    /// A further gate, by its own name (`polkit`).
    Further(&'static str),
    /// A hard device limit (writable ranges, lock, image size, ...).
    DeviceLimits,
    /// Every gate passed (on an allow).
    All,
}

impl GateName {
    pub fn as_str(self) -> &'static str {
        match self {
            GateName::Identity => accelgate_proto::refusal::GATE_IDENTITY,
            GateName::Role => accelgate_proto::refusal::GATE_ROLE,
            GateName::CallerCaps => accelgate_proto::refusal::GATE_CALLER_CAPS,
            GateName::Further(name) => name,
            GateName::DeviceLimits => "device-limits",
            GateName::All => "all",
        }
    }
}

impl Serialize for GateName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
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
    pub decision: Decided,
    /// The gate that decided.
    pub gate: GateName,
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
        let journal = journal.filter(|socket| socket.exists()).and_then(|socket| {
            match Journal::connect(socket) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!("audit: journald at {} unusable: {e}", socket.display());
                    None
                }
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
        if rec.decision == Decided::Deny {
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
        rec.decision.as_str(),
        rec.operation,
        rec.target,
        rec.gate.as_str(),
        rec.reason
    );
    let mut fields: Vec<(&'static str, Cow<'a, str>)> = vec![
        ("MESSAGE", Cow::Owned(message)),
        // A denial is worth a look (warning); an allow is routine (info).
        (
            "PRIORITY",
            Cow::Borrowed(if rec.decision == Decided::Deny {
                "4"
            } else {
                "6"
            }),
        ),
        ("SYSLOG_IDENTIFIER", Cow::Borrowed("accelgated")),
        ("ACCELGATE_SENDER", Cow::Borrowed(rec.sender)),
        ("ACCELGATE_OPERATION", Cow::Borrowed(rec.operation)),
        ("ACCELGATE_TARGET", Cow::Borrowed(rec.target)),
        ("ACCELGATE_DECISION", Cow::Borrowed(rec.decision.as_str())),
        ("ACCELGATE_GATE", Cow::Borrowed(rec.gate.as_str())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn record<'a>(decision: Decided, reason: &'a str) -> AuditRecord<'a> {
        AuditRecord {
            time: 0.0,
            uid: Some(1001),
            pid: Some(4242),
            sender: ":1.7",
            operation: "slice.write",
            target: "fpga0/region0",
            decision,
            gate: GateName::Further("polkit"),
            reason,
        }
    }

    #[test]
    fn records_go_to_the_file_and_to_journald_as_fields() {
        let dir = std::env::temp_dir().join(format!("accelgate-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("journal.socket");
        let journald = UnixDatagram::bind(&socket).unwrap();
        let file = dir.join("audit.jsonl");
        let log = AuditLog::open_with_journal(Some(&file), Some(&socket)).unwrap();
        assert!(log.has_journal());

        log.record(record(Decided::Deny, "polkit: not authorized\nby rule 50"));
        log.record(record(Decided::Allow, "every gate passed"));

        let mut buf = [0u8; 8192];
        let n = journald.recv(&mut buf).unwrap();
        let fields = journal::decode(&buf[..n]).unwrap();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {k} in {fields:?}"))
        };
        assert_eq!(get("ACCELGATE_UID"), "1001");
        assert_eq!(get("ACCELGATE_PID"), "4242");
        assert_eq!(get("ACCELGATE_OPERATION"), "slice.write");
        assert_eq!(get("ACCELGATE_TARGET"), "fpga0/region0");
        assert_eq!(get("ACCELGATE_DECISION"), "deny");
        assert_eq!(get("ACCELGATE_GATE"), "polkit");
        assert_eq!(
            get("ACCELGATE_REASON"),
            "polkit: not authorized\nby rule 50"
        );
        assert_eq!(get("PRIORITY"), "4");
        assert!(get("MESSAGE").contains("deny slice.write on fpga0/region0"));
        let n = journald.recv(&mut buf).unwrap();
        let fields = journal::decode(&buf[..n]).unwrap();
        assert!(fields.contains(&("PRIORITY".into(), "6".into())));
        assert!(fields.contains(&("ACCELGATE_DECISION".into(), "allow".into())));

        // The JSON lines file has both, whole.
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[0]["gate"], "polkit");
        assert_eq!(lines[1]["decision"], "allow");
        assert_eq!(log.recent(1).len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_journald_the_file_still_gets_every_record() {
        let dir = std::env::temp_dir().join(format!("accelgate-audit-nj-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("audit.jsonl");
        let log =
            AuditLog::open_with_journal(Some(&file), Some(&dir.join("no-such-socket"))).unwrap();
        assert!(!log.has_journal());
        log.record(record(Decided::Deny, "x"));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
