//! The demo as the README's tour runs it: `scripts/run-simulated` (polkit on) in the
//! background, accelctl calls through it as the demo users, the tour's polkit rule changing a
//! decision without a restart, and Ctrl-C (SIGINT to its process group) stopping everything.

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use accelgate_testkit::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The demo script's process group, stopped (SIGKILL) if the test ends early.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn accelctl(address: &str, user: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--"])
        .arg(bin("accelctl"))
        .args(["--bus", address])
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn demo_with_polkit_a_rule_changes_a_decision_and_ctrl_c_stops_it() {
    require_root();
    require_binary("runuser", "util-linux");
    let dir = test_dir("demo");
    let log = dir.join("demo.log");
    let mut demo = Demo(
        Command::new(repo_path("scripts/run-simulated"))
            .env("ACCELGATE_DEMO_DIR", &dir)
            .env("ACCELGATE_DEMO_SKIP_BUILD", "1")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join("demo.err")).unwrap())
            .process_group(0)
            .spawn()
            .expect("cannot run scripts/run-simulated"),
    );
    let address = format!("unix:path={}", dir.join("bus").display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = accelctl(&address, "root", &["devices"]);
        if out.status.success() {
            assert!(text(&out).contains("nic0"), "{}", text(&out));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo never served: {}\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            fs::read_to_string(dir.join("demo.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let banner = fs::read_to_string(&log).unwrap();
    assert!(banner.contains("polkitd serves this bus"), "{banner}");

    // The tour: root assigns; the tenant is refused on the slice that is not its own.
    let out = accelctl(
        &address,
        "root",
        &["assign", "fpga0/region0", "demo-tenant"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = accelctl(&address, "demo-tenant", &["read", "fpga0/region1", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("not assigned to you"), "{}", text(&out));

    // The operator's role grants device.configure, but polkit's default (auth_admin_keep)
    // refuses it without an agent ...
    let out = accelctl(&address, "demo-operator", &["vfs", "nic0", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("refused by the polkit gate"),
        "{}",
        text(&out)
    );
    // ... until the tour's rule is dropped in: no restart of anything.
    let rule = dir.join("polkit/rules.d/50-demo-operators.rules");
    fs::copy(repo_path("policy/demo-operators.rules"), &rule).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = accelctl(&address, "demo-operator", &["vfs", "nic0", "2"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rule never took effect: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(Observer::connect(&address).num_vfs("nic0"), 2);
    // A polkit rule cannot widen the role policy: the operator's role has no policy.reload.
    let out = accelctl(&address, "demo-operator", &["policy", "reload"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("refused by the role gate"),
        "{}",
        text(&out)
    );

    // Ctrl-C: SIGINT to the script's process group stops the bus, polkitd and the daemon.
    let group = Pid::from_raw(demo.0.id() as i32);
    killpg(group, Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    // Reap the script (a zombie still counts as a member of its group).
    while demo.0.try_wait().unwrap().is_none() || killpg(group, None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "demo processes left after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
