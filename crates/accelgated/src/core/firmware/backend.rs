//! The backend trait every firmware store implements, and choosing a backend from policy.
//!
//! The flash procedure (`flash.rs`) only talks to this trait, so the A/B rules — write the
//! inactive slot, read it back, then switch atomically — are the same for every backend.

use std::sync::atomic::AtomicBool;

use accelgate_policy::{FirmwarePolicy, LoaderBackend};

use accelgate_hw::slot::{FirmwareStatus, Slot};
use accelgate_hw::HwRoot;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open firmware backend {name}: {reason}")]
    Open { name: String, reason: String },
    #[error("cannot read the firmware state: {0}")]
    Status(String),
    #[error("the write was cancelled")]
    Cancelled,
    #[error("the device is busy: {0}")]
    Busy(String),
    #[error("writing slot {slot} failed: {reason}", slot = .slot.as_str())]
    Write { slot: Slot, reason: String },
    #[error("slot {slot} does not hold the image just written: {reason}", slot = .slot.as_str())]
    Verify { slot: Slot, reason: String },
    #[error("switching to slot {slot} failed: {reason}", slot = .slot.as_str())]
    Switch { slot: Slot, reason: String },
}

/// A two-slot firmware store. Blocking: call from a blocking thread.
pub trait FirmwareBackend: Send + Sync {
    /// Which slot boots and what both slots hold.
    fn status(&self) -> Result<FirmwareStatus, BackendError>;

    /// Writes `image` into `slot` (never the active one: callers pass the inactive slot),
    /// reporting progress 0..=1 and giving up with `Cancelled` when `cancel` is set.
    fn write_slot(
        &self,
        slot: Slot,
        image: &[u8],
        progress: &mut dyn FnMut(f64),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError>;

    /// Reads `slot` back and checks that it holds exactly the image with this sha256.
    fn verify_slot(&self, slot: Slot, image: &[u8], sha256: &str) -> Result<(), BackendError>;

    /// Makes `slot` the one that boots, in one atomic step: after a crash at any moment the
    /// device boots either the old or the new slot.
    fn switch_to(&self, slot: Slot) -> Result<(), BackendError>;
}

/// Opens the backend a device's firmware policy names, under the hardware root.
pub fn open_backend(
    hw: &HwRoot,
    policy: &FirmwarePolicy,
) -> Result<Box<dyn FirmwareBackend>, BackendError> {
    match policy.backend {
        LoaderBackend::FwUpload => Ok(Box::new(super::fw_upload::FwUploadSlots::open(
            hw,
            &policy.name,
        )?)),
        LoaderBackend::Mtd => Ok(Box::new(super::mtd::MtdSlots::open(hw, &policy.name)?)),
    }
}
