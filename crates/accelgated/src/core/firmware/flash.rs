//! The flash procedure, the same for every backend: record the attempt, write the inactive
//! slot, read it back, then switch atomically (the point of no return), and record the end.
//! Also what start-up does with a record a dead daemon left behind.

use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::{BackendError, FirmwareBackend};
use super::record::{FirmwareRecords, FlashRecord, LastResult, Outcome, Phase, RecordError};
use accelgate_hw::slot::image_version;

/// Share of the progress bar the slot write takes; read-back and switch take the rest.
const WRITE_SHARE: f64 = 0.9;
const VERIFIED: f64 = 0.95;

/// How a flash ended without the new firmware active. Every variant says what the device
/// boots now (`kept`/`active`) and keeps the failure it came from as its source.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The backend could not be opened.
    #[error("nothing was written")]
    Open(#[source] BackendError),
    /// The device's firmware state could not be read.
    #[error("nothing was written")]
    Status(#[source] BackendError),
    /// The flash could not be recorded before writing (so a crash could not be recovered).
    #[error("cannot record the flash, nothing was written")]
    Record(#[source] RecordError),
    #[error("cancelled {when}; {kept}")]
    Cancelled { when: String, kept: String },
    /// Writing or reading back the inactive slot failed.
    #[error("{kept}")]
    Slot {
        kept: String,
        #[source]
        source: BackendError,
    },
    /// The point of no return could not be recorded; the switch was not made.
    #[error("cannot record the switch; {kept}")]
    RecordSwitch {
        kept: String,
        #[source]
        source: RecordError,
    },
    /// The switch itself failed.
    #[error("{active}")]
    Switch {
        active: String,
        #[source]
        source: BackendError,
    },
}

impl FlashError {
    pub fn kind(&self) -> accelgate_proto::ErrorKind {
        use accelgate_proto::ErrorKind;
        match self {
            FlashError::Cancelled { .. } => ErrorKind::Cancelled,
            FlashError::Slot {
                source: BackendError::Busy { .. },
                ..
            } => ErrorKind::Busy,
            _ => ErrorKind::Failed,
        }
    }
}

/// An image that passed verification, and who asked for it.
pub struct FlashRequest<'a> {
    pub device: &'a str,
    pub image: &'a [u8],
    pub sha256: &'a str,
    pub started_by_uid: u32,
}

/// Runs a flash to the end. Blocking. The caller holds the device's busy lock (one operation
/// per device). `progress` gets 0..=1; `cancel` is honoured until the switch. The returned message says what happened, including a cancel that came too late.
pub fn run_flash(
    backend: &dyn FirmwareBackend,
    records: &FirmwareRecords,
    request: &FlashRequest<'_>,
    progress: &mut dyn FnMut(f64),
    cancel: &AtomicBool,
) -> Result<String, FlashError> {
    let FlashRequest { device, sha256, .. } = *request;
    let status = backend.status().map_err(FlashError::Status)?;
    let target = status.active.other();
    let previous_version = status.active_version();
    let mut record = FlashRecord {
        sha256: sha256.to_owned(),
        version: image_version(request.image),
        target,
        previous: status.active,
        previous_version: previous_version.clone(),
        phase: Phase::Writing,
        started_by_uid: request.started_by_uid,
    };
    let kept = format!(
        "firmware {previous_version} in slot {} stays active",
        status.active.as_str()
    );
    // The last result records what the caller is told, causes included.
    let end = |outcome: Outcome, error: FlashError| {
        let result = LastResult {
            outcome,
            message: crate::core::error_chain(&error),
            sha256: sha256.to_owned(),
        };
        if let Err(e) = records.finish(device, &result) {
            tracing::error!("{device}: {}", crate::core::error_chain(&e));
        }
        error
    };
    if cancel_is(cancel) {
        return Err(FlashError::Cancelled {
            when: "before anything was written".into(),
            kept,
        });
    }
    records
        .set_in_progress(device, &record)
        .map_err(FlashError::Record)?;

    let written = backend
        .write_slot(
            target,
            request.image,
            &mut |p| progress(p * WRITE_SHARE),
            cancel,
        )
        .and_then(|()| backend.verify_slot(target, request.image, sha256));
    match written {
        Ok(()) => progress(VERIFIED),
        Err(BackendError::Cancelled) => {
            let when = format!("while writing slot {}", target.as_str());
            return Err(end(
                Outcome::Cancelled,
                FlashError::Cancelled { when, kept },
            ));
        }
        Err(source) => return Err(end(Outcome::Failed, FlashError::Slot { kept, source })),
    }
    if cancel_is(cancel) {
        let when = format!(
            "after slot {} was written and verified, before the switch",
            target.as_str()
        );
        return Err(end(
            Outcome::Cancelled,
            FlashError::Cancelled { when, kept },
        ));
    }

    // Point of no return.
    record.phase = Phase::Switching;
    if let Err(source) = records.set_in_progress(device, &record) {
        return Err(end(
            Outcome::Failed,
            FlashError::RecordSwitch { kept, source },
        ));
    }
    if let Err(source) = backend.switch_to(target) {
        let active = backend
            .status()
            .map(|s| format!("slot {} is active", s.active.as_str()))
            .unwrap_or_else(|_| "the active slot is unknown".into());
        return Err(end(Outcome::Failed, FlashError::Switch { active, source }));
    }
    progress(1.0);
    let mut message = format!(
        "firmware {} ({sha256}) is active in slot {}; previous firmware {previous_version} kept in slot {}",
        record.version,
        target.as_str(),
        status.active.as_str()
    );
    if cancel_is(cancel) {
        message.push_str(
            "; the cancel request came after the point of no return (the slot switch) and was not honoured",
        );
    }
    let result = LastResult {
        outcome: Outcome::Succeeded,
        message: message.clone(),
        sha256: sha256.to_owned(),
    };
    if let Err(e) = records.finish(device, &result) {
        tracing::error!("{device}: {}", crate::core::error_chain(&e));
    }
    Ok(message)
}

fn cancel_is(cancel: &AtomicBool) -> bool {
    cancel.load(Ordering::SeqCst)
}

/// At start-up: turns a flash record left by a dead daemon into the last result, from what
/// the device reports now. Returns that result, if there was a record.
pub fn recover_interrupted(
    backend: Option<&dyn FirmwareBackend>,
    records: &FirmwareRecords,
    device: &str,
) -> Option<LastResult> {
    let record = records.in_progress(device)?;
    let status = backend.map(|b| b.status());
    let message = match status {
        Some(Ok(st))
            if st.active == record.target
                && st.slot(record.target).valid
                && st.slot(record.target).sha256 == record.sha256 =>
        {
            let result = LastResult {
                outcome: Outcome::Succeeded,
                message: format!(
                    "the flash of firmware {} completed, but the daemon stopped before it could report it; slot {} is active",
                    record.version,
                    record.target.as_str()
                ),
                sha256: record.sha256.clone(),
            };
            return finish_recovery(records, device, result);
        }
        Some(Ok(st)) => format!(
            "the flash of firmware {} ({}) to slot {} was interrupted while {}; firmware {} in slot {} is active",
            record.version,
            record.sha256,
            record.target.as_str(),
            match record.phase {
                Phase::Writing => "writing",
                Phase::Switching => "switching slots",
            },
            st.active_version(),
            st.active.as_str()
        ),
        Some(Err(e)) => format!(
            "the flash of firmware {} was interrupted; the device state cannot be read: {e}",
            record.version
        ),
        None => format!(
            "the flash of firmware {} was interrupted; the device has no firmware backend now",
            record.version
        ),
    };
    let result = LastResult {
        outcome: Outcome::Interrupted,
        message,
        sha256: record.sha256.clone(),
    };
    finish_recovery(records, device, result)
}

fn finish_recovery(
    records: &FirmwareRecords,
    device: &str,
    result: LastResult,
) -> Option<LastResult> {
    if let Err(e) = records.finish(device, &result) {
        tracing::error!("{device}: {}", crate::core::error_chain(&e));
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use accelgate_hw::digest::sha256_hex;
    use accelgate_hw::slot::{FirmwareStatus, Slot, SlotInfo};
    use std::sync::Mutex;

    /// A backend that logs calls, can fail verification, and can raise `cancel` when a given
    /// step starts (to place a cancel request exactly).
    struct Fake {
        status: Mutex<FirmwareStatus>,
        log: Mutex<Vec<String>>,
        records: FirmwareRecords,
        bad_readback: bool,
        cancel_on: Option<&'static str>,
        cancel: std::sync::Arc<AtomicBool>,
        /// Unique per test: the process-wide one-flash-per-device guard spans tests.
        device: String,
    }

    impl Fake {
        fn new(records: &FirmwareRecords) -> Fake {
            let device = records.dir_name_for_tests();
            let valid = |v: &str| SlotInfo {
                valid: true,
                version: v.into(),
                sha256: "old".into(),
            };
            Fake {
                status: Mutex::new(FirmwareStatus {
                    active: Slot::A,
                    a: valid("1.0"),
                    b: SlotInfo::default(),
                }),
                log: Mutex::default(),
                records: records.clone(),
                bad_readback: false,
                cancel_on: None,
                cancel: Default::default(),
                device,
            }
        }

        fn step(&self, name: &str) {
            // Every step that touches the device must come after the in-progress record.
            let recorded = self
                .records
                .in_progress(&self.device)
                .map(|r| format!("{:?}", r.phase))
                .unwrap_or_else(|| "none".into());
            self.log.lock().unwrap().push(format!("{name}[{recorded}]"));
            if self.cancel_on == Some(name) {
                self.cancel.store(true, Ordering::SeqCst);
            }
        }
    }

    impl FirmwareBackend for Fake {
        fn status(&self) -> Result<FirmwareStatus, BackendError> {
            Ok(self.status.lock().unwrap().clone())
        }
        fn write_slot(
            &self,
            slot: Slot,
            image: &[u8],
            progress: &mut dyn FnMut(f64),
            cancel: &AtomicBool,
        ) -> Result<(), BackendError> {
            self.step("write");
            if cancel.load(Ordering::SeqCst) {
                return Err(BackendError::Cancelled);
            }
            progress(0.5);
            let mut st = self.status.lock().unwrap();
            let info = SlotInfo {
                valid: true,
                version: image_version(image),
                sha256: sha256_hex(image),
            };
            match slot {
                Slot::A => st.a = info,
                Slot::B => st.b = info,
            }
            Ok(())
        }
        fn verify_slot(&self, slot: Slot, _: &[u8], _: &str) -> Result<(), BackendError> {
            self.step("verify");
            if self.bad_readback {
                return Err(BackendError::Verify {
                    slot,
                    cause: super::super::backend::Fault::DigestMismatch("mismatch".into()),
                });
            }
            Ok(())
        }
        fn switch_to(&self, slot: Slot) -> Result<(), BackendError> {
            self.step("switch");
            self.status.lock().unwrap().active = slot;
            Ok(())
        }
    }

    fn temp_records(tag: &str) -> (std::path::PathBuf, FirmwareRecords) {
        let dir =
            std::env::temp_dir().join(format!("accelgate-flash-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let records = FirmwareRecords::new(&dir);
        (dir, records)
    }

    const IMAGE: &[u8] = b"ACCELGATE-FW 2.0\nnew";

    fn run(fake: &Fake, records: &FirmwareRecords) -> (Result<String, FlashError>, Vec<f64>) {
        let sha = sha256_hex(IMAGE);
        let request = FlashRequest {
            device: &fake.device,
            image: IMAGE,
            sha256: &sha,
            started_by_uid: 0,
        };
        let mut seen = Vec::new();
        let r = run_flash(fake, records, &request, &mut |p| seen.push(p), &fake.cancel);
        (r, seen)
    }

    #[test]
    fn writes_inactive_then_verifies_then_switches_after_recording_each_phase() {
        let (dir, records) = temp_records("ok");
        let fake = Fake::new(&records);
        let (r, seen) = run(&fake, &records);
        assert!(r.unwrap().contains("active in slot b"));
        assert_eq!(
            *fake.log.lock().unwrap(),
            ["write[Writing]", "verify[Writing]", "switch[Switching]"]
        );
        assert_eq!(seen.last(), Some(&1.0));
        assert!(records.in_progress(&fake.device).is_none());
        assert_eq!(
            records.last_result(&fake.device).unwrap().outcome,
            Outcome::Succeeded
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_readback_and_cancel_never_switch() {
        let (dir, records) = temp_records("fail");
        let mut fake = Fake::new(&records);
        fake.bad_readback = true;
        assert!(matches!(
            run(&fake, &records).0,
            Err(FlashError::Slot { .. })
        ));
        assert_eq!(fake.status().unwrap().active, Slot::A);
        let last = records.last_result(&fake.device).unwrap();
        assert_eq!(last.outcome, Outcome::Failed);
        assert!(
            last.message.contains("firmware 1.0 in slot a stays active"),
            "{last:?}"
        );

        for step in ["write", "verify"] {
            let mut fake = Fake::new(&records);
            fake.cancel_on = Some(step);
            let r = run(&fake, &records).0;
            assert!(
                matches!(r, Err(FlashError::Cancelled { .. })),
                "{step}: {r:?}"
            );
            assert_eq!(fake.status().unwrap().active, Slot::A);
            assert!(!fake
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with("switch")));
            assert_eq!(
                records.last_result(&fake.device).unwrap().outcome,
                Outcome::Cancelled
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cancel_after_the_point_of_no_return_is_reported_not_honoured() {
        let (dir, records) = temp_records("late");
        let mut fake = Fake::new(&records);
        fake.cancel_on = Some("switch");
        let message = run(&fake, &records).0.unwrap();
        assert!(
            message.contains("after the point of no return"),
            "{message}"
        );
        assert_eq!(fake.status().unwrap().active, Slot::B);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn recovery_reports_what_the_device_boots() {
        let (dir, records) = temp_records("recover");
        let fake = Fake::new(&records);
        let record = FlashRecord {
            sha256: sha256_hex(IMAGE),
            version: "2.0".into(),
            target: Slot::B,
            previous: Slot::A,
            previous_version: "1.0".into(),
            phase: Phase::Writing,
            started_by_uid: 0,
        };
        assert!(recover_interrupted(Some(&fake), &records, &fake.device).is_none());
        records.set_in_progress(&fake.device, &record).unwrap();
        let r = recover_interrupted(Some(&fake), &records, &fake.device).unwrap();
        assert_eq!(r.outcome, Outcome::Interrupted);
        assert!(
            r.message.contains("firmware 1.0 in slot a is active"),
            "{r:?}"
        );
        assert!(records.in_progress(&fake.device).is_none());

        // Killed after the switch: the device boots the new image.
        fake.write_slot(Slot::B, IMAGE, &mut |_| {}, &AtomicBool::new(false))
            .unwrap();
        fake.switch_to(Slot::B).unwrap();
        records.set_in_progress(&fake.device, &record).unwrap();
        let r = recover_interrupted(Some(&fake), &records, &fake.device).unwrap();
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
