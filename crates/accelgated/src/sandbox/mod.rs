//! Confinement of the running daemon: capabilities, no_new_privs, seccomp.
//!
//! The daemon calls [`confine`] once start-up is done (policy loaded, bus connected, BARs
//! mapped) and before it serves requests. From then on, in every thread:
//!
//! - the bounding set holds only the kept capabilities (when the process may change it),
//!   permitted = effective = kept, inheritable and ambient are empty ([`capabilities`]);
//! - no_new_privs is set, so nothing can regain privileges through exec (which seccomp
//!   refuses anyway);
//! - a seccomp allow-list ([`syscalls`]) refuses every other system call, with EPERM or by
//!   killing the process ([`Violation`]). It is installed with TSYNC, so it covers the threads
//!   that already exist (and sets no_new_privs on them); new threads inherit it.

mod capabilities;
mod status;
mod syscalls;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::errno::Errno;
use thiserror::Error;

pub use status::{read_thread_status, ThreadStatus};
pub use syscalls::{MEMERASE, MEMGETINFO};

/// What the daemon keeps and how violations are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Capabilities kept in the bounding, permitted and effective sets (see [`required_caps`]).
    pub keep_caps: Vec<Capability>,
    pub on_violation: Violation,
}

/// What happens to a system call outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The call fails with EPERM; the daemon keeps running (useful while debugging a filter).
    Errno,
    /// The whole process is killed (SIGSYS, core dump): a compromised daemon stops at once.
    Kill,
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("capability {0} is to be kept but is not in the permitted set")]
    NotPermitted(Capability),
    #[error("cannot read the capability sets")]
    ReadCaps(#[source] caps::errors::CapsError),
    #[error("thread {tid} could not drop its capabilities: {errno}")]
    DropCaps { tid: i32, errno: Errno },
    #[error("thread {0} did not drop its capabilities in time")]
    ThreadDidNotComply(i32),
    #[error("cannot install the capability-drop signal handler: {0}")]
    SignalHandler(Errno),
    #[error("signal {0} already has a handler; it is needed to reach every thread")]
    SignalInUse(i32),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error("cannot build the seccomp filter")]
    Filter(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter on all threads")]
    Install(#[source] seccompiler::Error),
    #[error("cannot read {path}")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no readable {field} field")]
    ProcFormat { path: PathBuf, field: String },
}

/// Bit mask of capabilities, as `/proc/<pid>/status` prints them.
pub fn caps_mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |mask, cap| mask | cap.bitmask())
}

/// The capabilities the daemon needs after start-up, for hardware under `hw_root`.
///
/// - Simulation (`hw_root` is not `/`): none; the tree is files the daemon created itself.
/// - Real hardware (`hw_root` is `/`): CAP_SYS_RAWIO only. The kernel's firmware loader
///   refuses writes to a firmware-upload entry's `data` without it (`firmware_data_write`
///   checks `capable(CAP_SYS_RAWIO)`; found by the real-kernel rig, see rig/README.md), and
///   every Program, Configure, scrub-on-release and fw-upload Flash writes there.
///   Otherwise the daemon runs as uid 0, and everything it touches after start-up is owned by
///   root with owner write permission, so plain DAC grants access and CAP_DAC_OVERRIDE is not
///   needed: `sriov_numvfs` (0664), `sriov_drivers_autoprobe`, `driver_override` (0644),
///   `drivers_probe` (0200), a driver's `unbind` (0200; `revoke_driver`), firmware-upload
///   `loading` (0644), `resourceN` (0600), `/dev/mtdN`
///   (0660), the state directory (0700). `pci_mmap_resource` (sysfs `resourceN` mmap) checks
///   only lockdown (`LOCKDOWN_PCI_ACCESS`) and exclusive iomem (a BAR a driver owns cannot be
///   mapped); `sriov_numvfs_store`, `loading` and the MTD ioctls (which need only a
///   write-mode fd) check no capability. Reading PCI `config` beyond the first 64 bytes needs
///   CAP_SYS_ADMIN, checked against the credentials of the opener at open time: the hardware
///   layer reads `config` during discovery, before `confine`, or keeps an fd opened then.
///   Caller credentials come from the bus and `/proc/<pid>/status`, which is world-readable.
///
/// The root is a parameter so that a backend that ever needs a capability on real hardware
/// adds it here, with the reason, without changing the caller.
pub fn required_caps(hw_root: &Path) -> Vec<Capability> {
    if hw_root == Path::new("/") {
        vec![Capability::CAP_SYS_RAWIO]
    } else {
        Vec::new()
    }
}

/// Confines the calling process (all of its threads). See the module documentation.
pub fn confine(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(SandboxError::ReadCaps)?;
    if let Some(missing) = cfg.keep_caps.iter().find(|cap| !permitted.contains(cap)) {
        return Err(SandboxError::NotPermitted(*missing));
    }
    let keep = caps_mask(&cfg.keep_caps);
    // Shrinking the bounding set needs CAP_SETPCAP. Without it (an unprivileged run, e.g. a
    // developer's `--simulate`), the bounding set is left as it is: it only limits what an
    // execve could gain, and after this no execve can happen (no_new_privs, seccomp).
    let may_shrink_bounding = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(SandboxError::ReadCaps)?;
    let bounding_drop = if may_shrink_bounding {
        let supported: HashSet<Capability> = caps::runtime::thread_all_supported();
        supported
            .iter()
            .fold(0u64, |mask, cap| mask | cap.bitmask())
            & !keep
    } else {
        0
    };
    capabilities::drop_in_all_threads(capabilities::Target {
        keep,
        bounding_drop,
    })?;

    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;

    let own_pid = nix::unistd::getpid().as_raw().unsigned_abs();
    let prefilter = syscalls::clone3_prefilter().map_err(SandboxError::Filter)?;
    let allow_list =
        syscalls::allow_list_filter(cfg.on_violation, own_pid).map_err(SandboxError::Filter)?;
    // The pre-filter first: once the allow-list is in, seccomp() itself is refused.
    seccompiler::apply_filter_all_threads(&prefilter).map_err(SandboxError::Install)?;
    seccompiler::apply_filter_all_threads(&allow_list).map_err(SandboxError::Install)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_sets_one_bit_per_capability() {
        assert_eq!(caps_mask(&[]), 0);
        assert_eq!(
            caps_mask(&[Capability::CAP_CHOWN, Capability::CAP_SYS_RAWIO]),
            1 | 1 << 17
        );
    }

    #[test]
    fn only_real_hardware_keeps_cap_sys_rawio() {
        assert!(required_caps(Path::new("/tmp/sim")).is_empty());
        assert_eq!(
            required_caps(Path::new("/")),
            vec![Capability::CAP_SYS_RAWIO]
        );
    }
}
