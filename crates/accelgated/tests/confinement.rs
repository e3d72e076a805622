//! The running daemon is confined in every thread: the kernel's view of each daemon thread
//! (`/proc/<pid>/task/<tid>/status`) shows seccomp in filter mode, no_new_privs, and exactly
//! the capabilities the daemon says it needs — checked after start-up and again after work
//! that makes the runtime start more threads. The same check on a `--no-sandbox` daemon shows
//! no filter, so the check can tell the difference.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use accelgate_testkit::*;
use accelgated::sandbox::{caps_mask, read_thread_status, required_caps, ThreadStatus};

/// Seccomp mode "filter" in /proc status.
const SECCOMP_FILTER: u8 = 2;

struct Running {
    // Field order is drop order: the daemon stops before its bus.
    daemon: TestDaemon,
    bus: TestBus,
    dir: PathBuf,
}

fn start(name: &str, extra_args: &[&str]) -> Running {
    require_root();
    let dir = test_dir(name);
    let policy = dir.join("policy.toml");
    fs::copy(repo_path("policy/simulated.toml"), &policy).unwrap();
    let bus = TestBus::start(&dir);
    let daemon = TestDaemon::start_with_args(&bus, &dir, &policy, extra_args);
    Running { daemon, bus, dir }
}

fn threads_of(daemon: &TestDaemon) -> Vec<ThreadStatus> {
    let threads = read_thread_status(Some(daemon.pid() as i32)).unwrap();
    assert!(
        !threads.is_empty(),
        "daemon {} has no threads",
        daemon.pid()
    );
    threads
}

/// Every thread of the daemon, as the kernel reports it, against the expected confinement.
fn assert_confined(daemon: &TestDaemon, root: &Path, when: &str) -> usize {
    let expected = caps_mask(&required_caps(root));
    let threads = threads_of(daemon);
    for t in &threads {
        let what = format!("{when}: thread {} of daemon {}", t.tid, daemon.pid());
        assert_eq!(t.seccomp, SECCOMP_FILTER, "{what}: Seccomp");
        assert!(t.no_new_privs, "{what}: NoNewPrivs is 0");
        assert_eq!(t.cap_eff, expected, "{what}: CapEff {:#x}", t.cap_eff);
        // The test runs as root with CAP_SETPCAP, so the daemon can and must shrink it.
        assert_eq!(t.cap_bnd, expected, "{what}: CapBnd {:#x}", t.cap_bnd);
        assert_eq!(t.cap_prm, expected, "{what}: CapPrm {:#x}", t.cap_prm);
        assert_eq!(t.cap_inh, 0, "{what}: CapInh");
        assert_eq!(t.cap_amb, 0, "{what}: CapAmb");
    }
    threads.len()
}

#[test]
fn every_daemon_thread_is_confined_and_stays_so_while_serving() {
    let r = start("confined", &[]);
    // Our own bounding set must be larger than the daemon's target, or an unconfined daemon
    // would pass the capability checks by inheritance alone.
    let own = read_thread_status(None).unwrap();
    let expected = caps_mask(&required_caps(&r.daemon.sim_dir));
    assert_ne!(
        own[0].cap_bnd, expected,
        "the test process's own bounding set equals the target; the check would prove nothing"
    );

    let at_start = assert_confined(&r.daemon, &r.daemon.sim_dir, "after start-up");
    assert!(
        at_start >= 2,
        "expected the runtime's worker threads too, found {at_start} thread(s)"
    );

    // Work that goes through blocking threads (image read, upload), so the runtime starts
    // threads after confinement; they must inherit all of it.
    let img = write_image(&r.dir, "app.bin", &[0x5a; 64 << 10]);
    ctl(
        &r.bus.address,
        "root",
        &["program", "fpga0/region0", img.to_str().unwrap()],
    )
    .ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = sha256_hex(&[0x5a; 64 << 10]);
    let obs = Observer::connect(&r.bus.address);
    while obs.image_sha256("fpga0", "region0") != want {
        assert!(Instant::now() < deadline, "program never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_work = assert_confined(&r.daemon, &r.daemon.sim_dir, "after serving");
    assert!(
        after_work >= at_start,
        "thread count fell from {at_start} to {after_work}"
    );
}

#[test]
fn a_daemon_without_sandbox_shows_no_filter() {
    let r = start("unconfined", &["--no-sandbox"]);
    let own = read_thread_status(None).unwrap();
    for t in threads_of(&r.daemon) {
        let what = format!("thread {} of --no-sandbox daemon {}", t.tid, r.daemon.pid());
        assert_eq!(t.seccomp, 0, "{what}: Seccomp");
        // Nothing is dropped: the daemon keeps what it inherited from this (root) process.
        assert_eq!(t.no_new_privs, own[0].no_new_privs, "{what}: NoNewPrivs");
        assert_eq!(t.cap_bnd, own[0].cap_bnd, "{what}: CapBnd");
        assert_eq!(t.cap_eff, own[0].cap_eff, "{what}: CapEff");
    }
    // The confined check would refuse this daemon.
    let status = read_thread_status(Some(r.daemon.pid() as i32)).unwrap();
    assert!(status.iter().all(|t| t.seccomp != SECCOMP_FILTER));
}
