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
