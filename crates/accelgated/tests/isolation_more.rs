//! Tenant isolation, the smaller holes of issue 10 item 8: each test drives the real daemon on
//! simulated hardware over a private bus, with accelctl running as the test users.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use accelgate_testkit::*;

const NIC_BDF: &str = "0000:5e:00.0";

/// The register values of `accelctl --json read`.
fn values_of(c: &Ctl) -> Vec<u64> {
    let v = c.json();
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of registers: {v}"))
        .iter()
        .map(|r| {
            r["value"]
                .as_u64()
                .unwrap_or_else(|| panic!("no value in {r}"))
        })
        .collect()
}

/// The BAR file of the nic's VF `index` as the simulated kernel has it now.
fn vf_resource(s: &Stack, index: u32) -> PathBuf {
    s.daemon.sim_dir.join(format!(
        "sys/bus/pci/devices/{NIC_BDF}/virtfn{index}/resource0"
    ))
}

fn vf_u32(s: &Stack, index: u32, offset: usize) -> u32 {
    let bytes = fs::read(vf_resource(s, index)).unwrap();
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn set_vf_u32(s: &Stack, index: u32, offset: u64, value: u32) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(vf_resource(s, index))
        .unwrap();
    f.write_all_at(&value.to_le_bytes(), offset).unwrap();
}

/// Going from 2 to 3 VFs makes the kernel remove and recreate every VF (a non-zero count only
/// changes through zero). The daemon must serve the new functions, not the mappings of the
/// removed `resourceN` files (a real kernel faults those with SIGBUS, and so does the
/// simulator): a Write lands in the new VF, a Read sees the new VF, the daemon lives on; a
/// slice removed by a later change answers with a clear error.
#[test]
fn vf_windows_follow_a_direct_vf_count_change() {
    let mut s = Stack::new("iso-vf-n-to-m");
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("root", &["write", "nic0/vf0", "0x100", "0x1111"])
        .ok();
    assert_eq!(vf_u32(&s, 0, 0x100), 0x1111);
    s.ctl("ag-operator", &["vfs", "nic0", "3"]).ok();
    assert_eq!(vf_u32(&s, 0, 0x100), 0, "a recreated VF comes up reset");

    s.ctl("root", &["write", "nic0/vf0", "0x100", "0xcafe"])
        .ok();
    assert!(s.daemon.alive(), "the daemon died writing a recreated VF");
    assert_eq!(
        vf_u32(&s, 0, 0x100),
        0xcafe,
        "the daemon's Write did not reach the recreated VF"
    );
    set_vf_u32(&s, 1, 0x104, 0x5a5a);
    let seen = s.ctl("root", &["--json", "read", "nic0/vf1", "0x104"]).ok();
    assert_eq!(values_of(&seen), vec![0x5a5a], "Read saw a removed VF");

    // 3 -> 1: vf1 and vf2 go; reading them is a clear NotFound, the rest still works.
    s.ctl("ag-operator", &["vfs", "nic0", "1"]).ok();
    let gone = s
        .ctl("root", &["read", "nic0/vf2", "0x0"])
        .fails_with("NotFound");
    assert!(gone.stderr.contains("vf2"), "{}", gone.stderr);
    s.ctl("root", &["write", "nic0/vf0", "0x100", "0x1"]).ok();
    assert_eq!(vf_u32(&s, 0, 0x100), 1);
    assert!(s.daemon.alive());
}

/// How many function resets the simulated kernel did on the nic's VF `index` (the simulator's
/// own count; no kernel attribute).
fn vf_resets(s: &Stack, index: u32) -> u64 {
    let path = s.daemon.sim_dir.join(format!(
        "sys/bus/pci/devices/{NIC_BDF}/virtfn{index}/sim_resets"
    ));
    fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// A VF that was only read and written through the daemon (never mapped) goes from one tenant
/// to the next at once, so the function is reset between them (FLR through its `reset`
/// attribute): whatever the first tenant left in the device is gone, not just the writable
/// registers the daemon zeroes.
#[test]
fn a_released_vf_is_reset_before_the_next_tenant() {
    let s = Stack::new("iso-vf-reset");
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    s.ctl("ag-tenant1", &["write", "nic0/vf0", "0x100", "0xbeef"])
        .ok();
    assert_eq!(vf_u32(&s, 0, 0x100), 0xbeef);
    assert_eq!(vf_resets(&s, 0), 0);
    s.ctl("ag-operator", &["release", "nic0/vf0"]).ok();
    assert_eq!(vf_resets(&s, 0), 1, "Release did not reset the VF");
    assert_eq!(
        vf_resets(&s, 1),
        0,
        "Release reset a VF it was not asked to"
    );
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .ok();
    let seen = s
        .ctl("ag-tenant2", &["--json", "read", "nic0/vf0", "0x100"])
        .ok();
    assert_eq!(
        values_of(&seen),
        vec![0],
        "the next tenant sees the old one's register"
    );
    // The reset restores the function's identity registers as hardware does.
    let id = s
        .ctl("ag-tenant2", &["--json", "read", "nic0/vf0", "0x0"])
        .ok();
    assert_eq!(values_of(&id), vec![0xacce_e100]);
}

/// Waits until `cond` holds or panics with `what`.
#[allow(dead_code)]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
