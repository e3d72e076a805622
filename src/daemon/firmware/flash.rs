//! The flash procedure, the same for every backend: record the attempt, write the inactive
//! slot, read it back, then switch atomically (the point of no return), and record the end.
//! Also what start-up does with a record a dead daemon left behind.

use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::{BackendError, FirmwareBackend};
use super::record::{FirmwareRecords, FlashRecord, LastResult, Outcome, Phase};
use super::slot::image_version;

/// Share of the progress bar the slot write takes; read-back and switch take the rest.
const WRITE_SHARE: f64 = 0.9;
const VERIFIED: f64 = 0.95;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Failed(String),
}

/// An image that passed verification, and who asked for it.
pub struct FlashRequest<'a> {
    pub device: &'a str,
    pub image: &'a [u8],
    pub sha256: &'a str,
    pub started_by_uid: u32,
}

/// Runs a flash to the end. Blocking. `progress` gets 0..=1; `cancel` is honoured until the
/// switch. The returned message says what happened, including a cancel that came too late.
pub fn run_flash(
    backend: &dyn FirmwareBackend,
    records: &FirmwareRecords,
    request: &FlashRequest<'_>,
    progress: &mut dyn FnMut(f64),
    cancel: &AtomicBool,
) -> Result<String, FlashError> {
    let FlashRequest { device, sha256, .. } = *request;
    let status = backend
        .status()
        .map_err(|e| FlashError::Failed(e.to_string()))?;
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
    let end = |outcome: Outcome, message: String| {
        let result = LastResult {
            outcome,
            message: message.clone(),
            sha256: sha256.to_owned(),
        };
        if let Err(e) = records.finish(device, &result) {
            tracing::error!("{device}: {}", crate::daemon::service::error_chain(&e));
        }
        message
    };
    if cancel_is(cancel) {
        return Err(FlashError::Cancelled(format!(
            "cancelled before anything was written; {kept}"
        )));
    }
    records.set_in_progress(device, &record).map_err(|e| {
        FlashError::Failed(format!(
            "cannot record the flash, nothing was written: {}",
            crate::daemon::service::error_chain(&e)
        ))
    })?;

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
            let m = end(
                Outcome::Cancelled,
                format!("cancelled while writing slot {}; {kept}", target.as_str()),
            );
            return Err(FlashError::Cancelled(m));
        }
        Err(BackendError::Busy(reason)) => {
            let m = end(Outcome::Failed, format!("device busy ({reason}); {kept}"));
            return Err(FlashError::Busy(m));
        }
        Err(e) => {
            let m = end(Outcome::Failed, format!("{e}; {kept}"));
            return Err(FlashError::Failed(m));
        }
    }
    if cancel_is(cancel) {
        let m = end(
            Outcome::Cancelled,
            format!(
                "cancelled after slot {} was written and verified, before the switch; {kept}",
                target.as_str()
            ),
        );
        return Err(FlashError::Cancelled(m));
    }

    // Point of no return.
    record.phase = Phase::Switching;
    if let Err(e) = records.set_in_progress(device, &record) {
        let m = end(
            Outcome::Failed,
            format!("cannot record the switch ({e}); {kept}"),
        );
        return Err(FlashError::Failed(m));
    }
    if let Err(e) = backend.switch_to(target) {
        let active = backend
            .status()
            .map(|s| format!("slot {} is active", s.active.as_str()))
            .unwrap_or_else(|_| "the active slot is unknown".into());
        let m = end(Outcome::Failed, format!("{e}; {active}"));
        return Err(FlashError::Failed(m));
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
    Ok(end(Outcome::Succeeded, message))
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
        tracing::error!("{device}: {}", crate::daemon::service::error_chain(&e));
    }
    Some(result)
}
