//! Item 4: Program throughput against `dd` + `sha256sum` of the same bytes to the same file
//! system (the simulated sysfs tree, on tmpfs as sysfs is in memory).
//!
//! The simulator paces uploads like hardware (64 MiB/s). A daemon started with the simulator
//! unpaced shows what the daemon itself costs; a paced one shows how close it stays to the
//! simulated hardware's speed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use accelgate_client::proto::names::slice_path;
use accelgate_client::{Client, SealedImage};
use zbus::Connection;

use super::calls;
use super::report::{Judgement, Report, Verdict};
use super::stats::median;
use super::Fallible;

/// The simulator's transfer speed (src/sim/emulator.rs).
pub const SIM_BYTES_PER_SEC: f64 = (64u64 << 20) as f64;
/// IMAGE_TAG register of a region (src/sim/spec.rs).
const REG_IMAGE_TAG: u64 = accelgate_sim::REG_IMAGE_TAG;

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
    if Some(tag[0]) != accelgate_sim::image_tag(bytes) {
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

/// The simulated policy's demo firmware key (committed, not a secret: policy/demo-keys).
const DEMO_KEY: &str = "policy/demo-keys/accelgate-DEMO-ONLY.key";

/// A firmware image: the version header the daemon reads, then `len` bytes in all.
pub fn firmware_bytes(version: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = format!("ACCELGATE-FW {version}\n").into_bytes();
    bytes.extend(image_bytes(len.saturating_sub(bytes.len()), seed));
    bytes
}

/// Writes `bytes` to `file` and signs it with the demo key (the vendor's step, not timed);
/// returns the signature.
pub fn write_signed(file: &Path, bytes: &[u8]) -> Fallible<Vec<u8>> {
    std::fs::write(file, bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let sig = file.with_extension("minisig");
    let out = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(accelgate_testkit::repo_path(DEMO_KEY))
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(&sig)
        .output()
        .map_err(|e| format!("minisign (Debian package minisign): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "minisign -S: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::read(&sig).map_err(|e| format!("{}: {e}", sig.display()))
}

/// One Flash of fpga0 as an admin does it with `accelctl firmware flash FILE --signature`:
/// sealed, sent with its signature, the job waited for (write, read-back verify, switch).
/// Checks the device runs `version` afterwards.
pub async fn flash_once(
    conn: &Connection,
    file: &Path,
    signature: &[u8],
    version: &str,
) -> Fallible<Duration> {
    let client = Client::from_connection(conn.clone());
    let t = Instant::now();
    let image = SealedImage::from_path(file).map_err(|e| format!("seal: {e}"))?;
    let job = client
        .flash("fpga0", &image, Some(signature))
        .await
        .map_err(|e| format!("Flash: {e}"))?;
    client
        .wait_job(&job, |_| {})
        .await
        .map_err(|e| format!("Flash job: {e}"))?;
    let took = t.elapsed();
    let reply = conn
        .call_method(
            Some(accelgate_client::proto::names::BUS_NAME),
            accelgate_client::proto::names::device_path("fpga0").as_str(),
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(
                accelgate_client::proto::names::DEVICE_INTERFACE,
                "FirmwareVersion",
            ),
        )
        .await
        .map_err(|e| format!("FirmwareVersion: {e}"))?;
    let value: zbus::OwnedVariant = reply.body().deserialize().map_err(|e| e.to_string())?;
    let active = String::try_from(value).map_err(|e| e.to_string())?;
    if active != version {
        return Err(format!(
            "fpga0 runs firmware {active} after flashing {version}"
        ));
    }
    Ok(took)
}

/// Median MB/s of `runs` Flashes of `len` bytes.
pub async fn flash_rate(
    conn: &Connection,
    work: &Path,
    len: usize,
    runs: usize,
    seed: u64,
) -> Fallible<f64> {
    let mut rates = Vec::new();
    for run in 0..runs {
        let version = format!("9.{seed}.{run}");
        let bytes = firmware_bytes(&version, len, seed + run as u64);
        let file = work.join("fw.bin");
        let signature = write_signed(&file, &bytes)?;
        let took = flash_once(conn, &file, &signature, &version).await?;
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
        let want = accelgate_hw::digest::sha256_hex(&bytes);
        if !String::from_utf8_lossy(&sum.stdout).starts_with(&want) {
            return Err("sha256sum disagrees with the bytes written".into());
        }
        rates.push(len as f64 / took.as_secs_f64() / 1e6);
        let _ = std::fs::remove_file(&dst);
    }
    Ok(median(&rates))
}

/// How long checking the minisign signature of `len` bytes takes here (it hashes the whole
/// image with BLAKE2b; the daemon does this for every Flash).
pub fn signature_check_time(work: &Path, len: usize) -> Fallible<Duration> {
    let bytes = firmware_bytes("0.0.0", len, 9);
    let file = work.join("verify.bin");
    let signature = write_signed(&file, &bytes)?;
    let public = std::fs::read_to_string(accelgate_testkit::repo_path(
        "policy/demo-keys/accelgate-demo.pub",
    ))
    .map_err(|e| format!("demo public key: {e}"))?;
    let key = public
        .lines()
        .nth(1)
        .ok_or("demo public key has no key line")?;
    let key = minisign_verify::PublicKey::from_base64(key.trim()).map_err(|e| e.to_string())?;
    let signature = minisign_verify::Signature::decode(&String::from_utf8_lossy(&signature))
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    key.verify(&bytes, &signature, false)
        .map_err(|e| format!("demo signature does not verify: {e}"))?;
    Ok(t.elapsed())
}

/// How long hashing `len` bytes takes here (the simulated device hashes every image it
/// loads, on the daemon's cores, to set IMAGE_TAG).
pub fn device_hash_time(len: usize) -> Duration {
    let bytes = image_bytes(len, 7);
    let t = Instant::now();
    std::hint::black_box(accelgate_sim::image_tag(&bytes));
    t.elapsed()
}

/// Rows for Program (`rate`) and Flash with the simulator unpaced against dd + sha256sum
/// (`floor`).
pub fn report_unpaced(
    len: usize,
    rate: f64,
    flash: Option<f64>,
    signature_check: f64,
    floor: f64,
    report: &mut Report,
) {
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
            target: "≥ 0.95",
            verdict: Verdict::of(rate / floor >= 0.95),
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
    match flash {
        Some(flash) => report.row(
            4,
            format!("Flash {mib} MiB (verify signature, write slot, read back, switch), unpaced"),
            format!("{flash:.0} MB/s"),
            format!("dd + sha256sum: {floor:.0} MB/s"),
            Judgement {
                ratio: Some(flash / floor),
                target: "≥ 0.9",
                verdict: Verdict::of(flash / floor >= 0.9),
            },
        ),
        None => report.row(
            4,
            "Flash throughput",
            "pending (Flash not in this build)",
            "",
            Judgement {
                ratio: None,
                target: "≥ 0.9",
                verdict: Verdict::Pending,
            },
        ),
    }
    if let Some(flash) = flash {
        report.figure("flash_unpaced_mb_s", flash);
        let ms = |d: f64| d * 1e3;
        let flash_s = len as f64 / 1e6 / flash;
        let program_s = len as f64 / 1e6 / rate;
        report.row(
            4,
            "  Flash time; the signature check alone (BLAKE2b, run beside the read); Program's time",
            format!(
                "{:.0} ms; {:.0} ms; {:.0} ms",
                ms(flash_s),
                ms(signature_check),
                ms(program_s)
            ),
            "",
            Judgement {
                ratio: None,
                target: "",
                verdict: Verdict::Info,
            },
        );
        report.figure("flash_signature_check_s", signature_check);
    }
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
