//! The errors the daemon replies with, by kind. [`ErrorKind`] is the plain list; with the
//! `dbus` feature, [`AccelError`] is the D-Bus error type both sides use, so a caller can match
//! on `AccelError::NotAuthorized(_)` rather than on error-name strings.

use std::fmt;

/// The kinds of failure a call can end with: the last element of the D-Bus error name
/// `org.accelgate.Accel1.Error.<Kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A gate denied the request. Says no more than the caller may know.
    NotAuthorized,
    /// No such device, slice or job, or not one the caller may know of.
    NotFound,
    /// Arguments out of range or malformed; nothing was changed.
    InvalidArgument,
    /// Another operation holds the target, or a budget is spent; retry later.
    Busy,
    /// The device's firmware is locked by policy.
    Locked,
    /// An image or signature did not verify.
    VerificationFailed,
    /// The operation was cancelled.
    Cancelled,
    /// The operation failed in the hardware or the daemon.
    Failed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NotAuthorized,
        ErrorKind::NotFound,
        ErrorKind::InvalidArgument,
        ErrorKind::Busy,
        ErrorKind::Locked,
        ErrorKind::VerificationFailed,
        ErrorKind::Cancelled,
        ErrorKind::Failed,
    ];

    /// `NotAuthorized`, `NotFound`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotAuthorized => "NotAuthorized",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::Busy => "Busy",
            ErrorKind::Locked => "Locked",
            ErrorKind::VerificationFailed => "VerificationFailed",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::Failed => "Failed",
        }
    }

    /// The full D-Bus error name.
    pub fn dbus_name(self) -> String {
        format!("{}.{}", crate::names::ERROR_PREFIX, self.as_str())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// D-Bus errors `org.accelgate.Accel1.Error.*`. The message is for humans; the kind is the
/// contract.
#[cfg(feature = "dbus")]
#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "org.accelgate.Accel1.Error", impl_display = false)]
pub enum AccelError {
    /// A failure of the bus itself (connection lost, name has no owner, ...).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// A gate denied the request. Says no more than the caller may know.
    NotAuthorized(String),
    /// No such device, slice or job, or not one the caller may know of.
    NotFound(String),
    /// Arguments out of range or malformed; nothing was changed.
    InvalidArgument(String),
    /// Another operation holds the target; retry later.
    Busy(String),
    /// The device's firmware is locked by policy.
    Locked(String),
    /// An image or signature did not verify.
    VerificationFailed(String),
    /// The operation was cancelled.
    Cancelled(String),
    /// The operation failed in the hardware or the daemon.
    Failed(String),
}

#[cfg(feature = "dbus")]
impl AccelError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AccelError {
        let m = message.into();
        match kind {
            ErrorKind::NotAuthorized => AccelError::NotAuthorized(m),
            ErrorKind::NotFound => AccelError::NotFound(m),
            ErrorKind::InvalidArgument => AccelError::InvalidArgument(m),
            ErrorKind::Busy => AccelError::Busy(m),
            ErrorKind::Locked => AccelError::Locked(m),
            ErrorKind::VerificationFailed => AccelError::VerificationFailed(m),
            ErrorKind::Cancelled => AccelError::Cancelled(m),
            ErrorKind::Failed => AccelError::Failed(m),
        }
    }

    /// The daemon-side kind; `None` for a failure of the bus itself.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        Some(match self {
            AccelError::ZBus(_) => return None,
            AccelError::NotAuthorized(_) => ErrorKind::NotAuthorized,
            AccelError::NotFound(_) => ErrorKind::NotFound,
            AccelError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            AccelError::Busy(_) => ErrorKind::Busy,
            AccelError::Locked(_) => ErrorKind::Locked,
            AccelError::VerificationFailed(_) => ErrorKind::VerificationFailed,
            AccelError::Cancelled(_) => ErrorKind::Cancelled,
            AccelError::Failed(_) => ErrorKind::Failed,
        })
    }

    /// The last element of the D-Bus error name, e.g. `NotAuthorized`; `Bus` for a failure of
    /// the bus itself.
    pub fn kind(&self) -> &'static str {
        self.error_kind().map_or("Bus", ErrorKind::as_str)
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            AccelError::ZBus(e) => e.to_string(),
            AccelError::NotAuthorized(m)
            | AccelError::NotFound(m)
            | AccelError::InvalidArgument(m)
            | AccelError::Busy(m)
            | AccelError::Locked(m)
            | AccelError::VerificationFailed(m)
            | AccelError::Cancelled(m)
            | AccelError::Failed(m) => m.clone(),
        }
    }
}

#[cfg(feature = "dbus")]
impl std::fmt::Display for AccelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contract() {
        assert_eq!(
            ErrorKind::NotAuthorized.dbus_name(),
            "org.accelgate.Accel1.Error.NotAuthorized"
        );
        for kind in ErrorKind::ALL {
            #[cfg(feature = "dbus")]
            {
                let e = AccelError::new(kind, "m");
                assert_eq!(e.error_kind(), Some(kind));
                assert_eq!(e.kind(), kind.as_str());
                assert_eq!(e.message(), "m");
            }
            assert!(!kind.as_str().is_empty());
        }
    }
}
