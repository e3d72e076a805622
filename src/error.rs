//! The errors the daemon replies with, by kind. The same type is what client calls return, so a
//! caller can match on `AccelError::NotAuthorized(_)` rather than on error-name strings.

/// D-Bus errors `org.accelgate.Accel1.Error.*`. The message is for humans; the kind is the
/// contract.
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

impl AccelError {
    /// The last element of the D-Bus error name, e.g. `NotAuthorized`.
    pub fn kind(&self) -> &'static str {
        match self {
            AccelError::ZBus(_) => "Bus",
            AccelError::NotAuthorized(_) => "NotAuthorized",
            AccelError::NotFound(_) => "NotFound",
            AccelError::InvalidArgument(_) => "InvalidArgument",
            AccelError::Busy(_) => "Busy",
            AccelError::Locked(_) => "Locked",
            AccelError::VerificationFailed(_) => "VerificationFailed",
            AccelError::Cancelled(_) => "Cancelled",
            AccelError::Failed(_) => "Failed",
        }
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

impl std::fmt::Display for AccelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}
