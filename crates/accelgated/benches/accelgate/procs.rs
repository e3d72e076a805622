//! The processes a benchmark run starts: a private system-type dbus-daemon, a real polkitd on
//! it (in a private mount namespace, so the host's polkit configuration is neither read nor
//! changed), and the release `accelgated` on simulated hardware.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use accelgate_client::proto::names::BUS_NAME;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Fallible;

pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";

/// Where a readiness wait gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn find_binary(name: &str, package: &str) -> Fallible<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/lib/polkit-1", "/usr/libexec"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{name} is needed (Debian package {package})"))
}

/// A child process stopped with SIGTERM (then SIGKILL) when dropped.
struct Stoppable(Option<Child>);

impl Stoppable {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The private bus: the project's bus policy included (as tests/common does), and the user
/// polkitd switches to allowed to own polkit's name, as a distribution's bus policy allows.
pub struct Bus {
    _child: Stoppable,
    pub address: String,
}

impl Bus {
    pub fn start(dir: &Path) -> Fallible<Bus> {
        let dbus_daemon = find_binary("dbus-daemon", "dbus-daemon")?;
        let socket = dir.join("bus");
        let conf = dir.join("bus.conf");
        let template = fs::read_to_string(repo_path("scripts/private-bus.conf.in"))
            .map_err(|e| format!("scripts/private-bus.conf.in: {e}"))?;
        let text = template
            .replace("@SOCKET@", &socket.display().to_string())
            .replace(
                "@PROJECT_POLICY@",
                &repo_path("dbus/org.accelgate.Accel1.conf")
                    .display()
                    .to_string(),
            )
            .replace(
                "</busconfig>",
                "  <policy user=\"polkitd\">\n    <allow own=\"org.freedesktop.PolicyKit1\"/>\n  \
                 </policy>\n</busconfig>",
            );
        fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut child = Command::new(dbus_daemon)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start dbus-daemon: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("dbus-daemon has no stdout")?;
        let child = Stoppable(Some(child));
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("dbus-daemon address: {e}"))?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            return Err("dbus-daemon printed no address".into());
        }
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o777))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        Ok(Bus {
            _child: child,
            address,
        })
    }
}

/// Waits until `name` has an owner on the bus, polling every 200 µs (the resolution of a
/// start-to-ready figure); fails early when `child` exits.
async fn wait_owned(
    conn: &zbus::Connection,
    name: &str,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
) -> Fallible<()> {
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| format!("DBus proxy: {e}"))?;
    let bus_name = zbus::names::BusName::try_from(name).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if dbus
            .name_has_owner(bus_name.clone())
            .await
            .map_err(|e| format!("NameHasOwner: {e}"))?
        {
            return Ok(());
        }
        if let Some(status) = exited() {
            return Err(format!("the owner of {name} exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not owned after {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// polkitd with the project's actions (the repository's `.policy` file when it has one, else
/// the read action alone, with the same defaults) and no rules.
pub struct Polkit {
    child: Stoppable,
    pub log: PathBuf,
}

/// The read action as `policy/org.accelgate.policy` on the polkit branch declares it, for a
/// tree that does not have that file yet.
const FALLBACK_ACTIONS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE policyconfig PUBLIC
 "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">
<policyconfig>
  <vendor>accelgate</vendor>
  <action id="org.accelgate.slice.read">
    <description>Read the registers of an accelerator slice</description>
    <message>Authentication is required to read the registers of accelerator slice $(device)/$(slice)</message>
    <defaults>
      <allow_any>yes</allow_any>
      <allow_inactive>yes</allow_inactive>
      <allow_active>yes</allow_active>
    </defaults>
  </action>
</policyconfig>
"#;

impl Polkit {
    pub async fn start(conn: &zbus::Connection, address: &str, dir: &Path) -> Fallible<Polkit> {
        let polkitd = find_binary("polkitd", "polkitd")?;
        let root = dir.join("polkit");
        let actions = root.join("actions");
        let rules = root.join("rules.d");
        let vendor_rules = root.join("vendor-rules.d");
        for d in [&root, &actions, &rules, &vendor_rules] {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            // polkitd reads them after switching to its own user.
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let action_file = actions.join("org.accelgate.policy");
        let text = fs::read_to_string(repo_path("policy/org.accelgate.policy"))
            .unwrap_or_else(|_| FALLBACK_ACTIONS.to_owned());
        fs::write(&action_file, text).map_err(|e| format!("{}: {e}", action_file.display()))?;
        fs::set_permissions(&action_file, fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("{}: {e}", action_file.display()))?;
        let log = root.join("polkitd.log");
        let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let script = format!(
            "set -e; mount --bind '{}' /usr/share/polkit-1/actions; \
             mount --bind '{}' /etc/polkit-1/rules.d; \
             mount --bind '{}' /usr/share/polkit-1/rules.d; \
             exec '{}'",
            actions.display(),
            rules.display(),
            vendor_rules.display(),
            polkitd.display()
        );
        let stderr = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start polkitd under unshare: {e}"))?;
        let mut p = Polkit {
            child: Stoppable(Some(child)),
            log,
        };
        let waited = wait_owned(conn, POLKIT_NAME, || p.child.exited()).await;
        waited.map_err(|e| format!("{e}\n{}", fs::read_to_string(&p.log).unwrap_or_default()))?;
        Ok(p)
    }
}

/// How to start one daemon.
pub struct DaemonSpec<'a> {
    /// `--simulate-spec` value.
    pub sim_spec: &'a str,
    pub policy: &'a Path,
    pub sim_dir: &'a Path,
    pub state_dir: &'a Path,
    /// Uploads at file speed instead of the simulated 64 MiB/s.
    pub unpaced: bool,
    /// Further arguments (e.g. `--no-polkit`).
    pub extra_args: &'a [&'a str],
}

/// The release `accelgated`, confined as in production.
pub struct Daemon {
    child: Stoppable,
    /// From spawn to its name being owned on the bus.
    pub ready_after: Duration,
    pub log: PathBuf,
}

impl Daemon {
    pub async fn start(
        conn: &zbus::Connection,
        address: &str,
        spec: &DaemonSpec<'_>,
    ) -> Fallible<Daemon> {
        let log = spec.state_dir.with_extension("log");
        fs::create_dir_all(spec.state_dir).map_err(|e| e.to_string())?;
        let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        // For profiling: ACCELGATE_BENCH_WRAP="valgrind --tool=callgrind" runs the daemon under
        // that command, unconfined (the seccomp allow-list is the daemon's, not valgrind's).
        let wrap = std::env::var("ACCELGATE_BENCH_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrap)
                    .arg(env!("CARGO_BIN_EXE_accelgated"))
                    .arg("--no-sandbox");
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_accelgated")),
        };
        cmd.arg("--simulate")
            .arg(spec.sim_dir)
            .args(["--simulate-spec", spec.sim_spec, "--bus", address])
            .arg("--policy")
            .arg(spec.policy)
            .arg("--state-dir")
            .arg(spec.state_dir)
            .args(spec.extra_args)
            .env("ACCELGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if spec.unpaced {
            cmd.env(accelgate_sim::UNPACED_ENV, "1");
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start accelgated: {e}"))?;
        let mut d = Daemon {
            child: Stoppable(Some(child)),
            ready_after: Duration::ZERO,
            log,
        };
        let waited = wait_owned(conn, BUS_NAME, || d.child.exited()).await;
        d.ready_after = started.elapsed();
        waited.map_err(|e| format!("{e}\n{}", d.log_text()))?;
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (VmRSS, VmHWM) in bytes, from /proc/<pid>/status.
    pub fn memory(&self) -> Fallible<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid());
        let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let kib = |field: &str| -> Fallible<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|k| k * 1024)
                .ok_or_else(|| format!("{path}: no {field}"))
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    /// SIGTERM, and waits until its name is gone from the bus.
    pub async fn stop(mut self, conn: &zbus::Connection) -> Fallible<()> {
        self.child.stop();
        let dbus = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = zbus::names::BusName::try_from(BUS_NAME).map_err(|e| e.to_string())?;
        while dbus
            .name_has_owner(name.clone())
            .await
            .map_err(|e| e.to_string())?
        {
            if Instant::now() > deadline {
                return Err(format!("{BUS_NAME} still owned after the daemon stopped"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// Whether this build of the daemon has the polkit gate (the `--no-polkit` switch), so the
/// run measures Read with polkit in the path once the polkit branch is merged.
pub fn daemon_has_polkit_gate() -> bool {
    Command::new(env!("CARGO_BIN_EXE_accelgated"))
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--no-polkit"))
        .unwrap_or(false)
}
