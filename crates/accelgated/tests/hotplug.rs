//! PCI hotplug on the simulator: the emulator removes and re-adds a function as QEMU's
//! `device_del`/`device_add` would and announces it with the kernel's uevents (the same bytes
//! the daemon parses from netlink on a real host). The real daemon (seccomp kill mode), a
//! private bus, clients as different users.

use std::time::{Duration, Instant};

use accelgate_client::proto::names::{device_path, slice_path, BUS_NAME, ROOT_PATH};
use accelgate_testkit::*;
use zbus::export::futures_core::Stream;

const FPGA_BDF: &str = "0000:3b:00.0";
const NIC_BDF: &str = "0000:5e:00.0";

/// The object path of an InterfacesAdded or InterfacesRemoved signal.
trait Announced {
    fn object_path(&self) -> String;
}

impl Announced for zbus::fdo::InterfacesAdded {
    fn object_path(&self) -> String {
        self.args().unwrap().object_path.to_string()
    }
}

impl Announced for zbus::fdo::InterfacesRemoved {
    fn object_path(&self) -> String {
        self.args().unwrap().object_path.to_string()
    }
}

/// Takes signals from `stream` until every path of `want` was announced.
fn wait_for_paths<S>(obs: &Observer, stream: &mut S, want: &[String])
where
    S: Stream + Unpin,
    S::Item: Announced,
{
    let mut missing: Vec<String> = want.to_vec();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = obs.rt.block_on(async {
            let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx));
            tokio::time::timeout(left, next).await
        });
        match next {
            Ok(Some(signal)) => {
                let path = signal.object_path();
                missing.retain(|p| *p != path);
            }
            _ => panic!("never announced: {missing:?}"),
        }
    }
}

fn manager_devices(obs: &Observer) -> Vec<String> {
    obs.rt.block_on(async {
        let proxy = zbus::Proxy::new(
            &obs.conn,
            BUS_NAME,
            ROOT_PATH,
            "org.accelgate.Accel1.Manager",
        )
        .await
        .unwrap();
        let paths: Vec<zbus::OwnedObjectPath> = proxy.get_property("Devices").await.unwrap();
        paths.iter().map(|p| p.as_str().to_owned()).collect()
    })
}

#[test]
fn removed_devices_leave_the_bus_fail_their_jobs_and_return_with_their_assignments() {
    let s = Stack::new("hotplug");
    let sim = s.daemon.sim_dir.clone();
    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    s.ctl("ag-operator", &["vfs", "nic0", "2"]).ok();
    s.ctl("root", &["assign", "nic0/vf1", "ag-tenant2"]).ok();
    let r = s
        .ctl("ag-tenant1", &["--json", "read", "fpga0/region0", "0x0"])
        .ok();
    assert_eq!(r.json()[0]["value"], 0xacce_0000u64, "region id before");

    let om = s.obs.rt.block_on(async {
        zbus::fdo::ObjectManagerProxy::builder(&s.obs.conn)
            .destination(BUS_NAME)
            .path(ROOT_PATH)
            .build()
            .await
            .unwrap()
    });
    let mut removed = s.obs.rt.block_on(om.receive_interfaces_removed()).unwrap();
    let mut added = s.obs.rt.block_on(om.receive_interfaces_added()).unwrap();

    // A long upload (60 MiB at the simulator's 64 MiB/s) runs when the function goes.
    let image = write_image(&s.dir, "big.bin", &vec![0x5a; 60 << 20]);
    let client = s
        .obs
        .rt
        .block_on(accelgate_client::Client::connect(Some(&s.bus.address)))
        .unwrap();
    let sealed = accelgate_client::SealedImage::from_path(&image).unwrap();
    let job = s
        .obs
        .rt
        .block_on(client.program("fpga0", "region0", &sealed))
        .unwrap();
    // Uncached: a cached proxy learns of changes from signals that only a running executor
    // reads, and this test's runtime runs only inside its `block_on`s, so the job's end could
    // go unseen for as long as each Get was answered from the cache.
    let job_proxy = s.obs.rt.block_on(async {
        zbus::proxy::Builder::<zbus::Proxy>::new(&s.obs.conn)
            .destination(BUS_NAME)
            .path(job.clone())
            .interface("org.accelgate.Accel1.Job")
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    });
    let job_text = |name: &str| -> String {
        s.obs
            .rt
            .block_on(job_proxy.get_property::<String>(name))
            .unwrap()
    };
    let job_progress = || -> f64 {
        s.obs
            .rt
            .block_on(job_proxy.get_property::<f64>("Progress"))
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = sim.join("sys/class/firmware/fpga0-region0/status");
    while std::fs::read_to_string(&status).unwrap_or_default().trim() != "transferring" {
        assert!(
            Instant::now() < deadline && job_text("State") == "running",
            "the upload never started: job {} {} at {}",
            job_text("State"),
            job_text("Message"),
            job_progress()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // device_del: the device and its slices leave the bus.
    accelgate_sim::request_hotplug(&sim, false, FPGA_BDF).unwrap();
    wait_for_paths(
        &s.obs,
        &mut removed,
        &[
            device_path("fpga0").to_string(),
            slice_path("fpga0", "region0").to_string(),
            slice_path("fpga0", "region1").to_string(),
        ],
    );
    assert!(
        !manager_devices(&s.obs).contains(&device_path("fpga0").to_string()),
        "Devices still lists fpga0"
    );
    // The job ends as soon as its task sees the removal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while job_text("State") == "running" {
        assert!(Instant::now() < deadline, "the job outlived its device");
        std::thread::sleep(Duration::from_millis(10));
    }
    let state = job_text("State");
    let message = job_text("Message");
    assert_eq!(state, "failed", "the running job fails: {message}");
    assert!(
        message.contains("fpga0") && message.contains("removed"),
        "the job says why: {message}"
    );
    // Reads are refused, not answered from a dead mapping: the slice's object is gone (a
    // request already past the bus gets the engine's "was removed" refusal).
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0x0"])
        .fails_with("NotFound");
    let list = s.ctl("root", &["--json", "devices"]).ok().json();
    assert!(
        !list.to_string().contains("fpga0"),
        "devices lists fpga0: {list}"
    );

    // A PF with VFs goes the same way; the other device is untouched.
    accelgate_sim::request_hotplug(&sim, false, NIC_BDF).unwrap();
    wait_for_paths(
        &s.obs,
        &mut removed,
        &[
            device_path("nic0").to_string(),
            slice_path("nic0", "vf0").to_string(),
            slice_path("nic0", "vf1").to_string(),
        ],
    );
    assert!(manager_devices(&s.obs).is_empty());

    // device_add: back at the same address, with its policy, its assignment, usable at once
    // (the daemon turns memory decoding on; until then the BAR reads 0).
    accelgate_sim::request_hotplug(&sim, true, FPGA_BDF).unwrap();
    wait_for_paths(
        &s.obs,
        &mut added,
        &[
            device_path("fpga0").to_string(),
            slice_path("fpga0", "region0").to_string(),
            slice_path("fpga0", "region1").to_string(),
        ],
    );
    assert!(manager_devices(&s.obs).contains(&device_path("fpga0").to_string()));
    assert_eq!(s.obs.tenant("fpga0", "region0"), "user:ag-tenant1");
    assert_eq!(s.obs.image_sha256("fpga0", "region0"), "", "fresh hardware");
    let r = s
        .ctl("ag-tenant1", &["--json", "read", "fpga0/region0", "0x0"])
        .ok();
    assert_eq!(
        r.json()[0]["value"],
        0xacce_0000u64,
        "region id after the return"
    );
    s.ctl("ag-tenant1", &["write", "fpga0/region0", "0x100", "0xcafe"])
        .ok();
    assert_eq!(
        sim_bar_bytes(&sim, FPGA_BDF, 0x10100, 4),
        0xcafe_u32.to_le_bytes()
    );
    s.ctl("ag-tenant2", &["read", "fpga0/region0", "0x0"])
        .fails_with("NotAuthorized");

    // The NIC comes back with the VF count it had, and vf1 with its tenant.
    accelgate_sim::request_hotplug(&sim, true, NIC_BDF).unwrap();
    wait_for_paths(&s.obs, &mut added, &[device_path("nic0").to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.obs.slice_ids("nic0").len() < 2 {
        assert!(Instant::now() < deadline, "nic0's VFs were not restored");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.obs.num_vfs("nic0"), 2);
    assert_eq!(s.obs.tenant("nic0", "vf1"), "user:ag-tenant2");
    s.ctl("ag-tenant2", &["read", "nic0/vf1", "0x0"]).ok();

    let log = s.daemon.log_text();
    assert!(
        log.contains(&format!("memory decoding of {FPGA_BDF} turned on")),
        "{log}"
    );
    let mut daemon = s.daemon;
    assert!(
        daemon.alive(),
        "the daemon (seccomp kill mode) died:\n{log}"
    );
}

#[test]
fn hotplug_of_an_address_outside_the_policy_changes_nothing() {
    // The standard host with nic0 left out of the policy: its removal and return are seen
    // and ignored.
    let s = Stack::with_policy("hotplug-unlisted", |p| {
        // nic0's tables run up to the first role.
        let start = p
            .find("[[device]]\nid = \"nic0\"")
            .expect("nic0 in the policy");
        let end = p.find("[[role]]").expect("roles in the policy");
        assert!(start < end, "nic0 comes before the roles");
        format!("{}{}", &p[..start], &p[end..])
    });
    let before = manager_devices(&s.obs);
    assert_eq!(before, vec![device_path("fpga0").to_string()]);
    accelgate_sim::request_hotplug(&s.daemon.sim_dir, false, NIC_BDF).unwrap();
    accelgate_sim::request_hotplug(&s.daemon.sim_dir, true, NIC_BDF).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(manager_devices(&s.obs), before);
    s.ctl("root", &["read", "fpga0/region0", "0x0"]).ok();
}

/// One `InterfacesAdded` or `InterfacesRemoved` seen on the bus, from whichever sender.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Announcement {
    member: String,
    sender: String,
    emitted_at: String,
    object: String,
    interfaces: Vec<String>,
}

/// Every ObjectManager signal on the bus, whoever sends it (no sender in the match rule: the
/// daemon's objects of start-up would be announced before it owns its name).
fn all_announcements(obs: &Observer) -> zbus::MessageStream {
    obs.rt.block_on(async {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.freedesktop.DBus.ObjectManager")
            .build()
            .unwrap();
        zbus::MessageStream::for_match_rule(rule, &obs.conn, std::num::NonZeroUsize::new(100_000))
            .await
            .unwrap()
    })
}

fn announcement(
    msg: &zbus::Message,
    props: &mut Vec<(
        String,
        std::collections::HashMap<String, zbus::OwnedVariant>,
    )>,
) -> Announcement {
    let header = msg.header();
    let member = header.member().unwrap().to_string();
    let (object, interfaces) = if member == "InterfacesAdded" {
        type Interfaces = std::collections::HashMap<
            String,
            std::collections::HashMap<String, zbus::OwnedVariant>,
        >;
        let (object, interfaces): (zbus::OwnedObjectPath, Interfaces) =
            msg.body().deserialize().unwrap();
        let mut names: Vec<String> = interfaces.keys().cloned().collect();
        names.sort();
        for (name, p) in interfaces {
            props.push((format!("{} {name}", object.as_str()), p));
        }
        (object.to_string(), names)
    } else {
        let (object, interfaces): (zbus::OwnedObjectPath, Vec<String>) =
            msg.body().deserialize().unwrap();
        (object.to_string(), interfaces)
    };
    Announcement {
        member,
        sender: header.sender().map(|s| s.to_string()).unwrap_or_default(),
        emitted_at: header.path().map(|p| p.to_string()).unwrap_or_default(),
        object,
        interfaces,
    }
}

/// The signals of `stream` until `want` of them came (within 20 s) and then none for `quiet`:
/// a duplicate arrives in that time, as the daemon sends them in one go.
fn collect(
    obs: &Observer,
    stream: &mut zbus::MessageStream,
    want: usize,
    quiet: Duration,
    props: &mut Vec<(
        String,
        std::collections::HashMap<String, zbus::OwnedVariant>,
    )>,
) -> Vec<Announcement> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wait = if got.len() < want {
            deadline.saturating_duration_since(Instant::now())
        } else {
            quiet
        };
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx));
        match obs
            .rt
            .block_on(async { tokio::time::timeout(wait, next).await })
        {
            Ok(Some(Ok(msg))) => got.push(announcement(&msg, props)),
            Ok(Some(Err(e))) => panic!("signal stream: {e}"),
            Ok(None) => panic!("signal stream ended"),
            Err(_) => break,
        }
    }
    got.sort();
    got
}

/// What `collect` should find: `member` for each path of `objects` with `interface`, sent
/// by the daemon from the root.
fn expected(
    daemon: &str,
    member: &str,
    interface_of: impl Fn(&str) -> &'static str,
    objects: &[String],
) -> Vec<Announcement> {
    let mut want: Vec<Announcement> = objects
        .iter()
        .map(|o| Announcement {
            member: member.into(),
            sender: daemon.into(),
            emitted_at: ROOT_PATH.into(),
            object: o.clone(),
            interfaces: vec![interface_of(o).into()],
        })
        .collect();
    want.sort();
    want
}

fn interface_of(path: &str) -> &'static str {
    if path.contains("/slices/") {
        "org.accelgate.Accel1.Slice"
    } else if path.contains("/jobs/") {
        "org.accelgate.Accel1.Job"
    } else {
        "org.accelgate.Accel1.Device"
    }
}

/// Objects that come or go after start-up (a VF count change, a job, a device hot-removed and
/// hot-added) are announced exactly once each, with their properties; the objects of start-up
/// are announced by nothing (they are exported before the name is taken, when nobody can be
/// listening). zbus's `object-manager` feature, enabled by any crate of the workspace (a
/// dev-dependency too: its features reach the daemon built for these tests), would announce
/// every object of start-up and every later one twice.
#[test]
fn objects_after_start_up_are_announced_exactly_once() {
    ensure_users();
    let dir = test_dir("announce");
    let bus = TestBus::start(&dir);
    let obs = Observer::connect(&bus.address);
    let mut stream = all_announcements(&obs);
    let daemon = TestDaemon::start(&bus, &dir, &repo_path("policy/simulated.toml"));
    let owner = obs.rt.block_on(async {
        let dbus = zbus::fdo::DBusProxy::new(&obs.conn).await.unwrap();
        let name = zbus::names::BusName::try_from(BUS_NAME).unwrap();
        dbus.get_name_owner(name).await.unwrap().to_string()
    });
    let quiet = Duration::from_millis(500);
    let mut props = Vec::new();

    let early = collect(&obs, &mut stream, 0, quiet, &mut props);
    assert!(
        early.is_empty(),
        "the objects of start-up were announced (zbus's object-manager feature is on?): {early:?}"
    );

    // VFs: three come, then two go.
    ctl(&bus.address, "root", &["vfs", "nic0", "3"]).ok();
    let vfs: Vec<String> = (0..3)
        .map(|i| slice_path("nic0", &format!("vf{i}")).to_string())
        .collect();
    let got = collect(&obs, &mut stream, 3, quiet, &mut props);
    assert_eq!(got, expected(&owner, "InterfacesAdded", interface_of, &vfs));
    // Each with every property of its interface, as GetManagedObjects has them.
    let vf2 = props
        .iter()
        .find(|(k, _)| *k == format!("{} org.accelgate.Accel1.Slice", vfs[2]))
        .map(|(_, p)| p)
        .expect("vf2's properties");
    let mut names: Vec<&str> = vf2.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Device",
            "Id",
            "ImageSha256",
            "Kind",
            "Mappable",
            "Size",
            "Tenant",
            "Writable"
        ]
    );
    let id = String::try_from(vf2["Id"].try_clone().unwrap()).unwrap();
    assert_eq!(id, "vf2");
    ctl(&bus.address, "root", &["vfs", "nic0", "1"]).ok();
    let got = collect(&obs, &mut stream, 2, quiet, &mut props);
    assert_eq!(
        got,
        expected(&owner, "InterfacesRemoved", interface_of, &vfs[1..])
    );

    // A job object.
    let img = write_image(&dir, "img.bin", b"announced job");
    let out = ctl(
        &bus.address,
        "root",
        &["--json", "program", "fpga0/region0", img.to_str().unwrap()],
    )
    .ok();
    let got = collect(&obs, &mut stream, 1, quiet, &mut props);
    assert_eq!(got.len(), 1, "{got:?} ({})", out.json());
    assert!(got[0].object.starts_with("/org/accelgate/Accel1/jobs/"));
    assert_eq!(
        got,
        expected(
            &owner,
            "InterfacesAdded",
            interface_of,
            &[got[0].object.clone()]
        )
    );

    // device_del, then device_add: the device and its VF leave, and return with its VF count.
    let nic = [
        device_path("nic0").to_string(),
        slice_path("nic0", "vf0").to_string(),
    ];
    accelgate_sim::request_hotplug(&daemon.sim_dir, false, NIC_BDF).unwrap();
    let got = collect(&obs, &mut stream, 2, quiet, &mut props);
    assert_eq!(
        got,
        expected(&owner, "InterfacesRemoved", interface_of, &nic)
    );
    accelgate_sim::request_hotplug(&daemon.sim_dir, true, NIC_BDF).unwrap();
    let got = collect(&obs, &mut stream, 2, quiet, &mut props);
    assert_eq!(got, expected(&owner, "InterfacesAdded", interface_of, &nic));
    drop(daemon);
}
