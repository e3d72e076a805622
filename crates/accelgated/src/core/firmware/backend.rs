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
    #[error("cannot open firmware backend {name}")]
    Open {
        name: String,
        #[source]
        cause: Fault,
    },
    #[error("cannot read the firmware state")]
    Status(#[source] Fault),
    #[error("the write was cancelled")]
    Cancelled,
    #[error("the device is busy: {entry} is {status}")]
    Busy { entry: String, status: String },
    #[error("writing slot {slot} failed", slot = .slot.as_str())]
    Write {
        slot: Slot,
        #[source]
        cause: Fault,
    },
    #[error("slot {slot} does not hold the image just written", slot = .slot.as_str())]
    Verify {
        slot: Slot,
        #[source]
        cause: Fault,
    },
    #[error("switching to slot {slot} failed", slot = .slot.as_str())]
    Switch {
        slot: Slot,
        #[source]
        cause: Fault,
    },
}

/// Why a backend step failed: the kernel interface's own error, or what the device reported.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error(transparent)]
    Upload(#[from] accelgate_hw::FwUploadError),
    #[error(transparent)]
    FlashIo(#[from] accelgate_hw::mtd::FlashIoError),
    #[error("{path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no such MTD partition")]
    NoPartition,
    #[error("the device reports no firmware slots ({0})")]
    NoSlots(&'static str),
    #[error("{attr} reads {value:?}")]
    Malformed { attr: &'static str, value: String },
    #[error("the device would write slot {0:?}")]
    WrongStagingSlot(String),
    #[error("it is the active slot")]
    ActiveSlot,
    #[error("the image needs {needed} bytes, the slot holds {capacity}")]
    TooLarge { needed: u64, capacity: u64 },
    #[error("the device does not report it valid")]
    NotValid,
    #[error("read back sha256 {0}")]
    DigestMismatch(String),
    #[error("the slot header did not read back")]
    HeaderNotWritten,
    #[error("the slot holds no valid image")]
    NoValidImage,
    #[error("the device did not switch")]
    NoSwitch,
    #[error("the selector record did not read back")]
    SelectorNotWritten,
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
