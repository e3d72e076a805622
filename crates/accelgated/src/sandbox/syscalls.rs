//! The seccomp allow-list: which system calls the confined daemon may make, and why.
//!
//! Every entry names the code that needs it. Anything not listed is refused with the configured
//! [`Violation`] action, which covers `execve`/`execveat`, `fork`/`vfork`, `ptrace`, `mount`,
//! `kexec_*`, `bpf`, `perf_event_open`, `init_module`, `setuid`-family, `kill`, namespaces
//! (`unshare`, `setns`) and network sockets.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::Violation;

/// System calls allowed with any arguments, one group per user.
const UNRESTRICTED: &[(&str, &[libc::c_long])] = &[
    (
        // The allocator grows and shrinks the heap and its arenas; std's thread start-up maps
        // the signal stack. (`mmap` and `mprotect` are below: they are W^X-restricted.)
        "allocator",
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_msync,
        ],
    ),
    (
        // Threads of the tokio pools and of std: futex waits, robust lists and rseq are set up
        // by glibc in every new thread; `sched_getaffinity` sizes the pools. `clone3` is listed
        // so that the pre-filter's ENOSYS wins over this filter (see `clone3_prefilter`).
        "threads",
        &[
            libc::SYS_clone3,
            libc::SYS_futex,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_set_tid_address,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    ),
    (
        // Timers of the tokio time driver and `std::thread::sleep`; `restart_syscall` resumes
        // an interrupted sleep. clock_gettime is normally served by the vDSO.
        "time",
        &[
            libc::SYS_clock_gettime,
            libc::SYS_clock_getres,
            libc::SYS_gettimeofday,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_restart_syscall,
        ],
    ),
    (
        // The tokio I/O driver (mio: epoll plus an eventfd waker), and the hardware layer's
        // waits on sysfs attributes (poll) and inotify watches on the simulated tree.
        "event loop",
        &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_pwait2,
            libc::SYS_eventfd2,
            libc::SYS_ppoll,
            libc::SYS_pipe2,
            libc::SYS_inotify_init1,
            libc::SYS_inotify_add_watch,
            libc::SYS_inotify_rm_watch,
        ],
    ),
    (
        // Signal handling: tokio's signal driver installs handlers and std's stack-overflow
        // handler uses an alternate stack. Sending signals is restricted below (tgkill).
        "signals",
        &[
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_signalfd4,
        ],
    ),
    (
        // File I/O on descriptors: images arrive as fds, resource/config/sysfs attributes are
        // read and written, state files are written atomically (write, fsync, rename).
        "file descriptors",
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_lseek,
            libc::SYS_close,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_fstat,
            libc::SYS_ftruncate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_flock,
            // std::fs::copy and std::io::copy's in-kernel copy paths.
            libc::SYS_sendfile,
            libc::SYS_copy_file_range,
            libc::SYS_splice,
            // Images may be memfds; the daemon (and its tests) may create one to hand data out.
            libc::SYS_memfd_create,
        ],
    ),
    (
        // Path operations, relative to the hardware root or the state directory: discovery
        // (getdents64, readlinkat for virtfnN and driver links, statx), state files
        // (renameat, unlinkat), and the in-process simulator, which plays the kernel and
        // creates VF directories and links (mkdirat, symlinkat).
        "paths",
        &[
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_faccessat,
            libc::SYS_faccessat2,
            libc::SYS_getdents64,
            libc::SYS_readlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlinkat,
            libc::SYS_mkdirat,
            libc::SYS_symlinkat,
            libc::SYS_getcwd,
        ],
    ),
    (
        // D-Bus over the system bus socket (zbus): messages carry fds (SCM_RIGHTS) and
        // credentials; SO_PEERCRED/SO_PEERPIDFD are read with getsockopt. Creating sockets is
        // restricted to AF_UNIX below; there is no bind/listen/accept.
        "unix sockets",
        &[
            libc::SYS_connect,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_getsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
            libc::SYS_shutdown,
        ],
    ),
    (
        // Reading who we are (zbus EXTERNAL auth, logging), random numbers (HashMap seeds,
        // D-Bus GUIDs) and our own capability sets. None of these changes anything.
        "identity and randomness",
        &[
            libc::SYS_getuid,
            libc::SYS_geteuid,
            libc::SYS_getgid,
            libc::SYS_getegid,
            libc::SYS_getresuid,
            libc::SYS_getresgid,
            libc::SYS_getgroups,
            libc::SYS_capget,
            libc::SYS_uname,
            libc::SYS_getrandom,
        ],
    ),
];

/// x86_64 keeps the pre-`*at` forms, and glibc and std still call several of them there
/// (`poll`, `epoll_wait`, `dup2`, `rename`, `mkdir`, `symlink`, ... in std::fs).
#[cfg(target_arch = "x86_64")]
const LEGACY: &[(&str, &[libc::c_long])] = &[(
    "x86_64 legacy forms of calls allowed above",
    &[
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_pipe,
        libc::SYS_dup2,
        libc::SYS_readlink,
        libc::SYS_rename,
        libc::SYS_unlink,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_symlink,
        libc::SYS_getrlimit,
    ],
)];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[(&str, &[libc::c_long])] = &[];

// The MTD ioctls are defined once, by the module that makes them.
pub use accelgate_hw::mtd::{MEMERASE, MEMGETINFO};

/// CLONE_NEW* flags: a thread must never start in a new namespace.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;
/// What makes a clone a thread of this process rather than a new process.
const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_THREAD | libc::CLONE_VM | libc::CLONE_SIGHAND) as u64;

/// The filter compares the request number as the kernel sees it (an unsigned int); its
/// C type differs between libcs and architectures.
#[allow(clippy::unnecessary_cast)]
fn ioctl_request(request: libc::Ioctl) -> u64 {
    request as u64
}

fn arg(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, len, op, value)
}

/// One rule per allowed value of one argument: the call passes if the argument equals any.
fn one_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values
        .iter()
        .map(|&value| {
            SeccompRule::new(vec![arg(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                value,
            )?])
        })
        .collect()
}

/// Argument-restricted system calls. `own_pid` is the process that installs the filter.
fn restricted(own_pid: u32) -> Result<Vec<(libc::c_long, Vec<SeccompRule>)>, BackendError> {
    use SeccompCmpArgLen::{Dword, Qword};
    use SeccompCmpOp::{Eq, MaskedEq};
    let prot_exec = libc::PROT_EXEC as u64;
    let prot_write = libc::PROT_WRITE as u64;
    Ok(vec![
        // Allocator and resource mmap (BAR windows, sim files), but never memory that is
        // both writable and executable, and never turning memory executable later (the same
        // rule as systemd's MemoryDenyWriteExecute=): injected code cannot be run.
        (
            libc::SYS_mmap,
            vec![
                SeccompRule::new(vec![arg(2, Dword, MaskedEq(prot_exec), 0)?])?,
                SeccompRule::new(vec![arg(2, Dword, MaskedEq(prot_write), 0)?])?,
            ],
        ),
        (
            libc::SYS_mprotect,
            vec![SeccompRule::new(vec![arg(
                2,
                Dword,
                MaskedEq(prot_exec),
                0,
            )?])?],
        ),
        // Threads only (tokio workers, blocking pool, std::thread): CLONE_THREAD|VM|SIGHAND
        // must all be set and no namespace flag may be. A new process cannot be created.
        (
            libc::SYS_clone,
            vec![SeccompRule::new(vec![arg(
                0,
                Qword,
                MaskedEq(CLONE_THREAD_FLAGS | CLONE_NAMESPACE_FLAGS),
                CLONE_THREAD_FLAGS,
            )?])?],
        ),
        // Sockets: only AF_UNIX (the bus; socketpairs in tokio/tests). No network at all.
        (libc::SYS_socket, one_of(0, &[libc::AF_UNIX as u64])?),
        (libc::SYS_socketpair, one_of(0, &[libc::AF_UNIX as u64])?),
        // Socket options only at the socket level (timeouts, SO_PASSCRED).
        (libc::SYS_setsockopt, one_of(1, &[libc::SOL_SOCKET as u64])?),
        // fcntl: fd flags, file locks for the state directory, and reading memfd seals of
        // incoming images. No F_SETOWN/F_SETSIG/F_SETLEASE/F_NOTIFY.
        (
            libc::SYS_fcntl,
            one_of(
                1,
                &[
                    libc::F_DUPFD,
                    libc::F_DUPFD_CLOEXEC,
                    libc::F_GETFD,
                    libc::F_SETFD,
                    libc::F_GETFL,
                    libc::F_SETFL,
                    libc::F_GETLK,
                    libc::F_SETLK,
                    libc::F_SETLKW,
                    libc::F_OFD_GETLK,
                    libc::F_OFD_SETLK,
                    libc::F_OFD_SETLKW,
                    libc::F_GET_SEALS,
                    libc::F_ADD_SEALS,
                ]
                .map(|cmd| cmd as u64),
            )?,
        ),
        // ioctl: non-blocking/cloexec toggles (std, tokio), isatty (logging), and the MTD
        // backend's geometry, erase and bad-block queries. Nothing else.
        (
            libc::SYS_ioctl,
            one_of(
                1,
                &[
                    ioctl_request(libc::FIONBIO),
                    ioctl_request(libc::FIOCLEX),
                    ioctl_request(libc::FIONCLEX),
                    ioctl_request(libc::FIONREAD),
                    ioctl_request(libc::TCGETS),
                    u64::from(MEMGETINFO),
                    u64::from(MEMERASE),
                ],
            )?,
        ),
        // prctl: thread names (std and tokio name their threads), glibc's naming of anonymous
        // mappings, and reading the bounding set (libcap does, inside NSS modules such as
        // nss-systemd that resolve a tenant's user name). Nothing that changes capabilities,
        // NO_NEW_PRIVS, seccomp or dumpability.
        (
            libc::SYS_prctl,
            one_of(
                0,
                &[
                    libc::PR_SET_NAME as u64,
                    libc::PR_GET_NAME as u64,
                    libc::PR_SET_VMA as u64,
                    libc::PR_CAPBSET_READ as u64,
                ],
            )?,
        ),
        // tgkill: abort() and pthread_kill raise signals in this process only.
        (libc::SYS_tgkill, one_of(0, &[u64::from(own_pid)])?),
        // prlimit64: reading our own limits (glibc's getrlimit, std's stack guard), never
        // setting them and never another process's.
        (
            libc::SYS_prlimit64,
            vec![SeccompRule::new(vec![
                arg(0, Dword, Eq, 0)?,
                arg(2, Qword, Eq, 0)?,
            ])?],
        ),
    ])
}

/// Every allowed system call with its argument rules (empty: any arguments).
pub(super) fn allow_list(own_pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules = BTreeMap::new();
    for (_, calls) in UNRESTRICTED.iter().chain(LEGACY) {
        for &nr in *calls {
            rules.insert(nr, Vec::new());
        }
    }
    for (nr, nr_rules) in restricted(own_pid)? {
        rules.insert(nr, nr_rules);
    }
    Ok(rules)
}

/// The action for anything not on the list.
fn violation_action(violation: Violation) -> SeccompAction {
    match violation {
        Violation::Errno => SeccompAction::Errno(libc::EPERM as u32),
        Violation::Kill => SeccompAction::KillProcess,
    }
}

fn target_arch() -> Result<TargetArch, BackendError> {
    TargetArch::try_from(std::env::consts::ARCH)
}

/// The main filter: allow the list, refuse everything else.
pub(super) fn allow_list_filter(
    violation: Violation,
    own_pid: u32,
) -> Result<BpfProgram, BackendError> {
    let filter = SeccompFilter::new(
        allow_list(own_pid)?,
        violation_action(violation),
        SeccompAction::Allow,
        target_arch()?,
    )?;
    BpfProgram::try_from(filter)
}

/// `clone3` passes its flags in memory, which seccomp cannot inspect, so it cannot be limited
/// to threads. This filter makes it fail with ENOSYS, on which glibc falls back to `clone`,
/// whose flags the main filter checks. It is installed before the main filter and allows all
/// else; for `clone3` the kernel takes ERRNO over the main filter's ALLOW (more restrictive
/// action wins), so both filters together give ENOSYS.
pub(super) fn clone3_prefilter() -> Result<BpfProgram, BackendError> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target_arch()?,
    )?;
    BpfProgram::try_from(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_call_is_listed_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for (_, calls) in UNRESTRICTED.iter().chain(LEGACY) {
            for nr in *calls {
                assert!(seen.insert(*nr), "syscall {nr} listed twice");
            }
        }
        for (nr, _) in restricted(1).unwrap() {
            assert!(seen.insert(nr), "syscall {nr} listed twice");
        }
    }

    #[test]
    fn dangerous_calls_are_not_allowed() {
        let list = allow_list(1).unwrap();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_kexec_load,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_setuid,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_kill,
            libc::SYS_capset,
            libc::SYS_seccomp,
            libc::SYS_bind,
            libc::SYS_listen,
            libc::SYS_process_vm_writev,
            libc::SYS_pidfd_open,
        ] {
            assert!(!list.contains_key(&nr), "syscall {nr} must not be allowed");
        }
        #[cfg(target_arch = "x86_64")]
        for nr in [
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_iopl,
            libc::SYS_ioperm,
        ] {
            assert!(!list.contains_key(&nr), "syscall {nr} must not be allowed");
        }
    }

    #[test]
    fn mtd_ioctl_numbers_match_the_kernel_encoding() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let ioc = |dir: u32, nr: u32, size: u32| dir << 30 | size << 16 | u32::from(b'M') << 8 | nr;
        const READ: u32 = 2;
        const WRITE: u32 = 1;
        // struct mtd_info_user: u8 type, u32 flags, size, erasesize, writesize, oobsize,
        // u64 padding = 32 bytes with alignment.
        assert_eq!(MEMGETINFO, ioc(READ, 1, 32));
        assert_eq!(MEMERASE, ioc(WRITE, 2, 8));
    }

    #[test]
    fn filters_compile_for_both_actions() {
        for violation in [Violation::Errno, Violation::Kill] {
            let program = allow_list_filter(violation, 1).unwrap();
            assert!(
                program.len() < 4096,
                "BPF program too long: {}",
                program.len()
            );
        }
        assert!(!clone3_prefilter().unwrap().is_empty());
    }
}
