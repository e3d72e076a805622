//! `accelctl monitor` against the real daemon while other clients change things: each change
//! shows up as its line (and JSON line), job progress included; Ctrl-C ends it cleanly, and
//! the daemon leaving ends it with exit code 5.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use accelgate_testkit::*;

/// A running `accelctl monitor` and the lines it printed so far.
struct Monitor {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Monitor {
    /// Starts `accelctl monitor` as `user` and waits until it says it is subscribed.
    fn start(address: &str, user: &str, json: bool) -> Monitor {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
        ])
        .arg(bin("accelctl"))
        .args(["--bus", address]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run accelctl monitor");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        let mut m = Monitor {
            child,
            lines,
            seen: Vec::new(),
        };
        m.expect(|l| l == "stderr: accelctl: monitoring accelgated; Ctrl-C to stop");
        m
    }

    /// Waits (up to 20 s) for a line matching `want`, and returns it.
    fn expect(&mut self, want: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the expected line never came; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to end and returns its exit code.
    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "monitor did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn monitor_follows_assignments_jobs_vfs_and_the_daemon_leaving() {
    let mut s = Stack::new("monitor");
    // Monitoring needs no role: an operator follows, a tenant acts.
    let mut text = Monitor::start(&s.bus.address, "ag-operator", false);
    let mut json = Monitor::start(&s.bus.address, "ag-operator", true);

    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    text.expect(|l| l == "changed slice fpga0/region0: Tenant=user:ag-tenant1");
    let line = json.expect(|l| l.contains("\"Tenant\""));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "changed", "{v}");
    assert_eq!(v["object"]["kind"], "slice", "{v}");
    assert_eq!(v["object"]["name"], "fpga0/region0", "{v}");
    assert_eq!(v["properties"]["Tenant"], "user:ag-tenant1", "{v}");

    // A program job: appears, moves, completes, and the slice's image changes. 16 MiB at the
    // simulator's paced 64 MiB/s takes about 0.25 s, long enough for progress in between.
    let image: Vec<u8> = (0..16u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let path = write_image(&s.dir, "app.bin", &image);
    s.ctl(
        "ag-tenant1",
        &["program", "fpga0/region0", path.to_str().unwrap()],
    )
    .ok();
    let added = text.expect(|l| l.starts_with("added job "));
    assert!(added.contains("Operation=slice.program"), "{added}");
    let job = added
        .strip_prefix("added job ")
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    let progress = text
        .expect(|l| l.starts_with(&format!("changed job {job}: ")) && l.contains("Progress=0."));
    assert!(!progress.contains("Progress=0 "), "{progress}");
    text.expect(|l| l.starts_with(&format!("completed job {job}: succeeded")));
    let hash = sha256_hex(&image);
    text.expect(|l| l == format!("changed slice fpga0/region0: ImageSha256={hash}"));
    // The daemon re-announces the slice's whole state as the job runs; the monitor reports
    // only what changed.
    let tenant_lines = text.seen.iter().filter(|l| l.contains("Tenant=")).count();
    assert_eq!(tenant_lines, 1, "saw:\n{}", text.seen.join("\n"));
    let done = json.expect(|l| l.contains("\"job-completed\""));
    let v: serde_json::Value = serde_json::from_str(&done).unwrap();
    assert_eq!(v["object"]["name"], job.as_str(), "{v}");
    assert_eq!(v["success"], true, "{v}");

    // VF count: the slices appear and go again, the device's count changes.
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    text.expect(|l| l == "added slice nic0/vf0");
    text.expect(|l| l == "added slice nic0/vf1");
    text.expect(|l| l.starts_with("changed device nic0: ") && l.contains("NumVfs=2"));
    s.ctl("ag-operator", &["vfs", "nic0", "0"]).ok();
    text.expect(|l| l == "removed slice nic0/vf1");
    text.expect(|l| l.starts_with("changed device nic0: ") && l.contains("NumVfs=0"));

    // Ctrl-C ends the monitor cleanly.
    text.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(text.wait(), 0, "saw:\n{}", text.seen.join("\n"));

    // The daemon going away ends the other, which says so and exits 5.
    s.daemon.kill();
    json.expect(|l| l == r#"{"event":"daemon-gone"}"#);
    json.expect(|l| l.contains("accelgated left the bus"));
    assert_eq!(json.wait(), 5, "saw:\n{}", json.seen.join("\n"));

    // With no daemon at all, monitor refuses at once with the same code.
    let r = s.ctl("ag-operator", &["monitor"]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("accelgated is not on the bus"),
        "{}",
        r.stderr
    );
}
