//! Authorization pieces: the one table from D-Bus method to operation, the request every gate
//! sees, the seam further gates (polkit) plug into, and the caller-capability check.
//!
//! The order of gates and the deny-wins rule live in `service::Daemon::authorize`; this module
//! holds what each gate needs.

use std::fmt;
use std::fs;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;

use crate::names::{DEVICE_INTERFACE, JOB_INTERFACE, MANAGER_INTERFACE, SLICE_INTERFACE};
use crate::operation::Operation;

use super::caller::Caller;

/// How a method is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodGate {
    /// Only needs a resolvable caller (e.g. WhoAmI).
    Identity,
    /// Every gate, for this operation.
    Operation(Operation),
    /// The job's own operation on the job's target (Job.Cancel).
    JobOperation,
}

/// Every method the daemon exports, and its gate. A handler finds its gate here by the
/// interface and member of the message it handles; a method missing from the table is denied.
pub const METHOD_TABLE: &[(&str, &str, MethodGate)] = &[
    (MANAGER_INTERFACE, "WhoAmI", MethodGate::Identity),
    (
        MANAGER_INTERFACE,
        "ReloadPolicy",
        MethodGate::Operation(Operation::PolicyReload),
    ),
    (
        MANAGER_INTERFACE,
        "AuditLog",
        MethodGate::Operation(Operation::PolicyReload),
    ),
    (
        DEVICE_INTERFACE,
        "SetVfCount",
        MethodGate::Operation(Operation::DeviceConfigure),
    ),
    (
        DEVICE_INTERFACE,
        "Configure",
        MethodGate::Operation(Operation::DeviceConfigure),
    ),
    (
        DEVICE_INTERFACE,
        "Flash",
        MethodGate::Operation(Operation::DeviceFlash),
    ),
    (
        SLICE_INTERFACE,
        "Read",
        MethodGate::Operation(Operation::SliceRead),
    ),
    (
        SLICE_INTERFACE,
        "Write",
        MethodGate::Operation(Operation::SliceWrite),
    ),
    (
        SLICE_INTERFACE,
        "Map",
        MethodGate::Operation(Operation::SliceMap),
    ),
    (
        SLICE_INTERFACE,
        "Program",
        MethodGate::Operation(Operation::SliceProgram),
    ),
    (
        SLICE_INTERFACE,
        "Assign",
        MethodGate::Operation(Operation::SliceAssign),
    ),
    (
        SLICE_INTERFACE,
        "Release",
        MethodGate::Operation(Operation::SliceAssign),
    ),
    (JOB_INTERFACE, "Cancel", MethodGate::JobOperation),
];

pub fn method_gate(interface: &str, member: &str) -> Option<MethodGate> {
    METHOD_TABLE
        .iter()
        .find(|(i, m, _)| *i == interface && *m == member)
        .map(|(_, _, g)| *g)
}

/// What a request is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Manager,
    Device(String),
    Slice(String, String),
}

impl Target {
    pub fn device(&self) -> Option<&str> {
        match self {
            Target::Manager => None,
            Target::Device(d) | Target::Slice(d, _) => Some(d),
        }
    }

    pub fn slice(&self) -> Option<&str> {
        match self {
            Target::Slice(_, s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Manager => f.write_str("manager"),
            Target::Device(d) => f.write_str(d),
            Target::Slice(d, s) => write!(f, "{d}/{s}"),
        }
    }
}

/// What every gate after the role gate sees.
pub struct GateRequest<'a> {
    pub caller: &'a Caller,
    pub operation: Operation,
    pub target: &'a Target,
    pub image_sha256: Option<&'a str>,
    /// The caller set ALLOW_INTERACTIVE_AUTHORIZATION on its call.
    pub interactive: bool,
}

pub type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A further gate, after role policy and caller capabilities (polkit plugs in here).
/// `Err(reason)` denies; the reason goes to the audit log, not to the caller.
pub trait Gate: Send + Sync {
    fn name(&self) -> &'static str;
    fn check<'a>(&'a self, req: &'a GateRequest<'a>) -> GateFuture<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("the caller's process id is unknown")]
    NoPid,
    #[error("cannot read the caller's process status")]
    Proc(#[source] std::io::Error),
    #[error("the caller's process status is malformed")]
    Malformed,
    #[error("the caller's process changed while it was inspected")]
    Changed,
}

/// The caller's effective capability set, read so that a pid reused by another process is never
/// mistaken for the caller: with a pidfd, the process is checked to be alive after the read (a
/// live pidfd pins the pid); without one, the pid's start time and uid must be the same before
/// and after the read, and the uid must be the caller's.
pub fn caller_effective_caps(caller: &Caller) -> Result<u64, CapsError> {
    let pid = caller.pid.ok_or(CapsError::NoPid)?;
    let before = start_time(pid)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(CapsError::Proc)?;
    let after = start_time(pid)?;
    if before != after {
        return Err(CapsError::Changed);
    }
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let uids: Vec<u32> = field("Uid:")
        .ok_or(CapsError::Malformed)?
        .split_whitespace()
        .map(|u| u.parse().map_err(|_| CapsError::Malformed))
        .collect::<Result<_, _>>()?;
    if uids.first() != Some(&caller.uid) {
        return Err(CapsError::Changed);
    }
    let eff = u64::from_str_radix(field("CapEff:").ok_or(CapsError::Malformed)?, 16)
        .map_err(|_| CapsError::Malformed)?;
    if let Some(pidfd) = &caller.process_fd {
        // SAFETY: pidfd_send_signal with signal 0 only checks that the process behind the
        // pidfd is alive; it takes a valid fd we own, a null siginfo and no flags.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                0,
                std::ptr::null::<u8>(),
                0,
            )
        };
        if rc != 0 {
            return Err(CapsError::Changed);
        }
    }
    Ok(eff)
}

fn start_time(pid: u32) -> Result<u64, CapsError> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(CapsError::Proc)?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').ok_or(CapsError::Malformed)?.1;
    // starttime is field 22 of stat; field 3 is the first after the command name.
    rest.split_whitespace()
        .nth(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or(CapsError::Malformed)
}

/// Whether the mask holds every capability in `needed`.
pub fn holds_all(effective: u64, needed: &[caps::Capability]) -> bool {
    needed.iter().all(|c| effective & c.bitmask() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_unique() {
        for (i, (iface, member, _)) in METHOD_TABLE.iter().enumerate() {
            assert!(!METHOD_TABLE[i + 1..]
                .iter()
                .any(|(i2, m2, _)| i2 == iface && m2 == member));
        }
        assert_eq!(
            method_gate(SLICE_INTERFACE, "Write"),
            Some(MethodGate::Operation(Operation::SliceWrite))
        );
        assert_eq!(method_gate(SLICE_INTERFACE, "Erase"), None);
    }

    #[test]
    fn reads_own_caps_race_free() {
        let me = Caller {
            sender: ":1.0".into(),
            uid: nix::unistd::getuid().as_raw(),
            gids: vec![],
            pid: Some(std::process::id()),
            process_fd: None,
        };
        let eff = caller_effective_caps(&me).unwrap();
        let mine = caps::read(None, caps::CapSet::Effective).unwrap();
        assert_eq!(
            holds_all(eff, &[caps::Capability::CAP_IPC_LOCK]),
            mine.contains(&caps::Capability::CAP_IPC_LOCK)
        );
        let other = Caller {
            uid: me.uid + 1,
            ..me
        };
        assert!(matches!(
            caller_effective_caps(&other),
            Err(CapsError::Changed)
        ));
    }
}
