//! Who may see and touch what the daemon keeps about others: jobs (cancel), the audit log, the
//! caller's own identity; and the read-only accelctl commands end to end, as different users
//! against the real daemon on a bus enforcing the system bus policy.

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

/// A client library connection authenticated as `user`.
fn client_as(rt: &tokio::runtime::Runtime, s: &Stack, user: &str) -> Client {
    Client::from_connection(connect_as(rt, &s.bus.address, user))
}

fn assert_not_authorized<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Accel(AccelError::NotAuthorized(_))) => {}
        other => panic!("{what}: expected the daemon's NotAuthorized, got {other:?}"),
    }
}

#[test]
fn another_user_cannot_cancel_a_job_which_runs_on() {
    let s = Stack::new("cancel");
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    let rt = runtime();
    let owner = client_as(&rt, &s, "ag-tenant1");
    let other = client_as(&rt, &s, "ag-tenant2");
    let operator = client_as(&rt, &s, "ag-operator");
    // Big enough that the paced simulated loader is still busy when the cancels arrive.
    let bytes: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    let sha = sha256_hex(&bytes);
    let image = SealedImage::from_bytes(&bytes).unwrap();
    let job = rt
        .block_on(owner.program("fpga0", "region0", &image))
        .unwrap();

    // Neither another tenant nor an operator (who may not program) may cancel it.
    assert_not_authorized(
        "tenant2 cancels tenant1's job",
        rt.block_on(other.cancel_job(&job.as_ref())),
    );
    assert_not_authorized(
        "operator cancels tenant1's job",
        rt.block_on(operator.cancel_job(&job.as_ref())),
    );
    // The job runs to its end and the image is loaded.
    let message = rt
        .block_on(owner.wait_job(&job, |_| {}))
        .expect("the job was stopped by someone who may not cancel it");
    assert!(!message.is_empty());
    assert_eq!(s.obs.image_sha256("fpga0", "region0"), sha);
    let denied: Vec<serde_json::Value> = s
        .audit()
        .into_iter()
        .filter(|r| r["decision"] == "deny" && r["uid"] == uid_of("ag-tenant2"))
        .collect();
    assert!(
        !denied.is_empty(),
        "the refused cancel is not in the audit log"
    );

    // The owner may cancel its own job: the refusals above were decisions, not a broken
    // Cancel.
    let other_bytes: Vec<u8> = (0..6_000_000u32).map(|i| (i % 241) as u8).collect();
    let image = SealedImage::from_bytes(&other_bytes).unwrap();
    let job = rt
        .block_on(owner.program("fpga0", "region0", &image))
        .unwrap();
    rt.block_on(owner.cancel_job(&job.as_ref())).unwrap();
    match rt.block_on(owner.wait_job(&job, |_| {})) {
        Err(ClientError::Accel(AccelError::Cancelled(_))) => {}
        other => panic!("the owner's cancel did not stop the job: {other:?}"),
    }
    assert_ne!(
        s.obs.image_sha256("fpga0", "region0"),
        sha256_hex(&other_bytes)
    );
}

#[test]
fn who_am_i_and_the_audit_log_answer_each_caller_for_itself() {
    let s = Stack::new("whoami");
    let rt = runtime();
    for (user, roles, may_read_audit) in [
        ("ag-tenant1", vec!["tenant"], false),
        ("ag-operator", vec!["operator"], false),
        ("ag-admin", vec!["admin"], true),
        ("ag-nobody", vec![], false),
    ] {
        let client = client_as(&rt, &s, user);
        let me = rt.block_on(client.who_am_i()).unwrap();
        assert_eq!(me.uid, uid_of(user), "{user}'s uid");
        assert_eq!(me.roles, roles, "{user}'s roles");
        assert_eq!(
            me.operations.contains(&"slice.read".to_owned()),
            user != "ag-nobody",
            "{user}'s operations: {:?}",
            me.operations
        );
        let audit = rt.block_on(client.audit_log(10));
        if may_read_audit {
            let records = audit.unwrap();
            assert!(!records.is_empty() && records.len() <= 10);
            for r in &records {
                let v: serde_json::Value = serde_json::from_str(r).unwrap();
                assert!(
                    v["operation"].is_string() && v["decision"].is_string(),
                    "{v}"
                );
            }
        } else {
            assert_not_authorized(&format!("{user} reads the audit log"), audit);
        }
    }
    // The refused reads are audited with the caller's uid.
    let records = s.audit();
    for user in ["ag-tenant1", "ag-operator", "ag-nobody"] {
        assert!(
            records.iter().any(|r| r["uid"] == uid_of(user)
                && r["decision"] == "deny"
                && r["operation"] == "policy.reload"),
            "{user}'s refused audit read is not audited"
        );
    }
}

#[test]
fn accelctl_read_only_commands_end_to_end() {
    let s = Stack::new("ctl-read");
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();

    // whoami: each user as the daemon sees it.
    let me = s.ctl("ag-tenant1", &["--json", "whoami"]).ok().json();
    assert_eq!(me["uid"], uid_of("ag-tenant1"));
    assert_eq!(me["roles"], serde_json::json!(["tenant"]));
    let nobody = s.ctl("ag-nobody", &["--json", "whoami"]).ok().json();
    assert_eq!(nobody["uid"], uid_of("ag-nobody"));
    assert_eq!(nobody["roles"], serde_json::json!([]));

    // devices: the simulated host's two devices.
    let devices = s.ctl("ag-tenant1", &["--json", "devices"]).ok().json();
    let mut ids: Vec<(String, String)> = devices
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {devices}"))
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["pci_address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("fpga0".to_owned(), "0000:3b:00.0".to_owned()),
            ("nic0".to_owned(), "0000:5e:00.0".to_owned())
        ]
    );

    // slices of one device.
    let slices = s
        .ctl("ag-tenant1", &["--json", "slices", "fpga0"])
        .ok()
        .json();
    let slices = slices.as_array().unwrap();
    let region0 = slices
        .iter()
        .find(|x| x["id"] == "region0")
        .unwrap_or_else(|| panic!("no region0 in {slices:?}"));
    assert_eq!(region0["tenant"], "user:ag-tenant1");
    assert_eq!(region0["device"], "fpga0");
    assert!(slices.iter().any(|x| x["id"] == "region1"));

    // show a slice and a device.
    let shown = s
        .ctl("ag-tenant2", &["--json", "show", "fpga0/region0"])
        .ok()
        .json();
    assert_eq!(shown["tenant"], "user:ag-tenant1");
    assert_eq!(shown["writable"], serde_json::json!([[0x100, 0x200]]));
    let device = s.ctl("ag-tenant2", &["--json", "show", "nic0"]).ok().json();
    assert!(device["total_vfs"].as_u64().unwrap() > 0, "{device}");
    assert_eq!(device["num_vfs"], 0);
    // Unknown targets: NotFound, exit 4.
    s.ctl("ag-tenant2", &["--json", "show", "fpga0/region9"])
        .fails_with("NotFound");
    s.ctl("ag-tenant2", &["--json", "show", "gpu7"])
        .fails_with("NotFound");

    // audit: admins only (exit 3 for others), JSON records naming the decisions above.
    s.ctl("ag-tenant1", &["--json", "audit"])
        .fails_with("NotAuthorized");
    s.ctl("ag-operator", &["--json", "audit"])
        .fails_with("NotAuthorized");
    let audit = s
        .ctl("ag-admin", &["--json", "audit", "--max", "100"])
        .ok()
        .json();
    let records = audit.as_array().unwrap();
    assert!(records.iter().any(|r| r["operation"] == "slice.assign"
        && r["decision"] == "allow"
        && r["uid"] == uid_of("ag-operator")));
    assert!(records.iter().any(|r| r["operation"] == "policy.reload"
        && r["decision"] == "deny"
        && r["uid"] == uid_of("ag-tenant1")));
    let newest = s.ctl("ag-admin", &["--json", "audit", "--max", "1"]).ok();
    assert_eq!(newest.json().as_array().unwrap().len(), 1);
}

/// The standard interfaces a client library or a tool uses, as a tenant through the system bus
/// policy: ObjectManager (what exists), Introspectable, Peer.
#[test]
fn standard_interfaces_answer_a_tenant() {
    let s = Stack::new("std-ifaces");
    let rt = runtime();
    let conn = connect_as(&rt, &s.bus.address, "ag-tenant1");
    let root = accelgate_client::proto::names::ROOT_PATH;
    let bus_name = accelgate_client::proto::names::BUS_NAME;
    let objects = rt.block_on(async {
        zbus::fdo::ObjectManagerProxy::builder(&conn)
            .destination(bus_name)
            .path(root)
            .build()
            .await
            .unwrap()
            .get_managed_objects()
            .await
    });
    let objects = objects.expect("ObjectManager.GetManagedObjects as a tenant");
    let region0 = accelgate_client::proto::names::slice_path("fpga0", "region0");
    assert!(
        objects.keys().any(|p| p.as_str() == region0),
        "{:?}",
        objects.keys().collect::<Vec<_>>()
    );
    let xml = rt.block_on(async {
        zbus::fdo::IntrospectableProxy::builder(&conn)
            .destination(bus_name)
            .path(root)
            .build()
            .await
            .unwrap()
            .introspect()
            .await
    });
    assert!(xml
        .expect("Introspect as a tenant")
        .contains("org.accelgate.Accel1.Manager"));
    rt.block_on(async {
        zbus::fdo::PeerProxy::builder(&conn)
            .destination(bus_name)
            .path(root)
            .build()
            .await
            .unwrap()
            .ping()
            .await
    })
    .expect("Peer.Ping as a tenant");
}
