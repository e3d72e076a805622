//! What the plugin reads from sysfs itself, read-only: which function a VF slice is and
//! whether it is bound to vfio-pci (and then its IOMMU group, for the `/dev/vfio` nodes).

use std::path::{Path, PathBuf};

/// The PCI address of VF slice `vfN` of the PF at `pf` (through the PF's `virtfnN` link).
pub fn vf_address(sysfs: &Path, pf: &str, slice: &str) -> Option<String> {
    let n: u32 = slice.strip_prefix("vf")?.parse().ok()?;
    let link = function_dir(sysfs, pf).join(format!("virtfn{n}"));
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

/// `/dev/vfio/vfio` and `/dev/vfio/<group>` when the function at `address` is bound to
/// vfio-pci; empty otherwise (the tenant then reaches it through the daemon only).
pub fn vfio_nodes(sysfs: &Path, address: &str) -> Vec<String> {
    let dir = function_dir(sysfs, address);
    let bound_to_vfio = std::fs::read_link(dir.join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n == "vfio-pci"))
        .unwrap_or(false);
    if !bound_to_vfio {
        return Vec::new();
    }
    let group = std::fs::read_link(dir.join("iommu_group"))
        .ok()
        .and_then(|t| t.file_name()?.to_str().map(str::to_owned))
        .filter(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
    match group {
        Some(g) => vec!["/dev/vfio/vfio".to_owned(), format!("/dev/vfio/{g}")],
        None => Vec::new(),
    }
}

fn function_dir(sysfs: &Path, address: &str) -> PathBuf {
    sysfs.join("bus/pci/devices").join(address)
}
