//! Admin role policy: which devices and slices exist, and which roles may do what to them.
#![forbid(unsafe_code)]
//!
//! Loaded from `/etc/accelgate/policy.toml` plus `/etc/accelgate/policy.d/*.toml` (name order),
//! or from one file. Validation is strict: every error names the file and line. The daemon only
//! ever swaps a whole, validated `RolePolicy` in; a bad file leaves the old one in force.

mod accounts;
mod decide;
mod load;
mod parse;
mod raw;
#[cfg(test)]
mod tests;
pub mod version;

pub use accounts::{Accounts, StaticAccounts, SystemAccounts};
pub use decide::RoleDecision;
pub use parse::PolicyError;

use std::collections::BTreeMap;
use std::path::PathBuf;

use accelgate_proto::operation::Operation;

/// The default image size limit for `Program`/`Configure`/`Flash` when a device sets none.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 64 * 1024 * 1024;

/// A validated policy, as loaded from one or more files.
#[derive(Debug, Clone, PartialEq)]
pub struct RolePolicy {
    pub devices: Vec<DevicePolicy>,
    pub roles: Vec<Role>,
    /// Hex sha256 over the names and bytes of the files it was loaded from, in load order.
    pub revision: String,
    /// The files it was loaded from, in load order.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DevicePolicy {
    /// `[A-Za-z0-9_]+`, unique.
    pub id: String,
    /// PCI address `dddd:bb:dd.f` of the physical function, unique.
    pub pci: String,
    /// Free-form class shown to users: `fpga`, `gpu`, `nic`, `ai`, ...
    pub kind: String,
    /// Largest image accepted by Program, Configure and Flash on this device, in bytes.
    pub max_image_size: u64,
    pub firmware: Option<FirmwarePolicy>,
    /// Loader of whole-device personality images (`Configure`).
    pub personality: Option<LoaderSpec>,
    pub slices: Vec<SlicePolicy>,
    pub vfs: Option<VfPolicy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FirmwarePolicy {
    pub backend: LoaderBackend,
    /// Name of the backend's device, e.g. the firmware-upload class entry.
    pub name: String,
    /// When true, Flash is refused for everyone until the policy changes.
    pub locked: bool,
    /// minisign public keys (base64, as in a `.pub` file's second line).
    pub keys: Vec<String>,
    /// Accept images without a signature. Off unless the admin says so.
    pub allow_unsigned: bool,
    /// The lowest firmware version that may be flashed, force or not (anti-rollback floor).
    pub min_version: Option<String>,
    /// Accept an image older than the active firmware without `force`. Off by default: a
    /// downgrade needs an admin's `force`.
    pub allow_downgrade: bool,
}

/// How an image reaches the device.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderSpec {
    pub backend: LoaderBackend,
    /// Name of the backend's device: `sys/class/firmware/<name>` for `fw-upload`,
    /// `/dev/<name>` for `mtd`.
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoaderBackend {
    /// The kernel firmware-upload class.
    FwUpload,
    /// An MTD character device.
    Mtd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceKind {
    /// A programmable region (e.g. an FPGA partial-reconfiguration region) with a register
    /// window inside a shared BAR.
    Region,
    /// A plain register window inside a shared BAR.
    Window,
    /// An SR-IOV virtual function: a whole, hardware-isolated resource.
    Vf,
}

impl SliceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SliceKind::Region => "region",
            SliceKind::Window => "window",
            SliceKind::Vf => "vf",
        }
    }
}

/// A slice declared in policy (`[[device.slice]]`). VF slices are not declared one by one:
/// they come from [`VfPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct SlicePolicy {
    pub id: String,
    /// `Region` or `Window`.
    pub kind: SliceKind,
    pub bar: u8,
    /// Start of the window in the BAR, in bytes.
    pub offset: u64,
    /// Size of the window, in bytes.
    pub size: u64,
    /// Writable ranges `[start, end)` relative to the window, sorted, non-overlapping.
    pub writable: Vec<(u64, u64)>,
    /// Loader of application images; only regions have one.
    pub loader: Option<LoaderSpec>,
}

/// `[device.vfs]`: VFs become slices `vf0..vf{max-1}`; each one's BAR can be mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct VfPolicy {
    pub max: u32,
    /// Which BAR of the VF is the slice (default 0).
    pub bar: u8,
    /// Writable ranges in the VF BAR; `None` means the whole BAR.
    pub writable: Option<Vec<(u64, u64)>>,
    /// Bind `pci-pf-stub` to the PF when it has no driver: the kernel configures SR-IOV only
    /// through a bound driver.
    pub pf_stub: bool,
    /// A kernel driver that claims a VF's BAR when bound (e.g. `igbvf` for igb VFs). Binding it
    /// for a moment is how `Release` revokes a former tenant's mapping of the VF (the kernel
    /// zaps every user mapping of a range a driver claims); `None` keeps the slice from other
    /// tenants until its VFs are recreated. See docs/security.md, Revocation.
    pub revoke_driver: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every slice of the devices the role covers.
    All,
    /// Only slices assigned to the caller, by uid or by one of its groups.
    Assigned,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub id: String,
    /// Members by uid (names are resolved when the policy is loaded).
    pub users: Vec<u32>,
    /// Members by gid (names are resolved when the policy is loaded).
    pub groups: Vec<u32>,
    pub operations: Vec<Operation>,
    pub scope: Scope,
    /// Devices the role covers; `None` means all.
    pub devices: Option<Vec<String>>,
    /// Capabilities the caller must hold in its effective set for an operation.
    pub caller_caps: BTreeMap<Operation, Vec<caps::Capability>>,
}

impl RolePolicy {
    pub fn device(&self, id: &str) -> Option<&DevicePolicy> {
        self.devices.iter().find(|d| d.id == id)
    }
}

impl DevicePolicy {
    pub fn slice(&self, id: &str) -> Option<&SlicePolicy> {
        self.slices.iter().find(|s| s.id == id)
    }

    /// Every slice id of the device: declared slices in file order, then `vf0..vf{max-1}`.
    /// (Which VFs exist right now is up to the hardware; this is what the policy allows.)
    pub fn slice_ids(&self) -> Vec<String> {
        let vf_count = self.vfs.as_ref().map_or(0, |v| v.max);
        self.slices
            .iter()
            .map(|s| s.id.clone())
            .chain((0..vf_count).map(accelgate_proto::names::vf_slice_id))
            .collect()
    }
}

impl VfPolicy {
    /// The VF index that slice `id` stands for, if it is one of `vf0..vf{max-1}` exactly as
    /// [`accelgate_proto::names::vf_slice_id`] spells it (so `vf01` is not `vf1`).
    pub fn index_of(&self, id: &str) -> Option<u32> {
        let n: u32 = id.strip_prefix("vf")?.parse().ok()?;
        (n < self.max && accelgate_proto::names::vf_slice_id(n) == id).then_some(n)
    }
}
