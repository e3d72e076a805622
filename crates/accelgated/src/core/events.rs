//! What the engine tells the world: every change of what a client can observe is published
//! as an [`Event`], in the order it happened. The D-Bus layer turns events into
//! `PropertiesChanged`, `InterfacesAdded`/`Removed` and job signals; the engine does not know
//! that a bus exists, and every path that changes something (a D-Bus call, SIGHUP, start-up
//! repair) announces it the same way.

use super::jobs::JobId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A slice's assignment or image changed.
    SliceChanged { device: String, slice: String },
    /// A device's VF count, personality, firmware state or policy-derived properties changed.
    DeviceChanged { device: String },
    /// Slices came into being (VFs created).
    SlicesAdded { device: String, slices: Vec<String> },
    /// Slices went away (VFs removed).
    SlicesRemoved { device: String, slices: Vec<String> },
    /// A device's PCI function came onto the bus (`present`) or left it: the device and its
    /// slices appeared or went away.
    DevicePresence { device: String, present: bool },
    /// A new policy is in force: devices and slices may have appeared, gone or changed.
    PolicyReloaded { revision: String },
    /// A job was started; it can be looked up with `Engine::job`.
    JobStarted(JobId),
    /// A running job's progress rose.
    JobProgress(JobId),
    /// A job ended (its state and message are final).
    JobFinished(JobId),
    /// A finished job is forgotten.
    JobRemoved(JobId),
}

/// Where events go. `emit` must not block: it is called on the engine's paths, with locks
/// held in a few places, in the order the changes happened.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Events recorded in memory, for tests of the engine without a bus.
#[derive(Default)]
pub struct RecordedEvents(std::sync::Mutex<Vec<Event>>);

impl RecordedEvents {
    /// Everything emitted so far, and forgets it.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl EventSink for RecordedEvents {
    fn emit(&self, event: Event) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}
