//! Typed snapshots of the daemon's objects, built from their D-Bus properties.

use serde::Serialize;

use accelgate_proto::names;

/// A device as the daemon shows it to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub pci_address: String,
    pub vendor_id: u16,
    pub product_id: u16,
    pub kind: String,
    pub driver: String,
    pub num_vfs: u32,
    pub total_vfs: u32,
    pub firmware_version: String,
    /// `a` or `b`; empty without firmware management.
    pub firmware_active_slot: String,
    /// `idle`, `flashing` or `error: ...`; empty without firmware management.
    pub firmware_state: String,
    /// How the last flash ended; empty if there was none.
    pub firmware_last_result: String,
    pub firmware_locked: bool,
    pub personality_sha256: String,
    /// Ids of the slices the caller may see.
    pub slices: Vec<String>,
}

/// A slice as the daemon shows it to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceInfo {
    pub device: String,
    pub id: String,
    /// `region`, `window` or `vf`.
    pub kind: String,
    pub size: u64,
    pub mappable: bool,
    /// Writable ranges `[start, end)` in the slice.
    pub writable: Vec<(u64, u64)>,
    /// Empty when unassigned.
    pub tenant: String,
    /// Empty when no image is loaded.
    pub image_sha256: String,
}

/// The caller as the daemon sees it (`WhoAmI`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub uid: u32,
    pub roles: Vec<String>,
    pub operations: Vec<String>,
}

/// How a job ended well: its final message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    pub job: String,
    pub message: String,
}

/// The last element of an object path (`.../slices/region0` -> `region0`), used for the slice
/// ids of a device's `Slices` property.
pub(crate) fn slice_id_of(path: &str) -> String {
    names::parse_slice_path(path)
        .map(|(_, slice)| slice.to_owned())
        .unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_ids_come_from_paths() {
        assert_eq!(slice_id_of(&names::slice_path("fpga0", "vf3")), "vf3");
        assert_eq!(slice_id_of("/x/y/odd"), "odd");
    }
}
