//! Raw hardware access through the kernel's standard interfaces (sysfs PCI, mmap of BAR
//! resource files, SR-IOV, the firmware-upload class, MTD character devices), all below one
//! configurable root so that the simulator's tree and the real `/` go through the same code.
//!
//! This is the only crate with `mmap` and ioctl `unsafe` code; the daemon, `accelctl map-test`
//! and the benchmark all use its [`SliceWindow`]. It knows nothing of policy, D-Bus or tenants.

pub mod digest;
pub mod fwupload;
pub mod mtd;
pub mod pci;
pub mod revoke;
pub mod slot;
pub mod sriov;
pub mod uevent;
pub mod window;

pub use fwupload::{FwUpload, FwUploadError};
pub use pci::{reset_function, BarInfo, PciBdf, PciError, PciFunction};
pub use revoke::{revoke_bar_mappings, RevokeError, Revoked};
pub use slot::{image_version, FirmwareStatus, Slot, SlotInfo, VERSION_HEADER};
pub use sriov::{Sriov, SriovError};
pub use uevent::{PciAction, PciUevent, Received, UeventError, UeventSocket};
pub use window::{Access, SliceWindow, Width, WindowError, MAX_COUNT};

use std::path::{Path, PathBuf};

/// The hardware root: `/` on a real host, the simulator's directory otherwise.
#[derive(Clone, Debug)]
pub struct HwRoot {
    root: PathBuf,
    simulated: bool,
}

impl HwRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HwRoot {
            root: root.into(),
            simulated: false,
        }
    }

    /// The simulator's tree (`accelgated --simulate`): where the kernel would give a device
    /// node, the simulator has a regular file (see [`mtd::FileFlash`]). Only such a root
    /// accepts one.
    pub fn simulated(root: impl Into<PathBuf>) -> Self {
        HwRoot {
            root: root.into(),
            simulated: true,
        }
    }

    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/sys/bus/pci/devices/<bdf>`; a [`PciBdf`] is always a single, safe path element.
    pub fn pci_device_dir(&self, bdf: &PciBdf) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(bdf.as_str())
    }

    /// `<root>/sys/class/firmware/<name>`. [`FwUpload::open`] validates `name` first.
    pub fn fw_upload_dir(&self, name: &str) -> PathBuf {
        self.root.join("sys/class/firmware").join(name)
    }
}

/// Reads a small sysfs attribute as text without its trailing newline.
pub fn read_attr(path: &Path) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    while text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

/// Writes a sysfs attribute the way `echo value > attr` does (O_WRONLY|O_TRUNC, no create):
/// the kernel acts on the single write, and on a regular file (simulation) nothing stale stays.
pub fn write_attr(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(value.as_bytes())
}

/// Parses `0x1234`-style hex (as in sysfs `vendor`, `device`, `class`, `resource`).
pub(crate) fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.trim().strip_prefix("0x")?;
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}
