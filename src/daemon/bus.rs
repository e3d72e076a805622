//! The D-Bus objects: Manager at the root (with the ObjectManager), one Device object per
//! device and one Slice object per slice. They hold only their ids and read everything from
//! the daemon, so an object never shows stale state; changes are announced with
//! PropertiesChanged by the functions at the end of this file.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use zbus::message::Header;
use zbus::{fdo, interface, Connection, OwnedFd, OwnedObjectPath, OwnedVariant};

use crate::error::AccelError;
use crate::names::{device_path, slice_path, ROOT_PATH};

use super::authz::Target;
use super::service::{check_option_keys, option_bool, Daemon};

const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct ManagerObject {
    pub daemon: Arc<Daemon>,
}

#[interface(name = "org.accelgate.Accel1.Manager")]
impl ManagerObject {
    /// The caller as the daemon sees it: uid, roles, and the operations they grant.
    #[zbus(name = "WhoAmI", out_args("uid", "roles", "operations"))]
    async fn who_am_i(
        &self,
        #[zbus(header)] hdr: Header<'_>,
    ) -> Result<(u32, Vec<String>, Vec<String>), AccelError> {
        self.daemon.who_am_i(&hdr).await
    }

    /// Re-reads the policy files; a bad policy is refused and the old one stays in force.
    async fn reload_policy(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(signal_emitter)] emitter: zbus::object_server::SignalEmitter<'_>,
    ) -> Result<(), AccelError> {
        self.daemon.authorize(&hdr, Target::Manager).await?;
        self.daemon.reload_policy().await?;
        let _ = self.policy_revision_changed(&emitter).await;
        let _ = self.devices_changed(&emitter).await;
        Ok(())
    }

    /// The newest `max` audit records, oldest first, one JSON object per string.
    #[zbus(out_args("records"))]
    async fn audit_log(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        max: u32,
    ) -> Result<Vec<String>, AccelError> {
        self.daemon.authorize(&hdr, Target::Manager).await?;
        Ok(self.daemon.audit.recent(max as usize))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        VERSION.to_owned()
    }

    #[zbus(property)]
    fn policy_revision(&self) -> String {
        self.daemon.policy().revision.clone()
    }

    #[zbus(property)]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        self.daemon
            .devices()
            .keys()
            .filter_map(|d| OwnedObjectPath::try_from(device_path(d)).ok())
            .collect()
    }
}

pub struct DeviceObject {
    pub daemon: Arc<Daemon>,
    pub id: String,
}

impl DeviceObject {
    fn target(&self) -> Target {
        Target::Device(self.id.clone())
    }

    fn dev(&self) -> fdo::Result<Arc<super::devices::DeviceRt>> {
        self.daemon
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
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), AccelError> {
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        check_option_keys(&options, &["force"])?;
        let force = option_bool(&options, "force")?;
        self.daemon.set_vf_count(&auth, count, force).await
    }

    /// Loads a whole-device personality image. options: force (b) to proceed while slices are
    /// assigned. Returns the job.
    #[zbus(out_args("job"))]
    async fn configure(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, AccelError> {
        check_option_keys(&options, &["force"])?;
        let force = option_bool(&options, "force")?;
        self.daemon
            .configure(&hdr, self.target(), image.into(), force)
            .await
    }

    /// Writes firmware to flash. options: signature (ay). Returns the job.
    #[zbus(out_args("job"))]
    async fn flash(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, AccelError> {
        check_option_keys(&options, &["signature"])?;
        let signature = match options.get("signature") {
            None => None,
            Some(v) => Some(Vec::<u8>::try_from(v.clone()).map_err(|_| {
                AccelError::InvalidArgument("option signature must be a byte array (ay)".into())
            })?),
        };
        self.daemon
            .flash(&hdr, self.target(), image.into(), signature)
            .await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn pci_address(&self) -> fdo::Result<String> {
        Ok(self.dev()?.pci.bdf.clone())
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
        Ok(self.daemon.firmware_info(&self.id).version)
    }

    /// Slot the device boots: `a` or `b`; empty without firmware management.
    #[zbus(property)]
    fn firmware_active_slot(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.daemon.firmware_info(&self.id).active_slot)
    }

    /// `idle`, `flashing`, or `error: ...`; empty without firmware management.
    #[zbus(property)]
    fn firmware_state(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.daemon.firmware_info(&self.id).state)
    }

    /// How the last flash ended: `succeeded|failed|cancelled|interrupted: message`.
    #[zbus(property)]
    fn firmware_last_result(&self) -> fdo::Result<String> {
        self.dev()?;
        Ok(self.daemon.firmware_info(&self.id).last_result)
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
        self.daemon
            .state()
            .get()
            .device(&self.id)
            .personality_sha256
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
    pub daemon: Arc<Daemon>,
    pub device: String,
    pub id: String,
}

impl SliceObject {
    fn target(&self) -> Target {
        Target::Slice(self.device.clone(), self.id.clone())
    }

    fn rt(&self) -> fdo::Result<Arc<super::devices::SliceRt>> {
        self.daemon
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
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        self.daemon.read(&auth, offset, count, width)
    }

    /// Writes registers of `width` bytes from `offset`; every byte must be writable.
    async fn write(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        offset: u64,
        values: Vec<u64>,
        width: u8,
    ) -> Result<(), AccelError> {
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        self.daemon.write(&auth, offset, &values, width)
    }

    /// A file descriptor of the slice's whole, isolated BAR (VF slices only).
    #[zbus(out_args("bar"))]
    async fn map(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedFd, AccelError> {
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        check_option_keys(&options, &[])?;
        self.daemon.map(&auth).map(OwnedFd::from)
    }

    /// Loads an application image into the slice. Returns the job.
    #[zbus(out_args("job"))]
    async fn program(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        image: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, AccelError> {
        check_option_keys(&options, &[])?;
        self.daemon.program(&hdr, self.target(), image.into()).await
    }

    /// Assigns the slice to a tenant: user:NAME, group:NAME, uid:N, gid:N, or a user name.
    async fn assign(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        tenant: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), AccelError> {
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        check_option_keys(&options, &[])?;
        self.daemon.assign(&auth, &tenant).await
    }

    /// Takes the slice back from its tenant and scrubs it.
    async fn release(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), AccelError> {
        let auth = self.daemon.authorize(&hdr, self.target()).await?;
        self.daemon.release(&auth).await
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
        Ok(self.rt()?.window.size())
    }

    #[zbus(property)]
    fn mappable(&self) -> fdo::Result<bool> {
        Ok(self.rt()?.mappable_resource.is_some())
    }

    /// Writable ranges as (start, end) offsets in the slice, end exclusive.
    #[zbus(property)]
    fn writable(&self) -> fdo::Result<Vec<(u64, u64)>> {
        Ok(self.rt()?.writable.clone())
    }

    #[zbus(property)]
    fn tenant(&self) -> String {
        self.daemon
            .state()
            .get()
            .slice(&self.device, &self.id)
            .tenant
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[zbus(property)]
    fn image_sha256(&self) -> String {
        self.daemon
            .state()
            .get()
            .slice(&self.device, &self.id)
            .image_sha256
            .unwrap_or_default()
    }
}

/// Puts the Manager, ObjectManager, and every device and slice object on the bus, and takes
/// off those that no longer exist. Safe to call again after any change of the model.
pub async fn export_all(daemon: &Arc<Daemon>) {
    let server = daemon.conn.object_server();
    let _ = server
        .at(
            ROOT_PATH,
            ManagerObject {
                daemon: daemon.clone(),
            },
        )
        .await;
    // The ObjectManager goes in before the objects it manages: added after them, zbus would
    // build every object's properties into one map at once to announce them (tens of MB at
    // 4096 slices); added first, each object is announced as it is added.
    let _ = server.at(ROOT_PATH, fdo::ObjectManager).await;
    let mut wanted = BTreeSet::new();
    for (d, dev) in daemon.devices() {
        wanted.insert(device_path(&d));
        for s in dev.slice_ids() {
            wanted.insert(slice_path(&d, &s));
        }
    }
    let mut exported = daemon.exported.lock().await;
    for path in exported.difference(&wanted) {
        if crate::names::parse_slice_path(path).is_some() {
            let _ = server.remove::<SliceObject, _>(path.as_str()).await;
        } else {
            let _ = server.remove::<DeviceObject, _>(path.as_str()).await;
        }
    }
    for path in wanted.difference(&exported) {
        let result = if let Some((d, s)) = crate::names::parse_slice_path(path) {
            let obj = SliceObject {
                daemon: daemon.clone(),
                device: d.to_owned(),
                id: s.to_owned(),
            };
            server.at(path.as_str(), obj).await.map(|_| ())
        } else if let Some(d) = crate::names::parse_device_path(path) {
            server
                .at(
                    path.as_str(),
                    DeviceObject {
                        daemon: daemon.clone(),
                        id: d.to_owned(),
                    },
                )
                .await
                .map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::error!("cannot export {path}: {e}");
        }
    }
    *exported = wanted;
    drop(exported);
    // A reload may have changed what devices report (policy-derived properties).
    for d in daemon.devices().keys() {
        device_changed(&daemon.conn, d).await;
    }
}

/// Announces a change of a slice's Tenant and ImageSha256.
pub async fn slice_changed(conn: &Connection, d: &str, s: &str) {
    if let Ok(iface) = conn
        .object_server()
        .interface::<_, SliceObject>(slice_path(d, s))
        .await
    {
        let obj = iface.get().await;
        let _ = obj.tenant_changed(iface.signal_emitter()).await;
        let _ = obj.image_sha256_changed(iface.signal_emitter()).await;
    }
}

/// Announces a change of a device's NumVfs, Slices and PersonalitySha256.
pub async fn device_changed(conn: &Connection, d: &str) {
    if let Ok(iface) = conn
        .object_server()
        .interface::<_, DeviceObject>(device_path(d))
        .await
    {
        let obj = iface.get().await;
        let _ = obj.num_vfs_changed(iface.signal_emitter()).await;
        let _ = obj.slices_changed(iface.signal_emitter()).await;
        let _ = obj.personality_sha256_changed(iface.signal_emitter()).await;
        let _ = obj.firmware_locked_changed(iface.signal_emitter()).await;
        let _ = obj.firmware_version_changed(iface.signal_emitter()).await;
        let _ = obj
            .firmware_active_slot_changed(iface.signal_emitter())
            .await;
        let _ = obj.firmware_state_changed(iface.signal_emitter()).await;
        let _ = obj
            .firmware_last_result_changed(iface.signal_emitter())
            .await;
        let _ = obj.kind_changed(iface.signal_emitter()).await;
    }
}

/// Adds and removes VF slice objects after the VF count changed.
pub async fn vf_slices_changed(daemon: &Daemon, d: &str, added: &[String], removed: &[String]) {
    let server = daemon.conn.object_server();
    let mut exported = daemon.exported.lock().await;
    for s in removed {
        let path = slice_path(d, s);
        let _ = server.remove::<SliceObject, _>(path.as_str()).await;
        exported.remove(&path);
    }
    // Objects need an Arc<Daemon>; the device objects hold one.
    let Ok(dev_iface) = server.interface::<_, DeviceObject>(device_path(d)).await else {
        return;
    };
    let daemon_arc = dev_iface.get().await.daemon.clone();
    for s in added {
        let path = slice_path(d, s);
        let obj = SliceObject {
            daemon: daemon_arc.clone(),
            device: d.to_owned(),
            id: s.clone(),
        };
        if server.at(path.as_str(), obj).await.is_ok() {
            exported.insert(path);
        }
    }
}
