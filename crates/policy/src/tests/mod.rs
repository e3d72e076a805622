//! Tests of the policy module: validation errors (with their lines), decisions, loading.

mod decision;
mod files;
mod loading;
mod robustness;
mod validation;

use super::{PolicyError, RolePolicy, StaticAccounts};

pub(super) const ALICE: u32 = 1001;
pub(super) const BOB: u32 = 1002;
pub(super) const TENANTS: u32 = 2001;
pub(super) const OPERATORS: u32 = 2002;
pub(super) const ADMINS: u32 = 2003;

/// The accounts every test policy may name, independent of the machine running the tests.
pub(super) fn accounts() -> StaticAccounts {
    StaticAccounts::new()
        .with_user("root", 0)
        .with_user("alice", ALICE)
        .with_user("bob", BOB)
        .with_group("accel-tenants", TENANTS)
        .with_group("accel-operators", OPERATORS)
        .with_group("accel-admins", ADMINS)
}

pub(super) fn parse(text: &str) -> Result<RolePolicy, PolicyError> {
    RolePolicy::parse_str_with(text, "test.toml", &accounts())
}

/// The 1-based line of the only line of `text` that contains `marker`.
pub(super) fn marked_line(text: &str, marker: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker {marker:?} must be on exactly one line"
    );
    hits[0]
}

/// Parses `text`, expects an error on the line marked `# <-` whose message contains `needle`,
/// and that the error displays as `test.toml:<line>: <message>`.
#[track_caller]
pub(super) fn expect_error(text: &str, needle: &str) {
    let want_line = marked_line(text, "# <-");
    let err = match parse(text) {
        Ok(_) => panic!("expected an error containing {needle:?}, got a policy"),
        Err(e) => e,
    };
    let shown = err.to_string();
    let PolicyError::Invalid {
        file,
        line,
        message,
    } = err
    else {
        panic!("unexpected error kind: {shown}");
    };
    assert_eq!(file, "test.toml");
    assert!(
        message.contains(needle),
        "message {message:?} does not contain {needle:?}"
    );
    assert_eq!(line, want_line, "wrong line for: {message}");
    assert_eq!(shown, format!("test.toml:{want_line}: {message}"));
}
