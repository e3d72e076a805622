//! The daemon's core: the device model, the gates every request passes, and the operations.
//!
//! D-Bus objects (module `bus`) are thin: they name their target and call in here. Every
//! operation starts with `authorize`, which finds the method's operation in the one table
//! (`authz::METHOD_TABLE`), so no handler can pick the wrong operation or skip a gate.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use zbus::message::Header;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use crate::error::AccelError;
use crate::names::{device_path, slice_path};
use crate::policy::{FirmwarePolicy, LoaderSpec, RolePolicy, SliceKind};

use super::audit::AuditLog;
use super::authz::{self, Target};
use super::bus;
use super::caller::CallerCache;
use super::devices::{DeviceRt, SliceRt};
use super::firmware::{
    image_version, open_backend, recover_interrupted, run_flash, verify_image, FirmwareRecords,
    FlashError, FlashRequest,
};
pub use super::gatekeeper::Authorized;
use super::hw::{FwUpload, FwUploadError, HwRoot, Width, WindowError};
use super::image::{read_image, Image, ImageError};
use super::jobs::{JobHandle, Jobs};
use super::state::StateStore;
use super::tenant::Tenant;

/// Size of the all-zero image that blanks a region when it is released (the simulated regions,
/// like partial-reconfiguration regions loaded with a blank bitstream, read it as "empty").
/// Small enough for drivers with small upload limits (the kernel's test_firmware: 2048 bytes).
const BLANK_IMAGE_SIZE: usize = 1024;
/// Longest an image upload may take before it is reported failed.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the kernel may take to create or remove VFs.
const SRIOV_TIMEOUT: Duration = Duration::from_secs(30);

/// Options keys understood by the calls that take an `a{sv}`.
pub type Options = HashMap<String, OwnedVariant>;

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

/// The daemon.
pub struct Daemon {
    pub conn: Connection,
    pub hw: HwRoot,
    policy_path: PathBuf,
    policy: RwLock<Arc<RolePolicy>>,
    devices: RwLock<BTreeMap<String, Arc<DeviceRt>>>,
    state: Mutex<StateStore>,
    pub callers: Arc<CallerCache>,
    pub audit: AuditLog,
    pub(super) gates: Vec<Box<dyn authz::Gate>>,
    jobs: Jobs,
    /// Devices and slices with an operation running.
    busy_locks: super::busy::BusyLocks,
    /// Object paths of the devices and slices on the bus now.
    pub exported: tokio::sync::Mutex<std::collections::BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot connect the caller cache to the bus")]
    Bus(#[source] zbus::Error),
    #[error("cannot restore state")]
    State(#[source] super::state::StateError),
}

impl Daemon {
    /// Builds the daemon over an open bus connection: opens the devices the policy names,
    /// repairs what a crash left in flux, and restores VF counts. Objects are exported by
    /// `bus::export_all` afterwards.
    pub async fn new(
        conn: Connection,
        hw: HwRoot,
        policy_path: PathBuf,
        policy: RolePolicy,
        state: StateStore,
        audit: AuditLog,
        gates: Vec<Box<dyn authz::Gate>>,
    ) -> Result<Arc<Daemon>, ServiceError> {
        let callers = CallerCache::new(&conn).await.map_err(ServiceError::Bus)?;
        let devices = open_devices(&hw, &policy);
        let daemon = Arc::new(Daemon {
            jobs: Jobs::new(conn.clone()),
            conn,
            hw,
            policy_path,
            policy: RwLock::new(Arc::new(policy)),
            devices: RwLock::new(devices),
            state: Mutex::new(state),
            callers,
            audit,
            gates,
            busy_locks: Default::default(),
            exported: Default::default(),
        });
        daemon.restore_vf_counts().await;
        daemon.recover_in_flux().await;
        daemon.recover_firmware().await;
        Ok(daemon)
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

    pub fn device(&self, id: &str) -> Result<Arc<DeviceRt>, AccelError> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| AccelError::NotFound(format!("no device {id}")))
    }

    fn slice(
        &self,
        device: &str,
        slice: &str,
    ) -> Result<(Arc<DeviceRt>, Arc<SliceRt>), AccelError> {
        let dev = self.device(device)?;
        let s = dev
            .slice(slice)
            .ok_or_else(|| AccelError::NotFound(format!("no slice {device}/{slice}")))?;
        Ok((dev, s))
    }

    pub fn state(&self) -> MutexGuard<'_, StateStore> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists a change of state; a failure changes nothing and is reported as Failed.
    fn update_state<R>(
        &self,
        change: impl FnOnce(&mut super::state::PersistentState) -> R,
    ) -> Result<R, AccelError> {
        self.state().update(change).map_err(|e| {
            tracing::error!("{}", error_chain(&e));
            AccelError::Failed("cannot persist state; nothing was changed".into())
        })
    }

    // ---------------------------------------------------------------- slice operations

    pub fn read(
        &self,
        auth: &Authorized,
        offset: u64,
        count: u32,
        width: u8,
    ) -> Result<Vec<u64>, AccelError> {
        let (_, slice) = self.target_slice(auth)?;
        let width =
            Width::try_from(width).map_err(|e| self.deny_by_limit(auth, window_error(e)))?;
        slice
            .window
            .read(offset, count, width)
            .map_err(|e| self.deny_by_limit(auth, window_error(e)))
    }

    pub fn write(
        &self,
        auth: &Authorized,
        offset: u64,
        values: &[u64],
        width: u8,
    ) -> Result<(), AccelError> {
        let (_, slice) = self.target_slice(auth)?;
        let width =
            Width::try_from(width).map_err(|e| self.deny_by_limit(auth, window_error(e)))?;
        let len = (values.len() as u64).checked_mul(width.bytes());
        let end = len.and_then(|l| offset.checked_add(l));
        match end {
            Some(end) if end <= slice.window.size() && !slice.may_write(offset, end) => {
                return Err(self.deny_by_limit(
                    auth,
                    AccelError::InvalidArgument(format!(
                        "bytes {offset:#x}..{end:#x} of {} are not all inside its writable ranges",
                        auth.target
                    )),
                ));
            }
            // Out-of-window and overflow cases get the window's own precise error below.
            _ => {}
        }
        slice
            .window
            .write(offset, values, width)
            .map_err(|e| self.deny_by_limit(auth, window_error(e)))
    }

    pub fn map(&self, auth: &Authorized) -> Result<OwnedFd, AccelError> {
        let (_, slice) = self.target_slice(auth)?;
        let Some(resource) = &slice.mappable_resource else {
            return Err(self.deny_by_limit(
                auth,
                AccelError::InvalidArgument(format!(
                    "{} is a window inside a shared BAR and cannot be mapped; use Read and Write",
                    auth.target
                )),
            ));
        };
        // A BAR a kernel driver owns cannot be mapped (CONFIG_IO_STRICT_DEVMEM): say so here
        // rather than let the caller's mmap fail with EINVAL.
        let driver = resource
            .parent()
            .and_then(|function| std::fs::read_link(function.join("driver")).ok());
        if let Some(driver) = driver.as_ref().and_then(|d| d.file_name()) {
            return Err(AccelError::Failed(format!(
                "{} cannot be mapped: the kernel driver {} owns its BAR",
                auth.target,
                driver.to_string_lossy()
            )));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(resource)
            .map(OwnedFd::from)
            .map_err(|e| AccelError::Failed(format!("cannot open the BAR of {}: {e}", auth.target)))
    }

    pub async fn assign(&self, auth: &Authorized, tenant: &str) -> Result<(), AccelError> {
        self.target_slice(auth)?;
        let tenant =
            Tenant::resolve(tenant).map_err(|e| AccelError::InvalidArgument(e.to_string()))?;
        let _busy = self.claim(&auth.target, auth)?;
        let (d, s) = (
            auth.target.device().unwrap_or_default(),
            auth.target.slice().unwrap_or_default(),
        );
        let changed = self.update_state(|st| {
            let entry = st.slice_mut(d, s);
            match &entry.tenant {
                Some(t) if *t == tenant => Ok(false),
                Some(t) => Err(AccelError::Busy(format!(
                    "{d}/{s} is assigned to {t}; release it before assigning it to someone else"
                ))),
                None => {
                    entry.tenant = Some(tenant.clone());
                    Ok(true)
                }
            }
        })??;
        if changed {
            bus::slice_changed(&self.conn, d, s).await;
        }
        Ok(())
    }

    pub async fn release(&self, auth: &Authorized) -> Result<(), AccelError> {
        let (_, slice) = self.target_slice(auth)?;
        let _busy = self.claim(&auth.target, auth)?;
        let (d, s) = (
            auth.target.device().unwrap_or_default(),
            auth.target.slice().unwrap_or_default(),
        );
        if self.state().get().slice(d, s).tenant.is_none() {
            return Ok(());
        }
        self.scrub(d, s, &slice).await?;
        self.update_state(|st| st.slice_mut(d, s).tenant = None)?;
        bus::slice_changed(&self.conn, d, s).await;
        Ok(())
    }

    /// Makes a slice safe for the next tenant: writable registers zeroed, image unloaded. The
    /// image is marked in flux first, so a crash half-way is finished on the next start.
    async fn scrub(&self, d: &str, s: &str, slice: &Arc<SliceRt>) -> Result<(), AccelError> {
        for &(start, end) in &slice.writable {
            slice
                .window
                .zero(start, end)
                .map_err(|e| AccelError::Failed(format!("scrubbing {d}/{s}: {e}")))?;
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
            })?;
            let blank = vec![0u8; BLANK_IMAGE_SIZE];
            self.upload(loader, Arc::new(blank), None).await?;
            self.update_state(|st| st.slice_mut(d, s).image_in_flux = false)?;
        }
        Ok(())
    }

    pub async fn program(
        self: &Arc<Self>,
        hdr: &Header<'_>,
        target: Target,
        fd: OwnedFd,
    ) -> Result<OwnedObjectPath, AccelError> {
        let auth = self.authorize_role(hdr, target).await?;
        let (_, slice) = self.target_slice(&auth)?;
        let Some(loader) = slice.loader.clone() else {
            return Err(self.deny_by_limit(
                &auth,
                AccelError::InvalidArgument(format!(
                    "{} has no image loader; only regions can be programmed",
                    auth.target
                )),
            ));
        };
        let limit = self
            .device(auth.target.device().unwrap_or_default())?
            .policy
            .max_image_size;
        let image = self.take_image(&auth, fd, limit).await?;
        self.authorize_rest(&auth, Some(&image.sha256)).await?;
        let (d, s) = (
            auth.target.device().unwrap_or_default().to_owned(),
            auth.target.slice().unwrap_or_default().to_owned(),
        );
        let path = slice_object_path(&d, &s)?;
        let busy = self.claim(&auth.target, &auth)?;
        let loaded = self.state().get().slice(&d, &s).image_sha256;
        let already = (loaded.as_deref() == Some(image.sha256.as_str()))
            .then(|| format!("image {} is already loaded", image.sha256));
        let daemon = self.clone();
        self.spawn_job(&auth, path, busy, already, move |job| async move {
            daemon.load_slice_image(&d, &s, &loader, image, &job).await
        })
        .await
    }

    /// Puts a job on the bus and runs `work` for it in the background, holding `busy` until it
    /// ends. With `already` (the request is a repeat of what is in effect), the job ends at once
    /// with that message: retries by orchestrators stay cheap and uniform.
    async fn spawn_job<W, Fut>(
        self: &Arc<Self>,
        auth: &Authorized,
        target_path: OwnedObjectPath,
        busy: tokio::sync::OwnedMutexGuard<()>,
        already: Option<String>,
        work: W,
    ) -> Result<OwnedObjectPath, AccelError>
    where
        W: FnOnce(JobHandle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<String, AccelError>> + Send + 'static,
    {
        let job = self
            .jobs
            .start(
                self,
                auth.operation,
                auth.target.clone(),
                target_path,
                auth.caller.uid,
            )
            .await?;
        let job_path = job.path.clone();
        if let Some(message) = already {
            job.finish(Ok(message)).await;
            return Ok(job_path);
        }
        tokio::spawn(async move {
            let _busy = busy;
            let result = work(job.clone()).await;
            job.finish(result).await;
        });
        Ok(job_path)
    }

    async fn load_slice_image(
        &self,
        d: &str,
        s: &str,
        loader: &LoaderSpec,
        image: Image,
        job: &JobHandle,
    ) -> Result<String, AccelError> {
        self.update_state(|st| {
            let e = st.slice_mut(d, s);
            e.image_sha256 = None;
            e.image_in_flux = true;
        })?;
        bus::slice_changed(&self.conn, d, s).await;
        let sha = image.sha256.clone();
        let result = self.upload(loader, Arc::new(image.bytes), Some(job)).await;
        // Whatever happened, the hardware is in a known state again: loaded, or not loaded.
        let loaded = result.is_ok();
        self.update_state(|st| {
            let e = st.slice_mut(d, s);
            e.image_in_flux = false;
            e.image_sha256 = loaded.then(|| sha.clone());
        })?;
        bus::slice_changed(&self.conn, d, s).await;
        result.map(|()| format!("loaded image {sha} into {d}/{s}"))
    }

    /// Uploads bytes through a loader on a blocking thread, forwarding progress to the job and
    /// the job's cancel request to the loader.
    async fn upload(
        &self,
        loader: &LoaderSpec,
        bytes: Arc<Vec<u8>>,
        job: Option<&JobHandle>,
    ) -> Result<(), AccelError> {
        let fw = FwUpload::open(&self.hw, &loader.name).map_err(|e| {
            AccelError::Failed(format!("image loader {}: {}", loader.name, error_chain(&e)))
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
                job.set_progress(p).await;
            }
        }
        match work.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(FwUploadError::Cancelled)) => Err(AccelError::Cancelled(
                "cancelled before anything was programmed".into(),
            )),
            Ok(Err(FwUploadError::Busy(_))) => {
                Err(AccelError::Busy(format!("loader {} is busy", loader.name)))
            }
            Ok(Err(e)) => Err(AccelError::Failed(format!(
                "loader {}: {}",
                loader.name,
                error_chain(&e)
            ))),
            Err(e) => Err(AccelError::Failed(format!("loader task failed: {e}"))),
        }
    }

    // ---------------------------------------------------------------- device operations

    pub async fn set_vf_count(
        &self,
        auth: &Authorized,
        count: u32,
        force: bool,
    ) -> Result<(), AccelError> {
        let d = auth.target.device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        if dev.sriov.is_none() || dev.policy.vfs.is_none() {
            return Err(self.deny_by_limit(
                auth,
                AccelError::InvalidArgument(format!("{d} has no SR-IOV VFs to configure")),
            ));
        }
        let max = dev.max_vfs();
        if count > max {
            return Err(self.deny_by_limit(
                auth,
                AccelError::InvalidArgument(format!("{d} allows at most {max} VFs, not {count}")),
            ));
        }
        let _busy = self.claim(&auth.target, auth)?;
        if dev.num_vfs() == count {
            // Still record the wish, so a restart restores it.
            self.update_state(|st| st.device_mut(&d).num_vfs = Some(count))?;
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
            .filter(|s| {
                (current > 0 && count > 0)
                    || super::devices::vf_index(&s.id).is_some_and(|i| i >= count)
            })
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
            return Err(AccelError::Busy(format!(
                "VFs {} of {d} are assigned and would be recreated or removed; release them or pass force",
                assigned.join(", ")
            )));
        }
        let mut guards = Vec::new();
        for s in &disrupted {
            guards.push(self.claim(&Target::Slice(d.clone(), s.id.clone()), auth)?);
        }
        // VFs that go away lose their assignment; those that are recreated keep it.
        self.update_state(|st| {
            st.device_mut(&d).num_vfs = Some(count);
            for s in &disrupted {
                if super::devices::vf_index(&s.id).is_some_and(|i| i >= count) {
                    *st.slice_mut(&d, &s.id) = Default::default();
                }
            }
        })?;
        self.apply_vf_count(&dev, count).await
    }

    async fn apply_vf_count(&self, dev: &Arc<DeviceRt>, count: u32) -> Result<(), AccelError> {
        let d = dev.policy.id.clone();
        let worker = dev.clone();
        let result = tokio::task::spawn_blocking(move || {
            let sriov = worker
                .sriov
                .as_ref()
                .ok_or_else(|| "no SR-IOV".to_owned())?;
            sriov
                .set_num_vfs(count, SRIOV_TIMEOUT)
                .map_err(|e| error_chain(&e))?;
            worker.refresh_vf_slices().map_err(|e| error_chain(&e))
        })
        .await
        .map_err(|e| AccelError::Failed(e.to_string()))?;
        let outcome = match result {
            Ok(changes) => {
                bus::vf_slices_changed(self, &d, &changes.0, &changes.1).await;
                Ok(())
            }
            Err(e) => {
                // The hardware may have changed part way: follow what it has now.
                if let Ok(changes) = dev.refresh_vf_slices() {
                    bus::vf_slices_changed(self, &d, &changes.0, &changes.1).await;
                }
                Err(AccelError::Failed(format!(
                    "setting the VF count of {d}: {e}"
                )))
            }
        };
        bus::device_changed(&self.conn, &d).await;
        outcome
    }

    pub async fn configure(
        self: &Arc<Self>,
        hdr: &Header<'_>,
        target: Target,
        fd: OwnedFd,
        force: bool,
    ) -> Result<OwnedObjectPath, AccelError> {
        let auth = self.authorize_role(hdr, target).await?;
        let d = auth.target.device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        let Some(loader) = dev.policy.personality.clone() else {
            return Err(self.deny_by_limit(
                &auth,
                AccelError::InvalidArgument(format!("{d} has no personality loader")),
            ));
        };
        let image = self
            .take_image(&auth, fd, dev.policy.max_image_size)
            .await?;
        self.authorize_rest(&auth, Some(&image.sha256)).await?;
        let assigned: Vec<String> = {
            let st = self.state();
            dev.slice_ids()
                .into_iter()
                .filter(|s| st.get().slice(&d, s).tenant.is_some())
                .collect()
        };
        if !assigned.is_empty() && !force {
            return Err(AccelError::Busy(format!(
                "slices {} of {d} are assigned; release them or pass force",
                assigned.join(", ")
            )));
        }
        let busy = self.claim(&auth.target, &auth)?;
        let path = OwnedObjectPath::try_from(device_path(&d))
            .map_err(|e| AccelError::Failed(e.to_string()))?;
        let loaded = self.state().get().device(&d).personality_sha256;
        let already = (loaded.as_deref() == Some(image.sha256.as_str()))
            .then(|| format!("personality {} is already loaded", image.sha256));
        let daemon = self.clone();
        self.spawn_job(&auth, path, busy, already, move |job| async move {
            daemon.load_personality(&d, &loader, image, &job).await
        })
        .await
    }

    /// Like `load_slice_image`, for a whole-device personality.
    async fn load_personality(
        &self,
        d: &str,
        loader: &LoaderSpec,
        image: Image,
        job: &JobHandle,
    ) -> Result<String, AccelError> {
        self.update_state(|st| {
            let e = st.device_mut(d);
            e.personality_sha256 = None;
            e.personality_in_flux = true;
        })?;
        bus::device_changed(&self.conn, d).await;
        let sha = image.sha256.clone();
        let result = self.upload(loader, Arc::new(image.bytes), Some(job)).await;
        let loaded = result.is_ok();
        self.update_state(|st| {
            let e = st.device_mut(d);
            e.personality_in_flux = false;
            e.personality_sha256 = loaded.then(|| sha.clone());
        })?;
        bus::device_changed(&self.conn, d).await;
        result.map(|()| format!("loaded personality {sha} on {d}"))
    }

    /// Device.Flash: role gate, lock, image within the size limit, signature verification
    /// (before any byte is written), the remaining gates with the image hash, one flash per
    /// device; then a job writes the inactive slot, reads it back and switches.
    pub async fn flash(
        self: &Arc<Self>,
        hdr: &Header<'_>,
        target: Target,
        fd: OwnedFd,
        signature: Option<Vec<u8>>,
    ) -> Result<OwnedObjectPath, AccelError> {
        let auth = self.authorize_role(hdr, target).await?;
        let d = auth.target.device().unwrap_or_default().to_owned();
        let dev = self.device(&d)?;
        let Some(fw) = dev.policy.firmware.clone() else {
            return Err(self.deny_by_limit(
                &auth,
                AccelError::InvalidArgument(format!("{d} has no firmware backend")),
            ));
        };
        if fw.locked {
            return Err(self.deny_by_limit(
                &auth,
                AccelError::Locked(format!("firmware of {d} is locked by policy")),
            ));
        }
        let image = self
            .take_image(&auth, fd, dev.policy.max_image_size)
            .await?;
        // Verification hashes the whole image (BLAKE2b): keep it off the runtime's threads.
        let (image, verified) = {
            let policy = fw.clone();
            tokio::task::spawn_blocking(move || {
                let verified = verify_image(&image.bytes, signature.as_deref(), &policy);
                (image, verified)
            })
            .await
            .map_err(|e| AccelError::Failed(format!("verification task failed: {e}")))?
        };
        let verified = verified.map_err(|e| {
            self.deny_by_limit(
                &auth,
                AccelError::VerificationFailed(format!("firmware image for {d} refused: {e}")),
            )
        })?;
        self.authorize_rest(&auth, Some(&image.sha256)).await?;
        let busy = self.claim(&auth.target, &auth)?;
        let path = OwnedObjectPath::try_from(device_path(&d))
            .map_err(|e| AccelError::Failed(e.to_string()))?;
        // Idempotent: the image already booting is not written again.
        let already = {
            let (hw, fw, sha) = (self.hw.clone(), fw.clone(), image.sha256.clone());
            tokio::task::spawn_blocking(move || {
                let st = open_backend(&hw, &fw).and_then(|b| b.status()).ok()?;
                let active = st.slot(st.active);
                (active.valid && active.sha256 == sha).then(|| {
                    format!(
                        "firmware {} ({sha}) is already active in slot {}",
                        active.version,
                        st.active.as_str()
                    )
                })
            })
            .await
            .ok()
            .flatten()
        };
        tracing::info!(
            "{d}: flash of firmware {} ({}), {verified}, for uid {}",
            image_version(&image.bytes),
            image.sha256,
            auth.caller.uid
        );
        let daemon = self.clone();
        let uid = auth.caller.uid;
        self.spawn_job(&auth, path, busy, already, move |job| async move {
            let result = daemon.run_flash_job(&d, &fw, image, uid, &job).await;
            bus::device_changed(&daemon.conn, &d).await;
            result
        })
        .await
    }

    /// The flash itself on a blocking thread, with progress and cancel bridged to the job.
    async fn run_flash_job(
        &self,
        d: &str,
        fw: &FirmwarePolicy,
        image: Image,
        uid: u32,
        job: &JobHandle,
    ) -> Result<String, AccelError> {
        let hw = self.hw.clone();
        let fw = fw.clone();
        let records = self.firmware_records();
        let cancel = job.cancel_flag();
        let device = d.to_owned();
        let (tx, mut rx) = tokio::sync::watch::channel(0.0f64);
        let work = tokio::task::spawn_blocking(move || {
            let backend = open_backend(&hw, &fw)
                .map_err(|e| FlashError::Failed(format!("nothing was written: {e}")))?;
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
                bus::device_changed(&self.conn, d).await;
                announced = true;
            }
            job.set_progress(p).await;
        }
        match work.await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(FlashError::Cancelled(m))) => Err(AccelError::Cancelled(m)),
            Ok(Err(FlashError::Busy(m))) => Err(AccelError::Busy(m)),
            Ok(Err(FlashError::Failed(m))) => Err(AccelError::Failed(m)),
            Err(e) => Err(AccelError::Failed(format!("flash task failed: {e}"))),
        }
    }

    pub fn firmware_records(&self) -> FirmwareRecords {
        FirmwareRecords::new(self.state().dir())
    }

    /// What the Device firmware properties show; all empty for a device without firmware.
    pub fn firmware_info(&self, d: &str) -> FirmwareInfo {
        let Some(fw) = self
            .device(d)
            .ok()
            .and_then(|dev| dev.policy.firmware.clone())
        else {
            return FirmwareInfo::default();
        };
        let records = self.firmware_records();
        let last_result = records
            .last_result(d)
            .map(|r| r.to_string())
            .unwrap_or_default();
        let flashing = records.in_progress(d).is_some();
        match open_backend(&self.hw, &fw).and_then(|b| b.status()) {
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
        auth: &Authorized,
        fd: OwnedFd,
        limit: u64,
    ) -> Result<Image, AccelError> {
        let read = tokio::task::spawn_blocking(move || read_image(&fd, limit))
            .await
            .map_err(|e| AccelError::Failed(e.to_string()))?;
        read.map_err(|e| {
            let err = match e {
                ImageError::Read(_) => AccelError::InvalidArgument(error_chain(&e)),
                _ => AccelError::InvalidArgument(e.to_string()),
            };
            self.deny_by_limit(auth, err)
        })
    }

    // ---------------------------------------------------------------- policy

    /// Re-reads the policy. A bad policy, or one naming hardware that cannot be opened, is
    /// refused and the old one stays in force.
    pub async fn reload_policy(self: &Arc<Self>) -> Result<(), AccelError> {
        let path = self.policy_path.clone();
        let hw = self.hw.clone();
        let (policy, devices) = tokio::task::spawn_blocking(move || {
            let policy = RolePolicy::load(&path)
                .map_err(|e| AccelError::InvalidArgument(error_chain(&e)))?;
            let devices = open_devices(&hw, &policy);
            Ok::<_, AccelError>((policy, devices))
        })
        .await
        .map_err(|e| AccelError::Failed(e.to_string()))??;
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
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = merged;
        tracing::info!("policy reloaded, revision {revision}");
        bus::export_all(self).await;
        Ok(())
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
            let _ = self.update_state(|st| st.device_mut(&d).personality_in_flux = false);
        }
    }

    // ---------------------------------------------------------------- helpers

    fn target_slice(&self, auth: &Authorized) -> Result<(Arc<DeviceRt>, Arc<SliceRt>), AccelError> {
        match &auth.target {
            Target::Slice(d, s) => self.slice(d, s),
            _ => Err(AccelError::Failed("not a slice target".into())),
        }
    }

    /// Takes the busy lock of a slice or device for the rest of an operation, or says Busy.
    fn claim(
        &self,
        target: &Target,
        auth: &Authorized,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, AccelError> {
        self.busy_locks
            .try_claim(&target.to_string())
            .ok_or_else(|| self.busy(auth))
    }

    fn busy(&self, auth: &Authorized) -> AccelError {
        AccelError::Busy(format!(
            "another operation on {} is running; retry later",
            auth.target
        ))
    }
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

fn slice_object_path(d: &str, s: &str) -> Result<OwnedObjectPath, AccelError> {
    OwnedObjectPath::try_from(slice_path(d, s)).map_err(|e| AccelError::Failed(e.to_string()))
}

fn window_error(e: WindowError) -> AccelError {
    AccelError::InvalidArgument(e.to_string())
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `options["force"]` as a bool; absent is false, any other type is an error.
pub fn option_bool(options: &Options, key: &str) -> Result<bool, AccelError> {
    match options.get(key) {
        None => Ok(false),
        Some(v) => bool::try_from(v.clone())
            .map_err(|_| AccelError::InvalidArgument(format!("option {key} must be a boolean"))),
    }
}

/// Refuses options this call does not know, so a typo is not silently ignored.
pub fn check_option_keys(options: &Options, known: &[&str]) -> Result<(), AccelError> {
    match options.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(AccelError::InvalidArgument(format!(
            "unknown option '{k}'; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}
