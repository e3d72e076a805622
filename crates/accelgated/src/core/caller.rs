//! Who is calling, as the transport identified them (never from arguments), and the
//! caller-capability check made against the live process.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};

/// A caller as the bus identifies it.
#[derive(Debug)]
pub struct Caller {
    pub sender: String,
    pub uid: u32,
    /// Primary and supplementary groups.
    pub gids: Vec<u32>,
    pub pid: Option<u32>,
    /// A pidfd of the caller's process, where the bus hands one out (no pid reuse races).
    pub process_fd: Option<OwnedFd>,
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
        // A pidfd polls readable once its process has exited. poll is in the daemon's seccomp
        // allow-list; pidfd_send_signal is not (and need not be: nothing is ever signalled).
        let mut fds = [nix::libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: nix::libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for a pidfd we own, zero timeout: poll only reads and
        // writes the array we pass.
        let rc = unsafe { nix::libc::poll(fds.as_mut_ptr(), 1, 0) };
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
