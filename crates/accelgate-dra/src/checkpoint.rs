//! The checkpoint: what the plugin has prepared, per claim, in one JSON file that survives a
//! plugin restart. An entry is written `PrepareStarted` (with the slices chosen) before the
//! daemon is asked for anything, and `PrepareCompleted` (with the CDI ids returned) after the
//! spec is in place. A repeated Prepare of a completed claim answers from here without asking
//! the daemon again; an Unprepare after a crash mid-Prepare still knows which slices to
//! release; and a slice recorded for one claim is refused to every other.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write checkpoint {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepareState {
    PrepareStarted,
    PrepareCompleted,
}

/// One slice of a claim as prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedSlice {
    pub device: String,
    pub slice: String,
    pub pool: String,
    /// The DRA device name in the ResourceSlice.
    pub device_name: String,
    pub request_names: Vec<String>,
    pub cdi_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimEntry {
    pub namespace: String,
    pub name: String,
    pub state: PrepareState,
    pub slices: Vec<PreparedSlice>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// Format version, for whoever reads an old file.
    version: u32,
    claims: BTreeMap<String, ClaimEntry>,
}

/// The checkpoint file and its contents in memory (the file is rewritten on every change).
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    claims: BTreeMap<String, ClaimEntry>,
}

impl Checkpoint {
    /// Loads `path`, or starts empty when it does not exist. A corrupt file is an error: the
    /// plugin must not forget which slices it holds.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let claims = match fs::read(path) {
            Ok(bytes) => {
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?;
                file.claims
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(Checkpoint {
            path: path.to_owned(),
            claims,
        })
    }

    pub fn get(&self, claim_uid: &str) -> Option<&ClaimEntry> {
        self.claims.get(claim_uid)
    }

    /// The other claim that holds `device/slice`, if any.
    pub fn holder_of(&self, device: &str, slice: &str, except: &str) -> Option<&str> {
        self.claims
            .iter()
            .filter(|(uid, _)| uid.as_str() != except)
            .find(|(_, e)| {
                e.slices
                    .iter()
                    .any(|s| s.device == device && s.slice == slice)
            })
            .map(|(uid, _)| uid.as_str())
    }

    pub fn set(&mut self, claim_uid: &str, entry: ClaimEntry) -> Result<(), CheckpointError> {
        self.claims.insert(claim_uid.to_owned(), entry);
        self.save()
    }

    pub fn remove(&mut self, claim_uid: &str) -> Result<(), CheckpointError> {
        if self.claims.remove(claim_uid).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// Writes a temporary file, syncs it and renames it over the old one, so a crash leaves
    /// either the old or the new checkpoint.
    fn save(&self) -> Result<(), CheckpointError> {
        let write_err = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let file = File {
            version: 1,
            claims: self.claims.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| write_err(e.into()))?;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(write_err)?;
        f.write_all(&bytes).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_holders() {
        let dir = std::env::temp_dir().join(format!("accelgate-dra-ckpt-{}", std::process::id()));
        let path = dir.join("checkpoint.json");
        let _ = fs::remove_dir_all(&dir);
        let mut c = Checkpoint::load(&path).unwrap();
        let slice = PreparedSlice {
            device: "fpga0".into(),
            slice: "region0".into(),
            pool: "node1".into(),
            device_name: "fpga0-region0".into(),
            request_names: vec!["fpga".into()],
            cdi_ids: vec![],
        };
        c.set(
            "u1",
            ClaimEntry {
                namespace: "ns".into(),
                name: "c".into(),
                state: PrepareState::PrepareStarted,
                slices: vec![slice],
            },
        )
        .unwrap();
        let c = Checkpoint::load(&path).unwrap();
        assert_eq!(c.get("u1").unwrap().state, PrepareState::PrepareStarted);
        assert_eq!(c.holder_of("fpga0", "region0", "u2"), Some("u1"));
        assert_eq!(c.holder_of("fpga0", "region0", "u1"), None);
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Checkpoint::load(&path),
            Err(CheckpointError::Corrupt { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
