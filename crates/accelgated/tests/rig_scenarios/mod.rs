//! What both backends of rig/guest/scenarios.sh must report: the scenario names, which ones
//! each backend skips (the script says why), and the parser of its `RIG-RESULT` lines.
//! Shared by tests/kernel_rig.rs (the real kernel) and tests/scenarios_sim.rs (the simulator).

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// Every scenario the script runs, in its order; a missing line is a failure as much as a
/// "fail".
pub const SCENARIOS: &[&str] = &[
    "discovery",
    "bar-claimed-refused",
    "register-read",
    "register-write",
    "register-refusals",
    "vf-lifecycle",
    "vf-igb",
    "vf-map-after-removal",
    "vf-revoke-by-driver",
    "program-complete",
    "program-idempotent",
    "program-invalid-size",
    "program-hw-error",
    "program-cancel",
    "configure",
    "release-scrub",
    "flash-mtd-persistent",
    "flash-mtd-ram",
    "flash-fwupload-no-slots",
    "daemon-alive",
];

/// Scenarios that only make sense on the kernel (the script's `only_on kernel`).
pub const KERNEL_ONLY: &[&str] = &[
    "bar-claimed-refused",
    "register-write",
    "vf-map-after-removal",
];

/// Scenarios the kernel's guest runs besides the script's: rig/guest/hotplug.sh, where QEMU
/// adds and removes a device (the simulator's hotplug has its own test, tests/hotplug.rs).
pub const KERNEL_EXTRA: &[&str] = &["hotplug-add", "hotplug-remove", "hotplug-return"];

/// Scenarios that only make sense on the simulator (none so far).
pub const SIM_ONLY: &[&str] = &[];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// `RIG-RESULT name pass|fail|skip detail` lines, by name.
pub fn results(console: &str) -> BTreeMap<String, (Outcome, String)> {
    console
        .lines()
        .filter_map(|line| {
            let rest = line.trim_end_matches('\r').strip_prefix("RIG-RESULT ")?;
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next()?.to_owned();
            let outcome = match parts.next()? {
                "pass" => Outcome::Pass,
                "fail" => Outcome::Fail,
                "skip" => Outcome::Skip,
                _ => return None,
            };
            Some((name, (outcome, parts.next().unwrap_or("").to_owned())))
        })
        .collect()
}

/// Checks a run's results: every scenario (the script's and `extra`) reported, the ones in
/// `skipped` skipped (and no others), all the rest passed, nothing unknown. Returns the
/// failures, empty when all is well.
pub fn failures(console: &str, extra: &[&str], skipped: &[&str]) -> Vec<String> {
    let found = results(console);
    let mut failures = Vec::new();
    let known = |name: &str| SCENARIOS.contains(&name) || extra.contains(&name);
    for name in SCENARIOS.iter().chain(extra) {
        let should_skip = skipped.contains(name);
        match found.get(*name) {
            Some((Outcome::Pass, detail)) if !should_skip => eprintln!("  pass {name}: {detail}"),
            Some((Outcome::Skip, detail)) if should_skip => eprintln!("  skip {name}: {detail}"),
            Some((outcome, detail)) => failures.push(format!(
                "{name}: {outcome:?} (expected {}): {detail}",
                if should_skip { "Skip" } else { "Pass" }
            )),
            None => failures.push(format!("{name}: no result reported")),
        }
    }
    for name in found.keys() {
        if !known(name) {
            failures.push(format!("{name}: reported but not known to this test"));
        }
    }
    let skips = found.values().filter(|(o, _)| *o == Outcome::Skip).count();
    if skips != skipped.len() {
        failures.push(format!(
            "{skips} scenarios skipped, {} expected ({skipped:?})",
            skipped.len()
        ));
    }
    failures
}

#[test]
fn result_lines_are_parsed_strictly() {
    let console = "RIG-RESULT a pass all good\r\nnoise RIG-RESULT b pass\nRIG-RESULT c fail why\n\
                   RIG-RESULT d maybe\nRIG-RESULT e skip only on the kernel\n";
    let found = results(console);
    assert_eq!(
        found.get("a"),
        Some(&(Outcome::Pass, "all good".to_owned()))
    );
    assert_eq!(found.get("b"), None);
    assert_eq!(found.get("c"), Some(&(Outcome::Fail, "why".to_owned())));
    assert_eq!(found.get("d"), None);
    assert_eq!(
        found.get("e"),
        Some(&(Outcome::Skip, "only on the kernel".to_owned()))
    );
}

#[test]
fn a_skip_where_a_pass_is_due_fails() {
    let all_pass: String = SCENARIOS
        .iter()
        .map(|n| format!("RIG-RESULT {n} pass ok\n"))
        .collect();
    assert!(failures(&all_pass, &[], &[]).is_empty());
    // The script skipping a scenario the backend must run is a failure, and so is a pass
    // where the script should have said it cannot run here.
    let skipped = all_pass.replace("RIG-RESULT discovery pass", "RIG-RESULT discovery skip");
    assert_eq!(failures(&skipped, &[], &[]).len(), 2);
    assert_eq!(failures(&all_pass, &[], &["discovery"]).len(), 2);
}
