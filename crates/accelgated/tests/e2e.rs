//! End to end: the real daemon on simulated hardware, on a private bus, driven by `accelctl`
//! running as different users. Hardware effects are checked in the simulated BAR files, daemon
//! state through the bus as root.

use std::fs;
use std::time::{Duration, Instant};

use accelgate_sim::{SIM_DRIVER, SIM_VF_DRIVER};
use accelgate_testkit::*;

const FPGA_BDF: &str = "0000:3b:00.0";
const REGION0: u64 = 0x10000;

type Setup = Stack;

trait RegionView {
    fn region0_bytes(&self, offset: u64, len: usize) -> Vec<u8>;
    fn wait_image(&self, slice: &str, want: &str);
}

impl RegionView for Stack {
    fn region0_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        sim_bar_bytes(&self.daemon.sim_dir, FPGA_BDF, REGION0 + offset, len)
    }

    /// Waits until the slice's ImageSha256 is `want` (jobs run in the background).
    fn wait_image(&self, slice: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.obs.image_sha256("fpga0", slice) != want {
            assert!(
                Instant::now() < deadline,
                "image of {slice} never became {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The register values of `accelctl --json read`: `[{"offset": N, "value": N}, ...]`.
fn values_of(c: &Ctl) -> Vec<u64> {
    let v = c.json();
    let rows = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list of registers: {v}"));
    rows.iter()
        .map(|r| {
            r["value"]
                .as_u64()
                .unwrap_or_else(|| panic!("no value in {r}"))
        })
        .collect()
}

#[test]
fn role_operation_matrix_with_denials_leaving_hardware_unchanged() {
    let s = Setup::new("matrix");
    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    assert_eq!(s.obs.tenant("fpga0", "region0"), "user:ag-tenant1");

    // slice.read: tenant on its own slice, operator (scope all) and admin may; others not.
    for (user, allowed) in [
        ("ag-tenant1", true),
        ("ag-tenant2", false),
        ("ag-operator", true),
        ("ag-admin", true),
        ("ag-nobody", false),
    ] {
        let r = s.ctl(user, &["--json", "read", "fpga0/region0", "0x0"]);
        if allowed {
            assert_eq!(
                values_of(&r.ok()),
                vec![0xacce_0000],
                "{user} reads the region id"
            );
        } else {
            r.fails_with("NotAuthorized");
        }
    }

    // slice.write: only the assigned tenant and the admin; a denial writes nothing.
    let before = s.region0_bytes(0x100, 8);
    for user in ["ag-tenant2", "ag-operator", "ag-nobody"] {
        s.ctl(user, &["write", "fpga0/region0", "0x100", "0x55"])
            .fails_with("NotAuthorized");
        assert_eq!(
            s.region0_bytes(0x100, 8),
            before,
            "{user}'s denied write changed the device"
        );
    }
    s.ctl(
        "ag-tenant1",
        &[
            "write",
            "fpga0/region0",
            "0x100",
            "0x1122334455667788",
            "--width",
            "8",
        ],
    )
    .ok();
    assert_eq!(
        s.region0_bytes(0x100, 8),
        0x1122334455667788u64.to_le_bytes()
    );
    // A hard limit refuses with its kind, and names its gate like every refusal.
    let r = s
        .ctl("ag-tenant1", &["write", "fpga0/region0", "0x0", "1"])
        .fails_with("InvalidArgument");
    assert!(
        r.stderr
            .contains("refused by the device-limits gate: bytes 0x0..0x4"),
        "{}",
        r.stderr
    );

    // Scope assigned: the same tenant has nothing on a slice that is not assigned to it, and
    // is told so (not to ask for a role), with the gate that decided.
    let r = s
        .ctl("ag-tenant1", &["read", "fpga0/region1", "0x0"])
        .fails_with("NotAuthorized");
    assert!(
        r.stderr.contains(
            "slice.read on fpga0/region1: refused by the role gate: the slice is not assigned to you"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("ask an operator to assign"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("grants slice.read"), "{}", r.stderr);
    s.ctl("ag-tenant1", &["write", "fpga0/region1", "0x100", "1"])
        .fails_with("NotAuthorized");

    // slice.assign: operators and admins. A missing role is named as such.
    let r = s
        .ctl("ag-tenant1", &["assign", "fpga0/region1", "ag-tenant1"])
        .fails_with("NotAuthorized");
    assert!(
        r.stderr.contains("refused by the role gate")
            && r.stderr
                .contains("ask an admin for a role that grants slice.assign"),
        "{}",
        r.stderr
    );
    assert_eq!(s.obs.tenant("fpga0", "region1"), "");
    s.ctl(
        "ag-operator",
        &["assign", "fpga0/region1", "group:accel-tenants"],
    )
    .ok();
    assert_eq!(s.obs.tenant("fpga0", "region1"), "group:accel-tenants");
    // A group assignment reaches every member.
    s.ctl("ag-tenant2", &["read", "fpga0/region1", "0x0"]).ok();

    // device.configure (VF count): operators; tenants not.
    s.ctl("ag-tenant1", &["vfs", "nic0", "2"])
        .fails_with("NotAuthorized");
    assert_eq!(s.obs.num_vfs("nic0"), 0);
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    assert_eq!(s.obs.num_vfs("nic0"), 2);

    // device.flash: only admins.
    let fw = write_image(&s.dir, "fw.bin", b"firmware");
    s.ctl(
        "ag-tenant1",
        &["firmware", "flash", "fpga0", fw.to_str().unwrap()],
    )
    .fails_with("NotAuthorized");
    s.ctl(
        "ag-operator",
        &["firmware", "flash", "fpga0", fw.to_str().unwrap()],
    )
    .fails_with("NotAuthorized");

    // policy.reload: only admins.
    s.ctl("ag-operator", &["policy", "reload"])
        .fails_with("NotAuthorized");
    s.ctl("ag-admin", &["policy", "reload"]).ok();

    // Every decision is in the audit log, denials with the gate that decided.
    let denials: Vec<serde_json::Value> = s
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    let tenant2 = uid_of("ag-tenant2");
    assert!(denials
        .iter()
        .any(|r| r["uid"] == tenant2 && r["operation"] == "slice.write" && r["gate"] == "role"));
}

#[test]
fn tenant_programs_its_slice_and_reads_the_result() {
    let s = Setup::new("program");
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let img = write_image(&s.dir, "app.bin", &bytes);
    let sha = sha256_hex(&bytes);
    s.ctl(
        "ag-tenant1",
        &["program", "fpga0/region0", img.to_str().unwrap()],
    )
    .ok();
    s.wait_image("region0", &sha);
    // The simulated region reports the image it holds.
    let tag = u64::from_le_bytes(hex_prefix(&sha));
    assert_eq!(
        s.obs.read("fpga0", "region0", 0x8, 2, 8).unwrap(),
        vec![1, tag]
    );
    // Another tenant cannot program it.
    s.ctl(
        "ag-tenant2",
        &["program", "fpga0/region0", img.to_str().unwrap()],
    )
    .fails_with("NotAuthorized");
    // Releasing scrubs: scratch registers zeroed, image unloaded.
    s.ctl(
        "ag-tenant1",
        &[
            "write",
            "fpga0/region0",
            "0x100",
            "0xabcdef",
            "--width",
            "4",
        ],
    )
    .ok();
    s.ctl("ag-operator", &["release", "fpga0/region0"]).ok();
    assert_eq!(s.obs.tenant("fpga0", "region0"), "");
    assert_eq!(s.obs.image_sha256("fpga0", "region0"), "");
    assert_eq!(s.region0_bytes(0x100, 0x100), vec![0u8; 0x100]);
    assert_eq!(
        s.obs.read("fpga0", "region0", 0x8, 2, 8).unwrap(),
        vec![0, 0]
    );
}

/// The simulated firmware-upload directory of a loader (`sys/class/firmware/NAME`).
fn loader_dir(sim_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    sim_dir.join("sys/class/firmware").join(name)
}

/// Size and modification time (ns) of each file of a loader: any upload rewrites `loading`,
/// `status` and `data`.
fn loader_snapshot(dir: &std::path::Path) -> Vec<(String, u64, i128)> {
    let mut files: Vec<(String, u64, i128)> =
        ["loading", "status", "data", "error", "remaining_size"]
            .iter()
            .map(|name| {
                let m = fs::metadata(dir.join(name))
                    .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
                let mtime = m
                    .modified()
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as i128;
                (name.to_string(), m.len(), mtime)
            })
            .collect();
    files.sort();
    files
}

/// The loader's status as the simulated kernel left it.
fn loader_status(dir: &std::path::Path) -> String {
    fs::read_to_string(dir.join("status"))
        .unwrap()
        .trim()
        .to_owned()
}

fn hex_prefix(sha: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn every_mutating_call_is_idempotent() {
    let s = Setup::new("idempotent");
    for _ in 0..2 {
        s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
            .ok();
    }
    assert_eq!(s.obs.tenant("fpga0", "region0"), "user:ag-tenant1");
    // Assigning to someone else while assigned is refused, not silently changed.
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant2"])
        .fails_with("Busy");
    assert_eq!(s.obs.tenant("fpga0", "region0"), "user:ag-tenant1");

    for _ in 0..2 {
        s.ctl(
            "ag-tenant1",
            &["write", "fpga0/region0", "0x108", "7", "--width", "4"],
        )
        .ok();
    }
    assert_eq!(s.region0_bytes(0x108, 4), 7u32.to_le_bytes());

    let img = write_image(&s.dir, "app.bin", b"application image v1");
    let sha = sha256_hex(b"application image v1");
    let first = s
        .ctl(
            "ag-tenant1",
            &["--json", "program", "fpga0/region0", img.to_str().unwrap()],
        )
        .ok();
    assert!(
        !first.json()["message"]
            .as_str()
            .unwrap()
            .contains("already loaded"),
        "{}",
        first.stdout
    );
    s.wait_image("region0", &sha);
    // The same image again: the job ends at once and the loader is not touched (no upload
    // started, its data file neither rewritten nor truncated).
    let loader = loader_dir(&s.daemon.sim_dir, "fpga0-region0");
    let before = loader_snapshot(&loader);
    let again = s
        .ctl(
            "ag-tenant1",
            &["--json", "program", "fpga0/region0", img.to_str().unwrap()],
        )
        .ok();
    assert_eq!(
        again.json()["message"],
        format!("image {sha} is already loaded"),
        "{}",
        again.stdout
    );
    assert_eq!(
        loader_snapshot(&loader),
        before,
        "the repeated Program wrote to the loader"
    );
    assert_eq!(s.obs.image_sha256("fpga0", "region0"), sha);

    for _ in 0..2 {
        s.ctl("ag-operator", &["vfs", "nic0", "3"]).ok();
        assert_eq!(s.obs.num_vfs("nic0"), 3);
    }
    assert_eq!(s.obs.slice_ids("nic0"), ["vf0", "vf1", "vf2"]);

    for _ in 0..2 {
        s.ctl("ag-operator", &["release", "fpga0/region0"]).ok();
        assert_eq!(s.obs.tenant("fpga0", "region0"), "");
    }
}

#[test]
fn vf_slices_follow_the_vf_count_and_assigned_vfs_are_protected() {
    let s = Setup::new("vfs");
    s.ctl("ag-operator", &["vfs", "nic0", "4"]).ok();
    assert_eq!(s.obs.slice_ids("nic0"), ["vf0", "vf1", "vf2", "vf3"]);
    s.ctl("ag-operator", &["assign", "nic0/vf3", "ag-tenant1"])
        .ok();
    s.ctl("ag-operator", &["vfs", "nic0", "2"])
        .fails_with("Busy");
    assert_eq!(s.obs.num_vfs("nic0"), 4);
    s.ctl("ag-operator", &["vfs", "nic0", "2", "--force"]).ok();
    assert_eq!(s.obs.slice_ids("nic0"), ["vf0", "vf1"]);
    // The VF's own BAR answers through the daemon.
    assert_eq!(
        s.obs.read("nic0", "vf1", 0, 1, 4).unwrap(),
        vec![0xacce_e101]
    );
    // More than the hardware or policy allows is refused.
    s.ctl("ag-operator", &["vfs", "nic0", "9"])
        .fails_with("InvalidArgument");
    assert_eq!(s.obs.num_vfs("nic0"), 2);
}

#[test]
fn restart_restores_assignments_images_and_vfs() {
    let mut s = Setup::new("restart");
    s.ctl(
        "ag-operator",
        &["assign", "fpga0/region1", "group:accel-tenants"],
    )
    .ok();
    s.ctl("ag-operator", &["vfs", "nic0", "3"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf2", "ag-tenant2"])
        .ok();
    let img = write_image(&s.dir, "app.bin", b"persistent image");
    s.ctl(
        "ag-tenant1",
        &["program", "fpga0/region1", img.to_str().unwrap()],
    )
    .ok();
    let sha = sha256_hex(b"persistent image");
    s.wait_image("region1", &sha);

    s.daemon.restart();
    assert_eq!(s.obs.tenant("fpga0", "region1"), "group:accel-tenants");
    assert_eq!(s.obs.image_sha256("fpga0", "region1"), sha);
    assert_eq!(s.obs.num_vfs("nic0"), 3);
    assert_eq!(s.obs.tenant("nic0", "vf2"), "user:ag-tenant2");
    s.ctl("ag-tenant2", &["read", "nic0/vf2", "0"]).ok();

    // A host whose VFs vanished (reboot) gets them back from state.
    fs::write(
        s.daemon
            .sim_dir
            .join("sys/bus/pci/devices/0000:5e:00.0/sriov_numvfs"),
        "0\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.daemon.restart();
    assert_eq!(s.obs.num_vfs("nic0"), 3);
    assert_eq!(s.obs.tenant("nic0", "vf2"), "user:ag-tenant2");
}

/// Kills the daemon as soon as `loader`'s status reads `phase` while `start` runs a load,
/// and returns the status the kill left (the simulated kernel runs inside the daemon, so it
/// stops with it). Tries a few times: the kill must land in the phase, not before or after.
fn kill_during(
    s: &mut Stack,
    loader: &std::path::Path,
    phase: &str,
    start: impl Fn(&str) -> std::thread::JoinHandle<Ctl>,
    reset: impl Fn(&mut Stack),
) -> bool {
    // `phase` is `<attribute>=<value>` of the loader, e.g. `loading=1` while the daemon writes
    // the image into it (the kernel's order: the upload starts at loading=0), or
    // `status=transferring` while the device takes it.
    let (attr, value) = phase.split_once('=').expect("phase is attribute=value");
    let read = || {
        fs::read_to_string(loader.join(attr))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    for _ in 0..5 {
        let client = start(&s.bus.address);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = read();
        while seen != value && Instant::now() < deadline && !client.is_finished() {
            seen = read();
        }
        s.daemon.kill();
        let _ = client.join();
        if read() == value {
            return true;
        }
        // Missed the phase: start over from a clean slice.
        s.daemon.restart();
        reset(s);
    }
    false
}

#[test]
fn sigkill_during_program_leaves_a_consistent_slice() {
    let mut s = Setup::new("kill-program");
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    // Big enough that the simulated loader takes a while (it is paced like hardware).
    let bytes: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let img = write_image(&s.dir, "big.bin", &bytes);
    let loader = loader_dir(&s.daemon.sim_dir, "fpga0-region0");
    let state_file = s.daemon.state_dir.join("state.json");
    // loading=1: the daemon is writing the image into the loader; transferring: the device
    // is taking it. Either way the region's content is unknown after the kill.
    for phase in ["loading=1", "status=transferring"] {
        let img_arg = img.to_str().unwrap().to_owned();
        let start = |address: &str| {
            let (address, img_arg) = (address.to_owned(), img_arg.clone());
            std::thread::spawn(move || {
                ctl(
                    &address,
                    "ag-tenant1",
                    &["program", "fpga0/region0", &img_arg],
                )
            })
        };
        let reset = |s: &mut Stack| {
            s.ctl("ag-operator", &["release", "fpga0/region0"]).ok();
            s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
                .ok();
        };
        assert!(
            kill_during(&mut s, &loader, phase, start, reset),
            "no kill landed while the loader was {phase}"
        );
        // The state file says the image is in flux: start-up must repair it.
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
        assert_eq!(
            state["slices"]["fpga0/region0"]["image_in_flux"], true,
            "{phase}: {state}"
        );
        let log_before = s.daemon.log_text().len();
        s.daemon.restart();
        // Start-up repair blanked the region: nothing recorded, the region empty, the
        // in-flux mark gone, and the log says so.
        let log = s.daemon.log_text()[log_before..].to_owned();
        assert!(
            log.contains("fpga0/region0: an image load was interrupted; blanking the slice"),
            "{phase}: no repair logged:\n{log}"
        );
        assert_eq!(s.obs.image_sha256("fpga0", "region0"), "", "{phase}");
        assert_eq!(
            s.obs.read("fpga0", "region0", 0x8, 2, 8).unwrap(),
            vec![0, 0],
            "{phase}: the region is not blank"
        );
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
        assert!(
            state["slices"]["fpga0/region0"]["image_in_flux"].is_null(),
            "{phase}: still in flux after start-up: {state}"
        );
        assert_eq!(loader_status(&loader), "idle", "{phase}");
        assert_eq!(
            s.obs.tenant("fpga0", "region0"),
            "user:ag-tenant1",
            "assignment survives"
        );
    }
}

#[test]
fn sigkill_during_configure_leaves_no_personality_recorded() {
    let mut s = Setup::new("kill-configure");
    let bytes: Vec<u8> = (0..6_000_000u32).map(|i| (i % 239) as u8).collect();
    let img = write_image(&s.dir, "personality.bin", &bytes);
    let small = write_image(&s.dir, "small.bin", b"after the crash");
    let small = small.to_str().unwrap().to_owned();
    let loader = loader_dir(&s.daemon.sim_dir, "nic0-personality");
    let state_file = s.daemon.state_dir.join("state.json");
    for phase in ["loading=1", "status=transferring"] {
        let img_arg = img.to_str().unwrap().to_owned();
        let start = |address: &str| {
            let (address, img_arg) = (address.to_owned(), img_arg.clone());
            std::thread::spawn(move || {
                ctl(&address, "ag-operator", &["configure", "nic0", &img_arg])
            })
        };
        assert!(
            kill_during(&mut s, &loader, phase, start, |s: &mut Stack| {
                // A missed kill loaded the image: load another, so the next try loads again.
                s.ctl("ag-operator", &["configure", "nic0", &small]).ok();
            }),
            "no kill landed while the loader was {phase}"
        );
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
        assert_eq!(
            state["devices"]["nic0"]["personality_in_flux"], true,
            "{phase}: {state}"
        );
        let log_before = s.daemon.log_text().len();
        s.daemon.restart();
        let log = s.daemon.log_text()[log_before..].to_owned();
        assert!(
            log.contains("nic0: a personality load was interrupted"),
            "{phase}: no repair logged:\n{log}"
        );
        let personality: String = s
            .obs
            .rt
            .block_on(
                s.obs
                    .device("nic0")
                    .inner()
                    .get_property("PersonalitySha256"),
            )
            .unwrap();
        assert_eq!(
            personality, "",
            "{phase}: a half-loaded personality is recorded"
        );
        let state: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state_file).unwrap()).unwrap();
        assert!(
            state["devices"]["nic0"]["personality_in_flux"].is_null()
                && state["devices"]["nic0"]["personality_sha256"].is_null(),
            "{phase}: {state}"
        );
        // The simulated kernel ended the interrupted upload with an error.
        assert_eq!(loader_status(&loader), "idle");
        // And the device takes a personality again.
        s.ctl("ag-operator", &["configure", "nic0", &small]).ok();
    }
}

#[test]
fn map_needs_an_assigned_vf_and_the_callers_capability() {
    let s = Setup::new("map");
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    // The tenant role requires CAP_IPC_LOCK for slice.map.
    s.ctl("ag-tenant1", &["map-test", "nic0/vf0"])
        .fails_with("NotAuthorized");
    let denial = s
        .audit()
        .into_iter()
        .rev()
        .find(|r| r["operation"] == "slice.map")
        .unwrap();
    assert_eq!(denial["gate"], "caller-caps");
    let mapped = ctl_with_caps(
        &s.bus.address,
        "ag-tenant1",
        "+ipc_lock",
        &["--json", "map-test", "nic0/vf0"],
    )
    .ok();
    assert_eq!(mapped.json()["value"], 0xacce_e100u64);
    // The capability does not open a VF that is not assigned to the caller.
    ctl_with_caps(
        &s.bus.address,
        "ag-tenant1",
        "+ipc_lock",
        &["map-test", "nic0/vf1"],
    )
    .fails_with("NotAuthorized");
    // Windows inside a shared BAR are never handed out, whoever asks.
    s.ctl("root", &["map-test", "fpga0/region0"])
        .fails_with("InvalidArgument");
}

/// Takes the next item of a signal stream, or panics after a few seconds.
fn next_within<S: zbus::export::futures_core::Stream + Unpin>(
    rt: &tokio::runtime::Runtime,
    stream: &mut S,
) -> S::Item {
    rt.block_on(async {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx));
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("no signal within 5 s")
            .expect("stream ended")
    })
}

#[test]
fn changes_are_announced_on_the_bus() {
    let s = Setup::new("signals");
    let rt = &s.obs.rt;
    let conn = &s.obs.conn;
    let om = rt
        .block_on(
            zbus::fdo::ObjectManagerProxy::builder(conn)
                .destination(accelgate_client::proto::names::BUS_NAME)
                .path(accelgate_client::proto::names::ROOT_PATH)
                .build(),
        )
        .unwrap();
    let mut added = rt.block_on(om.receive_interfaces_added()).unwrap();
    let mut removed = rt.block_on(om.receive_interfaces_removed()).unwrap();
    let region0 = rt
        .block_on(
            zbus::fdo::PropertiesProxy::builder(conn)
                .destination(accelgate_client::proto::names::BUS_NAME)
                .path(accelgate_client::proto::names::slice_path(
                    "fpga0", "region0",
                ))
                .build(),
        )
        .unwrap();
    let mut changed = rt.block_on(region0.receive_properties_changed()).unwrap();

    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    let signal = next_within(rt, &mut changed);
    let args = signal.args().unwrap();
    assert_eq!(args.interface_name().as_str(), "org.accelgate.Accel1.Slice");
    let tenant: String = args
        .changed_properties()
        .get("Tenant")
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(tenant, "user:ag-tenant1");

    // VF slices appear and disappear as objects.
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    let mut paths: Vec<String> = (0..2)
        .map(|_| {
            next_within(rt, &mut added)
                .args()
                .unwrap()
                .object_path()
                .to_string()
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            accelgate_client::proto::names::slice_path("nic0", "vf0"),
            accelgate_client::proto::names::slice_path("nic0", "vf1")
        ]
    );
    s.ctl("ag-operator", &["vfs", "nic0", "0"]).ok();
    let mut gone: Vec<String> = (0..2)
        .map(|_| {
            next_within(rt, &mut removed)
                .args()
                .unwrap()
                .object_path()
                .to_string()
        })
        .collect();
    gone.sort();
    assert_eq!(gone, paths);
}

#[test]
fn configure_loads_a_personality_once_and_respects_assigned_slices() {
    let s = Setup::new("configure");
    let bytes = b"nic personality v2".to_vec();
    let img = write_image(&s.dir, "personality.bin", &bytes);
    let sha = sha256_hex(&bytes);
    let img = img.to_str().unwrap();
    s.ctl("ag-tenant1", &["configure", "nic0", img])
        .fails_with("NotAuthorized");
    for _ in 0..2 {
        s.ctl("ag-operator", &["configure", "nic0", img]).ok();
        let personality: String = s
            .obs
            .rt
            .block_on(
                s.obs
                    .device("nic0")
                    .inner()
                    .get_property("PersonalitySha256"),
            )
            .unwrap();
        assert_eq!(personality, sha);
    }
    // The simulated card reports the personality it runs: first 8 bytes of its sha256.
    let tag = sim_bar_bytes(&s.daemon.sim_dir, "0000:5e:00.0", 0x10, 8);
    assert_eq!(tag, hex_prefix(&sha));
    // A new personality while a slice is assigned needs force.
    s.ctl("ag-operator", &["vfs", "nic0", "1"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let other = write_image(&s.dir, "personality3.bin", b"nic personality v3");
    s.ctl(
        "ag-operator",
        &["configure", "nic0", other.to_str().unwrap()],
    )
    .fails_with("Busy");
    assert_eq!(
        sim_bar_bytes(&s.daemon.sim_dir, "0000:5e:00.0", 0x10, 8),
        hex_prefix(&sha)
    );
    s.ctl(
        "ag-operator",
        &["configure", "nic0", other.to_str().unwrap(), "--force"],
    )
    .ok();
    let v3 = sha256_hex(b"nic personality v3");
    assert_eq!(
        sim_bar_bytes(&s.daemon.sim_dir, "0000:5e:00.0", 0x10, 8),
        hex_prefix(&v3)
    );
}

/// A tenant whose VF has writable ranges, or whose role lacks slice.write, gets a read-only
/// fd from Map: its mapping cannot store anything.
#[test]
fn map_hands_out_a_read_only_fd_unless_the_whole_bar_is_writable() {
    let s = Setup::with_policy("map-ro", |p| {
        p.replace(
            "[device.vfs]\nmax = 8",
            "[device.vfs]\nmax = 8\nwritable = [[0x0, 0x1000]]",
        )
    });
    s.ctl("ag-operator", &["vfs", "nic0", "1"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let write = |offset: &str| {
        ctl_with_caps(
            &s.bus.address,
            "ag-tenant1",
            "+ipc_lock",
            &[
                "map-test", "nic0/vf0", "--write", "0x5a5a", "--offset", offset,
            ],
        )
    };
    // Even inside the writable range: the mapping covers the whole BAR, so it is read-only.
    // The refusal is the kernel's: the fd is read-only, so a writable mapping of it fails.
    for offset in ["0x2000", "0x100"] {
        let c = write(offset);
        assert_eq!(c.code, 1, "{offset}: {}{}", c.stdout, c.stderr);
        assert!(
            c.stderr.contains("cannot map the slice's file descriptor")
                && c.stderr.contains("EACCES"),
            "{offset}: {}",
            c.stderr
        );
    }
    // Reading through the mapping still works.
    ctl_with_caps(
        &s.bus.address,
        "ag-tenant1",
        "+ipc_lock",
        &["map-test", "nic0/vf0"],
    )
    .ok();
    assert_ne!(
        s.obs.read("nic0", "vf0", 0x2000, 1, 4).unwrap(),
        vec![0x5a5a],
        "a store through a read-only mapping reached the VF"
    );
}

/// The simulated policy with nic0's `revoke_driver` line taken out.
fn without_revoke_driver(p: String) -> String {
    let line = format!("revoke_driver = \"{SIM_VF_DRIVER}\"\n");
    assert!(
        p.contains(&line),
        "policy/simulated.toml changed: nic0's revoke_driver not found"
    );
    p.replace(&line, "")
}

/// Without a revoke driver nothing could end a mapping of the VF (not its reset, not even
/// recreating the VFs, on a real kernel): Map is refused, and Read and Write still serve the
/// tenant. Nothing is marked, so the VF goes to the next tenant at once.
#[test]
fn map_is_refused_where_no_mapping_could_be_revoked() {
    let s = Setup::with_policy("map-no-revoke", without_revoke_driver);
    s.ctl("ag-operator", &["vfs", "nic0", "1"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let map = ctl_with_caps(
        &s.bus.address,
        "ag-tenant1",
        "+ipc_lock",
        &[
            "map-test",
            "nic0/vf0",
            "--write",
            "0xbad0bad0",
            "--offset",
            "0x100",
        ],
    )
    .fails_with("Failed");
    assert!(
        map.stderr.contains("names no revoke_driver"),
        "{}",
        map.stderr
    );
    assert_eq!(s.obs.read("nic0", "vf0", 0x100, 1, 4).unwrap(), vec![0]);
    s.ctl("ag-tenant1", &["write", "nic0/vf0", "0x100", "0x5a5a"])
        .ok();
    let seen = s
        .ctl("ag-tenant1", &["--json", "read", "nic0/vf0", "0x100"])
        .ok();
    assert_eq!(values_of(&seen), vec![0x5a5a]);
    s.ctl("ag-operator", &["release", "nic0/vf0"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .ok();
}

/// A caller whose role maps VFs it is not assigned (the admin here) gets an fd too, and that
/// fd reaches whoever has the VF next: the mapping is marked by the caller's uid, so the VF's
/// next tenant gets it only after the revocation and the VF's re-creation, as with a tenant's.
#[test]
fn an_unassigned_callers_mapping_keeps_the_vf_from_the_next_tenant() {
    let s = Setup::new("map-unassigned");
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-admin", &["map-test", "nic0/vf1"]).ok();
    let busy = s
        .ctl("ag-operator", &["assign", "nic0/vf1", "ag-tenant2"])
        .fails_with("Busy");
    assert!(
        busy.stderr.contains("fd") && busy.stderr.contains("recreate"),
        "{}",
        busy.stderr
    );
    s.ctl("ag-operator", &["vfs", "nic0", "0"]).ok();
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf1", "ag-tenant2"])
        .ok();
}

/// A mark outlives what does not revoke. A VF is mapped under a revoke driver; the admin then
/// reloads a policy without one. Release cannot revoke, and neither recreating the VFs (on a
/// real kernel the old mapping reaches the new VF) nor a restart of the daemon clears the
/// mark: the VF goes to no other tenant until a revoke driver is named again, and then the
/// next Assign revokes first.
#[test]
fn a_mapping_mark_is_cleared_only_by_a_revocation() {
    let mut s = Setup::new("map-mark-kept");
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let mut holder = hold_mapping(&s, "ag-tenant1", "nic0/vf0", 0xbad0_bad0);
    let policy = s.dir.join("policy.toml");
    let with_driver = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, without_revoke_driver(with_driver.clone())).unwrap();
    s.ctl("ag-admin", &["policy", "reload"]).ok();

    s.ctl("ag-operator", &["release", "nic0/vf0"]).ok();
    // First refused for the fd Map handed out (it outlives everything but the VF's removal).
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .fails_with("Busy");
    let no_driver = |s: &Setup| {
        let busy = s
            .ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
            .fails_with("Busy");
        assert!(
            busy.stderr.contains("names no revoke_driver"),
            "{}",
            busy.stderr
        );
    };
    s.ctl("ag-operator", &["vfs", "nic0", "0", "--force"]).ok();
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    no_driver(&s);
    s.daemon.restart();
    no_driver(&s);

    fs::write(&policy, with_driver).unwrap();
    s.ctl("ag-admin", &["policy", "reload"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .ok();
    let seen = s
        .ctl("ag-tenant2", &["--json", "read", "nic0/vf0", "0x100"])
        .ok();
    assert_eq!(
        values_of(&seen),
        vec![0],
        "the next tenant sees the old stores"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

/// The policy of the revocation tests: nic0's VFs name `driver` as their revoke driver.
fn with_revoke_driver(driver: &str) -> impl FnOnce(String) -> String + '_ {
    move |p: String| {
        without_revoke_driver(p).replace(
            "[device.vfs]\nmax = 8",
            &format!("[device.vfs]\nmax = 8\nrevoke_driver = \"{driver}\""),
        )
    }
}

/// Starts a tenant storing `value` at 0x100 of `slice` through its own mapping every 20 ms
/// (`map-test --hold`), and waits until the stores land.
fn hold_mapping(s: &Setup, tenant: &str, slice: &str, value: u32) -> std::process::Child {
    let value = format!("{value:#x}");
    let holder = spawn_ctl_with_caps(
        &s.bus.address,
        tenant,
        "+ipc_lock",
        &[
            "map-test", slice, "--write", &value, "--offset", "0x100", "--hold",
        ],
    );
    let (device, vf) = slice.split_once('/').unwrap();
    let want = u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.obs.read(device, vf, 0x100, 1, 4).unwrap() != vec![want] {
        assert!(
            Instant::now() < deadline,
            "the holder never stored through its mapping"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder
}

/// How the holder ended, waiting up to `within`; `None` if it still runs.
fn ended(holder: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = holder.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With a revoke driver, Release ends the old tenant's mapping itself: the daemon binds the
/// VF's driver for a moment (the simulator, as the kernel, then revokes every mapping of the
/// BAR), proves it, unbinds, resets the function. The holder dies of SIGBUS, the VF goes to
/// the next tenant at once (no VF recreation), who sees none of the old stores and whose own
/// writes land, through Write and through a new mapping of its own.
#[test]
fn release_revokes_a_mapping_through_the_vf_driver() {
    use std::os::unix::process::ExitStatusExt;
    let mut s = Setup::with_policy("map-revoke-driver", with_revoke_driver(SIM_VF_DRIVER));
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let mut holder = hold_mapping(&s, "ag-tenant1", "nic0/vf0", 0xbad0_bad0);
    // A bystander on the other VF, whose mapping the revocation must leave alone.
    s.ctl("ag-operator", &["assign", "nic0/vf1", "ag-tenant2"])
        .ok();
    let mut bystander = hold_mapping(&s, "ag-tenant2", "nic0/vf1", 0x0b0b_0b0b);

    let started = Instant::now();
    s.ctl("ag-operator", &["release", "nic0/vf0"]).ok();
    let took = started.elapsed();
    eprintln!("Release with revocation took {took:?}");
    let status = ended(&mut holder, Duration::from_secs(5))
        .expect("the old tenant's holder still runs after Release: its mapping was not revoked");
    assert_eq!(
        status.signal(),
        Some(nix::libc::SIGBUS),
        "the holder should die of SIGBUS on its next store, not {status:?}"
    );
    assert!(
        ended(&mut bystander, Duration::from_millis(100)).is_none(),
        "the revocation reached another VF's mapping"
    );
    assert!(s.daemon.alive(), "the daemon died handing the VF over");

    // The function was reset: the old tenant's store is gone.
    assert_eq!(
        s.obs.read("nic0", "vf0", 0x100, 1, 4).unwrap(),
        vec![0],
        "the VF was not reset on Release"
    );
    // The mapping is revoked, but the fd Map gave the old tenant could map the VF again once
    // the driver is unbound: the VF goes to no one else until its resource file is removed.
    let refused = s
        .ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .fails_with("Busy");
    assert!(
        refused.stderr.contains("fd") && refused.stderr.contains("recreate"),
        "{}",
        refused.stderr
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    s.ctl("ag-operator", &["vfs", "nic0", "0", "--force"]).ok();
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .ok();
    let seen = s
        .ctl("ag-tenant2", &["--json", "read", "nic0/vf0", "0x100"])
        .ok();
    assert_eq!(values_of(&seen), vec![0], "the recreated VF is not blank");
    s.ctl("ag-tenant2", &["write", "nic0/vf0", "0x100", "0x5a5a"])
        .ok();
    for _ in 0..5 {
        let seen = s
            .ctl("ag-tenant2", &["--json", "read", "nic0/vf0", "0x100"])
            .ok();
        assert_eq!(
            values_of(&seen),
            vec![0x5a5a],
            "the next tenant's write did not stay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next tenant maps it too (the daemon's own window and the BAR work again).
    ctl_with_caps(
        &s.bus.address,
        "ag-tenant2",
        "+ipc_lock",
        &[
            "map-test", "nic0/vf0", "--write", "0x77", "--offset", "0x104",
        ],
    )
    .ok();
    assert_eq!(s.obs.read("nic0", "vf0", 0x104, 1, 4).unwrap(), vec![0x77]);
    assert!(s.daemon.alive());
}

/// A revoke driver that claims no BAR revokes nothing: the daemon finds out (a new mmap still
/// succeeds while it is bound) and fails closed. Release says why, the slice keeps its mark,
/// the next tenant gets Busy with the reason, and the old holder never reaches it.
#[test]
fn a_revocation_that_is_not_in_force_keeps_the_vf_from_the_next_tenant() {
    let mut s = Setup::with_policy("map-revoke-fails", with_revoke_driver(SIM_DRIVER));
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant1"])
        .ok();
    let mut holder = hold_mapping(&s, "ag-tenant1", "nic0/vf0", 0xbad0_bad0);
    let release = s
        .ctl("ag-operator", &["release", "nic0/vf0"])
        .fails_with("Failed");
    assert!(
        release.stderr.contains("could not be revoked")
            && release.stderr.contains("not in force")
            && release.stderr.contains(SIM_DRIVER),
        "{}",
        release.stderr
    );
    assert!(
        ended(&mut holder, Duration::from_millis(300)).is_none(),
        "the holder died although nothing claimed the BAR"
    );
    // Released (the old tenant is refused), but to no one else.
    s.ctl("ag-tenant1", &["read", "nic0/vf0", "0x0"])
        .fails_with("NotAuthorized");
    let busy = s
        .ctl("ag-operator", &["assign", "nic0/vf0", "ag-tenant2"])
        .fails_with("Busy");
    assert!(
        busy.stderr.contains("may still be alive") && busy.stderr.contains("not in force"),
        "{}",
        busy.stderr
    );
    // Retrying Release tries again and says so again.
    s.ctl("ag-operator", &["release", "nic0/vf0"])
        .fails_with("Failed");
    // The driver was unbound each time: the VF has no driver and the daemon still serves it.
    let vf0 = s
        .daemon
        .sim_dir
        .join("sys/bus/pci/devices/0000:5e:00.0/virtfn0");
    assert!(vf0.join("driver").symlink_metadata().is_err());
    s.ctl("root", &["read", "nic0/vf0", "0x0"]).ok();
    assert!(s.daemon.alive());
    let _ = holder.kill();
    let _ = holder.wait();
}
