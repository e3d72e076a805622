//! From engine events to D-Bus: a queue the engine pushes into without blocking, and one task
//! that works through it in order — exporting and removing objects, emitting
//! `PropertiesChanged` and job signals.

use std::collections::BTreeSet;
use std::sync::Arc;

use accelgate_proto::names::{device_path, job_path, slice_path, ROOT_PATH};
use tokio::sync::{mpsc, oneshot};

use crate::core::{Event, EventSink, JobId};

use super::objects::{DeviceObject, JobObject, ManagerObject, ObjectManager, SliceObject};
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
        export_all(&ctx).await;
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
            let server = ctx.conn.object_server();
            let mut exported = ctx.exported.lock().await;
            for s in slices {
                let path = slice_path(&device, &s);
                let obj = SliceObject::new(ctx.clone(), &device, &s);
                if server.at(path.as_str(), obj).await.is_ok() {
                    exported.insert(path);
                }
            }
        }
        Event::SlicesRemoved { device, slices } => {
            let server = ctx.conn.object_server();
            let mut exported = ctx.exported.lock().await;
            for s in slices {
                let path = slice_path(&device, &s);
                let _ = server.remove::<SliceObject, _>(path.as_str()).await;
                exported.remove(&path);
            }
        }
        Event::DevicePresence { .. } | Event::PolicyReloaded { .. } => {
            // The devices and slices are exported or removed (InterfacesAdded/Removed) and the
            // Manager's properties follow: Devices, and after a reload PolicyRevision.
            let reloaded = matches!(event, Event::PolicyReloaded { .. });
            export_all(ctx).await;
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
                Ok(_) => {
                    ctx.exported_jobs.lock().await.insert(id.0);
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
            let _ = ctx
                .conn
                .object_server()
                .remove::<JobObject, _>(job_path(id.0).as_str())
                .await;
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

/// Puts the Manager, ObjectManager, and every device and slice object on the bus, and takes
/// off those that no longer exist. Safe to call again after any change of the model.
async fn export_all(ctx: &Arc<BusContext>) {
    let server = ctx.conn.object_server();
    let _ = server.at(ROOT_PATH, ManagerObject::new(ctx.clone())).await;
    // The ObjectManager (ours: its GetManagedObjects writes the reply as it walks the objects)
    // goes in before the objects it manages: added after them, zbus would build every object's
    // properties into one map at once to announce them; added first, each object is announced
    // as it is added.
    let _ = server.at(ROOT_PATH, ObjectManager::new(ctx.clone())).await;
    let mut wanted = BTreeSet::new();
    for (d, dev) in ctx.engine.devices() {
        wanted.insert(device_path(&d));
        for s in dev.slice_ids() {
            wanted.insert(slice_path(&d, &s));
        }
    }
    let mut exported = ctx.exported.lock().await;
    for path in exported.difference(&wanted) {
        if accelgate_proto::names::parse_slice_path(path).is_some() {
            let _ = server.remove::<SliceObject, _>(path.as_str()).await;
        } else {
            let _ = server.remove::<DeviceObject, _>(path.as_str()).await;
        }
    }
    for path in wanted.difference(&exported) {
        let result = if let Some((d, s)) = accelgate_proto::names::parse_slice_path(path) {
            server
                .at(path.as_str(), SliceObject::new(ctx.clone(), d, s))
                .await
                .map(|_| ())
        } else if let Some(d) = accelgate_proto::names::parse_device_path(path) {
            server
                .at(path.as_str(), DeviceObject::new(ctx.clone(), d))
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
    for d in ctx.engine.devices().keys() {
        device_changed(ctx, d).await;
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
