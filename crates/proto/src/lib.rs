//! accelgate's wire vocabulary, shared by the daemon, the client library and every tool: the
//! bus name and object paths ([`names`]), the operations policy decides on ([`Operation`]),
//! the error kinds a call can end with ([`ErrorKind`], and with the `dbus` feature the D-Bus
//! error type [`AccelError`]), job states ([`JobState`]) and image hashes ([`Sha256`]).
//!
//! The names here are a contract (`dbus/*.xml`, docs/architecture.md): other programs spell them.
#![forbid(unsafe_code)]

pub mod error;
pub mod job;
pub mod names;
pub mod operation;
pub mod refusal;
pub mod sha256;

#[cfg(feature = "dbus")]
pub use error::AccelError;
pub use error::ErrorKind;
pub use job::JobState;
pub use operation::{Operation, UnknownOperation};
pub use sha256::{ParseSha256Error, Sha256};
