//! The D-Bus objects: Manager at the root (with the ObjectManager), one Device object per
//! device, one Slice object per slice, one Job object per job. They hold only their ids and
//! read everything from the engine, so an object never shows stale state; changes are
//! announced by the event forwarder (`forward`).

use std::sync::Arc;

use accelgate_proto::names::{device_path, slice_path};
use accelgate_proto::AccelError;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{fdo, interface, OwnedFd, OwnedObjectPath};

use super::errors::{check_option_keys, option_bool, option_bytes, Options};
use super::BusContext;
use crate::core::{JobId, Target};

mod managed;
pub use managed::{Managed, ObjectManager};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct ManagerObject {
    ctx: Arc<BusContext>,
}

impl ManagerObject {
    pub fn new(ctx: Arc<BusContext>) -> ManagerObject {
        ManagerObject { ctx }
    }
}

#[interface(name = "org.accelgate.Accel1.Manager")]
impl ManagerObject {
    /// The caller as the daemon sees it: uid, roles, and the operations they grant.
    #[zbus(name = "WhoAmI", out_args("uid", "roles", "operations"))]
    async fn who_am_i(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(u32, Vec<String>, Vec<String>), AccelError> {
        let req = self.ctx.request(&hdr, &Target::Manager).await?;
        Ok(self.ctx.engine.who_am_i(&req))
    }

    /// Re-reads the policy files; a bad policy is refused and the old one stays in force.
    async fn reload_policy(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), AccelError> {
        let req = self.ctx.request(&hdr, &Target::Manager).await?;
        self.ctx.engine.reload_policy(&req).await?;
        self.ctx.settle().await;
        Ok(())
    }

    /// The newest `max` audit records, oldest first, one JSON object per string.
    #[zbus(out_args("records"))]
    async fn audit_log(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        max: u32,
    ) -> Result<Vec<String>, AccelError> {
        let req = self.ctx.request(&hdr, &Target::Manager).await?;
        Ok(self.ctx.engine.audit_log(&req, max).await?)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        VERSION.to_owned()
    }

    #[zbus(property)]
    fn policy_revision(&self) -> String {
        self.ctx.engine.policy().revision.clone()
    }

    #[zbus(property)]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        self.ctx
            .engine
            .devices()
            .keys()
            .filter_map(|d| OwnedObjectPath::try_from(device_path(d)).ok())
            .collect()
    }
}

pub struct DeviceObject {
    ctx: Arc<BusContext>,
    id: String,
}

impl DeviceObject {
    pub fn new(ctx: Arc<BusContext>, id: &str) -> DeviceObject {
        DeviceObject {
            ctx,
            id: id.to_owned(),
        }
    }

    fn target(&self) -> Target {
        Target::Device(self.id.clone())
    }

    fn dev(&self) -> fdo::Result<Arc<crate::core::devices::DeviceRt>> {
        self.ctx
            .engine
            .device(&self.id)
            .map_err(|e| fdo::Error::UnknownObject(e.message()))
    }
}

#[interface(name = "org.accelgate.Accel1.Device")]
impl DeviceObject {
    /// Sets the number of SR-IOV VFs. options: force (b) to remove assigned VFs.
    async fn set_vf_count(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        count: u32,
        options: Options,
    ) -> Result<(), AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &["force"])?;
        let force = option_bool(&options, "force")?;
        let result = self
            .ctx
            .engine
            .set_vf_count(&req, self.target(), count, force)
            .await;
        self.ctx.settle().await;
        Ok(result?)
    }

    /// Loads a whole-device personality image. options: force (b) to proceed while slices are
    /// assigned. Returns the job.
    #[zbus(out_args("job"))]
    async fn configure(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: Options,
    ) -> Result<OwnedObjectPath, AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &["force"])?;
        let force = option_bool(&options, "force")?;
        let job = self
            .ctx
            .engine
            .configure(&req, self.target(), image.into(), force)
            .await?;
        job_reply(&self.ctx, job).await
    }

    /// Writes firmware to flash. options: signature (ay); force (b): flash an image older
    /// than the active firmware although the policy refuses downgrades (only for callers whose
    /// roles grant policy.reload; never below the policy's min_version). Returns the job.
    #[zbus(out_args("job"))]
    async fn flash(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: Options,
    ) -> Result<OwnedObjectPath, AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &["signature", "force"])?;
        let signature = option_bytes(&options, "signature")?;
        let force = option_bool(&options, "force")?;
        let job = self
            .ctx
            .engine
            .flash(&req, self.target(), image.into(), signature, force)
            .await?;
        job_reply(&self.ctx, job).await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn pci_address(&self) -> fdo::Result<String> {
        Ok(self.dev()?.pci.bdf.to_string())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn vendor_id(&self) -> fdo::Result<u16> {
        Ok(self.dev()?.pci.vendor)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn product_id(&self) -> fdo::Result<u16> {
        Ok(self.dev()?.pci.device)
    }

    #[zbus(property)]
    fn kind(&self) -> fdo::Result<String> {
        Ok(self.dev()?.policy.kind.clone())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn driver(&self) -> fdo::Result<String> {
        Ok(self.dev()?.pci.driver.clone().unwrap_or_default())
    }

    #[zbus(property)]
    fn num_vfs(&self) -> fdo::Result<u32> {
        Ok(self.dev()?.num_vfs())
    }

    /// VFs that may be created: the smaller of the hardware's and the policy's limit.
    #[zbus(property)]
    fn total_vfs(&self) -> fdo::Result<u32> {
        Ok(self.dev()?.max_vfs())
    }

    /// Version of the firmware that boots (from the image's `ACCELGATE-FW` header line,
    /// "unknown" without one); empty for a device without firmware management.
    #[zbus(property)]
    fn firmware_version(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.ctx.engine.firmware_info(&self.id).version)
    }

    /// Slot the device boots: `a` or `b`; empty without firmware management.
    #[zbus(property)]
    fn firmware_active_slot(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.ctx.engine.firmware_info(&self.id).active_slot)
    }

    /// `idle`, `flashing`, or `error: ...`; empty without firmware management.
    #[zbus(property)]
    fn firmware_state(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.ctx.engine.firmware_info(&self.id).state)
    }

    /// How the last flash ended: `succeeded|failed|cancelled|interrupted: message`.
    #[zbus(property)]
    fn firmware_last_result(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.ctx.engine.firmware_info(&self.id).last_result)
    }

    #[zbus(property)]
    fn firmware_locked(&self) -> fdo::Result<bool> {
        Ok(self
            .dev()?
            .policy
            .firmware
            .as_ref()
            .is_some_and(|f| f.locked))
    }

    #[zbus(property)]
    fn personality_sha256(&self) -> String {
        self.ctx
            .engine
            .device_personality(&self.id)
            .unwrap_or_default()
    }

    #[zbus(property)]
    fn slices(&self) -> fdo::Result<Vec<OwnedObjectPath>> {
        let dev = self.dev()?;
        Ok(dev
            .slice_ids()
            .iter()
            .filter_map(|s| OwnedObjectPath::try_from(slice_path(&self.id, s)).ok())
            .collect())
    }
}

pub struct SliceObject {
    ctx: Arc<BusContext>,
    device: String,
    id: String,
}

impl SliceObject {
    pub fn new(ctx: Arc<BusContext>, device: &str, id: &str) -> SliceObject {
        SliceObject {
            ctx,
            device: device.to_owned(),
            id: id.to_owned(),
        }
    }

    fn target(&self) -> Target {
        Target::Slice(self.device.clone(), self.id.clone())
    }

    fn rt(&self) -> fdo::Result<Arc<crate::core::devices::SliceRt>> {
        self.ctx
            .engine
            .device(&self.device)
            .ok()
            .and_then(|d| d.slice(&self.id))
            .ok_or_else(|| {
                fdo::Error::UnknownObject(format!("no slice {}/{}", self.device, self.id))
            })
    }
}

#[interface(name = "org.accelgate.Accel1.Slice")]
impl SliceObject {
    /// Reads `count` registers of `width` bytes (1, 2, 4, 8) from `offset` in the slice.
    #[zbus(out_args("values"))]
    async fn read(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        offset: u64,
        count: u32,
        width: u8,
    ) -> Result<Vec<u64>, AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        Ok(self
            .ctx
            .engine
            .read(&req, self.target(), offset, count, width)
            .await?)
    }

    /// Writes registers of `width` bytes from `offset`; every byte must be writable.
    async fn write(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        offset: u64,
        values: Vec<u64>,
        width: u8,
    ) -> Result<(), AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        Ok(self
            .ctx
            .engine
            .write(&req, self.target(), offset, &values, width)
            .await?)
    }

    /// A file descriptor of the slice's whole, isolated BAR (VF slices only).
    #[zbus(out_args("bar"))]
    async fn map(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<OwnedFd, AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &[])?;
        let fd = self.ctx.engine.map(&req, self.target()).await?;
        Ok(OwnedFd::from(fd))
    }

    /// Loads an application image into the slice. Returns the job.
    #[zbus(out_args("job"))]
    async fn program(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: Options,
    ) -> Result<OwnedObjectPath, AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &[])?;
        let job = self
            .ctx
            .engine
            .program(&req, self.target(), image.into())
            .await?;
        job_reply(&self.ctx, job).await
    }

    /// Assigns the slice to a tenant: user:NAME, group:NAME, uid:N, gid:N, or a user name.
    async fn assign(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        tenant: String,
        options: Options,
    ) -> Result<(), AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        check_option_keys(&options, &[])?;
        let result = self.ctx.engine.assign(&req, self.target(), &tenant).await;
        self.ctx.settle().await;
        Ok(result?)
    }

    /// Takes the slice back from its tenant and scrubs it.
    async fn release(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), AccelError> {
        let req = self.ctx.request(&hdr, &self.target()).await?;
        let result = self.ctx.engine.release(&req, self.target()).await;
        self.ctx.settle().await;
        Ok(result?)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn device(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(device_path(&self.device))
            .unwrap_or_else(|_| OwnedObjectPath::default())
    }

    #[zbus(property)]
    fn kind(&self) -> fdo::Result<String> {
        Ok(self.rt()?.kind.as_str().to_owned())
    }

    #[zbus(property)]
    fn size(&self) -> fdo::Result<u64> {
        Ok(self.rt()?.size())
    }

    #[zbus(property)]
    fn mappable(&self) -> fdo::Result<bool> {
        Ok(self.rt()?.is_mappable())
    }

    /// Writable ranges as (start, end) offsets in the slice, end exclusive.
    #[zbus(property)]
    fn writable(&self) -> fdo::Result<Vec<(u64, u64)>> {
        Ok(self.rt()?.writable.clone())
    }

    #[zbus(property)]
    fn tenant(&self) -> String {
        self.ctx
            .engine
            .slice_tenant(&self.device, &self.id)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[zbus(property)]
    fn image_sha256(&self) -> String {
        self.ctx
            .engine
            .slice_image(&self.device, &self.id)
            .unwrap_or_default()
    }
}

/// The reply of a call that started a job: its path, once the job object is on the bus.
async fn job_reply(ctx: &BusContext, job: JobId) -> Result<OwnedObjectPath, AccelError> {
    ctx.settle().await;
    OwnedObjectPath::try_from(accelgate_proto::names::job_path(job.0))
        .map_err(|e| AccelError::Failed(e.to_string()))
}

/// The D-Bus face of a job.
pub struct JobObject {
    ctx: Arc<BusContext>,
    id: JobId,
}

impl JobObject {
    pub fn new(ctx: Arc<BusContext>, id: JobId) -> JobObject {
        JobObject { ctx, id }
    }

    fn job(&self) -> fdo::Result<Arc<crate::core::Job>> {
        self.ctx
            .engine
            .job(self.id)
            .ok_or_else(|| fdo::Error::UnknownObject(format!("no job {}", self.id)))
    }
}

#[interface(name = "org.accelgate.Accel1.Job")]
impl JobObject {
    /// Asks the job to stop. Allowed to whoever may start the job's operation on its target.
    async fn cancel(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), AccelError> {
        let job = self
            .ctx
            .engine
            .job(self.id)
            .ok_or_else(|| AccelError::NotFound(format!("no job {}", self.id)))?;
        let req = self.ctx.request(&hdr, &job.target).await?;
        Ok(self.ctx.engine.cancel_job(&req, &job).await?)
    }

    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn operation(&self) -> fdo::Result<String> {
        Ok(self.job()?.operation.as_str().to_owned())
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn target(&self) -> fdo::Result<OwnedObjectPath> {
        let path = match &self.job()?.target {
            Target::Slice(d, s) => slice_path(d, s),
            Target::Device(d) => device_path(d),
            Target::Manager => accelgate_proto::names::ROOT_PATH.to_owned(),
        };
        OwnedObjectPath::try_from(path).map_err(|e| fdo::Error::Failed(e.to_string()))
    }

    #[zbus(property)]
    fn progress(&self) -> fdo::Result<f64> {
        Ok(self.job()?.status().progress)
    }

    #[zbus(property)]
    fn state(&self) -> fdo::Result<String> {
        Ok(self.job()?.status().state.as_str().to_owned())
    }

    #[zbus(property)]
    fn message(&self) -> fdo::Result<String> {
        Ok(self.job()?.status().message)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn started_by_uid(&self) -> fdo::Result<u32> {
        Ok(self.job()?.started_by_uid)
    }
}
