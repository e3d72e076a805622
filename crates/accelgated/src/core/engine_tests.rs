//! The engine without any bus: requests made of a `Caller` value, a fake further gate that
//! records what it was asked, events recorded in memory, and the simulated host underneath
//! (the same kernel interfaces the daemon uses on a real host).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accelgate_hw::HwRoot;
use accelgate_policy::{RolePolicy, StaticAccounts};
use accelgate_proto::{ErrorKind, JobState, Operation};

use super::audit::AuditLog;
use super::state::StateStore;
use super::*;

const TENANT: u32 = 41001;
const OTHER_TENANT: u32 = 41002;
const OPERATOR: u32 = 41003;
const TENANTS: u32 = 42001;
const OPERATORS: u32 = 42002;
const ADMINS: u32 = 42003;

use accelgate_testkit::TempDir;

/// A further gate that records every question and answers as told.
#[derive(Default)]
struct FakeGate {
    asked: Mutex<Vec<(Operation, String, Option<String>)>>,
    deny: AtomicBool,
    /// Program questions wait for a read guard of this: a test holding the write guard plays
    /// a polkit round trip that takes long (an interactive prompt).
    slow_program: tokio::sync::RwLock<()>,
}

struct SharedGate(Arc<FakeGate>);

impl Gate for SharedGate {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn check<'a>(&'a self, req: &'a GateRequest<'a>) -> GateFuture<'a> {
        let gate = self.0.clone();
        let entry = (
            req.operation,
            req.target.to_string(),
            req.image_sha256.map(str::to_owned),
        );
        let slow = req.operation == Operation::SliceProgram;
        Box::pin(async move {
            gate.asked.lock().unwrap().push(entry);
            if slow {
                let _wait = gate.slow_program.read().await;
            }
            if gate.deny.load(Ordering::SeqCst) {
                Err("fake gate says no".into())
            } else {
                Ok(())
            }
        })
    }
}

struct Rig {
    engine: Arc<Engine>,
    gate: Arc<FakeGate>,
    events: Arc<RecordedEvents>,
    hw: HwRoot,
    _emulator: accelgate_sim::Emulator,
    dir: TempDir,
}

fn accounts() -> StaticAccounts {
    StaticAccounts::new()
        .with_user("root", 0)
        .with_group("accel-tenants", TENANTS)
        .with_group("accel-operators", OPERATORS)
        .with_group("accel-admins", ADMINS)
}

fn policy_text() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy/simulated.toml"),
    )
    .unwrap()
}

async fn rig(tag: &str) -> Rig {
    let dir = TempDir::new(tag);
    let sim = dir.0.join("sim");
    accelgate_sim::build(&sim, &accelgate_sim::SimSpec::standard()).unwrap();
    let emulator = accelgate_sim::Emulator::start(&sim).unwrap();
    let policy_path = dir.0.join("policy.toml");
    std::fs::write(&policy_path, policy_text()).unwrap();
    let policy = RolePolicy::parse_str_with(&policy_text(), "policy.toml", &accounts()).unwrap();
    let gate = Arc::new(FakeGate::default());
    let events = Arc::new(RecordedEvents::default());
    let hw = HwRoot::simulated(&sim);
    let engine = Engine::new(EngineParts {
        hw: hw.clone(),
        policy_path,
        policy,
        state: StateStore::open(&dir.0.join("state")).unwrap(),
        audit: AuditLog::open_with_journal(None, None).unwrap(),
        gates: vec![Box::new(SharedGate(gate.clone()))],
        events: events.clone(),
    })
    .await;
    Rig {
        engine,
        gate,
        events,
        hw,
        _emulator: emulator,
        dir,
    }
}

fn request(uid: u32, gids: &[u32]) -> Request {
    Request {
        caller: Arc::new(Caller {
            sender: format!(":1.{uid}"),
            uid,
            gids: gids.to_vec(),
            pid: None,
            process_fd: None,
        }),
        interactive: false,
    }
}

fn root() -> Request {
    request(0, &[0])
}

fn region0() -> Target {
    Target::Slice("fpga0".into(), "region0".into())
}

fn image_fd(bytes: &[u8]) -> OwnedFd {
    let dir = TempDir::new("img");
    let path = dir.0.join("image.bin");
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::open(&path).unwrap().into()
}

fn audit_gates(engine: &Engine) -> Vec<(String, String)> {
    engine
        .audit()
        .recent(100)
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["decision"].as_str().unwrap().to_owned(),
                v["gate"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait_job(engine: &Engine, id: JobId) -> JobStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = engine.job(id).unwrap().status();
        if st.state.is_final() {
            return st;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {st:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_run_in_order_and_deny_wins() {
    let r = rig("gates").await;
    // No role: the role gate refuses and the further gate is never asked.
    let nobody = request(OTHER_TENANT, &[]);
    let err = r
        .engine
        .read(&nobody, region0(), 0, 1, 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotAuthorized);
    assert!(r.gate.asked.lock().unwrap().is_empty());
    assert_eq!(audit_gates(&r.engine), [("deny".into(), "role".into())]);

    // A role that grants: the further gate is asked, and its no wins over the role's yes.
    r.gate.deny.store(true, Ordering::SeqCst);
    let err = r
        .engine
        .read(&root(), region0(), 0, 1, 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotAuthorized);
    assert_eq!(
        r.gate.asked.lock().unwrap().as_slice(),
        [(Operation::SliceRead, "fpga0/region0".to_owned(), None)]
    );
    assert_eq!(audit_gates(&r.engine)[1], ("deny".into(), "fake".into()));

    // Every gate yes: allowed, and audited as such.
    r.gate.deny.store(false, Ordering::SeqCst);
    let id = r.engine.read(&root(), region0(), 0, 1, 4).await.unwrap();
    assert_eq!(id.len(), 1);
    assert_eq!(audit_gates(&r.engine)[2], ("allow".into(), "all".into()));

    // A device limit after every gate said yes is its own audited denial.
    let err = r
        .engine
        .write(&root(), region0(), 0x0, &[1], 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        audit_gates(&r.engine)[4],
        ("deny".into(), "device-limits".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_scopes_a_tenant_and_release_scrubs() {
    let r = rig("assign").await;
    let tenant = request(TENANT, &[TENANTS]);
    let operator = request(OPERATOR, &[OPERATORS]);
    // Not assigned: the tenant role's scope refuses.
    let err = r
        .engine
        .write(&tenant, region0(), 0x100, &[7], 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotAuthorized);

    r.engine
        .assign(&operator, region0(), &format!("uid:{TENANT}"))
        .await
        .unwrap();
    // Idempotent, and a second tenant is refused while the first holds it.
    r.engine
        .assign(&operator, region0(), &format!("uid:{TENANT}"))
        .await
        .unwrap();
    let err = r
        .engine
        .assign(&operator, region0(), &format!("uid:{OTHER_TENANT}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert_eq!(
        r.events.take(),
        [Event::SliceChanged {
            device: "fpga0".into(),
            slice: "region0".into()
        }],
        "one change, announced once"
    );

    r.engine
        .write(&tenant, region0(), 0x100, &[0xcafe], 4)
        .await
        .unwrap();
    assert_eq!(
        r.engine
            .read(&tenant, region0(), 0x100, 1, 4)
            .await
            .unwrap(),
        [0xcafe]
    );
    r.engine.release(&operator, region0()).await.unwrap();
    assert!(r.engine.slice_tenant("fpga0", "region0").is_none());
    assert_eq!(
        r.engine
            .read(&root(), region0(), 0x100, 1, 4)
            .await
            .unwrap(),
        [0],
        "release zeroes the writable registers"
    );
    let err = r
        .engine
        .read(&tenant, region0(), 0x100, 1, 4)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotAuthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_is_a_job_polkit_sees_the_hash_and_a_repeat_writes_nothing() {
    let r = rig("program").await;
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let sha = accelgate_hw::digest::sha256_hex(&image);
    let id = r
        .engine
        .program(&root(), region0(), image_fd(&image))
        .await
        .unwrap();
    let st = wait_job(&r.engine, id).await;
    assert_eq!(st.state, JobState::Succeeded, "{st:?}");
    assert_eq!(r.engine.slice_image("fpga0", "region0"), Some(sha.clone()));
    assert!(r.gate.asked.lock().unwrap().contains(&(
        Operation::SliceProgram,
        "fpga0/region0".into(),
        Some(sha.clone())
    )));
    let events = r.events.take();
    assert_eq!(events.first(), Some(&Event::JobStarted(id)));
    assert!(events.contains(&Event::JobFinished(id)));

    // The loader's data file is what the kernel interface received: a repeat must not write.
    let data = r.hw.fw_upload_dir("fpga0-region0").join("data");
    let before = std::fs::metadata(&data).unwrap().modified().unwrap();
    let again = r
        .engine
        .program(&root(), region0(), image_fd(&image))
        .await
        .unwrap();
    let st = wait_job(&r.engine, again).await;
    assert_eq!(st.state, JobState::Succeeded);
    assert!(st.message.contains("already loaded"), "{}", st.message);
    assert_eq!(
        std::fs::metadata(&data).unwrap().modified().unwrap(),
        before
    );

    // A slice without a loader refuses before anything is read.
    r.engine
        .set_vf_count(&root(), Target::Device("nic0".into()), 1, false)
        .await
        .unwrap();
    let err = r
        .engine
        .program(
            &root(),
            Target::Slice("nic0".into(), "vf0".into()),
            image_fd(b"x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vf_count_changes_add_and_remove_slices_and_assigned_vfs_need_force() {
    let r = rig("vfs").await;
    let nic = || Target::Device("nic0".into());
    r.engine
        .set_vf_count(&root(), nic(), 2, false)
        .await
        .unwrap();
    assert_eq!(
        r.events.take(),
        [
            Event::SlicesAdded {
                device: "nic0".into(),
                slices: vec!["vf0".into(), "vf1".into()]
            },
            Event::DeviceChanged {
                device: "nic0".into()
            }
        ]
    );
    r.engine
        .assign(
            &root(),
            Target::Slice("nic0".into(), "vf1".into()),
            &format!("uid:{TENANT}"),
        )
        .await
        .unwrap();
    let err = r
        .engine
        .set_vf_count(&root(), nic(), 1, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert_eq!(
        r.engine.device("nic0").unwrap().num_vfs(),
        2,
        "nothing changed"
    );
    r.engine
        .set_vf_count(&root(), nic(), 1, true)
        .await
        .unwrap();
    assert_eq!(r.engine.device("nic0").unwrap().num_vfs(), 1);
    assert!(r.engine.slice_tenant("nic0", "vf1").is_none());
    // Too many is refused by the device limit.
    let err = r
        .engine
        .set_vf_count(&root(), nic(), 99, false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vf_window_is_mapped_on_first_use_with_memory_decoding_on() {
    let r = rig("lazyvf").await;
    r.engine
        .set_vf_count(&root(), Target::Device("nic0".into()), 2, false)
        .await
        .unwrap();
    let slice = r.engine.device("nic0").unwrap().slice("vf1").unwrap();
    assert!(!slice.is_mapped(), "mapped before anyone used it");
    let resource = slice.mappable_resource().unwrap();
    assert!(resource.ends_with("virtfn1/resource0"), "{resource:?}");
    // As QEMU's igb VFs come up: memory decoding off.
    let config = resource.parent().unwrap().join("config");
    let mut header = std::fs::read(&config).unwrap();
    header[4] &= !0x2;
    std::fs::write(&config, &header).unwrap();
    let size = slice.with_window(|w| w.size()).unwrap();
    assert_eq!(size, slice.size());
    assert!(slice.is_mapped());
    assert_eq!(
        std::fs::read(&config).unwrap()[4] & 0x2,
        0x2,
        "decoding stayed off"
    );
    // A hand-over takes out even a window never used (no first use maps it meanwhile) and
    // maps it afresh at once when it ends.
    let unused = r.engine.device("nic0").unwrap().slice("vf0").unwrap();
    assert!(!unused.is_mapped());
    let during = unused.hand_over(|| unused.with_window(|_| ()).map_err(|e| e.to_string()));
    let during = during.unwrap_err();
    assert!(during.contains("being handed over"), "{during}");
    assert!(unused.is_mapped(), "not mapped afresh after the hand-over");
    // Revoked before the VFs go: not mapped again, not even on use.
    r.engine
        .set_vf_count(&root(), Target::Device("nic0".into()), 0, false)
        .await
        .unwrap();
    assert!(slice.is_revoked());
    assert!(slice.with_window(|_| ()).is_err());
    assert!(!slice.is_mapped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_refuses_while_slices_are_assigned_and_flash_refuses_unsigned() {
    let r = rig("configure").await;
    let nic = || Target::Device("nic0".into());
    r.engine
        .set_vf_count(&root(), nic(), 1, false)
        .await
        .unwrap();
    r.engine
        .assign(
            &root(),
            Target::Slice("nic0".into(), "vf0".into()),
            &format!("uid:{TENANT}"),
        )
        .await
        .unwrap();
    let err = r
        .engine
        .configure(&root(), nic(), image_fd(b"personality"), false)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    let id = r
        .engine
        .configure(&root(), nic(), image_fd(b"personality"), true)
        .await
        .unwrap();
    assert_eq!(wait_job(&r.engine, id).await.state, JobState::Succeeded);
    assert_eq!(
        r.engine.device_personality("nic0"),
        Some(accelgate_hw::digest::sha256_hex(b"personality"))
    );

    let asked = r.gate.asked.lock().unwrap().len();
    let err = r
        .engine
        .flash(
            &root(),
            Target::Device("fpga0".into()),
            image_fd(b"ACCELGATE-FW 9\nunsigned"),
            None,
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::VerificationFailed);
    assert_eq!(
        r.gate.asked.lock().unwrap().len(),
        asked,
        "an unverified image never reaches polkit"
    );
    assert_eq!(r.engine.firmware_info("fpga0").version, "1.0.0-factory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_announces_itself_whoever_asked() {
    let r = rig("reload").await;
    let old = r.engine.policy().revision.clone();
    // Same files: nothing to announce.
    r.engine.reload_policy_files().await.unwrap();
    assert!(r.events.take().is_empty());
    // A changed file (as after SIGHUP): the new revision is announced.
    let path = r.dir.0.join("policy.toml");
    std::fs::write(&path, policy_text().replace("max = 8", "max = 4")).unwrap();
    // Loading resolves names through the system's accounts: give the policy only root.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("groups = [\"accel-tenants\"]", "users = [\"root\"]")
        .replace("groups = [\"accel-operators\"]", "users = [\"root\"]")
        .replace("groups = [\"accel-admins\"]\n", "");
    std::fs::write(&path, text).unwrap();
    r.engine.reload_policy_files().await.unwrap();
    let revision = r.engine.policy().revision.clone();
    assert_ne!(revision, old);
    assert!(r
        .events
        .take()
        .contains(&Event::PolicyReloaded { revision }));
    assert_eq!(r.engine.device("nic0").unwrap().max_vfs(), 4);
    // A bad file keeps the old policy and announces nothing.
    std::fs::write(&path, "[[device]]\nid = 3\n").unwrap();
    let err = r.engine.reload_policy_files().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(r.events.take().is_empty());
    // A reload by signal asks no gate: it is the admin's own file.
    assert!(r.gate.asked.lock().unwrap().is_empty());
}

/// A tenant's Program waits at polkit; meanwhile the operator releases the slice and assigns
/// it to another tenant. When polkit answers, the first tenant's image must not be loaded into
/// the second tenant's region: the role and assignment are checked again at the point of use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_rechecks_the_assignment_after_polkit() {
    let r = rig("recheck").await;
    let tenant = request(TENANT, &[TENANTS]);
    let other = format!("uid:{OTHER_TENANT}");
    let operator = request(OPERATOR, &[OPERATORS]);
    r.engine
        .assign(&operator, region0(), &format!("uid:{TENANT}"))
        .await
        .unwrap();
    let image: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
    let polkit_busy = r.gate.slow_program.write().await;
    let engine = r.engine.clone();
    let fd = image_fd(&image);
    let program = tokio::spawn(async move { engine.program(&tenant, region0(), fd).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !r
        .gate
        .asked
        .lock()
        .unwrap()
        .iter()
        .any(|(op, _, _)| *op == Operation::SliceProgram)
    {
        assert!(Instant::now() < deadline, "Program never reached polkit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.engine.release(&operator, region0()).await.unwrap();
    r.engine.assign(&operator, region0(), &other).await.unwrap();
    drop(polkit_busy);
    let outcome = program.await.unwrap();
    if let Ok(id) = &outcome {
        wait_job(&r.engine, *id).await;
    }
    assert_eq!(
        r.engine.slice_image("fpga0", "region0"),
        None,
        "the first tenant's image landed in the second tenant's region"
    );
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::NotAuthorized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_is_persisted_by_the_writer_and_a_failed_write_changes_nothing() {
    let r = rig("persist").await;
    let operator = request(OPERATOR, &[OPERATORS]);
    let state_file = r.dir.0.join("state/state.json");
    r.engine
        .assign(&operator, region0(), &format!("uid:{TENANT}"))
        .await
        .unwrap();
    let on_disk = std::fs::read_to_string(&state_file).unwrap();
    assert!(on_disk.contains("fpga0/region0"), "{on_disk}");
    assert!(r.engine.slice_tenant("fpga0", "region0").is_some());

    // The state directory is gone: the release's write fails, and memory keeps the tenant.
    let backup = r.dir.0.join("state-moved");
    std::fs::rename(r.dir.0.join("state"), &backup).unwrap();
    let err = r.engine.release(&operator, region0()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Failed, "{err}");
    assert!(r.engine.slice_tenant("fpga0", "region0").is_some());

    // Back in place, the next update starts from the state that is in effect.
    std::fs::rename(&backup, r.dir.0.join("state")).unwrap();
    r.engine.release(&operator, region0()).await.unwrap();
    assert!(r.engine.slice_tenant("fpga0", "region0").is_none());
    let on_disk = std::fs::read_to_string(&state_file).unwrap();
    assert!(!on_disk.contains("fpga0/region0"), "{on_disk}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_properties_come_from_memory_and_are_read_again_when_they_may_change() {
    let r = rig("fw-kept").await;
    let before = r.engine.firmware_info("fpga0");
    assert_eq!(
        (before.version.as_str(), before.state.as_str()),
        ("1.0.0-factory", "idle")
    );
    // The device's slot attribute turns unreadable behind the daemon's back. A property getter
    // runs on the runtime's threads, so it answers from memory and touches no device...
    let active =
        r.hw.fw_upload_dir("fpga0-flash")
            .join("device/fw_slots/active_slot");
    let good = std::fs::read_to_string(&active).unwrap();
    std::fs::write(&active, "neither\n").unwrap();
    assert_eq!(r.engine.firmware_info("fpga0"), before);
    // ...until something that may change it happens: a reload reads every device again.
    let path = r.dir.0.join("policy.toml");
    std::fs::write(&path, policy_text().replace("max = 8", "max = 4")).unwrap();
    r.engine.reload_policy_files().await.unwrap();
    let after = r.engine.firmware_info("fpga0");
    assert!(after.state.starts_with("error"), "{after:?}");
    std::fs::write(&active, good).unwrap();
    r.engine.reload_policy_files().await.unwrap();
    std::fs::write(&path, policy_text()).unwrap();
    r.engine.reload_policy_files().await.unwrap();
    assert_eq!(r.engine.firmware_info("fpga0"), before);
}
