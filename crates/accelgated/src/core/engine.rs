//! The engine: the device model and the operations. Every operation names its own
//! `Operation`, passes the gatekeeper (no path can act without an `Authorized`), and announces
//! what it changed as events.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use accelgate_hw::{
    FwUpload, HwRoot, PciAction, PciBdf, PciError, PciUevent, RevokeError, Revoked, Width,
};
use accelgate_policy::{FirmwarePolicy, LoaderSpec, RolePolicy, SliceKind};
use accelgate_proto::Operation;

use super::audit::AuditLog;
use super::authz::{Gate, Target};
use super::devices::{vf_index, DeviceRt, SliceRt};
use super::error::{error_chain, CoreError};
use super::events::{Event, EventSink};
use super::firmware::rollback;
use super::firmware::{
    image_version, open_backend, recover_interrupted, run_flash, FirmwareRecords, FlashError,
    FlashRequest, SignatureCheck,
};
use super::gatekeeper::{Authorized, Decision, Request, RoleChecked};
use super::image::{read_image_with, Image};
use super::jobs::{Job, JobHandle, JobId, Jobs};
use super::state::{persist, PersistentState, StateStore, StateWriter};
use super::tenant::Tenant;

/// Size of the all-zero image that blanks a region when it is released (the simulated regions,
/// like partial-reconfiguration regions loaded with a blank bitstream, read it as "empty").
/// Small enough for drivers with small upload limits (the kernel's test_firmware: 2048 bytes).
const BLANK_IMAGE_SIZE: usize = 1024;
/// Longest an image upload may take before it is reported failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the kernel may take to create or remove VFs.
const SRIOV_TIMEOUT: Duration = Duration::from_secs(30);
/// A function reset (FLR) takes ~100 ms on hardware; the simulator answers within milliseconds.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a VF's revoke driver may take to bind, and to let go again.
const REVOKE_WAIT: Duration = Duration::from_secs(5);
/// How long a hot-added function may take to become openable: the kernel announces it
/// (`add`) before it has created its `resourceN` files.
const ARRIVAL_SETTLE: Duration = Duration::from_secs(3);
const ARRIVAL_RETRY: Duration = Duration::from_millis(50);

/// The firmware properties of a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// Version of the firmware that boots.
    pub version: String,
    /// `a` or `b`.
    pub active_slot: String,
    /// `idle`, `flashing`, or `error: ...` when the device's state cannot be read.
    pub state: String,
    /// `<outcome>: <message>` of the last flash (outcome succeeded, failed, cancelled,
    /// interrupted); empty if there was none.
    pub last_result: String,
}

/// What the engine is built from.
pub struct EngineParts {
    pub hw: HwRoot,
    /// The policy file or directory, re-read on reload.
    pub policy_path: PathBuf,
    pub policy: RolePolicy,
    pub state: StateStore,
    pub audit: AuditLog,
    /// Gates after role policy and caller capabilities, in order (polkit).
    pub gates: Vec<Box<dyn Gate>>,
    pub events: Arc<dyn EventSink>,
}

/// The engine.
pub struct Engine {
    hw: HwRoot,
    policy_path: PathBuf,
    policy: RwLock<Arc<RolePolicy>>,
    devices: RwLock<BTreeMap<String, Arc<DeviceRt>>>,
    /// Devices of the policy whose PCI function left the bus while served.
    departed: Mutex<BTreeSet<String>>,
    /// The state in effect. Locked only briefly, never across a write of the state file.
    state: Arc<Mutex<StateStore>>,
    /// Held from preparing a state update until it is committed: one update at a time.
    state_updates: Arc<tokio::sync::Mutex<()>>,
    /// Persists state updates off the runtime's threads.
    state_writer: StateWriter,
    audit: AuditLog,
    gates: Vec<Box<dyn Gate>>,
    jobs: Arc<Jobs>,
    events: Arc<dyn EventSink>,
    /// Devices and slices with an operation running.
    busy_locks: super::busy::BusyLocks,
    /// Image bytes held for callers, in total and per caller.
    image_budget: super::budget::ImageBudget,
    /// What each device's firmware properties show. Reading it means opening the backend and
    /// the flash records (MTD reads, files in the state directory), which must not happen on
    /// the runtime's threads inside a property getter: it is read on a blocking thread when
    /// it may have changed (start-up, a flash's start and end, a reload, a device's return)
    /// and the getters read this copy.
    firmware: Mutex<BTreeMap<String, FirmwareInfo>>,
    /// One firmware read at a time, so the copy kept is from the read that began last.
    firmware_reads: tokio::sync::Mutex<()>,
}

impl Engine {
    /// Builds the engine: opens the devices the policy names, restores VF counts, and repairs
    /// what a crash left in flux.
    pub async fn new(parts: EngineParts) -> Arc<Engine> {
        let devices = open_devices(&parts.hw, &parts.policy);
        let largest_image = parts
            .policy
            .devices
            .iter()
            .map(|d| d.max_image_size)
            .max()
            .unwrap_or(0);
        let engine = Arc::new(Engine {
            jobs: Arc::new(Jobs::new(parts.events.clone())),
            events: parts.events,
            hw: parts.hw,
            policy_path: parts.policy_path,
            policy: RwLock::new(Arc::new(parts.policy)),
            devices: RwLock::new(devices),
            departed: Mutex::default(),
            state: Arc::new(Mutex::new(parts.state)),
            state_updates: Default::default(),
            state_writer: StateWriter::default(),
            audit: parts.audit,
            gates: parts.gates,
            busy_locks: Default::default(),
            image_budget: super::budget::ImageBudget::new(largest_image),
            firmware: Mutex::default(),
            firmware_reads: Default::default(),
        });
        engine.restore_vf_counts().await;
        engine.recover_in_flux().await;
        engine.recover_firmware().await;
        engine.refresh_all_firmware().await;
        engine
    }

    pub fn hw(&self) -> &HwRoot {
        &self.hw
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub(super) fn gates(&self) -> &[Box<dyn Gate>] {
        &self.gates
    }

    fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    fn slice_changed(&self, d: &str, s: &str) {
        self.emit(Event::SliceChanged {
            device: d.to_owned(),
            slice: s.to_owned(),
        });
    }

    fn device_changed(&self, d: &str) {
        self.emit(Event::DeviceChanged {
            device: d.to_owned(),
        });
    }

    /// The newest `max` audit records, oldest first (admins: `policy.reload`).
    pub async fn audit_log(&self, req: &Request, max: u32) -> Result<Vec<String>, CoreError> {
        self.authorize_for(req, Operation::PolicyReload, Target::Manager, "audit-log")
            .await?;
        Ok(self.audit.recent(max as usize))
    }

    /// Asks a job to stop; allowed to whoever may start the job's operation on its target.
    pub async fn cancel_job(&self, req: &Request, job: &Job) -> Result<(), CoreError> {
        self.authorize_job_cancel(req, job).await?;
        job.request_cancel()
    }

    /// A job by number.
    pub fn job(&self, id: JobId) -> Option<Arc<Job>> {
        self.jobs.get(id)
    }

    /// The tenant a slice is assigned to, if any.
    pub fn slice_tenant(&self, d: &str, s: &str) -> Option<Tenant> {
        self.state().get().slice(d, s).tenant
    }

    /// The image loaded in a slice, if any (hex SHA-256).
    pub fn slice_image(&self, d: &str, s: &str) -> Option<String> {
        self.state().get().slice(d, s).image_sha256
    }

    /// The personality loaded on a device, if any (hex SHA-256).
    pub fn device_personality(&self, d: &str) -> Option<String> {
        self.state().get().device(d).personality_sha256
    }

    pub fn policy(&self) -> Arc<RolePolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn devices(&self) -> BTreeMap<String, Arc<DeviceRt>> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn device(&self, id: &str) -> Result<Arc<DeviceRt>, CoreError> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| self.absent(id))
    }

    /// Why a device is not served: gone from the bus, or unknown.
    fn absent(&self, id: &str) -> CoreError {
        let departed = self
            .departed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        match self.policy().devices.iter().find(|d| d.id == id) {
            Some(dp) if departed => removed_error(id, &dp.pci),
            _ => CoreError::NotFound(format!("no device {id}")),
        }
    }

    fn slice(&self, device: &str, slice: &str) -> Result<(Arc<DeviceRt>, Arc<SliceRt>), CoreError> {
        let dev = self.device(device)?;
        let s = dev
            .slice(slice)
            .ok_or_else(|| CoreError::NotFound(format!("no slice {device}/{slice}")))?;
        Ok((dev, s))
    }

    fn state(&self) -> MutexGuard<'_, StateStore> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists a change of state; a failure changes nothing and is reported as Failed.
    ///
    /// The file is written and fsync'd on the state writer thread while this waits, so no
    /// thread of the runtime blocks on the disk; readers see the old state until the new one is
    /// on disk. The update permit travels with the write and the writer commits, so a caller
    /// that stops waiting leaves memory and file agreeing, and the next update starts from it.
    async fn update_state<R>(
        &self,
        change: impl FnOnce(&mut PersistentState) -> R,
    ) -> Result<R, CoreError> {
        let permit = self.state_updates.clone().lock_owned().await;
        let (result, next, dir) = {
            let st = self.state();
            let (result, next) = st.prepare(change);
            (result, next, st.dir().to_owned())
        };
        let Some(next) = next else {
            return Ok(result);
        };
        let store = self.state.clone();
        let written = self
            .state_writer
            .run(move || {
                let _permit = permit;
                persist(&dir, &next)?;
                store.lock().unwrap_or_else(|p| p.into_inner()).commit(next);
                Ok(())
            })
            .await
            .and_then(|r| r);
        written.map(|()| result).map_err(|e| {
            let e = CoreError::State(e);
            tracing::error!("{}", error_chain(&e));
            e
        })
    }

    // ---------------------------------------------------------------- slice operations

    pub async fn read(
        &self,
        req: &Request,
        target: Target,
        offset: u64,
        count: u32,
        width: u8,
    ) -> Result<Vec<u64>, CoreError> {
        let auth = self.authorize(req, Operation::SliceRead, target).await?;
        // After the polkit round trip, right before the hardware is touched.
        self.recheck_at_use(&auth)?;
        let (dev, slice) = self.target_slice(&auth)?;
        let width = Width::try_from(width).map_err(|e| self.deny_by_limit(&auth, e.into()))?;
        let values = slice
            .with_window(|w| w.read(offset, count, width))
            .map_err(gone)?
            .map_err(|e| self.deny_by_limit(&auth, e.into()))?;
        // A removed function's mapping reads 0 rather than faulting: values read while the
        // function was leaving are not the device's.
        if dev.is_removed() {
            return Err(removed_error(&dev.policy.id, &dev.policy.pci));
        }
        Ok(values)
    }

    pub async fn write(
        &self,
        req: &Request,
        target: Target,
        offset: u64,
        values: &[u64],
        width: u8,
    ) -> Result<(), CoreError> {
        let auth = self.authorize(req, Operation::SliceWrite, target).await?;
        self.recheck_at_use(&auth)?;
        let auth = &auth;
        let (dev, slice) = self.target_slice(auth)?;
        let width = Width::try_from(width).map_err(|e| self.deny_by_limit(auth, e.into()))?;
        let len = (values.len() as u64).checked_mul(width.bytes());
        let end = len.and_then(|l| offset.checked_add(l));
        match end {
            Some(end) if end <= slice.size() && !slice.may_write(offset, end) => {
                return Err(self.deny_by_limit(
                    auth,
                    CoreError::InvalidArgument(format!(
                        "bytes {offset:#x}..{end:#x} of {} are not all inside its writable ranges",
                        auth.target()
                    )),
                ));
            }
            // Out-of-window and overflow cases get the window's own precise error below.
            _ => {}
        }
        slice
            .with_window(|w| w.write(offset, values, width))
            .map_err(gone)?
            .map_err(|e| self.deny_by_limit(auth, e.into()))?;
        if dev.is_removed() {
            return Err(removed_error(&dev.policy.id, &dev.policy.pci));
        }
        Ok(())
    }

    pub async fn map(&self, req: &Request, target: Target) -> Result<OwnedFd, CoreError> {
        let auth = self.authorize(req, Operation::SliceMap, target).await?;
        let auth = &auth;
        let (dev, slice) = self.target_slice(auth)?;
        if dev.is_removed() {
            return Err(removed_error(&dev.policy.id, &dev.policy.pci));
        }
        let Some(resource) = slice.mappable_resource() else {
            return Err(self.deny_by_limit(
                auth,
                CoreError::InvalidArgument(format!(
                    "{} is a window inside a shared BAR and cannot be mapped; use Read and Write",
                    auth.target()
                )),
            ));
        };
        // Only a VF whose mappings the daemon can end is handed out (docs/security.md,
        // Revocation): the kernel ends no mapping of a VF's BAR when it is released, reset or
        // even removed and created again, only when a driver claims the BAR.
        if revoke_driver(&dev).is_none() {
            return Err(self.deny_by_limit(
                auth,
                CoreError::Failed(format!(
                    "{} cannot be mapped: the policy names no revoke_driver for {}'s VFs, so a \
                     mapping could not be ended when the slice changes hands; use Read and \
                     Write (docs/security.md, Revocation)",
                    auth.target(),
                    dev.policy.id
                )),
            ));
        }
        // Under the busy lock: a hand-over (Release, Assign) binds a driver for a moment.
        let _busy = self.claim(auth.target(), auth)?;
        // A BAR a kernel driver owns cannot be mapped (CONFIG_IO_STRICT_DEVMEM): say so here
        // rather than let the caller's mmap fail with EINVAL.
        let driver = resource
            .parent()
            .and_then(|function| std::fs::read_link(function.join("driver")).ok());
        if let Some(driver) = driver.as_ref().and_then(|d| d.file_name()) {
            return Err(self.deny_by_limit(
                auth,
                CoreError::Failed(format!(
                    "{} cannot be mapped: the kernel driver {} owns its BAR",
                    auth.target(),
                    driver.to_string_lossy()
                )),
            ));
        }
        self.recheck_at_use(auth)?;
        // A VF's window is mapped on first use, which also turns its memory decoding on: the
        // BAR handed out must answer as the daemon's own window does.
        slice.open_window().map_err(gone)?;
        let (d, s) = (
            auth.target().device().unwrap_or_default(),
            auth.target().slice().unwrap_or_default(),
        );
        // A writable mapping reaches every byte of the BAR: hand one out only to a caller who
        // may write and only where every byte is writable; anyone else gets a read-only fd.
        let caller = auth.caller();
        let tenant = self.slice_tenant(d, s);
        let assigned = tenant
            .as_ref()
            .is_some_and(|t| t.includes(caller.uid, &caller.gids));
        let may_write = matches!(
            self.policy().decide(
                caller.uid,
                &caller.gids,
                Operation::SliceWrite,
                Some(d),
                assigned
            ),
            accelgate_policy::RoleDecision::Allow { .. }
        ) && slice.may_write(0, slice.size());
        // Recorded before the fd leaves: the slice goes to no other tenant until the mapping
        // is revoked (see docs/security.md). A caller whose role maps slices it is not
        // assigned is recorded by uid, so the slice's next tenant is protected from it too.
        let holder = tenant.unwrap_or(Tenant::User {
            uid: caller.uid,
            name: String::new(),
        });
        self.update_state(|st| {
            let entry = st.slice_mut(d, s);
            entry.mapped_by = Some(holder.clone());
            entry.fd_handed_to = Some(holder);
        })
        .await?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(may_write)
            .open(resource)
            .map(OwnedFd::from)
            .map_err(|e| {
                CoreError::Failed(format!("cannot open the BAR of {}: {e}", auth.target()))
            })
    }

    pub async fn assign(
        &self,
        req: &Request,
        target: Target,
        tenant: &str,
    ) -> Result<(), CoreError> {
        let auth = self.authorize(req, Operation::SliceAssign, target).await?;
        let auth = &auth;
        self.target_slice(auth)?;
        let tenant =
            Tenant::resolve(tenant).map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        let _busy = self.claim(auth.target(), auth)?;
        let (d, s) = (
            auth.target().device().unwrap_or_default(),
            auth.target().slice().unwrap_or_default(),
        );
        // A free slice that another tenant mapped: revoke that mapping now, if the device's
        // VFs have a revoke driver (a Release whose revocation failed leaves this to here).
        let blocked_by_mapping = {
            let st = self.state();
            let entry = st.get().slice(d, s);
            entry.tenant.is_none() && entry.mapped_by.as_ref().is_some_and(|m| *m != tenant)
        };
        if blocked_by_mapping {
            let (dev, slice) = self.target_slice(auth)?;
            if let Some(handed) = self.revoke_and_reset(&dev, d, s, &slice).await? {
                if let Err(e) = &handed.revoked {
                    return Err(CoreError::Busy(format!(
                        "{d}/{s} was mapped by its previous tenant and that mapping may still be \
                         alive: {}; it goes to no other tenant until a revocation succeeds",
                        error_chain(e)
                    )));
                }
                self.update_state(|st| st.slice_mut(d, s).mapped_by = None)
                    .await?;
                handed.reset_outcome(d, s)?;
            }
        }
        let changed = self
            .update_state(|st| {
                let entry = st.slice_mut(d, s);
                match &entry.tenant {
                    Some(t) if *t == tenant => Ok(false),
                    _ if entry.fd_handed_to.as_ref().is_some_and(|m| *m != tenant) => {
                        Err(CoreError::Busy(format!(
                            "{d}/{s}: Map gave its previous tenant an fd of the VF's BAR, and \
                             that fd can map the VF again whoever has it (a revocation ends \
                             mappings, not fds); only removing the VF ends it: recreate the \
                             device's VFs (SetVfCount to 0 and back) before it goes to someone \
                             else"
                        )))
                    }
                    _ if entry.mapped_by.as_ref().is_some_and(|m| *m != tenant) => {
                        Err(CoreError::Busy(format!(
                            "{d}/{s} was mapped by its previous tenant and that mapping may still \
                             be alive; the policy names no revoke_driver for {d}'s VFs, so the \
                             daemon cannot revoke it, and nothing else ends it (not even \
                             recreating the VFs): name one and reload the policy, then Release \
                             or Assign revokes it (docs/security.md, Revocation)"
                        )))
                    }
                    Some(t) => Err(CoreError::Busy(format!(
                    "{d}/{s} is assigned to {t}; release it before assigning it to someone else"
                ))),
                    None => {
                        entry.tenant = Some(tenant.clone());
                        Ok(true)
                    }
                }
            })
            .await??;
        if changed {
            self.slice_changed(d, s);
        }
        Ok(())
    }

    pub async fn release(&self, req: &Request, target: Target) -> Result<(), CoreError> {
        let auth = self.authorize(req, Operation::SliceAssign, target).await?;
        let auth = &auth;
        let (dev, slice) = self.target_slice(auth)?;
        let _busy = self.claim(auth.target(), auth)?;
        let (d, s) = (
            auth.target().device().unwrap_or_default(),
            auth.target().slice().unwrap_or_default(),
        );
        let (assigned, mapped) = {
            let st = self.state();
            let entry = st.get().slice(d, s);
            (entry.tenant.is_some(), entry.mapped_by.is_some())
        };
        // A mapped VF whose device has a revoke driver is handed over: its mappings revoked,
        // the function reset, the daemon's window mapped afresh. Also when it has no tenant
        // any more (an earlier revocation failed): a retried Release tries again.
        let revocable = mapped && revoke_driver(&dev).is_some() && slice.is_mappable();
        if !assigned && !revocable {
            return Ok(());
        }
        if assigned {
            self.scrub(d, s, &slice).await?;
        }
        let handed = match revocable {
            true => self.revoke_and_reset(&dev, d, s, &slice).await?,
            false => None,
        };
        match &handed {
            Some(handed) => handed.reset_outcome(d, s)?,
            None => self.reset_function(d, s, &slice).await?,
        }
        let revoked = handed.as_ref().is_some_and(|h| h.revoked.is_ok());
        self.update_state(|st| {
            let entry = st.slice_mut(d, s);
            entry.tenant = None;
            if revoked {
                entry.mapped_by = None;
            }
        })
        .await?;
        if assigned {
            self.slice_changed(d, s);
        }
        match handed.map(|h| h.revoked) {
            Some(Err(e)) => Err(CoreError::Failed(format!(
                "{d}/{s} is released, but its former tenant's mapping could not be revoked: {}; \
                 it goes to no other tenant until a revocation succeeds (Release or Assign tries \
                 again)",
                error_chain(&e)
            ))),
            _ => Ok(()),
        }
    }

    /// Revokes every mapping of a VF slice's BAR through the device's `revoke_driver` (see
    /// docs/security.md, Revocation): the daemon's own window is taken out first (no access
    /// in flight), the driver bound and proven to hold the BAR, unbound; then the function is
    /// reset and the window mapped afresh, whatever the revocation's outcome. `None` when the
    /// device's VFs have no revoke driver.
    async fn revoke_and_reset(
        &self,
        dev: &Arc<DeviceRt>,
        d: &str,
        s: &str,
        slice: &Arc<SliceRt>,
    ) -> Result<Option<HandedOver>, CoreError> {
        let (Some(driver), Some(resource)) = (revoke_driver(dev), slice.mappable_resource()) else {
            return Ok(None);
        };
        let Some(function_dir) = resource.parent().map(std::path::Path::to_path_buf) else {
            return Ok(None);
        };
        let bar = dev.policy.vfs.as_ref().map_or(0, |v| v.bar);
        let (hw, worker) = (self.hw.clone(), slice.clone());
        let started = std::time::Instant::now();
        let handed = tokio::task::spawn_blocking(move || {
            // The slice holds no address of its own (its window is mapped on first use).
            let bdf = worker.vf_function()?;
            // The window is mapped afresh at once when `hand_over` ends (memory decoding on
            // again: the driver's probe and remove may leave it off).
            Ok(worker.hand_over(|| {
                let revoked = accelgate_hw::revoke_bar_mappings(
                    &hw,
                    &function_dir,
                    &bdf,
                    bar,
                    &driver,
                    REVOKE_WAIT,
                );
                // Between tenants in any case; after the revocation, so nothing an old
                // mapping stored before it survives.
                let reset = accelgate_hw::reset_function(&function_dir, RESET_TIMEOUT);
                HandedOver {
                    revoked,
                    reset,
                    driver,
                }
            }))
        })
        .await
        .map_err(CoreError::Task)?
        .map_err(gone)?;
        match &handed.revoked {
            Ok(times) => tracing::info!(
                "{d}/{s}: every mapping of its BAR revoked through {} (bound in {:?}, unbound in \
                 {:?}), function reset, window mapped afresh; {:?} in all",
                handed.driver,
                times.bind,
                times.unbind,
                started.elapsed()
            ),
            Err(e) => tracing::error!(
                "{d}/{s}: revoking the mappings of its BAR through {} failed: {}",
                handed.driver,
                error_chain(e)
            ),
        }
        Ok(Some(handed))
    }

    /// Makes a slice safe for the next tenant: writable registers zeroed, image unloaded. The
    /// image is marked in flux first, so a crash half-way is finished on the next start.
    async fn scrub(&self, d: &str, s: &str, slice: &Arc<SliceRt>) -> Result<(), CoreError> {
        for &(start, end) in &slice.writable {
            match slice.with_window(|w| w.zero(start, end)) {
                Ok(result) => {
                    result.map_err(|e| CoreError::Failed(format!("scrubbing {d}/{s}: {e}")))?
                }
                // A removed function keeps nothing for the next tenant.
                Err(_) => break,
            }
        }
        let had_image = {
            let st = self.state();
            let ss = st.get().slice(d, s);
            ss.image_sha256.is_some() || ss.image_in_flux
        };
        if let (Some(loader), true) = (&slice.loader, had_image) {
            self.update_state(|st| {
                let e = st.slice_mut(d, s);
                e.image_sha256 = None;
                e.image_in_flux = true;
            })
            .await?;
            let blank = vec![0u8; BLANK_IMAGE_SIZE];
            self.upload(loader, Arc::new(blank), None).await?;
            self.update_state(|st| st.slice_mut(d, s).image_in_flux = false)
                .await?;
        }
        Ok(())
    }

    /// Resets a VF between tenants (FLR through its `reset` attribute), so no device state
    /// the old tenant left reaches the next one. A VF that was mapped is also recreated before
    /// anyone else gets it (see `assign`); a reset alone does not end a mapping. Regions share
    /// their function with the device and are not reset.
    async fn reset_function(
        &self,
        d: &str,
        s: &str,
        slice: &Arc<SliceRt>,
    ) -> Result<(), CoreError> {
        let Some(function) = slice
            .mappable_resource()
            .as_ref()
            .and_then(|r| r.parent())
            .map(|f| f.to_path_buf())
        else {
            return Ok(());
        };
        let worker = slice.clone();
        let result = tokio::task::spawn_blocking(move || {
            worker.quiesced(|| accelgate_hw::reset_function(&function, RESET_TIMEOUT))
        })
        .await
        .map_err(CoreError::Task)?;
        match result {
            Ok(()) => Ok(()),
            // A VF without a reset method keeps its scrub (writable ranges zeroed); say so.
            Err(e @ accelgate_hw::PciError::NoReset(_)) => {
                tracing::warn!(
                    "{d}/{s}: {}; only its writable ranges were zeroed",
                    error_chain(&e)
                );
                Ok(())
            }
            Err(e) => Err(CoreError::Failed(format!(
                "resetting {d}/{s}: {}",
                error_chain(&e)
            ))),
        }
    }

    pub async fn program(
        self: &Arc<Self>,
        req: &Request,
        target: Target,
        fd: OwnedFd,
    ) -> Result<JobId, CoreError> {
        let checked = self.authorize_role(req, Operation::SliceProgram, target)?;
        let (_, slice) = self.target_slice(&checked)?;
        let Some(loader) = slice.loader.clone() else {
            return Err(self.deny_by_limit(
                &checked,
                CoreError::InvalidArgument(format!(
                    "{} has no image loader; only regions can be programmed",
                    checked.target()
                )),
            ));
        };
        let limit = self
            .device(checked.target().device().unwrap_or_default())?
            .policy
            .max_image_size;
        let image = self.take_image(&checked, fd, limit).await?;
        let auth = self.authorize_rest(checked, Some(&image.sha256)).await?;
        let (d, s) = (
            auth.target().device().unwrap_or_default().to_owned(),
            auth.target().slice().unwrap_or_default().to_owned(),
        );
        let busy = self.claim(auth.target(), &auth)?;
        // The image read and polkit may have taken long: the slice may have been released and
        // assigned to someone else meanwhile.
        self.recheck_at_use(&auth)?;
        let loaded = self.state().get().slice(&d, &s).image_sha256;
        let already = (loaded.as_deref() == Some(image.sha256.as_str()))
            .then(|| format!("image {} is already loaded", image.sha256));
        let daemon = self.clone();
        self.spawn_job(&auth, busy, already, move |job| async move {
            daemon.load_slice_image(&d, &s, &loader, image, &job).await
        })
    }

    /// Starts a job and runs `work` for it in the background, holding `busy` until it ends.
    /// With `already` (the request is a repeat of what is in effect), the job ends at once
    /// with that message: retries by orchestrators stay cheap and uniform.
    fn spawn_job<W, Fut>(
        self: &Arc<Self>,
        auth: &Authorized,
        busy: tokio::sync::OwnedMutexGuard<()>,
        already: Option<String>,
        work: W,
    ) -> Result<JobId, CoreError>
    where
        W: FnOnce(JobHandle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<String, CoreError>> + Send + 'static,
    {
        let job = self
            .jobs
            .start(auth.operation(), auth.target().clone(), auth.caller().uid)?;
        let id = job.id();
        if let Some(message) = already {
            job.finish(Ok(message));
            return Ok(id);
        }
        // A job on a device ends when the device leaves the bus: its work is told to stop
        // (the cancel flag) and abandoned, and the job fails saying why.
        let device = auth.target().device().and_then(|d| self.device(d).ok());
        tokio::spawn(async move {
            let _busy = busy;
            let result = match device {
                Some(dev) => {
                    let cancel = job.cancel_flag();
                    tokio::select! {
                        result = work(job.clone()) => result,
                        () = dev.wait_removed() => {
                            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                            Err(CoreError::Failed(format!(
                                "the job was abandoned: {}",
                                removed_error(&dev.policy.id, &dev.policy.pci)
                            )))
                        }
                    }
                }
                None => work(job.clone()).await,
            };
            job.finish(result);
        });
        Ok(id)
    }

    async fn load_slice_image(
        &self,
        d: &str,
        s: &str,
        loader: &LoaderSpec,
        image: Image,
        job: &JobHandle,
    ) -> Result<String, CoreError> {
        self.update_state(|st| {
            let e = st.slice_mut(d, s);
            e.image_sha256 = None;
            e.image_in_flux = true;
        })
        .await?;
        self.slice_changed(d, s);
        let sha = image.sha256.clone();
        let result = self.upload(loader, Arc::new(image.bytes), Some(job)).await;
        // Whatever happened, the hardware is in a known state again: loaded, or not loaded.
        let loaded = result.is_ok();
        self.update_state(|st| {
            let e = st.slice_mut(d, s);
            e.image_in_flux = false;
            e.image_sha256 = loaded.then(|| sha.clone());
        })
        .await?;
        self.slice_changed(d, s);
        result.map(|()| format!("loaded image {sha} into {d}/{s}"))
    }

    /// Uploads bytes through a loader on a blocking thread, forwarding progress to the job and
    /// the job's cancel request to the loader.
    async fn upload(
        &self,
        loader: &LoaderSpec,
        bytes: Arc<Vec<u8>>,
        job: Option<&JobHandle>,
    ) -> Result<(), CoreError> {
        let fw = FwUpload::open(&self.hw, &loader.name).map_err(|source| CoreError::Upload {
            loader: loader.name.clone(),
            source,
        })?;
        let cancel = job
            .map(|j| j.cancel_flag())
            .unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
        let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
        let work = tokio::task::spawn_blocking(move || {
            let mut report = |p: f64| {
                let _ = tx.send(p);
            };
            fw.upload(&bytes, &mut report, &cancel, UPLOAD_TIMEOUT)
        });
        if let Some(job) = job {
            while rx.changed().await.is_ok() {
                let p = *rx.borrow_and_update();
                job.set_progress(p);
            }
        }
        match work.await {
            Ok(result) => result.map_err(|source| CoreError::Upload {
                loader: loader.name.clone(),
                source,
            }),
            Err(e) => Err(CoreError::Task(e)),
        }
    }

    // ---------------------------------------------------------------- device operations

    pub async fn set_vf_count(
        &self,
        req: &Request,
        target: Target,
        count: u32,
        force: bool,
    ) -> Result<(), CoreError> {
        let auth = self
            .authorize(req, Operation::DeviceConfigure, target)
            .await?;
        let auth = &auth;
        let d = auth.target().device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        if dev.sriov.is_none() || dev.policy.vfs.is_none() {
            return Err(self.deny_by_limit(
                auth,
                CoreError::InvalidArgument(format!("{d} has no SR-IOV VFs to configure")),
            ));
        }
        let max = dev.max_vfs();
        if count > max {
            return Err(self.deny_by_limit(
                auth,
                CoreError::InvalidArgument(format!("{d} allows at most {max} VFs, not {count}")),
            ));
        }
        let _busy = self.claim(auth.target(), auth)?;
        if dev.num_vfs() == count {
            // Still record the wish, so a restart restores it.
            self.update_state(|st| st.device_mut(&d).num_vfs = Some(count))
                .await?;
            return Ok(());
        }
        // The kernel only changes a non-zero VF count by going through zero, so then every VF
        // is destroyed and recreated; otherwise only those at or past the new count go. VFs
        // that would be disrupted must not be in use, unless the operator says so.
        let current = dev.num_vfs();
        let disrupted: Vec<Arc<SliceRt>> = dev
            .slices_read()
            .values()
            .filter(|s| s.kind == SliceKind::Vf)
            .filter(|s| (current > 0 && count > 0) || vf_index(&s.id).is_some_and(|i| i >= count))
            .cloned()
            .collect();
        let assigned: Vec<String> = {
            let st = self.state();
            disrupted
                .iter()
                .filter(|s| st.get().slice(&d, &s.id).tenant.is_some())
                .map(|s| s.id.clone())
                .collect()
        };
        if !assigned.is_empty() && !force {
            return Err(CoreError::Busy(format!(
                "VFs {} of {d} are assigned and would be recreated or removed; release them or pass force",
                assigned.join(", ")
            )));
        }
        let mut guards = Vec::new();
        for s in &disrupted {
            guards.push(self.claim(&Target::Slice(d.clone(), s.id.clone()), auth)?);
        }
        // VFs that go away lose their assignment; those that are recreated keep it. Removing
        // a VF does not revoke mappings of its BAR on a real kernel (a recreated VF at the same
        // address is reached through them): the mark stays, so the VF is revoked before it
        // goes to another tenant.
        self.update_state(|st| {
            st.device_mut(&d).num_vfs = Some(count);
            for s in &disrupted {
                let entry = st.slice_mut(&d, &s.id);
                let mark = entry.mapped_by.take();
                if vf_index(&s.id).is_some_and(|i| i >= count) {
                    *entry = Default::default();
                }
                entry.mapped_by = mark;
            }
        })
        .await?;
        let applied = self.apply_vf_count(&dev, count).await;
        if applied.is_ok() {
            // Their resource files went with them: an fd Map handed out maps nothing now.
            self.update_state(|st| {
                for s in &disrupted {
                    st.slice_mut(&d, &s.id).fd_handed_to = None;
                }
            })
            .await?;
        }
        applied
    }

    fn vf_slices_changed(&self, d: &str, (added, removed): (Vec<String>, Vec<String>)) {
        if !removed.is_empty() {
            self.emit(Event::SlicesRemoved {
                device: d.to_owned(),
                slices: removed,
            });
        }
        if !added.is_empty() {
            self.emit(Event::SlicesAdded {
                device: d.to_owned(),
                slices: added,
            });
        }
    }

    async fn apply_vf_count(&self, dev: &Arc<DeviceRt>, count: u32) -> Result<(), CoreError> {
        let d = dev.policy.id.clone();
        let worker = dev.clone();
        let result = tokio::task::spawn_blocking(move || {
            let sriov = worker
                .sriov
                .as_ref()
                .ok_or_else(|| "no SR-IOV".to_owned())?;
            // Unmapped before the kernel removes the functions, not after: an access through
            // a mapping of a removed resource file faults and would end the daemon.
            worker.revoke_vf_windows(worker.num_vfs(), count);
            sriov
                .set_num_vfs(count, SRIOV_TIMEOUT)
                .map_err(|e| error_chain(&e))?;
            worker.refresh_vf_slices().map_err(|e| error_chain(&e))
        })
        .await
        .map_err(CoreError::Task)?;
        let outcome = match result {
            Ok(changes) => {
                self.vf_slices_changed(&d, changes);
                Ok(())
            }
            Err(e) => {
                // The hardware may have changed part way: follow what it has now.
                if let Ok(changes) = dev.refresh_vf_slices() {
                    self.vf_slices_changed(&d, changes);
                }
                Err(CoreError::Failed(format!(
                    "setting the VF count of {d}: {e}"
                )))
            }
        };
        self.device_changed(&d);
        outcome
    }

    pub async fn configure(
        self: &Arc<Self>,
        req: &Request,
        target: Target,
        fd: OwnedFd,
        force: bool,
    ) -> Result<JobId, CoreError> {
        let checked = self.authorize_role(req, Operation::DeviceConfigure, target)?;
        let d = checked.target().device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        let Some(loader) = dev.policy.personality.clone() else {
            return Err(self.deny_by_limit(
                &checked,
                CoreError::InvalidArgument(format!("{d} has no personality loader")),
            ));
        };
        let image = self
            .take_image(&checked, fd, dev.policy.max_image_size)
            .await?;
        let auth = self.authorize_rest(checked, Some(&image.sha256)).await?;
        let assigned: Vec<String> = {
            let st = self.state();
            dev.slice_ids()
                .into_iter()
                .filter(|s| st.get().slice(&d, s).tenant.is_some())
                .collect()
        };
        if !assigned.is_empty() && !force {
            return Err(CoreError::Busy(format!(
                "slices {} of {d} are assigned; release them or pass force",
                assigned.join(", ")
            )));
        }
        let busy = self.claim(auth.target(), &auth)?;
        self.recheck_at_use(&auth)?;
        let loaded = self.state().get().device(&d).personality_sha256;
        let already = (loaded.as_deref() == Some(image.sha256.as_str()))
            .then(|| format!("personality {} is already loaded", image.sha256));
        let daemon = self.clone();
        self.spawn_job(&auth, busy, already, move |job| async move {
            daemon.load_personality(&d, &loader, image, &job).await
        })
    }

    /// Like `load_slice_image`, for a whole-device personality.
    async fn load_personality(
        &self,
        d: &str,
        loader: &LoaderSpec,
        image: Image,
        job: &JobHandle,
    ) -> Result<String, CoreError> {
        self.update_state(|st| {
            let e = st.device_mut(d);
            e.personality_sha256 = None;
            e.personality_in_flux = true;
        })
        .await?;
        self.device_changed(d);
        let sha = image.sha256.clone();
        let result = self.upload(loader, Arc::new(image.bytes), Some(job)).await;
        let loaded = result.is_ok();
        self.update_state(|st| {
            let e = st.device_mut(d);
            e.personality_in_flux = false;
            e.personality_sha256 = loaded.then(|| sha.clone());
        })
        .await?;
        self.device_changed(d);
        result.map(|()| format!("loaded personality {sha} on {d}"))
    }

    /// Device.Flash: role gate, lock, image within the size limit, signature verification
    /// (before any byte is written), the remaining gates with the image hash, one flash per
    /// device; then a job writes the inactive slot, reads it back and switches.
    pub async fn flash(
        self: &Arc<Self>,
        req: &Request,
        target: Target,
        fd: OwnedFd,
        signature: Option<Vec<u8>>,
        force: bool,
    ) -> Result<JobId, CoreError> {
        let checked = self.authorize_role(req, Operation::DeviceFlash, target)?;
        let auth = &checked;
        let d = auth.target().device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        let Some(fw) = dev.policy.firmware.clone() else {
            return Err(self.deny_by_limit(
                auth,
                CoreError::InvalidArgument(format!("{d} has no firmware backend")),
            ));
        };
        if fw.locked {
            return Err(self.deny_by_limit(
                auth,
                CoreError::Locked(format!("firmware of {d} is locked by policy")),
            ));
        }
        // `force` overrides the policy's downgrade rule, so it is an admin's: whoever may
        // reload the policy (and so could relax the rule anyway).
        if force && !self.may_reload_policy(auth) {
            return Err(self.deny_by_limit(
                auth,
                CoreError::NotAuthorized(format!(
                    "force on a flash of {d} overrides the firmware policy and needs \
                     policy.reload (an admin)"
                )),
            ));
        }
        // The signature's hash (BLAKE2b) runs beside the read and its SHA-256, on the bytes as
        // they arrive: one pass over the image, two cores.
        let check = SignatureCheck::prepare(signature.as_deref(), &fw);
        let (image, verified) = self
            .take_image_with(auth, fd, dev.policy.max_image_size, move |pieces| {
                check.run(pieces)
            })
            .await?;
        let verified = verified.map_err(|e| {
            self.deny_by_limit(
                auth,
                CoreError::VerificationFailed(format!("firmware image for {d} refused: {e}")),
            )
        })?;
        let version = image_version(&image.bytes);
        if let Err(e) = rollback::check_floor(&fw, &version) {
            return Err(self.deny_by_limit(
                auth,
                CoreError::VerificationFailed(format!("firmware image for {d} refused: {e}")),
            ));
        }
        let auth = self.authorize_rest(checked, Some(&image.sha256)).await?;
        let busy = self.claim(auth.target(), &auth)?;
        self.recheck_at_use(&auth)?;
        let active = {
            let (hw, fw) = (self.hw.clone(), fw.clone());
            tokio::task::spawn_blocking(move || {
                let st = open_backend(&hw, &fw).and_then(|b| b.status()).ok()?;
                let active = st.slot(st.active);
                active
                    .valid
                    .then(|| (active.sha256.clone(), active.version.clone(), st.active))
            })
            .await
            .ok()
            .flatten()
        };
        // Under the busy lock: no other flash changes the active firmware meanwhile.
        if let Some((_, active_version, _)) = &active {
            if let Err(e) = rollback::check_downgrade(&fw, &version, active_version, force) {
                return Err(self.deny_by_limit(
                    &auth,
                    CoreError::VerificationFailed(format!("firmware image for {d} refused: {e}")),
                ));
            }
        }
        // Idempotent: the image already booting is not written again.
        let already = active.and_then(|(sha, version, slot)| {
            (sha == image.sha256).then(|| {
                format!(
                    "firmware {version} ({sha}) is already active in slot {}",
                    slot.as_str()
                )
            })
        });
        tracing::info!(
            "{d}: flash of firmware {version} ({}), {verified}{}, for uid {}",
            image.sha256,
            if force { ", forced" } else { "" },
            auth.caller().uid
        );
        let daemon = self.clone();
        let uid = auth.caller().uid;
        self.spawn_job(&auth, busy, already, move |job| async move {
            let result = daemon.run_flash_job(&d, &fw, image, uid, &job).await;
            daemon.refresh_firmware(&d).await;
            daemon.device_changed(&d);
            result
        })
    }

    /// The flash itself on a blocking thread, with progress and cancel bridged to the job.
    async fn run_flash_job(
        &self,
        d: &str,
        fw: &FirmwarePolicy,
        image: Image,
        uid: u32,
        job: &JobHandle,
    ) -> Result<String, CoreError> {
        let hw = self.hw.clone();
        let fw = fw.clone();
        let records = self.firmware_records();
        let cancel = job.cancel_flag();
        let device = d.to_owned();
        let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
        let work = tokio::task::spawn_blocking(move || {
            let backend = open_backend(&hw, &fw).map_err(FlashError::Open)?;
            let request = FlashRequest {
                device: &device,
                image: &image.bytes,
                sha256: &image.sha256,
                started_by_uid: uid,
            };
            let mut report = |p: f64| {
                let _ = tx.send(p);
            };
            run_flash(backend.as_ref(), &records, &request, &mut report, &cancel)
        });
        let mut announced = false;
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            if !announced {
                // The in-progress record is written before the first progress report, so
                // FirmwareState now reads "flashing".
                self.refresh_firmware(d).await;
                self.device_changed(d);
                announced = true;
            }
            job.set_progress(p);
        }
        match work.await {
            Ok(result) => result.map_err(CoreError::Flash),
            Err(e) => Err(CoreError::Task(e)),
        }
    }

    pub fn firmware_records(&self) -> FirmwareRecords {
        FirmwareRecords::new(self.state().dir())
    }

    /// What the Device firmware properties show; all empty for a device without firmware.
    /// From memory (see [`Engine::refresh_firmware`]): no I/O.
    pub fn firmware_info(&self, d: &str) -> FirmwareInfo {
        self.firmware
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
            .cloned()
            .unwrap_or_default()
    }

    /// Reads a device's firmware state (its backend, the flash records) on a blocking thread
    /// and keeps it for the properties; callers announce the change.
    async fn refresh_firmware(&self, d: &str) {
        let _one_at_a_time = self.firmware_reads.lock().await;
        let fw = self
            .device(d)
            .ok()
            .and_then(|dev| dev.policy.firmware.clone());
        let info = match fw {
            Some(fw) => {
                let (hw, records) = (self.hw.clone(), self.firmware_records());
                let id = d.to_owned();
                match tokio::task::spawn_blocking(move || {
                    read_firmware_info(&hw, &fw, &records, &id)
                })
                .await
                {
                    Ok(info) => Some(info),
                    Err(e) => Some(FirmwareInfo {
                        state: format!("error: {e}"),
                        ..FirmwareInfo::default()
                    }),
                }
            }
            None => None,
        };
        let mut kept = self.firmware.lock().unwrap_or_else(|p| p.into_inner());
        match info {
            Some(info) => kept.insert(d.to_owned(), info),
            None => kept.remove(d),
        };
    }

    /// [`Engine::refresh_firmware`] for every device served, forgetting those no longer served.
    async fn refresh_all_firmware(&self) {
        let served = self.devices();
        self.firmware
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d, _| served.contains_key(d));
        for d in served.keys() {
            self.refresh_firmware(d).await;
        }
    }

    /// A flash record left by a daemon that died mid-flash becomes the device's last result.
    async fn recover_firmware(&self) {
        for (d, dev) in self.devices() {
            let Some(fw) = dev.policy.firmware.clone() else {
                continue;
            };
            let hw = self.hw.clone();
            let records = self.firmware_records();
            let recovered = tokio::task::spawn_blocking(move || {
                let backend = open_backend(&hw, &fw).ok();
                recover_interrupted(backend.as_deref(), &records, &d).map(|r| (d, r))
            })
            .await;
            if let Ok(Some((d, result))) = recovered {
                tracing::warn!("{d}: {result}");
            }
        }
    }

    async fn take_image(
        &self,
        checked: &RoleChecked,
        fd: OwnedFd,
        limit: u64,
    ) -> Result<Image, CoreError> {
        self.take_image_with(checked, fd, limit, |_| ())
            .await
            .map(|(image, ())| image)
    }

    /// Reads the caller's image within the image budget, hashing it in the same pass and
    /// handing its bytes, as they arrive, to `side` on a thread of its own (see
    /// [`read_image_with`]).
    async fn take_image_with<T, F>(
        &self,
        checked: &RoleChecked,
        fd: OwnedFd,
        limit: u64,
        side: F,
    ) -> Result<(Image, T), CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Iterator<Item = &[u8]>) -> T + Send + 'static,
    {
        // Reserve the bytes before reading any: the size is what the fd says now, and the
        // read never takes more than that (a file grown meanwhile is refused).
        let size = nix::sys::stat::fstat(&fd)
            .map(|st| u64::try_from(st.st_size).unwrap_or(0))
            .unwrap_or(0);
        let limit = limit.min(size);
        let reservation = self
            .image_budget
            .reserve(checked.caller().uid, limit)
            .map_err(|e| self.deny_by_limit(checked, CoreError::Busy(e.to_string())))?;
        let read = tokio::task::spawn_blocking(move || read_image_with(&fd, limit, Some(side)))
            .await
            .map_err(CoreError::Task)?;
        let (mut image, side_result) =
            read.map_err(|e| self.deny_by_limit(checked, CoreError::Image(e)))?;
        // The side consumer ran to the end unless it panicked: fail closed then.
        let side_result = side_result.ok_or_else(|| {
            self.deny_by_limit(
                checked,
                CoreError::Failed("the image's second reader stopped".into()),
            )
        })?;
        image.reservation = Some(reservation);
        Ok((image, side_result))
    }

    // ---------------------------------------------------------------- policy

    /// Re-reads the policy. A bad policy, or one naming hardware that cannot be opened, is
    /// refused and the old one stays in force.
    pub async fn reload_policy(&self, req: &Request) -> Result<(), CoreError> {
        self.authorize(req, Operation::PolicyReload, Target::Manager)
            .await?;
        self.reload_policy_files().await
    }

    /// The policy as the admins' files say now (SIGHUP, or [`Engine::reload_policy`]).
    pub async fn reload_policy_files(&self) -> Result<(), CoreError> {
        let path = self.policy_path.clone();
        let hw = self.hw.clone();
        let (policy, devices) = tokio::task::spawn_blocking(move || {
            let policy =
                RolePolicy::load(&path).map_err(|e| CoreError::InvalidArgument(error_chain(&e)))?;
            let devices = open_devices(&hw, &policy);
            Ok::<_, CoreError>((policy, devices))
        })
        .await
        .map_err(CoreError::Task)??;
        let old = self.policy();
        if old.revision == policy.revision {
            return Ok(());
        }
        // Devices whose policy is unchanged keep their runtime (and any running operation).
        let merged: BTreeMap<String, Arc<DeviceRt>> = {
            let current = self.devices.read().unwrap_or_else(|p| p.into_inner());
            devices
                .into_iter()
                .map(|(id, fresh)| match current.get(&id) {
                    Some(cur) if cur.policy == fresh.policy => (id, cur.clone()),
                    _ => (id, fresh),
                })
                .collect()
        };
        let revision = policy.revision.clone();
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.departed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|d| !merged.contains_key(d));
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = merged;
        tracing::info!("policy reloaded, revision {revision}");
        // A device's firmware entry may be new or point elsewhere now.
        self.refresh_all_firmware().await;
        self.emit(Event::PolicyReloaded { revision });
        Ok(())
    }

    // ---------------------------------------------------------------- hotplug

    /// Follows a kernel uevent: the device of the policy at that PCI address is served from
    /// the moment its function is added and withdrawn the moment it is removed. Addresses the
    /// policy does not name are ignored.
    pub async fn pci_event(&self, event: &PciUevent) {
        match event.action {
            PciAction::Add => self.pci_added(&event.bdf).await,
            PciAction::Remove => self.pci_removed(&event.bdf).await,
        }
    }

    /// After uevents were lost: every device of the policy is served exactly when its function
    /// is on the bus.
    pub async fn resync_presence(&self) {
        for dp in self.policy().devices.iter() {
            let Ok(bdf) = PciBdf::parse(&dp.pci) else {
                continue;
            };
            let present = self.hw.pci_device_dir(&bdf).exists();
            let served = self
                .devices
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&dp.id);
            if present && !served {
                self.pci_added(&bdf).await;
            } else if !present && served {
                self.pci_removed(&bdf).await;
            }
        }
    }

    async fn pci_removed(&self, bdf: &PciBdf) {
        let Some(id) = self.policy_device_at(bdf).map(|dp| dp.id) else {
            return;
        };
        let Some(dev) = self
            .devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        else {
            return;
        };
        // Wakes the device's jobs, which fail; reads and writes still in flight see it too.
        dev.mark_removed();
        self.departed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        tracing::warn!(
            "{id}: PCI function {bdf} was removed; its slices are withdrawn, their assignments \
             are kept for its return"
        );
        self.emit(Event::DevicePresence {
            device: id.clone(),
            present: false,
        });
        // The windows are unmapped when the last request holding them ends (no fault: the
        // kernel leaves a dead page behind a removed function's mapping).
        drop(dev);
        if let Err(e) = self.update_state(|st| forget_hardware_state(st, &id)).await {
            tracing::error!("{id}: {}", error_chain(&e));
        }
    }

    async fn pci_added(&self, bdf: &PciBdf) {
        let Some(dp) = self.policy_device_at(bdf) else {
            return;
        };
        let id = dp.id.clone();
        if self
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            return;
        }
        let hw = self.hw.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + ARRIVAL_SETTLE;
            let mut attempts = 1u32;
            loop {
                match DeviceRt::open(&hw, &dp) {
                    Ok(dev) => return Ok((dev, attempts)),
                    Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(ARRIVAL_RETRY),
                }
                attempts += 1;
            }
        })
        .await;
        let (dev, attempts) = match opened {
            Ok(Ok((dev, attempts))) => (Arc::new(dev), attempts),
            Ok(Err(e)) => {
                tracing::error!(
                    "{id}: PCI function {bdf} was added but cannot be served: {}",
                    error_chain(&e)
                );
                return;
            }
            Err(e) => {
                tracing::error!("{id}: {}", error_chain(&e));
                return;
            }
        };
        // A function that comes (back) onto the bus is fresh hardware: nothing is loaded.
        if let Err(e) = self.update_state(|st| forget_hardware_state(st, &id)).await {
            tracing::error!("{id}: {}", error_chain(&e));
        }
        {
            let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
            if devices.contains_key(&id) {
                return;
            }
            devices.insert(id.clone(), dev.clone());
        }
        self.departed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        tracing::info!(
            "{id}: PCI function {bdf} was added; serving it (opened at attempt {attempts})"
        );
        self.refresh_firmware(&id).await;
        self.emit(Event::DevicePresence {
            device: id.clone(),
            present: true,
        });
        let wanted = self.state().get().device(&id).num_vfs;
        if let Some(n) = wanted {
            if dev.sriov.is_some() && n > 0 && dev.num_vfs() != n && n <= dev.max_vfs() {
                tracing::info!("restoring {n} VFs on {id}");
                if let Err(e) = self.apply_vf_count(&dev, n).await {
                    tracing::error!("{e}");
                }
            }
        }
    }

    fn policy_device_at(&self, bdf: &PciBdf) -> Option<accelgate_policy::DevicePolicy> {
        self.policy()
            .devices
            .iter()
            .find(|dp| dp.pci == bdf.as_str())
            .cloned()
    }

    // ---------------------------------------------------------------- start-up repair

    async fn restore_vf_counts(&self) {
        for (d, dev) in self.devices() {
            let wanted = self.state().get().device(&d).num_vfs;
            if let Some(n) = wanted {
                if dev.sriov.is_some() && dev.num_vfs() != n && n <= dev.max_vfs() {
                    tracing::info!("restoring {n} VFs on {d}");
                    if let Err(e) = self.apply_vf_count(&dev, n).await {
                        tracing::error!("{e}");
                    }
                }
            }
        }
    }

    /// Images that were being loaded when the daemon died are in an unknown state: blank them.
    async fn recover_in_flux(&self) {
        let in_flux: Vec<(String, String)> = self
            .state()
            .get()
            .slices
            .iter()
            .filter(|(_, s)| s.image_in_flux)
            .filter_map(|(k, _)| k.split_once('/').map(|(d, s)| (d.to_owned(), s.to_owned())))
            .collect();
        for (d, s) in in_flux {
            let Ok((_, slice)) = self.slice(&d, &s) else {
                continue;
            };
            tracing::warn!("{d}/{s}: an image load was interrupted; blanking the slice");
            if let Err(e) = self.scrub(&d, &s, &slice).await {
                tracing::error!("{d}/{s}: {e}");
            }
        }
        let devices: Vec<String> = self
            .state()
            .get()
            .devices
            .iter()
            .filter(|(_, d)| d.personality_in_flux)
            .map(|(k, _)| k.clone())
            .collect();
        for d in devices {
            tracing::warn!("{d}: a personality load was interrupted; the personality is unknown");
            let _ = self
                .update_state(|st| st.device_mut(&d).personality_in_flux = false)
                .await;
        }
    }

    // ---------------------------------------------------------------- helpers

    fn target_slice(&self, d: &Decision) -> Result<(Arc<DeviceRt>, Arc<SliceRt>), CoreError> {
        match d.target() {
            Target::Slice(d, s) => self.slice(d, s),
            _ => Err(CoreError::Failed("not a slice target".into())),
        }
    }

    /// Whether the caller's roles grant `policy.reload`: what makes an admin for the options
    /// that override the policy.
    fn may_reload_policy(&self, auth: &Decision) -> bool {
        let caller = auth.caller();
        matches!(
            self.policy().decide(
                caller.uid,
                &caller.gids,
                Operation::PolicyReload,
                None,
                false
            ),
            accelgate_policy::RoleDecision::Allow { .. }
        )
    }

    /// Takes the busy lock of a slice or device for the rest of an operation, or says Busy.
    fn claim(
        &self,
        target: &Target,
        auth: &Decision,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, CoreError> {
        self.busy_locks
            .try_claim(&target.to_string())
            .ok_or_else(|| self.busy(auth))
    }

    fn busy(&self, auth: &Decision) -> CoreError {
        CoreError::Busy(format!(
            "another operation on {} is running; retry later",
            auth.target()
        ))
    }
}

/// The driver the device's policy names to revoke mappings of its VFs.
fn revoke_driver(dev: &DeviceRt) -> Option<String> {
    dev.policy.vfs.as_ref()?.revoke_driver.clone()
}

/// What handing a VF over did.
struct HandedOver {
    revoked: Result<Revoked, RevokeError>,
    reset: Result<(), PciError>,
    driver: String,
}

impl HandedOver {
    /// The function reset's outcome as `Release` treats it: a VF without a reset method keeps
    /// its scrub (logged); a reset that failed fails the operation.
    fn reset_outcome(&self, d: &str, s: &str) -> Result<(), CoreError> {
        match &self.reset {
            Ok(()) => Ok(()),
            Err(e @ PciError::NoReset(_)) => {
                tracing::warn!(
                    "{d}/{s}: {}; only its writable ranges were zeroed",
                    error_chain(e)
                );
                Ok(())
            }
            Err(e) => Err(CoreError::Failed(format!(
                "resetting {d}/{s}: {}",
                error_chain(e)
            ))),
        }
    }
}

/// The refusal for a device whose PCI function left the bus.
fn removed_error(id: &str, pci: &str) -> CoreError {
    CoreError::NotFound(format!(
        "device {id} is not on the PCI bus: its function {pci} was removed; it is served \
         again when the function is added back"
    ))
}

/// What a device's hardware held and loses when its function leaves or (re)joins the bus:
/// loaded images and personality. Assignments, the wanted VF count and the record of a live
/// mapping stay: the mapping reaches whatever function is later at the same address, so it
/// is revoked before anyone else gets the slice.
fn forget_hardware_state(st: &mut PersistentState, device: &str) {
    let prefix = format!("{device}/");
    for (_, slice) in st
        .slices
        .iter_mut()
        .filter(|(key, _)| key.starts_with(&prefix))
    {
        slice.image_sha256 = None;
        slice.image_in_flux = false;
        // The function's files are gone, and with them what an fd of them could map.
        slice.fd_handed_to = None;
    }
    let dev = st.device_mut(device);
    dev.personality_sha256 = None;
    dev.personality_in_flux = false;
}

/// Opens every device of the policy that the hardware has; a device that cannot be opened is
/// logged and left out (the others are still served).
fn open_devices(hw: &HwRoot, policy: &RolePolicy) -> BTreeMap<String, Arc<DeviceRt>> {
    let mut out = BTreeMap::new();
    for dp in &policy.devices {
        match DeviceRt::open(hw, dp) {
            Ok(dev) => {
                out.insert(dp.id.clone(), Arc::new(dev));
            }
            Err(e) => tracing::error!("{}; the device is not served", error_chain(&e)),
        }
    }
    out
}

/// A slice whose function was removed while a request held it: NotFound, saying why; one
/// being handed over: Busy; one without a window (left so by a hand-over, or failing to map
/// on first use): Failed.
fn gone(e: super::devices::DeviceError) -> CoreError {
    use super::devices::DeviceError;
    match e {
        DeviceError::Gone { .. } => CoreError::NotFound(e.to_string()),
        DeviceError::HandingOver { .. } => CoreError::Busy(e.to_string()),
        // Left without a window by a hand-over, or a VF's window failed to map on its first
        // use (as any opening can).
        other => CoreError::Failed(error_chain(&other)),
    }
}

/// A device's firmware state as its backend and the flash records say now. Blocking (MTD
/// reads, files in the state directory).
fn read_firmware_info(
    hw: &HwRoot,
    fw: &FirmwarePolicy,
    records: &FirmwareRecords,
    d: &str,
) -> FirmwareInfo {
    let last_result = records
        .last_result(d)
        .map(|r| r.to_string())
        .unwrap_or_default();
    let flashing = records.in_progress(d).is_some();
    match open_backend(hw, fw).and_then(|b| b.status()) {
        Ok(st) => FirmwareInfo {
            version: st.active_version(),
            active_slot: st.active.as_str().to_owned(),
            state: if flashing { "flashing" } else { "idle" }.to_owned(),
            last_result,
        },
        Err(e) => FirmwareInfo {
            version: String::new(),
            active_slot: String::new(),
            state: format!("error: {e}"),
            last_result,
        },
    }
}
