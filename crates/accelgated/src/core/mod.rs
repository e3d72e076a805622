//! The engine: the device model, the gates every request passes, and the operations. It knows
//! nothing of D-Bus: requests arrive as a [`Request`] (the caller the transport identified)
//! and typed arguments, changes leave as [`Event`]s, and long operations are [`jobs`].
//! Hardware is reached only through `accelgate_hw`.

pub mod audit;
pub mod authz;
pub mod budget;
pub mod busy;
pub mod caller;
pub mod devices;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod error;
pub mod events;
pub mod firmware;
pub mod gatekeeper;
pub mod image;
pub mod jobs;
pub mod state;
pub mod tenant;

pub use authz::{Gate, GateFuture, GateRequest, Target};
pub use caller::Caller;
pub use engine::{Engine, EngineParts, FirmwareInfo};
pub use error::{error_chain, CoreError};
pub use events::{Event, EventSink, RecordedEvents};
pub use gatekeeper::{Authorized, Decision, Request, RoleChecked};
pub use jobs::{Job, JobId, JobStatus};
