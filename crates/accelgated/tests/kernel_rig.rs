//! The real-kernel rig: the `accelgated` and `accelctl` under test inside Debian's stock 6.12
//! kernel under QEMU (TCG), with emulated PCI devices (edu, nvme with SR-IOV, igb), MTDs
//! (mtdram, phram over an ivshmem host file) and test_firmware upload entries. One boot runs
//! every scenario (rig/guest/scenarios.sh); the guest reports `RIG-RESULT name pass|fail|skip
//! detail` lines on its serial console, and this test asserts each one.
//!
//! Then power cuts on the persistent MTD (phram over the host file OUT/flash.img, the
//! daemon's state on OUT/state through virtfs): the guest flashes fw-cut.bin to edu0, the test
//! watches the file and kills QEMU when the inactive slot's header block is erased, when the
//! image is half written, and when the slot's header appears (right before the selector
//! write); each next boot must come up on the old or the new firmware whole, and the daemon's
//! recovery (its log and the Device's FirmwareLastResult) must say which.
//!
//! Needs root and what `scripts/install-test-deps` installs (QEMU from bookworm-backports,
//! busybox-static, mtd-utils); the kernel is fetched and cached by `rig/fetch-kernel`. A missing
//! piece fails the test with a message saying what to install.

mod rig_scenarios;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Seconds QEMU may run before the rig kills it (a boot takes about a minute).
const GUEST_TIMEOUT_S: &str = "300";

fn repo() -> PathBuf {
    accelgate_testkit::repo_path("")
}

/// The target directory: CARGO_TARGET_DIR, else the one holding this test executable
/// (target/<profile>/deps/kernel_rig-*).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            repo().join(dir)
        };
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| repo().join("target"))
}

/// The binaries under test, as `cargo build --bins` built them for this test's profile (the
/// scripts/test run builds them first; the rig strips their debug information). One build
/// serves every test: a release build of its own would cost a CI run minutes of compiling.
fn binaries() -> (PathBuf, PathBuf) {
    (
        accelgate_testkit::bin("accelgated"),
        accelgate_testkit::bin("accelctl"),
    )
}

/// Holds an exclusive lock on `<out>.lock` until dropped, waiting (and saying so) while
/// another run holds it.
fn lock_rig_dir(out: &Path) -> nix::fcntl::Flock<std::fs::File> {
    use nix::fcntl::{Flock, FlockArg};
    let path = out.with_extension("lock");
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            let _ = writeln!(
                std::io::stderr(),
                "kernel rig: another run holds {}; waiting for it",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("cannot lock {}: {e}", path.display()))
        }
    }
}

/// One boot of the rig, and where its power cut landed if it had one.
struct Boot {
    console: String,
    stdout: String,
    stderr: String,
    status: std::process::ExitStatus,
    elapsed: Duration,
    cut: Option<Result<Cut, String>>,
}

impl Boot {
    fn context(&self) -> String {
        format!(
            "rig/run exit {:?}\n--- stderr ---\n{}\n--- console (last 150 lines) ---\n{}",
            self.status.code(),
            self.stderr,
            tail(&self.console, 150)
        )
    }

    fn time_line(&self) -> &str {
        // The line may follow a progress bar that the power cut left without its newline.
        self.stdout
            .lines()
            .find_map(|l| l.find("RIG-TIME").map(|at| &l[at..]))
            .unwrap_or("RIG-TIME (not reported)")
    }
}

/// Boots the rig once. `mode` is the guest's rig.mode; with `cut`, the guest ends with a flash
/// of fw-cut.bin to edu0 and QEMU is killed when the backing file shows that point.
fn boot(bins: &(PathBuf, PathBuf), out: &Path, mode: &str, cut: Option<CutPoint>) -> Boot {
    let started = Instant::now();
    // The previous boot's console and pid must not be taken for this one's.
    let _ = std::fs::remove_file(out.join("console.log"));
    let _ = std::fs::remove_file(out.join("qemu.pid"));
    let log = out.join(format!("run-{mode}.log"));
    let mut child = Command::new(repo().join("rig/run"))
        .arg(&bins.0)
        .arg(&bins.1)
        .arg(out)
        .env("ACCELGATE_RIG_TIMEOUT", GUEST_TIMEOUT_S)
        .env("ACCELGATE_RIG_MODE", mode)
        .env("ACCELGATE_RIG_FLASH", if cut.is_some() { "1" } else { "0" })
        // The first boot builds the initramfs and images; the power-cut boots reuse them.
        .env(
            "ACCELGATE_RIG_REUSE",
            if mode == "scenarios" { "0" } else { "1" },
        )
        .stdout(std::fs::File::create(&log).expect("cannot create the run log"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run rig/run");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr_pipe, &mut text);
        text
    });
    let cut = cut.map(|point| cut_power(out, point, &mut child));
    let status = child.wait().expect("cannot wait for rig/run");
    Boot {
        console: std::fs::read_to_string(out.join("console.log")).unwrap_or_default(),
        stdout: std::fs::read_to_string(&log).unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
        status,
        elapsed: started.elapsed(),
        cut,
    }
}

#[test]
fn scenarios_pass_on_the_real_kernel() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the kernel rig must run as root (it caches the kernel under /var/cache/accelgate-rig)"
    );
    let bins = binaries();
    let out = target_dir().join("kernel-rig");
    // Two runs on one target directory would boot two guests on one flash file, one state
    // directory and one QMP socket, each corrupting what the other checks: the second waits.
    let _exclusive = lock_rig_dir(&out);
    // A fresh flash file and state each run: the scenarios expect factory-blank MTDs.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("cannot create the rig's output directory");

    let started = Instant::now();
    let first = boot(&bins, &out, "scenarios", Some(CUTS[0]));
    // Written to stderr directly, not through eprintln!, so that the time shows in `cargo
    // test` output also when the test passes (the harness captures only the print macros).
    let _ = writeln!(
        std::io::stderr(),
        "kernel rig: scenarios boot {:.1?}; {}",
        first.elapsed,
        first.time_line()
    );
    assert!(
        first.console.contains("RIG-DONE"),
        "the guest did not finish its scenarios (missing QEMU, kernel or a hang?)\n{}",
        first.context()
    );
    // Scenario failures are reported at the end: the power cuts run whatever they say.
    let failures = rig_scenarios::failures(
        &first.console,
        rig_scenarios::KERNEL_EXTRA,
        rig_scenarios::SIM_ONLY,
    );
    let scenario_failures = (!failures.is_empty()).then(|| {
        format!(
            "scenarios failed on the real kernel:\n  {}\n{}",
            failures.join("\n  "),
            first.context()
        )
    });
    let baseline = firmware_report(&first.console);
    assert_eq!(
        (baseline.active_slot.as_str(), baseline.version.as_str()),
        ("b", OLD_VERSION),
        "after the scenarios edu0 should boot fw.bin from slot b: {baseline:?}"
    );

    // Power cuts: each boot reports what the daemon recovered from the previous cut, then
    // flashes again and is cut at the next point; the last boot only reports. A cut that
    // landed elsewhere (the watcher was late) is still checked for old-or-new, and its point
    // is tried again, at most MAX_RETRIES times in all.
    let mut previous = first;
    let mut index = 0;
    let mut retries = 0;
    let mut boots = 1;
    loop {
        let point = CUTS[index];
        let cut = previous
            .cut
            .take()
            .expect("every boot but the last flashes")
            .unwrap_or_else(|e| panic!("power cut {point:?}: {e}\n{}", previous.context()));
        let hit = landed(point, &cut);
        // A point the watcher keeps missing (the guest writes a block in a few milliseconds)
        // is given up after MAX_RETRIES and said so; every cut, wherever it landed, is still
        // checked for old-or-new below.
        let give_up = !hit && retries >= MAX_RETRIES;
        if give_up {
            let _ = writeln!(
                std::io::stderr(),
                "kernel rig: power cut {point:?} missed its moment {} times; going on",
                retries + 1
            );
        }
        let next_point = if hit || give_up {
            CUTS.get(index + 1).copied()
        } else {
            retries += 1;
            Some(point)
        };
        let next = boot(&bins, &out, "powercut", next_point);
        boots += 1;
        let _ = writeln!(
            std::io::stderr(),
            "kernel rig: power cut {point:?} {} {}; boot after it {:.1?}",
            if hit {
                "landed"
            } else {
                "missed its moment, landed"
            },
            cut.phase,
            next.elapsed
        );
        assert!(
            next.console.contains("RIG-DONE"),
            "the guest did not come up after power cut {point:?}\n{}",
            next.context()
        );
        check_recovery(point, &cut, &next, hit);
        previous = next;
        if hit || give_up {
            index += 1;
        }
        if next_point.is_none() {
            break;
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "kernel rig: {boots} boots, {retries} cuts retried"
    );
    let _ = writeln!(
        std::io::stderr(),
        "kernel rig: {:.1?} in all (scenarios and {} power cuts)",
        started.elapsed(),
        CUTS.len()
    );
    if let Some(failures) = scenario_failures {
        panic!("{failures}");
    }
}

// ------------------------------------------------------------------------------ power cuts

/// Version of fw.bin (the scenarios flash it) and fw-cut.bin (rig/make-images).
const OLD_VERSION: &str = "2.0.0";
const NEW_VERSION: &str = "3.0.0";
/// edu0's partitions on the phram file (rig/guest/init): slot a, slot b, selector.
const SLOT_OFFSETS: [u64; 2] = [0, 0x7_0000];
const SELECTOR_OFFSET: u64 = 0xe_0000;
const ERASE_BLOCK: u64 = 0x1_0000;
/// The daemon's MTD layout (core/firmware/mtd.rs), read here independently of it.
const SLOT_MAGIC: &[u8; 8] = b"AGFWSLT1";
const SELECTOR_MAGIC: &[u8; 8] = b"AGFWSEL1";

/// Where, inside a flash to the inactive slot, QEMU is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutPoint {
    /// The slot's first bytes change: its header block is being erased.
    SlotErased,
    /// The image's first bytes are in the slot, its last bytes are not.
    MidImage,
    /// The slot's header appeared (image written and read back), right before the selector.
    HeaderWritten,
}

/// How many cuts may be tried again in one run because the watcher was late.
const MAX_RETRIES: usize = 2;

const CUTS: [CutPoint; 3] = [
    CutPoint::SlotErased,
    CutPoint::MidImage,
    CutPoint::HeaderWritten,
];

/// What the backing file held right after a cut.
#[derive(Debug)]
struct Cut {
    /// What the file shows about the target slot (for the report and the phase check).
    phase: String,
    target_header_valid: bool,
    image_blocks_written: usize,
    image_blocks: usize,
    /// The slot the selector names and the version it boots (the device's view).
    boots: (char, String),
    /// The slot the flash was writing.
    target: char,
}

fn read_at(file: &std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)
        .expect("cannot read the flash file");
    bytes
}

/// The slot index (0 = a) the selector's newest valid record names; a at first.
fn selected_slot(flash: &std::fs::File) -> usize {
    let mut best: Option<(u64, usize)> = None;
    for block in 0..2 {
        let record = read_at(flash, SELECTOR_OFFSET + block * ERASE_BLOCK, 32);
        let check = Sha256::digest(&record[..24]);
        if &record[..8] != SELECTOR_MAGIC || check[..8] != record[24..] || record[16] > 1 {
            continue;
        }
        let seq = u64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
        if best.is_none_or(|(s, _)| seq > s) {
            best = Some((seq, usize::from(record[16])));
        }
    }
    best.map_or(0, |(_, slot)| slot)
}

/// The version of the image a slot holds if its header is whole and matches its bytes.
fn slot_version(flash: &std::fs::File, slot: usize) -> Option<String> {
    let base = SLOT_OFFSETS[slot];
    let header = read_at(flash, base, 48);
    if &header[..8] != SLOT_MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len == 0 || len > SLOT_OFFSETS[1] - ERASE_BLOCK {
        return None;
    }
    let image = read_at(flash, base + ERASE_BLOCK, len as usize);
    if Sha256::digest(&image)[..] != header[16..48] {
        return None;
    }
    let first = image.split(|&b| b == b'\n').next().unwrap_or_default();
    Some(
        String::from_utf8_lossy(first)
            .trim_start_matches("ACCELGATE-FW ")
            .to_owned(),
    )
}

/// Waits for the guest to start the flash, watches the backing file and kills QEMU at
/// `point`; then reads what the file holds.
fn cut_power(out: &Path, point: CutPoint, child: &mut std::process::Child) -> Result<Cut, String> {
    let deadline = Instant::now() + Duration::from_secs(GUEST_TIMEOUT_S.parse().unwrap_or(300));
    let console = out.join("console.log");
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("RIG-CUT-FLASH-START")
    {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return Err("the guest never started the flash".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let image = std::fs::read(out.join("images/fw-cut.bin")).map_err(|e| e.to_string())?;
    let flash = std::fs::File::open(out.join("flash.img")).map_err(|e| e.to_string())?;
    let target = 1 - selected_slot(&flash);
    let base = SLOT_OFFSETS[target];
    let image_head = &image[..32];
    // What an earlier cut left in the target slot must not pass for this flash's progress:
    // an erased header (a cut after the erase) would be taken for this flash's erase, and the
    // image's first block (a cut mid-image) for its first write, before the flash has begun.
    // So the slot's first bytes get a pattern that is neither, now: the guest has only just
    // started accelctl, and the daemon reads and verifies the image before it erases anything.
    let scrub = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("flash.img"))
        .and_then(|f| {
            f.write_all_at(&[0u8; 16], base)?;
            f.write_all_at(&[0u8; 32], base + ERASE_BLOCK)
        });
    scrub.map_err(|e| format!("cannot reset the target slot's first bytes: {e}"))?;
    // The moments last a few milliseconds of guest time, and the machine is shared: the
    // watcher runs real-time (SCHED_FIFO through chrt, as root) while it polls, so a busy
    // host does not leave it off the CPU past the moment; it sleeps 50 us between reads.
    let tid = nix::unistd::gettid().to_string();
    let realtime = Command::new("chrt")
        .args(["--fifo", "--pid", "50", &tid])
        .status()
        .is_ok_and(|s| s.success());
    let watched = watch(&flash, base, point, image_head, child);
    if realtime {
        let _ = Command::new("chrt")
            .args(["--other", "--pid", "0", &tid])
            .status();
    }
    watched?;
    kill_qemu(out)?;
    // QEMU is gone once rig/run ends; the file then holds what the guest wrote.
    let _ = child.wait();
    describe_cut(&flash, &image, target)
}

/// Polls the file until it shows `point` (Ok) or the guest ends or a minute passes (Err).
fn watch(
    flash: &std::fs::File,
    base: u64,
    point: CutPoint,
    image_head: &[u8],
    child: &mut std::process::Child,
) -> Result<(), String> {
    let watch_until = Instant::now() + Duration::from_secs(60);
    loop {
        let hit = match point {
            CutPoint::SlotErased => read_at(flash, base, 16).iter().all(|&b| b == 0xff),
            CutPoint::MidImage => read_at(flash, base + ERASE_BLOCK, 32) == image_head,
            CutPoint::HeaderWritten => &read_at(flash, base, 8)[..] == SLOT_MAGIC,
        };
        if hit {
            return Ok(());
        }
        if Instant::now() > watch_until || matches!(child.try_wait(), Ok(Some(_))) {
            return Err(format!("the flash never reached {point:?}"));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn kill_qemu(out: &Path) -> Result<(), String> {
    let pid = std::fs::read_to_string(out.join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .ok_or("no qemu.pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| format!("kill QEMU {pid}: {e}"))
}

/// What the file holds after a cut: how far the write to slot `target` got, and what the
/// device boots.
fn describe_cut(flash: &std::fs::File, image: &[u8], target: usize) -> Result<Cut, String> {
    let base = SLOT_OFFSETS[target];
    let payload = image;
    let blocks: Vec<&[u8]> = payload.chunks(ERASE_BLOCK as usize).collect();
    let written = blocks
        .iter()
        .enumerate()
        .filter(|(i, chunk)| {
            read_at(flash, base + ERASE_BLOCK * (*i as u64 + 1), chunk.len()) == **chunk
        })
        .count();
    let header_valid = slot_version(flash, target).as_deref() == Some(NEW_VERSION);
    let boots_slot = selected_slot(flash);
    let boots_version =
        slot_version(flash, boots_slot).unwrap_or_else(|| "(no valid image)".into());
    let slot_name = |s: usize| if s == 0 { 'a' } else { 'b' };
    Ok(Cut {
        phase: format!(
            "with slot {}: header {}, {written} of {} image blocks written; the selector names slot {}",
            slot_name(target),
            if header_valid { "valid" } else { "absent" },
            blocks.len(),
            slot_name(boots_slot)
        ),
        target_header_valid: header_valid,
        image_blocks_written: written,
        image_blocks: blocks.len(),
        boots: (slot_name(boots_slot), boots_version),
        target: slot_name(target),
    })
}

/// edu0's firmware as the daemon reported it in a boot (`RIG-FW-JSON`) and its recovery lines.
#[derive(Debug, Default)]
struct FirmwareReport {
    active_slot: String,
    version: String,
    last_result: String,
    recovery: Vec<String>,
}

fn firmware_report(console: &str) -> FirmwareReport {
    let mut report = FirmwareReport::default();
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(json) = line.strip_prefix("RIG-FW-JSON ") {
            let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
            let field = |k: &str| value[k].as_str().unwrap_or_default().to_owned();
            report.active_slot = field("firmware_active_slot");
            report.version = field("firmware_version");
            report.last_result = field("firmware_last_result");
        } else if let Some(text) = line.strip_prefix("RIG-RECOVERY ") {
            report.recovery.push(text.to_owned());
        }
    }
    report
}

/// Whether a cut landed where it was meant to, from what the file holds.
fn landed(point: CutPoint, cut: &Cut) -> bool {
    match point {
        CutPoint::SlotErased => !cut.target_header_valid && cut.image_blocks_written == 0,
        CutPoint::MidImage => {
            !cut.target_header_valid
                && cut.image_blocks_written >= 1
                && cut.image_blocks_written < cut.image_blocks
        }
        CutPoint::HeaderWritten => cut.target_header_valid,
    }
}

/// The device boots the old or the new firmware whole
/// (the slot the selector names holds a valid image); the daemon came up on that one and, for
/// a cut that landed where it was meant to (`hit`), its recovery says which. (A cut that
/// missed may have come before the daemon recorded the flash at all: then there is nothing to
/// recover, and the last result is the previous boot's.)
fn check_recovery(point: CutPoint, cut: &Cut, next: &Boot, hit: bool) {
    let (slot, version) = &cut.boots;
    assert!(
        version == OLD_VERSION || version == NEW_VERSION,
        "after power cut {point:?} the device boots neither the old nor the new firmware \
         whole: slot {slot} has {version} ({})",
        cut.phase
    );
    let report = firmware_report(&next.console);
    assert_eq!(
        (report.active_slot.as_str(), report.version.as_str()),
        (slot.to_string().as_str(), version.as_str()),
        "after power cut {point:?} the daemon reports other firmware than the flash holds \
         ({}): {report:?}\n{}",
        cut.phase,
        tail(&next.console, 60)
    );
    if !hit {
        return;
    }
    // The new firmware is up when the selector names the slot the flash was writing.
    let switched = *slot == cut.target;
    let expected = if switched {
        "completed, but the daemon stopped before it could report it".to_owned()
    } else {
        format!("firmware {version} in slot {slot} is active")
    };
    let says = |l: &str| l.contains(&expected) && (switched || l.contains("was interrupted while"));
    assert!(
        report.recovery.iter().any(|l| says(l)),
        "after power cut {point:?} the daemon's recovery does not say '{expected}': \
         {report:?}"
    );
    assert!(
        says(&report.last_result),
        "after power cut {point:?} the Device's firmware_last_result does not say \
         '{expected}': {report:?}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
