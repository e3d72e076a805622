//! Persistent daemon state: slice assignments, loaded image hashes, VF counts.
//!
//! One JSON file, replaced atomically (write a temp file, fsync, rename, fsync the directory), so
//! a daemon killed at any moment restarts from either the old or the new state, never a mix. An
//! update that cannot be persisted changes nothing in memory either.
//!
//! The daemon writes the file on one thread of its own ([`StateWriter`]): an fsync can take
//! milliseconds (seconds on a busy disk), and on a thread of the async runtime it would stall
//! every request that thread serves meanwhile.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::tenant::Tenant;

const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("state file {0} is malformed; move it aside to start from empty state")]
    Malformed(PathBuf, #[source] serde_json::Error),
    #[error("state file {0} has version {1}, this daemon reads version {STATE_VERSION}")]
    Version(PathBuf, u32),
    #[error("cannot write state under {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("the state writer thread is not running")]
    WriterGone(#[source] std::io::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    /// sha256 of the image loaded in the slice, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
    /// Set while an image is being loaded or unloaded: after a crash the content is unknown
    /// and the slice is blanked before anyone uses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_in_flux: bool,
    /// The tenant the slice was assigned to when Map handed out its BAR. No kernel interface
    /// revokes an mmap of a sysfs `resourceN` file short of removing the function, so the
    /// slice goes to no other tenant until its VF is recreated (which clears this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_by: Option<Tenant>,
    /// The tenant Map handed an fd of this VF's BAR file. A revocation ends mappings, not that
    /// fd: after the revoke driver is unbound it can map the BAR again, whoever has the VF by
    /// then. Only removing the VF's `resourceN` (its VFs recreated, the function leaving the
    /// bus) ends it, which clears this; until then the slice goes to no other tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_handed_to: Option<Tenant>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// The VF count an operator asked for; restored on start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_vfs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personality_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub personality_in_flux: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistentState {
    pub version: u32,
    /// Keyed by `device/slice`.
    #[serde(default)]
    pub slices: BTreeMap<String, SliceState>,
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceState>,
}

impl Default for PersistentState {
    fn default() -> Self {
        PersistentState {
            version: STATE_VERSION,
            slices: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }
}

impl PersistentState {
    pub fn slice(&self, device: &str, slice: &str) -> SliceState {
        self.slices
            .get(&slice_key(device, slice))
            .cloned()
            .unwrap_or_default()
    }

    pub fn slice_mut(&mut self, device: &str, slice: &str) -> &mut SliceState {
        self.slices.entry(slice_key(device, slice)).or_default()
    }

    pub fn device(&self, device: &str) -> DeviceState {
        self.devices.get(device).cloned().unwrap_or_default()
    }

    pub fn device_mut(&mut self, device: &str) -> &mut DeviceState {
        self.devices.entry(device.to_owned()).or_default()
    }

    /// Drops entries that carry nothing, so the file only lists what matters.
    fn compact(&mut self) {
        self.slices.retain(|_, s| *s != SliceState::default());
        self.devices.retain(|_, d| *d != DeviceState::default());
    }
}

pub fn slice_key(device: &str, slice: &str) -> String {
    format!("{device}/{slice}")
}

/// The state and the directory it lives in.
pub struct StateStore {
    dir: PathBuf,
    current: PersistentState,
}

impl StateStore {
    /// Opens the state under `dir` (created if missing); no file means empty state.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        fs::create_dir_all(dir).map_err(|e| StateError::Write(dir.to_owned(), e))?;
        let path = dir.join(STATE_FILE);
        let current = match read_no_follow(&path) {
            Ok(bytes) => {
                let state: PersistentState = serde_json::from_slice(&bytes)
                    .map_err(|e| StateError::Malformed(path.clone(), e))?;
                if state.version != STATE_VERSION {
                    return Err(StateError::Version(path, state.version));
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistentState::default(),
            Err(e) => return Err(StateError::Read(path, e)),
        };
        Ok(StateStore {
            dir: dir.to_owned(),
            current,
        })
    }

    /// The state directory (other records, e.g. firmware flash records, live beside it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self) -> &PersistentState {
        &self.current
    }

    /// Applies `change` to a copy, persists the copy, and only then makes it current.
    #[cfg(test)]
    pub fn update<R>(
        &mut self,
        change: impl FnOnce(&mut PersistentState) -> R,
    ) -> Result<R, StateError> {
        let (result, next) = self.prepare(change);
        if let Some(next) = next {
            persist(&self.dir, &next)?;
            self.commit(next);
        }
        Ok(result)
    }

    /// Applies `change` to a copy of the current state: `change`'s result, and the copy when it
    /// differs from the current state (then it must be persisted, then committed).
    pub fn prepare<R>(
        &self,
        change: impl FnOnce(&mut PersistentState) -> R,
    ) -> (R, Option<PersistentState>) {
        let mut next = self.current.clone();
        let result = change(&mut next);
        next.compact();
        let changed = next != self.current;
        (result, changed.then_some(next))
    }

    /// Makes a persisted state current.
    pub fn commit(&mut self, next: PersistentState) {
        self.current = next;
    }
}

/// Reads a file of the state directory without following a symbolic link in its place.
pub(crate) fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| no_follow_error(e, path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The daemon's files are opened with O_NOFOLLOW: a link placed where one of them goes would
/// make root write (or read) whatever it points to. The kernel answers ELOOP; say what it means.
pub(crate) fn no_follow_error(e: std::io::Error, path: &Path) -> std::io::Error {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        std::io::Error::other(format!(
            "{} is a symbolic link; the daemon does not follow links in place of its own \
             files (remove it)",
            path.display()
        ))
    } else {
        e
    }
}

/// Writes `state` as the state file under `dir`, atomically and durably.
pub fn persist(dir: &Path, state: &PersistentState) -> Result<(), StateError> {
    let err = |e| StateError::Write(dir.to_owned(), e);
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| err(no_follow_error(e, &tmp)))?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, dir.join(STATE_FILE)).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Name of the writer thread (seen in /proc/<pid>/task/*/comm, at most 15 bytes).
pub const WRITER_THREAD: &str = "accelgate-state";

type WriteJob = Box<dyn FnOnce() + Send>;

/// One thread that runs the daemon's state writes in order, off the async runtime. Started on
/// first use; if it cannot be started, the write fails (and so changes nothing).
#[derive(Default)]
pub struct StateWriter {
    queue: Mutex<Option<mpsc::Sender<WriteJob>>>,
}

impl StateWriter {
    /// Runs `work` on the writer thread and waits (asynchronously) for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StateError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: WriteJob = Box::new(move || {
            let _ = tx.send(work());
        });
        self.sender()?
            .send(job)
            .map_err(|_| StateError::WriterGone(std::io::Error::other("its queue is closed")))?;
        rx.await.map_err(|_| {
            StateError::WriterGone(std::io::Error::other("it stopped before answering"))
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<WriteJob>, StateError> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = queue.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name(WRITER_THREAD.to_owned())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A job that panics loses its answer (its caller sees WriterGone), not the
                    // thread: later writes still run.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(StateError::WriterGone)?;
        *queue = Some(tx.clone());
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("accelgate-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn update_persists_and_reopens() {
        let dir = temp_dir("reopen");
        let mut store = StateStore::open(&dir).unwrap();
        store
            .update(|s| {
                s.slice_mut("fpga0", "region0").tenant = Some(Tenant::User {
                    uid: 5,
                    name: "e".into(),
                })
            })
            .unwrap();
        store
            .update(|s| s.device_mut("nic0").num_vfs = Some(3))
            .unwrap();
        let again = StateStore::open(&dir).unwrap();
        assert_eq!(again.get(), store.get());
        assert_eq!(again.get().device("nic0").num_vfs, Some(3));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_file_is_refused_not_overwritten() {
        let dir = temp_dir("malformed");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(
            StateStore::open(&dir),
            Err(StateError::Malformed(..))
        ));
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), b"{not json");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn writer_runs_jobs_on_its_own_thread_and_survives_a_panic() {
        let writer = StateWriter::default();
        let name = writer
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some(WRITER_THREAD));
        assert!(matches!(
            writer.run(|| panic!("a failing write")).await,
            Err(StateError::WriterGone(_))
        ));
        assert_eq!(writer.run(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn failed_persist_keeps_memory_unchanged() {
        let dir = temp_dir("fail");
        let mut store = StateStore::open(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let r = store.update(|s| s.device_mut("nic0").num_vfs = Some(1));
        assert!(r.is_err());
        assert_eq!(store.get(), &PersistentState::default());
    }
}
