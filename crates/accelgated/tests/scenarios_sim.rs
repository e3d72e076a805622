//! The kernel rig's scenarios (rig/guest/scenarios.sh) on the simulator: the same script, the
//! same policy (rig/guest/policy.toml) and images, against the real daemon on a simulated host
//! laid out like the rig's guest (`--simulate-spec rig`: edu, nvme with 2 VFs, igb with 8 VFs
//! at offset 128 stride 2, MTD partitions, test_firmware entries), on a private bus, with
//! clients as the test users. tests/kernel_rig.rs runs the script on the real kernel; the
//! scenarios each backend skips are asserted by name in `rig_scenarios`.

mod rig_scenarios;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use accelgate_testkit::{ensure_users, repo_path, test_dir, DaemonOptions, TestBus, TestDaemon};

#[test]
fn rig_scenarios_pass_on_the_simulator() {
    ensure_users();
    let busctl = accelgate_testkit::require_binary("busctl", "systemd");
    assert!(busctl.exists());
    let dir = test_dir("scenarios-sim");
    let images = dir.join("images");
    let made = Command::new(repo_path("rig/make-images"))
        .arg(&images)
        .output()
        .expect("cannot run rig/make-images");
    assert!(
        made.status.success(),
        "rig/make-images failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("cannot create the scratch directory");

    let bus = TestBus::start(&dir);
    let options = DaemonOptions {
        sim_spec: Some("rig".into()),
        // As in the rig's guest: a system call outside the allow-list kills the daemon.
        extra_args: vec!["--seccomp-violation".into(), "kill".into()],
        ..DaemonOptions::default()
    };
    let daemon = TestDaemon::start_with(&bus, &dir, &repo_path("rig/guest/policy.toml"), options);

    let started = Instant::now();
    let run = Command::new("sh")
        .arg(repo_path("rig/guest/scenarios.sh"))
        .env("RIG_BACKEND", "sim")
        .env("RIG_ROOT", &daemon.sim_dir)
        .env("RIG_IMAGES", &images)
        .env("RIG_ACCELCTL", accelgate_testkit::bin("accelctl"))
        .env("RIG_BUS", &bus.address)
        .env("RIG_DAEMON_LOG", &daemon.log)
        .env("RIG_DAEMON_PID", daemon.pid().to_string())
        .env("RIG_WORK", &work)
        .output()
        .expect("cannot run rig/guest/scenarios.sh");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let _ = writeln!(
        std::io::stderr(),
        "rig scenarios on the simulator: {elapsed:.1?}"
    );
    let failures = rig_scenarios::failures(&stdout, &[], rig_scenarios::KERNEL_ONLY);
    assert!(
        failures.is_empty(),
        "scenarios failed on the simulator:\n  {}\n--- script output ---\n{stdout}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
        failures.join("\n  "),
        String::from_utf8_lossy(&run.stderr),
        daemon.log_text()
    );
}
