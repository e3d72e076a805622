//! Dropping capabilities in every thread of the process.
//!
//! Capability sets (and the bounding set) belong to each thread, not to the process: `capset`
//! and `PR_CAPBSET_DROP` change only the calling thread. `confine` runs after the tokio runtime
//! and zbus have started their threads, so each thread must drop its own. Like glibc does for
//! `setuid` and libcap's psx for capabilities, every other thread is sent a real-time signal
//! whose handler applies the same change; the caller then reads `/proc/self/task/*/status`
//! until every thread shows the target sets, re-signalling stragglers, and fails closed if
//! one does not get there.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;

use super::status::{read_thread_status, ThreadStatus};
use super::SandboxError;

/// Capabilities kept in the permitted and effective sets (bit n = capability n).
static KEEP: AtomicU64 = AtomicU64::new(0);
/// Capabilities to remove from the bounding set.
static BOUNDING_DROP: AtomicU64 = AtomicU64::new(0);
/// First errno a signalled thread hit (0: none), reported by the caller.
static THREAD_ERRNO: AtomicI32 = AtomicI32::new(0);

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// An unused prctl argument: passed as a full unsigned long, since the kernel rejects
/// non-zero unused arguments for some options and a variadic `0` would be only an int.
const NONE: libc::c_ulong = 0;

/// How long all threads together get to comply before confine gives up.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long a signalled thread gets before it is signalled again.
const RESIGNAL_AFTER: Duration = Duration::from_millis(200);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The target sets, as `/proc/<pid>/status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub keep: u64,
    pub bounding_drop: u64,
}

impl Target {
    pub fn reached_by(&self, status: &ThreadStatus) -> bool {
        status.cap_eff == self.keep
            && status.cap_prm == self.keep
            && status.cap_inh == 0
            && status.cap_amb == 0
            && status.cap_bnd & self.bounding_drop == 0
    }
}

/// Applies the target to the calling thread. Only raw system calls and atomics: this runs in
/// a signal handler, so it must not allocate or take locks.
fn drop_in_current_thread() -> Result<(), Errno> {
    let keep = KEEP.load(Ordering::SeqCst);
    let bounding_drop = BOUNDING_DROP.load(Ordering::SeqCst);
    // The bounding set first: dropping from it needs CAP_SETPCAP in the effective set, which
    // the capset below may remove.
    for cap in 0..64 {
        if bounding_drop & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let in_bounding = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_READ,
                cap as libc::c_ulong,
                NONE,
                NONE,
                NONE,
            )
        };
        if in_bounding == 1 {
            // SAFETY: as above.
            if unsafe {
                libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as libc::c_ulong,
                    NONE,
                    NONE,
                    NONE,
                )
            } != 0
            {
                return Err(Errno::last());
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            NONE,
            NONE,
            NONE,
        )
    };
    // EINVAL: a kernel without ambient capabilities (< 4.3) has none to clear.
    if cleared != 0 && Errno::last() != Errno::EINVAL {
        return Err(Errno::last());
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        },
        CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads one header and, for version 3, two data structs; both live on this
    // stack frame for the duration of the call and have the kernel's layout (repr(C)).
    let set =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if set != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

extern "C" fn on_drop_signal(_signal: libc::c_int) {
    // The interrupted code may be about to read errno.
    let saved = Errno::last_raw();
    if let Err(errno) = drop_in_current_thread() {
        let _ = THREAD_ERRNO.compare_exchange(0, errno as i32, Ordering::SeqCst, Ordering::SeqCst);
    }
    Errno::set_raw(saved);
}

/// The signal used to reach the other threads: a real-time one above the two glibc reserves.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

/// Installs the handler; returns the previous action, which must be "default" or "ignore" so
/// that no one else's handler is taken over.
fn install_handler(signal: libc::c_int) -> Result<libc::sigaction, SandboxError> {
    // SAFETY: sigaction is a plain C struct for which all-zero is a valid (empty) value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_drop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers refer to live, initialised sigaction structs; the handler only
    // makes async-signal-safe calls (see drop_in_current_thread).
    if unsafe { libc::sigaction(signal, &action, &mut previous) } != 0 {
        return Err(SandboxError::SignalHandler(Errno::last()));
    }
    if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN {
        // SAFETY: restores the struct the kernel just returned.
        unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
        return Err(SandboxError::SignalInUse(signal));
    }
    Ok(previous)
}

/// Leaves the signal ignored rather than at its default action (terminate): setting SIG_IGN
/// also discards instances still queued for threads that complied on an earlier signal.
fn retire_handler(signal: libc::c_int) {
    // SAFETY: an all-zero sigaction with SIG_IGN (0 flags, empty mask) is valid.
    let mut ignore: libc::sigaction = unsafe { std::mem::zeroed() };
    ignore.sa_sigaction = libc::SIG_IGN;
    // SAFETY: pointer to a live, initialised struct. Failure leaves our handler installed,
    // which is harmless: it only re-applies the same drop.
    unsafe { libc::sigaction(signal, &ignore, std::ptr::null_mut()) };
}

/// Drops capabilities to `target` in every thread of this process.
pub(super) fn drop_in_all_threads(target: Target) -> Result<(), SandboxError> {
    KEEP.store(target.keep, Ordering::SeqCst);
    BOUNDING_DROP.store(target.bounding_drop, Ordering::SeqCst);
    THREAD_ERRNO.store(0, Ordering::SeqCst);

    let signal = drop_signal();
    install_handler(signal)?;
    let result = drop_everywhere(target, signal);
    retire_handler(signal);
    result
}

fn drop_everywhere(target: Target, signal: libc::c_int) -> Result<(), SandboxError> {
    drop_in_current_thread().map_err(|errno| SandboxError::DropCaps {
        tid: nix::unistd::gettid().as_raw(),
        errno,
    })?;
    let pid = nix::unistd::getpid().as_raw();
    let started = Instant::now();
    let mut signalled: Vec<(i32, Instant)> = Vec::new();
    loop {
        let threads = read_thread_status(None)?;
        let stragglers: Vec<&ThreadStatus> =
            threads.iter().filter(|t| !target.reached_by(t)).collect();
        let errno = THREAD_ERRNO.load(Ordering::SeqCst);
        if errno != 0 {
            let tid = stragglers.first().map_or(0, |t| t.tid);
            return Err(SandboxError::DropCaps {
                tid,
                errno: Errno::from_raw(errno),
            });
        }
        if stragglers.is_empty() {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            return Err(SandboxError::ThreadDidNotComply(stragglers[0].tid));
        }
        let now = Instant::now();
        for straggler in stragglers {
            let recently = signalled
                .iter()
                .any(|&(tid, at)| tid == straggler.tid && now.duration_since(at) < RESIGNAL_AFTER);
            if recently {
                continue;
            }
            // SAFETY: tgkill takes integers only; ESRCH (thread gone) is fine to ignore.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, straggler.tid, signal) };
            signalled.retain(|&(tid, _)| tid != straggler.tid);
            signalled.push((straggler.tid, now));
        }
        thread::sleep(Duration::from_millis(1));
    }
}
