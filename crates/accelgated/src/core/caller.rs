//! Who is calling, as the transport identified them (never from arguments), and the
//! caller-capability check made against the live process.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

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
    #[error("the caller's process holds capabilities from a privileged exec (not dumpable)")]
    Borrowed,
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
    // Real, effective, saved and filesystem uid all the caller's: a process that execs a
    // setuid binary after connecting (e.g. `su` waiting at its prompt while a child keeps the
    // socket) has full capabilities under a foreign effective uid, and must not lend them.
    if uids.is_empty() || uids.iter().any(|u| *u != caller.uid) {
        return Err(CapsError::Changed);
    }
    // The kernel marks a process non-dumpable when its capabilities grew (setuid or
    // file-capability exec, commit_creds with a larger set) and then owns /proc/PID by root.
    // Capabilities inherited through the ambient set leave it dumpable. So capabilities a
    // caller borrowed from a privileged binary are not counted.
    let owner = fs::metadata(format!("/proc/{pid}"))
        .map_err(CapsError::Proc)?
        .uid();
    if owner != caller.uid {
        return Err(CapsError::Borrowed);
    }
    let eff = u64::from_str_radix(field("CapEff:").ok_or(CapsError::Malformed)?, 16)
        .map_err(|_| CapsError::Malformed)?;
    if !pidfd_alive(caller) {
        return Err(CapsError::Changed);
    }
    Ok(eff)
}

/// What tells the caller's process apart from a later one with the same pid: its start time
/// (clock ticks after boot). Taken before a long wait (polkit) and compared after it with
/// [`same_process`].
pub fn process_mark(caller: &Caller) -> Result<u64, CapsError> {
    start_time(caller.pid.ok_or(CapsError::NoPid)?)
}

/// Whether the caller's process is still the one `mark` was taken of: alive (its pidfd, where
/// the bus gave one, has not polled readable) and its pid not reused (same start time).
pub fn same_process(caller: &Caller, mark: u64) -> Result<(), CapsError> {
    if process_mark(caller)? != mark || !pidfd_alive(caller) {
        return Err(CapsError::Changed);
    }
    Ok(())
}

/// False once the caller's pidfd says its process has exited; true without a pidfd.
fn pidfd_alive(caller: &Caller) -> bool {
    let Some(pidfd) = &caller.process_fd else {
        return true;
    };
    // A pidfd polls readable once its process has exited. poll is in the daemon's seccomp
    // allow-list; pidfd_send_signal is not (and need not be: nothing is ever signalled).
    let mut fds = [nix::libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: nix::libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for a pidfd we own, zero timeout: poll only reads and writes
    // the array we pass.
    let rc = unsafe { nix::libc::poll(fds.as_mut_ptr(), 1, 0) };
    rc == 0
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

    /// A process whose real uid is a user's but which runs with a root effective uid (what
    /// a setuid exec leaves) lends no capabilities, whatever its CapEff says.
    #[test]
    fn a_setuid_process_lends_no_capabilities() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it makes a process with mixed uids)");
        }
        let user = 41_999u32;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (setresuid, write, pause,
        // _exit) before it is killed.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: plain syscalls with integer arguments.
                unsafe {
                    if nix::libc::setresuid(user, 0, 0) != 0 {
                        nix::libc::_exit(1);
                    }
                    nix::libc::write(write_end.as_raw_fd(), b"x".as_ptr().cast(), 1);
                    loop {
                        nix::libc::pause();
                    }
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(write_end);
                let mut ready = [0u8; 1];
                let n = nix::unistd::read(&read_end, &mut ready).unwrap();
                let borrower = Caller {
                    sender: ":1.9".into(),
                    uid: user,
                    gids: vec![],
                    pid: Some(child.as_raw() as u32),
                    process_fd: None,
                };
                let result = caller_effective_caps(&borrower);
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                assert_eq!(n, 1, "the child could not set its uids");
                assert!(
                    result.is_err(),
                    "a setuid process lent its capabilities: {result:?}"
                );
            }
        }
    }
}
