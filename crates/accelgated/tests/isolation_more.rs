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

/// A small firmware image whose header names `version`.
fn fw_image(s: &Stack, version: &str) -> String {
    let mut bytes = format!("ACCELGATE-FW {version}\n").into_bytes();
    bytes.extend(version.bytes().cycle().take(16 << 10));
    let path = write_image(&s.dir, &format!("fw-{version}.bin"), &bytes);
    path.to_str().unwrap().to_owned()
}

fn fpga_firmware_version(s: &Stack) -> String {
    let p = s.obs.device("fpga0");
    s.obs
        .rt
        .block_on(async { p.inner().get_property::<String>("FirmwareVersion").await })
        .unwrap()
}

/// Without any anti-rollback setting in the policy, an older image is refused: downgrades are
/// off by default (`allow_downgrade = false`).
#[test]
fn firmware_downgrades_are_refused_by_default() {
    let s = Stack::with_policy("iso-fw-default", |p| {
        p.replace("allow_unsigned = false }", "allow_unsigned = true }")
    });
    let v3 = fw_image(&s, "3.0.0");
    s.ctl("root", &["firmware", "flash", "fpga0", &v3]).ok();
    let v2 = fw_image(&s, "2.0.0");
    let r = s
        .ctl("root", &["firmware", "flash", "fpga0", &v2])
        .fails_with("VerificationFailed");
    assert!(r.stderr.contains("downgrades are refused"), "{}", r.stderr);
    assert_eq!(fpga_firmware_version(&s), "3.0.0");
}

/// Anti-rollback: with `min_version = "2.0.0"`, an image older than the active firmware is
/// refused unless an admin passes force, and nothing below the floor flashes even then. A
/// role that may flash but not reload the policy may upgrade and may not force.
#[test]
fn firmware_downgrades_need_an_admins_force_and_never_pass_the_floor() {
    let s = Stack::with_policy("iso-fw-rollback", |p| {
        let p = p.replace(
            "allow_unsigned = false }",
            "allow_unsigned = true, min_version = \"2.0.0\" }",
        );
        assert!(
            p.contains("min_version"),
            "the policy's firmware line changed"
        );
        p + "\n[[role]]\nid = \"flasher\"\ngroups = [\"accel-operators\"]\n\
             operations = [\"device.flash\"]\n"
    });
    let v3 = fw_image(&s, "3.0.0");
    s.ctl("root", &["firmware", "flash", "fpga0", &v3]).ok();
    assert_eq!(fpga_firmware_version(&s), "3.0.0");

    let v25 = fw_image(&s, "2.5.0");
    let r = s
        .ctl("root", &["firmware", "flash", "fpga0", &v25])
        .fails_with("VerificationFailed");
    assert!(
        r.stderr.contains("older than the active firmware 3.0.0"),
        "{}",
        r.stderr
    );
    let r = s
        .ctl(
            "ag-operator",
            &["firmware", "flash", "fpga0", &v25, "--force"],
        )
        .fails_with("NotAuthorized");
    assert!(r.stderr.contains("policy.reload"), "{}", r.stderr);
    let v15 = fw_image(&s, "1.5.0");
    let r = s
        .ctl("root", &["firmware", "flash", "fpga0", &v15, "--force"])
        .fails_with("VerificationFailed");
    assert!(r.stderr.contains("minimum version 2.0.0"), "{}", r.stderr);
    assert_eq!(
        fpga_firmware_version(&s),
        "3.0.0",
        "a refused image flashed"
    );

    s.ctl("root", &["firmware", "flash", "fpga0", &v25, "--force"])
        .ok();
    assert_eq!(fpga_firmware_version(&s), "2.5.0");
    // An upgrade needs no force, and a role that may flash may do it.
    let v31 = fw_image(&s, "3.1.0");
    s.ctl("ag-operator", &["firmware", "flash", "fpga0", &v31])
        .ok();
    assert_eq!(fpga_firmware_version(&s), "3.1.0");
    // Every refusal is audited.
    let refused = s
        .audit()
        .iter()
        .filter(|r| r["operation"] == "device.flash" && r["decision"] == "deny")
        .count();
    assert!(refused >= 3, "{:?}", s.audit());
}

fn served_revision(s: &Stack) -> String {
    let p = s
        .obs
        .rt
        .block_on(zbus::Proxy::new(
            &s.obs.conn,
            "org.accelgate.Accel1",
            "/org/accelgate/Accel1",
            "org.accelgate.Accel1.Manager",
        ))
        .unwrap();
    s.obs
        .rt
        .block_on(async { p.get_property::<String>("PolicyRevision").await })
        .unwrap()
}

/// A slice loader or a personality that shares the firmware's fw-upload entry would put an
/// unsigned image on the flash: the policy is refused when checked and when reloaded (the old
/// policy stays in force).
#[test]
fn a_loader_may_not_share_the_firmware_entry() {
    let s = Stack::new("iso-loader-fw");
    let original = fs::read_to_string(&s.daemon.policy).unwrap();
    let before = served_revision(&s);
    for (what, bad) in [
        (
            "the loader of slice 'fpga0/region1'",
            original.replace("name = \"fpga0-region1\"", "name = \"fpga0-flash\""),
        ),
        (
            "the personality loader of device 'nic0'",
            original.replace("name = \"nic0-personality\"", "name = \"fpga0-flash\""),
        ),
    ] {
        assert_ne!(bad, original, "the simulated policy changed");
        let file = s.dir.join("bad-policy.toml");
        fs::write(&file, &bad).unwrap();
        let r = s.ctl("root", &["policy", "check", file.to_str().unwrap()]);
        assert_ne!(
            r.code, 0,
            "a loader on the firmware entry passed: {}",
            r.stdout
        );
        assert!(
            r.stderr.contains(what) && r.stderr.contains("'fpga0-flash', the firmware entry"),
            "{}",
            r.stderr
        );
        fs::write(&s.daemon.policy, &bad).unwrap();
        let r = s.ctl("root", &["policy", "reload"]);
        assert_ne!(r.code, 0, "the daemon took the policy: {}", r.stdout);
        assert!(r.stderr.contains("firmware entry"), "{}", r.stderr);
        assert_eq!(
            served_revision(&s),
            before,
            "the old policy is no longer served"
        );
    }
    fs::write(&s.daemon.policy, &original).unwrap();
}

/// `calls` Slice.Read calls on fpga0/region0 from `user`, as fast as dbus-send makes them.
fn hammer_reads(s: &Stack, user: &str, calls: u32) {
    let dbus_send = require_binary("dbus-send", "dbus-bin");
    let path = accelgate_client::proto::names::slice_path("fpga0", "region0");
    let script = format!(
        "for i in $(seq {calls}); do {} --bus={} --print-reply --dest=org.accelgate.Accel1 \
         {path} org.accelgate.Accel1.Slice.Read uint64:0 uint32:1 byte:4 >/dev/null 2>&1; done; exit 0",
        dbus_send.display(),
        s.bus.address
    );
    let status = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "sh",
            "-c",
            &script,
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A caller with no role hammers the daemon: its denials are rate-limited per (uid,
/// operation, gate) and summed up, so the audit file stays small, and an allowed record from
/// before is still in `AuditLog` (denials have their own share of the ring).
#[test]
fn a_denial_flood_stays_bounded_in_the_audit_log() {
    let s = Stack::new("iso-audit-flood");
    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0x0"]).ok();
    let nobody = uid_of("ag-nobody");
    let t = Instant::now();
    hammer_reads(&s, "ag-nobody", 400);
    let took = t.elapsed();
    eprintln!("400 denied calls took {took:?}");
    // The daemon writes at most 10 denials per key and 5 s window, plus one summary per
    // window that suppressed any: a bound on what 400 calls may leave, however long they took.
    let windows = took.as_secs() / 5 + 2;
    let bound = (windows * 11) as usize;
    let from_nobody = |audit: &[serde_json::Value]| {
        audit
            .iter()
            .filter(|r| r["uid"] == nobody)
            .cloned()
            .collect::<Vec<_>>()
    };
    let written = from_nobody(&s.audit());
    assert!(
        !written.is_empty() && written.len() <= bound,
        "{} audit records for 400 denials (at most {bound})",
        written.len()
    );
    // The allowed read from before is still in AuditLog.
    let log = s
        .ctl("root", &["--json", "audit", "--max", "100000"])
        .ok()
        .json();
    let rows = log.as_array().unwrap().clone();
    assert!(
        rows.iter().any(|r| r["uid"] == uid_of("ag-tenant1")
            && r["operation"] == "slice.read"
            && r["decision"] == "allow"),
        "the allowed record is gone from AuditLog"
    );
    assert!(
        rows.len() <= bound + 10,
        "AuditLog holds {} records",
        rows.len()
    );
    // Once the window is over, the next denial brings the summary of what was suppressed.
    std::thread::sleep(Duration::from_millis(5200));
    hammer_reads(&s, "ag-nobody", 1);
    let written = from_nobody(&s.audit());
    let is_summary = |r: &serde_json::Value| {
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("similar denials suppressed")
    };
    let suppressed: u64 = written
        .iter()
        .filter(|r| is_summary(r))
        .map(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let plain = written.iter().filter(|r| !is_summary(r)).count() as u64;
    // Every one of the 401 denials is written or counted in a summary.
    assert!(suppressed > 0, "no summary record in {written:?}");
    assert_eq!(suppressed + plain, 401, "{written:?}");
}

/// A symbolic link planted where the daemon writes its state (the temp file it renames into
/// place) is not followed: the change is refused, saying why, and the file the link points
/// to is untouched (before, root truncated and overwrote it).
#[test]
fn a_link_in_the_state_directory_is_not_followed() {
    let s = Stack::new("iso-nofollow");
    let victim = s.dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let tmp = s.daemon.state_dir.join(".state.json.tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let r = s
        .ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .fails_with("Failed");
    assert!(r.stderr.contains("cannot persist state"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        s.obs.tenant("fpga0", "region0"),
        "",
        "the refused change was applied"
    );
    wait_for("the daemon to log the link", || {
        s.daemon.log_text().contains("is a symbolic link")
    });
    // Once the link is gone, the state is written again.
    fs::remove_file(&tmp).unwrap();
    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    assert!(s.daemon.state_dir.join("state.json").is_file());
}

/// Waits until `cond` holds or panics with `what`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
