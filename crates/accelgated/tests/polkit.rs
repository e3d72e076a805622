//! The polkit gate against a real polkitd (private bus, private mount namespace with our
//! `.policy` and test rules), first on its own, then in the real daemon with clients running as
//! different users.
//!
//! Needs root, dbus-daemon, busctl, unshare and polkitd (Debian package `polkitd`); a test that
//! lacks one fails saying so.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use accelgate_client::Operation;
use accelgated::core::Caller;
use accelgated::core::{Gate, GateRequest, Target};
use accelgated::dbus::polkit::{KeyRef, PolkitGate, PolkitOptions};

use accelgate_testkit::polkit::{connect_as, polkit_bus, TestPolkit};
use accelgate_testkit::*;

const TEST_RULES: &str = "50-accelgate-test.rules";

/// Gate-level rules: tenant1 may not write fpga0's slices; nobody reads region1 but admins;
/// an image with a known-bad hash is refused; operators assign and configure.
const GATE_RULES_V1: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.accelgate.") !== 0) return polkit.Result.NOT_HANDLED;
    if (subject.isInGroup("accel-admins")) return polkit.Result.YES;
    if (action.id === "org.accelgate.slice.write" && subject.user === "ag-tenant1" &&
        action.lookup("device") === "fpga0") return polkit.Result.NO;
    if (action.id === "org.accelgate.slice.read" && action.lookup("slice") === "region1")
        return polkit.Result.NO;
    if (action.id === "org.accelgate.slice.program" &&
        action.lookup("image_sha256") === "badbadbad") return polkit.Result.NO;
    if ((action.id === "org.accelgate.slice.assign" ||
         action.id === "org.accelgate.device.configure") &&
        subject.isInGroup("accel-operators")) return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"#;

/// The same, changed: tenant1 may write now; operators lose assign.
const GATE_RULES_V2: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.accelgate.") !== 0) return polkit.Result.NOT_HANDLED;
    if (subject.isInGroup("accel-admins")) return polkit.Result.YES;
    if (action.id === "org.accelgate.slice.assign" && subject.isInGroup("accel-operators"))
        return polkit.Result.NO;
    return polkit.Result.NOT_HANDLED;
});
"#;

/// A polkitd with rules, its bus, and a multi-threaded runtime for in-process clients.
struct PolkitSetup {
    rt: tokio::runtime::Runtime,
    polkit: TestPolkit,
    bus: TestBus,
}

impl PolkitSetup {
    fn new(name: &str, rules: &str) -> PolkitSetup {
        ensure_users();
        let dir = test_dir(name);
        let bus = polkit_bus(&dir);
        let polkit = TestPolkit::start(&bus, &dir, &[(TEST_RULES, rules)]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        PolkitSetup { rt, polkit, bus }
    }

    fn gate(&self, options: PolkitOptions) -> PolkitGate {
        let conn = self
            .rt
            .block_on(zbus::connection::Builder::address(self.bus.address.as_str()).build())
            .unwrap();
        self.rt.block_on(PolkitGate::new(&conn, options)).unwrap()
    }

    fn client(&self, user: &str) -> (zbus::Connection, Caller) {
        let conn = connect_as(&self.rt, &self.bus.address, user);
        let caller = caller_of(&conn, user);
        (conn, caller)
    }
}

fn caller_of(conn: &zbus::Connection, user: &str) -> Caller {
    Caller {
        sender: conn.unique_name().unwrap().to_string(),
        uid: uid_of(user),
        gids: vec![],
        pid: Some(std::process::id()),
        process_fd: None,
    }
}

fn fast_options() -> PolkitOptions {
    PolkitOptions {
        timeout: Duration::from_secs(2),
        ..PolkitOptions::default()
    }
}

fn check(
    rt: &tokio::runtime::Runtime,
    gate: &PolkitGate,
    caller: &Caller,
    operation: Operation,
    target: &Target,
    image_sha256: Option<&str>,
) -> Result<(), String> {
    let req = GateRequest {
        caller,
        operation,
        target,
        image_sha256,
        purpose: None,
        interactive: false,
    };
    rt.block_on(gate.check(&req))
}

fn slice(d: &str, s: &str) -> Target {
    Target::Slice(d.into(), s.into())
}

fn cached(
    gate: &PolkitGate,
    caller: &Caller,
    operation: Operation,
    target: &Target,
) -> Option<bool> {
    gate.cache().unwrap().lookup(&KeyRef {
        sender: &caller.sender,
        operation,
        device: target.device(),
        slice: target.slice(),
        image_sha256: None,
        purpose: None,
    })
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gate_asks_polkit_with_bus_name_and_details_and_caches_only_definite_answers() {
    let mut s = PolkitSetup::new("pk-gate", GATE_RULES_V1);
    let gate = s.gate(fast_options());
    let (_t1_conn, tenant1) = s.client("ag-tenant1");
    let (_op_conn, operator) = s.client("ag-operator");
    let (_adm_conn, admin) = s.client("ag-admin");
    let region0 = slice("fpga0", "region0");
    let region1 = slice("fpga0", "region1");
    let fpga0 = Target::Device("fpga0".into());
    let rt = &s.rt;

    // Defaults of the .policy file: tenant slice operations yes.
    check(rt, &gate, &tenant1, Operation::SliceRead, &region0, None).unwrap();
    assert_eq!(
        cached(&gate, &tenant1, Operation::SliceRead, &region0),
        Some(true)
    );
    // Rules see the caller's user and the details device, slice and image_sha256.
    let denied = check(rt, &gate, &tenant1, Operation::SliceWrite, &region0, None).unwrap_err();
    assert!(denied.contains("not authorized"), "{denied}");
    assert_eq!(
        cached(&gate, &tenant1, Operation::SliceWrite, &region0),
        Some(false)
    );
    check(rt, &gate, &tenant1, Operation::SliceRead, &region1, None).unwrap_err();
    check(rt, &gate, &admin, Operation::SliceRead, &region1, None).unwrap();
    check(
        rt,
        &gate,
        &tenant1,
        Operation::SliceProgram,
        &region0,
        Some("badbadbad"),
    )
    .unwrap_err();
    check(
        rt,
        &gate,
        &tenant1,
        Operation::SliceProgram,
        &region0,
        Some("0123abcd"),
    )
    .unwrap();
    // auth_admin(_keep) without interaction: a challenge, which denies and is never cached.
    for op in [Operation::SliceAssign, Operation::DeviceFlash] {
        let target = if op == Operation::DeviceFlash {
            &fpga0
        } else {
            &region0
        };
        let r = check(rt, &gate, &tenant1, op, target, None).unwrap_err();
        assert!(r.contains("authentication"), "{op}: {r}");
        assert_eq!(
            cached(&gate, &tenant1, op, target),
            None,
            "{op} challenge cached"
        );
    }
    check(rt, &gate, &operator, Operation::SliceAssign, &region0, None).unwrap();
    check(
        rt,
        &gate,
        &operator,
        Operation::DeviceConfigure,
        &fpga0,
        None,
    )
    .unwrap();
    check(rt, &gate, &operator, Operation::DeviceFlash, &fpga0, None).unwrap_err();
    check(rt, &gate, &admin, Operation::DeviceFlash, &fpga0, None).unwrap();

    // A rules change reaches the same long-lived clients without restarting anything: polkit
    // emits Changed and the cache is dropped.
    s.polkit.set_rule(TEST_RULES, GATE_RULES_V2);
    wait_until(
        "cache dropped after the rules changed",
        Duration::from_secs(10),
        || gate.cache().unwrap().is_empty(),
    );
    check(rt, &gate, &tenant1, Operation::SliceWrite, &region0, None).unwrap();
    check(rt, &gate, &operator, Operation::SliceAssign, &region0, None).unwrap_err();
    assert_eq!(
        cached(&gate, &operator, Operation::SliceAssign, &region0),
        Some(false)
    );

    // A cached answer is served without polkit: with polkitd frozen, the cached allow still
    // passes at once, and a new question is denied within the timeout, not hung.
    s.polkit.pause();
    let t = Instant::now();
    check(rt, &gate, &tenant1, Operation::SliceWrite, &region0, None).unwrap();
    // Asking the frozen polkitd would have waited the whole timeout and then denied.
    assert!(t.elapsed() < fast_options().timeout);
    let t = Instant::now();
    let r = check(rt, &gate, &tenant1, Operation::SliceMap, &region0, None).unwrap_err();
    assert!(r.contains("did not answer"), "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    s.polkit.resume();

    // A sender that leaves loses its answers; its name is never authorized again.
    let (t2_conn, tenant2) = s.client("ag-tenant2");
    check(rt, &gate, &tenant2, Operation::SliceRead, &region0, None).unwrap();
    assert_eq!(
        cached(&gate, &tenant2, Operation::SliceRead, &region0),
        Some(true)
    );
    rt.block_on(t2_conn.close()).unwrap();
    wait_until("departed sender forgotten", Duration::from_secs(5), || {
        cached(&gate, &tenant2, Operation::SliceRead, &region0).is_none()
    });
    let r = check(rt, &gate, &tenant2, Operation::SliceRead, &region0, None).unwrap_err();
    assert!(r.contains("polkit check failed"), "{r}");

    // polkitd gone: every check denies, quickly (the owner change also drops the cache).
    assert_eq!(
        cached(&gate, &tenant1, Operation::SliceWrite, &region0),
        Some(true)
    );
    s.polkit.stop();
    wait_until(
        "cache dropped when polkit left",
        Duration::from_secs(5),
        || gate.cache().unwrap().is_empty(),
    );
    let t = Instant::now();
    for (who, op, target) in [
        (&tenant1, Operation::SliceWrite, &region0),
        (&tenant1, Operation::SliceRead, &region0),
        (&admin, Operation::DeviceFlash, &fpga0),
    ] {
        check(rt, &gate, who, op, target, None).unwrap_err();
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // And back: a new polkitd answers again.
    s.polkit.restart();
    check(
        &s.rt,
        &gate,
        &tenant1,
        Operation::SliceWrite,
        &region0,
        None,
    )
    .unwrap();
}

// What the cache saves (calls per second with and without it) is measured side by side in the
// benchmark (`cargo bench`), not here: tests check behaviour, benchmarks report ratios.

// ------------------------------------------------------------------ the daemon with polkit

const FPGA_BDF: &str = "0000:3b:00.0";
const REGION0: u64 = 0x10000;

/// Daemon-level rules: admins may do anything polkit gates; operators assign; tenant1 may not
/// write region0 even though its role allows it.
const DAEMON_RULES: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.accelgate.") !== 0) return polkit.Result.NOT_HANDLED;
    if (subject.isInGroup("accel-admins")) return polkit.Result.YES;
    if (action.id === "org.accelgate.slice.write" && subject.user === "ag-tenant1" &&
        action.lookup("device") === "fpga0" && action.lookup("slice") === "region0")
        return polkit.Result.NO;
    if (action.id === "org.accelgate.slice.assign" && subject.isInGroup("accel-operators"))
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"#;

struct DaemonSetup {
    // Field order is drop order: daemon, then polkitd, then the bus.
    daemon: TestDaemon,
    polkit: TestPolkit,
    bus: TestBus,
}

impl DaemonSetup {
    fn new(name: &str, rules: &str) -> DaemonSetup {
        ensure_users();
        let dir = test_dir(name);
        let policy = dir.join("policy.toml");
        fs::copy(repo_path("policy/simulated.toml"), &policy).unwrap();
        let bus = polkit_bus(&dir);
        let polkit = TestPolkit::start(&bus, &dir, &[(TEST_RULES, rules)]);
        let daemon = TestDaemon::start_with_polkit(&bus, &dir, &policy);
        let s = DaemonSetup {
            daemon,
            polkit,
            bus,
        };
        // Root is always authorized by polkit; these set up the tenants.
        s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
            .ok();
        s.ctl("root", &["assign", "fpga0/region1", "ag-tenant2"])
            .ok();
        s
    }

    fn ctl(&self, user: &str, args: &[&str]) -> Ctl {
        ctl(&self.bus.address, user, args)
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        audit_records(&self.daemon.state_dir.join("audit.jsonl"))
    }

    /// The newest audit record for `uid` and `operation`.
    fn last_decision(&self, uid: u32, operation: &str) -> serde_json::Value {
        self.audit()
            .into_iter()
            .rev()
            .find(|r| r["uid"] == uid && r["operation"] == operation)
            .unwrap_or_else(|| panic!("no audit record for uid {uid} {operation}"))
    }

    fn region_bytes(&self, offset: u64) -> Vec<u8> {
        sim_bar_bytes(&self.daemon.sim_dir, FPGA_BDF, REGION0 + offset, 8)
    }
}

fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs one request and checks the outcome and, for a denial, the gate that denied.
fn expect(s: &DaemonSetup, user: &str, args: &[&str], operation: &str, want: Result<(), &str>) {
    let r = s.ctl(user, args);
    let rec = s.last_decision(uid_of(user), operation);
    match want {
        Ok(()) => {
            assert_eq!(
                r.code, 0,
                "{user} {args:?} should pass: {}{}",
                r.stdout, r.stderr
            );
            assert_eq!(rec["decision"], "allow", "{user} {args:?}: {rec}");
        }
        Err(gate) => {
            let r = r.fails_with("NotAuthorized");
            // The caller is told which gate refused, as the audit records it.
            assert!(
                r.stderr.contains(&format!("refused by the {gate} gate")),
                "{user} {args:?}: {}",
                r.stderr
            );
            assert_eq!(rec["decision"], "deny", "{user} {args:?}: {rec}");
            assert_eq!(rec["gate"], gate, "{user} {args:?}: {rec}");
        }
    }
}

/// (user, accelctl arguments, operation, expected: `Ok` or the gate that denies)
type MatrixRow<'a> = (&'a str, &'a [&'a str], &'a str, Result<(), &'a str>);

#[test]
fn role_and_polkit_rules_both_have_to_allow() {
    let s = DaemonSetup::new("pk-matrix", DAEMON_RULES);
    let read0 = ["read", "fpga0/region0", "0x0"];
    let write0 = ["write", "fpga0/region0", "0x100", "0x55"];
    let write1 = ["write", "fpga0/region1", "0x100", "0x66"];
    let assign1 = ["assign", "fpga0/region1", "ag-tenant2"];
    let vfs = ["vfs", "nic0", "2"];
    let before = s.region_bytes(0x100);
    let matrix: &[MatrixRow] = &[
        ("ag-tenant1", &read0, "slice.read", Ok(())),
        // The role allows tenant1 to write its slice; the polkit rule says no, and wins.
        ("ag-tenant1", &write0, "slice.write", Err("polkit")),
        ("ag-tenant2", &read0, "slice.read", Err("role")),
        ("ag-tenant2", &write1, "slice.write", Ok(())),
        ("ag-operator", &read0, "slice.read", Ok(())),
        ("ag-operator", &write0, "slice.write", Err("role")),
        // Role allows, polkit default auth_admin_keep, a rule grants operators.
        ("ag-operator", &assign1, "slice.assign", Ok(())),
        ("ag-tenant1", &assign1, "slice.assign", Err("role")),
        ("ag-admin", &read0, "slice.read", Ok(())),
        ("ag-admin", &assign1, "slice.assign", Ok(())),
        ("ag-nobody", &read0, "slice.read", Err("role")),
        ("ag-nobody", &assign1, "slice.assign", Err("role")),
        // device.configure: auth_admin_keep and no rule for operators, so polkit denies the
        // operator whose role allows it; the admin rule allows.
        ("ag-operator", &vfs, "device.configure", Err("polkit")),
        ("ag-tenant1", &vfs, "device.configure", Err("role")),
        ("ag-admin", &vfs, "device.configure", Ok(())),
    ];
    for (user, args, op, want) in matrix {
        expect(&s, user, args, op, *want);
    }
    assert_eq!(
        s.region_bytes(0x100),
        before,
        "a denied write reached region0"
    );

    // The polkit denial is on record with its reason; nothing was written.
    let rec = s.last_decision(uid_of("ag-tenant1"), "slice.write");
    assert!(
        rec["reason"].as_str().unwrap().contains("not authorized"),
        "{rec}"
    );
    assert_eq!(rec["target"], "fpga0/region0");
}

#[test]
fn rules_changes_apply_without_restarting_and_polkit_gone_denies() {
    let mut s = DaemonSetup::new("pk-change", DAEMON_RULES);
    let assign1 = ["assign", "fpga0/region1", "ag-tenant2"];
    expect(&s, "ag-operator", &assign1, "slice.assign", Ok(()));
    let daemon_pid = s.daemon.pid();

    // Without the operator rule, slice.assign falls back to auth_admin_keep: denied.
    s.polkit.set_rule(
        TEST_RULES,
        &DAEMON_RULES.replace("subject.isInGroup(\"accel-operators\")", "false"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.ctl("ag-operator", &assign1);
        if r.code != 0 {
            r.fails_with("NotAuthorized");
            break;
        }
        assert!(Instant::now() < deadline, "rules change never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec = s.last_decision(uid_of("ag-operator"), "slice.assign");
    assert_eq!(
        (rec["decision"].as_str(), rec["gate"].as_str()),
        (Some("deny"), Some("polkit"))
    );
    assert_eq!(s.daemon.pid(), daemon_pid, "the daemon was restarted");

    // polkitd stopped mid-run: everything polkit gates is denied, promptly; the role gate
    // still answers first for those it denies.
    s.polkit.stop();
    let t = Instant::now();
    expect(
        &s,
        "ag-tenant2",
        &["read", "fpga0/region1", "0x0"],
        "slice.read",
        Err("polkit"),
    );
    expect(&s, "ag-admin", &assign1, "slice.assign", Err("polkit"));
    expect(&s, "ag-nobody", &assign1, "slice.assign", Err("role"));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );

    // polkitd frozen (name owned, no answers): denied within the daemon's timeout, not hung.
    s.polkit.restart();
    expect(
        &s,
        "ag-tenant2",
        &["read", "fpga0/region1", "0x0"],
        "slice.read",
        Ok(()),
    );
    s.polkit.pause();
    let t = Instant::now();
    expect(
        &s,
        "ag-tenant2",
        &["read", "fpga0/region1", "0x0"],
        "slice.read",
        Err("polkit"),
    );
    let took = t.elapsed();
    s.polkit.resume();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let rec = s.last_decision(uid_of("ag-tenant2"), "slice.read");
    assert!(
        rec["reason"].as_str().unwrap().contains("did not answer"),
        "{rec}"
    );
}

/// Rules for the disconnect test: tenant1's writes are held in polkit until the test lets them
/// go (`{gate}/go` exists), after saying they are being decided (`{gate}/asked`); then allowed
/// as the `.policy` defaults would. polkit has resolved the caller's bus name by the time a
/// rule runs, so a caller that leaves while the rule waits has already been judged.
fn held_write_rules(gate: &Path) -> String {
    let gate = gate.display();
    format!(
        r#"
polkit.addRule(function(action, subject) {{
    if (action.id === "org.accelgate.slice.write" && subject.user === "ag-tenant1") {{
        polkit.spawn(["/bin/sh", "-c",
            "touch '{gate}/asked'; i=0; " +
            "while [ ! -e '{gate}/go' ] && [ $i -lt 400 ]; do sleep 0.01; i=$((i+1)); done"]);
        return polkit.Result.YES;
    }}
    if (action.id.indexOf("org.accelgate.") === 0 && subject.isInGroup("accel-admins"))
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
}});
"#
    )
}

/// A client that sends a call and disconnects while polkit is deciding it: polkit allows (it
/// judged the caller while it was there), but the daemon confirms with the bus after polkit's
/// answer, finds the caller gone, and drops the request, on record — it is never carried out
/// for a process that is no longer there (or one that reuses its pid). Deterministic: polkit
/// holds its answer until the disconnect has certainly reached the bus.
#[test]
fn a_caller_that_leaves_while_polkit_decides_is_never_served() {
    ensure_users();
    let dir = test_dir("pk-disconnect");
    let gate = dir.join("gate");
    fs::create_dir_all(&gate).unwrap();
    // polkitd runs its rules' commands as its own user.
    fs::set_permissions(&gate, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let policy = dir.join("policy.toml");
    fs::copy(repo_path("policy/simulated.toml"), &policy).unwrap();
    let bus = polkit_bus(&dir);
    let _polkit = TestPolkit::start(&bus, &dir, &[(TEST_RULES, &held_write_rules(&gate))]);
    let daemon = TestDaemon::start_with_polkit(&bus, &dir, &policy);
    let s = DaemonSetup {
        daemon,
        polkit: _polkit,
        bus,
    };
    s.ctl("root", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    let obs = Observer::connect(&s.bus.address);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let watcher = rt
        .block_on(zbus::connection::Builder::address(s.bus.address.as_str()).build())
        .unwrap();
    let bus_driver = rt.block_on(zbus::fdo::DBusProxy::new(&watcher)).unwrap();
    let tenant1 = uid_of("ag-tenant1");
    let (asked, go) = (gate.join("asked"), gate.join("go"));
    // Sends Write(0x100, [value], 8) to region0 as tenant1 without waiting for a reply.
    let send_write = |value: u64| {
        let conn = connect_as(&rt, &s.bus.address, "ag-tenant1");
        let path = accelgate_client::proto::names::slice_path("fpga0", "region0");
        let msg = zbus::message::Message::method_call(path.as_str(), "Write")
            .destination(accelgate_client::proto::names::BUS_NAME)
            .interface(accelgate_client::proto::names::SLICE_INTERFACE)
            .with_flags(zbus::message::Flags::NO_REPLY_EXPECTED)
            .build(&(0x100u64, vec![value], 8u8))
            .unwrap();
        rt.block_on(conn.send(&msg)).unwrap();
        let sender = conn.unique_name().unwrap().to_string();
        (sender, conn)
    };
    let record_for = |sender: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = s.audit().into_iter().find(|r| r["sender"] == sender) {
                return r;
            }
            assert!(Instant::now() < deadline, "no audit record for {sender}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let word = || obs.read("fpga0", "region0", 0x100, 1, 8).unwrap()[0];

    // Control: with polkit letting the write through at once, the same call from a client that
    // stays is allowed and written, so it is a call the daemon accepts from this caller.
    fs::write(&go, "").unwrap();
    let (stays, _kept) = send_write(0x1111);
    let rec = record_for(&stays);
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["uid"], tenant1);
    wait_until("the control write landed", Duration::from_secs(5), || {
        word() == 0x1111
    });
    assert!(
        asked.exists(),
        "the control write did not pass the test rule"
    );

    for round in 0..2u64 {
        fs::remove_file(&go).unwrap();
        fs::remove_file(&asked).unwrap();
        let (gone, conn) = send_write(0xdead_0000 + round);
        wait_until("polkit started deciding", Duration::from_secs(5), || {
            asked.exists()
        });
        rt.block_on(conn.close()).unwrap();
        let name = zbus::names::BusName::try_from(gone.clone()).unwrap();
        wait_until(
            "the bus saw the caller leave",
            Duration::from_secs(5),
            || {
                !rt.block_on(bus_driver.name_has_owner(name.clone()))
                    .unwrap()
            },
        );
        // Only now does polkit answer (yes).
        fs::write(&go, "").unwrap();
        let rec = record_for(&gone);
        assert_eq!(rec["decision"], "deny", "round {round}: {rec}");
        assert_eq!(rec["gate"], "polkit", "round {round}: {rec}");
        assert!(
            rec["reason"]
                .as_str()
                .unwrap()
                .contains("left the bus while polkit decided"),
            "round {round}: {rec}"
        );
        assert_eq!(
            word(),
            0x1111,
            "round {round}: the departed caller's write happened"
        );
    }
}

/// Reading the audit log and reloading the policy share an action (`policy.reload`), but
/// polkit is told which one is asked (`purpose`): a rule can refuse the log to someone who
/// may reload, and one answer is never taken for the other.
#[test]
fn audit_log_and_policy_reload_are_told_apart() {
    let rules = r#"
polkit.addRule(function(action, subject) {
    if (action.id !== "org.accelgate.policy.reload") return polkit.Result.NOT_HANDLED;
    if (action.lookup("purpose") === "audit-log") return polkit.Result.NO;
    if (subject.isInGroup("accel-admins")) return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"#;
    let s = DaemonSetup::new("pk-purpose", rules);
    expect(
        &s,
        "ag-admin",
        &["policy", "reload"],
        "policy.reload",
        Ok(()),
    );
    expect(&s, "ag-admin", &["audit"], "policy.reload", Err("polkit"));
}

// ------------------------------------------------------------------ interactive authorization

/// tenant1's writes need an administrator's password (`auth_admin`, never kept); the
/// administrator is the test user with a known password.
const AUTH_ADMIN_RULES: &str = r#"
polkit.addAdminRule(function(action, subject) {
    return ["unix-user:ag-pkadmin"];
});
polkit.addRule(function(action, subject) {
    if (action.id === "org.accelgate.slice.write" && subject.user === "ag-tenant1")
        return polkit.Result.AUTH_ADMIN;
    if (action.id.indexOf("org.accelgate.") === 0 && subject.isInGroup("accel-admins"))
        return polkit.Result.YES;
    return polkit.Result.NOT_HANDLED;
});
"#;

/// `auth_admin` against a real polkitd with a real authentication agent (registered for the
/// calling process, answering through polkit-agent-helper-1 and PAM): a caller that does not
/// allow interaction is told it needs it; one that does gets the challenge, passes it only
/// with the right password, is challenged again on every call, and gets nothing if it leaves
/// while the challenge is open.
#[test]
fn auth_admin_challenges_the_callers_agent_on_every_interactive_call() {
    use accelgate_testkit::polkit::{ensure_password_user, AgentAnswer, TestAgent, PASSWORD};
    ensure_password_user();
    let s = DaemonSetup::new("pk-interactive", AUTH_ADMIN_RULES);
    let obs = Observer::connect(&s.bus.address);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The callers are connections of this process: the agent is this process's.
    let agent = TestAgent::register(
        &rt,
        &s.bus,
        std::process::id(),
        AgentAnswer::Password(PASSWORD.into()),
    );
    let word = || obs.read("fpga0", "region0", 0x100, 1, 8).unwrap()[0];
    let before = word();
    let tenant1 = uid_of("ag-tenant1");
    let client = |interactive: bool| {
        let mut c = accelgate_client::Client::from_connection(connect_as(
            &rt,
            &s.bus.address,
            "ag-tenant1",
        ));
        c.set_interactive(interactive);
        c
    };
    let write = |c: &accelgate_client::Client, value: u64| {
        rt.block_on(c.write("fpga0", "region0", 0x100, &[value], 8))
    };
    let last = || s.last_decision(tenant1, "slice.write");
    let refused_kind = |r: Result<(), accelgate_client::ClientError>| match r {
        Err(accelgate_client::ClientError::Accel(e)) => (e.error_kind(), e.message()),
        other => panic!("expected a refusal from the daemon, got {other:?}"),
    };

    // (a) Without ALLOW_INTERACTIVE_AUTHORIZATION: refused, saying interaction is needed; the
    // agent is never asked; nothing written.
    let (kind, message) = refused_kind(write(&client(false), 0xa1));
    assert_eq!(
        kind,
        Some(accelgate_client::ErrorKind::NotAuthorized),
        "{message}"
    );
    assert!(
        message.contains("refused by the polkit gate: interactive authentication required"),
        "{message}"
    );
    let rec = last();
    assert_eq!(
        (rec["decision"].as_str(), rec["gate"].as_str()),
        (Some("deny"), Some("polkit"))
    );
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("requires authentication"),
        "{rec}"
    );
    // accelctl without a terminal does not allow interaction either, and says the same.
    let r = s
        .ctl("ag-tenant1", &["write", "fpga0/region0", "0x100", "0xa2"])
        .fails_with("NotAuthorized");
    assert!(
        r.stderr.contains("interactive authentication required"),
        "{}",
        r.stderr
    );
    assert_eq!(agent.begun(), 0, "a non-interactive call reached the agent");
    assert_eq!(word(), before);

    // (b) Interactive, the right password: allowed and written, after one challenge.
    let interactive = client(true);
    write(&interactive, 0xb1).unwrap();
    assert_eq!(word(), 0xb1);
    assert_eq!(agent.begun(), 1);
    assert_eq!(agent.outcomes(), ["SUCCESS"]);
    assert_eq!(last()["decision"], "allow");

    // (d) auth_admin is not kept: the same caller is challenged again, and again passes.
    write(&interactive, 0xb2).unwrap();
    assert_eq!(word(), 0xb2);
    assert_eq!(agent.begun(), 2, "the second call was not challenged");

    // (c) A wrong password, then a dismissed dialog: refused, nothing written.
    agent.set_answer(AgentAnswer::Password("not-the-password".into()));
    let (kind, message) = refused_kind(write(&interactive, 0xc1));
    assert_eq!(
        kind,
        Some(accelgate_client::ErrorKind::NotAuthorized),
        "{message}"
    );
    assert_eq!(agent.begun(), 3);
    assert!(
        agent.outcomes()[2].starts_with("FAILURE"),
        "{:?}",
        agent.outcomes()
    );
    let rec = last();
    assert_eq!(
        (rec["decision"].as_str(), rec["gate"].as_str()),
        (Some("deny"), Some("polkit"))
    );
    agent.set_answer(AgentAnswer::Dismiss);
    let (kind, message) = refused_kind(write(&interactive, 0xc2));
    assert_eq!(
        kind,
        Some(accelgate_client::ErrorKind::NotAuthorized),
        "{message}"
    );
    assert_eq!(agent.begun(), 4);
    let rec = last();
    assert_eq!(
        (rec["decision"].as_str(), rec["gate"].as_str()),
        (Some("deny"), Some("polkit"))
    );
    assert!(
        rec["reason"].as_str().unwrap().contains("dismissed"),
        "{rec}"
    );
    assert_eq!(word(), 0xb2);

    // (e) The caller leaves while the agent holds the challenge open; then the administrator
    // types the right password. polkit authorizes, but the caller is gone: denied, on record,
    // nothing written.
    agent.set_answer(AgentAnswer::Password(PASSWORD.into()));
    agent.hold();
    let conn = connect_as(&rt, &s.bus.address, "ag-tenant1");
    let path = accelgate_client::proto::names::slice_path("fpga0", "region0");
    let msg = zbus::message::Message::method_call(path.as_str(), "Write")
        .destination(accelgate_client::proto::names::BUS_NAME)
        .interface(accelgate_client::proto::names::SLICE_INTERFACE)
        .with_flags(zbus::message::Flags::NO_REPLY_EXPECTED)
        .with_flags(zbus::message::Flags::ALLOW_INTERACTIVE_AUTH)
        .build(&(0x100u64, vec![0xe1u64], 8u8))
        .unwrap();
    rt.block_on(conn.send(&msg)).unwrap();
    let gone = conn.unique_name().unwrap().to_string();
    wait_until("the challenge is open", Duration::from_secs(10), || {
        agent.open() == 1
    });
    assert_eq!(agent.begun(), 5);
    rt.block_on(conn.close()).unwrap();
    let watcher = rt
        .block_on(zbus::connection::Builder::address(s.bus.address.as_str()).build())
        .unwrap();
    let bus_driver = rt.block_on(zbus::fdo::DBusProxy::new(&watcher)).unwrap();
    let name = zbus::names::BusName::try_from(gone.clone()).unwrap();
    wait_until(
        "the bus saw the caller leave",
        Duration::from_secs(5),
        || {
            !rt.block_on(bus_driver.name_has_owner(name.clone()))
                .unwrap()
        },
    );
    agent.release();
    let deadline = Instant::now() + Duration::from_secs(15);
    let rec = loop {
        if let Some(r) = s.audit().into_iter().find(|r| r["sender"] == gone) {
            break r;
        }
        assert!(Instant::now() < deadline, "no audit record for {gone}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (rec["decision"].as_str(), rec["gate"].as_str()),
        (Some("deny"), Some("polkit")),
        "{rec}"
    );
    assert_eq!(agent.outcomes()[4], "SUCCESS", "{:?}", agent.outcomes());
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("left the bus while polkit decided"),
        "{rec}"
    );
    assert_eq!(word(), 0xb2, "the departed caller's write happened");
}
