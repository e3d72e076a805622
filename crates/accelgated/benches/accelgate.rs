//! `cargo bench -p accelgated --bench accelgate`: what accelgate costs, measured against the floor it runs on.
//!
//! One run starts a private dbus-daemon, a real polkitd on it, and the release `accelgated` on
//! simulated hardware (the sysfs-shaped tree on tmpfs, as sysfs is in memory), and reports each
//! figure of issue 6 next to its floor, as a ratio: the machines here are shared and noisy, so
//! a lone absolute time means little. Prints a Markdown table (the README's "Performance"
//! section keeps the current one) and writes target/accelgate-bench.json.
//!
//! The processes come from the test harness (`accelgate_testkit`: private bus, polkitd,
//! the daemon), started here with the release binary, the simulated host on tmpfs and, for
//! profiling, a wrapper command.
//!
//! Needs root (daemon, polkitd in a private mount namespace), dbus-daemon and polkitd, and
//! strace for item 8's check of which threads fsync.
//! `ACCELGATE_BENCH_QUICK=1` runs every item with few samples, to check the harness;
//! `ACCELGATE_BENCH_ONLY=5` (or `1,3`) runs only those items; `ACCELGATE_BENCH_WRAP=CMD` runs
//! the daemon under CMD (e.g. `valgrind --tool=callgrind`) to profile it.

#[path = "accelgate/calls.rs"]
mod calls;
#[path = "accelgate/concurrency.rs"]
mod concurrency;
#[path = "accelgate/latency.rs"]
mod latency;
#[path = "accelgate/report.rs"]
mod report;
#[path = "accelgate/scale.rs"]
mod scale;
#[path = "accelgate/state.rs"]
mod state;
#[path = "accelgate/stats.rs"]
mod stats;
#[path = "accelgate/throughput.rs"]
mod throughput;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{Map, Value};

use accelgate_testkit::polkit::TestPolkit;
use accelgate_testkit::{DaemonOptions, TestBus, TestDaemon};
use report::Report;

/// Errors of the harness: a message saying what failed.
pub type Fallible<T> = Result<T, String>;

/// How much of everything one run takes, and which items run.
struct Sizes {
    only: Option<Vec<u8>>,
    read_pairs: usize,
    polkit_checks: usize,
    batch_calls: usize,
    map_rounds: usize,
    program_len: usize,
    program_runs: usize,
    clients: usize,
    reads_per_client: usize,
    assign_rounds: usize,
    /// Scale hosts: (devices, VFs each).
    scales: Vec<(u32, u32)>,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            only: None,
            read_pairs: 5000,
            polkit_checks: 1000,
            batch_calls: 300,
            map_rounds: 400,
            program_len: 32 << 20,
            program_runs: 3,
            clients: 64,
            reads_per_client: 1000,
            assign_rounds: 300,
            scales: vec![(64, 64), (256, 64)],
        }
    }

    fn runs(&self, item: u8) -> bool {
        self.only.as_ref().is_none_or(|items| items.contains(&item))
    }

    fn quick() -> Sizes {
        Sizes {
            only: None,
            read_pairs: 200,
            polkit_checks: 50,
            batch_calls: 20,
            map_rounds: 20,
            program_len: 4 << 20,
            program_runs: 1,
            clients: 8,
            reads_per_client: 20,
            assign_rounds: 20,
            scales: vec![(8, 8)],
        }
    }
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("accelgate bench: must run as root (it runs the daemon and polkitd)");
        return ExitCode::FAILURE;
    }
    let quick = std::env::var_os("ACCELGATE_BENCH_QUICK").is_some_and(|v| v != "0");
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
    sizes.only = std::env::var("ACCELGATE_BENCH_ONLY").ok().map(|v| {
        v.split(',')
            .filter_map(|item| item.trim().parse().ok())
            .collect()
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("accelgate bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dirs = match WorkDirs::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("accelgate bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let result = runtime.block_on(run(&dirs, &sizes));
    drop(dirs);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("accelgate bench failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let machine = machine();
    let header = format!(
        "accelgate benchmark, {} UTC, {}{}",
        machine["date"].as_str().unwrap_or(""),
        machine["summary"].as_str().unwrap_or(""),
        if quick { " (QUICK: few samples)" } else { "" }
    );
    println!("{}", report.markdown(&header));
    println!("(run took {:.0} s)", started.elapsed().as_secs_f64());
    let json = target_dir().join("accelgate-bench.json");
    if let Err(e) = report.write_json(&json, &machine) {
        eprintln!("accelgate bench: {e}");
        return ExitCode::FAILURE;
    }
    println!("JSON: {}", json.display());
    ExitCode::SUCCESS
}

/// Scratch directories: bus, state and images under /tmp; simulated trees on tmpfs.
struct WorkDirs {
    tmp: PathBuf,
    shm: PathBuf,
}

impl WorkDirs {
    fn create() -> Fallible<WorkDirs> {
        let id = std::process::id();
        let dirs = WorkDirs {
            tmp: std::env::temp_dir().join(format!("accelgate-bench-{id}")),
            shm: Path::new("/dev/shm").join(format!("accelgate-bench-{id}")),
        };
        for d in [&dirs.tmp, &dirs.shm] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            // Others (polkitd's user) reach the bus socket in it.
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(dirs)
    }
}

impl Drop for WorkDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

/// How the benchmark starts one daemon: the release binary (the harness finds it beside the
/// benchmark), quiet logs, the simulated host where `sim_dir` says (tmpfs), readiness timed.
pub struct Start<'a> {
    pub bus: &'a TestBus,
    /// State and log go here.
    pub dir: PathBuf,
    pub policy: &'a Path,
    pub sim_dir: PathBuf,
    pub sim_spec: String,
    pub unpaced: bool,
    pub polkit: bool,
    /// A command the daemon runs under; default from ACCELGATE_BENCH_WRAP.
    pub wrapper: Option<Vec<String>>,
}

impl Start<'_> {
    pub fn daemon(&self) -> TestDaemon {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            panic!("{}: {e}", self.dir.display());
        }
        let wrapper = self.wrapper.clone().unwrap_or_else(|| {
            std::env::var("ACCELGATE_BENCH_WRAP")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        });
        let mut extra_args = Vec::new();
        if !wrapper.is_empty() {
            // The seccomp allow-list is the daemon's, not a profiler's.
            extra_args.push("--no-sandbox".to_owned());
        }
        let mut env = Vec::new();
        if self.unpaced {
            env.push((accelgate_sim::UNPACED_ENV.to_owned(), "1".to_owned()));
        }
        let options = DaemonOptions {
            polkit: self.polkit,
            extra_args,
            sim_dir: Some(self.sim_dir.clone()),
            sim_spec: Some(self.sim_spec.clone()),
            env,
            wrapper,
            log_level: Some("warn".into()),
            ready_timeout: Some(std::time::Duration::from_secs(300)),
            precise_ready: true,
        };
        // The harness blocks while it waits; the runtime's other worker keeps the bench's
        // connection going.
        tokio::task::block_in_place(|| {
            TestDaemon::start_with(self.bus, &self.dir, self.policy, options)
        })
    }
}

/// Stops a daemon and waits until its name is free.
pub fn stop(mut daemon: TestDaemon) {
    tokio::task::block_in_place(|| daemon.stop());
}

async fn run(dirs: &WorkDirs, sizes: &Sizes) -> Fallible<Report> {
    let mut report = Report::default();
    // polkitd may own its name only on a bus with the distribution's polkit policy.
    let bus = accelgate_testkit::polkit::polkit_bus(&dirs.tmp);
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .map_err(|e| format!("bench connection: {e}"))?;
    let _polkit = tokio::task::block_in_place(|| TestPolkit::start(&bus, &dirs.tmp, &[]));
    // Items 1, 3, 4 and 6–8 measure the daemon without polkit (item 2 measures what it adds).
    // The simulated policy, with downgrades allowed: item 6 flashes two versions in turn.
    let policy = dirs.tmp.join("simulated.toml");
    let text = std::fs::read_to_string(accelgate_testkit::repo_path("policy/simulated.toml"))
        .map_err(|e| format!("policy/simulated.toml: {e}"))?;
    let text = text.replace(
        "allow_unsigned = false }",
        "allow_unsigned = false, allow_downgrade = true }",
    );
    if !text.contains("allow_downgrade = true") {
        return Err("policy/simulated.toml: no firmware table to allow downgrades in".into());
    }
    std::fs::write(&policy, text).map_err(|e| format!("{}: {e}", policy.display()))?;
    let standard = |name: &str, unpaced: bool, polkit: bool| Start {
        bus: &bus,
        dir: dirs.tmp.join(name),
        policy: &policy,
        sim_dir: dirs.shm.join(format!("{name}-sim")),
        sim_spec: "standard".into(),
        unpaced,
        polkit,
        wrapper: None,
    };

    // Daemon A: the standard host, uploads paced like hardware.
    if [1, 3, 4, 6, 7, 8].iter().any(|&i| sizes.runs(i)) {
        let start_a = standard("a", false, false);
        let a = start_a.daemon();
        let mut read_p50 = f64::NAN;
        if sizes.runs(1) {
            eprintln!("[1] Read vs Ping");
            read_p50 = latency::read_vs_ping(&conn, sizes.read_pairs, &mut report).await?;
        }
        if sizes.runs(3) {
            eprintln!("[3] batched Read, Map");
            latency::batched_read(&conn, sizes.batch_calls, read_p50, &mut report).await?;
            latency::map_path(&conn, &start_a.sim_dir, sizes.map_rounds, &mut report).await?;
        }
        if sizes.runs(4) {
            eprintln!("[4] Program, paced simulator");
            let len = sizes.program_len;
            let rate = throughput::program_rate(&conn, &dirs.tmp, len, 1, 100).await?;
            throughput::report_paced(len, rate, &mut report);
        }
        if sizes.runs(6) || sizes.runs(7) {
            eprintln!("[6, 7] concurrency");
            concurrency::run(
                &bus.address,
                &conn,
                &dirs.tmp,
                sizes.clients,
                sizes.reads_per_client,
                sizes.runs(6),
                &mut report,
            )
            .await?;
        }
        if sizes.runs(8) {
            eprintln!("[8] Assign + Release vs Read");
            state::round_trips(&conn, sizes.assign_rounds, &mut report).await?;
        }
        stop(a);
    }

    if sizes.runs(8) {
        eprintln!("[8] which threads fsync (the daemon under strace)");
        let mut start_s = standard("s", false, false);
        let trace = dirs.tmp.join("fsync.strace");
        start_s.wrapper = Some(state::strace_wrapper(&trace));
        let s = start_s.daemon();
        let threads = state::fsync_threads(&conn, &s, &trace, sizes.assign_rounds / 4 + 5).await;
        stop(s);
        state::report_fsync_threads(&trace, threads?, &mut report)?;
    }

    if sizes.runs(2) {
        eprintln!("[2] Read with the polkit gate vs CheckAuthorization");
        let p = standard("p", false, true).daemon();
        latency::polkit(&conn, Some(&conn), sizes.polkit_checks, &mut report).await?;
        stop(p);
    }

    if sizes.runs(4) {
        // Daemon B: the standard host with uploads at file speed.
        eprintln!("[4] Program and Flash, unpaced simulator, and dd + sha256sum");
        let start_b = standard("b", true, false);
        let b = start_b.daemon();
        let (len, runs) = (sizes.program_len, sizes.program_runs);
        let rate = throughput::program_rate(&conn, &dirs.tmp, len, runs, 200).await?;
        let flash = throughput::flash_rate(&conn, &dirs.tmp, len, runs, 300).await?;
        stop(b);
        let floor = throughput::dd_sha_rate(&dirs.tmp, &start_b.sim_dir, len, runs)?;
        let check = throughput::signature_check_time(&dirs.tmp, len)?.as_secs_f64();
        throughput::report_unpaced(len, rate, Some(flash), check, floor, &mut report);
    }

    if sizes.runs(5) {
        for &(devices, vfs) in &sizes.scales {
            eprintln!("[5] scale {devices}×{vfs}");
            scale::run(&conn, &bus, &dirs.shm, &dirs.tmp, devices, vfs, &mut report).await?;
        }
    }
    report.rows.sort_by_key(|r| r.item);
    Ok(report)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Where the figures were taken: date, CPU, cores, kernel, load at the end of the run.
fn machine() -> Map<String, Value> {
    let mut m = Map::new();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    m.insert(
        "summary".into(),
        format!("{cpu}, {cores} cores (shared), Linux {kernel}, load {load}").into(),
    );
    m.insert("date".into(), date.into());
    m.insert("cpu".into(), cpu.into());
    m.insert("cores".into(), cores.into());
    m.insert("kernel".into(), kernel.into());
    m.insert("loadavg".into(), load.into());
    m
}
