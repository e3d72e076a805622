//! The policy files shipped in policy/: they load, and say what their comments say.

use std::path::PathBuf;

use super::{accounts, ADMINS, OPERATORS, TENANTS};
use crate::{LoaderBackend, RoleDecision, RolePolicy, Scope, SliceKind};
use accelgate_proto::operation::Operation::{self, *};

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../policy")
        .join(name)
}

fn allows(
    p: &RolePolicy,
    uid: u32,
    gids: &[u32],
    op: Operation,
    dev: Option<&str>,
    assigned: bool,
) -> bool {
    matches!(
        p.decide(uid, gids, op, dev, assigned),
        RoleDecision::Allow { .. }
    )
}

#[test]
fn simulated_policy_matches_the_standard_simulated_host() {
    let p = RolePolicy::load_with(&shipped("simulated.toml"), &accounts()).unwrap();

    let fpga = p.device("fpga0").unwrap();
    assert_eq!(fpga.pci, "0000:3b:00.0");
    let fw = fpga.firmware.as_ref().unwrap();
    assert_eq!(
        (fw.backend, fw.name.as_str()),
        (LoaderBackend::FwUpload, "fpga0-flash")
    );
    // One key: the demo key of policy/demo-keys/, so the simulated tour can flash.
    assert!(!fw.locked && !fw.allow_unsigned && fw.keys.len() == 1);
    for (i, offset) in [(0, 0x10000), (1, 0x20000)] {
        let s = fpga.slice(&format!("region{i}")).unwrap();
        assert_eq!(s.kind, SliceKind::Region);
        assert_eq!((s.bar, s.offset, s.size), (0, offset, 0x10000));
        assert_eq!(s.writable, vec![(0x100, 0x200)]);
        let loader = s.loader.as_ref().unwrap();
        assert_eq!(loader.backend, LoaderBackend::FwUpload);
        assert_eq!(loader.name, format!("fpga0-region{i}"));
    }
    assert_eq!(fpga.vfs, None);

    let nic = p.device("nic0").unwrap();
    assert_eq!(nic.pci, "0000:5e:00.0");
    assert_eq!(nic.vfs.as_ref().map(|v| (v.max, v.bar)), Some((8, 0)));
    assert_eq!(nic.personality.as_ref().unwrap().name, "nic0-personality");
    assert!(nic.slices.is_empty());

    let tenant = &p.roles[0];
    assert_eq!(
        (tenant.id.as_str(), tenant.scope),
        ("tenant", Scope::Assigned)
    );
    assert_eq!(tenant.groups, vec![TENANTS]);
    assert_eq!(
        tenant.caller_caps.get(&SliceMap),
        Some(&vec![caps::Capability::CAP_IPC_LOCK])
    );

    // The matrix the daemon's integration tests rely on.
    let user = 1500;
    for op in [SliceRead, SliceWrite, SliceMap, SliceProgram] {
        assert!(allows(&p, user, &[TENANTS], op, Some("nic0"), true));
        assert!(!allows(&p, user, &[TENANTS], op, Some("nic0"), false));
    }
    assert!(!allows(
        &p,
        user,
        &[TENANTS],
        SliceAssign,
        Some("fpga0"),
        true
    ));
    for op in [SliceAssign, DeviceConfigure, SliceRead] {
        assert!(allows(&p, user, &[OPERATORS], op, Some("nic0"), false));
    }
    for op in [SliceWrite, DeviceFlash] {
        assert!(!allows(&p, user, &[OPERATORS], op, Some("fpga0"), false));
    }
    assert!(!allows(&p, user, &[OPERATORS], PolicyReload, None, false));
    for op in Operation::ALL {
        assert!(allows(&p, 0, &[], op, Some("fpga0"), false));
        assert!(allows(&p, user, &[ADMINS], op, Some("fpga0"), false));
    }
    assert!(allows(&p, 0, &[], PolicyReload, None, false));
    assert!(p.operations_for(user, &[]).is_empty());
}

#[test]
fn example_policy_loads() {
    let accounts = accounts().with_user("nova", 990).with_group("netops", 3100);
    let p = RolePolicy::load_with(&shipped("example.toml"), &accounts).unwrap();
    let ids: Vec<&str> = p.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["fpga0", "nic0"]);
    assert_eq!(p.device("fpga0").unwrap().slices.len(), 3);
    assert!(p.device("nic0").unwrap().firmware.as_ref().unwrap().locked);
    // nic_operator is limited to nic0.
    assert!(allows(
        &p,
        5000,
        &[3100],
        DeviceConfigure,
        Some("nic0"),
        false
    ));
    assert!(!allows(
        &p,
        5000,
        &[3100],
        DeviceConfigure,
        Some("fpga0"),
        false
    ));
    assert!(allows(&p, 990, &[], SliceAssign, Some("fpga0"), false));
}
