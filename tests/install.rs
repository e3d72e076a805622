//! `make install` into a temporary DESTDIR, then systemd's own checks on the installed unit:
//! `systemd-analyze verify` and `systemd-analyze security --offline=true` (exposure <= 2.0).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The exposure figure the unit must not exceed (DESIGN.md, issue 4).
const MAX_EXPOSURE: f64 = 2.0;

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn require_program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed; this test needs it (install the `{package}` package)")
    })
}

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("accelgate-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Installs with the binaries cargo built for this test run.
fn make_install(destdir: &Path, prefix: &str) {
    let make = require_program("make", "make");
    let daemon = Path::new(env!("CARGO_BIN_EXE_accelgated"));
    let build_dir = daemon.parent().unwrap();
    run(Command::new(make)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("install")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("PREFIX={prefix}"))
        .arg(format!("BUILD_DIR={}", build_dir.display())));
}

fn installed(destdir: &Path, path: &str) -> PathBuf {
    let file = destdir.join(path.trim_start_matches('/'));
    assert!(file.is_file(), "{path} was not installed");
    file
}

fn key_value<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// `@NAME@` placeholders that `make install` substitutes (`@system-service` is systemd's).
fn has_placeholder(text: &str) -> bool {
    text.split('@')
        .skip(1)
        .zip(text.split('@').skip(2))
        .any(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
}

#[test]
fn install_puts_every_file_in_place_under_destdir_and_prefix() {
    for prefix in ["/usr", "/opt/accelgate"] {
        let destdir = TempDir::new("layout");
        make_install(&destdir.0, prefix);
        let d = &destdir.0;

        let daemon = installed(d, &format!("{prefix}/libexec/accelgated"));
        let mode = fs::metadata(&daemon).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "daemon mode");
        installed(d, &format!("{prefix}/bin/accelctl"));
        installed(d, &format!("{prefix}/lib/sysusers.d/accelgate.conf"));
        installed(d, &format!("{prefix}/lib/tmpfiles.d/accelgate.conf"));
        installed(
            d,
            &format!("{prefix}/share/dbus-1/system.d/org.accelgate.Accel1.conf"),
        );
        installed(d, &format!("{prefix}/share/doc/accelgate/install.md"));
        assert!(d.join("etc/accelgate").is_dir(), "/etc/accelgate missing");

        // Final paths (without DESTDIR) are written into the unit and activation file.
        let unit = fs::read_to_string(installed(
            d,
            &format!("{prefix}/lib/systemd/system/accelgated.service"),
        ))
        .unwrap();
        assert_eq!(
            key_value(&unit, "ExecStart"),
            [format!("{prefix}/libexec/accelgated")]
        );
        assert_eq!(key_value(&unit, "BusName"), ["org.accelgate.Accel1"]);
        assert!(
            !has_placeholder(&unit),
            "unsubstituted placeholder in the unit"
        );
        let activation = fs::read_to_string(installed(
            d,
            &format!("{prefix}/share/dbus-1/system-services/org.accelgate.Accel1.service"),
        ))
        .unwrap();
        assert!(!has_placeholder(&activation), "unsubstituted placeholder");
        assert_eq!(key_value(&activation, "Name"), ["org.accelgate.Accel1"]);
        assert_eq!(
            key_value(&activation, "SystemdService"),
            ["accelgated.service"]
        );
        assert_eq!(
            key_value(&activation, "Exec"),
            [format!("{prefix}/libexec/accelgated")]
        );

        // Files written by other work items are installed when present.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        if manifest.join("policy/org.accelgate.policy").is_file() {
            installed(
                d,
                &format!("{prefix}/share/polkit-1/actions/org.accelgate.policy"),
            );
        }
        if manifest.join("policy/example.toml").is_file() {
            installed(d, "/etc/accelgate/policy.toml.example");
        }
    }
}

#[test]
fn placeholders_are_recognised() {
    assert!(has_placeholder("ExecStart=@LIBEXECDIR@/accelgated"));
    assert!(!has_placeholder(
        "SystemCallFilter=@system-service ~@mount @raw-io"
    ));
}

#[test]
fn installed_unit_passes_systemd_verify_and_security_review() {
    let analyze = require_program("systemd-analyze", "systemd");
    let destdir = TempDir::new("analyze");
    make_install(&destdir.0, "/usr");
    let unit = installed(&destdir.0, "/usr/lib/systemd/system/accelgated.service");

    // verify checks that ExecStart= is executable on this host, where /usr/libexec/accelgated
    // is not installed: check a copy whose ExecStart= points into DESTDIR, otherwise the same.
    let text = fs::read_to_string(&unit).unwrap();
    let in_destdir = format!("ExecStart={}/usr/", destdir.0.display());
    let verify_dir = TempDir::new("verify");
    let verify_unit = verify_dir.0.join("accelgated.service");
    fs::write(&verify_unit, text.replace("ExecStart=/usr/", &in_destdir)).unwrap();
    let verify = run(Command::new(&analyze).arg("verify").arg(&verify_unit));
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );

    let security = run(Command::new(&analyze)
        .arg("security")
        .arg("--offline=true")
        .arg(&unit));
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure = report
        .lines()
        .find_map(|line| {
            let rest = line
                .split("Overall exposure level for accelgated.service:")
                .nth(1)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no overall exposure in the report:\n{report}"));
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE}:\n{report}"
    );
}
