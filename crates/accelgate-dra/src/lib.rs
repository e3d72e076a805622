//! accelgate-dra: the Kubernetes Dynamic Resource Allocation kubelet plugin for accelgate.
//!
//! It is an unprivileged client of `accelgated` with an operator role: it publishes the node's
//! slices as a `ResourceSlice`, and for each claim the kubelet prepares it asks the daemon to
//! assign the slice (and load the claim's image), then writes a CDI spec that gives the
//! container the daemon's bus. Only [`accel`] talks to the daemon.
#![forbid(unsafe_code)]

pub mod accel;
pub mod cdi;
pub mod checkpoint;
pub mod claim;
pub mod driver;
pub mod grpc;
pub mod proto;
pub mod publish;
pub mod registration;
pub mod sysfs;
