//! Test harness, shared by the integration tests and the benchmark: a private dbus-daemon,
//! the real `accelgated` on simulated hardware, test users and groups, and `accelctl` run as
//! those users (see also [`polkit`] for a real polkitd on the private bus).
//!
//! Needs root (to create users, run the daemon as root and clients as others) and
//! `dbus-daemon`; a test that lacks either fails with a message saying so.

pub mod polkit;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const TENANT_GROUP: &str = "accel-tenants";
pub const OPERATOR_GROUP: &str = "accel-operators";
pub const ADMIN_GROUP: &str = "accel-admins";

/// Test users: (name, supplementary group or "").
pub const USERS: &[(&str, &str)] = &[
    ("ag-tenant1", TENANT_GROUP),
    ("ag-tenant2", TENANT_GROUP),
    ("ag-operator", OPERATOR_GROUP),
    ("ag-admin", ADMIN_GROUP),
    ("ag-nobody", ""),
];

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests must run as root: they create test users and run the daemon as root and clients as other users"
    );
}

pub fn require_binary(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/lib/polkit-1",
        "/usr/libexec",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is required for this test but is not installed (Debian package {package})");
}

/// The machine-wide lock that serializes creating test users across test binaries.
pub(crate) fn users_lock() -> nix::fcntl::Flock<fs::File> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open("/tmp/accelgate-test-users.lock")
        .unwrap();
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking /tmp/accelgate-test-users.lock: {e}"))
}

/// Ends a child as a service manager would: SIGTERM to `pid` (the child itself, or the process
/// a wrapper runs for it), then, if the child has not exited after `grace`, SIGKILL; reaps it.
pub fn terminate(child: &mut std::process::Child, pid: u32, grace: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Creates the test groups and users once per machine, idempotently and safely when several
/// test binaries race (an exclusive lock file serializes them).
pub fn ensure_users() {
    require_root();
    let _guard = users_lock();
    for g in [TENANT_GROUP, OPERATOR_GROUP, ADMIN_GROUP] {
        if nix::unistd::Group::from_name(g).unwrap().is_none() {
            run_ok(Command::new("groupadd").args(["--system", g]));
        }
    }
    for (user, group) in USERS {
        if nix::unistd::User::from_name(user).unwrap().is_none() {
            let mut cmd = Command::new("useradd");
            cmd.args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ]);
            if !group.is_empty() {
                cmd.args(["--groups", group]);
            }
            cmd.arg(user);
            run_ok(&mut cmd);
        }
    }
}

pub fn uid_of(user: &str) -> u32 {
    nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {user}"))
        .uid
        .as_raw()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh directory for one test, readable by the test users (they reach the bus socket in it).
pub fn test_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "accelgate-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A [`test_dir`] that is removed when dropped (for unit tests that leave nothing running in
/// it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(test_dir(name))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A binary of the workspace (`accelgated`, `accelctl`), from the target directory the running
/// test or benchmark was built into: `cargo build --bins` (or `cargo bench`) builds them first.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // <target>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --bins, as scripts/test does)",
        path.display()
    );
    path
}

/// The distribution's system bus configuration: its default policy is what a real system bus
/// enforces (no name may be owned and no method called unless a service's policy file allows
/// it).
pub const SYSTEM_BUS_CONF: &str = "/usr/share/dbus-1/system.conf";

/// The distribution's bus policy for polkitd (only its user may own polkit's name).
pub const POLKIT_BUS_POLICY: &str = "/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf";

/// A private bus configuration that enforces the distribution's system bus policy, as a real
/// system bus loads it, plus only the given service policy files. From `system.conf` it takes
/// the bus type, the authentication mechanisms, the limits and every `<policy>` element
/// verbatim; what would make it the host's bus (listen address, user, pid file, service
/// activation helper and directories, the host's `system.d` includes) is left out and a
/// private socket is listened on instead. Panics if `system.conf` is not deny-by-default for
/// method calls, so a test never runs on a bus that lets everything through.
pub fn system_bus_config(socket: &Path, service_policies: &[&Path]) -> String {
    let system = fs::read_to_string(SYSTEM_BUS_CONF).unwrap_or_else(|e| {
        panic!("{SYSTEM_BUS_CONF} is required (Debian package dbus-daemon or dbus): {e}")
    });
    let text = strip_xml_comments(&system);
    let mut kept = Vec::new();
    for element in ["type", "auth", "limit"] {
        kept.extend(elements(&text, element));
    }
    let policies = elements(&text, "policy");
    assert!(
        policies
            .iter()
            .any(|p| p.starts_with(r#"<policy context="default">"#)
                && p.contains(r#"<deny send_type="method_call"/>"#)
                && p.contains(r#"<deny own="*"/>"#)),
        "{SYSTEM_BUS_CONF} has no deny-by-default policy for method calls and names; \
         the tests need the real system bus policy"
    );
    kept.extend(policies);
    let mut out = String::from(
        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n",
    );
    out.push_str(&format!(
        "  <listen>unix:path={}</listen>\n",
        socket.display()
    ));
    for element in kept {
        out.push_str("  ");
        out.push_str(element);
        out.push('\n');
    }
    for policy in service_policies {
        assert!(policy.is_file(), "{} is missing", policy.display());
        out.push_str(&format!("  <include>{}</include>\n", policy.display()));
    }
    out.push_str("</busconfig>\n");
    out
}

fn strip_xml_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => panic!("unterminated comment in {SYSTEM_BUS_CONF}"),
        }
    }
    out.push_str(rest);
    out
}

/// Every top-level `<name ...>...</name>` or `<name .../>` in `text`, verbatim (bus
/// configuration elements of one name do not nest).
fn elements<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = text[at..].find(&open) {
        let start = at + i;
        let after = text[start + open.len()..].chars().next();
        if !matches!(after, Some('>' | ' ' | '/' | '\n' | '\t')) {
            // e.g. <policyfoo>: another element.
            at = start + open.len();
            continue;
        }
        let tag_end = start + text[start..].find('>').expect("unterminated tag") + 1;
        let end = if text[..tag_end].ends_with("/>") {
            tag_end
        } else {
            tag_end + text[tag_end..].find(&close).expect("unclosed element") + close.len()
        };
        found.push(&text[start..end]);
        at = end;
    }
    found
}

/// A private dbus-daemon enforcing the system bus policy (see [`system_bus_config`]) with the
/// project's bus policy file, at its own address, clients reaching it as other users.
pub struct TestBus {
    child: Child,
    pub address: String,
    pub dir: PathBuf,
}

impl TestBus {
    /// The system bus policy plus `dbus/org.accelgate.Accel1.conf`, and nothing else.
    pub fn start(dir: &Path) -> TestBus {
        TestBus::start_with_policies(dir, &[])
    }

    /// Like `start`, with further service policy files (e.g. the distribution's polkit one).
    pub fn start_with_policies(dir: &Path, extra: &[&Path]) -> TestBus {
        let project_policy = repo_path("dbus/org.accelgate.Accel1.conf");
        let mut policies = vec![project_policy.as_path()];
        policies.extend_from_slice(extra);
        TestBus::start_with_config(dir, |socket| system_bus_config(socket, &policies))
    }

    /// A bus with the configuration `config` returns for its socket path.
    pub fn start_with_config(dir: &Path, config: impl FnOnce(&Path) -> String) -> TestBus {
        let dbus_daemon = require_binary("dbus-daemon", "dbus-daemon");
        let socket = dir.join("bus");
        let conf = dir.join("bus.conf");
        fs::write(&conf, config(&socket)).unwrap();
        let mut child = Command::new(dbus_daemon)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("bus.log")).unwrap())
            .spawn()
            .expect("cannot start dbus-daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(
            !address.is_empty(),
            "dbus-daemon printed no address: {}",
            fs::read_to_string(dir.join("bus.log")).unwrap_or_default()
        );
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
        TestBus {
            child,
            address,
            dir: dir.to_owned(),
        }
    }
}

impl TestBus {
    /// The bus's socket file (e.g. to mount into a container).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("bus")
    }
}

impl Drop for TestBus {
    /// Stops the bus and removes the test's directory, unless the test is failing: then the
    /// directory (logs, state, the simulated host) stays for a post-mortem.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ours = self
            .dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("accelgate-test-"));
        if ours && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The real daemon binary on simulated hardware.
pub struct TestDaemon {
    child: Option<Child>,
    pub sim_dir: PathBuf,
    pub state_dir: PathBuf,
    pub policy: PathBuf,
    pub address: String,
    pub log: PathBuf,
    /// Whether the daemon checks requests with polkit (needs polkitd on the bus).
    pub polkit: bool,
    /// Further `accelgated` arguments (e.g. `--no-sandbox`).
    pub extra_args: Vec<String>,
    /// The rest of how it was started (simulated host, environment, a wrapper command).
    pub options: DaemonOptions,
    /// From the last spawn until the daemon owned its name on the bus.
    pub ready_after: Duration,
}

/// How to start the daemon beyond [`TestDaemon::start`]'s defaults; the benchmark uses these.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// The polkit gate on (needs polkitd on the bus).
    pub polkit: bool,
    /// Further `accelgated` arguments.
    pub extra_args: Vec<String>,
    /// Where the simulated host is built; default `<dir>/sim`. The benchmark puts it on tmpfs
    /// (/dev/shm), as sysfs is in memory.
    pub sim_dir: Option<PathBuf>,
    /// `--simulate-spec` (e.g. `scale:64x64`); default the standard host.
    pub sim_spec: Option<String>,
    /// Further environment of the daemon (e.g. the simulator's unpaced switch).
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under, e.g. `["valgrind", "--tool=massif"]` (pass
    /// `--no-sandbox` too: the seccomp allow-list is the daemon's, not the wrapper's).
    pub wrapper: Vec<String>,
    /// `ACCELGATE_LOG`; default `info`.
    pub log_level: Option<String>,
    /// How long the daemon may take to own its name; default 20 s.
    pub ready_timeout: Option<Duration>,
    /// Wait for readiness over one bus connection polled every millisecond (the resolution of
    /// a start-to-ready figure) instead of running busctl every 20 ms.
    pub precise_ready: bool,
}

impl TestDaemon {
    /// Starts the daemon with `policy` (a path) on `bus`, simulated hardware and state under
    /// `dir`, and waits until it owns its name. polkit is off (`--no-polkit`).
    pub fn start(bus: &TestBus, dir: &Path, policy: &Path) -> TestDaemon {
        TestDaemon::start_opts(bus, dir, policy, false, &[])
    }

    /// Like `start`, with the polkit gate on (see common::polkit for a private polkitd).
    pub fn start_with_polkit(bus: &TestBus, dir: &Path, policy: &Path) -> TestDaemon {
        TestDaemon::start_opts(bus, dir, policy, true, &[])
    }

    /// Like `start` (polkit off), with further `accelgated` arguments.
    pub fn start_with_args(
        bus: &TestBus,
        dir: &Path,
        policy: &Path,
        extra_args: &[&str],
    ) -> TestDaemon {
        TestDaemon::start_opts(bus, dir, policy, false, extra_args)
    }

    fn start_opts(
        bus: &TestBus,
        dir: &Path,
        policy: &Path,
        polkit: bool,
        extra_args: &[&str],
    ) -> TestDaemon {
        let options = DaemonOptions {
            polkit,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            ..DaemonOptions::default()
        };
        TestDaemon::start_with(bus, dir, policy, options)
    }

    /// Starts the daemon as `options` say, with its state under `dir`, and waits until it
    /// owns its name.
    pub fn start_with(
        bus: &TestBus,
        dir: &Path,
        policy: &Path,
        options: DaemonOptions,
    ) -> TestDaemon {
        let mut d = TestDaemon {
            child: None,
            sim_dir: options.sim_dir.clone().unwrap_or_else(|| dir.join("sim")),
            state_dir: dir.join("state"),
            policy: policy.to_owned(),
            address: bus.address.clone(),
            log: dir.join("daemon.log"),
            polkit: options.polkit,
            extra_args: options.extra_args.clone(),
            options,
            ready_after: Duration::ZERO,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.options.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("accelgated"));
                c
            }
            None => Command::new(bin("accelgated")),
        };
        cmd.arg("--simulate").arg(&self.sim_dir);
        if let Some(spec) = &self.options.sim_spec {
            cmd.args(["--simulate-spec", spec]);
        }
        let started = Instant::now();
        let child = cmd
            .args(["--bus", &self.address])
            .arg("--policy")
            .arg(&self.policy)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args((!self.polkit).then_some("--no-polkit"))
            .args(&self.extra_args)
            .env(
                "ACCELGATE_LOG",
                self.options.log_level.as_deref().unwrap_or("info"),
            )
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start accelgated");
        self.child = Some(child);
        if self.options.precise_ready {
            self.wait_owner_precisely(true);
        } else {
            self.wait_ready();
        }
        self.ready_after = started.elapsed();
    }

    /// Waits until the daemon's name is owned (`true`) or gone (`false`), asking the bus every
    /// millisecond over one connection (made on a thread of its own, so this also works from
    /// inside an async runtime).
    fn wait_owner_precisely(&mut self, owned: bool) {
        let timeout = self
            .options
            .ready_timeout
            .unwrap_or(Duration::from_secs(20));
        let address = self.address.clone();
        let mut child = self.child.take();
        let result = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let conn = zbus::connection::Builder::address(address.as_str())
                        .build()
                        .await
                        .map_err(|e| format!("cannot connect to the test bus: {e}"))?;
                    let dbus = zbus::fdo::DBusProxy::new(&conn)
                        .await
                        .map_err(|e| e.to_string())?;
                    let name =
                        zbus::names::BusName::try_from(accelgate_client::proto::names::BUS_NAME)
                            .map_err(|e| e.to_string())?;
                    let deadline = Instant::now() + timeout;
                    loop {
                        let has = dbus
                            .name_has_owner(name.clone())
                            .await
                            .map_err(|e| format!("NameHasOwner: {e}"))?;
                        if has == owned {
                            return Ok(());
                        }
                        if owned {
                            if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
                                return Err(format!(
                                    "accelgated exited with {status} before it was ready"
                                ));
                            }
                        }
                        if Instant::now() > deadline {
                            return Err(format!(
                                "accelgated's name owned={} after {timeout:?}",
                                !owned
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the readiness thread panicked".into()))
        });
        self.child = child;
        if let Err(e) = result {
            panic!("{e}:\n{}", self.log_text());
        }
    }

    /// (VmRSS, VmHWM) of the daemon process in bytes, from /proc/<pid>/status.
    pub fn memory(&self) -> (u64, u64) {
        let path = format!("/proc/{}/status", self.pid());
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let kib = |field: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|k| k * 1024)
                .unwrap_or_else(|| panic!("{path}: no {field}"))
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// SIGTERM (SIGKILL after 10 s), and waits until the daemon's name is gone from the bus,
    /// so another daemon can take it.
    pub fn stop(&mut self) {
        let target = self.daemon_pid();
        if let Some(mut c) = self.child.take() {
            // Under a wrapper that forks (strace), the daemon is its child: strace passes a
            // SIGTERM on by detaching, and the daemon would run on without an owner.
            terminate(&mut c, target, Duration::from_secs(10));
        }
        self.wait_owner_precisely(false);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("busctl")
                .args(["--address", &self.address, "status", "org.accelgate.Accel1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if out.map(|s| s.success()).unwrap_or(false) {
                return;
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().unwrap()) {
                panic!(
                    "accelgated exited with {status} before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "accelgated not ready after 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap()
    }

    /// The daemon's own pid: the started process's, or under a wrapper that runs the daemon
    /// as its child (strace; valgrind runs it in place), that child's.
    pub fn daemon_pid(&self) -> u32 {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return 0;
        };
        if self.options.wrapper.is_empty() {
            return pid;
        }
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
            .unwrap_or(pid)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again over the same simulated hardware and state.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let target = self.daemon_pid();
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, target, Duration::from_secs(5));
        }
    }
}

/// The result of one accelctl run.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn ok(self) -> Ctl {
        assert_eq!(
            self.code, 0,
            "accelctl failed: {}{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the run failed with this daemon error kind (e.g. "NotAuthorized"): the exit code
    /// accelctl documents for it (3 not authorized, 4 not found, 1 any other error) and an
    /// error line `accelctl: <what>: <Kind>: <message>`. A bus error (e.g. the bus policy's
    /// AccessDenied) or a failure on the client's side does not pass for a daemon's answer.
    pub fn fails_with(self, kind: &str) -> Ctl {
        let code = match kind {
            "NotAuthorized" => 3,
            "NotFound" => 4,
            _ => 1,
        };
        assert_eq!(
            self.code, code,
            "expected {kind} (exit {code}), got exit {}: {}{}",
            self.code, self.stdout, self.stderr
        );
        let line = self.stderr.lines().next().unwrap_or_default();
        let said = line
            .strip_prefix("accelctl: ")
            .and_then(|rest| rest.split_once(": "))
            .map(|(_, error)| error);
        assert!(
            said.is_some_and(|error| error.starts_with(&format!("{kind}: "))),
            "expected the daemon's {kind}, got: {}",
            self.stderr
        );
        self
    }
}

/// Runs `accelctl --bus ADDRESS ARGS` as `user` ("root" runs it directly), with its groups.
pub fn ctl(address: &str, user: &str, args: &[&str]) -> Ctl {
    ctl_with_caps(address, user, "", args)
}

/// accelctl as `user` with `caps` raised (see `ctl_with_caps`), not yet run.
fn ctl_command(address: &str, user: &str, caps: &str, args: &[&str]) -> Command {
    let bin = bin("accelctl");
    let mut cmd = if user == "root" {
        Command::new(bin)
    } else {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ]);
        if caps.is_empty() {
            c.arg("--inh-caps=-all");
        } else {
            c.args([
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
            ]);
        }
        c.arg("--").arg(bin);
        c
    };
    cmd.args(["--bus", address]).args(args).stdin(Stdio::null());
    cmd
}

/// Like `ctl_with_caps`, left running in the background (output discarded).
pub fn spawn_ctl_with_caps(
    address: &str,
    user: &str,
    caps: &str,
    args: &[&str],
) -> std::process::Child {
    ctl_command(address, user, caps, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run accelctl")
}

/// Like `ctl`, with the capabilities in `caps` (setpriv syntax, e.g. "+ipc_lock") raised in the
/// client's effective set through the ambient set.
pub fn ctl_with_caps(address: &str, user: &str, caps: &str, args: &[&str]) -> Ctl {
    let mut cmd = ctl_command(address, user, caps, args);
    let out: Output = cmd.output().expect("cannot run accelctl");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Reads raw bytes of the simulated BAR0 of a PCI function, as the hardware holds them.
pub fn sim_bar_bytes(sim_dir: &Path, bdf: &str, offset: u64, len: usize) -> Vec<u8> {
    let bytes = fs::read(sim_dir.join(format!("sys/bus/pci/devices/{bdf}/resource0"))).unwrap();
    bytes[offset as usize..offset as usize + len].to_vec()
}

/// Writes a test image file and returns its path.
pub fn write_image(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    accelgate_hw::digest::sha256_hex(bytes)
}

/// A whole stack for one test: a private bus, the daemon on simulated hardware with the
/// simulated policy (edited by the test), and a root observer. Fields drop in order: the
/// daemon stops before its bus.
pub struct Stack {
    pub daemon: TestDaemon,
    pub bus: TestBus,
    pub dir: PathBuf,
    pub obs: Observer,
}

impl Stack {
    pub fn new(name: &str) -> Stack {
        Stack::with_policy(name, |p| p)
    }

    /// Starts everything with policy/simulated.toml as edited by `edit`.
    pub fn with_policy(name: &str, edit: impl FnOnce(String) -> String) -> Stack {
        ensure_users();
        let dir = test_dir(name);
        let policy = dir.join("policy.toml");
        fs::write(
            &policy,
            edit(fs::read_to_string(repo_path("policy/simulated.toml")).unwrap()),
        )
        .unwrap();
        let bus = TestBus::start(&dir);
        let daemon = TestDaemon::start(&bus, &dir, &policy);
        let obs = Observer::connect(&bus.address);
        Stack {
            daemon,
            bus,
            dir,
            obs,
        }
    }

    /// accelctl as `user` against this stack's daemon.
    pub fn ctl(&self, user: &str, args: &[&str]) -> Ctl {
        ctl(&self.bus.address, user, args)
    }

    /// The audit records the daemon wrote, oldest first.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.daemon.state_dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A root connection to the test bus for checking what the daemon exports.
pub struct Observer {
    pub rt: tokio::runtime::Runtime,
    pub conn: zbus::Connection,
}

impl Observer {
    pub fn connect(address: &str) -> Observer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(zbus::connection::Builder::address(address).build())
            .unwrap();
        Observer { rt, conn }
    }

    pub fn slice(&self, device: &str, slice: &str) -> accelgate_client::proxy::SliceProxy<'static> {
        let path = accelgate_client::proto::names::slice_path(device, slice);
        self.rt
            .block_on(
                accelgate_client::proxy::SliceProxy::builder(&self.conn)
                    .path(path)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build(),
            )
            .unwrap()
    }

    pub fn device(&self, device: &str) -> accelgate_client::proxy::DeviceProxy<'static> {
        let path = accelgate_client::proto::names::device_path(device);
        self.rt
            .block_on(
                accelgate_client::proxy::DeviceProxy::builder(&self.conn)
                    .path(path)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build(),
            )
            .unwrap()
    }

    /// Property values fresh from the daemon (not a proxy's cache).
    pub fn tenant(&self, device: &str, slice: &str) -> String {
        let p = self.slice(device, slice);
        self.rt
            .block_on(async { p.inner().get_property::<String>("Tenant").await.unwrap() })
    }

    pub fn image_sha256(&self, device: &str, slice: &str) -> String {
        let p = self.slice(device, slice);
        self.rt.block_on(async {
            p.inner()
                .get_property::<String>("ImageSha256")
                .await
                .unwrap()
        })
    }

    pub fn num_vfs(&self, device: &str) -> u32 {
        let p = self.device(device);
        self.rt
            .block_on(async { p.inner().get_property::<u32>("NumVfs").await.unwrap() })
    }

    pub fn slice_ids(&self, device: &str) -> Vec<String> {
        let p = self.device(device);
        let paths: Vec<zbus::OwnedObjectPath> = self
            .rt
            .block_on(async { p.inner().get_property("Slices").await.unwrap() });
        paths
            .iter()
            .map(|p| p.as_str().rsplit('/').next().unwrap().to_owned())
            .collect()
    }

    /// Read as root (an admin in the simulated policy).
    pub fn read(
        &self,
        device: &str,
        slice: &str,
        offset: u64,
        count: u32,
        width: u8,
    ) -> Result<Vec<u64>, accelgate_client::AccelError> {
        let p = self.slice(device, slice);
        self.rt.block_on(p.read(offset, count, width))
    }
}
