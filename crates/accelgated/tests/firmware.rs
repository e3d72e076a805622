//! Firmware life cycle end to end: the real daemon flashing the simulated two-slot device of
//! `fpga0` (`fw-upload` entry `fpga0-flash`, slots under the PCI function's `fw_slots/`, slot
//! contents in `<sim>/flash/fpga0-flash/slot-{a,b}.bin`).
//!
//! Needs root, dbus-daemon and minisign (Debian package `minisign`; scripts/install-test-deps).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use accelgate_client::{Client, SealedImage};
use accelgate_testkit::*;

const FPGA_BDF: &str = "0000:3b:00.0";
const DEMO_KEY: &str = "RWTu2fo7/pzy6gwf+xY5rYy/Gmen8UnKFPVI188mLuXsMLTV4VtVWqyp";
/// The simulated flash writes 8 MiB/s: this image takes about 1 s.
const KILL_IMAGE_LEN: usize = 8 << 20;

struct Setup {
    // Field order is drop order: the daemon stops before its bus.
    daemon: TestDaemon,
    bus: TestBus,
    dir: PathBuf,
    obs: Observer,
    client: Client,
    key: PathBuf,
    other_key: PathBuf,
    policy: PathBuf,
}

impl Setup {
    /// The simulated policy with a freshly generated key for fpga0, edited by `edit`.
    fn new(name: &str, edit: impl FnOnce(String) -> String) -> Setup {
        ensure_users();
        require_binary("minisign", "minisign");
        let dir = test_dir(name);
        let (public, key) = keypair(&dir, "test");
        let (_, other_key) = keypair(&dir, "other");
        let text = fs::read_to_string(repo_path("policy/simulated.toml")).unwrap();
        assert!(
            text.contains(DEMO_KEY),
            "policy/simulated.toml lost the demo key"
        );
        let policy = dir.join("policy.toml");
        fs::write(&policy, edit(text.replace(DEMO_KEY, &public))).unwrap();
        let bus = TestBus::start(&dir);
        let daemon = TestDaemon::start(&bus, &dir, &policy);
        let obs = Observer::connect(&bus.address);
        let client = Client::from_connection(obs.conn.clone());
        Setup {
            daemon,
            bus,
            dir,
            obs,
            client,
            key,
            other_key,
            policy,
        }
    }

    fn ctl(&self, user: &str, args: &[&str]) -> Ctl {
        ctl(&self.bus.address, user, args)
    }

    /// Writes an image (readable by the test users) and its signature by `key`.
    fn signed(&self, name: &str, bytes: &[u8], key: &Path) -> (PathBuf, PathBuf) {
        let image = write_image(&self.dir, name, bytes);
        let sig = self.dir.join(format!("{name}.minisig"));
        sign(key, &image, &sig);
        (image, sig)
    }

    fn flash(&self, user: &str, image: &Path, sig: Option<&Path>) -> Ctl {
        let mut args = vec!["firmware", "flash", "fpga0", image.to_str().unwrap()];
        if let Some(sig) = sig {
            args.extend(["--signature", sig.to_str().unwrap()]);
        }
        self.ctl(user, &args)
    }

    /// Starts a flash as root through the client library; returns the job.
    fn start_flash(&self, image: &[u8], sig: &Path) -> zbus::OwnedObjectPath {
        let sealed = SealedImage::from_bytes(image).unwrap();
        let signature = fs::read(sig).unwrap();
        self.obs
            .rt
            .block_on(self.client.flash("fpga0", &sealed, Some(&signature)))
            .unwrap()
    }

    fn hw(&self) -> Hardware {
        Hardware::read(&self.daemon.sim_dir)
    }

    fn device_prop(&self, name: &str) -> String {
        let p = self.obs.device("fpga0");
        self.obs
            .rt
            .block_on(async { p.inner().get_property::<String>(name).await })
            .unwrap()
    }

    fn device_prop_bool(&self, name: &str) -> bool {
        let p = self.obs.device("fpga0");
        self.obs
            .rt
            .block_on(async { p.inner().get_property::<bool>(name).await })
            .unwrap()
    }

    fn job_prop<T>(&self, job: &zbus::OwnedObjectPath, name: &str) -> T
    where
        T: serde::de::DeserializeOwned + zbus::Type,
    {
        self.obs.rt.block_on(async {
            let p = zbus::Proxy::new(
                &self.obs.conn,
                "org.accelgate.Accel1",
                job.clone(),
                "org.accelgate.Accel1.Job",
            )
            .await
            .unwrap();
            p.get_property::<T>(name).await.unwrap()
        })
    }

    fn wait_job_end(&self, job: &zbus::OwnedObjectPath) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state: String = self.job_prop(job, "State");
            if state != "running" {
                return state;
            }
            assert!(Instant::now() < deadline, "job never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn keypair(dir: &Path, name: &str) -> (String, PathBuf) {
    let public = dir.join(format!("{name}.pub"));
    let secret = dir.join(format!("{name}.key"));
    let out = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("cannot run minisign");
    assert!(out.status.success(), "minisign -G: {out:?}");
    let text = fs::read_to_string(&public).unwrap();
    (text.lines().nth(1).unwrap().trim().to_owned(), secret)
}

fn sign(key: &Path, image: &Path, sig: &Path) {
    let out = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(key)
        .arg("-m")
        .arg(image)
        .arg("-x")
        .arg(sig)
        .output()
        .expect("cannot run minisign");
    assert!(out.status.success(), "minisign -S: {out:?}");
    let mut perms = fs::metadata(sig).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(sig, perms).unwrap();
}

/// A firmware image with a version header and `len` bytes of deterministic filler.
fn fw_image(version: &str, len: usize) -> Vec<u8> {
    let mut bytes = format!("ACCELGATE-FW {version}\n").into_bytes();
    let mut x: u32 = version
        .bytes()
        .fold(0x9e37_79b9, |a, b| a.rotate_left(5) ^ u32::from(b));
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// What the simulated hardware holds: slot contents, slot attributes, the upload entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hardware {
    active: String,
    slot_a_sha: String,
    slot_b_sha: String,
    attrs: Vec<(String, String)>,
    upload_data_len: u64,
    upload_status: String,
}

impl Hardware {
    fn read(sim: &Path) -> Hardware {
        let slots = sim.join(format!("sys/bus/pci/devices/{FPGA_BDF}/fw_slots"));
        let mut attrs: Vec<(String, String)> = fs::read_dir(&slots)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("slot_"))
            .map(|n| (n.clone(), fs::read_to_string(slots.join(&n)).unwrap()))
            .collect();
        attrs.sort();
        let storage = sim.join("flash/fpga0-flash");
        let upload = sim.join("sys/class/firmware/fpga0-flash");
        Hardware {
            active: fs::read_to_string(slots.join("active_slot"))
                .unwrap()
                .trim()
                .to_owned(),
            slot_a_sha: sha256_hex(&fs::read(storage.join("slot-a.bin")).unwrap()),
            slot_b_sha: sha256_hex(&fs::read(storage.join("slot-b.bin")).unwrap()),
            attrs,
            upload_data_len: fs::metadata(upload.join("data")).unwrap().len(),
            upload_status: fs::read_to_string(upload.join("status"))
                .unwrap()
                .trim()
                .to_owned(),
        }
    }

    fn active_sha(&self) -> &str {
        if self.active == "a" {
            &self.slot_a_sha
        } else {
            &self.slot_b_sha
        }
    }

    fn attr(&self, name: &str) -> String {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    }
}

#[test]
fn tenant_denied_admin_flashes_with_progress_to_one() {
    let s = Setup::new("fw-flash", |p| p);
    let image = fw_image("2.0.0", 1 << 20);
    let (path, sig) = s.signed("fw2.bin", &image, &s.key);
    let factory = s.hw();
    assert_eq!(factory.active, "a");
    assert_eq!(s.device_prop("FirmwareVersion"), "1.0.0-factory");

    for user in ["ag-tenant1", "ag-operator", "ag-nobody"] {
        s.flash(user, &path, Some(&sig)).fails_with("NotAuthorized");
    }
    assert_eq!(s.hw(), factory, "a denied flash changed the hardware");

    // root (admin by policy) through the library, watching the job's progress.
    let job = s.start_flash(&image, &sig);
    let mut seen = Vec::new();
    let message = s
        .obs
        .rt
        .block_on(s.client.wait_job(&job, |p| seen.push(p)))
        .unwrap();
    assert!(message.contains("slot b"), "{message}");
    assert_eq!(s.job_prop::<f64>(&job, "Progress"), 1.0);
    assert_eq!(s.job_prop::<String>(&job, "State"), "succeeded");
    let partial = seen.iter().filter(|p| **p > 0.0 && **p < 1.0).count();
    assert!(partial >= 3, "too few progress steps: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    let hw = s.hw();
    assert_eq!(hw.active, "b");
    assert_eq!(hw.slot_b_sha, sha256_hex(&image));
    assert_eq!(
        hw.slot_a_sha, factory.slot_a_sha,
        "the old slot was touched"
    );
    assert_eq!(s.device_prop("FirmwareVersion"), "2.0.0");

    // An admin by group, through accelctl; status shows the new state.
    let image3 = fw_image("3.0.0", 300 << 10);
    let (path3, sig3) = s.signed("fw3.bin", &image3, &s.key);
    s.flash("ag-admin", &path3, Some(&sig3)).ok();
    let st = s
        .ctl("ag-admin", &["--json", "firmware", "status", "fpga0"])
        .ok()
        .json();
    assert_eq!(st["firmware_version"], "3.0.0", "{st}");
    assert_eq!(st["firmware_active_slot"], "a", "{st}");
    assert_eq!(st["firmware_state"], "idle", "{st}");
    assert!(
        st["firmware_last_result"]
            .as_str()
            .unwrap()
            .starts_with("succeeded: firmware 3.0.0"),
        "{st}"
    );
    // Repeating the flash of the active image changes nothing and succeeds.
    let settled = s.hw();
    let again = s.flash("ag-admin", &path3, Some(&sig3)).ok();
    assert!(again.stdout.contains("already active"), "{}", again.stdout);
    assert_eq!(s.hw(), settled);
    let text = s.ctl("ag-admin", &["firmware", "status", "fpga0"]).ok();
    assert!(text.stdout.contains("active slot"), "{}", text.stdout);
    assert_eq!(s.hw().slot_a_sha, sha256_hex(&image3));
}

#[test]
fn bad_images_are_refused_before_a_byte_is_written() {
    let s = Setup::new("fw-refuse", |p| {
        let edited = p.replace(
            "kind = \"fpga\"\n",
            "kind = \"fpga\"\nmax_image_size = 2097152\n",
        );
        assert_ne!(edited, p, "the max_image_size edit found nothing to change");
        edited
    });
    let before = s.hw();
    let image = fw_image("2.0.0", 1 << 20);
    let (good, good_sig) = s.signed("good.bin", &image, &s.key);

    // Signature of another image.
    let (_, other_sig) = s.signed("other.bin", &fw_image("6.6.6", 1 << 20), &s.key);
    s.flash("root", &good, Some(&other_sig))
        .fails_with("VerificationFailed");
    // Signed by a key the device does not trust.
    let (_, wrong_key_sig) = s.signed("wrongkey.bin", &image, &s.other_key);
    s.flash("root", &good, Some(&wrong_key_sig))
        .fails_with("VerificationFailed");
    // Truncated image with the full image's signature.
    let truncated = write_image(&s.dir, "truncated.bin", &image[..image.len() - 4096]);
    s.flash("root", &truncated, Some(&good_sig))
        .fails_with("VerificationFailed");
    // Over the device's limit, even though properly signed.
    let (big, big_sig) = s.signed("big.bin", &fw_image("9.9.9", 3 << 20), &s.key);
    // The refusal names the limit the edit set, so the edit took effect.
    let over = s
        .flash("root", &big, Some(&big_sig))
        .fails_with("InvalidArgument");
    assert!(
        over.stderr
            .contains("image is larger than the limit of 2097152 bytes"),
        "{}",
        over.stderr
    );
    // Unsigned where signatures are required.
    s.flash("root", &good, None)
        .fails_with("VerificationFailed");
    // Garbage as signature.
    let junk = write_image(
        &s.dir,
        "junk.minisig",
        b"untrusted comment: x\nnot base64\n",
    );
    s.flash("root", &good, Some(&junk))
        .fails_with("VerificationFailed");
    assert_eq!(s.hw(), before, "a refused image changed the hardware");
    assert_eq!(s.device_prop("FirmwareLastResult"), "");

    // Locked by policy: refused for root, with a valid image, until the policy changes.
    let text = fs::read_to_string(&s.policy).unwrap();
    let locked = text.replace(
        "name = \"fpga0-flash\", locked = false",
        "name = \"fpga0-flash\", locked = true",
    );
    assert_ne!(locked, text, "the lock edit found nothing to change");
    fs::write(&s.policy, locked).unwrap();
    s.ctl("root", &["policy", "reload"]).ok();
    assert!(s.device_prop_bool("FirmwareLocked"));
    s.flash("root", &good, Some(&good_sig)).fails_with("Locked");
    assert_eq!(s.hw(), before, "a locked device changed");
    fs::write(&s.policy, text).unwrap();
    s.ctl("root", &["policy", "reload"]).ok();
    assert!(!s.device_prop_bool("FirmwareLocked"));
    s.flash("root", &good, Some(&good_sig)).ok();
    assert_eq!(s.hw().slot_b_sha, sha256_hex(&image));
}

#[test]
fn second_flash_is_busy_reads_continue_and_cancel_keeps_old_firmware() {
    let s = Setup::new("fw-busy", |p| p);
    let image = fw_image("2.0.0", 4 << 20);
    let (path, sig) = s.signed("fw.bin", &image, &s.key);
    let job = s.start_flash(&image, &sig);
    // Other callers keep being served during the flash.
    let mut reads = 0;
    let mut slowest = Duration::ZERO;
    let mut busy_seen = false;
    let mut flashing_seen = false;
    while s.job_prop::<String>(&job, "State") == "running" {
        flashing_seen |= s.device_prop("FirmwareState") == "flashing";
        if !busy_seen {
            s.flash("root", &path, Some(&sig)).fails_with("Busy");
            // A reload that changes the device's policy gives it new runtime objects; the
            // running flash still holds the device.
            let text = fs::read_to_string(&s.policy).unwrap();
            fs::write(
                &s.policy,
                text.replacen(
                    "kind = \"fpga\"",
                    "kind = \"fpga\"\nmax_image_size = 33554432",
                    1,
                ),
            )
            .unwrap();
            s.ctl("root", &["policy", "reload"]).ok();
            s.flash("root", &path, Some(&sig)).fails_with("Busy");
            busy_seen = true;
        }
        let t = Instant::now();
        assert_eq!(
            s.obs.read("fpga0", "region1", 0, 1, 4).unwrap(),
            vec![0xacce_0001]
        );
        slowest = slowest.max(t.elapsed());
        reads += 1;
    }
    assert!(busy_seen);
    assert!(flashing_seen, "FirmwareState never said flashing");
    assert_eq!(s.device_prop("FirmwareState"), "idle");
    assert!(reads >= 10, "only {reads} reads during the flash");
    // Liveness, not a performance goal (the benchmark measures latency under a flash): no
    // read waited for the flash to end.
    assert!(slowest < Duration::from_secs(2), "a read took {slowest:?}");
    assert_eq!(s.job_prop::<String>(&job, "State"), "succeeded");
    eprintln!("{reads} reads answered during a 4 MiB flash, slowest {slowest:?}");

    // Cancel during the write: the old firmware (now 2.0.0 in b) stays active.
    let before = s.hw();
    let image3 = fw_image("3.0.0", 4 << 20);
    let (_, sig3) = s.signed("fw3.bin", &image3, &s.key);
    let job = s.start_flash(&image3, &sig3);
    // Cancel once the device is writing the slot (progress comes from the transfer).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.job_prop::<f64>(&job, "Progress") < 0.1 {
        assert!(Instant::now() < deadline, "the flash never started writing");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.obs.rt.block_on(s.client.cancel_job(&job)).unwrap();
    assert_eq!(s.wait_job_end(&job), "cancelled");
    let hw = s.hw();
    assert_eq!(hw.active, "b");
    assert_eq!(hw.slot_b_sha, before.slot_b_sha);
    assert_eq!(hw.attr("slot_a_state"), "invalid");
    assert!(s
        .device_prop("FirmwareLastResult")
        .starts_with("cancelled: cancelled while writing slot a"));
    assert_eq!(s.device_prop("FirmwareVersion"), "2.0.0");
}

/// Where a flash stood when the daemon (and the simulator inside it) was killed, read from
/// the simulated device after the kill, before the restart repairs anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FlashPhase {
    /// Nothing written to the staging slot yet (upload received, preparing).
    BeforeTransfer,
    /// The staging slot partly written.
    Transferring,
    /// The staging slot written and checked, the boot slot not switched yet.
    Written,
    /// The boot slot switched to the new image.
    Switched,
}

/// When to kill: as soon as the simulated device shows this.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// At once after the flash was accepted.
    Accepted,
    /// During the transfer, once no more than this share of the image is left to write.
    Remaining(f64),
    /// Once the boot slot has switched.
    AfterSwitch,
}

fn upload_attr(sim: &Path, name: &str) -> String {
    fs::read_to_string(sim.join("sys/class/firmware/fpga0-flash").join(name))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn flash_phase(sim: &Path, old: &Hardware, new_sha: &str) -> FlashPhase {
    let hw = Hardware::read(sim);
    if hw.active != old.active {
        return FlashPhase::Switched;
    }
    let staging = if old.active == "a" { "b" } else { "a" };
    let staging_sha = if staging == "a" {
        &hw.slot_a_sha
    } else {
        &hw.slot_b_sha
    };
    if staging_sha == new_sha {
        return FlashPhase::Written;
    }
    // The simulator empties the staging slot when it starts writing it.
    let written = fs::metadata(sim.join(format!("flash/fpga0-flash/slot-{staging}.bin")))
        .unwrap()
        .len();
    if hw.attr(&format!("slot_{staging}_state")) == "writing" && written > 0 {
        FlashPhase::Transferring
    } else {
        FlashPhase::BeforeTransfer
    }
}

/// Kills land where the simulated device says the flash is (not at guessed times), so every
/// phase is hit however loaded the machine is; each kill's phase is read back from the device
/// after the kill, and each phase must have been hit.
#[test]
fn sigkill_at_any_point_leaves_old_or_new_firmware_and_says_so() {
    let mut s = Setup::new("fw-kill", |p| p);
    let len = KILL_IMAGE_LEN as f64;
    let targets = [
        KillAt::Accepted,
        KillAt::Remaining(0.95),
        KillAt::Remaining(0.7),
        KillAt::Remaining(0.4),
        KillAt::Remaining(0.1),
        KillAt::AfterSwitch,
        KillAt::Accepted,
        KillAt::Remaining(0.5),
        KillAt::AfterSwitch,
    ];
    let (mut kept_old, mut got_new) = (0, 0);
    let mut phases = std::collections::BTreeMap::<FlashPhase, usize>::new();
    let mut previous_result = s.device_prop("FirmwareLastResult");
    for (i, target) in targets.iter().enumerate() {
        let old = s.hw();
        let version = format!("3.0.{i}");
        let image = fw_image(&version, KILL_IMAGE_LEN);
        let new_sha = sha256_hex(&image);
        let (_, sig) = s.signed(&format!("fw-{i}.bin"), &image, &s.key);
        s.start_flash(&image, &sig);
        let sim = s.daemon.sim_dir.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reached = match target {
                KillAt::Accepted => true,
                KillAt::Remaining(share) => {
                    upload_attr(&sim, "status") == "transferring"
                        && upload_attr(&sim, "remaining_size")
                            .parse::<f64>()
                            .is_ok_and(|left| left <= share * len)
                }
                KillAt::AfterSwitch => {
                    fs::read_to_string(sim.join(format!(
                        "sys/bus/pci/devices/{FPGA_BDF}/fw_slots/active_slot"
                    )))
                    .unwrap()
                    .trim()
                        != old.active
                }
            };
            if reached {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill {i}: {target:?} never reached"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        s.daemon.kill();
        let phase = flash_phase(&sim, &old, &new_sha);
        *phases.entry(phase).or_default() += 1;
        s.daemon.restart();

        let hw = s.hw();
        let result = s.device_prop("FirmwareLastResult");
        let active_version = s.device_prop("FirmwareVersion");
        assert_eq!(s.device_prop("FirmwareActiveSlot"), hw.active);
        assert_eq!(s.device_prop("FirmwareState"), "idle");
        assert_eq!(hw.upload_status, "idle");
        assert_eq!(hw.attr(&format!("slot_{}_state", hw.active)), "valid");
        if hw.active_sha() == new_sha {
            got_new += 1;
            assert_eq!(active_version, version);
            assert!(
                result.starts_with("succeeded"),
                "kill {i} ({phase:?}): {result}"
            );
        } else {
            assert_ne!(
                phase,
                FlashPhase::Switched,
                "kill {i}: switched, then undone"
            );
            assert_eq!(
                hw.active, old.active,
                "kill {i}: switched to a slot that is not new"
            );
            assert_eq!(
                hw.active_sha(),
                old.active_sha(),
                "kill {i}: old slot changed"
            );
            let old_version = s.device_prop("FirmwareVersion");
            assert_ne!(old_version, version);
            kept_old += 1;
            if result == previous_result {
                // Killed before the flash recorded anything: then nothing was written.
                assert_eq!(hw, old, "kill {i}: hardware changed without a record");
            } else {
                assert!(
                    result.starts_with("interrupted") && result.contains(&old_version),
                    "kill {i} ({phase:?}): {result}"
                );
            }
        }
        eprintln!(
            "kill {i:2} at {target:?}, landed {phase:?}: {} firmware; {result}",
            if hw.active_sha() == new_sha {
                "new"
            } else {
                "old"
            }
        );
        previous_result = result;
    }
    eprintln!(
        "{} kills: {kept_old} kept the old firmware, {got_new} booted the new one; by phase {phases:?}",
        targets.len()
    );
    for phase in [
        FlashPhase::BeforeTransfer,
        FlashPhase::Transferring,
        FlashPhase::Switched,
    ] {
        assert!(
            phases.get(&phase).is_some_and(|n| *n >= 1),
            "no kill landed in {phase:?}: {phases:?}"
        );
    }
    assert!(
        phases[&FlashPhase::Transferring] >= 3,
        "too few kills during the transfer: {phases:?}"
    );
    assert!(
        got_new >= 1 && kept_old >= 5,
        "{kept_old} old, {got_new} new"
    );
}
