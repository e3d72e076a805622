//! Loading from files and directories: order, what is skipped, cross-file checks, revision.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::accounts;
use crate::{PolicyError, RolePolicy};

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("accelgate-policy-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(path: &Path) -> Result<RolePolicy, PolicyError> {
    RolePolicy::load_with(path, &accounts())
}

fn device(id: &str, pci: &str) -> String {
    format!("[[device]]\nid = \"{id}\"\npci = \"{pci}\"\nkind = \"fpga\"\n")
}

fn role(id: &str, extra: &str) -> String {
    format!("[[role]]\nid = \"{id}\"\ngroups = [\"accel-admins\"]\noperations = [\"*\"]\n{extra}")
}

fn invalid(e: PolicyError) -> (String, usize, String) {
    match e {
        PolicyError::Invalid {
            file,
            line,
            message,
        } => (file, line, message),
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn a_single_file() {
    let dir = TempDir::new();
    let path = dir.write(
        "site.toml",
        &(device("fpga0", "0000:3b:00.0") + &role("admin", "")),
    );
    let p = load(&path).unwrap();
    assert_eq!(p.sources, vec![path.clone()]);
    assert_eq!(p.devices[0].id, "fpga0");
    assert_eq!(p.roles[0].id, "admin");
}

#[test]
fn a_directory_in_name_order_with_cross_file_references() {
    let dir = TempDir::new();
    dir.write("policy.toml", &device("fpga0", "0000:3b:00.0"));
    // 10-roles names a device that only 20-nic declares.
    dir.write(
        "policy.d/10-roles.toml",
        &role("ops", "devices = [\"fpga0\", \"nic0\"]\n"),
    );
    dir.write("policy.d/20-nic.toml", &device("nic0", "0000:5e:00.0"));
    dir.write("policy.d/9-early.toml", &device("gpu0", "0000:af:00.0"));
    // Not loaded: wrong suffix, hidden, a directory, and an unreadable-looking leftover.
    dir.write("policy.d/README", "this is not toml");
    dir.write("policy.d/old.toml.bak", "garbage = [");
    dir.write("policy.d/.hidden.toml", "garbage = [");
    std::fs::create_dir_all(dir.0.join("policy.d/sub.toml")).unwrap();
    dir.write("policy.d/sub.toml/inner.toml", "garbage = [");
    std::os::unix::fs::symlink("/nonexistent/target", dir.0.join("policy.d/.#lock.toml")).unwrap();

    let p = load(&dir.0).unwrap();
    let names: Vec<String> = p
        .sources
        .iter()
        .map(|s| s.strip_prefix(&dir.0).unwrap().display().to_string())
        .collect();
    // Byte order: "10-" < "20-" < "9-".
    assert_eq!(
        names,
        [
            "policy.toml",
            "policy.d/10-roles.toml",
            "policy.d/20-nic.toml",
            "policy.d/9-early.toml"
        ]
    );
    let ids: Vec<&str> = p.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["fpga0", "nic0", "gpu0"]);
}

#[test]
fn symlinked_drop_ins_are_followed() {
    let dir = TempDir::new();
    let elsewhere = dir.write("shared/nic.toml", &device("nic0", "0000:5e:00.0"));
    std::fs::create_dir_all(dir.0.join("etc/policy.d")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.0.join("etc/policy.d/nic.toml")).unwrap();
    let p = load(&dir.0.join("etc")).unwrap();
    assert_eq!(p.devices[0].id, "nic0");
}

#[test]
fn drop_ins_without_a_main_file() {
    let dir = TempDir::new();
    dir.write("policy.d/a.toml", &role("admin", ""));
    let p = load(&dir.0).unwrap();
    assert_eq!(p.sources.len(), 1);
    assert_eq!(p.roles[0].id, "admin");
}

#[test]
fn nothing_to_load_is_an_error() {
    let dir = TempDir::new();
    assert!(matches!(load(&dir.0), Err(PolicyError::NoFiles { .. })));
    dir.write("policy.d/notes.txt", "");
    let err = load(&dir.0).unwrap_err();
    assert!(matches!(err, PolicyError::NoFiles { .. }));
    assert!(err.to_string().contains(&dir.0.display().to_string()));
}

#[test]
fn a_missing_path_is_a_read_error() {
    let dir = TempDir::new();
    let err = load(&dir.0.join("absent.toml")).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
    assert!(err.to_string().ends_with("absent.toml"));
}

#[test]
fn an_empty_file_is_an_empty_policy() {
    let dir = TempDir::new();
    let p = load(&dir.write("policy.toml", "# nothing yet\n")).unwrap();
    assert!(p.devices.is_empty() && p.roles.is_empty());
}

#[test]
fn duplicates_across_files_name_both_places() {
    let dir = TempDir::new();
    let first = dir.write(
        "policy.toml",
        &format!("\n\n{}", device("fpga0", "0000:3b:00.0")),
    );
    let second = dir.write("policy.d/50-more.toml", &device("fpga0", "0000:3c:00.0"));
    let (file, line, message) = invalid(load(&dir.0).unwrap_err());
    assert_eq!(file, second.display().to_string());
    assert_eq!(line, 2);
    assert_eq!(
        message,
        format!(
            "duplicate device id 'fpga0' (first defined at {}:4)",
            first.display()
        )
    );

    dir.write("policy.d/50-more.toml", &device("fpga1", "0000:3b:00.0"));
    let (file, line, message) = invalid(load(&dir.0).unwrap_err());
    assert_eq!((file, line), (second.display().to_string(), 3));
    assert_eq!(
        message,
        format!(
            "duplicate PCI address '0000:3b:00.0' (first defined at {}:5)",
            first.display()
        )
    );

    dir.write("policy.d/50-more.toml", &role("admin", ""));
    dir.write(
        "policy.d/60-again.toml",
        &format!("# again\n{}", role("admin", "")),
    );
    let (file, line, message) = invalid(load(&dir.0).unwrap_err());
    assert!(file.ends_with("60-again.toml"));
    assert_eq!(line, 3);
    assert!(message.contains("duplicate role id 'admin'"));
    assert!(message.contains("50-more.toml:2"), "{message}");
}

#[test]
fn a_role_naming_a_device_no_file_declares() {
    let dir = TempDir::new();
    dir.write("policy.toml", &device("fpga0", "0000:3b:00.0"));
    let roles = dir.write(
        "policy.d/roles.toml",
        &role("ops", "devices = [\"fpga1\"]\n"),
    );
    let (file, line, message) = invalid(load(&dir.0).unwrap_err());
    assert_eq!((file, line), (roles.display().to_string(), 5));
    assert_eq!(message, "role 'ops' names unknown device 'fpga1'");
}

#[test]
fn errors_in_a_drop_in_name_that_file() {
    let dir = TempDir::new();
    dir.write("policy.toml", &device("fpga0", "0000:3b:00.0"));
    let bad = dir.write("policy.d/x.toml", "\n[[role]]\nid = \"r\"\nwho = 1\n");
    let err = load(&dir.0).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4: unknown field `who`", bad.display())),
        "{err}"
    );
}

#[test]
fn invalid_utf8_is_reported_with_its_line() {
    let dir = TempDir::new();
    let path = dir.0.join("policy.toml");
    std::fs::write(&path, b"# fine\n# also fine\nkind = \"\xff\"\n").unwrap();
    let (_, line, message) = invalid(load(&path).unwrap_err());
    assert_eq!(line, 3);
    assert!(message.contains("UTF-8"));
}

#[test]
fn revision_tracks_names_bytes_and_order_not_location() {
    let a = TempDir::new();
    let b = TempDir::new();
    let main = device("fpga0", "0000:3b:00.0");
    let drop_in = role("admin", "");
    for dir in [&a, &b] {
        dir.write("policy.toml", &main);
        dir.write("policy.d/10-a.toml", &drop_in);
    }
    let rev = load(&a.0).unwrap().revision;
    assert_eq!(rev.len(), 64);
    assert!(rev
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    // Same names and bytes elsewhere: same revision. Loading twice: same revision.
    assert_eq!(load(&b.0).unwrap().revision, rev);
    assert_eq!(load(&a.0).unwrap().revision, rev);

    // One byte more (a comment) changes it.
    b.write("policy.d/10-a.toml", &format!("{drop_in}#\n"));
    let changed = load(&b.0).unwrap().revision;
    assert_ne!(changed, rev);

    // The same bytes under another name change it.
    std::fs::remove_file(b.0.join("policy.d/10-a.toml")).unwrap();
    b.write("policy.d/10-b.toml", &drop_in);
    assert_ne!(load(&b.0).unwrap().revision, rev);

    // Moving bytes from one file into the other (same concatenation) changes it.
    let c = TempDir::new();
    c.write("policy.toml", &format!("{main}{drop_in}"));
    c.write("policy.d/10-a.toml", "");
    assert_ne!(load(&c.0).unwrap().revision, rev);
}

#[test]
fn revision_of_parse_str_covers_name_and_text() {
    let text = role("admin", "");
    let one = RolePolicy::parse_str_with(&text, "a.toml", &accounts()).unwrap();
    let same = RolePolicy::parse_str_with(&text, "a.toml", &accounts()).unwrap();
    let renamed = RolePolicy::parse_str_with(&text, "b.toml", &accounts()).unwrap();
    let edited = RolePolicy::parse_str_with(&format!("{text}\n"), "a.toml", &accounts()).unwrap();
    assert_eq!(one.revision, same.revision);
    assert_ne!(one.revision, renamed.revision);
    assert_ne!(one.revision, edited.revision);
}

#[test]
fn system_accounts_resolve_at_load() {
    let dir = TempDir::new();
    let path = dir.write(
        "policy.toml",
        "[[role]]\nid = \"admin\"\nusers = [\"root\"]\ngroups = [\"root\"]\noperations = [\"*\"]\n",
    );
    let p = RolePolicy::load(&path).unwrap();
    assert_eq!(
        (p.roles[0].users.clone(), p.roles[0].groups.clone()),
        (vec![0], vec![0])
    );

    let path = dir.write(
        "other.toml",
        "[[role]]\nid = \"r\"\ngroups = [\"accelgate-no-such-group\"]\noperations = [\"*\"]\n",
    );
    let err = RolePolicy::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains(":3: unknown group 'accelgate-no-such-group'"),
        "{err}"
    );
}
