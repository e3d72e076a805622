//! The OpenStack adapters (integrations/openstack/) against the real Cyborg and
//! ironic-python-agent: runs `scripts/test-openstack` with the binaries this build made, so its
//! pytest run reports through `cargo test`.
//!
//! Needs root, python3-venv and PyPI the first time (the virtualenv is kept in
//! /var/cache/accelgate-tests); scripts/install-test-deps installs the system packages.

use std::process::Command;
use std::time::Instant;

#[test]
fn cyborg_driver_and_ironic_hardware_manager_pass_their_tests() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the OpenStack tests must run as root: they create users and run accelgated"
    );
    let accelctl = accelgate_testkit::bin("accelctl");
    let bin_dir = accelctl.parent().expect("accelctl has a directory");
    accelgate_testkit::bin("accelgated");
    let script = accelgate_testkit::repo_path("scripts/test-openstack");
    let started = Instant::now();
    let out = Command::new(&script)
        .env("ACCELGATE_BIN_DIR", bin_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    // pytest's summary line, e.g. "14 passed in 21.30s": a run that ran nothing is a failure.
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_else(|| panic!("no pytest summary in:\n{stdout}\n{stderr}"));
    assert!(
        !summary.contains("failed") && !summary.contains("error") && !summary.contains("skipped"),
        "{summary}"
    );
    eprintln!(
        "openstack: {summary} ({:.0} s with the virtualenv check)",
        started.elapsed().as_secs_f64()
    );
}
