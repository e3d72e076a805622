//! Item 6: many clients reading at once, each on its own bus connection, without and with a
//! long operation running on the same device: a firmware Flash of fpga0, then Program of
//! fpga0/region1, each back to back at the simulated hardware's pace.
//!
//! Item 7: the same clients calling `Peer.Ping` on the daemon in the same shape, before and
//! after the quiet Reads: the floor a Read's p99 under 64 clients is compared with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use accelgate_client::proto::names::slice_path;
use zbus::Connection;

use super::calls;
use super::latency::REGION0_ID;
use super::report::{us, Judgement, Report, Verdict};
use super::stats::Samples;
use super::throughput::{firmware_bytes, flash_once, image_bytes, program_once, write_signed};
use super::Fallible;

/// Size of each background image: ~0.25 s per Program at the simulated 64 MiB/s.
const BACKGROUND_IMAGE: usize = 16 << 20;
/// Size of each background firmware: ~0.5 s per Flash at the simulated 8 MiB/s.
const BACKGROUND_FIRMWARE: usize = 4 << 20;

struct Phase {
    samples: Samples,
    errors: usize,
    first_error: Option<String>,
}

/// What every client calls in a phase.
#[derive(Clone, Copy)]
enum Call {
    /// One-register Read of fpga0/region0.
    Read,
    /// `Peer.Ping` on the daemon.
    Ping,
}

/// `conns.len()` clients, each doing `reads` sequential one-register Reads of fpga0/region0.
async fn phase(conns: &[Connection], reads: usize) -> Phase {
    calls_phase(conns, reads, Call::Read).await
}

/// `conns.len()` clients, each making `reads` sequential calls of `call`.
async fn calls_phase(conns: &[Connection], reads: usize, call: Call) -> Phase {
    let path = Arc::new(slice_path("fpga0", "region0"));
    let mut tasks = Vec::new();
    for conn in conns {
        let conn = conn.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(reads);
            let mut errors = 0usize;
            let mut first_error = None;
            for _ in 0..reads {
                let took = match call {
                    Call::Read => calls::read_checked(&conn, &path, REGION0_ID).await,
                    Call::Ping => calls::ping(&conn).await,
                };
                match took {
                    Ok(took) => samples.push(took),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (samples, errors, first_error)
        }));
    }
    let mut all = Phase {
        samples: Samples::with_capacity(conns.len() * reads),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        match t.await {
            Ok((s, e, first)) => {
                all.samples.extend(s);
                all.errors += e;
                if all.first_error.is_none() {
                    all.first_error = first;
                }
            }
            Err(e) => {
                all.errors += reads;
                all.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    all
}

/// A long operation kept running, back to back, while clients read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Background {
    /// Program of fpga0/region1.
    Program,
    /// Flash of fpga0's firmware (A/B slots, paced like SPI NOR).
    Flash,
}

impl Background {
    fn name(self) -> &'static str {
        match self {
            Background::Program => "Program on another slice",
            Background::Flash => "Flash of the device's firmware",
        }
    }
}

/// The images a background loop alternates between (each differs from the one loaded, so no
/// run is skipped as already done): (file, bytes, signature, version).
type Images = Vec<(PathBuf, Vec<u8>, Vec<u8>, String)>;

fn background_images(kind: Background, work: &Path) -> Fallible<Images> {
    (0..2u64)
        .map(|i| {
            let file = work.join(format!("background-{i}.bin"));
            match kind {
                Background::Program => {
                    let bytes = image_bytes(BACKGROUND_IMAGE, 500 + i);
                    std::fs::write(&file, &bytes)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    Ok((file, bytes, Vec::new(), String::new()))
                }
                Background::Flash => {
                    let version = format!("8.0.{i}");
                    let bytes = firmware_bytes(&version, BACKGROUND_FIRMWARE, 600 + i);
                    let signature = write_signed(&file, &bytes)?;
                    Ok((file, bytes, signature, version))
                }
            }
        })
        .collect()
}

/// Reads by every client while `kind` runs back to back; returns them and how many
/// background operations completed.
async fn loaded_phase(
    conns: &[Connection],
    control: &Connection,
    work: &Path,
    reads: usize,
    kind: Background,
) -> Fallible<(Phase, usize)> {
    let images = background_images(kind, work)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let background = {
        let (conn, stop, done) = (control.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (file, bytes, signature, version) = &images[i % 2];
                match kind {
                    Background::Program => {
                        program_once(&conn, "region1", file, bytes).await?;
                    }
                    Background::Flash => {
                        flash_once(&conn, file, signature, version).await?;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Fallible::Ok(())
        })
    };
    let loaded = phase(conns, reads).await;
    stop.store(true, Ordering::Relaxed);
    background
        .await
        .map_err(|e| format!("background {} task: {e}", kind.name()))??;
    Ok((loaded, done.load(Ordering::Relaxed)))
}

pub async fn run(
    address: &str,
    control: &Connection,
    work: &Path,
    clients: usize,
    reads: usize,
    loaded_phases: bool,
    report: &mut Report,
) -> Fallible<()> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(
            zbus::connection::Builder::address(address)
                .build()
                .await
                .map_err(|e| format!("client connection: {e}"))?,
        );
    }
    // Warm: every connection's caller entry is in the daemon's cache.
    phase(&conns, 5).await;
    calls_phase(&conns, 5, Call::Ping).await;

    // Quiet reads before and after the loaded phases, and pings before and after those, so
    // drift in the machine's load evens out.
    let mut pings = calls_phase(&conns, reads / 2, Call::Ping).await;
    let mut quiet = phase(&conns, reads / 2).await;
    let mut loaded = Vec::new();
    if loaded_phases {
        for kind in [Background::Flash, Background::Program] {
            let (phase, done) = loaded_phase(&conns, control, work, reads, kind).await?;
            loaded.push((kind, phase, done));
        }
    }
    let after = phase(&conns, reads - reads / 2).await;
    quiet.samples.extend(after.samples);
    quiet.errors += after.errors;
    quiet.first_error = quiet.first_error.or(after.first_error);
    let pings_after = calls_phase(&conns, reads - reads / 2, Call::Ping).await;
    pings.samples.extend(pings_after.samples);
    pings.errors += pings_after.errors;
    pings.first_error = pings.first_error.or(pings_after.first_error);
    let (g50, g99) = (pings.samples.p50_us(), pings.samples.p99_us());

    let errors = quiet.errors + loaded.iter().map(|(_, p, _)| p.errors).sum::<usize>();
    let total = quiet.samples.len()
        + loaded
            .iter()
            .map(|(_, p, _)| p.samples.len())
            .sum::<usize>()
        + errors;
    let (q50, q99) = (quiet.samples.p50_us(), quiet.samples.p99_us());
    report.row(
        6,
        format!(
            "{clients} clients × {reads} Reads (×{} phases): errors",
            loaded.len() + 1
        ),
        format!("{errors} of {total}"),
        "",
        Judgement {
            ratio: None,
            target: "0",
            verdict: Verdict::of(errors == 0),
        },
    );
    report.row(
        6,
        format!("{clients} clients: Read p50 / p99"),
        format!("{} / {}", us(q50), us(q99)),
        "",
        Judgement {
            ratio: None,
            target: "",
            verdict: Verdict::Info,
        },
    );
    report.row(
        7,
        format!(
            "{clients} clients × {reads} Reads p99 vs {clients} clients × {reads} Peer.Ping p99"
        ),
        format!("{} (p50 {})", us(q99), us(q50)),
        format!("{} (p50 {})", us(g99), us(g50)),
        Judgement {
            ratio: Some(q99 / g99),
            target: "≤ 1.5",
            verdict: Verdict::of(q99 / g99 <= 1.5 && pings.errors == 0),
        },
    );
    report.figure("concurrency_ping_p50_us", g50);
    report.figure("concurrency_ping_p99_us", g99);
    if let Some(e) = pings.first_error {
        report.note(format!("first Ping error under {clients} clients: {e}"));
    }
    report.figure("concurrency_clients", clients as u64);
    report.figure("concurrency_reads_per_client", reads as u64);
    report.figure("concurrency_errors", errors as u64);
    report.figure("concurrency_quiet_p50_us", q50);
    report.figure("concurrency_quiet_p99_us", q99);
    for (kind, mut phase, done) in loaded {
        let (l50, l99) = (phase.samples.p50_us(), phase.samples.p99_us());
        report.row(
            6,
            format!(
                "{clients} clients with {} running ({done} done): p99 vs quiet p99",
                kind.name()
            ),
            format!("{} (p50 {})", us(l99), us(l50)),
            us(q99),
            Judgement {
                ratio: Some(l99 / q99),
                target: "≤ 2",
                verdict: Verdict::of(l99 / q99 <= 2.0),
            },
        );
        let key = match kind {
            Background::Program => "program",
            Background::Flash => "flash",
        };
        report.figure(&format!("concurrency_{key}_p50_us"), l50);
        report.figure(&format!("concurrency_{key}_p99_us"), l99);
        report.figure(&format!("concurrency_{key}_done"), done as u64);
        if let Some(e) = phase.first_error.take() {
            report.note(format!("first error with {} running: {e}", kind.name()));
        }
    }
    if let Some(e) = quiet.first_error {
        report.note(format!("first concurrency error: {e}"));
    }
    Ok(())
}
