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
            let pid = c.id();
            super::terminate(&mut c, pid, Duration::from_secs(5));
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

// ------------------------------------------------------------------ authentication agent

/// A user whose password the tests know, named by polkit rules as the administrator
/// (`polkit.addAdminRule`), so `auth_admin` challenges are answered with a real PAM login.
pub const PASSWORD_USER: &str = "ag-pkadmin";
/// Its password.
pub const PASSWORD: &str = "accelgate-test-password";

/// Creates [`PASSWORD_USER`] with [`PASSWORD`] (again, if it exists: the password is reset),
/// serialized with [`super::ensure_users`]'s lock.
pub fn ensure_password_user() {
    super::ensure_users();
    let _guard = super::users_lock();
    if nix::unistd::User::from_name(PASSWORD_USER)
        .unwrap()
        .is_none()
    {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PASSWORD_USER,
            ])
            .status()
            .expect("cannot run useradd (Debian package passwd)");
        assert!(status.success(), "useradd {PASSWORD_USER}: {status}");
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot run chpasswd (Debian package passwd)");
    {
        use std::io::Write;
        let mut stdin = chpasswd.stdin.take().unwrap();
        writeln!(stdin, "{PASSWORD_USER}:{PASSWORD}").unwrap();
    }
    let status = chpasswd.wait().unwrap();
    assert!(status.success(), "chpasswd {PASSWORD_USER}: {status}");
}

/// How the test agent answers the next challenges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAnswer {
    /// Authenticates the first user polkit offers with this password, through polkit's own
    /// `polkit-agent-helper-1` (PAM service `polkit-1`), as a desktop agent does.
    Password(String),
    /// The user dismisses the dialog: polkit's `Cancelled` error.
    Dismiss,
}

/// What one challenge ended with, as the helper reported it (`SUCCESS`, `FAILURE`) or
/// `dismissed`.
pub type AgentOutcome = String;

#[derive(Debug)]
struct AgentState {
    answer: std::sync::Mutex<AgentAnswer>,
    /// While true, challenges stay open (the user has not typed yet).
    holding: std::sync::Mutex<bool>,
    released: tokio::sync::Notify,
    begun: std::sync::atomic::AtomicUsize,
    open: std::sync::atomic::AtomicUsize,
    outcomes: std::sync::Mutex<Vec<AgentOutcome>>,
    helper: PathBuf,
    bus_socket: PathBuf,
}

/// The D-Bus side of [`TestAgent`].
struct AgentObject(std::sync::Arc<AgentState>);

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.PolicyKit1.Error")]
enum AgentError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The name polkit takes for a dismissed dialog.
    Cancelled(String),
}

type Identity = (
    String,
    std::collections::HashMap<String, zbus::OwnedVariant>,
);

#[zbus::interface(name = "org.freedesktop.PolicyKit1.AuthenticationAgent")]
impl AgentObject {
    async fn begin_authentication(
        &self,
        _action_id: String,
        _message: String,
        _icon_name: String,
        _details: std::collections::HashMap<String, String>,
        cookie: String,
        identities: Vec<Identity>,
    ) -> Result<(), AgentError> {
        use std::sync::atomic::Ordering;
        let state = &self.0;
        state.begun.fetch_add(1, Ordering::SeqCst);
        state.open.fetch_add(1, Ordering::SeqCst);
        loop {
            let released = state.released.notified();
            if !*state.holding.lock().unwrap() {
                break;
            }
            released.await;
        }
        let answer = state.answer.lock().unwrap().clone();
        let result = match answer {
            AgentAnswer::Dismiss => {
                state.outcomes.lock().unwrap().push("dismissed".into());
                Err(AgentError::Cancelled("dismissed by the test agent".into()))
            }
            AgentAnswer::Password(password) => {
                let outcome = match first_unix_user(&identities) {
                    Some(user) => {
                        let state = state.clone();
                        tokio::task::spawn_blocking(move || {
                            run_helper(&state.helper, &state.bus_socket, &user, &cookie, &password)
                        })
                        .await
                        .unwrap_or_else(|e| format!("the helper thread failed: {e}"))
                    }
                    None => format!("no unix-user among {identities:?}"),
                };
                state.outcomes.lock().unwrap().push(outcome);
                // Like a real agent: the dialog closes after the attempt; polkit knows from
                // the helper whether it succeeded.
                Ok(())
            }
        };
        state.open.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn cancel_authentication(&self, _cookie: String) {}
}

fn first_unix_user(identities: &[Identity]) -> Option<String> {
    identities.iter().find_map(|(kind, details)| {
        if kind != "unix-user" {
            return None;
        }
        let uid = u32::try_from(details.get("uid")?).ok()?;
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

/// Runs `polkit-agent-helper-1 USER` with the cookie and the password on its stdin, in a
/// mount namespace where the system bus socket (where the helper, which clears its
/// environment, reports to polkitd) is the test bus. Returns its last line (`SUCCESS` or
/// `FAILURE`), or what went wrong.
fn run_helper(helper: &Path, socket: &Path, user: &str, cookie: &str, password: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let script = format!(
        "set -e; mount -t tmpfs -o mode=0755 accelgate-test-run /run; mkdir /run/dbus; \
         ln -s '{}' /run/dbus/system_bus_socket; exec '{}' \"$1\"",
        socket.display(),
        helper.display()
    );
    let mut child = match Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            user,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return format!("cannot start the helper: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut last = String::from("no answer from the helper");
    if writeln!(stdin, "{cookie}").is_ok() {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if line.starts_with("PAM_PROMPT_ECHO_OFF") || line.starts_with("PAM_PROMPT_ECHO_ON") {
                if writeln!(stdin, "{password}").is_err() {
                    break;
                }
            } else if line == "SUCCESS" || line == "FAILURE" {
                last = line;
                break;
            }
        }
    }
    drop(stdin);
    let output = child.wait_with_output();
    if last != "SUCCESS" {
        if let Ok(o) = output {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.trim().is_empty() {
                last = format!("{last}: {}", err.trim());
            }
        }
    }
    last
}

/// A polkit authentication agent for one process, as a desktop session's agent would be for
/// its session: polkitd sends it the `auth_admin`/`auth_self` challenges of that process's
/// interactive calls. It answers with a password through the real `polkit-agent-helper-1`
/// and PAM, or dismisses the dialog; it counts the challenges it got, and can hold them open.
pub struct TestAgent {
    state: std::sync::Arc<AgentState>,
    _conn: zbus::Connection,
}

/// Where the agent object is served.
const AGENT_PATH: &str = "/org/accelgate/TestAgent";

impl TestAgent {
    /// Registers an agent (as root, on its own connection to `bus`) for the process `pid`,
    /// answering `answer`.
    pub fn register(
        rt: &tokio::runtime::Runtime,
        bus: &TestBus,
        pid: u32,
        answer: AgentAnswer,
    ) -> TestAgent {
        let helper = require_binary("polkit-agent-helper-1", "polkitd");
        let state = std::sync::Arc::new(AgentState {
            answer: std::sync::Mutex::new(answer),
            holding: std::sync::Mutex::new(false),
            released: tokio::sync::Notify::new(),
            begun: Default::default(),
            open: Default::default(),
            outcomes: Default::default(),
            helper,
            bus_socket: bus.dir.join("bus"),
        });
        let conn = rt
            .block_on(async {
                let conn = zbus::connection::Builder::address(bus.address.as_str())
                    .serve_at(AGENT_PATH, AgentObject(state.clone()))
                    .build()
                    .await?;
                let start_time = process_start_time(pid);
                let subject_details: std::collections::HashMap<&str, zbus::Variant> = [
                    ("pid", zbus::Variant::U32(pid)),
                    ("start-time", zbus::Variant::U64(start_time)),
                ]
                .into_iter()
                .collect();
                conn.call_method(
                    Some(POLKIT_NAME),
                    "/org/freedesktop/PolicyKit1/Authority",
                    Some("org.freedesktop.PolicyKit1.Authority"),
                    "RegisterAuthenticationAgent",
                    &(("unix-process", subject_details), "C", AGENT_PATH),
                )
                .await?;
                Ok::<_, zbus::Error>(conn)
            })
            .unwrap_or_else(|e| panic!("cannot register the test polkit agent: {e}"));
        TestAgent { state, _conn: conn }
    }

    pub fn set_answer(&self, answer: AgentAnswer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Challenges from now on stay open until [`TestAgent::release`].
    pub fn hold(&self) {
        *self.state.holding.lock().unwrap() = true;
    }

    /// Answers the challenges held open.
    pub fn release(&self) {
        *self.state.holding.lock().unwrap() = false;
        self.state.released.notify_waiters();
    }

    /// How many challenges polkit has sent (BeginAuthentication calls).
    pub fn begun(&self) -> usize {
        self.state.begun.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many challenges are open now.
    pub fn open(&self) -> usize {
        self.state.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What each finished challenge ended with, oldest first.
    pub fn outcomes(&self) -> Vec<AgentOutcome> {
        self.state.outcomes.lock().unwrap().clone()
    }
}

/// A process's start time in clock ticks after boot (field 22 of /proc/PID/stat), which polkit
/// pairs with the pid to tell processes apart.
pub fn process_start_time(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace()
        .nth(22 - 3)
        .unwrap()
        .parse()
        .unwrap()
}
