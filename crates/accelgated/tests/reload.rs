//! Policy reloads end to end: SIGHUP and `ReloadPolicy` with a good file serve the new
//! revision and announce it (PropertiesChanged of PolicyRevision and Devices on the manager);
//! a bad file keeps the old revision, announces nothing and logs why.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use accelgate_client::proto::names::{BUS_NAME, ROOT_PATH};
use accelgate_testkit::*;
use nix::sys::signal::Signal;
use zbus::export::futures_core::Stream;

const MANAGER: &str = "org.accelgate.Accel1.Manager";

type Changes = std::pin::Pin<Box<dyn Stream<Item = zbus::fdo::PropertiesChanged> + Send>>;

fn manager_changes(s: &Stack) -> Changes {
    let props = s
        .obs
        .rt
        .block_on(
            zbus::fdo::PropertiesProxy::builder(&s.obs.conn)
                .destination(BUS_NAME)
                .path(ROOT_PATH)
                .build(),
        )
        .unwrap();
    Box::pin(
        s.obs
            .rt
            .block_on(props.receive_properties_changed())
            .unwrap(),
    )
}

/// The manager's properties announced within `wait`: name -> value as text.
fn announced(s: &Stack, changes: &mut Changes, wait: Duration) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + wait;
    s.obs.rt.block_on(async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = std::future::poll_fn(|cx| changes.as_mut().poll_next(cx));
            let Ok(Some(signal)) = tokio::time::timeout(left, next).await else {
                break;
            };
            let args = signal.args().unwrap();
            if args.interface_name().as_str() != MANAGER {
                continue;
            }
            for (name, value) in args.changed_properties() {
                seen.insert(name.to_string(), format!("{value:?}"));
            }
            if seen.contains_key("PolicyRevision") && seen.contains_key("Devices") {
                break;
            }
        }
    });
    seen
}

fn served_revision(s: &Stack) -> String {
    let p = s
        .obs
        .rt
        .block_on(zbus::Proxy::new(&s.obs.conn, BUS_NAME, ROOT_PATH, MANAGER))
        .unwrap();
    s.obs
        .rt
        .block_on(async { p.get_property::<String>("PolicyRevision").await })
        .unwrap()
}

/// The revision `accelctl policy check` computes offline for the file.
fn revision_of(s: &Stack) -> String {
    let policy = s.daemon.policy.to_str().unwrap().to_owned();
    s.ctl("root", &["--json", "policy", "check", &policy])
        .ok()
        .json()["revision"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn wait_for_log(s: &Stack, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = s.daemon.log_text();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_and_reload_policy_serve_and_announce_a_good_file_and_keep_the_old_on_a_bad_one() {
    let s = Stack::new("reload");
    let original = fs::read_to_string(&s.daemon.policy).unwrap();
    let first = served_revision(&s);
    assert_eq!(first, revision_of(&s));
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0"]).ok();
    let mut changes = manager_changes(&s);

    // SIGHUP with a good file: tenants lose their role.
    fs::write(
        &s.daemon.policy,
        original.replace("\"accel-tenants\"", "\"accel-admins\""),
    )
    .unwrap();
    let second = revision_of(&s);
    assert_ne!(second, first);
    s.daemon.signal(Signal::SIGHUP);
    let seen = announced(&s, &mut changes, Duration::from_secs(10));
    assert!(
        seen.contains_key("Devices"),
        "SIGHUP reload: no Devices change announced: {seen:?}"
    );
    assert!(
        seen.get("PolicyRevision")
            .is_some_and(|v| v.contains(&second)),
        "SIGHUP reload: revision {second} not announced: {seen:?}"
    );
    assert_eq!(served_revision(&s), second);
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0"])
        .fails_with("NotAuthorized");
    wait_for_log(&s, "SIGHUP: policy reloaded");

    // ReloadPolicy with a good file announces the same.
    fs::write(&s.daemon.policy, &original).unwrap();
    s.ctl("ag-admin", &["policy", "reload"]).ok();
    let seen = announced(&s, &mut changes, Duration::from_secs(10));
    assert!(seen.contains_key("Devices"), "ReloadPolicy: {seen:?}");
    assert!(
        seen.get("PolicyRevision")
            .is_some_and(|v| v.contains(&first)),
        "ReloadPolicy: revision {first} not announced: {seen:?}"
    );
    assert_eq!(served_revision(&s), first);
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0"]).ok();

    // SIGHUP with a bad file: logged with the file and line, the old revision and its
    // decisions stay, nothing is announced.
    fs::write(
        &s.daemon.policy,
        format!("{original}\n[[role]]\nid = \"x\"\nbogus_key = 1\n"),
    )
    .unwrap();
    s.daemon.signal(Signal::SIGHUP);
    let line = wait_for_log(&s, "SIGHUP: policy not reloaded");
    assert!(line.contains("policy.toml:"), "{line}");
    assert!(line.contains("bogus_key"), "{line}");
    let seen = announced(&s, &mut changes, Duration::from_millis(500));
    assert!(seen.is_empty(), "a refused reload announced {seen:?}");
    assert_eq!(served_revision(&s), first);
    s.ctl("ag-tenant1", &["read", "fpga0/region0", "0"]).ok();
}
