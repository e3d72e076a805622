//! The kernel firmware-upload class (`sys/class/firmware/<name>`): hand an image to a driver
//! that then prepares, transfers and programs it, and report its progress.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{read_attr, write_attr, HwRoot};

/// How often the status is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(3);
/// How long after `loading`=0 an idle status may still mean "not started yet". The kernel
/// leaves idle before the write returns, so on a real root an idle status there means an
/// upload already over; the simulator reacts to the write a moment later, through inotify,
/// and on a loaded machine that moment passed 300 ms (the upload was then taken as over
/// before it began), so a simulated root gets seconds.
const START_WINDOW: Duration = Duration::from_millis(300);
const SIMULATED_START_WINDOW: Duration = Duration::from_secs(10);
/// Size of each write(2) to `data`.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FwUploadError {
    #[error("invalid firmware-upload name {0:?}")]
    InvalidName(String),
    #[error("no firmware-upload entry {0}")]
    NotFound(String),
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an upload is already in progress (status {0})")]
    Busy(String),
    #[error("the upload was cancelled")]
    Cancelled,
    #[error("the upload did not finish in time")]
    Timeout,
    #[error("the device reported an upload error: {0}")]
    Device(String),
}

/// One firmware-upload entry.
#[derive(Clone, Debug)]
pub struct FwUpload {
    name: String,
    dir: PathBuf,
    start_window: Duration,
}

impl FwUpload {
    /// `name`: no '/', not `.` or `..`; the directory must have loading, data and status.
    pub fn open(root: &HwRoot, name: &str) -> Result<Self, FwUploadError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(FwUploadError::InvalidName(name.to_string()));
        }
        let dir = root.fw_upload_dir(name);
        if !["loading", "data", "status"]
            .iter()
            .all(|file| dir.join(file).exists())
        {
            return Err(FwUploadError::NotFound(name.to_string()));
        }
        Ok(FwUpload {
            name: name.to_string(),
            dir,
            start_window: if root.is_simulated() {
                SIMULATED_START_WINDOW
            } else {
                START_WINDOW
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> Result<String, FwUploadError> {
        self.read("status")
    }

    pub fn last_error(&self) -> Result<String, FwUploadError> {
        self.read("error")
    }

    /// The kernel's order (drivers/base/firmware_loader/sysfs_upload.c): busy unless status is
    /// idle; write "1" to loading (status stays idle); write the image to data (O_WRONLY|O_TRUNC,
    /// in chunks); write "0" to loading, which starts the upload (status receiving ->
    /// preparing -> transferring -> programming -> idle; the kernel answers EBUSY if another
    /// upload runs). Poll until idle again, calling progress(0..=1) from remaining_size while
    /// transferring (1.0 at the end); then error "" = Ok, else Err(Device(text)). `error` can
    /// only be read while idle (EBUSY otherwise). If `cancel` is set before status reaches
    /// "programming": write "1" to cancel (ENODEV when the upload is already over), wait for
    /// idle, Err(Cancelled) if error ends in ":user-abort" (Ok if the device completed
    /// anyway). After "programming" a cancel request is ignored (point of no return).
    /// Overall timeout -> Err(Timeout).
    pub fn upload(
        &self,
        image: &[u8],
        progress: &mut dyn FnMut(f64),
        cancel: &AtomicBool,
        timeout: Duration,
    ) -> Result<(), FwUploadError> {
        let deadline = Instant::now() + timeout;
        if image.is_empty() {
            // The kernel starts no upload for zero bytes and leaves the last error in place.
            return Err(FwUploadError::Device("the image is empty".into()));
        }
        let status = self.status()?;
        if status != "idle" {
            return Err(FwUploadError::Busy(status));
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(FwUploadError::Cancelled);
        }
        self.write("loading", "1")?;
        if let Err(err) = self.write_data(image) {
            // Abort the half-written load so the next one starts clean.
            let _ = self.write("loading", "-1");
            return Err(err);
        }
        if let Err(err) = self.write("loading", "0") {
            let _ = self.write("loading", "-1");
            return Err(match err {
                FwUploadError::Io { source, .. }
                    if source.raw_os_error() == Some(nix::libc::EBUSY) =>
                {
                    FwUploadError::Busy("another upload is running".into())
                }
                other => other,
            });
        }
        // The kernel leaves idle inside the write above; a file-backed simulation does so a
        // moment later. Idle before it was seen to leave means finished only once the start
        // window is over.
        let start_window = Instant::now() + self.start_window;
        let mut started = false;

        let total = image.len() as f64;
        let mut programming = false;
        loop {
            let status = self.status()?;
            match status.as_str() {
                "idle" if started || Instant::now() >= start_window => break,
                "idle" => {}
                "programming" => programming = true,
                "transferring" => {
                    if let Ok(remaining) = self.read("remaining_size") {
                        if let Ok(remaining) = remaining.trim().parse::<u64>() {
                            progress((1.0 - remaining as f64 / total).clamp(0.0, 1.0));
                        }
                    }
                }
                _ => {}
            }
            started |= status != "idle";
            if started && !programming && cancel.load(Ordering::Relaxed) {
                match self.write("cancel", "1") {
                    Ok(()) => {}
                    // ENODEV: idle already, the upload is over; its error tells how it ended.
                    Err(FwUploadError::Io { source, .. })
                        if source.raw_os_error() == Some(nix::libc::ENODEV) => {}
                    Err(err) => return Err(err),
                }
                self.wait_status(deadline, |s| s == "idle")?;
                // The device may have passed the point of no return just before the request
                // arrived; then the upload completed and saying "cancelled" would be false.
                let error = self.last_error()?;
                return if error.is_empty() {
                    progress(1.0);
                    Ok(())
                } else if error.ends_with(":user-abort") {
                    Err(FwUploadError::Cancelled)
                } else {
                    Err(FwUploadError::Device(error))
                };
            }
            if Instant::now() >= deadline {
                if !started {
                    // Nothing took the load: drop it so the entry does not keep the data.
                    let _ = self.write("loading", "-1");
                } else if !programming {
                    let _ = self.write("cancel", "1");
                }
                return Err(FwUploadError::Timeout);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let error = self.last_error()?;
        if error.is_empty() {
            progress(1.0);
            Ok(())
        } else {
            Err(FwUploadError::Device(error))
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn read(&self, file: &str) -> Result<String, FwUploadError> {
        let path = self.path(file);
        read_attr(&path).map_err(|source| FwUploadError::Io { path, source })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), FwUploadError> {
        let path = self.path(file);
        write_attr(&path, value).map_err(|source| FwUploadError::Io { path, source })
    }

    fn write_data(&self, image: &[u8]) -> Result<(), FwUploadError> {
        let path = self.path("data");
        let io_err = |source| FwUploadError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err)?;
        for chunk in image.chunks(CHUNK) {
            file.write_all(chunk).map_err(io_err)?;
        }
        Ok(())
    }

    fn wait_status(
        &self,
        deadline: Instant,
        done: impl Fn(&str) -> bool,
    ) -> Result<(), FwUploadError> {
        loop {
            if done(&self.status()?) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(FwUploadError::Timeout);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
