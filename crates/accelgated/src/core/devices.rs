//! The runtime model of devices and slices: policy joined with the hardware it names.
//!
//! Opening a device maps each declared slice's window once, at start or reload, so a request
//! never opens files: it finds its `SliceRt` and touches only that window. A VF slice's window
//! is mapped on its first use instead: a host of 256 devices with 64 VFs each would otherwise
//! spend most of its start-up opening, reading and mapping 16,384 sets of sysfs files that
//! few requests ever touch (benches/accelgate.rs, item 5).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use accelgate_policy::{DevicePolicy, LoaderSpec, SliceKind, SlicePolicy};
use accelgate_proto::names::vf_slice_id;

use accelgate_hw::{HwRoot, PciBdf, PciFunction, SliceWindow, Sriov, WindowError};

use super::error::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {device}: PCI function {pci} is not usable")]
    Pci {
        device: String,
        pci: String,
        #[source]
        source: accelgate_hw::PciError,
    },
    #[error("device {device}: SR-IOV is not usable")]
    Sriov {
        device: String,
        #[source]
        source: accelgate_hw::SriovError,
    },
    #[error("slice {device}/{slice}: BAR {bar} is not a memory BAR")]
    NotMemoryBar {
        device: String,
        slice: String,
        bar: u8,
    },
    #[error(
        "slice {device}/{slice}: BAR {bar} of {pci} is owned by the kernel driver {driver}; \
         the kernel refuses to map a BAR a driver owns (CONFIG_IO_STRICT_DEVMEM): unbind the \
         driver or leave the function without one"
    )]
    Claimed {
        device: String,
        slice: String,
        pci: String,
        bar: u8,
        driver: String,
    },
    #[error(
        "slice {device}/{slice} is gone: its VF was removed (the device's VF count changed); \
         it can no longer be read or written"
    )]
    Gone { device: String, slice: String },
    #[error(
        "slice {device}/{slice} is being handed over (its former tenant's mapping is being \
         revoked and the function reset); retry in a moment"
    )]
    HandingOver { device: String, slice: String },
    #[error(
        "slice {device}/{slice} has no register window: mapping it again after a hand-over \
         failed ({reason}); recreate the device's VFs"
    )]
    Unmapped {
        device: String,
        slice: String,
        reason: String,
    },
    #[error(
        "slice {device}/{slice}: BAR {bar} of its VF is {found} bytes, not the {expected} every \
         VF of the device has"
    )]
    VfBarSize {
        device: String,
        slice: String,
        bar: u8,
        expected: u64,
        found: u64,
    },
    #[error("slice {device}/{slice}: window does not fit BAR {bar}")]
    Window {
        device: String,
        slice: String,
        bar: u8,
        #[source]
        source: accelgate_hw::WindowError,
    },
}

/// A device as the daemon serves it.
pub struct DeviceRt {
    pub policy: DevicePolicy,
    pub pci: PciFunction,
    pub sriov: Option<Sriov>,
    /// Declared slices plus the VF slices that exist now.
    pub slices: RwLock<BTreeMap<String, Arc<SliceRt>>>,
    /// Set once the kernel said the function left the bus: its windows map a dead function
    /// (reads return 0 without a fault), so nothing may trust them any more.
    removed: tokio::sync::watch::Sender<bool>,
}

/// A slice as the daemon serves it.
pub struct SliceRt {
    pub device: String,
    pub id: String,
    pub kind: SliceKind,
    /// The register window: a VF's is mapped on its first use. A VF's window is revoked (and
    /// so unmapped) before the VF is removed, and taken out while the VF is handed over: on a
    /// real kernel an access through a mapping of a removed `resourceN` file faults
    /// (SIGBUS), and so does one through a mapping a driver's claim revoked, either of which
    /// would end the daemon. Accesses hold the read lock, so both wait for one in flight.
    window: RwLock<WindowState>,
    size: u64,
    /// `[start, end)` in the window, sorted and non-overlapping.
    pub writable: Vec<(u64, u64)>,
    pub loader: Option<LoaderSpec>,
    /// The VF behind a VF slice (its BAR is what Map hands out); `None` for windows in a
    /// shared BAR, which are only ever proxied through Read/Write.
    vf: Option<VfBar>,
}

/// Where a slice's register window stands.
enum WindowState {
    /// A VF's window before its first use (see [`SliceRt::with_window`]).
    Unopened,
    Mapped(SliceWindow),
    /// Taken out while the VF is handed over to the next tenant (see [`SliceRt::hand_over`]).
    HandingOver,
    /// Mapping the VF again after a hand-over failed.
    Unmapped(String),
    /// The function was removed: never mapped again.
    Revoked,
}

/// A BAR of one VF, named by the PF's SR-IOV control and the VF's index (its `virtfnN`), so a
/// slice holds no path of its own.
struct VfBar {
    sriov: Arc<Sriov>,
    index: u32,
    bar: u8,
}

impl VfBar {
    /// `<pf>/virtfnN/resourceB`, reached through the PF's link as the kernel offers it.
    fn resource(&self) -> PathBuf {
        self.sriov
            .vf_dir(self.index)
            .join(format!("resource{}", self.bar))
    }
}

impl SliceRt {
    /// The BAR resource file a VF slice's Map hands out; `None` for windows in a shared BAR.
    pub fn mappable_resource(&self) -> Option<PathBuf> {
        self.vf.as_ref().map(VfBar::resource)
    }

    /// Whether Map may hand out the slice's BAR (a VF slice).
    pub fn is_mappable(&self) -> bool {
        self.vf.is_some()
    }

    /// The PCI address of a VF slice's function, read from its PF's `virtfnN` link.
    pub fn vf_function(&self) -> Result<PciBdf, DeviceError> {
        let Some(vf) = &self.vf else {
            return Err(self.gone());
        };
        vf.sriov
            .vf_bdf(vf.index)
            .map_err(|source| DeviceError::Sriov {
                device: self.device.clone(),
                source,
            })
    }

    /// The window's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Runs `access` on the window, unless it was revoked (its function removed) or is out
    /// for a hand-over. A VF's window is mapped here on its first use.
    pub fn with_window<T>(&self, access: impl FnOnce(&SliceWindow) -> T) -> Result<T, DeviceError> {
        {
            let window = self.window.read().unwrap_or_else(|p| p.into_inner());
            match &*window {
                WindowState::Unopened => {}
                other => return self.access(other, access),
            }
        }
        let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
        // Another request may have opened, revoked or taken it for a hand-over meanwhile.
        if let WindowState::Unopened = &*window {
            *window = WindowState::Mapped(self.open_vf_window()?);
        }
        self.access(&window, access)
    }

    /// `access` on a mapped window; otherwise why there is none.
    fn access<T>(
        &self,
        window: &WindowState,
        access: impl FnOnce(&SliceWindow) -> T,
    ) -> Result<T, DeviceError> {
        let (device, slice) = (self.device.clone(), self.id.clone());
        match window {
            WindowState::Mapped(w) => Ok(access(w)),
            WindowState::HandingOver => Err(DeviceError::HandingOver { device, slice }),
            WindowState::Unmapped(reason) => Err(DeviceError::Unmapped {
                device,
                slice,
                reason: reason.clone(),
            }),
            // Unopened only if a declared slice had no window, which cannot be.
            WindowState::Revoked | WindowState::Unopened => Err(self.gone()),
        }
    }

    /// Makes sure the window is mapped (for a VF: memory decoding on, the BAR's size as
    /// expected), as Map needs before it hands the BAR out.
    pub fn open_window(&self) -> Result<(), DeviceError> {
        self.with_window(|_| ())
    }

    fn gone(&self) -> DeviceError {
        DeviceError::Gone {
            device: self.device.clone(),
            slice: self.id.clone(),
        }
    }

    /// Opens and maps a VF slice's BAR, as the start-up once did for every VF.
    fn open_vf_window(&self) -> Result<SliceWindow, DeviceError> {
        let Some(vf) = &self.vf else {
            // Declared slices are mapped when they are made.
            return Err(self.gone());
        };
        let vf_fn = vf.sriov.vf(vf.index).map_err(|source| DeviceError::Sriov {
            device: self.device.clone(),
            source,
        })?;
        let bar = vf_fn.bar(vf.bar).map_err(|source| DeviceError::Pci {
            device: self.device.clone(),
            pci: vf_fn.bdf.to_string(),
            source,
        })?;
        // The writable ranges and the Size property were made for this size.
        if bar.size != self.size {
            return Err(DeviceError::VfBarSize {
                device: self.device.clone(),
                slice: self.id.clone(),
                bar: vf.bar,
                expected: self.size,
                found: bar.size,
            });
        }
        if vf_fn.driver.is_none() {
            // A VF may come up with memory decoding off (QEMU's igb VFs do; on hardware the
            // PF's SR-IOV control turns it on and the VF's own bit stays 0): its BAR would read
            // 0 and drop writes, the daemon's and its tenant's alike. A function reset
            // restores the bit with the rest of the configuration header.
            match vf_fn.enable_memory() {
                Ok(true) => tracing::info!(
                    "{}/{}: memory decoding of {} turned on",
                    self.device,
                    self.id,
                    vf_fn.bdf
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("{}/{}: {}", self.device, self.id, error_chain(&e)),
            }
        }
        SliceWindow::open(&vf_fn.resource_path(vf.bar), 0, bar.size)
            .map_err(|source| window_error(&self.device, &self.id, &vf_fn, vf.bar, source))
    }

    /// Hands a VF over: the window is unmapped (after any access in flight has finished) and
    /// requests are answered "being handed over" while `work` runs without holding any lock;
    /// then the window is mapped afresh at once (memory decoding on, as on a first use), or
    /// left `Unmapped` saying why it could not be.
    ///
    /// The daemon's own mapping has to go first: binding a driver that claims the BAR revokes
    /// it too, and the next access through it would fault (SIGBUS) and end the daemon. A
    /// window not yet opened is taken out the same way, so no first use maps it meanwhile.
    pub fn hand_over<T>(&self, work: impl FnOnce() -> T) -> T {
        {
            let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
            *window = WindowState::HandingOver;
        }
        let result = work();
        let mapped = self.open_vf_window().map_err(|e| error_chain(&e));
        let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
        // A VF removed meanwhile stays revoked (the removal holds the slice's busy lock, so
        // this does not happen today; kept safe regardless).
        if !matches!(*window, WindowState::Revoked) {
            *window = match mapped {
                Ok(w) => WindowState::Mapped(w),
                Err(reason) => WindowState::Unmapped(reason),
            };
        }
        result
    }

    /// Runs `work` while no access to the window is in flight (e.g. a function reset, during
    /// which the BAR must not be touched).
    pub fn quiesced<T>(&self, work: impl FnOnce() -> T) -> T {
        let _window = self.window.write().unwrap_or_else(|p| p.into_inner());
        work()
    }

    /// Unmaps the window for good, after any access in flight has finished.
    pub fn revoke(&self) {
        let mut window = self.window.write().unwrap_or_else(|p| p.into_inner());
        *window = WindowState::Revoked;
    }

    /// Whether the window is mapped now.
    #[cfg(test)]
    pub fn is_mapped(&self) -> bool {
        matches!(
            *self.window.read().unwrap_or_else(|p| p.into_inner()),
            WindowState::Mapped(_)
        )
    }

    /// Whether the window was unmapped for good, or lost in a failed hand-over: either way a
    /// VF recreated at this index gets a new one.
    pub fn is_revoked(&self) -> bool {
        matches!(
            *self.window.read().unwrap_or_else(|p| p.into_inner()),
            WindowState::Revoked | WindowState::Unmapped(_)
        )
    }

    /// Whether `[start, end)` lies inside the union of the writable ranges.
    pub fn may_write(&self, start: u64, end: u64) -> bool {
        let mut pos = start;
        for &(s, e) in &self.writable {
            if s <= pos && pos < e {
                pos = e;
            }
            if pos >= end {
                return true;
            }
        }
        start == end
    }
}

impl DeviceRt {
    /// Opens a device of the policy on the hardware: its PCI function, declared slice windows,
    /// SR-IOV control, and the VF slices that exist now.
    pub fn open(hw: &HwRoot, policy: &DevicePolicy) -> Result<DeviceRt, DeviceError> {
        let pci = PciBdf::parse(&policy.pci)
            .and_then(|bdf| PciFunction::open(hw, &bdf))
            .map_err(|source| DeviceError::Pci {
                device: policy.id.clone(),
                pci: policy.pci.clone(),
                source,
            })?;
        let mut slices = BTreeMap::new();
        for sp in &policy.slices {
            slices.insert(
                sp.id.clone(),
                Arc::new(open_declared_slice(&policy.id, &pci, sp)?),
            );
        }
        let sriov = match &policy.vfs {
            Some(_) => Some(Sriov::new(&pci).map_err(|source| DeviceError::Sriov {
                device: policy.id.clone(),
                source,
            })?),
            None => None,
        };
        let mut pci = pci;
        if let (Some(sriov), Some(vfp)) = (&sriov, &policy.vfs) {
            if vfp.pf_stub && pci.driver.is_none() {
                // Without it SetVfCount fails, saying why; the device's windows still work.
                match sriov.bind_pf_stub() {
                    Ok(()) => pci = PciFunction::open(hw, &pci.bdf.clone()).unwrap_or(pci),
                    Err(e) => tracing::error!("{}: {}", policy.id, error_chain(&e)),
                }
            }
        }
        if pci.driver.is_none() {
            // A hot-added function starts with memory decoding off; without a driver nobody
            // else turns it on. (A driver's function is left to its driver.)
            match pci.enable_memory() {
                Ok(true) => {
                    tracing::info!("{}: memory decoding of {} turned on", policy.id, pci.bdf)
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("{}: {}", policy.id, error_chain(&e)),
            }
        }
        let dev = DeviceRt {
            policy: policy.clone(),
            pci,
            sriov,
            slices: RwLock::new(slices),
            removed: tokio::sync::watch::Sender::new(false),
        };
        dev.refresh_vf_slices()?;
        Ok(dev)
    }

    /// Whether the function has left the PCI bus.
    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    /// Records that the function has left the PCI bus; wakes whoever waits in
    /// [`DeviceRt::wait_removed`].
    pub fn mark_removed(&self) {
        self.removed.send_replace(true);
    }

    /// Returns once the function has left the PCI bus.
    pub async fn wait_removed(&self) {
        let mut rx = self.removed.subscribe();
        // The sender lives as long as `self`, so the wait ends only by removal.
        let _ = rx.wait_for(|removed| *removed).await;
    }

    pub fn slice(&self, id: &str) -> Option<Arc<SliceRt>> {
        self.slices_read().get(id).cloned()
    }

    pub fn slice_ids(&self) -> Vec<String> {
        self.slices_read().keys().cloned().collect()
    }

    pub fn slices_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<SliceRt>>> {
        self.slices.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Current VF count of the hardware (0 without SR-IOV).
    pub fn num_vfs(&self) -> u32 {
        self.sriov
            .as_ref()
            .and_then(|s| s.num_vfs().ok())
            .unwrap_or(0)
    }

    /// VFs the policy lets the daemon create: the smaller of the policy's max and the hardware's.
    pub fn max_vfs(&self) -> u32 {
        let hw = self
            .sriov
            .as_ref()
            .and_then(|s| s.total_vfs().ok())
            .unwrap_or(0);
        self.policy.vfs.as_ref().map_or(0, |v| v.max.min(hw))
    }

    /// Revokes the windows of the VFs that changing the count from `current` to `count`
    /// removes: the kernel goes through zero between two non-zero counts, so then every VF.
    /// Called before the change; the VFs that come back get new windows in
    /// [`DeviceRt::refresh_vf_slices`].
    pub fn revoke_vf_windows(&self, current: u32, count: u32) {
        if current == count {
            return;
        }
        for slice in self.slices_read().values() {
            let removed = slice.kind == SliceKind::Vf
                && ((current > 0 && count > 0) || vf_index(&slice.id).is_some_and(|i| i >= count));
            if removed {
                slice.revoke();
            }
        }
    }

    /// Makes the VF slices match the VFs the hardware has now (up to the policy's max). Returns
    /// the ids of slices added and removed.
    pub fn refresh_vf_slices(&self) -> Result<(Vec<String>, Vec<String>), DeviceError> {
        let (Some(sriov), Some(vfp)) = (&self.sriov, &self.policy.vfs) else {
            return Ok((vec![], vec![]));
        };
        let err = |source| DeviceError::Sriov {
            device: self.policy.id.clone(),
            source,
        };
        let present = sriov.num_vfs().map_err(err)?.min(vfp.max);
        let mut slices = self.slices.write().unwrap_or_else(|p| p.into_inner());
        let mut removed = vec![];
        slices.retain(|id, s| {
            let keep = s.kind != SliceKind::Vf || vf_index(id).is_some_and(|i| i < present);
            if !keep {
                s.revoke();
                removed.push(id.clone());
            }
            keep
        });
        let mut added = vec![];
        // Every VF of a PF has the same BAR sizes (the SR-IOV capability declares them once for
        // all VFs): read from the first VF that needs a slice, checked again for each VF when
        // its window is first mapped.
        let mut size = None;
        let shared = Arc::new(sriov.clone());
        for i in 0..present {
            let id = vf_slice_id(i);
            // A revoked window belonged to a function the kernel recreated: map the new one.
            let recreated = match slices.get(&id) {
                Some(s) if !s.is_revoked() => continue,
                Some(_) => true,
                None => false,
            };
            let size = match size {
                Some(size) => size,
                None => {
                    let vf = sriov.vf(i).map_err(err)?;
                    let bar = vf.bar(vfp.bar).map_err(|source| DeviceError::Pci {
                        device: self.policy.id.clone(),
                        pci: vf.bdf.to_string(),
                        source,
                    })?;
                    if bar.size == 0 {
                        return Err(DeviceError::Window {
                            device: self.policy.id.clone(),
                            slice: id,
                            bar: vfp.bar,
                            source: WindowError::EmptyWindow,
                        });
                    }
                    *size.insert(bar.size)
                }
            };
            let writable = vfp.writable.clone().unwrap_or_else(|| vec![(0, size)]);
            slices.insert(
                id.clone(),
                Arc::new(SliceRt {
                    device: self.policy.id.clone(),
                    id: id.clone(),
                    kind: SliceKind::Vf,
                    window: RwLock::new(WindowState::Unopened),
                    size,
                    writable,
                    loader: None,
                    vf: Some(VfBar {
                        sriov: shared.clone(),
                        index: i,
                        bar: vfp.bar,
                    }),
                }),
            );
            if !recreated {
                added.push(id);
            }
        }
        Ok((added, removed))
    }
}

fn open_declared_slice(
    device: &str,
    pci: &PciFunction,
    sp: &SlicePolicy,
) -> Result<SliceRt, DeviceError> {
    let bar = pci.bar(sp.bar).map_err(|source| DeviceError::Pci {
        device: device.to_owned(),
        pci: pci.bdf.to_string(),
        source,
    })?;
    if !bar.is_memory {
        return Err(DeviceError::NotMemoryBar {
            device: device.to_owned(),
            slice: sp.id.clone(),
            bar: sp.bar,
        });
    }
    let window = SliceWindow::open(&pci.resource_path(sp.bar), sp.offset, sp.size)
        .map_err(|source| window_error(device, &sp.id, pci, sp.bar, source))?;
    Ok(SliceRt {
        device: device.to_owned(),
        id: sp.id.clone(),
        kind: sp.kind,
        size: window.size(),
        window: RwLock::new(WindowState::Mapped(window)),
        writable: sp.writable.clone(),
        loader: sp.loader.clone(),
        vf: None,
    })
}

/// A window that cannot be mapped because a kernel driver owns the BAR says which driver.
fn window_error(
    device: &str,
    slice: &str,
    function: &PciFunction,
    bar: u8,
    source: WindowError,
) -> DeviceError {
    match (&function.driver, &source) {
        (Some(driver), WindowError::Map { source: errno, .. })
            if *errno == nix::errno::Errno::EINVAL =>
        {
            DeviceError::Claimed {
                device: device.to_owned(),
                slice: slice.to_owned(),
                pci: function.bdf.to_string(),
                bar,
                driver: driver.clone(),
            }
        }
        _ => DeviceError::Window {
            device: device.to_owned(),
            slice: slice.to_owned(),
            bar,
            source,
        },
    }
}

/// `vf12` -> 12.
pub fn vf_index(id: &str) -> Option<u32> {
    id.strip_prefix("vf")?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn vf_index_parses_only_vf_ids() {
        assert_eq!(super::vf_index("vf12"), Some(12));
        assert_eq!(super::vf_index("region0"), None);
    }
}
