//! The audit log: every authorization decision, allowed or denied, with who, what and why.
//!
//! Records are JSON lines appended to a file (opened once, O_APPEND) and kept in a bounded ring
//! in memory for `Manager.AuditLog`. An operator answers "who flashed this card, and who tried"
//! from it.

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
    ring: Mutex<VecDeque<String>>,
}

impl AuditLog {
    /// An audit log appending to `path`, or only kept in memory and traced when `None`.
    pub fn open(path: Option<&Path>) -> Result<AuditLog, AuditError> {
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
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RING_SIZE {
            ring.pop_front();
        }
        ring.push_back(line);
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
