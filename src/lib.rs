//! accelgate: share PCI accelerators between tenants safely.
//!
//! This crate holds the client library (module [`client`]), the types both sides share
//! ([`names`], [`operation`], [`error`], [`policy`]), and the daemon ([`daemon`]) and simulator
//! ([`sim`]) behind the `accelgated` binary.

pub mod client;
pub mod daemon;
pub mod error;
pub mod names;
pub mod operation;
pub mod policy;
pub mod sim;

pub use error::AccelError;
pub use operation::Operation;
