//! Every validation error, with the line it must point at (marked `# <-` in each input).

use super::{expect_error, parse};
use crate::{LoaderBackend, Scope, SliceKind, DEFAULT_MAX_IMAGE_SIZE};

/// A device with one region; tests append to it or change one thing in it.
const DEVICE: &str = r#"
[[device]]
id = "fpga0"
pci = "0000:3b:00.0"
kind = "fpga"

[[device.slice]]
id = "region0"
kind = "region"
bar = 0
offset = 0x10000
size = 0x10000
writable = [[0x100, 0x200]]
loader = { backend = "fw-upload", name = "fpga0-region0" }
"#;

/// A minimal valid role.
const ROLE: &str = r#"
[[role]]
id = "tenant"
groups = ["accel-tenants"]
operations = ["slice.read"]
"#;

/// `DEVICE` with `line` added right after its `kind = "fpga"` line.
fn device_with(line: &str) -> String {
    DEVICE.replacen(
        "kind = \"fpga\"\n",
        &format!("kind = \"fpga\"\n{line}\n"),
        1,
    )
}

/// `DEVICE` followed by a second slice with `lines` as its body.
fn with_slice(lines: &str) -> String {
    format!("{DEVICE}\n[[device.slice]]\n{lines}\n")
}

/// `DEVICE` followed by a role with `lines` as its body.
fn with_role(lines: &str) -> String {
    format!("{DEVICE}\n[[role]]\n{lines}\n")
}

#[test]
fn a_valid_file_loads_with_defaults() {
    let p = parse(&format!("{DEVICE}{ROLE}")).unwrap();
    assert_eq!(p.devices.len(), 1);
    let d = &p.devices[0];
    assert_eq!(d.max_image_size, DEFAULT_MAX_IMAGE_SIZE);
    assert_eq!(d.firmware, None);
    assert_eq!(d.vfs, None);
    let s = d.slice("region0").unwrap();
    assert_eq!(s.kind, SliceKind::Region);
    assert_eq!((s.bar, s.offset, s.size), (0, 0x10000, 0x10000));
    assert_eq!(s.writable, vec![(0x100, 0x200)]);
    assert_eq!(s.loader.as_ref().unwrap().backend, LoaderBackend::FwUpload);
    assert_eq!(p.roles[0].scope, Scope::All);
    assert_eq!(p.roles[0].devices, None);
    assert_eq!(p.roles[0].groups, vec![super::TENANTS]);
    assert!(p.sources.is_empty());
    assert_eq!(p.revision.len(), 64);
}

#[test]
fn toml_syntax_error() {
    expect_error(
        "[[device]]\nid = \"fpga0\"\npci = \"0000:3b:00.0 # <-\nkind = \"fpga\"\n",
        "",
    );
    expect_error("[[role]]\nid = \"x\"\nid = \"y\" # <-\n", "duplicate key");
}

#[test]
fn unknown_key_at_top_level() {
    expect_error("colour = \"red\" # <-\n", "unknown field `colour`");
}

#[test]
fn unknown_key_in_device() {
    expect_error(&device_with("vendor = 1 # <-"), "unknown field `vendor`");
}

#[test]
fn unknown_key_in_slice() {
    expect_error(
        &with_slice(
            "id = \"w\"\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 4\nprefetch = true # <-",
        ),
        "unknown field `prefetch`",
    );
}

#[test]
fn unknown_key_in_inline_tables() {
    expect_error(
        &device_with("firmware = { backend = \"mtd\", name = \"mtd0\", lock = true } # <-"),
        "unknown field `lock`",
    );
    expect_error(
        &device_with("personality = { backend = \"mtd\", name = \"mtd0\", slot = 1 } # <-"),
        "unknown field `slot`",
    );
}

#[test]
fn unknown_key_in_vfs() {
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 4\ncount = 4 # <-\n"),
        "unknown field `count`",
    );
}

#[test]
fn unknown_key_in_role() {
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"slice.read\"]\nmembers = [1] # <-"),
        "unknown field `members`",
    );
}

#[test]
fn missing_required_key() {
    expect_error(
        "[[device]] # <-\nid = \"fpga0\"\nkind = \"fpga\"\n",
        "missing field `pci`",
    );
}

#[test]
fn bad_ids() {
    expect_error(
        &DEVICE.replace("id = \"fpga0\"", "id = \"fpga-0\" # <-"),
        "invalid device id 'fpga-0'",
    );
    expect_error(
        &DEVICE.replace("id = \"region0\"", "id = \"region/0\" # <-"),
        "invalid slice id 'region/0'",
    );
    expect_error(
        &with_role("id = \"\" # <-\ngroups = [1]\noperations = [\"slice.read\"]"),
        "invalid role id ''",
    );
}

#[test]
fn duplicate_ids_in_one_file() {
    let text = format!(
        "{DEVICE}\n[[device]]\nid = \"fpga0\" # <-\npci = \"0000:3c:00.0\"\nkind = \"fpga\"\n"
    );
    expect_error(
        &text,
        "duplicate device id 'fpga0' (first defined at test.toml:3)",
    );

    expect_error(
        &with_slice("id = \"region0\" # <-\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 4"),
        "duplicate slice id 'region0' in device 'fpga0' (first defined at test.toml:8)",
    );

    let text =
        format!("{ROLE}\n[[role]]\nid = \"tenant\" # <-\nusers = [1]\noperations = [\"*\"]\n");
    expect_error(
        &text,
        "duplicate role id 'tenant' (first defined at test.toml:3)",
    );
}

#[test]
fn duplicate_pci_address() {
    let text = format!(
        "{DEVICE}\n[[device]]\nid = \"fpga1\"\npci = \"0000:3b:00.0\" # <-\nkind = \"fpga\"\n"
    );
    expect_error(
        &text,
        "duplicate PCI address '0000:3b:00.0' (first defined at test.toml:4)",
    );
}

#[test]
fn bad_pci_addresses() {
    for bad in [
        "0000:3B:00.0",
        "0000:3b:00",
        "00:3b:00.0",
        "0000:3b:00.8",
        "0000:3b:20.0",
        "0000-3b:00.0",
        "0000:3b:00.0 ",
        "0000:3g:00.0",
        "",
    ] {
        expect_error(
            &DEVICE.replace("\"0000:3b:00.0\"", &format!("{bad:?} # <-")),
            "invalid PCI address",
        );
    }
    let p = parse(&DEVICE.replace("0000:3b:00.0", "abcd:ff:1f.7")).unwrap();
    assert_eq!(p.devices[0].pci, "abcd:ff:1f.7");
}

#[test]
fn bad_device_kind() {
    expect_error(
        &DEVICE.replace("kind = \"fpga\"", "kind = \"FPGA\" # <-"),
        "invalid device kind 'FPGA'",
    );
    let p = parse(&DEVICE.replace("kind = \"fpga\"", "kind = \"smart-nic_2\"")).unwrap();
    assert_eq!(p.devices[0].kind, "smart-nic_2");
}

#[test]
fn max_image_size_must_be_positive() {
    expect_error(
        &device_with("max_image_size = 0 # <-"),
        "max_image_size must be greater than 0",
    );
    expect_error(&device_with("max_image_size = -1 # <-"), "");
    let p = parse(&device_with("max_image_size = 4096")).unwrap();
    assert_eq!(p.devices[0].max_image_size, 4096);
}

#[test]
fn slices_overlapping_in_one_bar() {
    expect_error(
        &with_slice(
            "id = \"region1\"\nkind = \"region\"\nbar = 0\noffset = 0x1ffff # <-\nsize = 0x10",
        ),
        "slice 'region1' overlaps slice 'region0' in BAR 0 of device 'fpga0'",
    );
    expect_error(
        &with_slice("id = \"all\"\nkind = \"window\"\nbar = 0\noffset = 0 # <-\nsize = 0x100000"),
        "overlaps slice 'region0'",
    );
    // Adjacent windows, and the same range in another BAR, do not overlap.
    let p = parse(&with_slice(
        "id = \"region1\"\nkind = \"region\"\nbar = 0\noffset = 0x20000\nsize = 0x10000",
    ))
    .unwrap();
    assert_eq!(p.devices[0].slices.len(), 2);
    parse(&with_slice(
        "id = \"other\"\nkind = \"window\"\nbar = 2\noffset = 0x10000\nsize = 0x10000",
    ))
    .unwrap();
    // The same window on two different devices is fine too.
    parse(&format!(
        "{DEVICE}{}",
        DEVICE.replace("fpga0", "fpga1").replace("3b:", "3c:")
    ))
    .unwrap();
}

#[test]
fn slice_geometry() {
    expect_error(
        &with_slice("id = \"w\"\nkind = \"window\"\nbar = 6 # <-\noffset = 0\nsize = 4"),
        "invalid BAR 6",
    );
    expect_error(
        &with_slice("id = \"w\"\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 0 # <-"),
        "slice size must be greater than 0",
    );
    // TOML integers stop at 2^63 - 1, so offset + size always fits u64; the largest window
    // the format can express still loads.
    let p = parse(&with_slice(
        "id = \"w\"\nkind = \"window\"\nbar = 1\noffset = 0x7fffffffffffffff\nsize = 0x7fffffffffffffff",
    ))
    .unwrap();
    assert_eq!(p.devices[0].slices[1].offset, 0x7fff_ffff_ffff_ffff);
    expect_error(
        &with_slice("id = \"w\"\nkind = \"window\"\nbar = -1 # <-\noffset = 0\nsize = 4"),
        "",
    );
}

#[test]
fn slice_kinds() {
    expect_error(
        &with_slice("id = \"vf0\"\nkind = \"vf\" # <-\nbar = 1\noffset = 0\nsize = 4"),
        "VF slices are not declared one by one",
    );
    expect_error(
        &with_slice("id = \"w\"\nkind = \"bank\" # <-\nbar = 1\noffset = 0\nsize = 4"),
        "unknown slice kind 'bank'",
    );
}

#[test]
fn loader_only_on_regions() {
    expect_error(
        &with_slice(
            "id = \"w\"\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 4\n\
             loader = { backend = \"fw-upload\", name = \"x\" } # <-",
        ),
        "slice 'w' is a window: only regions have a loader",
    );
    let p = parse(&with_slice(
        "id = \"w\"\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 4",
    ))
    .unwrap();
    assert_eq!(p.devices[0].slices[1].loader, None);
    assert!(p.devices[0].slices[1].writable.is_empty());
}

#[test]
fn writable_ranges() {
    expect_error(
        &DEVICE.replace("[[0x100, 0x200]]", "[[0x100, 0x10001]] # <-"),
        "ends past the slice (size 0x10000)",
    );
    expect_error(
        &DEVICE.replace("[[0x100, 0x200]]", "[[0x200, 0x200]] # <-"),
        "writable range [0x200, 0x200) is empty or reversed",
    );
    expect_error(
        &DEVICE.replace("[[0x100, 0x200]]", "[[0x300, 0x200]] # <-"),
        "is empty or reversed",
    );
    expect_error(
        &DEVICE.replace(
            "writable = [[0x100, 0x200]]",
            "writable = [\n  [0x180, 0x280],\n  [0x0, 0x10],\n  [0x100, 0x200], # <-\n]",
        ),
        "writable ranges [0x100, 0x200) and [0x180, 0x280) overlap",
    );
    expect_error(
        &DEVICE.replace("[[0x100, 0x200]]", "[[0x100, 0x200, 0x300]] # <-"),
        "a writable range is a list of two numbers",
    );
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 2\nwritable = [[0x10]] # <-\n"),
        "a writable range is a list of two numbers",
    );
    // Sorted on load; touching ranges and a range up to the end are fine.
    let p = parse(&DEVICE.replace(
        "[[0x100, 0x200]]",
        "[[0x200, 0x10000], [0x0, 0x10], [0x100, 0x200]]",
    ))
    .unwrap();
    assert_eq!(
        p.devices[0].slices[0].writable,
        vec![(0x0, 0x10), (0x100, 0x200), (0x200, 0x10000)]
    );
}

#[test]
fn vfs() {
    let p = parse(&format!("{DEVICE}[device.vfs]\nmax = 8\n")).unwrap();
    let vfs = p.devices[0].vfs.as_ref().unwrap();
    assert_eq!((vfs.max, vfs.bar, vfs.writable.clone()), (8, 0, None));
    let p = parse(&format!(
        "{DEVICE}[device.vfs]\nmax = 256\nbar = 2\nwritable = [[0x1000, 0x2000], [0x0, 0x10]]\n"
    ))
    .unwrap();
    let vfs = p.devices[0].vfs.as_ref().unwrap();
    assert_eq!(vfs.max, 256);
    assert_eq!(vfs.bar, 2);
    assert_eq!(vfs.writable, Some(vec![(0x0, 0x10), (0x1000, 0x2000)]));

    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 0 # <-\n"),
        "invalid VF count 0",
    );
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 257 # <-\n"),
        "invalid VF count 257",
    );
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 2\nbar = 9 # <-\n"),
        "invalid BAR 9",
    );
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 2\nwritable = [[0x10, 0x20], [0x0, 0x11]] # <-\n"),
        "overlap",
    );
    expect_error(
        &format!("{DEVICE}[device.vfs]\nmax = 2\nwritable = [[0x10, 0x10]] # <-\n"),
        "empty or reversed",
    );
}

#[test]
fn revoke_driver() {
    let p = parse(&format!("{DEVICE}[device.vfs]\nmax = 2\n")).unwrap();
    assert_eq!(p.devices[0].vfs.as_ref().unwrap().revoke_driver, None);
    let p = parse(&format!(
        "{DEVICE}[device.vfs]\nmax = 2\nrevoke_driver = \"igbvf\"\n"
    ))
    .unwrap();
    let vfs = p.devices[0].vfs.as_ref().unwrap();
    assert_eq!(vfs.revoke_driver.as_deref(), Some("igbvf"));
    for bad in ["", "../igbvf", "igb vf", "igbvf\\n", "-x", &"a".repeat(65)] {
        expect_error(
            &format!("{DEVICE}[device.vfs]\nmax = 2\nrevoke_driver = {bad:?} # <-\n"),
            "invalid revoke_driver",
        );
    }
    for stub in ["pci-stub", "pci-pf-stub"] {
        expect_error(
            &format!("{DEVICE}[device.vfs]\nmax = 2\nrevoke_driver = \"{stub}\" # <-\n"),
            "claims no BAR",
        );
    }
}

#[test]
fn declared_slice_cannot_take_a_vf_name() {
    let text = format!(
        "{}\n[[device.slice]]\nid = \"vf3\" # <-\nkind = \"window\"\nbar = 1\noffset = 0\nsize = 4\n\
         [device.vfs]\nmax = 4\n",
        DEVICE
    );
    expect_error(
        &text,
        "slice id 'vf3' is taken by a VF slice of device 'fpga0'",
    );
    // vf4 is not a VF slice name when there are 4 VFs (vf0..vf3).
    parse(&text.replace("vf3", "vf4")).unwrap();
}

#[test]
fn backends() {
    expect_error(
        &device_with("firmware = { backend = \"spi\", name = \"x\" } # <-"),
        "unknown backend 'spi' (expected fw-upload or mtd)",
    );
    expect_error(
        &device_with("personality = { backend = \"tftp\", name = \"x\" } # <-"),
        "unknown backend 'tftp'",
    );
    expect_error(
        &DEVICE.replace(
            "{ backend = \"fw-upload\", name = \"fpga0-region0\" }",
            "{ backend = \"FW-UPLOAD\", name = \"fpga0-region0\" } # <-",
        ),
        "unknown backend 'FW-UPLOAD'",
    );
    for bad in ["..", ".", "a/b", "", "../../etc/passwd"] {
        expect_error(
            &device_with(&format!(
                "personality = {{ backend = \"mtd\", name = {bad:?} }} # <-"
            )),
            "invalid backend device name",
        );
    }
    let p = parse(&device_with(
        "personality = { backend = \"mtd\", name = \"mtd3\" }",
    ))
    .unwrap();
    let personality = p.devices[0].personality.as_ref().unwrap();
    assert_eq!(personality.backend, LoaderBackend::Mtd);
    assert_eq!(personality.name, "mtd3");
}

#[test]
fn firmware_keys_and_flags() {
    // A minisign public key (base64 of "Ed" + 8-byte key id + 32-byte key).
    let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    let p = parse(&device_with(&format!(
        "firmware = {{ backend = \"fw-upload\", name = \"fpga0-flash\", locked = true, keys = [{key:?}], allow_unsigned = true }}"
    )))
    .unwrap();
    let fw = p.devices[0].firmware.as_ref().unwrap();
    assert!(fw.locked);
    assert!(fw.allow_unsigned);
    assert_eq!(fw.keys, vec![key.to_owned()]);
    assert_eq!(fw.name, "fpga0-flash");

    let p = parse(&device_with(
        "firmware = { backend = \"mtd\", name = \"mtd0\" }",
    ))
    .unwrap();
    let fw = p.devices[0].firmware.as_ref().unwrap();
    assert!(!fw.locked && !fw.allow_unsigned && fw.keys.is_empty());

    expect_error(
        &device_with(
            "firmware = { backend = \"mtd\", name = \"mtd0\", keys = [\"not a key\"] } # <-",
        ),
        "invalid minisign public key",
    );
}

#[test]
fn unknown_operation() {
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"slice.read\", \"slice.erase\"] # <-"),
        "unknown operation 'slice.erase'",
    );
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [] # <-"),
        "role 'r' grants no operations",
    );
}

#[test]
fn unknown_capability() {
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [1]\noperations = [\"slice.map\"]\n\
             caller_caps = { \"slice.map\" = [\"CAP_IPC_LOCK\", \"CAP_MAGIC\"] } # <-",
        ),
        "unknown capability 'CAP_MAGIC'",
    );
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [1]\noperations = [\"slice.map\"]\n\
             caller_caps = { \"slice.map\" = [\"cap_ipc_lock\"] } # <-",
        ),
        "unknown capability 'cap_ipc_lock'",
    );
}

#[test]
fn caller_caps_must_name_granted_operations() {
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [1]\noperations = [\"slice.read\"]\n\
             caller_caps = { \"slice.map\" = [\"CAP_IPC_LOCK\"] } # <-",
        ),
        "caller_caps names slice.map, which role 'r' does not grant",
    );
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [1]\noperations = [\"*\"]\n[role.caller_caps]\n\
             \"slice.read\" = []\n\"slice.mmap\" = [\"CAP_IPC_LOCK\"] # <-",
        ),
        "unknown operation 'slice.mmap'",
    );
    let p = parse(&with_role(
        "id = \"r\"\ngroups = [1]\noperations = [\"*\"]\n\
         caller_caps = { \"slice.map\" = [\"CAP_IPC_LOCK\", \"CAP_SYS_RAWIO\"] }",
    ))
    .unwrap();
    let caps = &p.roles[0].caller_caps[&accelgate_proto::Operation::SliceMap];
    assert_eq!(
        caps,
        &vec![
            caps::Capability::CAP_IPC_LOCK,
            caps::Capability::CAP_SYS_RAWIO
        ]
    );
}

#[test]
fn users_and_groups() {
    expect_error(
        &with_role("id = \"r\"\nusers = [\"alice\", \"mallory\"] # <-\noperations = [\"*\"]"),
        "unknown user 'mallory'",
    );
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [\"accel-tenants\", \"wheel\"] # <-\noperations = [\"*\"]",
        ),
        "unknown group 'wheel'",
    );
    expect_error(
        &with_role("id = \"r\" # <-\noperations = [\"*\"]"),
        "role 'r' has no users and no groups",
    );
    expect_error(
        &with_role("id = \"r\" # <-\nusers = []\ngroups = []\noperations = [\"*\"]"),
        "role 'r' has no users and no groups",
    );
    expect_error(
        &with_role("id = \"r\"\nusers = [-5] # <-\noperations = [\"*\"]"),
        "a name or a number",
    );
    expect_error(
        &with_role("id = \"r\"\nusers = [4294967295] # <-\noperations = [\"*\"]"),
        "a name or a number",
    );
    expect_error(
        &with_role("id = \"r\"\nusers = [true] # <-\noperations = [\"*\"]"),
        "a name or a number",
    );
    let p = parse(&with_role(
        "id = \"r\"\nusers = [\"alice\", 1001, 7]\ngroups = [\"accel-admins\", 99]\noperations = [\"*\"]",
    ))
    .unwrap();
    assert_eq!(p.roles[0].users, vec![super::ALICE, 7]);
    assert_eq!(p.roles[0].groups, vec![super::ADMINS, 99]);
}

#[test]
fn scope() {
    expect_error(
        &with_role(
            "id = \"r\"\ngroups = [1]\noperations = [\"slice.read\",\n  \"slice.assign\", # <-\n]\nscope = \"assigned\"",
        ),
        "scope \"assigned\" cannot grant slice.assign",
    );
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"*\"] # <-\nscope = \"assigned\""),
        "scope \"assigned\" cannot grant",
    );
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"*\"]\nscope = \"mine\" # <-"),
        "unknown scope 'mine' (expected all or assigned)",
    );
    let p = parse(&with_role(
        "id = \"r\"\ngroups = [1]\nscope = \"assigned\"\n\
         operations = [\"slice.program\", \"slice.read\", \"slice.write\", \"slice.map\", \"slice.read\"]",
    ))
    .unwrap();
    assert_eq!(p.roles[0].scope, Scope::Assigned);
    assert_eq!(p.roles[0].operations.len(), 4, "sorted and deduplicated");
    assert!(p.roles[0].operations.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn star_expands_to_every_operation() {
    let p = parse(&with_role(
        "id = \"r\"\ngroups = [1]\noperations = [\"*\", \"slice.read\"]",
    ))
    .unwrap();
    assert_eq!(
        p.roles[0].operations,
        accelgate_proto::Operation::ALL.to_vec()
    );
}

#[test]
fn role_devices() {
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"*\"]\ndevices = [\"fpga0\",\n  \"gpu9\", # <-\n]"),
        "role 'r' names unknown device 'gpu9'",
    );
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"*\"]\ndevices = [] # <-"),
        "role 'r' covers no devices",
    );
    expect_error(
        &with_role("id = \"r\"\ngroups = [1]\noperations = [\"*\"]\ndevices = [\"a b\"] # <-"),
        "invalid device id 'a b'",
    );
    // A role may name a device declared further down the file.
    let text = format!(
        "[[role]]\nid = \"r\"\ngroups = [1]\noperations = [\"*\"]\ndevices = [\"fpga0\", \"fpga0\"]\n{DEVICE}"
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.roles[0].devices, Some(vec!["fpga0".to_owned()]));
}

/// Prints a sample of messages, to eyeball with `--nocapture`.
#[test]
fn messages_read_well() {
    for text in [
        "colour = 1".to_owned(),
        device_with("vendor = 1"),
        device_with("max_image_size = -1"),
        device_with("max_image_size = \"big\""),
        with_slice("id = \"w\"\nkind = \"window\"\nbar = -1\noffset = 0\nsize = 4"),
        "[[device]]\nid = \"fpga0\"\nkind = \"fpga\"\n".to_owned(),
        "[[device]]\nid = \"fpga0\"\npci = \"0000:3b:00.0 \nkind = \"fpga\"\n".to_owned(),
        with_role("id = \"r\"\nusers = [true]\noperations = [\"*\"]"),
    ] {
        let e = parse(&text).unwrap_err().to_string();
        println!("{e}");
        assert!(e.starts_with("test.toml:") && !e.contains('\n'), "{e:?}");
    }
}
