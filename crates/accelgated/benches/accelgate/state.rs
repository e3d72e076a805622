//! Item 8: `Assign` + `Release`, each persisting the daemon's state (written, fsync'd, renamed,
//! directory fsync'd) before it replies, against a one-register `Read` in the same run; and
//! which of the daemon's threads make the fsyncs (the daemon under strace): none may be a
//! thread of the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use accelgate_client::proto::names::{slice_path, BUS_NAME, SLICE_INTERFACE};
use accelgate_testkit::TestDaemon;
use zbus::{Connection, Variant};

use super::calls;
use super::latency::REGION0_ID;
use super::report::{us, Judgement, Report, Verdict};
use super::stats::Samples;
use super::Fallible;

/// The daemon's state writer thread (core/state.rs `WRITER_THREAD`).
const WRITER_THREAD: &str = "accelgate-state";

/// Assign fpga0/region0 to root, then Release it: two state updates, two replies.
async fn assign_release(conn: &Connection, path: &str) -> Fallible<Duration> {
    let options: HashMap<&str, Variant<'_>> = HashMap::new();
    let t = Instant::now();
    conn.call_method(
        Some(BUS_NAME),
        path,
        Some(SLICE_INTERFACE),
        "Assign",
        &("root", options),
    )
    .await
    .map_err(|e| format!("Assign {path}: {e}"))?;
    conn.call_method(Some(BUS_NAME), path, Some(SLICE_INTERFACE), "Release", &())
        .await
        .map_err(|e| format!("Release {path}: {e}"))?;
    Ok(t.elapsed())
}

/// `n` Assign+Release round trips and `n` Reads, alternating.
pub async fn round_trips(conn: &Connection, n: usize, report: &mut Report) -> Fallible<()> {
    let path = slice_path("fpga0", "region0");
    for _ in 0..10 {
        assign_release(conn, &path).await?;
        calls::read_checked(conn, &path, REGION0_ID).await?;
    }
    let mut cycles = Samples::with_capacity(n);
    let mut reads = Samples::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            cycles.push(assign_release(conn, &path).await?);
            reads.push(calls::read_checked(conn, &path, REGION0_ID).await?);
        } else {
            reads.push(calls::read_checked(conn, &path, REGION0_ID).await?);
            cycles.push(assign_release(conn, &path).await?);
        }
    }
    let (c50, c99, r50, r99) = (
        cycles.p50_us(),
        cycles.p99_us(),
        reads.p50_us(),
        reads.p99_us(),
    );
    for (label, c, r) in [("p50", c50, r50), ("p99", c99, r99)] {
        report.row(
            8,
            format!("Assign + Release round trip (state persisted, fsync'd) vs Read, {label}"),
            us(c),
            us(r),
            Judgement {
                ratio: Some(c / r),
                target: "report",
                verdict: Verdict::Info,
            },
        );
    }
    report.figure("assign_release_p50_us", c50);
    report.figure("assign_release_p99_us", c99);
    report.figure("assign_release_read_p50_us", r50);
    report.figure("assign_release_read_p99_us", r99);
    Ok(())
}

/// strace as the daemon's wrapper, recording every flush to disk with the thread that made it.
pub fn strace_wrapper(trace: &Path) -> Vec<String> {
    [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=fsync,fdatasync,syncfs,sync_file_range",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.display().to_string()])
    .collect()
}

/// Runs `n` Assign+Release on the traced daemon; returns its threads' names by thread id, taken
/// while it runs.
pub async fn fsync_threads(
    conn: &Connection,
    traced: &TestDaemon,
    trace: &Path,
    n: usize,
) -> Fallible<(usize, BTreeMap<u32, String>)> {
    let path = slice_path("fpga0", "region0");
    for _ in 0..n {
        assign_release(conn, &path).await?;
    }
    // The harness's child is strace; the daemon is strace's child.
    let daemon = traced.daemon_pid();
    if daemon == traced.pid() {
        return Err(format!("strace has no child; trace {}", trace.display()));
    }
    let mut names = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{daemon}/task")).map_err(|e| e.to_string())?;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        names.insert(tid, comm.trim().to_owned());
    }
    Ok((n, names))
}

/// Counts the trace's flushes by thread name and reports whether any was on a runtime thread.
pub fn report_fsync_threads(
    trace: &Path,
    (rounds, names): (usize, BTreeMap<u32, String>),
    report: &mut Report,
) -> Fallible<()> {
    let text = std::fs::read_to_string(trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    let mut by_thread: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(tid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        if !["fsync(", "fdatasync(", "syncfs(", "sync_file_range("]
            .iter()
            .any(|c| call.starts_with(c))
        {
            continue;
        }
        let name = tid
            .parse::<u32>()
            .ok()
            .and_then(|t| names.get(&t).cloned())
            .unwrap_or_else(|| format!("thread {tid} (gone)"));
        *by_thread.entry(name).or_default() += 1;
    }
    let total: usize = by_thread.values().sum();
    let on_writer = by_thread.get(WRITER_THREAD).copied().unwrap_or(0);
    let elsewhere = total - on_writer;
    let listed = by_thread
        .iter()
        .map(|(name, n)| format!("{n} on {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Each update flushes the file and its directory: at least 4 per Assign+Release.
    let persisted = total >= 4 * rounds;
    report.row(
        8,
        format!("fsyncs during {rounds} Assign + Release (daemon under strace), by thread"),
        if listed.is_empty() {
            "none".to_owned()
        } else {
            listed
        },
        "",
        Judgement {
            ratio: None,
            target: "≥ 4 per round trip, 0 on runtime threads",
            verdict: Verdict::of(persisted && elsewhere == 0),
        },
    );
    report.figure("fsync_total", total as u64);
    report.figure("fsync_off_writer_thread", elsewhere as u64);
    Ok(())
}
