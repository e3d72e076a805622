//! The one error type of the client library: what the daemon said ([`AccelError`]) or what went
//! wrong on this side before or after the call.

use std::path::PathBuf;

use accelgate_proto::AccelError;

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon (or the bus on its behalf) refused or failed the request.
    #[error("{}", accel_text(.0))]
    Accel(AccelError),
    /// No connection to the bus could be made.
    #[error("cannot connect to {}", bus_text(bus))]
    Connect {
        bus: String,
        #[source]
        source: zbus::Error,
    },
    /// A device or slice id that cannot name an object (`[A-Za-z0-9_]+`).
    #[error("invalid id '{0}' (expected letters, digits and '_')")]
    InvalidId(String),
    /// An image or signature file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image is larger than any device accepts.
    #[error("image is larger than {limit} bytes")]
    ImageTooLarge { limit: u64 },
    /// The sealed memory file for an image could not be made.
    #[error("cannot make a sealed memfd for the image")]
    Seal(#[source] std::io::Error),
}

/// `Kind: message` for the daemon's errors; a bus error already names itself.
fn accel_text(error: &AccelError) -> String {
    match error {
        AccelError::ZBus(e) => e.to_string(),
        other => other.to_string(),
    }
}

fn bus_text(bus: &str) -> String {
    match bus {
        "system" | "session" => format!("the {bus} bus"),
        address => format!("bus {address}"),
    }
}

impl ClientError {
    /// The daemon's error, when the failure came from the daemon.
    pub fn accel(&self) -> Option<&AccelError> {
        match self {
            ClientError::Accel(e) => Some(e),
            _ => None,
        }
    }

    /// The D-Bus error name of a bus-level failure (e.g.
    /// `org.freedesktop.DBus.Error.ServiceUnknown` when the daemon is not running).
    pub fn bus_error_name(&self) -> Option<String> {
        let zbus_error = match self {
            ClientError::Accel(AccelError::ZBus(e)) => e,
            _ => return None,
        };
        match zbus_error {
            zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
            zbus::Error::FDO(e) => Some(zbus::DBusError::name(e.as_ref()).to_string()),
            _ => None,
        }
    }
}

impl From<AccelError> for ClientError {
    fn from(e: AccelError) -> Self {
        ClientError::Accel(e)
    }
}

/// What a bus or object server says when no object is at a path: for the caller that is the
/// same as the daemon's `NotFound`.
const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

impl From<zbus::Error> for ClientError {
    /// Bus errors carrying an `org.accelgate.Accel1.Error.*` name become that kind, and so does
    /// `UnknownObject` (`NotFound`).
    fn from(e: zbus::Error) -> Self {
        let unknown_object = match &e {
            zbus::Error::MethodError(name, description, _) if name.as_str() == UNKNOWN_OBJECT => {
                Some(description.clone().unwrap_or_default())
            }
            zbus::Error::FDO(fdo) => match fdo.as_ref() {
                zbus::fdo::Error::UnknownObject(description) => Some(description.clone()),
                _ => None,
            },
            _ => None,
        };
        match unknown_object {
            Some(description) => ClientError::Accel(AccelError::NotFound(description)),
            None => ClientError::Accel(AccelError::from(e)),
        }
    }
}

impl From<zbus::fdo::Error> for ClientError {
    fn from(e: zbus::fdo::Error) -> Self {
        ClientError::from(zbus::Error::from(e))
    }
}

/// Turns a failed job's message (`"Kind: text"`, where Kind is an [`AccelError`] kind) back
/// into the error. A message without a known kind is a plain `Failed`.
pub fn job_failure(message: &str) -> AccelError {
    let Some((kind, text)) = message.split_once(": ") else {
        return AccelError::Failed(message.to_owned());
    };
    let text = text.to_owned();
    match kind {
        "NotAuthorized" => AccelError::NotAuthorized(text),
        "NotFound" => AccelError::NotFound(text),
        "InvalidArgument" => AccelError::InvalidArgument(text),
        "Busy" => AccelError::Busy(text),
        "Locked" => AccelError::Locked(text),
        "VerificationFailed" => AccelError::VerificationFailed(text),
        "Cancelled" => AccelError::Cancelled(text),
        "Failed" => AccelError::Failed(text),
        _ => AccelError::Failed(message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_messages_map_back_to_their_kind() {
        let e = job_failure("VerificationFailed: bad signature");
        assert!(matches!(&e, AccelError::VerificationFailed(m) if m == "bad signature"));
        let e = job_failure("Cancelled: by uid 0");
        assert!(matches!(&e, AccelError::Cancelled(m) if m == "by uid 0"));
        // Unknown kinds and plain text keep the whole message.
        let e = job_failure("Oops: x");
        assert!(matches!(&e, AccelError::Failed(m) if m == "Oops: x"));
        let e = job_failure("device fell off the bus");
        assert!(matches!(&e, AccelError::Failed(m) if m == "device fell off the bus"));
    }

    #[test]
    fn messages_name_the_bus_and_the_kind() {
        let e = ClientError::Connect {
            bus: "unix:path=/tmp/b".into(),
            source: zbus::Error::Unsupported,
        };
        assert_eq!(e.to_string(), "cannot connect to bus unix:path=/tmp/b");
        let e = ClientError::Connect {
            bus: "system".into(),
            source: zbus::Error::Unsupported,
        };
        assert_eq!(e.to_string(), "cannot connect to the system bus");
        let e = ClientError::from(AccelError::Locked("firmware locked".into()));
        assert_eq!(e.to_string(), "Locked: firmware locked");
    }

    #[test]
    fn accelgate_error_names_become_kinds() {
        let name =
            zbus::names::OwnedErrorName::try_from("org.accelgate.Accel1.Error.NotFound").unwrap();
        let e = ClientError::from(zbus::Error::MethodError(
            name,
            Some("no such slice".into()),
            zbus::message::Message::method_call("/", "X")
                .build(&())
                .unwrap(),
        ));
        assert!(matches!(e.accel(), Some(AccelError::NotFound(m)) if m == "no such slice"));
        assert_eq!(e.bus_error_name(), None);

        let name = zbus::names::OwnedErrorName::try_from(UNKNOWN_OBJECT).unwrap();
        let e = ClientError::from(zbus::Error::MethodError(
            name,
            Some("Unknown object '/x'".into()),
            zbus::message::Message::method_call("/", "X")
                .build(&())
                .unwrap(),
        ));
        assert!(matches!(e.accel(), Some(AccelError::NotFound(m)) if m == "Unknown object '/x'"));
    }
}
