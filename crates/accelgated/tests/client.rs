//! The client library against the real daemon on simulated hardware: typed snapshots from the
//! daemon's properties, the methods' wire signatures, sealed images, job waiting (a running
//! job and one that ended before the wait) and how each error kind comes back.

use std::io::Read;

use accelgate_client::{AccelError, Client, ClientError, SealedImage};
use accelgate_testkit::polkit::connect_as;
use accelgate_testkit::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn kind_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> AccelError {
    match r {
        Err(ClientError::Accel(e)) => e,
        other => panic!("expected an error from the daemon, got {other:?}"),
    }
}

#[test]
fn no_daemon_on_the_bus_is_a_bus_error() {
    ensure_users();
    let dir = test_dir("client-nodaemon");
    let bus = TestBus::start(&dir);
    let rt = runtime();
    let client = rt.block_on(Client::connect(Some(&bus.address))).unwrap();
    let err = rt.block_on(client.who_am_i()).unwrap_err();
    assert_eq!(
        err.bus_error_name().as_deref(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{err:?}"
    );
    let err = rt.block_on(Client::connect(Some("unix:path=/nonexistent/bus")));
    assert!(matches!(err, Err(ClientError::Connect { .. })), "{err:?}");
}

#[test]
fn client_library_against_the_daemon() {
    let s = Stack::new("client");
    let rt = runtime();
    let root = rt.block_on(Client::connect(Some(&s.bus.address))).unwrap();
    let tenant = Client::from_connection(connect_as(&rt, &s.bus.address, "ag-tenant1"));

    // Manager.
    let me = rt.block_on(root.who_am_i()).unwrap();
    assert_eq!(
        (me.uid, me.roles.as_slice()),
        (0, &["admin".to_owned()][..])
    );
    assert_eq!(
        rt.block_on(root.version()).unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(rt.block_on(root.policy_revision()).unwrap().len(), 64);
    assert!(matches!(
        kind_of(rt.block_on(tenant.reload_policy())),
        AccelError::NotAuthorized(_)
    ));
    rt.block_on(root.reload_policy()).unwrap();

    // Properties become typed snapshots.
    let devices = rt.block_on(root.devices()).unwrap();
    let fpga = devices.iter().find(|d| d.id == "fpga0").unwrap();
    assert_eq!(fpga.pci_address, "0000:3b:00.0");
    assert_eq!(fpga.kind, "fpga");
    assert_eq!(fpga.slices, ["region0", "region1"]);
    let slices = rt.block_on(root.slices("fpga0")).unwrap();
    assert_eq!(slices[0].device, "fpga0");
    assert_eq!(slices[0].id, "region0");
    assert_eq!(slices[0].writable, [(0x100, 0x200)]);
    assert_eq!(slices[0].tenant, "");

    // Methods and their signatures.
    rt.block_on(root.assign("fpga0", "region0", "ag-tenant1"))
        .unwrap();
    assert_eq!(
        rt.block_on(root.slice("fpga0", "region0")).unwrap().tenant,
        "user:ag-tenant1"
    );
    rt.block_on(tenant.write("fpga0", "region0", 0x100, &[0x1234, 0x5678], 2))
        .unwrap();
    assert_eq!(
        rt.block_on(tenant.read("fpga0", "region0", 0x100, 2, 2))
            .unwrap(),
        [0x1234, 0x5678]
    );
    assert_eq!(
        sim_bar_bytes(&s.daemon.sim_dir, "0000:3b:00.0", 0x10100, 4),
        [0x34, 0x12, 0x78, 0x56]
    );
    assert!(matches!(
        kind_of(rt.block_on(tenant.write("fpga0", "region0", 0x200, &[1], 4))),
        AccelError::InvalidArgument(_)
    ));
    assert!(matches!(
        kind_of(rt.block_on(root.assign("fpga0", "region0", "ag-tenant2"))),
        AccelError::Busy(_)
    ));
    assert!(matches!(
        kind_of(rt.block_on(tenant.read("fpga0", "region1", 0, 1, 4))),
        AccelError::NotAuthorized(_)
    ));
    assert!(matches!(
        kind_of(rt.block_on(root.slice("fpga0", "nope"))),
        AccelError::NotFound(_)
    ));
    assert!(matches!(
        rt.block_on(root.slice("fpga0", "bad/id")),
        Err(ClientError::InvalidId(_))
    ));

    // VF count: up, a VF's BAR through map, and back to zero (zero is a valid count).
    rt.block_on(root.set_vf_count("nic0", 2, false)).unwrap();
    assert_eq!(rt.block_on(root.device("nic0")).unwrap().num_vfs, 2);
    let mapped = rt.block_on(root.map("nic0", "vf1")).unwrap();
    let mut first = [0u8; 4];
    std::fs::File::from(mapped).read_exact(&mut first).unwrap();
    assert_eq!(u32::from_le_bytes(first), 0xacce_e101);
    rt.block_on(root.set_vf_count("nic0", 0, false)).unwrap();
    assert_eq!(rt.block_on(root.device("nic0")).unwrap().num_vfs, 0);
    assert!(matches!(
        kind_of(rt.block_on(root.set_vf_count("nic0", 9, false))),
        AccelError::InvalidArgument(_)
    ));

    // A running job: progress is reported on the way, and the image is loaded at the end.
    let bytes: Vec<u8> = (0..4_000_000u32).map(|i| (i % 199) as u8).collect();
    let image = SealedImage::from_bytes(&bytes).unwrap();
    let job = rt
        .block_on(tenant.program("fpga0", "region0", &image))
        .unwrap();
    let mut seen = Vec::new();
    rt.block_on(tenant.wait_job(&job, |p| seen.push(p)))
        .unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.iter().any(|&p| p > 0.0 && p < 1.0),
        "progress {seen:?}"
    );
    assert_eq!(
        rt.block_on(root.slice("fpga0", "region0"))
            .unwrap()
            .image_sha256,
        sha256_hex(&bytes)
    );
    // A job that ended before the wait began (the same image again ends at once).
    let job = rt
        .block_on(tenant.program("fpga0", "region0", &image))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        rt.block_on(tenant.wait_job(&job, |_| {})).unwrap(),
        format!("image {} is already loaded", sha256_hex(&bytes))
    );
    rt.block_on(root.release("fpga0", "region0")).unwrap();
    assert_eq!(
        rt.block_on(root.slice("fpga0", "region0")).unwrap().tenant,
        ""
    );
}
