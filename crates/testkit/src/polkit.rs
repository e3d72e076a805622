//! A real polkitd for tests: on a private system-type bus, in a private mount namespace where a
//! temp dir with our `.policy` file is bound over `/usr/share/polkit-1/actions` and temp rules
//! dirs over `/etc/polkit-1/rules.d` and `/usr/share/polkit-1/rules.d`. The host's polkit
//! configuration is never read or changed.
//!
//! Also: bus connections made with another user's credentials from inside the test process, for
//! long-lived clients (the decision cache is per connection) and raw calls.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{repo_path, require_binary, TestBus};

pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

/// A private bus like `TestBus::start`'s, plus the distribution's own bus policy for polkit:
/// only the user polkitd (which polkitd switches to before it takes its name) may own
/// polkit's name, and anyone may call it, as on a real host.
pub fn polkit_bus(dir: &Path) -> TestBus {
    let polkit_policy = Path::new(super::POLKIT_BUS_POLICY);
    assert!(
        polkit_policy.is_file(),
        "{} is missing (Debian package polkitd)",
        polkit_policy.display()
    );
    TestBus::start_with_policies(dir, &[polkit_policy])
}

/// polkitd with the project's actions and the test's rules.
pub struct TestPolkit {
    child: Option<Child>,
    address: String,
    pub actions_dir: PathBuf,
    /// Bound over /etc/polkit-1/rules.d: the test's rules go here.
    pub rules_dir: PathBuf,
    /// Bound over /usr/share/polkit-1/rules.d: kept empty, so distribution rules do not apply.
    pub vendor_rules_dir: PathBuf,
    pub log: PathBuf,
}

impl TestPolkit {
    /// Starts polkitd on `bus` with `rules` (file name, JavaScript) and waits until it owns its
    /// name.
    pub fn start(bus: &TestBus, dir: &Path, rules: &[(&str, &str)]) -> TestPolkit {
        let root = dir.join("polkit");
        let p = TestPolkit {
            child: None,
            address: bus.address.clone(),
            actions_dir: root.join("actions"),
            rules_dir: root.join("rules.d"),
            vendor_rules_dir: root.join("vendor-rules.d"),
            log: root.join("polkitd.log"),
        };
        for d in [&root, &p.actions_dir, &p.rules_dir, &p.vendor_rules_dir] {
            fs::create_dir_all(d).unwrap();
            // polkitd reads them after switching to its own user.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let policy = p.actions_dir.join("org.accelgate.policy");
        fs::copy(repo_path("policy/org.accelgate.policy"), &policy).unwrap();
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
        for (name, text) in rules {
            p.set_rule(name, text);
        }
        let mut p = p;
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let polkitd = require_binary("polkitd", "polkitd");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let script = format!(
            "set -e; mount --bind '{}' /usr/share/polkit-1/actions; \
             mount --bind '{}' /etc/polkit-1/rules.d; \
             mount --bind '{}' /usr/share/polkit-1/rules.d; \
             exec '{}'",
            self.actions_dir.display(),
            self.rules_dir.display(),
            self.vendor_rules_dir.display(),
            polkitd.display()
        );
        // unshare and sh exec into polkitd: the child's pid is polkitd's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start polkitd under unshare");
        self.child = Some(child);
        self.wait_owner(true);
    }

    /// Waits until polkit's name is owned (`true`) or not (`false`).
    pub fn wait_owner(&mut self, owned: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if name_has_owner(&self.address, POLKIT_NAME) == owned {
                return;
            }
            if owned {
                if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().unwrap()) {
                    panic!(
                        "polkitd exited with {status} before owning its name:\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "polkit name owned={} not reached after 20 s:\n{}",
                !owned,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes (or replaces) a rules file. polkitd notices and reloads on its own.
    pub fn set_rule(&self, name: &str, text: &str) {
        // Written aside and renamed, so polkitd never reads half a file.
        let tmp = self.rules_dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&tmp, self.rules_dir.join(name)).unwrap();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops polkitd (SIGTERM, then SIGKILL) and waits until its name is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.wait_owner(false);
    }

    /// Starts polkitd again with the same actions and rules.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes polkitd: it keeps its name but answers nothing.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, sig: Signal) {
        let c = self.child.as_ref().expect("polkitd is not running");
        kill(Pid::from_raw(c.id() as i32), sig).unwrap();
    }
}

impl Drop for TestPolkit {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn name_has_owner(address: &str, name: &str) -> bool {
    Command::new("busctl")
        .args(["--address", address, "status", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A bus connection authenticated as `user` (uid, primary and supplementary groups), made from
/// this (root) process: a short-lived thread takes the user's credentials with thread-local
/// raw syscalls (the libc wrappers would change every thread), and connects. The bus records a
/// connection's credentials when it connects, so the connection stays `user`'s after the thread
/// ends. Its pid is this process's.
pub fn connect_as(rt: &tokio::runtime::Runtime, address: &str, user: &str) -> zbus::Connection {
    let pw = nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {user}"));
    let name = std::ffi::CString::new(user).unwrap();
    let groups: Vec<nix::libc::gid_t> = nix::unistd::getgrouplist(&name, pw.gid)
        .unwrap()
        .iter()
        .map(|g| g.as_raw())
        .collect();
    let (uid, gid) = (pw.uid.as_raw(), pw.gid.as_raw());
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw setgroups/setresgid/setresuid change only the calling thread's
            // credentials (unlike the libc wrappers, which signal every thread); the group
            // array outlives the call and its length is passed with it. This thread does
            // nothing else afterwards but connect and end.
            unsafe {
                assert_eq!(
                    nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                    0
                );
                assert_eq!(
                    nix::libc::syscall(nix::libc::SYS_setresgid, gid, gid, gid),
                    0
                );
                assert_eq!(
                    nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid),
                    0
                );
            }
            rt.block_on(zbus::connection::Builder::address(address).build())
                .unwrap()
        })
        .join()
        .unwrap()
    })
}
