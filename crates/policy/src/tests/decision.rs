//! The decision matrix: membership x operation x device x scope.

use caps::Capability::CAP_IPC_LOCK;

use super::{parse, ADMINS, ALICE, BOB, OPERATORS, TENANTS};
use crate::{RoleDecision, RolePolicy};
use accelgate_proto::operation::Operation::{self, *};

const CAROL: u32 = 1003;
const NOBODY: u32 = 65534;
const AUDITORS: u32 = 3000;

const POLICY: &str = r#"
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

[[device]]
id = "nic0"
pci = "0000:5e:00.0"
kind = "nic"

[device.vfs]
max = 8

[[role]]
id = "tenant"
groups = ["accel-tenants"]
operations = ["slice.read", "slice.write", "slice.map", "slice.program"]
scope = "assigned"
caller_caps = { "slice.map" = ["CAP_IPC_LOCK"] }

[[role]]
id = "fpga_operator"
groups = ["accel-operators"]
operations = ["slice.assign", "device.configure", "slice.read"]
devices = ["fpga0"]

[[role]]
id = "auditor"
users = ["bob"]
groups = [3000]
operations = ["slice.read"]

[[role]]
id = "admin"
users = ["root"]
groups = ["accel-admins"]
operations = ["*"]
"#;

fn policy() -> RolePolicy {
    parse(POLICY).unwrap()
}

fn allowed_roles(d: &RoleDecision) -> Vec<&str> {
    match d {
        RoleDecision::Allow { grants } => grants.iter().map(|(r, _)| r.as_str()).collect(),
        RoleDecision::Deny { reason, .. } => panic!("denied: {reason}"),
    }
}

fn deny_reason(d: RoleDecision) -> String {
    match d {
        RoleDecision::Deny { reason, .. } => reason,
        RoleDecision::Allow { grants } => panic!("allowed by {grants:?}"),
    }
}

/// A deny reason may name the operation and the target the caller gave, nothing about
/// roles, other members or assignments.
fn assert_discreet(reason: &str, op: Operation) {
    assert!(reason.contains(op.as_str()), "{reason:?} should name {op}");
    for secret in [
        "tenant", "operator", "auditor", "admin", "bob", "alice", "1002", "2001",
    ] {
        assert!(!reason.contains(secret), "{reason:?} leaks {secret:?}");
    }
}

#[test]
fn tenant_only_on_assigned_slices() {
    let p = policy();
    for op in [SliceRead, SliceWrite, SliceProgram] {
        let d = p.decide(ALICE, &[TENANTS], op, Some("fpga0"), true);
        assert_eq!(
            d,
            RoleDecision::Allow {
                grants: vec![("tenant".into(), vec![])]
            }
        );
        let d = p.decide(ALICE, &[TENANTS], op, Some("fpga0"), false);
        assert!(
            matches!(
                d,
                RoleDecision::Deny {
                    not_assigned: true,
                    ..
                }
            ),
            "{d:?}"
        );
        let reason = deny_reason(d);
        assert_discreet(&reason, op);
        assert!(reason.contains("assigned"));
    }
}

#[test]
fn caller_caps_travel_with_the_grant() {
    let p = policy();
    let d = p.decide(ALICE, &[TENANTS], SliceMap, Some("nic0"), true);
    assert_eq!(
        d,
        RoleDecision::Allow {
            grants: vec![("tenant".into(), vec![CAP_IPC_LOCK])]
        }
    );
    // The admin role grants slice.map without a capability requirement: two alternatives.
    let d = p.decide(0, &[TENANTS], SliceMap, Some("nic0"), true);
    assert_eq!(
        d,
        RoleDecision::Allow {
            grants: vec![
                ("tenant".into(), vec![CAP_IPC_LOCK]),
                ("admin".into(), vec![])
            ]
        }
    );
}

#[test]
fn tenant_cannot_do_operator_or_admin_work() {
    let p = policy();
    for (op, device) in [
        (SliceAssign, Some("fpga0")),
        (DeviceConfigure, Some("fpga0")),
        (DeviceFlash, Some("fpga0")),
        (PolicyReload, None),
    ] {
        // Even on a slice assigned to it; and an assignment would not help.
        let d = p.decide(ALICE, &[TENANTS], op, device, true);
        assert!(
            matches!(
                d,
                RoleDecision::Deny {
                    not_assigned: false,
                    ..
                }
            ),
            "{d:?}"
        );
        let reason = deny_reason(d);
        assert_discreet(&reason, op);
        assert!(reason.contains("not granted"));
    }
}

#[test]
fn devices_restrict_a_role() {
    let p = policy();
    for op in [SliceAssign, DeviceConfigure, SliceRead] {
        let d = p.decide(CAROL, &[OPERATORS], op, Some("fpga0"), false);
        assert_eq!(allowed_roles(&d), vec!["fpga_operator"]);
        let d = p.decide(CAROL, &[OPERATORS], op, Some("nic0"), false);
        assert!(
            matches!(
                d,
                RoleDecision::Deny {
                    not_assigned: false,
                    ..
                }
            ),
            "{d:?}"
        );
        let reason = deny_reason(d);
        assert_discreet(&reason, op);
        assert!(reason.contains("nic0"));
    }
    // Not on devices the policy does not know either.
    deny_reason(p.decide(CAROL, &[OPERATORS], SliceRead, Some("gpu7"), false));
}

#[test]
fn a_role_restricted_to_devices_grants_nothing_without_a_device() {
    let text = POLICY.replace(
        "operations = [\"slice.assign\", \"device.configure\", \"slice.read\"]",
        "operations = [\"slice.assign\", \"device.configure\", \"slice.read\", \"policy.reload\"]",
    );
    let p = parse(&text).unwrap();
    assert!(p.roles[1].grants(PolicyReload));
    let reason = deny_reason(p.decide(CAROL, &[OPERATORS], PolicyReload, None, false));
    assert_discreet(&reason, PolicyReload);
    // An unrestricted role does grant it.
    let d = p.decide(0, &[], PolicyReload, None, false);
    assert_eq!(allowed_roles(&d), vec!["admin"]);
}

#[test]
fn admin_may_do_everything_everywhere() {
    let p = policy();
    for op in Operation::ALL {
        for device in [Some("fpga0"), Some("nic0"), None] {
            for assigned in [false, true] {
                // By uid (root) and by group.
                assert_eq!(
                    allowed_roles(&p.decide(0, &[0], op, device, assigned)),
                    ["admin"]
                );
                assert_eq!(
                    allowed_roles(&p.decide(ALICE, &[ADMINS], op, device, assigned)),
                    ["admin"]
                );
            }
        }
    }
}

#[test]
fn membership_by_user_or_any_group() {
    let p = policy();
    // bob is an auditor by name, someone else by numeric group.
    assert_eq!(
        allowed_roles(&p.decide(BOB, &[], SliceRead, Some("nic0"), false)),
        ["auditor"]
    );
    assert_eq!(
        allowed_roles(&p.decide(CAROL, &[10, AUDITORS, 20], SliceRead, Some("nic0"), false)),
        ["auditor"]
    );
    // Several roles: every one that grants it is listed, in policy order.
    let d = p.decide(
        ALICE,
        &[TENANTS, OPERATORS, AUDITORS],
        SliceRead,
        Some("fpga0"),
        true,
    );
    assert_eq!(allowed_roles(&d), ["tenant", "fpga_operator", "auditor"]);
    let d = p.decide(
        ALICE,
        &[TENANTS, OPERATORS, AUDITORS],
        SliceRead,
        Some("fpga0"),
        false,
    );
    assert_eq!(allowed_roles(&d), ["fpga_operator", "auditor"]);
}

#[test]
fn strangers_get_nothing() {
    let p = policy();
    for op in Operation::ALL {
        for assigned in [false, true] {
            let reason = deny_reason(p.decide(NOBODY, &[NOBODY], op, Some("fpga0"), assigned));
            assert_discreet(&reason, op);
        }
    }
    assert!(p.roles_for(NOBODY, &[NOBODY]).is_empty());
    assert!(p.operations_for(NOBODY, &[]).is_empty());
}

#[test]
fn roles_and_operations_for_a_caller() {
    let p = policy();
    let ids: Vec<&str> = p
        .roles_for(ALICE, &[TENANTS, OPERATORS])
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids, ["tenant", "fpga_operator"]);
    assert_eq!(
        p.operations_for(ALICE, &[TENANTS]),
        vec![SliceRead, SliceWrite, SliceMap, SliceProgram]
    );
    assert_eq!(
        p.operations_for(ALICE, &[TENANTS, OPERATORS]),
        vec![
            SliceRead,
            SliceWrite,
            SliceMap,
            SliceProgram,
            SliceAssign,
            DeviceConfigure
        ]
    );
    assert_eq!(p.operations_for(0, &[]), Operation::ALL.to_vec());
    assert_eq!(p.operations_for(BOB, &[]), vec![SliceRead]);
}

#[test]
fn slice_ids_and_vf_indices() {
    let p = policy();
    assert_eq!(p.device("fpga0").unwrap().slice_ids(), ["region0"]);
    let nic = p.device("nic0").unwrap();
    let ids = nic.slice_ids();
    assert_eq!(ids.len(), 8);
    assert_eq!((ids[0].as_str(), ids[7].as_str()), ("vf0", "vf7"));
    let vfs = nic.vfs.as_ref().unwrap();
    assert_eq!(vfs.index_of("vf0"), Some(0));
    assert_eq!(vfs.index_of("vf7"), Some(7));
    for not_a_vf in [
        "vf8", "vf01", "vf+1", "vf", "vf-1", "region0", "VF1", " vf1",
    ] {
        assert_eq!(vfs.index_of(not_a_vf), None, "{not_a_vf}");
    }
}
