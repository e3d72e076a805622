//! Item 6: many clients reading at once, each on its own bus connection, without and with a
//! long operation running on another slice. Flash is not in this build yet, so the long
//! operation is Program of fpga0/region1, back to back at the simulated hardware's pace.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use accelgate::names::slice_path;
use zbus::Connection;

use super::calls;
use super::latency::REGION0_ID;
use super::report::{us, Judgement, Report, Verdict};
use super::stats::Samples;
use super::throughput::{image_bytes, program_once};
use super::Fallible;

/// Size of each background image: ~0.25 s per Program at the simulated 64 MiB/s.
const BACKGROUND_IMAGE: usize = 16 << 20;

struct Phase {
    samples: Samples,
    errors: usize,
    first_error: Option<String>,
}

/// `conns.len()` clients, each doing `reads` sequential one-register Reads of fpga0/region0.
async fn phase(conns: &[Connection], reads: usize) -> Phase {
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
                match calls::read_checked(&conn, &path, REGION0_ID).await {
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

pub async fn run(
    address: &str,
    control: &Connection,
    work: &Path,
    clients: usize,
    reads: usize,
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

    // Quiet reads before and after the loaded phase, so drift in the machine's load evens out.
    let mut quiet = phase(&conns, reads / 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let programs = Arc::new(AtomicUsize::new(0));
    let images: Vec<(std::path::PathBuf, Vec<u8>)> = (0..2)
        .map(|i| {
            let bytes = image_bytes(BACKGROUND_IMAGE, 500 + i);
            let file = work.join(format!("background-{i}.bin"));
            std::fs::write(&file, &bytes).map(|()| (file, bytes))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("background image: {e}"))?;
    let background = {
        let (conn, stop, programs) = (control.clone(), stop.clone(), programs.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (file, bytes) = &images[i % 2];
                program_once(&conn, "region1", file, bytes).await?;
                programs.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Fallible::Ok(())
        })
    };
    let loaded = phase(&conns, reads).await;
    stop.store(true, Ordering::Relaxed);
    background
        .await
        .map_err(|e| format!("background Program task: {e}"))??;

    let after = phase(&conns, reads - reads / 2).await;
    quiet.samples.extend(after.samples);
    quiet.errors += after.errors;
    quiet.first_error = quiet.first_error.or(after.first_error);
    let mut loaded = loaded;

    let errors = quiet.errors + loaded.errors;
    let total = quiet.samples.len() + loaded.samples.len() + errors;
    let (q50, q99) = (quiet.samples.p50_us(), quiet.samples.p99_us());
    let (l50, l99) = (loaded.samples.p50_us(), loaded.samples.p99_us());
    report.row(
        6,
        format!("{clients} clients × {reads} Reads (×2 phases): errors"),
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
        6,
        format!(
            "{clients} clients with Program running on another slice ({} done): p99 vs quiet p99",
            programs.load(Ordering::Relaxed)
        ),
        format!("{} (p50 {})", us(l99), us(l50)),
        us(q99),
        Judgement {
            ratio: Some(l99 / q99),
            target: "≤ 2",
            verdict: Verdict::of(l99 / q99 <= 2.0),
        },
    );
    if let Some(e) = quiet.first_error.or(loaded.first_error) {
        report.note(format!("first concurrency error: {e}"));
    }
    report.figure("concurrency_clients", clients as u64);
    report.figure("concurrency_reads_per_client", reads as u64);
    report.figure("concurrency_errors", errors as u64);
    report.figure("concurrency_quiet_p50_us", q50);
    report.figure("concurrency_quiet_p99_us", q99);
    report.figure("concurrency_loaded_p50_us", l50);
    report.figure("concurrency_loaded_p99_us", l99);
    report.figure(
        "concurrency_background_programs",
        programs.load(Ordering::Relaxed) as u64,
    );
    Ok(())
}
