//! Firmware life cycle: verifying an image, and writing it to a two-slot (A/B) firmware store
//! so that a flash interrupted at any point leaves the previous firmware bootable.
//!
//! - `verify`: minisign signature of the image against the device's keys from policy;
//! - the A/B model and image versions (`Slot`, `FirmwareStatus`) live in `accelgate_hw::slot`;
//! - `backend`: the trait every store implements, `fw_upload` and `mtd` its implementations;
//! - `flash`: the procedure (write inactive, read back, switch) and crash recovery;
//! - `record`: the flash-in-progress record and the last result in the state directory.

pub mod backend;
pub mod flash;
pub mod fw_upload;
pub mod mtd;
pub mod record;
pub mod rollback;
pub mod verify;

#[cfg(test)]
mod sim_tests;

pub use accelgate_hw::slot::{image_version, FirmwareStatus, Slot, SlotInfo};
pub use backend::{open_backend, BackendError, Fault, FirmwareBackend};
pub use flash::{recover_interrupted, run_flash, FlashError, FlashRequest};
pub use record::{FirmwareRecords, LastResult, Outcome};
pub use verify::{verify_image, SignatureCheck, Verified, VerifyError};
