//! Firmware backend for devices that do A/B themselves behind the firmware-upload class.
//!
//! The image goes through `sys/class/firmware/<name>` like any upload; the device writes it
//! into its inactive slot. Slots are reported and selected through vendor attributes of the
//! parent device, reached by the class device's `device` link (as real drivers expose e.g.
//! their security/update attributes):
//!
//! ```text
//! sys/class/firmware/<name>/device/fw_slots/
//!     active_slot          "a" | "b"   slot that boots (read-only)
//!     activate             write "a" | "b": switch the boot slot (atomic in the device;
//!                          ignored unless that slot is valid)
//!     slot_<s>_state       "empty" | "writing" | "valid" | "invalid"
//!     slot_<s>_version     version of a valid slot's image
//!     slot_<s>_sha256      sha256 the device computed reading the slot back
//!     staging_slot         slot the next upload writes (the inactive one)
//! ```

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::backend::{BackendError, Fault, FirmwareBackend};
use accelgate_hw::slot::{FirmwareStatus, Slot, SlotInfo};
use accelgate_hw::{read_attr, write_attr, FwUpload, FwUploadError, HwRoot};

/// Directory of the slot attributes under the parent device.
pub const SLOTS_DIR: &str = "fw_slots";
/// Longest a firmware upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest the device may take to switch slots.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);

pub struct FwUploadSlots {
    upload: FwUpload,
    slots_dir: PathBuf,
}

impl FwUploadSlots {
    pub fn open(hw: &HwRoot, name: &str) -> Result<Self, BackendError> {
        let open_err = |cause: Fault| BackendError::Open {
            name: name.to_owned(),
            cause,
        };
        let upload = FwUpload::open(hw, name).map_err(|e| open_err(e.into()))?;
        let slots_dir = hw.fw_upload_dir(name).join("device").join(SLOTS_DIR);
        if !slots_dir.join("active_slot").exists() {
            return Err(open_err(Fault::NoSlots("fw_slots/active_slot")));
        }
        Ok(FwUploadSlots { upload, slots_dir })
    }

    fn attr(&self, file: &str) -> Result<String, BackendError> {
        let path = self.slots_dir.join(file);
        read_attr(&path).map_err(|source| BackendError::Status(Fault::Io { path, source }))
    }

    fn slot_info(&self, slot: Slot) -> Result<SlotInfo, BackendError> {
        let s = slot.as_str();
        let valid = self.attr(&format!("slot_{s}_state"))? == "valid";
        Ok(SlotInfo {
            valid,
            version: if valid {
                self.attr(&format!("slot_{s}_version"))?
            } else {
                String::new()
            },
            sha256: if valid {
                self.attr(&format!("slot_{s}_sha256"))?
            } else {
                String::new()
            },
        })
    }
}

impl FirmwareBackend for FwUploadSlots {
    fn status(&self) -> Result<FirmwareStatus, BackendError> {
        let active = self.attr("active_slot")?;
        let active = Slot::parse(&active).ok_or_else(|| {
            BackendError::Status(Fault::Malformed {
                attr: "active_slot",
                value: active.clone(),
            })
        })?;
        Ok(FirmwareStatus {
            active,
            a: self.slot_info(Slot::A)?,
            b: self.slot_info(Slot::B)?,
        })
    }

    fn write_slot(
        &self,
        slot: Slot,
        image: &[u8],
        progress: &mut dyn FnMut(f64),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        // The device picks the slot itself; refuse if it would not be the one we mean.
        let staging = self.attr("staging_slot")?;
        if Slot::parse(&staging) != Some(slot) {
            return Err(BackendError::Write {
                slot,
                cause: Fault::WrongStagingSlot(staging),
            });
        }
        match self.upload.upload(image, progress, cancel, UPLOAD_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(FwUploadError::Cancelled) => Err(BackendError::Cancelled),
            Err(FwUploadError::Busy(status)) => Err(BackendError::Busy {
                entry: self.upload.name().to_owned(),
                status,
            }),
            Err(e) => Err(BackendError::Write {
                slot,
                cause: e.into(),
            }),
        }
    }

    fn verify_slot(&self, slot: Slot, _image: &[u8], sha256: &str) -> Result<(), BackendError> {
        // The device reads the slot back itself and reports its digest; the image bytes never
        // come back over this interface.
        let info = self.slot_info(slot)?;
        if !info.valid {
            return Err(BackendError::Verify {
                slot,
                cause: Fault::NotValid,
            });
        }
        if info.sha256 != sha256 {
            return Err(BackendError::Verify {
                slot,
                cause: Fault::DigestMismatch(info.sha256),
            });
        }
        Ok(())
    }

    fn switch_to(&self, slot: Slot) -> Result<(), BackendError> {
        // The device would ignore the request; say why instead of waiting for a timeout.
        if !self.slot_info(slot)?.valid {
            return Err(BackendError::Switch {
                slot,
                cause: Fault::NoValidImage,
            });
        }
        let path = self.slots_dir.join("activate");
        write_attr(&path, slot.as_str()).map_err(|source| BackendError::Switch {
            slot,
            cause: Fault::Io {
                path: path.clone(),
                source,
            },
        })?;
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            if Slot::parse(&self.attr("active_slot")?) == Some(slot) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Switch {
                    slot,
                    cause: Fault::NoSwitch,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}
