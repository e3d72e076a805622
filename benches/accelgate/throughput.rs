//! Item 4: Program throughput against `dd` + `sha256sum` of the same bytes to the same file
//! system (the simulated sysfs tree, on tmpfs as sysfs is in memory).
//!
//! The simulator paces uploads like hardware (64 MiB/s). A daemon started with the simulator
//! unpaced shows what the daemon itself costs; a paced one shows how close it stays to the
//! simulated hardware's speed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use accelgate::client::{Client, SealedImage};
use accelgate::names::slice_path;
use zbus::Connection;

use super::calls;
use super::report::{Judgement, Report, Verdict};
use super::stats::median;
use super::Fallible;

/// The simulator's transfer speed (src/sim/emulator.rs).
pub const SIM_BYTES_PER_SEC: f64 = (64u64 << 20) as f64;
/// IMAGE_TAG register of a region (src/sim/spec.rs).
const REG_IMAGE_TAG: u64 = accelgate::sim::REG_IMAGE_TAG;

/// Bytes that differ from run to run (an image already loaded would be skipped).
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64: cheap, non-zero, not compressible.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One Program as a tenant does it with `accelctl program FILE`: the file is sealed into a
/// memfd, sent, and the job waited for. Returns the wall time; checks the device loaded it.
pub async fn program_once(
    conn: &Connection,
    slice: &str,
    file: &Path,
    bytes: &[u8],
) -> Fallible<Duration> {
    let client = Client::from_connection(conn.clone());
    let t = Instant::now();
    let image = SealedImage::from_path(file).map_err(|e| format!("seal: {e}"))?;
    let job = client
        .program("fpga0", slice, &image)
        .await
        .map_err(|e| format!("Program: {e}"))?;
    client
        .wait_job(&job, |_| {})
        .await
        .map_err(|e| format!("Program job: {e}"))?;
    let took = t.elapsed();
    let (tag, _) = calls::read(conn, &slice_path("fpga0", slice), REG_IMAGE_TAG, 1, 8).await?;
    if Some(tag[0]) != accelgate::sim::image_tag(bytes) {
        return Err(format!(
            "{slice} IMAGE_TAG {:#x} is not the image's",
            tag[0]
        ));
    }
    Ok(took)
}

/// Median MB/s (10^6 bytes) of `runs` Programs of `len` bytes into fpga0/region0.
pub async fn program_rate(
    conn: &Connection,
    work: &Path,
    len: usize,
    runs: usize,
    seed: u64,
) -> Fallible<f64> {
    let mut rates = Vec::new();
    for run in 0..runs {
        let bytes = image_bytes(len, seed + run as u64);
        let file = work.join("app.bin");
        std::fs::write(&file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let took = program_once(conn, "region0", &file, &bytes).await?;
        rates.push(len as f64 / took.as_secs_f64() / 1e6);
    }
    Ok(median(&rates))
}

/// Median MB/s of `dd` of the same file into the simulated tree, then `sha256sum` of what was
/// written (checked against the bytes).
pub fn dd_sha_rate(work: &Path, sim_dir: &Path, len: usize, runs: usize) -> Fallible<f64> {
    let mut rates = Vec::new();
    for run in 0..runs {
        let bytes = image_bytes(len, 1000 + run as u64);
        let src = work.join("dd-src.bin");
        let dst = sim_dir.join("dd-floor.bin");
        std::fs::write(&src, &bytes).map_err(|e| format!("{}: {e}", src.display()))?;
        let _ = std::fs::remove_file(&dst);
        let t = Instant::now();
        let dd = Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dst.display()))
            .args(["bs=1M", "status=none"])
            .status()
            .map_err(|e| format!("dd: {e}"))?;
        let sum = Command::new("sha256sum")
            .arg(&dst)
            .output()
            .map_err(|e| format!("sha256sum: {e}"))?;
        let took = t.elapsed();
        if !dd.success() || !sum.status.success() {
            return Err("dd or sha256sum failed".into());
        }
        let want = accelgate::daemon::image::sha256_hex(&bytes);
        if !String::from_utf8_lossy(&sum.stdout).starts_with(&want) {
            return Err("sha256sum disagrees with the bytes written".into());
        }
        rates.push(len as f64 / took.as_secs_f64() / 1e6);
        let _ = std::fs::remove_file(&dst);
    }
    Ok(median(&rates))
}

/// How long hashing `len` bytes takes here (the simulated device hashes every image it
/// loads, on the daemon's cores, to set IMAGE_TAG).
pub fn device_hash_time(len: usize) -> Duration {
    let bytes = image_bytes(len, 7);
    let t = Instant::now();
    std::hint::black_box(accelgate::sim::image_tag(&bytes));
    t.elapsed()
}

/// Rows for Program with the simulator unpaced (`rate`) against dd + sha256sum (`floor`).
pub fn report_unpaced(len: usize, rate: f64, floor: f64, report: &mut Report) {
    let device_hash = device_hash_time(len).as_secs_f64();
    let program_secs = len as f64 / 1e6 / rate;
    let daemon_only = len as f64 / 1e6 / (program_secs - device_hash);
    let mib = len >> 20;
    report.row(
        4,
        format!("Program {mib} MiB (file → sealed memfd → daemon → sim), unpaced simulator"),
        format!("{rate:.0} MB/s"),
        format!("dd + sha256sum: {floor:.0} MB/s"),
        Judgement {
            ratio: Some(rate / floor),
            target: "≥ 0.8",
            verdict: Verdict::of(rate / floor >= 0.8),
        },
    );
    report.row(
        4,
        "  same, less the simulated device's own sha256 of the image",
        format!("{daemon_only:.0} MB/s"),
        format!("{floor:.0} MB/s"),
        Judgement {
            ratio: Some(daemon_only / floor),
            target: "",
            verdict: Verdict::Info,
        },
    );
    report.row(
        4,
        "Flash throughput",
        "pending (Flash not in this build)",
        "",
        Judgement {
            ratio: None,
            target: "≥ 0.8",
            verdict: Verdict::Pending,
        },
    );
    report.figure("program_bytes", len as u64);
    report.figure("program_unpaced_mb_s", rate);
    report.figure("dd_sha256sum_mb_s", floor);
    report.figure("device_hash_s", device_hash);
}

/// The row for Program with the simulator paced like hardware (64 MiB/s).
pub fn report_paced(len: usize, rate: f64, report: &mut Report) {
    let link = SIM_BYTES_PER_SEC / 1e6;
    report.row(
        4,
        format!("Program {} MiB, simulator paced like hardware", len >> 20),
        format!("{rate:.0} MB/s"),
        format!("simulated link: {link:.0} MB/s"),
        Judgement {
            ratio: Some(rate / link),
            target: "",
            verdict: Verdict::Info,
        },
    );
    report.figure("program_paced_mb_s", rate);
}
