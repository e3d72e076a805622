//! The real-kernel rig: the release `accelgated` and `accelctl` inside Debian's stock 6.12
//! kernel under QEMU (TCG), with emulated PCI devices (edu, nvme with SR-IOV, igb), MTDs
//! (mtdram, phram over an ivshmem host file) and test_firmware upload entries. One boot runs
//! every scenario (rig/guest/scenarios.sh); the guest reports `RIG-RESULT name pass|fail
//! detail` lines on its serial console, and this test asserts each one.
//!
//! Needs root and what `scripts/install-test-deps` installs (QEMU from bookworm-backports,
//! busybox-static, mtd-utils); the kernel is fetched and cached by `rig/fetch-kernel`. A missing
//! piece fails the test with a message saying what to install.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Every scenario the guest runs; a missing line is a failure as much as a "fail".
const SCENARIOS: &[&str] = &[
    "discovery",
    "bar-claimed-refused",
    "register-read",
    "register-write",
    "register-refusals",
    "vf-lifecycle",
    "vf-igb",
    "program-complete",
    "program-idempotent",
    "program-invalid-size",
    "program-hw-error",
    "program-cancel",
    "configure",
    "release-scrub",
    "flash-mtd-persistent",
    "flash-mtd-ram",
    "flash-fwupload-no-slots",
    // rig/guest/hotplug.sh
    "hotplug-add",
    "hotplug-remove",
    "hotplug-return",
    "daemon-alive",
];

/// Seconds QEMU may run before the rig kills it (the whole run takes about a minute).
const GUEST_TIMEOUT_S: &str = "300";

fn repo() -> PathBuf {
    accelgate_testkit::repo_path("")
}

/// The target directory: CARGO_TARGET_DIR, else the one holding this test executable
/// (target/<profile>/deps/kernel_rig-*).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            repo().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| repo().join("target"))
}

/// Builds the release binaries (a no-op when they are up to date) and returns their paths.
fn release_binaries() -> (PathBuf, PathBuf) {
    let target = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "accelgated",
            "-p",
            "accelctl",
            "--bins",
            "--quiet",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(repo())
        .status()
        .expect("cannot run cargo to build the release binaries");
    assert!(status.success(), "cargo build --release --bins failed");
    let release = target.join("release");
    (release.join("accelgated"), release.join("accelctl"))
}

fn results(console: &str) -> BTreeMap<String, (bool, String)> {
    console
        .lines()
        .filter_map(|line| {
            let rest = line.trim_end_matches('\r').strip_prefix("RIG-RESULT ")?;
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_owned();
            let pass = match parts.next()? {
                "pass" => true,
                "fail" => false,
                _ => return None,
            };
            Some((name, (pass, parts.next().unwrap_or("").to_owned())))
        })
        .collect()
}

#[test]
fn scenarios_pass_on_the_real_kernel() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the kernel rig must run as root (it caches the kernel under /var/cache/accelgate-rig)"
    );
    let (accelgated, accelctl) = release_binaries();
    let out = target_dir().join("kernel-rig");
    // A fresh flash file each run: the scenarios expect factory-blank MTDs.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("cannot create the rig's output directory");

    let started = Instant::now();
    let run = Command::new(repo().join("rig/run"))
        .arg(&accelgated)
        .arg(&accelctl)
        .arg(&out)
        .env("ACCELGATE_RIG_TIMEOUT", GUEST_TIMEOUT_S)
        .output()
        .expect("cannot run rig/run");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
    let time_line = stdout
        .lines()
        .find(|l| l.starts_with("RIG-TIME"))
        .unwrap_or("RIG-TIME (not reported)");
    // Written to stderr directly, not through eprintln!, so that the time shows in `cargo
    // test` output also when the test passes (the harness captures only the print macros).
    let _ = writeln!(
        std::io::stderr(),
        "kernel rig: {elapsed:.1?} in all; {time_line}"
    );

    let context = || {
        format!(
            "rig/run exit {:?}\n--- stderr ---\n{stderr}\n--- console (last 150 lines) ---\n{}",
            run.status.code(),
            tail(&console, 150)
        )
    };
    assert!(
        run.status.success(),
        "the guest did not finish its scenarios (missing QEMU, kernel or a hang?)\n{}",
        context()
    );
    let found = results(&console);
    let mut failures = Vec::new();
    for name in SCENARIOS {
        match found.get(*name) {
            Some((true, detail)) => eprintln!("  pass {name}: {detail}"),
            Some((false, detail)) => failures.push(format!("{name}: {detail}")),
            None => failures.push(format!("{name}: no result reported")),
        }
    }
    for name in found.keys() {
        if !SCENARIOS.contains(&name.as_str()) {
            failures.push(format!("{name}: reported but not known to this test"));
        }
    }
    assert!(
        failures.is_empty(),
        "scenarios failed on the real kernel:\n  {}\n{}",
        failures.join("\n  "),
        context()
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn result_lines_are_parsed_strictly() {
    let console = "RIG-RESULT a pass all good\r\nnoise RIG-RESULT b pass\nRIG-RESULT c fail why\n\
                   RIG-RESULT d maybe\n";
    let found = results(console);
    assert_eq!(found.get("a"), Some(&(true, "all good".to_owned())));
    assert_eq!(found.get("b"), None);
    assert_eq!(found.get("c"), Some(&(false, "why".to_owned())));
    assert_eq!(found.get("d"), None);
}
