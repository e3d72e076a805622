//! The D-Bus face of the engine: objects (Manager with the ObjectManager, Device, Slice, Job),
//! the caller's identity from the bus, options dictionaries, the polkit gate, error names, and
//! the forwarder that turns the engine's events into signals.
//!
//! A method handler does three things: resolve the caller ([`BusContext::request`]), parse its
//! arguments into typed values, and call the engine, whose error becomes an `AccelError`
//! through one `From` impl ([`errors`]).

pub mod caller;
pub mod errors;
mod forward;
pub mod methods;
pub mod objects;
pub mod polkit;

use std::collections::BTreeSet;
use std::sync::Arc;

use accelgate_proto::AccelError;
use zbus::message::{Flags, Header};
use zbus::Connection;

use crate::core::{Engine, Request, Target};

pub use forward::{BusEvents, Forwarder};

use caller::CallerCache;

/// What every object shares: the engine, the bus connection, the caller cache, and the event
/// forwarder's queue.
pub struct BusContext {
    pub engine: Arc<Engine>,
    pub conn: Connection,
    pub callers: Arc<CallerCache>,
    events: BusEvents,
    /// Object paths of the devices and slices on the bus now. Shared: `GetManagedObjects`
    /// takes the set as it is by cloning the `Arc` (not 16k paths, 1.4 MB at 256 × 64); the
    /// forwarder changes it copy-on-write.
    exported: tokio::sync::Mutex<Arc<BTreeSet<String>>>,
    /// Numbers of the jobs on the bus now.
    exported_jobs: tokio::sync::Mutex<BTreeSet<u64>>,
}

impl BusContext {
    pub fn new(
        engine: Arc<Engine>,
        conn: Connection,
        callers: Arc<CallerCache>,
        events: BusEvents,
    ) -> Arc<BusContext> {
        Arc::new(BusContext {
            engine,
            conn,
            callers,
            events,
            exported: Default::default(),
            exported_jobs: Default::default(),
        })
    }

    /// The request behind a method call: the caller as the bus identifies it (never from the
    /// arguments) and whether it allows interactive authentication. A caller that cannot be
    /// identified is denied and audited.
    pub async fn request(&self, hdr: &Header<'_>, target: &Target) -> Result<Request, AccelError> {
        match self.callers.resolve(hdr.sender()).await {
            Ok(caller) => Ok(Request {
                caller,
                interactive: hdr
                    .primary()
                    .flags()
                    .contains(Flags::ALLOW_INTERACTIVE_AUTH),
            }),
            Err(e) => {
                let interface = hdr.interface().map(|i| i.as_str()).unwrap_or_default();
                let member = hdr.member().map(|m| m.as_str()).unwrap_or_default();
                let operation = methods::audit_name(interface, member);
                let sender = hdr.sender().map(|s| s.as_str()).unwrap_or("");
                let err = self.engine.deny_unidentified(
                    sender,
                    operation,
                    target,
                    &crate::core::error_chain(&e),
                );
                Err(err.into())
            }
        }
    }

    /// Waits until every event emitted so far has been turned into signals and objects, so a
    /// reply never overtakes what it caused (a job object exists when its path is returned).
    pub async fn settle(&self) {
        self.events.settle().await;
    }
}
