//! `org.freedesktop.DBus.ObjectManager` at the root, served by the daemon itself.
//!
//! zbus's own ObjectManager answers `GetManagedObjects` by collecting every property of every
//! object into nested maps of owned variants, and only then serializing them; and zbus's
//! message builder serializes any reply into a buffer of its own, growing as it goes, then
//! copies it behind the header. At 16k objects (a 5 MB reply) those copies were most of the
//! daemon's peak memory. This one writes the reply message itself: the header, then each
//! object's properties straight behind it, read through the objects' own property getters (so
//! both ways of reading a property always agree), into one buffer sized from the last reply.
//! That takes implementing zbus's `Interface` by hand: its `#[interface]` macro always
//! replies through the builder.
//!
//! `InterfacesAdded` and `InterfacesRemoved` are emitted by the daemon too (`dbus::forward`),
//! for objects added or removed after start-up, with the same property writer as the reply.
//! zbus's `object-manager` feature must stay off in the whole workspace (a dev-dependency's
//! features reach the daemon built for the tests): with it, zbus's object server recognises
//! this interface by its name and announces every object itself as it is exported — at
//! start-up 16k signals before the name is taken, when no client can be listening — and every
//! later one twice.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::ser::{Error as _, SerializeMap, Serializer};
use zbus::message::{Flags, Header};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, SignalEmitter};
use zbus::wire::serialized::{Context, Data};
use zbus::wire::{Endian, Signature, Type};
use zbus::{fdo, BoxDBusError, Connection, Message, ObjectPath, ObjectServer, OwnedObjectPath};
use zbus::{OwnedVariant, Variant};

use accelgate_proto::names::{parse_device_path, parse_slice_path};

use super::{DeviceObject, JobObject, SliceObject};
use crate::core::JobId;
use crate::dbus::BusContext;

const OBJECT_MANAGER_INTERFACE: &str = "org.freedesktop.DBus.ObjectManager";
const DEVICE_INTERFACE: &str = "org.accelgate.Accel1.Device";
const SLICE_INTERFACE: &str = "org.accelgate.Accel1.Slice";
const JOB_INTERFACE: &str = "org.accelgate.Accel1.Job";

/// Bytes an object takes in the reply before any reply was written (a VF slice takes ~300).
const FIRST_GUESS_PER_OBJECT: usize = 384;

/// The ObjectManager interface at the root.
pub struct ObjectManager {
    ctx: Arc<BusContext>,
    /// The body length of the last reply: the next one is about as long.
    last_reply: AtomicUsize,
    /// Held while a reply is written and sent: one reply buffer at a time, however many
    /// callers ask at once (each is several MB on a large host).
    replying: tokio::sync::Mutex<()>,
}

impl ObjectManager {
    pub fn new(ctx: Arc<BusContext>) -> ObjectManager {
        ObjectManager {
            ctx,
            last_reply: AtomicUsize::new(0),
            replying: tokio::sync::Mutex::new(()),
        }
    }

    /// What is exported now.
    async fn snapshot(&self) -> ManagedObjects {
        let paths = self.ctx.exported.lock().await.clone();
        let jobs = self
            .ctx
            .exported_jobs
            .lock()
            .await
            .iter()
            .copied()
            .collect();
        ManagedObjects {
            ctx: self.ctx.clone(),
            paths,
            jobs,
        }
    }

    /// Answers `GetManagedObjects` with a message written in one buffer.
    async fn reply(&self, conn: &Connection, call: &Message) -> Result<(), BoxDBusError> {
        let hdr = call.header();
        if !call.body().signature().to_string().is_empty() {
            return Err(Box::new(fdo::Error::InvalidArgs(
                "GetManagedObjects takes no arguments".into(),
            )));
        }
        if hdr.primary().flags().contains(Flags::NO_REPLY_EXPECTED) {
            return Ok(());
        }
        let _one_at_a_time = self.replying.lock().await;
        let objects = self.snapshot().await;
        let guess = match self.last_reply.load(Ordering::Relaxed) {
            0 => (objects.paths.len() + objects.jobs.len()) * FIRST_GUESS_PER_OBJECT,
            last => last + last / 8,
        };
        // Writing every object's properties takes a large host's reply ~200 ms: on a blocking
        // thread, so the runtime's threads go on serving other callers meanwhile.
        let call = call.clone();
        let (reply, body_len) =
            tokio::task::spawn_blocking(move || reply_message(&call.header(), &objects, guess))
                .await
                .map_err(|e| -> BoxDBusError { Box::new(fdo::Error::Failed(e.to_string())) })?
                .map_err(failed)?;
        self.last_reply.store(body_len, Ordering::Relaxed);
        conn.send(&reply).await.map_err(failed)
    }

    /// `InterfacesAdded` from `emitter` (the root) for `object` at `path`.
    pub async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        path: ObjectPath<'_>,
        object: &Managed,
    ) -> zbus::Result<()> {
        emitter
            .emit(OBJECT_MANAGER_INTERFACE, "InterfacesAdded", &(path, object))
            .await
    }

    /// `InterfacesRemoved` from `emitter` (the root) for the object that was at `path`.
    pub async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        path: ObjectPath<'_>,
        interfaces: &[InterfaceName<'_>],
    ) -> zbus::Result<()> {
        emitter
            .emit(
                OBJECT_MANAGER_INTERFACE,
                "InterfacesRemoved",
                &(path, interfaces),
            )
            .await
    }
}

fn failed(e: zbus::Error) -> BoxDBusError {
    Box::new(fdo::Error::Failed(e.to_string()))
}

/// The method return for `call` with `objects` as its body, in one buffer of `guess` bytes
/// (it grows if the guess was short), and the body's length.
fn reply_message(
    call: &Header<'_>,
    objects: &ManagedObjects,
    guess: usize,
) -> zbus::Result<(Message, usize)> {
    // The header of the reply, from zbus's builder: an empty body of the reply's signature.
    // SAFETY: an empty body is no valid value of `a{oa{sa{sv}}}`, but this message is never
    // sent or read as is: only its header bytes are taken, and the body written behind them
    // below is the serialized value of that signature.
    let head = unsafe {
        Message::method_return(call).build_raw_body(&[], ManagedObjects::SIGNATURE.clone(), vec![])
    }?;
    // The body is empty: the message ends where a body would start (8-aligned).
    let offset = head.data().len();
    let endian = head.data().context().endian();
    let mut bytes = Vec::with_capacity(offset + guess);
    bytes.extend_from_slice(&head.data()[..offset]);
    let mut cursor = Cursor::new(&mut bytes);
    cursor.set_position(offset as u64);
    // The body starts 8-aligned, so it is aligned alike when serialized from position 0.
    // SAFETY: the value carries no file descriptors.
    unsafe { zbus::wire::to_writer(&mut cursor, Context::new(endian, 0), objects) }?;
    let body_len = bytes.len() - offset;
    let len = u32::try_from(body_len).map_err(|_| zbus::Error::ExcessData)?;
    let len = match endian {
        Endian::Little => len.to_le_bytes(),
        Endian::Big => len.to_be_bytes(),
    };
    // The primary header's body length, bytes 4..8.
    bytes[4..8].copy_from_slice(&len);
    // SAFETY: the bytes are the header zbus wrote and a body serialized for the signature it
    // names, with the body length set; `from_bytes` parses and checks the header again.
    let msg = unsafe { Message::from_bytes(Data::new(bytes, Context::new(endian, 0))) }?;
    Ok((msg, body_len))
}

#[zbus::export::async_trait::async_trait]
impl Interface for ObjectManager {
    fn name() -> InterfaceName<'static> {
        InterfaceName::from_static_str_unchecked(OBJECT_MANAGER_INTERFACE)
    }

    async fn get(
        &self,
        _property_name: &str,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        // No properties.
        None
    }

    async fn get_all(
        &self,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedVariant>> {
        Ok(HashMap::new())
    }

    async fn set_mut(
        &mut self,
        _property_name: &str,
        _value: &Variant<'_>,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        None
    }

    fn call<'call>(
        &'call self,
        _server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        if name.as_str() != "GetManagedObjects" {
            return DispatchResult::NotFound;
        }
        DispatchResult::Async(Box::pin(self.reply(connection, msg)))
    }

    fn call_mut<'call>(
        &'call mut self,
        _server: &'call ObjectServer,
        _connection: &'call Connection,
        _msg: &'call Message,
        _name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        DispatchResult::NotFound
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        let xml = format!(
            "<interface name=\"{OBJECT_MANAGER_INTERFACE}\">\n  \
             <method name=\"GetManagedObjects\">\n    \
             <arg name=\"object_paths_interfaces_and_properties\" type=\"a{{oa{{sa{{sv}}}}}}\" direction=\"out\"/>\n  \
             </method>\n  \
             <signal name=\"InterfacesAdded\">\n    \
             <arg name=\"object_path\" type=\"o\"/>\n    \
             <arg name=\"interfaces_and_properties\" type=\"a{{sa{{sv}}}}\"/>\n  \
             </signal>\n  \
             <signal name=\"InterfacesRemoved\">\n    \
             <arg name=\"object_path\" type=\"o\"/>\n    \
             <arg name=\"interfaces\" type=\"as\"/>\n  \
             </signal>\n\
             </interface>"
        );
        for line in xml.lines() {
            // Introspection is best effort: a failed write leaves the document short.
            let _ = writeln!(writer, "{:level$}{line}", "");
        }
    }
}

/// One device, slice or job object as the ObjectManager describes it (`a{sa{sv}}`: its one
/// interface and every property): an entry of `GetManagedObjects` and the body of
/// `InterfacesAdded`.
pub enum Managed {
    Device(DeviceObject),
    Slice(SliceObject),
    Job(JobObject),
}

impl Managed {
    /// The device or slice object at `path` (a job is made with [`Managed::Job`]).
    pub fn at(ctx: &Arc<BusContext>, path: &str) -> Option<Managed> {
        if let Some((d, s)) = parse_slice_path(path) {
            Some(Managed::Slice(SliceObject::new(ctx.clone(), d, s)))
        } else {
            parse_device_path(path).map(|d| Managed::Device(DeviceObject::new(ctx.clone(), d)))
        }
    }

    pub fn interface(&self) -> &'static str {
        match self {
            Managed::Device(_) => DEVICE_INTERFACE,
            Managed::Slice(_) => SLICE_INTERFACE,
            Managed::Job(_) => JOB_INTERFACE,
        }
    }
}

impl Type for Managed {
    const SIGNATURE: &'static Signature = InterfacesSignature::SIGNATURE;
}

impl serde::Serialize for Managed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.interface(), &Props(self))?;
        map.end()
    }
}

/// The reply of `GetManagedObjects` (`a{oa{sa{sv}}}`): what is exported when the call came,
/// serialized property by property.
pub struct ManagedObjects {
    ctx: Arc<BusContext>,
    /// Device and slice object paths.
    paths: Arc<BTreeSet<String>>,
    jobs: Vec<u64>,
}

type InterfacesSignature = HashMap<String, HashMap<String, Variant<'static>>>;
type ReplySignature = HashMap<OwnedObjectPath, InterfacesSignature>;

impl Type for ManagedObjects {
    const SIGNATURE: &'static Signature = ReplySignature::SIGNATURE;
}

impl serde::Serialize for ManagedObjects {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for path in self.paths.iter() {
            let object = ObjectPath::try_from(path.as_str()).map_err(S::Error::custom)?;
            if let Some(managed) = Managed::at(&self.ctx, path) {
                map.serialize_entry(&object, &managed)?;
            }
        }
        for &n in &self.jobs {
            let path = accelgate_proto::names::job_path(n);
            let object = ObjectPath::try_from(path.as_str()).map_err(S::Error::custom)?;
            let job = Managed::Job(JobObject::new(self.ctx.clone(), JobId(n)));
            map.serialize_entry(&object, &job)?;
        }
        map.end()
    }
}

/// The properties of one object, as `a{sv}`.
struct Props<'a>(&'a Managed);

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
        match self.0 {
            Managed::Device(o) => {
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
            Managed::Slice(o) => {
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
            Managed::Job(o) => {
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
