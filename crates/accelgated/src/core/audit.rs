//! The audit log: every authorization decision, allowed or denied, with who, what and why.
//!
//! Records are JSON lines appended to a file (opened once, O_APPEND), sent to journald as
//! structured fields when journald runs (`ACCELGATE_UID`, `ACCELGATE_PID`, `ACCELGATE_OPERATION`,
//! `ACCELGATE_TARGET`, `ACCELGATE_DECISION`, `ACCELGATE_GATE`, ...), and kept in a bounded ring
//! in memory for `Manager.AuditLog`. An operator answers "who flashed this card, and who tried"
//! from it.
//!
//! Denials are rate-limited so that a caller cannot flood the log: per (uid, operation, gate)
//! the first [`DENIAL_BURST`] denials of a [`DENIAL_WINDOW`] are written, the rest are counted
//! and summed up in one record ("N similar denials suppressed in T s") when the key's next
//! window starts. The keys' memory is bounded ([`MAX_DENIAL_KEYS`]; past it, new keys share one
//! overflow key). Allowed decisions are never limited, and the ring keeps them apart from the
//! denials, so no amount of denials pushes them out.

pub mod journal;

pub use journal::{Journal, JOURNAL_SOCKET};

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Allowed decisions kept for `Manager.AuditLog`.
const ALLOWED_RING: usize = 1536;
/// Denials (and their summaries) kept for `Manager.AuditLog`, apart from the allowed ones.
const DENIED_RING: usize = 512;
/// Denials per (uid, operation, gate) written in one window; the rest are summed up.
pub const DENIAL_BURST: u32 = 10;
/// Length of a rate-limiting window.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(5);
/// Keys tracked at once; beyond, new keys share one overflow key.
pub const MAX_DENIAL_KEYS: usize = 4096;
/// Denials of unidentified callers (no uid; keyed by their bus name) written per window in
/// all; past it they share the overflow key.
pub const UNIDENTIFIED_BURST: u32 = 100;
/// Longest reason kept for a summary.
const MAX_KEPT_REASON: usize = 256;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    ring: Mutex<Rings>,
    limiter: Mutex<DenialLimiter>,
}

/// The in-memory records, numbered so that the two shares merge in order.
#[derive(Default)]
struct Rings {
    next: u64,
    allowed: VecDeque<(u64, String)>,
    denied: VecDeque<(u64, String)>,
}

/// What denials are counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DenialKey {
    uid: Option<u32>,
    /// The bus name of a caller without a uid (each is audited apart, within
    /// [`UNIDENTIFIED_BURST`]).
    sender: Option<String>,
    operation: String,
    gate: GateName,
}

impl DenialKey {
    /// Shared by every new key once [`MAX_DENIAL_KEYS`] are tracked.
    fn overflow() -> DenialKey {
        DenialKey {
            uid: None,
            sender: None,
            operation: "*".into(),
            gate: GateName::Further("*"),
        }
    }
}

struct DenialWindow {
    start: Instant,
    written: u32,
    suppressed: u64,
    last_target: String,
    last_reason: String,
}

/// A summary of suppressed denials, written as its own record.
struct Suppressed {
    key: DenialKey,
    count: u64,
    seconds: f64,
    last_target: String,
    last_reason: String,
}

#[derive(Default)]
struct DenialLimiter {
    windows: HashMap<DenialKey, DenialWindow>,
    last_sweep: Option<Instant>,
    /// Start of the current window for unidentified callers, and how many were written in it.
    unidentified: Option<(Instant, u32)>,
}

impl DenialLimiter {
    /// Whether a denial is written; and the summaries of windows that ended, to write first.
    fn admit(&mut self, rec: &AuditRecord<'_>, now: Instant) -> (bool, Vec<Suppressed>) {
        let mut summaries = self.sweep(now, false);
        let mut key = DenialKey {
            uid: rec.uid,
            sender: None,
            operation: rec.operation.to_owned(),
            gate: rec.gate,
        };
        if rec.uid.is_none() {
            let (start, written) = match self.unidentified {
                Some((start, n)) if now.duration_since(start) < DENIAL_WINDOW => (start, n),
                _ => (now, 0),
            };
            if written < UNIDENTIFIED_BURST {
                key.sender = Some(rec.sender.chars().take(MAX_KEPT_REASON).collect());
                self.unidentified = Some((start, written + 1));
            } else {
                key = DenialKey::overflow();
            }
        }
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_DENIAL_KEYS {
            summaries.extend(self.sweep(now, true));
            if self.windows.len() >= MAX_DENIAL_KEYS {
                key = DenialKey::overflow();
            }
        }
        let window = self.windows.entry(key.clone()).or_insert(DenialWindow {
            start: now,
            written: 0,
            suppressed: 0,
            last_target: String::new(),
            last_reason: String::new(),
        });
        if now.duration_since(window.start) >= DENIAL_WINDOW {
            summaries.extend(summary(&key, window, now));
            window.start = now;
            window.written = 0;
            window.suppressed = 0;
        }
        if window.written < DENIAL_BURST {
            window.written += 1;
            (true, summaries)
        } else {
            window.suppressed += 1;
            window.last_target = rec.target.chars().take(MAX_KEPT_REASON).collect();
            window.last_reason = rec.reason.chars().take(MAX_KEPT_REASON).collect();
            (false, summaries)
        }
    }

    /// Ends the windows that are over (at most once a second unless `now_or_never`): their
    /// summaries, and the keys dropped.
    fn sweep(&mut self, now: Instant, now_or_never: bool) -> Vec<Suppressed> {
        let due = self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if !due && !now_or_never {
            return Vec::new();
        }
        self.last_sweep = Some(now);
        let mut out = Vec::new();
        self.windows.retain(|key, window| {
            if now.duration_since(window.start) < DENIAL_WINDOW {
                return true;
            }
            out.extend(summary(key, window, now));
            false
        });
        out
    }
}

fn summary(key: &DenialKey, window: &DenialWindow, now: Instant) -> Option<Suppressed> {
    (window.suppressed > 0).then(|| Suppressed {
        key: key.clone(),
        count: window.suppressed,
        seconds: now.duration_since(window.start).as_secs_f64(),
        last_target: window.last_target.clone(),
        last_reason: window.last_reason.clone(),
    })
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
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(p)
                    .map_err(|e| {
                        let e = super::state::no_follow_error(e, p);
                        AuditError::Open(p.display().to_string(), e)
                    })?,
            )),
            None => None,
        };
        Ok(AuditLog {
            file,
            journal,
            ring: Mutex::new(Rings::default()),
            limiter: Mutex::new(DenialLimiter::default()),
        })
    }

    /// Records a decision: every allow; a denial unless its key is over the rate limit.
    pub fn record(&self, rec: AuditRecord<'_>) {
        let now = Instant::now();
        let (write, summaries) = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            if rec.decision == Decided::Deny {
                limiter.admit(&rec, now)
            } else {
                (true, limiter.sweep(now, false))
            }
        };
        for s in summaries {
            let reason = format!(
                "{} similar denials suppressed in {:.1} s (same uid, operation and gate); the \
                 last: {}",
                s.count, s.seconds, s.last_reason
            );
            self.write(AuditRecord {
                time: 0.0,
                uid: s.key.uid,
                pid: None,
                sender: "",
                operation: &s.key.operation,
                target: &s.last_target,
                decision: Decided::Deny,
                gate: s.key.gate,
                reason: &reason,
            });
        }
        if write {
            self.write(rec);
        }
    }

    fn write(&self, mut rec: AuditRecord<'_>) {
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
        let mut rings = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let n = rings.next;
        rings.next += 1;
        let (ring, size) = match rec.decision {
            Decided::Allow => (&mut rings.allowed, ALLOWED_RING),
            Decided::Deny => (&mut rings.denied, DENIED_RING),
        };
        if ring.len() == size {
            ring.pop_front();
        }
        ring.push_back((n, line));
    }

    /// Whether records also go to journald.
    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// The newest `max` records, oldest first.
    pub fn recent(&self, max: usize) -> Vec<String> {
        let rings = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: Vec<&(u64, String)> =
            rings.allowed.iter().chain(rings.denied.iter()).collect();
        merged.sort_unstable_by_key(|(n, _)| *n);
        merged
            .iter()
            .skip(merged.len().saturating_sub(max))
            .map(|(_, line)| line.clone())
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
    fn denials_are_rate_limited_and_never_push_out_allowed_records() {
        let log = AuditLog::open_with_journal(None, None).unwrap();
        log.record(record(Decided::Allow, "every gate passed"));
        for _ in 0..1000 {
            log.record(record(Decided::Deny, "no role"));
        }
        let recent = log.recent(usize::MAX);
        assert_eq!(recent.len(), 1 + DENIAL_BURST as usize, "{recent:?}");
        // Many keys (distinct uids): the denial share fills, the allowed record stays.
        for uid in 0..2000 {
            let mut r = record(Decided::Deny, "no role");
            r.uid = Some(uid);
            log.record(r);
        }
        let recent = log.recent(usize::MAX);
        assert!(
            recent[0].contains("every gate passed"),
            "{:?}",
            &recent[..2]
        );
        assert_eq!(recent.len(), 1 + DENIED_RING);
        assert!(log.limiter.lock().unwrap().windows.len() <= MAX_DENIAL_KEYS);
    }

    #[test]
    fn a_window_that_ends_sums_up_what_it_suppressed() {
        let mut limiter = DenialLimiter::default();
        let start = Instant::now();
        let rec = record(Decided::Deny, "no role");
        let written = (0..25).filter(|_| limiter.admit(&rec, start).0).count();
        assert_eq!(written, DENIAL_BURST as usize);
        let (write, summaries) = limiter.admit(&rec, start + DENIAL_WINDOW);
        assert!(write);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 25 - u64::from(DENIAL_BURST));
        // Bounded keys: past the limit, new keys share the overflow key.
        for uid in 0..(MAX_DENIAL_KEYS as u32 + 100) {
            let mut r = record(Decided::Deny, "x");
            r.uid = Some(uid);
            limiter.admit(&r, start + DENIAL_WINDOW);
        }
        assert!(limiter.windows.len() <= MAX_DENIAL_KEYS + 1);
        assert!(limiter.windows.contains_key(&DenialKey::overflow()));
    }

    #[test]
    fn a_link_in_place_of_the_audit_file_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("accelgate-audit-ln-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let file = dir.join("audit.jsonl");
        std::os::unix::fs::symlink(&victim, &file).unwrap();
        let err = match AuditLog::open_with_journal(Some(&file), None) {
            Ok(_) => panic!("a symlinked audit file was opened"),
            Err(e) => format!("{e}: {}", std::error::Error::source(&e).unwrap()),
        };
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
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
