//! What the daemon remembers about flashes, under `<state dir>/firmware/`:
//!
//! - `<device>.flashing.json`: written (atomically) before the first byte goes to the device
//!   and removed when the flash has ended. Finding it at start-up means the daemon died
//!   during a flash.
//! - `<device>.last-result.json`: how the last flash ended, shown as `FirmwareLastResult`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use accelgate_hw::slot::Slot;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot remove {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// Where a flash was when the record was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Writing or reading back the inactive slot; the active slot is untouched.
    Writing,
    /// Past the point of no return: the switch to the new slot was requested.
    Switching,
}

/// A flash in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashRecord {
    pub sha256: String,
    pub version: String,
    pub target: Slot,
    pub previous: Slot,
    pub previous_version: String,
    pub phase: Phase,
    pub started_by_uid: u32,
}

/// How a flash ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon (or the machine) died during the flash.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResult {
    pub outcome: Outcome,
    pub message: String,
    pub sha256: String,
}

impl std::fmt::Display for LastResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.outcome.as_str(), self.message)
    }
}

/// The firmware records of all devices.
#[derive(Debug, Clone)]
pub struct FirmwareRecords {
    dir: PathBuf,
}

impl FirmwareRecords {
    pub fn new(state_dir: &Path) -> FirmwareRecords {
        FirmwareRecords {
            dir: state_dir.join("firmware"),
        }
    }

    fn flashing_path(&self, device: &str) -> PathBuf {
        self.dir.join(format!("{device}.flashing.json"))
    }

    fn result_path(&self, device: &str) -> PathBuf {
        self.dir.join(format!("{device}.last-result.json"))
    }

    /// Records (durably) that a flash is in `record.phase`.
    pub fn set_in_progress(&self, device: &str, record: &FlashRecord) -> Result<(), RecordError> {
        write_json(&self.dir, &self.flashing_path(device), record)
    }

    pub fn in_progress(&self, device: &str) -> Option<FlashRecord> {
        read_json(&self.flashing_path(device))
    }

    /// Stores how the flash ended, then drops the in-progress record: a crash in between
    /// leaves both, and recovery then finds the result already written.
    pub fn finish(&self, device: &str, result: &LastResult) -> Result<(), RecordError> {
        write_json(&self.dir, &self.result_path(device), result)?;
        let path = self.flashing_path(device);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir).map_err(|e| RecordError::Remove(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RecordError::Remove(path, e)),
        }
    }

    pub fn last_result(&self, device: &str) -> Option<LastResult> {
        read_json(&self.result_path(device))
    }

    /// A device name unique to this record directory (tests of different directories run in
    /// parallel and must not share a device).
    #[cfg(test)]
    pub fn dir_name_for_tests(&self) -> String {
        self.dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| {
                n.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            })
            .unwrap_or_default()
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = match crate::core::state::read_no_follow(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("ignoring malformed {}: {e}", path.display());
            None
        }
    }
}

/// Temp file, fsync, rename, fsync of the directory: the file is the old or the new one.
fn write_json<T: Serialize>(dir: &Path, path: &Path, value: &T) -> Result<(), RecordError> {
    let err = |e| RecordError::Write(path.to_owned(), e);
    fs::create_dir_all(dir).map_err(err)?;
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| err(e.into()))?;
    let temp = path.with_extension("json.tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temp)
        .map_err(|e| err(crate::core::state::no_follow_error(e, &temp)))?;
    file.write_all(&bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&temp, path).map_err(err)?;
    sync_dir(dir).map_err(err)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_progress_then_finished() {
        let dir = std::env::temp_dir().join(format!("accelgate-fwrec-{}", std::process::id()));
        let records = FirmwareRecords::new(&dir);
        assert!(records.in_progress("fpga0").is_none());
        let record = FlashRecord {
            sha256: "ab".into(),
            version: "2.0".into(),
            target: Slot::B,
            previous: Slot::A,
            previous_version: "1.0".into(),
            phase: Phase::Writing,
            started_by_uid: 0,
        };
        records.set_in_progress("fpga0", &record).unwrap();
        assert_eq!(records.in_progress("fpga0"), Some(record));
        let result = LastResult {
            outcome: Outcome::Succeeded,
            message: "ok".into(),
            sha256: "ab".into(),
        };
        records.finish("fpga0", &result).unwrap();
        assert!(records.in_progress("fpga0").is_none());
        assert_eq!(
            records.last_result("fpga0").unwrap().to_string(),
            "succeeded: ok"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
