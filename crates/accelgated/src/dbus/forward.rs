//! From engine events to D-Bus: a queue the engine pushes into without blocking, and one task
//! that works through it in order — exporting and removing objects, emitting
//! `PropertiesChanged`, `InterfacesAdded`/`InterfacesRemoved` and job signals.
//!
//! The objects of start-up are exported before the bus name is taken and announced by nothing:
//! no client can be listening yet, and one that comes later asks `GetManagedObjects`. Every
//! object added or removed after that (hotplug, a VF count change, a reload, a job) is
//! announced once, from the root, right after the object server has it (or no longer has it),
//! so a client that sees the signal can call the object.

use std::collections::BTreeSet;
use std::sync::Arc;

use accelgate_proto::names::{device_path, job_path, slice_path, ROOT_PATH};
use tokio::sync::{mpsc, oneshot};
use zbus::names::InterfaceName;
use zbus::object_server::{Interface, SignalEmitter};
use zbus::ObjectPath;

use crate::core::{Event, EventSink, JobId};

use super::objects::{DeviceObject, JobObject, Managed, ManagerObject, ObjectManager, SliceObject};
use super::BusContext;

enum Item {
    Event(Event),
    /// Answered once everything queued before it has been forwarded.
    Settle(oneshot::Sender<()>),
}

/// The engine's event sink on the bus side.
#[derive(Clone)]
pub struct BusEvents {
    queue: mpsc::UnboundedSender<Item>,
}

/// The receiving end, to be run once the engine and the bus context exist.
pub struct Forwarder {
    items: mpsc::UnboundedReceiver<Item>,
}

impl BusEvents {
    pub fn new() -> (BusEvents, Forwarder) {
        let (queue, items) = mpsc::unbounded_channel();
        (BusEvents { queue }, Forwarder { items })
    }

    pub(super) async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Item::Settle(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl EventSink for BusEvents {
    fn emit(&self, event: Event) {
        // The forwarder lives as long as the daemon; a send fails only while it stops.
        let _ = self.queue.send(Item::Event(event));
    }
}

impl Forwarder {
    /// Puts every object on the bus, then forwards events until the queue closes.
    pub async fn run(mut self, ctx: Arc<BusContext>) {
        export_all(&ctx, Announce::No).await;
        while let Some(item) = self.items.recv().await {
            match item {
                Item::Event(event) => {
                    // At debug level, the last of these names the event a stall is stuck on.
                    tracing::debug!(?event, "forwarding");
                    forward(&ctx, event).await;
                }
                Item::Settle(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

async fn forward(ctx: &Arc<BusContext>, event: Event) {
    match event {
        Event::SliceChanged { device, slice } => slice_changed(ctx, &device, &slice).await,
        Event::DeviceChanged { device } => device_changed(ctx, &device).await,
        Event::SlicesAdded { device, slices } => {
            let mut added = Vec::new();
            let mut guard = ctx.exported.lock().await;
            let exported = Arc::make_mut(&mut guard);
            for s in slices {
                let path = slice_path(&device, &s);
                match export_path(ctx, &path).await {
                    Some(true) => added.push(path.clone()),
                    Some(false) => {}
                    None => continue,
                }
                exported.insert(path);
            }
            drop(guard);
            for path in added {
                announce_added(ctx, &path).await;
            }
        }
        Event::SlicesRemoved { device, slices } => {
            let mut removed = Vec::new();
            let mut guard = ctx.exported.lock().await;
            let exported = Arc::make_mut(&mut guard);
            for s in slices {
                let path = slice_path(&device, &s);
                if let Some(interface) = unexport_path(ctx, &path).await {
                    removed.push((path.clone(), interface));
                }
                exported.remove(&path);
            }
            drop(guard);
            for (path, interface) in removed {
                announce_removed(ctx, &path, interface).await;
            }
        }
        Event::DevicePresence { .. } | Event::PolicyReloaded { .. } => {
            // The devices and slices are exported or removed (InterfacesAdded/Removed) and the
            // Manager's properties follow: Devices, and after a reload PolicyRevision.
            let reloaded = matches!(event, Event::PolicyReloaded { .. });
            export_all(ctx, Announce::Yes).await;
            if let Ok(iface) = ctx
                .conn
                .object_server()
                .interface::<_, ManagerObject>(ROOT_PATH)
                .await
            {
                let obj = iface.get().await;
                if reloaded {
                    let _ = obj.policy_revision_changed(iface.signal_emitter()).await;
                }
                let _ = obj.devices_changed(iface.signal_emitter()).await;
            }
        }
        Event::JobStarted(id) => {
            let path = job_path(id.0);
            let obj = JobObject::new(ctx.clone(), id);
            match ctx.conn.object_server().at(path.as_str(), obj).await {
                Ok(added) => {
                    ctx.exported_jobs.lock().await.insert(id.0);
                    if added.is_none() {
                        announce(ctx, &path, &Managed::Job(JobObject::new(ctx.clone(), id))).await;
                    }
                }
                Err(e) => tracing::error!("cannot export job {id}: {e}"),
            }
        }
        Event::JobProgress(id) => {
            if let Some(iface) = job_iface(ctx, id).await {
                let _ = iface
                    .get()
                    .await
                    .progress_changed(iface.signal_emitter())
                    .await;
            }
        }
        Event::JobFinished(id) => {
            if let Some(iface) = job_iface(ctx, id).await {
                let emitter = iface.signal_emitter();
                let obj = iface.get().await;
                let _ = obj.progress_changed(emitter).await;
                let _ = obj.state_changed(emitter).await;
                let _ = obj.message_changed(emitter).await;
                if let Some(job) = ctx.engine.job(id) {
                    let st = job.status();
                    let success = st.state == accelgate_proto::JobState::Succeeded;
                    let _ = JobObject::completed(emitter, success, &st.message).await;
                }
            }
        }
        Event::JobRemoved(id) => {
            ctx.exported_jobs.lock().await.remove(&id.0);
            let path = job_path(id.0);
            let server = ctx.conn.object_server();
            if server.remove::<JobObject, _>(path.as_str()).await.is_ok() {
                announce_removed(ctx, &path, <JobObject as Interface>::name()).await;
            }
        }
    }
}

async fn job_iface(
    ctx: &BusContext,
    id: JobId,
) -> Option<zbus::object_server::InterfaceRef<JobObject>> {
    ctx.conn
        .object_server()
        .interface::<_, JobObject>(job_path(id.0).as_str())
        .await
        .ok()
}

/// Whether [`export_all`] announces what it adds and removes: not at start-up (the name is not
/// taken yet), always afterwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    No,
    Yes,
}

/// Puts the Manager, ObjectManager, and every device and slice object on the bus, and takes
/// off those that no longer exist. Safe to call again after any change of the model.
async fn export_all(ctx: &Arc<BusContext>, announce: Announce) {
    let server = ctx.conn.object_server();
    let _ = server.at(ROOT_PATH, ManagerObject::new(ctx.clone())).await;
    // Ours: its GetManagedObjects writes the reply as it walks the objects.
    let _ = server.at(ROOT_PATH, ObjectManager::new(ctx.clone())).await;
    let mut wanted = BTreeSet::new();
    for (d, dev) in ctx.engine.devices() {
        wanted.insert(device_path(&d));
        for s in dev.slice_ids() {
            wanted.insert(slice_path(&d, &s));
        }
    }
    let mut exported = ctx.exported.lock().await;
    let announced = announce == Announce::Yes;
    let mut removed = Vec::new();
    for path in exported.difference(&wanted) {
        if let (Some(interface), true) = (unexport_path(ctx, path).await, announced) {
            removed.push((path.clone(), interface));
        }
    }
    let mut added = Vec::new();
    for path in wanted.difference(&exported) {
        if export_path(ctx, path).await == Some(true) && announced {
            added.push(path.clone());
        }
    }
    *exported = Arc::new(wanted);
    drop(exported);
    if !announced {
        // Start-up: nobody is listening yet, for these or for PropertiesChanged.
        return;
    }
    for (path, interface) in removed {
        announce_removed(ctx, &path, interface).await;
    }
    for path in added {
        announce_added(ctx, &path).await;
    }
    // A reload may have changed what devices report (policy-derived properties).
    for d in ctx.engine.devices().keys() {
        device_changed(ctx, d).await;
    }
}

/// Puts the device or slice object named by `path` on the bus: `Some(true)` if it is new there,
/// `Some(false)` if it was there already, `None` if it cannot be (logged).
async fn export_path(ctx: &Arc<BusContext>, path: &str) -> Option<bool> {
    let server = ctx.conn.object_server();
    let result = if let Some((d, s)) = accelgate_proto::names::parse_slice_path(path) {
        let obj = SliceObject::new(ctx.clone(), d, s);
        server.at(path, obj).await.map(|old| old.is_none())
    } else if let Some(d) = accelgate_proto::names::parse_device_path(path) {
        let obj = DeviceObject::new(ctx.clone(), d);
        server.at(path, obj).await.map(|old| old.is_none())
    } else {
        return None;
    };
    result
        .map_err(|e| tracing::error!("cannot export {path}: {e}"))
        .ok()
}

/// Takes the device or slice object at `path` off the bus: its interface, if it was there.
async fn unexport_path(ctx: &BusContext, path: &str) -> Option<InterfaceName<'static>> {
    let server = ctx.conn.object_server();
    if accelgate_proto::names::parse_slice_path(path).is_some() {
        let gone = server.remove::<SliceObject, _>(path).await.ok();
        gone.map(|_| <SliceObject as Interface>::name())
    } else {
        let gone = server.remove::<DeviceObject, _>(path).await.ok();
        gone.map(|_| <DeviceObject as Interface>::name())
    }
}

/// Announces a change of a slice's Tenant and ImageSha256.
async fn slice_changed(ctx: &BusContext, d: &str, s: &str) {
    if let Ok(iface) = ctx
        .conn
        .object_server()
        .interface::<_, SliceObject>(slice_path(d, s))
        .await
    {
        let obj = iface.get().await;
        let _ = obj.tenant_changed(iface.signal_emitter()).await;
        let _ = obj.image_sha256_changed(iface.signal_emitter()).await;
    }
}

/// Announces a change of a device's NumVfs, Slices, PersonalitySha256 and firmware state.
async fn device_changed(ctx: &BusContext, d: &str) {
    if let Ok(iface) = ctx
        .conn
        .object_server()
        .interface::<_, DeviceObject>(device_path(d))
        .await
    {
        let obj = iface.get().await;
        let e = iface.signal_emitter();
        let _ = obj.num_vfs_changed(e).await;
        let _ = obj.slices_changed(e).await;
        let _ = obj.personality_sha256_changed(e).await;
        let _ = obj.firmware_locked_changed(e).await;
        let _ = obj.firmware_version_changed(e).await;
        let _ = obj.firmware_active_slot_changed(e).await;
        let _ = obj.firmware_state_changed(e).await;
        let _ = obj.firmware_last_result_changed(e).await;
        let _ = obj.kind_changed(e).await;
    }
}

/// `InterfacesAdded` for the device or slice object at `path`, just exported.
async fn announce_added(ctx: &Arc<BusContext>, path: &str) {
    if let Some(object) = Managed::at(ctx, path) {
        announce(ctx, path, &object).await;
    }
}

/// `InterfacesAdded` from the root for `object`, on the bus at `path`.
async fn announce(ctx: &BusContext, path: &str, object: &Managed) {
    let sent = match (root_emitter(ctx), ObjectPath::try_from(path)) {
        (Ok(emitter), Ok(path)) => ObjectManager::interfaces_added(&emitter, path, object).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot announce {path}: {e}");
    }
}

/// `InterfacesRemoved` from the root for the object that was at `path`.
async fn announce_removed(ctx: &BusContext, path: &str, interface: InterfaceName<'static>) {
    let sent = match (root_emitter(ctx), ObjectPath::try_from(path)) {
        (Ok(emitter), Ok(path)) => {
            ObjectManager::interfaces_removed(&emitter, path, &[interface]).await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!("cannot announce the removal of {path}: {e}");
    }
}

fn root_emitter(ctx: &BusContext) -> zbus::Result<SignalEmitter<'static>> {
    SignalEmitter::new(&ctx.conn, ROOT_PATH)
}
