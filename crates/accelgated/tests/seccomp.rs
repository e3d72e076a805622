//! Confinement in a real process: each test forks a child that confines itself and reports
//! through its exit status (and a pipe for the failure message), so the filter never touches
//! the test harness.

use std::fs;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use accelgated::sandbox::{
    caps_mask, confine, read_thread_status, SandboxConfig, SandboxError, Violation,
};
use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe2, ForkResult};

/// fork() from a multi-threaded harness is only sound while no other test is forking.
static FORK_LOCK: Mutex<()> = Mutex::new(());

/// Runs `body` in a forked child and returns how the child ended and what it reported.
fn in_child(body: impl FnOnce() -> Result<(), String>) -> (WaitStatus, String) {
    let _guard = FORK_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Close-on-exec: a process another test spawns meanwhile (a dbus-daemon) must not inherit
    // the write end, or the read below waits for that process's end instead of the child's.
    // The forked child keeps it (fork copies every fd; only an exec closes these).
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child only runs `body` and then _exit()s; glibc resets the allocator locks
    // in the child, and FORK_LOCK keeps other tests from forking concurrently.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(read_end);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let (code, message) = match outcome {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(message)) => (1, message),
                Err(_) => (2, "child panicked".to_owned()),
            };
            let mut report = fs::File::from(write_end);
            let _ = report.write_all(message.as_bytes());
            // SAFETY: ends the child without running the harness's destructors or atexit.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut message = String::new();
            fs::File::from(read_end)
                .read_to_string(&mut message)
                .unwrap();
            (waitpid(child, None).unwrap(), message)
        }
    }
}

fn assert_child_succeeded(body: impl FnOnce() -> Result<(), String>) {
    let (status, message) = in_child(body);
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "child ended with {status:?}: {message}"
    );
}

fn check(condition: bool, what: &str) -> Result<(), String> {
    condition.then_some(()).ok_or_else(|| what.to_owned())
}

fn expect_eperm<T: std::fmt::Debug>(what: &str, result: Result<T, Errno>) -> Result<(), String> {
    match result {
        Err(Errno::EPERM) => Ok(()),
        other => Err(format!("{what}: expected EPERM, got {other:?}")),
    }
}

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("building a runtime: {e}"))
}

async fn write_all(stream: &tokio::net::UnixStream, data: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < data.len() {
        stream.writable().await?;
        match stream.try_write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read_exact(stream: &tokio::net::UnixStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut read = 0;
    while read < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[read..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What must still work under the filter: tokio timers and a unix socket round trip.
fn tokio_round_trip(runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    runtime.block_on(async {
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        check(
            started.elapsed() >= Duration::from_millis(20),
            "timer fired early",
        )?;
        let (left, right) =
            tokio::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 5];
            read_exact(&right, &mut buf).await?;
            write_all(&right, &buf).await
        });
        write_all(&left, b"hello")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 5];
        read_exact(&left, &mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        check(&buf == b"hello", "echo came back different")?;
        echo.await
            .map_err(|e| format!("echo task: {e}"))?
            .map_err(|e| format!("echo: {e}"))
    })
}

/// File work the daemon and simulator do: atomic state write, links, listing, removal.
fn file_work(dir: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let tmp = dir.join("state.tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| io("create", e))?;
    file.write_all(b"assigned").map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    fs::rename(&tmp, dir.join("state")).map_err(|e| io("rename", e))?;
    let content = fs::read(dir.join("state")).map_err(|e| io("read", e))?;
    check(content == b"assigned", "state file content")?;
    fs::create_dir(dir.join("virtfn0.d")).map_err(|e| io("mkdir", e))?;
    std::os::unix::fs::symlink("virtfn0.d", dir.join("virtfn0")).map_err(|e| io("symlink", e))?;
    let target = fs::read_link(dir.join("virtfn0")).map_err(|e| io("readlink", e))?;
    check(target == Path::new("virtfn0.d"), "link target")?;
    let names = fs::read_dir(dir).map_err(|e| io("readdir", e))?.count();
    check(names == 3, "directory listing")?;
    fs::remove_file(dir.join("virtfn0")).map_err(|e| io("unlink", e))?;
    fs::remove_dir(dir.join("virtfn0.d")).map_err(|e| io("rmdir", e))?;
    fs::remove_file(dir.join("state")).map_err(|e| io("unlink", e))?;
    Ok(())
}

/// Passing an fd over a unix socket, as zbus does for images and Map().
fn pass_fd() -> Result<(), String> {
    let (left, right) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let passed = fs::File::open("/proc/self/status").map_err(|e| format!("open: {e}"))?;
    let fds = [passed.as_raw_fd()];
    sendmsg::<()>(
        left.as_raw_fd(),
        &[IoSlice::new(b"x")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sendmsg: {e}"))?;
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        right.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    let mut received = None;
    for cmsg in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            received = fds.first().copied();
        }
    }
    let fd = received.ok_or("no fd received")?;
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    let mut file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("read passed fd: {e}"))?;
    check(text.contains("Seccomp:"), "passed fd reads the status file")
}

fn execv_true() -> Result<(), Errno> {
    nix::unistd::execv(c"/bin/true", &[c"/bin/true"]).map(|_| ())
}

#[test]
fn outside_calls_fail_with_eperm_while_the_daemon_work_goes_on() {
    let dir = std::env::temp_dir().join(format!("accelgate-seccomp-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let child_dir = dir.clone();
    assert_child_succeeded(move || {
        // Threads that exist before confine: a runtime and a plain thread, as in the daemon.
        let runtime = multi_thread_runtime()?;
        tokio_round_trip(&runtime)?;
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let old_thread = std::thread::spawn(move || {
            let _ = wait.recv();
            execv_true()
        });

        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Errno,
        })
        .map_err(|e| format!("confine: {e}"))?;

        // Refused, in this thread...
        expect_eperm("execve", execv_true())?;
        expect_eperm(
            "mount",
            nix::mount::mount(
                Some("none"),
                "/mnt",
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            ),
        )?;
        // SAFETY: a refused fork creates no child; should it succeed, the child exits at once.
        match unsafe { fork() } {
            Err(Errno::EPERM) => {}
            // SAFETY: ends the unexpected child immediately.
            Ok(ForkResult::Child) => unsafe { libc::_exit(0) },
            other => return Err(format!("fork: expected EPERM, got {other:?}")),
        }
        // SAFETY: ptrace(PTRACE_TRACEME) passes no pointers.
        let traced = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        expect_eperm("ptrace", Errno::result(traced))?;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0");
        check(
            tcp.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EPERM),
            &format!("AF_INET socket: expected EPERM, got {tcp:?}"),
        )?;
        // SAFETY: an anonymous mapping request, expected to be refused; if it is not, the
        // test fails and the child exits, so the mapping is never used.
        let wx = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        check(
            wx == libc::MAP_FAILED && Errno::last() == Errno::EPERM,
            "writable+executable mmap must fail with EPERM",
        )?;
        // ...and in a thread that existed before confine (TSYNC).
        go.send(()).map_err(|e| e.to_string())?;
        let old = old_thread.join().map_err(|_| "old thread panicked")?;
        expect_eperm("execve in a pre-existing thread", old)?;

        // Allowed: the work the daemon does.
        file_work(&child_dir)?;
        pass_fd()?;
        tokio_round_trip(&runtime)?;
        let new_thread = std::thread::Builder::new()
            .name("after-confine".into())
            .spawn(|| 6 * 7)
            .map_err(|e| format!("thread spawn: {e}"))?;
        check(new_thread.join().ok() == Some(42), "new thread result")?;
        tokio_round_trip(&multi_thread_runtime()?)?;

        for thread in read_thread_status(None).map_err(|e| e.to_string())? {
            check(
                thread.seccomp == 2 && thread.no_new_privs,
                &format!("thread {} not confined: {thread:?}", thread.tid),
            )?;
        }
        Ok(())
    });
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clone3_is_steered_to_clone() {
    assert_child_succeeded(|| {
        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Kill,
        })
        .map_err(|e| format!("confine: {e}"))?;
        // SAFETY: clone3 with a null argument block; the filter answers before the kernel
        // would read it.
        let result = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        let errno = Errno::last();
        check(
            result == -1 && errno == Errno::ENOSYS,
            &format!("clone3: expected ENOSYS, got {result} / {errno}"),
        )?;
        // glibc falls back to clone for threads, which the filter allows.
        std::thread::spawn(|| ())
            .join()
            .map_err(|_| "thread after clone3 refusal".to_owned())
    });
}

#[test]
fn violation_kill_kills_the_process() {
    let (status, message) = in_child(|| {
        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Kill,
        })
        .map_err(|e| format!("confine: {e}"))?;
        // ptrace rather than execve: an exec that got through would die of the filter in the
        // new program too, and look like success here.
        // SAFETY: ptrace(PTRACE_TRACEME) passes no pointers.
        let traced = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        Err(format!("still alive after ptrace (returned {traced})"))
    });
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
        "expected death by SIGSYS, got {status:?}: {message}"
    );
}

fn is_root_with_full_caps() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false)
        && caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_RAWIO).unwrap_or(false)
}

/// Every thread — those from before confine, and one started after — shows exactly the kept
/// capabilities, no_new_privs and seccomp filter mode.
fn check_caps_in_every_thread(keep: Vec<Capability>) {
    assert!(
        is_root_with_full_caps(),
        "this test must run as root with CAP_SETPCAP and CAP_SYS_RAWIO"
    );
    assert_child_succeeded(move || {
        let runtime = multi_thread_runtime()?;
        tokio_round_trip(&runtime)?;
        let blocking = runtime.spawn_blocking(|| std::thread::sleep(Duration::from_millis(300)));
        let idle = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        let before = read_thread_status(None).map_err(|e| e.to_string())?.len();
        check(
            before >= 4,
            &format!("expected at least 4 threads, saw {before}"),
        )?;

        let expected = caps_mask(&keep);
        confine(&SandboxConfig {
            keep_caps: keep,
            on_violation: Violation::Errno,
        })
        .map_err(|e| format!("confine: {e}"))?;

        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let late = std::thread::spawn(move || {
            let _ = seen_rx.recv();
        });
        let threads = read_thread_status(None).map_err(|e| e.to_string())?;
        check(threads.len() > before, "the late thread is missing")?;
        for t in &threads {
            let ok = t.cap_eff == expected
                && t.cap_prm == expected
                && t.cap_bnd == expected
                && t.cap_inh == 0
                && t.cap_amb == 0
                && t.no_new_privs
                && t.seccomp == 2;
            check(
                ok,
                &format!(
                    "thread {} not as expected (mask {expected:#x}): {t:?}",
                    t.tid
                ),
            )?;
        }
        seen_tx.send(()).map_err(|e| e.to_string())?;
        late.join().map_err(|_| "late thread")?;
        idle.join().map_err(|_| "idle thread")?;
        runtime.block_on(blocking).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn no_capabilities_are_kept_in_any_thread() {
    check_caps_in_every_thread(Vec::new());
}

#[test]
fn kept_capabilities_are_exactly_those_asked_for_in_every_thread() {
    check_caps_in_every_thread(vec![
        Capability::CAP_SYS_RAWIO,
        Capability::CAP_DAC_OVERRIDE,
    ]);
}

#[test]
fn the_signal_used_to_reach_threads_is_left_harmless() {
    assert_child_succeeded(|| {
        let idle = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(100)));
        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Errno,
        })
        .map_err(|e| format!("confine: {e}"))?;
        // Its default action would terminate the process; a late, still-queued instance
        // must not.
        // SAFETY: raises a signal in this process only.
        unsafe { libc::raise(libc::SIGRTMIN() + 6) };
        idle.join().map_err(|_| "idle thread".to_owned())
    });
}

#[test]
fn an_unprivileged_process_is_confined_without_touching_the_bounding_set() {
    assert!(is_root_with_full_caps(), "this test must run as root");
    assert_child_succeeded(|| {
        // Like an unprivileged user: no capabilities, but the full bounding set.
        caps::clear(None, CapSet::Effective).map_err(|e| e.to_string())?;
        caps::clear(None, CapSet::Permitted).map_err(|e| e.to_string())?;
        let bounding = read_thread_status(None).map_err(|e| e.to_string())?[0].cap_bnd;
        let helper = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(100)));
        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Errno,
        })
        .map_err(|e| format!("confine: {e}"))?;
        for t in read_thread_status(None).map_err(|e| e.to_string())? {
            check(
                t.cap_eff == 0 && t.cap_prm == 0 && t.cap_bnd == bounding,
                &format!("thread {}: {t:?}", t.tid),
            )?;
            check(
                t.no_new_privs && t.seccomp == 2,
                &format!("thread {}: {t:?}", t.tid),
            )?;
        }
        expect_eperm("execve", execv_true())?;
        helper.join().map_err(|_| "helper thread".to_owned())
    });
}

#[test]
fn keeping_a_capability_that_is_not_permitted_is_refused() {
    assert!(is_root_with_full_caps(), "this test must run as root");
    assert_child_succeeded(|| {
        caps::drop(None, CapSet::Effective, Capability::CAP_SYS_RAWIO)
            .map_err(|e| e.to_string())?;
        caps::drop(None, CapSet::Permitted, Capability::CAP_SYS_RAWIO)
            .map_err(|e| e.to_string())?;
        match confine(&SandboxConfig {
            keep_caps: vec![Capability::CAP_SYS_RAWIO],
            on_violation: Violation::Errno,
        }) {
            Err(SandboxError::NotPermitted(Capability::CAP_SYS_RAWIO)) => Ok(()),
            other => Err(format!("expected NotPermitted, got {other:?}")),
        }
    });
}

/// A private bus for the zbus test; killed (by its pid) when dropped.
struct PrivateBus {
    daemon: std::process::Child,
    address: String,
}

impl PrivateBus {
    fn start() -> PrivateBus {
        let mut daemon = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("dbus-daemon must be installed for this test");
        let stdout = daemon.stdout.take().unwrap();
        let mut address = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut address).unwrap();
        PrivateBus {
            daemon,
            address: address.trim().to_owned(),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A stand-in for the daemon's objects: fds in (images) and out (Map()).
struct FdService;

#[zbus::interface(name = "org.accelgate.SandboxTest")]
impl FdService {
    /// Reads an image-like fd the caller sent.
    fn read_fd(&self, fd: zbus::OwnedFd) -> zbus::fdo::Result<String> {
        let mut text = String::new();
        fs::File::from(OwnedFd::from(fd))
            .read_to_string(&mut text)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Ok(text)
    }

    /// Hands out an fd, as Map() does.
    fn give_fd(&self) -> zbus::fdo::Result<zbus::OwnedFd> {
        let file = fs::File::open("/proc/self/status")
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Ok(OwnedFd::from(file).into())
    }
}

#[test]
fn zbus_service_and_client_work_under_the_kill_filter() {
    let bus = PrivateBus::start();
    let address = bus.address.clone();
    assert_child_succeeded(move || {
        let runtime = multi_thread_runtime()?;
        runtime.block_on(zbus_round_trip(&address))
    });
    drop(bus);
}

fn zbus_failure(what: &str) -> impl Fn(zbus::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Start-up as in the daemon (connect, serve, own a name), then confine with the kill action,
/// then a new client connection calls the service with fds both ways and reads the caller's
/// credentials from the bus.
async fn zbus_round_trip(address: &str) -> Result<(), String> {
    const NAME: &str = "org.accelgate.SandboxTest";
    const PATH: &str = "/org/accelgate/Test";
    let service = zbus::connection::Builder::address(address)
        .serve_at(PATH, FdService)
        .name(NAME)
        .build()
        .await
        .map_err(zbus_failure("service connection"))?;

    confine(&SandboxConfig {
        keep_caps: Vec::new(),
        on_violation: Violation::Kill,
    })
    .map_err(|e| format!("confine: {e}"))?;

    // A new connection after confine: socket, connect, auth, Hello.
    let client = zbus::connection::Builder::address(address)
        .build()
        .await
        .map_err(zbus_failure("client connection"))?;
    // Text only: the reply is a D-Bus string, which may not contain NUL.
    let sent = fs::File::open("/proc/self/status").map_err(|e| format!("open: {e}"))?;
    let reply = client
        .call_method(
            Some(NAME),
            PATH,
            Some(NAME),
            "ReadFd",
            &(zbus::Fd::from(OwnedFd::from(sent)),),
        )
        .await
        .map_err(zbus_failure("ReadFd"))?;
    let text: String = reply
        .body()
        .deserialize()
        .map_err(zbus_failure("ReadFd reply"))?;
    check(
        text.contains("NoNewPrivs:\t1"),
        "ReadFd read the wrong file",
    )?;

    let reply = client
        .call_method(Some(NAME), PATH, Some(NAME), "GiveFd", &())
        .await
        .map_err(zbus_failure("GiveFd"))?;
    let body = reply.body();
    let fd: zbus::Fd<'_> = body.deserialize().map_err(zbus_failure("GiveFd reply"))?;
    let fd = fd.try_to_owned().map_err(zbus_failure("GiveFd fd"))?;
    let mut status = String::new();
    fs::File::from(OwnedFd::try_from(fd).map_err(zbus_failure("GiveFd fd"))?)
        .read_to_string(&mut status)
        .map_err(|e| format!("read given fd: {e}"))?;
    check(
        status.contains("Seccomp:\t2"),
        "GiveFd returned the wrong file",
    )?;

    // Caller identity, as the daemon's authorization reads it.
    let dbus = zbus::fdo::DBusProxy::new(&service)
        .await
        .map_err(zbus_failure("DBus proxy"))?;
    let unique = client.unique_name().ok_or("client has no unique name")?;
    let credentials = dbus
        .get_connection_credentials(unique.clone().into())
        .await
        .map_err(|e| format!("GetConnectionCredentials: {e}"))?;
    check(
        credentials.unix_user_id() == Some(nix::unistd::getuid().as_raw()),
        "wrong caller uid",
    )
}

/// The caller-capability check on a bus that hands out a pidfd (dbus-broker, dbus ≥ 1.15):
/// every call that check makes must be allowed, in kill mode, or one tenant's Map kills the
/// daemon.
#[test]
fn caller_caps_check_with_a_pidfd_survives_the_kill_filter() {
    assert_child_succeeded(|| {
        // SAFETY: pidfd_open takes a pid and flags, no pointers; the returned fd is ours.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        check(raw >= 0, "pidfd_open of the test child")?;
        // SAFETY: `raw` is a fresh pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let caller = accelgated::core::Caller {
            sender: ":1.7".into(),
            uid: nix::unistd::getuid().as_raw(),
            gids: vec![],
            pid: Some(std::process::id()),
            process_fd: Some(pidfd),
        };
        confine(&SandboxConfig {
            keep_caps: Vec::new(),
            on_violation: Violation::Kill,
        })
        .map_err(|e| format!("confine: {e}"))?;
        accelgated::core::caller::caller_effective_caps(&caller)
            .map(|_| ())
            .map_err(|e| format!("caller_effective_caps: {e}"))
    });
}
