//! The Debian package: built by `scripts/build-deb` from the binaries of this test run,
//! installed for real with `dpkg -i` on this (test) machine, every file checked for place and
//! mode, the installed `accelgated` run on the simulated host over a private bus with the
//! installed bus policy and driven by the installed `accelctl`, then purged, leaving nothing.
//!
//! Refuses to run where an `accelgate` package is already installed, or /etc/accelgate or
//! /var/lib/accelgate exist (an operator's installation is never touched).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use accelgate_testkit::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file the package installs, with its mode.
const FILES: &[(&str, u32)] = &[
    ("/usr/bin/accelctl", 0o755),
    ("/usr/libexec/accelgated", 0o755),
    ("/lib/systemd/system/accelgated.service", 0o644),
    ("/usr/lib/sysusers.d/accelgate.conf", 0o644),
    ("/usr/lib/tmpfiles.d/accelgate.conf", 0o644),
    (
        "/usr/share/dbus-1/system.d/org.accelgate.Accel1.conf",
        0o644,
    ),
    (
        "/usr/share/dbus-1/system-services/org.accelgate.Accel1.service",
        0o644,
    ),
    ("/usr/share/polkit-1/actions/org.accelgate.policy", 0o644),
    ("/usr/share/man/man1/accelctl.1.gz", 0o644),
    ("/usr/share/man/man5/accelgate-policy.5.gz", 0o644),
    ("/usr/share/man/man8/accelgated.8.gz", 0o644),
    ("/usr/share/bash-completion/completions/accelctl", 0o644),
    ("/usr/share/zsh/vendor-completions/_accelctl", 0o644),
    ("/usr/share/fish/vendor_completions.d/accelctl.fish", 0o644),
    ("/usr/share/doc/accelgate/copyright", 0o644),
    ("/usr/share/doc/accelgate/changelog.gz", 0o644),
    ("/usr/share/doc/accelgate/install.md", 0o644),
    ("/usr/share/doc/accelgate/policy.md", 0o644),
    ("/usr/share/doc/accelgate/firmware.md", 0o644),
    ("/usr/share/doc/accelgate/examples/policy.toml", 0o644),
    (
        "/usr/share/doc/accelgate/examples/50-accelgate-operators.rules",
        0o644,
    ),
];

/// Made by the maintainer scripts (systemd-tmpfiles or their fallback), removed on purge.
const DIRS: &[(&str, u32)] = &[
    ("/var/lib/accelgate", 0o700),
    ("/etc/accelgate", 0o755),
    ("/etc/accelgate/policy.d", 0o755),
];

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "accelgate"]).output();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "accelgate"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
        .unwrap_or(false)
}

#[test]
fn package_builds_installs_runs_and_purges_cleanly() {
    require_root();
    require_binary("dpkg-deb", "dpkg");
    require_binary("dbus-daemon", "dbus-daemon");
    ensure_users();
    assert!(
        !installed(),
        "an accelgate package is installed on this machine; this test installs and purges its \
         own and will not touch it (dpkg --purge accelgate first, on a test machine)"
    );
    for (dir, _) in DIRS {
        assert!(
            !Path::new(dir).exists(),
            "{dir} exists: this test will not install over an existing accelgate setup"
        );
    }
    let dir = test_dir("package");

    // Build from the binaries under test (debug here; `make` + scripts/build-deb for release).
    let bin_dir = bin("accelctl").parent().unwrap().to_owned();
    let started = Instant::now();
    let out = run(Command::new(repo_path("scripts/build-deb"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(dir.join("deb"))
        .arg("--fast"));
    let deb = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    );
    eprintln!("package built in {:.1} s", started.elapsed().as_secs_f64());

    // What the package lists is exactly the files above (plus their directories).
    let contents =
        String::from_utf8(run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).unwrap();
    let mut listed: Vec<String> = contents
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_owned()
        })
        .collect();
    listed.sort();
    let mut want: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "the package's files");

    let _purge = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());
    for (path, mode) in FILES {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(meta.is_file(), "{path} is not a file");
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {path}");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of {path}");
    }
    for (path, mode) in DIRS {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path} not created: {e}"));
        assert!(meta.is_dir(), "{path}");
        assert_eq!(meta.permissions().mode() & 0o7777, *mode, "mode of {path}");
    }
    for group in ["accel-admins", "accel-operators", "accel-tenants"] {
        run(Command::new("getent").args(["group", group]));
    }
    // The unit and activation file name the installed binary.
    for file in [
        "/lib/systemd/system/accelgated.service",
        "/usr/share/dbus-1/system-services/org.accelgate.Accel1.service",
    ] {
        let text = fs::read_to_string(file).unwrap();
        assert!(text.contains("/usr/libexec/accelgated"), "{file}:\n{text}");
    }
    // man finds the pages where they were installed.
    let page = run(Command::new("man").args(["-w", "5", "accelgate-policy"]));
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).trim(),
        "/usr/share/man/man5/accelgate-policy.5.gz"
    );

    // The installed daemon on the simulated host, on a private bus configured with the
    // installed bus policy, driven by the installed accelctl.
    let socket = dir.join("bus");
    let conf = fs::read_to_string(repo_path("scripts/private-bus.conf.in"))
        .unwrap()
        .replace("@SOCKET@", &socket.display().to_string())
        .replace(
            "@PROJECT_POLICY@",
            "/usr/share/dbus-1/system.d/org.accelgate.Accel1.conf",
        );
    fs::write(dir.join("bus.conf"), conf).unwrap();
    let bus = Daemon(
        Command::new("dbus-daemon")
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the private bus did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
    let address = format!("unix:path={}", socket.display());
    let daemon = Daemon(
        Command::new("/usr/libexec/accelgated")
            .arg("--simulate")
            .arg(dir.join("sim"))
            .args(["--bus", &address, "--no-polkit"])
            .arg("--policy")
            .arg(repo_path("policy/simulated.toml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stderr(fs::File::create(dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let accelctl = |user: &str, args: &[&str]| {
        let mut cmd = if user == "root" {
            Command::new("/usr/bin/accelctl")
        } else {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
                "/usr/bin/accelctl",
            ]);
            c
        };
        cmd.args(["--bus", &address]).args(args).output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let devices = loop {
        let out = accelctl("root", &["--json", "devices"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the installed daemon never answered: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        devices.contains("fpga0") && devices.contains("nic0"),
        "{devices}"
    );
    let out = accelctl("root", &["assign", "fpga0/region0", "ag-tenant1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = accelctl("ag-tenant1", &["read", "fpga0/region1", "0"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not assigned to you"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);
    drop(bus);

    // Purge: the package's files, its directories and its state all go.
    run(Command::new("dpkg").args(["--purge", "accelgate"]));
    assert!(!installed());
    for (path, _) in FILES.iter().chain(DIRS) {
        assert!(!Path::new(path).exists(), "{path} left behind by purge");
    }
    for dir in [
        "/usr/share/doc/accelgate",
        "/usr/share/zsh/vendor-completions/_accelctl",
    ] {
        assert!(!Path::new(dir).exists(), "{dir} left behind by purge");
    }
}
