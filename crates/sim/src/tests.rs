//! Simulator tests, through the hardware crate (the same path the daemon takes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use accelgate_hw::{
    revoke_bar_mappings, FwUpload, FwUploadError, HwRoot, PciBdf, PciError, PciFunction,
    SliceWindow, Sriov, SriovError, Width,
};

const TIMEOUT: Duration = Duration::from_secs(5);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "accelgate-sim-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bdf(text: &str) -> PciBdf {
    PciBdf::parse(text).unwrap()
}

fn standard(tag: &str) -> (TempDir, HwRoot) {
    let dir = TempDir::new(tag);
    build(&dir.0, &SimSpec::standard()).unwrap();
    let root = HwRoot::simulated(&dir.0);
    (dir, root)
}

fn region_regs(root: &HwRoot, region: u64) -> (u64, u64, u64) {
    let fpga = PciFunction::open(root, &bdf("0000:3b:00.0")).unwrap();
    let window =
        SliceWindow::open(&fpga.resource_path(0), 0x10000 * (region + 1), 0x10000).unwrap();
    let id = window.read(REG_REGION_ID, 1, Width::U32).unwrap()[0];
    let status = window.read(REG_IMAGE_STATUS, 1, Width::U64).unwrap()[0];
    let tag = window.read(REG_IMAGE_TAG, 1, Width::U64).unwrap()[0];
    (id, status, tag)
}

fn test_image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn upload(entry: &FwUpload, image: &[u8]) -> (Result<(), FwUploadError>, Vec<f64>) {
    let mut seen = Vec::new();
    let result = entry.upload(
        image,
        &mut |p| seen.push(p),
        &AtomicBool::new(false),
        TIMEOUT,
    );
    (result, seen)
}

#[test]
fn standard_tree_matches_the_contract() {
    let (dir, root) = standard("layout");
    let fpga = PciFunction::open(&root, &bdf("0000:3b:00.0")).unwrap();
    assert_eq!(
        (fpga.vendor, fpga.device, fpga.class),
        (0xacce, 0x0f01, 0x12_0000)
    );
    assert_eq!(fpga.driver.as_deref(), Some("accelgate-sim"));
    let bar = fpga.bar(0).unwrap();
    assert_eq!(bar.size, 1 << 20);
    assert!(bar.is_memory);
    assert!(matches!(fpga.bar(1), Err(PciError::BarUnused(1))));
    assert!(matches!(fpga.bar(6), Err(PciError::NoSuchBar(6))));
    let text = std::fs::read_to_string(fpga.dir.join("resource")).unwrap();
    assert_eq!(text.lines().count(), 13);
    assert!(text
        .lines()
        .next()
        .unwrap()
        .ends_with(" 0x0000000000040200"));
    let window = SliceWindow::open(&fpga.resource_path(0), 0, 0x100).unwrap();
    assert_eq!(
        window.read(REG_ID, 1, Width::U32).unwrap(),
        vec![0xacce_f001]
    );
    assert_eq!(region_regs(&root, 0), (0xacce_0000, 0, 0));
    assert_eq!(region_regs(&root, 1), (0xacce_0001, 0, 0));

    let nic = PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap();
    assert_eq!(
        (nic.vendor, nic.device, nic.class),
        (0xacce, 0x0e01, 0x02_0000)
    );
    assert_eq!(nic.bar(0).unwrap().size, 64 << 10);
    let sriov = Sriov::new(&nic).unwrap();
    assert_eq!(
        (sriov.total_vfs().unwrap(), sriov.num_vfs().unwrap()),
        (8, 0)
    );
    assert!(matches!(
        Sriov::new(&fpga),
        Err(SriovError::NotSupported(_))
    ));
    assert!(matches!(
        PciFunction::open(&root, &bdf("0000:3b:00.1")),
        Err(PciError::NotFound(_))
    ));
    for name in [
        "fpga0-region0",
        "fpga0-region1",
        "fpga0-flash",
        "nic0-personality",
    ] {
        let entry = FwUpload::open(&root, name).unwrap();
        assert_eq!(entry.status().unwrap(), "idle");
        assert_eq!(entry.last_error().unwrap(), "");
    }
    for bad in ["..", ".", "a/b", ""] {
        assert!(matches!(
            FwUpload::open(&root, bad),
            Err(FwUploadError::InvalidName(_))
        ));
    }
    assert!(matches!(
        FwUpload::open(&root, "nope"),
        Err(FwUploadError::NotFound(_))
    ));
    assert!(dir.0.join(MANIFEST).is_file());
}

#[test]
fn vf_addresses_follow_the_routing_id() {
    let packed = SimSpec::scale(1, 255).functions[0].sriov.clone().unwrap();
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &packed, 0), "0000:5e:00.1");
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &packed, 6), "0000:5e:00.7");
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &packed, 7), "0000:5e:01.0");
    assert_eq!(tree::vf_bdf("0000:10:00.0", &packed, 254), "0000:10:1f.7");
    // The standard nic0 is laid out like QEMU's igb: offset 128, stride 2.
    let igb_like = nic_vfs();
    assert_eq!((igb_like.first_offset, igb_like.stride), (128, 2));
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &igb_like, 0), "0000:5e:10.0");
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &igb_like, 1), "0000:5e:10.2");
    assert_eq!(tree::vf_bdf("0000:5e:00.0", &igb_like, 7), "0000:5e:11.6");
}

/// SR-IOV of the standard host's nic0.
fn nic_vfs() -> super::spec::VfSpec {
    SimSpec::standard().functions[1].sriov.clone().unwrap()
}

#[test]
fn sriov_create_shrink_grow_through_the_emulator() {
    let (dir, root) = standard("sriov");
    let _emulator = Emulator::start(&dir.0).unwrap();
    let nic = PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap();
    let sriov = Sriov::new(&nic).unwrap();
    let vf_dirs = |n| -> Vec<bool> {
        (0..8)
            .map(|i| {
                root.pci_device_dir(&bdf(&tree::vf_bdf("0000:5e:00.0", &nic_vfs(), i)))
                    .exists()
            })
            .take(n)
            .collect()
    };

    sriov.set_num_vfs(4, TIMEOUT).unwrap();
    assert_eq!(sriov.num_vfs().unwrap(), 4);
    assert_eq!(
        vf_dirs(8),
        [true, true, true, true, false, false, false, false]
    );
    let vf3 = sriov.vf(3).unwrap();
    assert_eq!(
        (vf3.bdf.as_str(), vf3.vendor, vf3.device),
        ("0000:5e:10.6", 0xacce, 0x0e02)
    );
    assert_eq!(vf3.bar(0).unwrap().size, 16 << 10);
    assert_eq!(
        std::fs::read_link(vf3.dir.join("physfn")).unwrap(),
        Path::new("../0000:5e:00.0")
    );
    let window = SliceWindow::open(&vf3.resource_path(0), 0, 16 << 10).unwrap();
    assert_eq!(window.read(0, 1, Width::U32).unwrap(), vec![0xacce_e103]);
    window.write(0x100, &[0xdead], Width::U32).unwrap();
    drop(window);

    sriov.set_num_vfs(2, TIMEOUT).unwrap();
    assert_eq!(
        vf_dirs(8),
        [true, true, false, false, false, false, false, false]
    );
    assert!(matches!(sriov.vf(2), Err(SriovError::NoSuchVf(2))));

    sriov.set_num_vfs(7, TIMEOUT).unwrap();
    assert_eq!(sriov.num_vfs().unwrap(), 7);
    let vf3 = sriov.vf(3).unwrap();
    let window = SliceWindow::open(&vf3.resource_path(0), 0, 16 << 10).unwrap();
    // A recreated VF has fresh BAR contents.
    assert_eq!(window.read(0x100, 1, Width::U32).unwrap(), vec![0]);
    let vf6 = sriov.vf(6).unwrap();
    assert_eq!(vf6.bdf, "0000:5e:11.4");
    let window = SliceWindow::open(&vf6.resource_path(0), 0, 4).unwrap();
    assert_eq!(window.read(0, 1, Width::U32).unwrap(), vec![0xacce_e106]);

    // Retrying the same count is a no-op that succeeds.
    sriov.set_num_vfs(7, TIMEOUT).unwrap();
    assert!(matches!(
        sriov.set_num_vfs(9, TIMEOUT),
        Err(SriovError::TooMany {
            requested: 9,
            total: 8
        })
    ));
    assert_eq!(sriov.num_vfs().unwrap(), 7);

    // A bad write straight to sysfs is rejected by "the kernel": old value back, VFs kept.
    std::fs::write(nic.dir.join("sriov_numvfs"), "9\n").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while sriov.num_vfs().ok() != Some(7) {
        assert!(Instant::now() < deadline, "sriov_numvfs not restored");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(vf_dirs(8).iter().filter(|&&e| e).count(), 7);

    sriov.set_num_vfs(0, TIMEOUT).unwrap();
    assert_eq!(vf_dirs(8), [false; 8]);
}

#[test]
fn region_upload_sets_and_blank_clears_the_image() {
    let (dir, root) = standard("region");
    let _emulator = Emulator::start(&dir.0).unwrap();
    let entry = FwUpload::open(&root, "fpga0-region1").unwrap();
    let image = test_image(300_000, 7);
    let (result, progress) = upload(&entry, &image);
    result.unwrap();
    assert_eq!(progress.last().copied(), Some(1.0));
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(progress.iter().all(|p| (0.0..=1.0).contains(p)));
    let tag = image_tag(&image).unwrap();
    let mut expected = [0u8; 8];
    expected.copy_from_slice(&<sha2::Sha256 as sha2::Digest>::digest(&image)[..8]);
    assert_eq!(tag, u64::from_le_bytes(expected));
    assert_eq!(region_regs(&root, 1), (0xacce_0001, 1, tag));
    assert_eq!(
        region_regs(&root, 0),
        (0xacce_0000, 0, 0),
        "other region untouched"
    );
    assert_eq!(entry.status().unwrap(), "idle");
    assert_eq!(entry.last_error().unwrap(), "");

    let (result, _) = upload(&entry, &vec![0u8; 4096]);
    result.unwrap();
    assert_eq!(region_regs(&root, 1), (0xacce_0001, 0, 0));

    // The kernel starts no upload for zero bytes (and keeps the last error): the client
    // refuses an empty image itself.
    let (result, _) = upload(&entry, &[]);
    assert!(
        matches!(&result, Err(FwUploadError::Device(e)) if e == "the image is empty"),
        "{result:?}"
    );
}

#[test]
fn personality_upload_sets_the_tag() {
    let (dir, root) = standard("personality");
    let _emulator = Emulator::start(&dir.0).unwrap();
    let entry = FwUpload::open(&root, "nic0-personality").unwrap();
    let image = test_image(5000, 3);
    upload(&entry, &image).0.unwrap();
    let nic = PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap();
    let window = SliceWindow::open(&nic.resource_path(0), 0, 0x100).unwrap();
    assert_eq!(
        window.read(REG_PERSONALITY_TAG, 1, Width::U64).unwrap(),
        vec![image_tag(&image).unwrap()]
    );
}

#[test]
fn cancel_during_transfer_applies_nothing() {
    let (dir, root) = standard("cancel");
    let _emulator = Emulator::start(&dir.0).unwrap();
    let entry = FwUpload::open(&root, "fpga0-region0").unwrap();
    let cancel = AtomicBool::new(false);
    // Ask for cancellation as soon as the transfer reports progress.
    let result = entry.upload(
        &test_image(8 << 20, 1),
        &mut |_| cancel.store(true, Ordering::Relaxed),
        &cancel,
        TIMEOUT,
    );
    assert!(
        matches!(result, Err(FwUploadError::Cancelled)),
        "{result:?}"
    );
    assert_eq!(entry.status().unwrap(), "idle");
    assert_eq!(entry.last_error().unwrap(), "transferring:user-abort");
    assert_eq!(region_regs(&root, 0), (0xacce_0000, 0, 0));

    // The entry is usable again afterwards.
    upload(&entry, &test_image(1000, 2)).0.unwrap();
    assert_eq!(region_regs(&root, 0).1, 1);
}

#[test]
fn busy_entry_is_refused_and_sriov_is_not_delayed() {
    let (dir, root) = standard("busy");
    let _emulator = Emulator::start(&dir.0).unwrap();
    let entry = FwUpload::open(&root, "fpga0-region0").unwrap();
    let image = test_image(16 << 20, 9); // ~250 ms of simulated transfer
    std::thread::scope(|scope| {
        let running = scope.spawn(|| upload(&entry, &image).0);
        let deadline = Instant::now() + TIMEOUT;
        while entry.status().unwrap() == "idle" {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        let second = upload(&entry, &[1, 2, 3]).0;
        assert!(matches!(second, Err(FwUploadError::Busy(_))), "{second:?}");

        // SR-IOV changes are handled while the upload runs.
        let nic = PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap();
        Sriov::new(&nic).unwrap().set_num_vfs(3, TIMEOUT).unwrap();
        assert_ne!(
            entry.status().unwrap(),
            "idle",
            "sriov waited for the upload"
        );

        running.join().unwrap().unwrap();
    });
    assert_eq!(region_regs(&root, 0).2, image_tag(&image).unwrap());
}

#[test]
fn rebuild_repairs_an_interrupted_tree() {
    let (dir, root) = standard("rebuild");
    let entry_dir = root.fw_upload_dir("fpga0-region0");
    // A crash mid-upload, and VFs requested but never created.
    std::fs::write(entry_dir.join("status"), "transferring\n").unwrap();
    std::fs::write(entry_dir.join("data"), test_image(100, 5)).unwrap();
    let nic_dir = root.pci_device_dir(&bdf("0000:5e:00.0"));
    std::fs::write(nic_dir.join("sriov_numvfs"), "3\n").unwrap();
    // Register contents survive a rebuild.
    let fpga = PciFunction::open(&root, &bdf("0000:3b:00.0")).unwrap();
    SliceWindow::open(&fpga.resource_path(0), 0x10000, 0x10000)
        .unwrap()
        .write(0x100, &[0x1234], Width::U64)
        .unwrap();

    build(&dir.0, &SimSpec::standard()).unwrap();
    let entry = FwUpload::open(&root, "fpga0-region0").unwrap();
    assert_eq!(entry.status().unwrap(), "idle");
    assert_eq!(entry.last_error().unwrap(), "transferring:hw-error");
    assert_eq!(region_regs(&root, 0), (0xacce_0000, 0, 0));
    let sriov = Sriov::new(&PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap()).unwrap();
    assert_eq!(sriov.vf(2).unwrap().bdf, "0000:5e:10.4");
    assert!(matches!(sriov.vf(3), Err(SriovError::NoSuchVf(3))));
    let window = SliceWindow::open(&fpga.resource_path(0), 0x10000, 0x10000).unwrap();
    assert_eq!(window.read(0x100, 1, Width::U64).unwrap(), vec![0x1234]);

    // Shrinking by a crash: a stale VF 2 (count says 2) disappears on rebuild.
    std::fs::write(nic_dir.join("sriov_numvfs"), "2\n").unwrap();
    build(&dir.0, &SimSpec::standard()).unwrap();
    assert!(matches!(sriov.vf(2), Err(SriovError::NoSuchVf(2))));
    assert!(!root.pci_device_dir(&bdf("0000:5e:10.4")).exists());
    assert!(sriov.vf(1).is_ok());

    // A second rebuild of a healthy tree changes nothing.
    build(&dir.0, &SimSpec::standard()).unwrap();
    assert_eq!(entry.last_error().unwrap(), "transferring:hw-error");
    assert_eq!(sriov.num_vfs().unwrap(), 2);
}

#[test]
fn scale_tree_builds_fast() {
    let dir = TempDir::new("scale");
    let spec = SimSpec::scale(64, 64);
    let started = Instant::now();
    build(&dir.0, &spec).unwrap();
    let fresh = started.elapsed();
    let started = Instant::now();
    build(&dir.0, &spec).unwrap();
    let reused = started.elapsed();
    eprintln!("scale(64, 64) build: fresh {fresh:?}, reused {reused:?}");
    // Creating ~1300 inodes is quick on tmpfs (tens of ms) but each one can take ~1 ms on a
    // disk shared with parallel compilers, so the time budget is only enforced on tmpfs
    // (run with TMPDIR=/dev/shm to check it).
    if on_tmpfs(&dir.0) {
        assert!(
            fresh < Duration::from_millis(500),
            "fresh build took {fresh:?}"
        );
        assert!(
            reused < Duration::from_millis(500),
            "rebuild took {reused:?}"
        );
    }
    let root = HwRoot::simulated(&dir.0);
    let last = PciFunction::open(&root, &bdf("0000:4f:00.0")).unwrap();
    let sriov = Sriov::new(&last).unwrap();
    assert_eq!(sriov.total_vfs().unwrap(), 64);
    assert!(FwUpload::open(&root, "nic63-personality").is_ok());

    let _emulator = Emulator::start(&dir.0).unwrap();
    sriov.set_num_vfs(64, TIMEOUT).unwrap();
    assert_eq!(sriov.vf(63).unwrap().bdf, "0000:4f:08.0");
}

fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[test]
fn upload_without_a_responding_device_times_out_and_early_cancel_touches_nothing() {
    let (_dir, root) = standard("noemu");
    let entry = FwUpload::open(&root, "fpga0-region0").unwrap();
    let loading = root.fw_upload_dir("fpga0-region0").join("loading");

    let cancel = AtomicBool::new(true);
    let result = entry.upload(&[1], &mut |_| {}, &cancel, TIMEOUT);
    assert!(
        matches!(result, Err(FwUploadError::Cancelled)),
        "{result:?}"
    );
    assert_eq!(std::fs::read_to_string(&loading).unwrap(), "0\n");

    let started = Instant::now();
    let result = entry.upload(
        &[1],
        &mut |_| {},
        &AtomicBool::new(false),
        Duration::from_millis(50),
    );
    assert!(matches!(result, Err(FwUploadError::Timeout)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The half-started load was aborted.
    assert_eq!(std::fs::read_to_string(&loading).unwrap(), "-1");
}

/// The next uevent the emulator sent, parsed by the hardware crate's parser.
fn next_uevent(socket: &std::os::unix::net::UnixDatagram) -> accelgate_hw::PciUevent {
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; accelgate_hw::uevent::MAX_UEVENT_LEN];
    let len = socket.recv(&mut buf).expect("no uevent within the timeout");
    accelgate_hw::uevent::parse(&buf[..len])
        .expect("the kernel's format")
        .expect("a PCI add or remove")
}

#[test]
fn hotplug_removes_and_adds_functions_with_the_kernels_uevents() {
    let (dir, root) = standard("hotplug");
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let _emulator = Emulator::start_with_uevents(&dir.0, theirs).unwrap();
    let nic = bdf("0000:5e:00.0");
    Sriov::new(&PciFunction::open(&root, &nic).unwrap())
        .unwrap()
        .set_num_vfs(2, TIMEOUT)
        .unwrap();

    // Removal: VFs first (top down), then the PF, each announced; the directories are gone.
    request_hotplug(&dir.0, false, nic.as_str()).unwrap();
    let order: Vec<(accelgate_hw::PciAction, String)> = (0..3)
        .map(|_| next_uevent(&ours))
        .map(|e| (e.action, e.bdf.to_string()))
        .collect();
    let remove = accelgate_hw::PciAction::Remove;
    assert_eq!(
        order,
        vec![
            (remove, "0000:5e:10.2".to_owned()),
            (remove, "0000:5e:10.0".to_owned()),
            (remove, "0000:5e:00.0".to_owned()),
        ]
    );
    assert!(matches!(
        PciFunction::open(&root, &nic),
        Err(PciError::NotFound(_))
    ));
    assert!(!root.pci_device_dir(&bdf("0000:5e:10.0")).exists());

    // Addition: announced, then the BAR reads 0 until memory decoding is turned on.
    request_hotplug(&dir.0, true, nic.as_str()).unwrap();
    let added = next_uevent(&ours);
    assert_eq!(added.action, accelgate_hw::PciAction::Add);
    assert_eq!(added.bdf, nic);
    let deadline = Instant::now() + TIMEOUT;
    let function = loop {
        match PciFunction::open(&root, &nic).and_then(|f| f.bar(0).map(|_| f)) {
            Ok(f) if f.resource_path(0).exists() => break f,
            _ => {
                assert!(Instant::now() < deadline, "the PF never came back");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert_eq!(
        function.driver, None,
        "no driver binds a hot-added function"
    );
    let window = SliceWindow::open(&function.resource_path(0), 0, 0x1000).unwrap();
    assert_eq!(window.read(REG_ID, 1, Width::U32).unwrap(), vec![0]);
    assert!(function.enable_memory().unwrap(), "decoding was off");
    assert!(!function.enable_memory().unwrap(), "and is on now");
    let deadline = Instant::now() + TIMEOUT;
    while window.read(REG_ID, 1, Width::U32).unwrap() != vec![0xacce_e001] {
        assert!(Instant::now() < deadline, "the ID register never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its SR-IOV works again (the new directory is watched).
    Sriov::new(&function)
        .unwrap()
        .set_num_vfs(1, TIMEOUT)
        .unwrap();

    // Repeats change nothing and announce nothing; an unknown PF is refused.
    request_hotplug(&dir.0, true, nic.as_str()).unwrap();
    request_hotplug(&dir.0, true, "0000:77:00.0").unwrap();
    ours.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(ours.recv(&mut buf).is_err(), "nothing more was announced");
    // A boot-time function has decoding on already.
    let fpga = PciFunction::open(&root, &bdf("0000:3b:00.0")).unwrap();
    assert!(!fpga.enable_memory().unwrap());
}

#[test]
fn scale_addresses_are_distinct_pci_addresses_across_domains() {
    let all: Vec<String> = (0..4 * 0xf0).map(crate::scale_bdf).collect();
    assert_eq!(all[0], "0000:10:00.0");
    assert_eq!(all[0xef], "0000:ff:00.0");
    assert_eq!(all[0xf0], "0001:10:00.0");
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len());
    for bdf in &all {
        assert!(accelgate_hw::PciBdf::parse(bdf).is_ok(), "{bdf}");
    }
}

/// Binding a BAR-claiming driver through `driver_override` and `drivers_probe` revokes the
/// old mappings of a VF's BAR for good (the old file is truncated) and refuses new ones
/// until the unbind, which brings a fresh file with the registers as they were; a driver
/// that claims nothing revokes nothing, and `revoke_bar_mappings` says so.
#[test]
fn a_bar_claiming_driver_revokes_mappings_until_unbound() {
    let (dir, _) = standard("revoke");
    let root = HwRoot::simulated(&dir.0);
    let _emulator = Emulator::start(&dir.0).unwrap();
    let nic = PciFunction::open(&root, &bdf("0000:5e:00.0")).unwrap();
    let sriov = Sriov::new(&nic).unwrap();
    sriov.set_num_vfs(2, TIMEOUT).unwrap();
    let vf1 = sriov.vf(1).unwrap();
    let bar = vf1.resource_path(0);
    let window = SliceWindow::open(&bar, 0, 16 << 10).unwrap();
    window.write(0x800, &[0x1234_5678], Width::U32).unwrap();
    drop(window);
    let old = std::fs::File::open(&bar).unwrap();
    let vf0_bar = sriov.vf(0).unwrap().resource_path(0);
    let bystander = std::fs::File::open(&vf0_bar).unwrap();

    let revoked = revoke_bar_mappings(&root, &vf1.dir, &vf1.bdf, 0, SIM_VF_DRIVER, TIMEOUT);
    revoked.unwrap();
    // The old inode is empty: every mapping of it faults (SIGBUS), now and later.
    assert_eq!(old.metadata().unwrap().len(), 0);
    // The other VF's BAR is untouched.
    assert_eq!(bystander.metadata().unwrap().len(), 16 << 10);
    // Unbound again, override cleared, a fresh BAR file that maps and keeps the registers.
    assert!(vf1.dir.join("driver").symlink_metadata().is_err());
    assert_eq!(
        std::fs::read_to_string(vf1.dir.join("driver_override"))
            .unwrap()
            .trim(),
        ""
    );
    let window = SliceWindow::open(&bar, 0, 16 << 10).unwrap();
    assert_eq!(
        window.read(0x800, 1, Width::U32).unwrap(),
        vec![0x1234_5678]
    );
    drop(window);

    // A driver that claims no BAR (like pci-stub) binds, but nothing is revoked.
    let before = std::fs::File::open(&bar).unwrap();
    let err =
        revoke_bar_mappings(&root, &vf1.dir, &vf1.bdf, 0, "claims-nothing", TIMEOUT).unwrap_err();
    assert!(
        matches!(err, accelgate_hw::RevokeError::NotInForce { .. }),
        "{err}"
    );
    assert_eq!(before.metadata().unwrap().len(), 16 << 10);
    assert!(vf1.dir.join("driver").symlink_metadata().is_err());

    // A real root takes only the kernel's EINVAL as proof: the simulator's ENODEV is not.
    let strict = HwRoot::new(&dir.0);
    let err =
        revoke_bar_mappings(&strict, &vf1.dir, &vf1.bdf, 0, SIM_VF_DRIVER, TIMEOUT).unwrap_err();
    assert!(
        matches!(err, accelgate_hw::RevokeError::Check { .. }),
        "{err}"
    );
    assert!(vf1.dir.join("driver").symlink_metadata().is_err());
    SliceWindow::open(&bar, 0, 16 << 10).unwrap();
}
