//! The introspection XML checked into dbus/ is what the daemon really exports.
//!
//! To regenerate the files after an intended API change: `ACCELGATE_BLESS=1 cargo test --test
//! introspection`, then review the diff. A blessing run writes the files and fails, so it never
//! passes as a check.

use std::fs;
use std::time::{Duration, Instant};

use accelgate_testkit::*;

/// The `<interface name="NAME">...</interface>` element of an introspection document, with
/// each line trimmed.
fn interface_element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<interface name=\"{name}\">"))?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    Some(
        xml[start..end]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
}

fn introspect(obs: &Observer, path: &str) -> String {
    obs.rt.block_on(async {
        let proxy = zbus::fdo::IntrospectableProxy::builder(&obs.conn)
            .destination("org.accelgate.Accel1")
            .path(path)
            .build()
            .await
            .unwrap();
        proxy.introspect().await.unwrap()
    })
}

#[test]
fn checked_in_xml_matches_the_exported_interfaces() {
    ensure_users();
    let dir = test_dir("introspection");
    let bus = TestBus::start(&dir);
    let daemon = TestDaemon::start(&bus, &dir, &repo_path("policy/simulated.toml"));
    let obs = Observer::connect(&bus.address);

    // A job object exists only while a job lingers: start one.
    let img = write_image(&dir, "img.bin", b"introspection image");
    ctl(
        &bus.address,
        "root",
        &["program", "fpga0/region0", img.to_str().unwrap()],
    )
    .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !introspect(&obs, "/org/accelgate/Accel1/jobs").contains("<node name=\"1\"") {
        assert!(Instant::now() < deadline, "no job object appeared");
        std::thread::sleep(Duration::from_millis(20));
    }

    let objects = [
        ("Manager", "/org/accelgate/Accel1"),
        ("Device", "/org/accelgate/Accel1/devices/fpga0"),
        (
            "Slice",
            "/org/accelgate/Accel1/devices/fpga0/slices/region0",
        ),
        ("Job", "/org/accelgate/Accel1/jobs/1"),
    ];
    let bless = std::env::var_os("ACCELGATE_BLESS").is_some();
    for (short, path) in objects {
        let name = format!("org.accelgate.Accel1.{short}");
        let exported = interface_element(&introspect(&obs, path), &name)
            .unwrap_or_else(|| panic!("{path} does not export {name}"));
        let file = repo_path(&format!("dbus/{name}.xml"));
        if bless {
            let doc = format!(
                "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
                 \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- The contract of \
                 {name}; tests/introspection.rs checks that accelgated exports exactly this. -->\n<node>\n{exported}</node>\n"
            );
            fs::write(&file, doc).unwrap();
            continue;
        }
        let checked_in =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let checked_in = interface_element(&checked_in, &name).unwrap_or_default();
        assert_eq!(
            checked_in,
            exported,
            "{} differs from what the daemon exports",
            file.display()
        );
    }
    assert!(
        !bless,
        "ACCELGATE_BLESS is set: the XML files were rewritten, not checked; review the diff and \
         run again without it"
    );
    // The root also carries the standard ObjectManager.
    assert!(
        introspect(&obs, "/org/accelgate/Accel1").contains("org.freedesktop.DBus.ObjectManager")
    );
    drop(daemon);
}

/// The daemon serves the ObjectManager itself (writing the reply as it walks the objects): its
/// GetManagedObjects lists every device, slice and job object, each with exactly what
/// Properties.GetAll says of it.
#[test]
fn managed_objects_are_every_object_with_what_get_all_says() {
    ensure_users();
    let dir = test_dir("managed");
    let bus = TestBus::start(&dir);
    let daemon = TestDaemon::start(&bus, &dir, &repo_path("policy/simulated.toml"));
    let obs = Observer::connect(&bus.address);
    ctl(&bus.address, "root", &["vfs", "nic0", "2"]).ok();
    ctl(
        &bus.address,
        "root",
        &["assign", "fpga0/region1", "ag-tenant1"],
    )
    .ok();
    let img = write_image(&dir, "img.bin", b"managed objects image");
    ctl(
        &bus.address,
        "root",
        &["program", "fpga0/region0", img.to_str().unwrap()],
    )
    .ok();

    let managed = |obs: &Observer| -> zbus::fdo::ManagedObjects {
        obs.rt.block_on(async {
            zbus::fdo::ObjectManagerProxy::builder(&obs.conn)
                .destination("org.accelgate.Accel1")
                .path("/org/accelgate/Accel1")
                .build()
                .await
                .unwrap()
                .get_managed_objects()
                .await
                .unwrap()
        })
    };
    let get_all = |obs: &Observer, path: &str, iface: &str| {
        obs.rt.block_on(async {
            let props = zbus::fdo::PropertiesProxy::builder(&obs.conn)
                .destination("org.accelgate.Accel1")
                .path(path.to_owned())
                .build()
                .await
                .unwrap();
            props
                .get_all(zbus::names::InterfaceName::try_from(iface.to_owned()).unwrap())
                .await
                .unwrap()
        })
    };
    // The job is over (its properties no longer change) before the two views are compared.
    let job = "/org/accelgate/Accel1/jobs/1";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let objects = managed(&obs);
        let state = objects
            .iter()
            .find(|(p, _)| p.as_str() == job)
            .and_then(|(_, ifaces)| ifaces.values().next())
            .and_then(|props| props.get("State"))
            .and_then(|v| String::try_from(v.clone()).ok());
        if state.as_deref() == Some("succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not succeed: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let objects = managed(&obs);
    let mut paths: Vec<&str> = objects.keys().map(|p| p.as_str()).collect();
    paths.sort_unstable();
    for expected in [
        "/org/accelgate/Accel1/devices/fpga0",
        "/org/accelgate/Accel1/devices/fpga0/slices/region0",
        "/org/accelgate/Accel1/devices/fpga0/slices/region1",
        "/org/accelgate/Accel1/devices/nic0",
        "/org/accelgate/Accel1/devices/nic0/slices/vf0",
        "/org/accelgate/Accel1/devices/nic0/slices/vf1",
        job,
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(
        !paths.contains(&"/org/accelgate/Accel1"),
        "the root is the manager"
    );
    for (path, interfaces) in &objects {
        assert_eq!(interfaces.len(), 1, "{path}: {interfaces:?}");
        for (iface, props) in interfaces {
            let direct = get_all(&obs, path.as_str(), iface.as_str());
            let mut names: Vec<&String> = props.keys().collect();
            let mut direct_names: Vec<&String> = direct.keys().collect();
            names.sort();
            direct_names.sort();
            assert_eq!(names, direct_names, "{path} {iface}: property names");
            for (name, value) in props {
                assert_eq!(
                    Some(value),
                    direct.get(name),
                    "{path} {iface}.{name}: GetManagedObjects vs GetAll"
                );
            }
        }
    }
    let tenant = objects
        .iter()
        .find(|(p, _)| p.as_str().ends_with("fpga0/slices/region1"))
        .and_then(|(_, i)| i.values().next())
        .and_then(|props| props.get("Tenant"))
        .and_then(|v| String::try_from(v.clone()).ok());
    assert_eq!(tenant.as_deref(), Some("user:ag-tenant1"));
    drop(daemon);
}
