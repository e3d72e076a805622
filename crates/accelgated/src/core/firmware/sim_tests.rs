//! The daemon's fw-upload firmware backend against the simulated two-slot flash device: the
//! same kernel interface the daemon uses on a real host.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use accelgate_hw::{FwUpload, HwRoot, PciBdf};

use accelgate_testkit::TempDir;

fn standard(tag: &str) -> (TempDir, HwRoot) {
    let dir = TempDir::new(tag);
    accelgate_sim::build(&dir.0, &accelgate_sim::SimSpec::standard()).unwrap();
    let root = HwRoot::simulated(&dir.0);
    (dir, root)
}

fn test_image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn flash_slots(root: &HwRoot) -> super::fw_upload::FwUploadSlots {
    super::fw_upload::FwUploadSlots::open(root, "fpga0-flash").unwrap()
}

#[test]
fn flash_device_writes_the_staging_slot_and_switches_on_activate() {
    use super::FirmwareBackend;
    use accelgate_hw::Slot;
    let (dir, root) = standard("flash");
    let _emulator = accelgate_sim::Emulator::start(&dir.0).unwrap();
    let slots = flash_slots(&root);
    let st = slots.status().unwrap();
    assert_eq!(st.active, Slot::A);
    assert_eq!(st.active_version(), accelgate_sim::flash::FACTORY_VERSION);
    assert!(!st.b.valid);

    let mut image = b"ACCELGATE-FW 2.0\n".to_vec();
    image.extend(test_image(300_000, 9));
    let sha = accelgate_hw::digest::sha256_hex(&image);
    let mut seen = Vec::new();
    slots
        .write_slot(
            Slot::B,
            &image,
            &mut |p| seen.push(p),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert!(seen.len() >= 3, "{seen:?}");
    let storage = accelgate_sim::flash::storage_path(&dir.0, "fpga0-flash", Slot::B);
    assert_eq!(std::fs::read(&storage).unwrap(), image);
    slots.verify_slot(Slot::B, &image, &sha).unwrap();
    assert_eq!(
        slots.status().unwrap().active,
        Slot::A,
        "writing must not switch"
    );
    // Writing the active slot is refused by the backend (the device stages into B).
    assert!(slots
        .write_slot(Slot::A, &image, &mut |_| {}, &AtomicBool::new(false))
        .is_err());
    slots.switch_to(Slot::B).unwrap();
    let st = slots.status().unwrap();
    assert_eq!((st.active, st.active_version()), (Slot::B, "2.0".into()));
    assert_eq!(st.a.version, accelgate_sim::flash::FACTORY_VERSION);
}

#[test]
fn flash_device_refuses_to_boot_an_invalid_slot_and_rebuild_invalidates_torn_writes() {
    use super::FirmwareBackend;
    use accelgate_hw::Slot;
    let (dir, root) = standard("flash-torn");
    {
        let _emulator = accelgate_sim::Emulator::start(&dir.0).unwrap();
        let slots = flash_slots(&root);
        // B is empty: the backend refuses to ask, and the device ignores the request.
        assert!(slots.switch_to(Slot::B).is_err());
        let attrs = root
            .pci_device_dir(&PciBdf::parse("0000:3b:00.0").unwrap())
            .join(accelgate_sim::flash::SLOTS_DIR);
        std::fs::write(attrs.join("activate"), "b").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(slots.status().unwrap().active, Slot::A);
    }
    // A crash mid-write as the emulator leaves it: slot B "writing", upload "transferring".
    let attrs = root
        .pci_device_dir(&PciBdf::parse("0000:3b:00.0").unwrap())
        .join(accelgate_sim::flash::SLOTS_DIR);
    std::fs::write(attrs.join("slot_b_state"), "writing\n").unwrap();
    std::fs::write(
        root.fw_upload_dir("fpga0-flash").join("status"),
        "transferring\n",
    )
    .unwrap();
    accelgate_sim::build(&dir.0, &accelgate_sim::SimSpec::standard()).unwrap();
    let slots = flash_slots(&root);
    let st = slots.status().unwrap();
    assert_eq!(st.active, Slot::A);
    assert!(!st.b.valid);
    assert_eq!(
        std::fs::read_to_string(attrs.join("slot_b_state")).unwrap(),
        "invalid\n"
    );
    let entry = FwUpload::open(&root, "fpga0-flash").unwrap();
    assert_eq!(entry.last_error().unwrap(), "transferring:hw-error");
}
