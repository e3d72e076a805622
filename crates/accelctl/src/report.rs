//! How a failed command is told: one line saying what failed and why, a hint of what to do,
//! and an exit code a script can act on.

use accelgate_client::proto::refusal::{self, parse_refusal};
use accelgate_client::ClientError;
use accelgate_client::{AccelError, Operation};
use accelgate_policy::PolicyError;

/// Exit codes.
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_AUTHORIZED: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
/// `monitor`: the daemon left the bus (or was not on it).
pub const EXIT_DAEMON_GONE: u8 = 5;

/// The errors of accelctl's own work around the client calls.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Arguments that clap cannot check alone.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the slice's file descriptor")]
    Map(#[source] nix::Error),
    #[error("cannot map the slice's file descriptor")]
    Window(#[source] accelgate_hw::WindowError),
    #[error("the mapped region has {0} bytes, fewer than one 32-bit register")]
    MapTooSmall(u64),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    #[error("cannot read standard input")]
    Stdin(#[source] std::io::Error),
    /// `monitor`: the daemon is not (or no longer) on the bus.
    #[error("{0}")]
    DaemonGone(&'static str),
    #[error("cannot write {path}")]
    WriteFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A command that failed: what it was doing, and why.
#[derive(Debug)]
pub struct Failure {
    /// e.g. `program fpga0/region0`.
    pub what: String,
    /// The operation the command needed, for the "ask for a role" hint.
    pub operation: Option<Operation>,
    pub error: CliError,
}

const BUS_HINT: &str = "is accelgated running? set --bus/ACCELGATE_BUS";

impl Failure {
    /// `accelctl: <what>: <message>` with the message's sources appended.
    pub fn line(&self) -> String {
        format!("accelctl: {}: {}", self.what, message_chain(&self.error))
    }

    pub fn hint(&self) -> Option<String> {
        let client = match &self.error {
            CliError::Client(e) => e,
            CliError::Policy(PolicyError::Invalid { .. }) => {
                return Some("fix the file at the line named above".into())
            }
            CliError::Policy(PolicyError::Read { .. } | PolicyError::NoFiles { .. }) => {
                return Some("check the path and its permissions".into())
            }
            CliError::Usage(_) => return Some(format!("see accelctl {} --help", self.command())),
            CliError::Map(_) | CliError::Window(_) | CliError::MapTooSmall(_) => {
                return Some("map-test needs a mappable slice (a VF): see accelctl show".into())
            }
            CliError::Output(_) | CliError::Stdin(_) | CliError::WriteFile { .. } => return None,
            CliError::DaemonGone(_) => return Some(BUS_HINT.into()),
        };
        match client {
            ClientError::Accel(accel) => self.accel_hint(client, accel),
            ClientError::Connect { .. } => {
                Some("is the D-Bus daemon running? set --bus/ACCELGATE_BUS".into())
            }
            ClientError::InvalidId(_) => Some("ids are letters, digits and '_'".into()),
            ClientError::ReadFile { .. } => Some("check the path and its permissions".into()),
            ClientError::ImageTooLarge { .. } => Some("is this the right image file?".into()),
            ClientError::Seal(_) => Some("memfd sealing needs Linux 3.17 or later".into()),
        }
    }

    fn accel_hint(&self, client: &ClientError, accel: &AccelError) -> Option<String> {
        Some(match accel {
            AccelError::NotAuthorized(message) => self.refusal_hint(message),
            AccelError::NotFound(_) => {
                "list what you may see with `accelctl devices` and `accelctl slices`".into()
            }
            AccelError::InvalidArgument(_) => format!("see accelctl {} --help", self.command()),
            AccelError::Busy(_) => "another operation holds the target; retry later".into(),
            AccelError::Locked(_) => {
                "the device's policy sets firmware.locked; an admin must change it".into()
            }
            AccelError::VerificationFailed(_) => {
                "check the image and its minisign signature (--signature FILE)".into()
            }
            AccelError::Cancelled(_) => return None,
            AccelError::Failed(_) => "see the daemon's log: journalctl -u accelgated".into(),
            AccelError::ZBus(_) => match client.bus_error_name().as_deref() {
                Some(
                    "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner",
                ) => BUS_HINT.into(),
                Some("org.freedesktop.DBus.Error.AccessDenied") => {
                    "the bus policy refused the call; is dbus/org.accelgate.Accel1.conf installed?"
                        .into()
                }
                Some(
                    "org.freedesktop.DBus.Error.UnknownMethod"
                    | "org.freedesktop.DBus.Error.UnknownInterface"
                    | "org.freedesktop.DBus.Error.UnknownProperty",
                ) => "accelctl and accelgated versions differ".into(),
                _ => return None,
            },
        })
    }

    /// What to do about a refusal depends on the gate that decided it.
    fn refusal_hint(&self, message: &str) -> String {
        let role_hint = || match self.operation {
            Some(op) => format!("ask an admin for a role that grants {op}"),
            None => "ask an admin for a role that grants this".into(),
        };
        let Some(refusal) = parse_refusal(message) else {
            return role_hint();
        };
        if refusal.not_assigned() {
            return "ask an operator to assign the slice to you (accelctl assign)".into();
        }
        match refusal.gate {
            refusal::GATE_ROLE => role_hint(),
            refusal::GATE_CALLER_CAPS => {
                "run it from a process holding the capabilities your role requires (an admin \
                 can tell which)"
                    .into()
            }
            refusal::GATE_POLKIT => {
                let action = match self.operation {
                    Some(op) => format!("org.accelgate.{op}"),
                    None => "this action".into(),
                };
                format!("polkit decides {action}: authenticate, or ask an admin for a polkit rule")
            }
            refusal::GATE_IDENTITY => "the daemon could not identify your process; retry".into(),
            other => format!("the {other} gate refused; see accelctl whoami"),
        }
    }

    /// The subcommand, first word of `what`.
    fn command(&self) -> &str {
        self.what.split(' ').next().unwrap_or("")
    }

    pub fn exit_code(&self) -> u8 {
        let CliError::Client(client) = &self.error else {
            return match self.error {
                CliError::Usage(_) => EXIT_USAGE,
                CliError::DaemonGone(_) => EXIT_DAEMON_GONE,
                _ => EXIT_ERROR,
            };
        };
        match client {
            ClientError::Accel(AccelError::NotAuthorized(_)) => EXIT_NOT_AUTHORIZED,
            ClientError::Accel(AccelError::NotFound(_)) => EXIT_NOT_FOUND,
            ClientError::InvalidId(_) => EXIT_USAGE,
            _ if client.bus_error_name().as_deref()
                == Some("org.freedesktop.DBus.Error.AccessDenied") =>
            {
                EXIT_NOT_AUTHORIZED
            }
            _ => EXIT_ERROR,
        }
    }
}

/// An error's message followed by those of its sources, skipping a source that its parent
/// already quotes.
pub fn message_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(what: &str, operation: Option<Operation>, error: AccelError) -> Failure {
        Failure {
            what: what.into(),
            operation,
            error: CliError::Client(ClientError::Accel(error)),
        }
    }

    fn bus_error(name: &str) -> ClientError {
        let message = accelgate_client::zbus::message::Message::method_call("/", "X")
            .build(&())
            .unwrap();
        ClientError::from(accelgate_client::zbus::Error::MethodError(
            accelgate_client::zbus::names::OwnedErrorName::try_from(name).unwrap(),
            Some("no".into()),
            message,
        ))
    }

    #[test]
    fn not_authorized_names_the_operation_and_exits_3() {
        let f = failure(
            "program fpga0/region0",
            Some(Operation::SliceProgram),
            AccelError::NotAuthorized("denied".into()),
        );
        assert_eq!(
            f.line(),
            "accelctl: program fpga0/region0: NotAuthorized: denied"
        );
        assert_eq!(
            f.hint().unwrap(),
            "ask an admin for a role that grants slice.program"
        );
        assert_eq!(f.exit_code(), EXIT_NOT_AUTHORIZED);
    }

    #[test]
    fn the_hint_follows_the_gate_that_refused() {
        let refused = |gate: &str, reason: &str| {
            failure(
                "read fpga0/region1",
                Some(Operation::SliceRead),
                AccelError::NotAuthorized(refusal::refusal_message(
                    "slice.read",
                    "fpga0/region1",
                    gate,
                    reason,
                )),
            )
            .hint()
            .unwrap()
        };
        let hint = refused(refusal::GATE_ROLE, refusal::NOT_ASSIGNED);
        assert!(hint.contains("assign the slice to you"), "{hint}");
        assert!(!hint.contains("role"), "{hint}");
        assert_eq!(
            refused(
                refusal::GATE_ROLE,
                "slice.read is not granted to the caller"
            ),
            "ask an admin for a role that grants slice.read"
        );
        let hint = refused(refusal::GATE_POLKIT, "not authorized by polkit");
        assert!(hint.contains("org.accelgate.slice.read"), "{hint}");
        let hint = refused(refusal::GATE_CALLER_CAPS, "lacks");
        assert!(hint.contains("capabilities"), "{hint}");
    }

    #[test]
    fn not_found_exits_4_and_others_1() {
        let f = failure(
            "show x",
            None,
            AccelError::NotFound("no such device".into()),
        );
        assert_eq!(f.exit_code(), EXIT_NOT_FOUND);
        assert!(f.hint().unwrap().contains("accelctl devices"));
        let f = failure("flash d", None, AccelError::Locked("locked".into()));
        assert_eq!(f.exit_code(), EXIT_ERROR);
        assert!(f.hint().unwrap().contains("firmware.locked"));
        let f = failure("read d/s", None, AccelError::Cancelled("stop".into()));
        assert_eq!(f.hint(), None);
    }

    #[test]
    fn missing_daemon_points_at_the_bus() {
        let f = Failure {
            what: "devices".into(),
            operation: None,
            error: CliError::Client(bus_error("org.freedesktop.DBus.Error.ServiceUnknown")),
        };
        assert_eq!(f.hint().unwrap(), BUS_HINT);
        assert_eq!(f.exit_code(), EXIT_ERROR);
        assert_eq!(
            f.line(),
            "accelctl: devices: org.freedesktop.DBus.Error.ServiceUnknown: no"
        );
        let f = Failure {
            what: "devices".into(),
            operation: None,
            error: CliError::Client(bus_error("org.freedesktop.DBus.Error.AccessDenied")),
        };
        assert_eq!(f.exit_code(), EXIT_NOT_AUTHORIZED);
    }

    #[test]
    fn usage_errors_exit_2_and_sources_are_shown_once() {
        let f = Failure {
            what: "write fpga0/region0".into(),
            operation: Some(Operation::SliceWrite),
            error: CliError::Usage("value 0x100 does not fit in 1 byte".into()),
        };
        assert_eq!(f.exit_code(), EXIT_USAGE);
        assert_eq!(f.hint().unwrap(), "see accelctl write --help");

        let f = Failure {
            what: "program d/s".into(),
            operation: None,
            error: CliError::Client(ClientError::ReadFile {
                path: "app.bit".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }),
        };
        assert_eq!(
            f.line(),
            "accelctl: program d/s: cannot read app.bit: entity not found"
        );
    }
}
