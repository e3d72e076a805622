//! Harness for playing the kubelet: a private dbus-daemon, the real `accelgated` on simulated
//! hardware, a loopback fake of the Kubernetes API, and the plugin binary run as its own
//! unprivileged user. The bus and daemon follow the approach of the root crate's
//! tests/common (the shared testkit crate will hold one copy).
//!
//! Needs root (users, the daemon) and `dbus-daemon`, `busctl`, `setpriv`; a missing one fails
//! the test with a message.
#![allow(dead_code)]

pub mod fake_kube;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The plugin's user: the daemon knows it by this name and gives it the `kubernetes` role.
pub const PLUGIN_USER: &str = "agdra-plugin";
/// A tenant the claims name by uid.
pub const TENANT_USER: &str = "agdra-tenant";

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests must run as root: they create users and run the daemon as root and the plugin as another user"
    );
}

pub fn require_binary(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is required for this test but is not installed (Debian package {package})");
}

/// The root of the workspace (policy, dbus configuration, scripts).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A binary of the workspace's other package (accelgated, accelctl), built next to this test.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("test binary outside a target directory");
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --workspace --bins; scripts/test does)",
        p.display()
    );
    p
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

/// Creates the plugin's and the tenant's users once per machine (a lock serializes racing
/// test binaries).
pub fn ensure_users() {
    require_root();
    let lock = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open("/tmp/accelgate-test-users.lock")
        .unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    for user in [PLUGIN_USER, TENANT_USER] {
        if nix::unistd::User::from_name(user).unwrap().is_none() {
            run_ok(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]));
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

/// A fresh directory readable by everyone (the plugin's user reaches sockets in it).
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accelgate-dra-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory owned by `user`.
pub fn owned_dir(path: &Path, user: &str) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    let uid = nix::unistd::Uid::from_raw(uid_of(user));
    nix::unistd::chown(path, Some(uid), None).unwrap();
    path.to_owned()
}

/// A private system-type dbus-daemon with the project's bus policy.
pub struct TestBus {
    child: Child,
    pub address: String,
    pub socket: PathBuf,
}

impl TestBus {
    pub fn start(dir: &Path) -> TestBus {
        let dbus_daemon = require_binary("dbus-daemon", "dbus-daemon");
        let socket = dir.join("bus");
        let conf = dir.join("bus.conf");
        let project_policy = repo_path("dbus/org.accelgate.Accel1.conf");
        let template = fs::read_to_string(repo_path("scripts/private-bus.conf.in")).unwrap();
        let text = template
            .replace("@SOCKET@", &socket.display().to_string())
            .replace("@PROJECT_POLICY@", &project_policy.display().to_string());
        fs::write(&conf, text).unwrap();
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
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
        TestBus {
            child,
            address,
            socket,
        }
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
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

    pub fn assert_alive(&mut self, what: &str) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            panic!("{what} exited with {status}:\n{}", self.log_text());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The real daemon on simulated hardware, with `policy`; waits until it owns its name.
pub fn start_daemon(bus: &TestBus, dir: &Path, policy: &Path) -> Proc {
    let log = dir.join("daemon.log");
    let child = Command::new(workspace_binary("accelgated"))
        .arg("--simulate")
        .arg(dir.join("sim"))
        .args(["--bus", &bus.address])
        .arg("--policy")
        .arg(policy)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--no-polkit")
        .env("ACCELGATE_LOG", "info")
        .stderr(fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start accelgated");
    let mut p = Proc {
        child: Some(child),
        log,
    };
    let busctl = require_binary("busctl", "systemd");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new(&busctl)
            .args(["--address", &bus.address, "status", "org.accelgate.Accel1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return p;
        }
        p.assert_alive("accelgated");
        assert!(
            Instant::now() < deadline,
            "accelgated not ready after 20 s:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `accelctl --bus ADDRESS ARGS` as `user` and returns (success, stdout, stderr).
pub fn ctl(address: &str, user: &str, args: &[&str]) -> (bool, String, String) {
    let setpriv = require_binary("setpriv", "util-linux");
    let out = Command::new(setpriv)
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(workspace_binary("accelctl"))
        .args(["--bus", address])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run accelctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit records the daemon wrote, oldest first.
pub fn audit(dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(dir.join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `f` until it returns Some, or fails after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
