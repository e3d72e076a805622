//! `org.freedesktop.DBus.ObjectManager` at the root, served by the daemon itself.
//!
//! zbus's own ObjectManager answers `GetManagedObjects` by collecting every property of every
//! object into nested maps of owned variants, and only then serializing them: at 16k objects
//! that transient map is most of the daemon's peak memory. This one replies with a value whose
//! `Serialize` walks the exported objects and writes each property straight into the reply
//! message, read through the objects' own property getters (so both ways of reading a property
//! always agree).
//!
//! `InterfacesAdded` and `InterfacesRemoved` are still emitted by zbus's object server: it
//! recognises an ObjectManager by its interface name, so objects added or removed under this
//! one are announced from the root as before.

use std::collections::HashMap;
use std::sync::Arc;

use serde::ser::{Error as _, SerializeMap, Serializer};
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::wire::{Signature, Type};
use zbus::{fdo, interface, ObjectPath, OwnedObjectPath, Variant};

use accelgate_proto::names::{parse_device_path, parse_slice_path};

use super::{DeviceObject, JobObject, SliceObject};
use crate::core::JobId;
use crate::dbus::BusContext;

const DEVICE_INTERFACE: &str = "org.accelgate.Accel1.Device";
const SLICE_INTERFACE: &str = "org.accelgate.Accel1.Slice";
const JOB_INTERFACE: &str = "org.accelgate.Accel1.Job";

/// The ObjectManager interface at the root.
pub struct ObjectManager {
    ctx: Arc<BusContext>,
}

impl ObjectManager {
    pub fn new(ctx: Arc<BusContext>) -> ObjectManager {
        ObjectManager { ctx }
    }
}

#[interface(name = "org.freedesktop.DBus.ObjectManager")]
impl ObjectManager {
    /// Every device, slice and job object with its properties.
    #[zbus(out_args("object_paths_interfaces_and_properties"))]
    async fn get_managed_objects(&self) -> fdo::Result<ManagedObjects> {
        let paths = self.ctx.exported.lock().await.iter().cloned().collect();
        let jobs = self
            .ctx
            .exported_jobs
            .lock()
            .await
            .iter()
            .copied()
            .collect();
        Ok(ManagedObjects {
            ctx: self.ctx.clone(),
            paths,
            jobs,
        })
    }

    #[zbus(signal)]
    async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces_and_properties: HashMap<InterfaceName<'_>, HashMap<&str, Variant<'_>>>,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces: Vec<InterfaceName<'_>>,
    ) -> zbus::Result<()>;
}

/// The reply of `GetManagedObjects` (`a{oa{sa{sv}}}`): what is exported when the call came,
/// serialized property by property.
pub struct ManagedObjects {
    ctx: Arc<BusContext>,
    /// Device and slice object paths.
    paths: Vec<String>,
    jobs: Vec<u64>,
}

type ReplySignature = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, Variant<'static>>>>;

impl Type for ManagedObjects {
    const SIGNATURE: &'static Signature = ReplySignature::SIGNATURE;
}

impl serde::Serialize for ManagedObjects {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for path in &self.paths {
            let object = ObjectPath::try_from(path.as_str()).map_err(S::Error::custom)?;
            if let Some((d, s)) = parse_slice_path(path) {
                let slice = SliceObject::new(self.ctx.clone(), d, s);
                map.serialize_entry(
                    &object,
                    &OneInterface(SLICE_INTERFACE, Props::Slice(&slice)),
                )?;
            } else if let Some(d) = parse_device_path(path) {
                let device = DeviceObject::new(self.ctx.clone(), d);
                map.serialize_entry(
                    &object,
                    &OneInterface(DEVICE_INTERFACE, Props::Device(&device)),
                )?;
            }
        }
        for &n in &self.jobs {
            let path = accelgate_proto::names::job_path(n);
            let object = ObjectPath::try_from(path.as_str()).map_err(S::Error::custom)?;
            let job = JobObject::new(self.ctx.clone(), JobId(n));
            map.serialize_entry(&object, &OneInterface(JOB_INTERFACE, Props::Job(&job)))?;
        }
        map.end()
    }
}

/// `a{sa{sv}}` with one interface.
struct OneInterface<'a>(&'static str, Props<'a>);

impl serde::Serialize for OneInterface<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, &self.1)?;
        map.end()
    }
}

/// The properties of one object, as `a{sv}`.
enum Props<'a> {
    Device(&'a DeviceObject),
    Slice(&'a SliceObject),
    Job(&'a JobObject),
}

/// Writes one property; a property whose getter fails (its object went away while the reply
/// was written) is left out, as the object will be announced removed.
fn prop<M: SerializeMap, T: Type + serde::Serialize>(
    map: &mut M,
    name: &str,
    value: fdo::Result<T>,
) -> Result<(), M::Error> {
    match value {
        Ok(v) => map.serialize_entry(name, &zbus::as_variant::Serialize(&v)),
        Err(_) => Ok(()),
    }
}

impl serde::Serialize for Props<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Props::Device(o) => {
                let m = &mut map;
                prop(m, "Id", Ok(o.id()))?;
                prop(m, "PciAddress", o.pci_address())?;
                prop(m, "VendorId", o.vendor_id())?;
                prop(m, "ProductId", o.product_id())?;
                prop(m, "Kind", o.kind())?;
                prop(m, "Driver", o.driver())?;
                prop(m, "NumVfs", o.num_vfs())?;
                prop(m, "TotalVfs", o.total_vfs())?;
                prop(m, "FirmwareVersion", o.firmware_version())?;
                prop(m, "FirmwareActiveSlot", o.firmware_active_slot())?;
                prop(m, "FirmwareState", o.firmware_state())?;
                prop(m, "FirmwareLastResult", o.firmware_last_result())?;
                prop(m, "FirmwareLocked", o.firmware_locked())?;
                prop(m, "PersonalitySha256", Ok(o.personality_sha256()))?;
                prop(m, "Slices", o.slices())?;
            }
            Props::Slice(o) => {
                let m = &mut map;
                prop(m, "Id", Ok(o.id()))?;
                prop(m, "Device", Ok(o.device()))?;
                prop(m, "Kind", o.kind())?;
                prop(m, "Size", o.size())?;
                prop(m, "Mappable", o.mappable())?;
                prop(m, "Writable", o.writable())?;
                prop(m, "Tenant", Ok(o.tenant()))?;
                prop(m, "ImageSha256", Ok(o.image_sha256()))?;
            }
            Props::Job(o) => {
                let m = &mut map;
                prop(m, "Operation", o.operation())?;
                prop(m, "Target", o.target())?;
                prop(m, "Progress", o.progress())?;
                prop(m, "State", o.state())?;
                prop(m, "Message", o.message())?;
                prop(m, "StartedByUid", o.started_by_uid())?;
            }
        }
        map.end()
    }
}
