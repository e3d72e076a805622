//! `cargo bench --bench accelgate`: what accelgate costs, measured against the floor it runs on.
//!
//! One run starts a private dbus-daemon, a real polkitd on it, and the release `accelgated` on
//! simulated hardware (the sysfs-shaped tree on tmpfs, as sysfs is in memory), and reports each
//! figure of issue 6 next to its floor, as a ratio: the machines here are shared and noisy, so
//! a lone absolute time means little. Prints a Markdown table (the README's "Performance"
//! section keeps the current one) and writes target/accelgate-bench.json.
//!
//! Needs root (daemon, polkitd in a private mount namespace), dbus-daemon and polkitd.
//! `ACCELGATE_BENCH_QUICK=1` runs every item with few samples, to check the harness.

#[path = "accelgate/calls.rs"]
mod calls;
#[path = "accelgate/concurrency.rs"]
mod concurrency;
#[path = "accelgate/latency.rs"]
mod latency;
#[path = "accelgate/procs.rs"]
mod procs;
#[path = "accelgate/report.rs"]
mod report;
#[path = "accelgate/scale.rs"]
mod scale;
#[path = "accelgate/stats.rs"]
mod stats;
#[path = "accelgate/throughput.rs"]
mod throughput;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use serde_json::{Map, Value};

use procs::{Bus, Daemon, DaemonSpec, Polkit};
use report::{Report, Verdict};

/// Errors of the harness: a message saying what failed.
pub type Fallible<T> = Result<T, String>;

/// How much of everything one run takes.
struct Sizes {
    read_pairs: usize,
    polkit_checks: usize,
    batch_calls: usize,
    map_rounds: usize,
    program_len: usize,
    program_runs: usize,
    clients: usize,
    reads_per_client: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            read_pairs: 5000,
            polkit_checks: 1000,
            batch_calls: 300,
            map_rounds: 400,
            program_len: 32 << 20,
            program_runs: 3,
            clients: 64,
            reads_per_client: 1000,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            read_pairs: 200,
            polkit_checks: 50,
            batch_calls: 20,
            map_rounds: 20,
            program_len: 4 << 20,
            program_runs: 1,
            clients: 8,
            reads_per_client: 20,
        }
    }
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("accelgate bench: must run as root (it runs the daemon and polkitd)");
        return ExitCode::FAILURE;
    }
    let quick = std::env::var_os("ACCELGATE_BENCH_QUICK").is_some_and(|v| v != "0");
    let sizes = if quick { Sizes::quick() } else { Sizes::full() };
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

async fn run(dirs: &WorkDirs, sizes: &Sizes) -> Fallible<Report> {
    let mut report = Report::default();
    let bus = Bus::start(&dirs.tmp)?;
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .map_err(|e| format!("bench connection: {e}"))?;
    let _polkit = Polkit::start(&conn, &bus.address, &dirs.tmp).await?;
    // With the polkit gate in the daemon, items 1, 3, 4 and 6 measure it without polkit (item
    // 2 measures what polkit adds); without it, there is nothing to switch off.
    let has_gate = procs::daemon_has_polkit_gate();
    let no_polkit: &[&str] = if has_gate { &["--no-polkit"] } else { &[] };
    let policy = dirs.tmp.join("simulated.toml");
    std::fs::copy(procs::repo_path("policy/simulated.toml"), &policy)
        .map_err(|e| format!("policy/simulated.toml: {e}"))?;
    // Each daemon gets its own simulated tree (on tmpfs) and state.
    let fresh = |name: &str| {
        (
            dirs.shm.join(format!("{name}-sim")),
            dirs.tmp.join(format!("{name}-state")),
        )
    };

    // Daemon A: the standard host, paced like hardware.
    let (sim_a, state_a) = fresh("a");
    let a = Daemon::start(
        &conn,
        &bus.address,
        &DaemonSpec {
            sim_spec: "standard",
            policy: &policy,
            sim_dir: &sim_a,
            state_dir: &state_a,
            unpaced: false,
            extra_args: no_polkit,
        },
    )
    .await?;
    eprintln!("[1] Read vs Ping");
    let read_p50 = latency::read_vs_ping(&conn, sizes.read_pairs, &mut report).await?;
    if !has_gate {
        eprintln!("[2] raw CheckAuthorization (daemon has no polkit gate yet)");
        latency::polkit(&conn, None, sizes.polkit_checks, &mut report).await?;
    }
    eprintln!("[3] batched Read, Map");
    latency::batched_read(&conn, sizes.batch_calls, read_p50, &mut report).await?;
    latency::map_path(&conn, &sim_a, sizes.map_rounds, &mut report).await?;
    eprintln!("[4] Program, paced simulator");
    let paced_rate = throughput::program_rate(&conn, &dirs.tmp, sizes.program_len, 1, 100).await?;
    eprintln!("[6] concurrency");
    concurrency::run(
        &bus.address,
        &conn,
        &dirs.tmp,
        sizes.clients,
        sizes.reads_per_client,
        &mut report,
    )
    .await?;
    a.stop(&conn).await?;

    if has_gate {
        eprintln!("[2] Read with the polkit gate vs CheckAuthorization");
        let (sim_p, state_p) = fresh("p");
        let p = Daemon::start(
            &conn,
            &bus.address,
            &DaemonSpec {
                sim_spec: "standard",
                policy: &policy,
                sim_dir: &sim_p,
                state_dir: &state_p,
                unpaced: false,
                extra_args: &[],
            },
        )
        .await?;
        latency::polkit(&conn, Some(&conn), sizes.polkit_checks, &mut report).await?;
        p.stop(&conn).await?;
    }

    // Daemon B: the standard host with uploads at file speed.
    eprintln!("[4] Program, unpaced simulator, and dd + sha256sum");
    let (sim_b, state_b) = fresh("b");
    let b = Daemon::start(
        &conn,
        &bus.address,
        &DaemonSpec {
            sim_spec: "standard",
            policy: &policy,
            sim_dir: &sim_b,
            state_dir: &state_b,
            unpaced: true,
            extra_args: no_polkit,
        },
    )
    .await?;
    let len = sizes.program_len;
    let unpaced_rate =
        throughput::program_rate(&conn, &dirs.tmp, len, sizes.program_runs, 200).await?;
    b.stop(&conn).await?;
    let floor_rate = throughput::dd_sha_rate(&dirs.tmp, &sim_b, len, sizes.program_runs)?;
    let device_hash = throughput::device_hash_time(len).as_secs_f64();
    let program_secs = len as f64 / 1e6 / unpaced_rate;
    let daemon_only_rate = len as f64 / 1e6 / (program_secs - device_hash);
    let mib = len >> 20;
    report.row(
        4,
        format!("Program {mib} MiB (file → sealed memfd → daemon → sim), unpaced simulator"),
        format!("{unpaced_rate:.0} MB/s"),
        format!("dd + sha256sum: {floor_rate:.0} MB/s"),
        Some(unpaced_rate / floor_rate),
        "≥ 0.8",
        Verdict::of(unpaced_rate / floor_rate >= 0.8),
    );
    report.row(
        4,
        "  same, less the simulated device's own sha256 of the image",
        format!("{daemon_only_rate:.0} MB/s"),
        format!("{floor_rate:.0} MB/s"),
        Some(daemon_only_rate / floor_rate),
        "",
        Verdict::Info,
    );
    let paced_floor = throughput::SIM_BYTES_PER_SEC / 1e6;
    report.row(
        4,
        format!("Program {mib} MiB, simulator paced like hardware"),
        format!("{paced_rate:.0} MB/s"),
        format!("simulated link: {paced_floor:.0} MB/s"),
        Some(paced_rate / paced_floor),
        "",
        Verdict::Info,
    );
    report.row(
        4,
        "Flash throughput",
        "pending (Flash not in this build)",
        "",
        None,
        "≥ 0.8",
        Verdict::Pending,
    );
    report.figure("program_bytes", len as u64);
    report.figure("program_unpaced_mb_s", unpaced_rate);
    report.figure("program_paced_mb_s", paced_rate);
    report.figure("dd_sha256sum_mb_s", floor_rate);
    report.figure("device_hash_s", device_hash);

    eprintln!("[5] scale");
    scale::run(&conn, &bus, &dirs.shm, &dirs.tmp, no_polkit, &mut report).await?;
    report.figure("polkit_gate_in_daemon", has_gate);
    Ok(report)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
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
