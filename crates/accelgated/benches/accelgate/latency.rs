//! Items 1–3: one-register Read against Ping, Read with polkit against CheckAuthorization,
//! batched Read, and access through a Map'ed BAR against a direct mapping of the same file.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use accelgate_client::proto::names::slice_path;
use accelgate_hw::{Access, SliceWindow, Width, MAX_COUNT};
use zbus::Connection;

use super::calls;
use super::report::{us, Judgement, Report, Verdict};
use super::stats::Samples;
use super::Fallible;

/// REGION_ID of the standard host's fpga0/region0.
pub const REGION0_ID: u64 = 0xacce_0000;
const WARMUP: usize = 300;

/// Item 1. Ping and Read alternate, the order flipping every iteration, so that noise from the
/// other engineers' work on the shared cores lands on both alike.
pub async fn read_vs_ping(conn: &Connection, n: usize, report: &mut Report) -> Fallible<f64> {
    let path = slice_path("fpga0", "region0");
    for _ in 0..WARMUP {
        calls::ping(conn).await?;
        calls::read_checked(conn, &path, REGION0_ID).await?;
    }
    let mut reads = Samples::with_capacity(n);
    let mut pings = Samples::with_capacity(n);
    for i in 0..n {
        if i % 2 == 0 {
            pings.push(calls::ping(conn).await?);
            reads.push(calls::read_checked(conn, &path, REGION0_ID).await?);
        } else {
            reads.push(calls::read_checked(conn, &path, REGION0_ID).await?);
            pings.push(calls::ping(conn).await?);
        }
    }
    let (r50, r99, p50, p99) = (
        reads.p50_us(),
        reads.p99_us(),
        pings.p50_us(),
        pings.p99_us(),
    );
    report.row(
        1,
        "1-register Read vs Peer.Ping, p50",
        us(r50),
        us(p50),
        Judgement {
            ratio: Some(r50 / p50),
            target: "≤ 1.5",
            verdict: Verdict::of(r50 / p50 <= 1.5),
        },
    );
    report.row(
        1,
        "1-register Read vs Peer.Ping, p99",
        us(r99),
        us(p99),
        Judgement {
            ratio: Some(r99 / p99),
            target: "≤ 1.5",
            verdict: Verdict::of(r99 / p99 <= 1.5),
        },
    );
    for (k, v) in [
        ("read_p50_us", r50),
        ("read_p99_us", r99),
        ("ping_p50_us", p50),
        ("ping_p99_us", p99),
    ] {
        report.figure(k, v);
    }
    report.figure("read_vs_ping_samples", n as u64);
    Ok(r50)
}

/// Item 2. `polkit_conn` is the connection of a daemon started with its polkit gate on, when
/// this build has one; without it, only the raw CheckAuthorization is measured and the Read
/// column is left pending.
pub async fn polkit(
    conn: &Connection,
    gated: Option<&Connection>,
    n: usize,
    report: &mut Report,
) -> Fallible<()> {
    let path = slice_path("fpga0", "region0");
    let mut checks = Samples::with_capacity(n);
    let mut reads = Samples::with_capacity(n);
    let mut authorized = 0usize;
    // The first Read fills the gate's decision cache; so do the warm-up checks for polkitd.
    for _ in 0..WARMUP / 3 {
        calls::check_authorization(conn).await?;
        if let Some(g) = gated {
            calls::read_checked(g, &path, REGION0_ID).await?;
        }
    }
    for _ in 0..n {
        let (ok, took) = calls::check_authorization(conn).await?;
        authorized += usize::from(ok);
        checks.push(took);
        if let Some(g) = gated {
            reads.push(calls::read_checked(g, &path, REGION0_ID).await?);
        }
    }
    let (c50, c99) = (checks.p50_us(), checks.p99_us());
    report.figure("polkit_check_p50_us", c50);
    report.figure("polkit_check_p99_us", c99);
    report.figure("polkit_check_authorized", authorized as u64);
    if gated.is_some() {
        let (r50, r99) = (reads.p50_us(), reads.p99_us());
        report.figure("read_polkit_p50_us", r50);
        report.figure("read_polkit_p99_us", r99);
        for (label, r, c) in [("p50", r50, c50), ("p99", r99, c99)] {
            report.row(
                2,
                format!("Read with polkit gate (cached) vs CheckAuthorization, {label}"),
                us(r),
                us(c),
                Judgement {
                    ratio: Some(r / c),
                    target: "< 1",
                    verdict: Verdict::of(r < c),
                },
            );
        }
    } else {
        report.row(
            2,
            "Read with polkit gate (cached) vs CheckAuthorization, p50",
            "pending (gate not in this build)",
            us(c50),
            Judgement {
                ratio: None,
                target: "< 1",
                verdict: Verdict::Pending,
            },
        );
        report.row(
            2,
            "raw polkit CheckAuthorization (slice.read), p99",
            "",
            us(c99),
            Judgement {
                ratio: None,
                target: "",
                verdict: Verdict::Info,
            },
        );
    }
    if authorized != n {
        report.note(format!(
            "polkit authorized {authorized} of {n} checks (the read action defaults to yes)"
        ));
    }
    Ok(())
}

/// Item 3a: Read of 4096 8-byte registers in one call.
pub async fn batched_read(
    conn: &Connection,
    calls_n: usize,
    single_p50_us: f64,
    report: &mut Report,
) -> Fallible<()> {
    const COUNT: u32 = 4096;
    let path = slice_path("fpga0", "region0");
    let mut samples = Samples::with_capacity(calls_n);
    for i in 0..calls_n + 20 {
        let (values, took) = calls::read(conn, &path, 0, COUNT, 8).await?;
        if values.len() != COUNT as usize || values[0] & 0xffff_ffff != REGION0_ID {
            return Err(format!(
                "batched Read returned {} values, first {:#x}",
                values.len(),
                values.first().copied().unwrap_or(0)
            ));
        }
        if i >= 20 {
            samples.push(took);
        }
    }
    let p50 = samples.p50_us();
    let rate = f64::from(COUNT) / (p50 / 1e6);
    let single_rate = 1e6 / single_p50_us;
    report.row(
        3,
        "batched Read, 4096 × 8-byte registers per call (p50)",
        format!("{:.1} M regs/s ({})", rate / 1e6, us(p50)),
        format!("1-register Reads: {:.0} k regs/s", single_rate / 1e3),
        Judgement {
            ratio: Some(rate / single_rate),
            target: "",
            verdict: Verdict::Info,
        },
    );
    report.figure("batched_read_p50_us", p50);
    report.figure("batched_read_regs_per_s", rate);
    Ok(())
}

/// A read-only mapping of a whole BAR file through the hardware crate's `SliceWindow`, the
/// same access code the daemon and `accelctl map-test` use.
struct Mapping {
    window: SliceWindow,
    len: usize,
    buffer: std::cell::RefCell<Vec<u64>>,
}

impl Mapping {
    fn new(fd: &OwnedFd) -> Fallible<Mapping> {
        let len = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| format!("fstat: {e}"))?
            .st_size as usize;
        let window = SliceWindow::map_fd(
            fd.as_fd(),
            Path::new("BAR"),
            0,
            len as u64,
            Access::ReadOnly,
        )
        .map_err(|e| format!("map: {e}"))?;
        Ok(Mapping {
            window,
            len,
            buffer: std::cell::RefCell::new(vec![0; (len / 4).min(MAX_COUNT as usize)]),
        })
    }

    /// Reads every 4-byte register once (volatile, through the window's checked access);
    /// returns their sum so the loop cannot be optimised away.
    fn sweep(&self) -> u64 {
        let mut buffer = self.buffer.borrow_mut();
        let chunk = buffer.len().max(1);
        let mut sum = 0u64;
        let mut at = 0usize;
        while at < self.registers() {
            let n = chunk.min(self.registers() - at);
            if self
                .window
                .read_into((at * 4) as u64, Width::U32, &mut buffer[..n])
                .is_ok()
            {
                sum = buffer[..n].iter().fold(sum, |s, v| s.wrapping_add(*v));
            }
            at += n;
        }
        sum
    }

    fn registers(&self) -> usize {
        self.len / 4
    }
}

/// Item 3b: register reads through the fd `Map` hands out against a mapping of the same BAR
/// file opened directly. Rounds alternate between the two.
pub async fn map_path(
    conn: &Connection,
    sim_dir: &Path,
    rounds: usize,
    report: &mut Report,
) -> Fallible<()> {
    const SWEEPS_PER_ROUND: usize = 32;
    calls::set_vf_count(conn, "nic0", 1).await?;
    let handed = Mapping::new(&calls::map(conn, "nic0", "vf0").await?)?;
    let vf_dir = std::fs::canonicalize(sim_dir.join("sys/bus/pci/devices/0000:5e:00.0/virtfn0"))
        .map_err(|e| format!("virtfn0 of nic0: {e}"))?;
    let direct_file = std::fs::File::open(vf_dir.join("resource0"))
        .map_err(|e| format!("{}: {e}", vf_dir.display()))?;
    let direct = Mapping::new(&OwnedFd::from(direct_file))?;
    if handed.len != direct.len || handed.sweep() != direct.sweep() {
        return Err("the mapped BAR differs from the VF's resource0".into());
    }
    let mut t_handed = Samples::with_capacity(rounds);
    let mut t_direct = Samples::with_capacity(rounds);
    let mut sink = 0u64;
    let timed = |m: &Mapping, sink: &mut u64| {
        let t = Instant::now();
        for _ in 0..SWEEPS_PER_ROUND {
            *sink = sink.wrapping_add(m.sweep());
        }
        t.elapsed()
    };
    for i in 0..rounds {
        if i % 2 == 0 {
            t_handed.push(timed(&handed, &mut sink));
            t_direct.push(timed(&direct, &mut sink));
        } else {
            t_direct.push(timed(&direct, &mut sink));
            t_handed.push(timed(&handed, &mut sink));
        }
    }
    std::hint::black_box(sink);
    let per_round = (handed.registers() * SWEEPS_PER_ROUND) as f64;
    let rate = |s: &mut Samples| per_round / (s.p50_us() / 1e6);
    let (r_handed, r_direct) = (rate(&mut t_handed), rate(&mut t_direct));
    report.row(
        3,
        "Map: 4-byte register reads through the handed-out fd vs direct mmap (p50)",
        format!("{:.0} M reads/s", r_handed / 1e6),
        format!("{:.0} M reads/s", r_direct / 1e6),
        Judgement {
            ratio: Some(r_handed / r_direct),
            target: "≥ 0.9",
            verdict: Verdict::of(r_handed / r_direct >= 0.9),
        },
    );
    report.figure("map_reads_per_s", r_handed);
    report.figure("direct_mmap_reads_per_s", r_direct);
    Ok(())
}
