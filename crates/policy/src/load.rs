//! Finding the policy files, checking them together, and fingerprinting what was loaded.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::accounts::{Accounts, SystemAccounts};
use super::parse::{parse_fragment, Fragment, PolicyError, Source};
use super::{LoaderBackend, RolePolicy};

/// The main file of a policy directory.
const MAIN_FILE: &str = "policy.toml";
/// The drop-in directory of a policy directory.
const DROP_IN_DIR: &str = "policy.d";

/// One file to load: where it is, and the name it contributes to the revision.
struct PolicyFile {
    path: PathBuf,
    /// Relative to the directory loaded (or the bare file name), so that the revision does not
    /// change when the same files are loaded from elsewhere.
    revision_name: Vec<u8>,
}

impl RolePolicy {
    /// Loads `PATH` (one file), or `PATH/policy.toml` plus `PATH/policy.d/*.toml` in name order
    /// when `PATH` is a directory.
    pub fn load(path: &Path) -> Result<RolePolicy, PolicyError> {
        Self::load_with(path, &SystemAccounts)
    }

    /// [`RolePolicy::load`], resolving user and group names through `accounts`.
    pub fn load_with(path: &Path, accounts: &dyn Accounts) -> Result<RolePolicy, PolicyError> {
        let files = policy_files(path)?;
        if files.is_empty() {
            return Err(PolicyError::NoFiles {
                path: path.display().to_string(),
            });
        }
        let mut fragments = Vec::with_capacity(files.len());
        let mut hasher = Sha256::new();
        for file in &files {
            let display = file.path.display().to_string();
            let bytes = std::fs::read(&file.path).map_err(|source| PolicyError::Read {
                file: display.clone(),
                source,
            })?;
            hash_file(&mut hasher, &file.revision_name, &bytes);
            let text = utf8(&bytes, &display)?;
            fragments.push(parse_fragment(
                &Source {
                    file: &display,
                    text,
                },
                accounts,
            )?);
        }
        merge(
            fragments,
            hex(&hasher.finalize()),
            files.into_iter().map(|f| f.path).collect(),
        )
    }

    /// Parses one file's text; `name` is used in error messages.
    pub fn parse_str(text: &str, name: &str) -> Result<RolePolicy, PolicyError> {
        Self::parse_str_with(text, name, &SystemAccounts)
    }

    /// [`RolePolicy::parse_str`], resolving user and group names through `accounts`. The
    /// result has no `sources`; its revision covers `name` and `text`.
    pub fn parse_str_with(
        text: &str,
        name: &str,
        accounts: &dyn Accounts,
    ) -> Result<RolePolicy, PolicyError> {
        let fragment = parse_fragment(&Source { file: name, text }, accounts)?;
        let mut hasher = Sha256::new();
        hash_file(&mut hasher, name.as_bytes(), text.as_bytes());
        merge(vec![fragment], hex(&hasher.finalize()), Vec::new())
    }
}

/// The files `path` stands for, in load order.
fn policy_files(path: &Path) -> Result<Vec<PolicyFile>, PolicyError> {
    let read_error = |p: &Path| {
        let file = p.display().to_string();
        move |source| PolicyError::Read { file, source }
    };
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    if !meta.is_dir() {
        let name = path.file_name().unwrap_or(path.as_os_str());
        return Ok(vec![PolicyFile {
            path: path.to_path_buf(),
            revision_name: name.as_bytes().to_vec(),
        }]);
    }

    let mut files = Vec::new();
    let main = path.join(MAIN_FILE);
    match std::fs::metadata(&main) {
        Ok(_) => files.push(PolicyFile {
            path: main,
            revision_name: MAIN_FILE.as_bytes().to_vec(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(read_error(&main)(e)),
    }

    let drop_in = path.join(DROP_IN_DIR);
    let entries = match std::fs::read_dir(&drop_in) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(read_error(&drop_in)(e)),
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error(&drop_in))?;
        let name = entry.file_name();
        // `*.toml` as a shell glob means it: hidden names (editor lock files, `.#x.toml`) are
        // not matched.
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        // Follows symlinks: a link to a file is a file, as admins expect in `*.d` directories.
        let meta = std::fs::metadata(entry.path()).map_err(read_error(&entry.path()))?;
        if meta.is_file() {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let mut revision_name = format!("{DROP_IN_DIR}/").into_bytes();
        revision_name.extend_from_slice(name.as_bytes());
        files.push(PolicyFile {
            path: drop_in.join(&name),
            revision_name,
        });
    }
    Ok(files)
}

fn utf8<'a>(bytes: &'a [u8], file: &str) -> Result<&'a str, PolicyError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        PolicyError::Invalid {
            file: file.to_owned(),
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            message: "file is not valid UTF-8".into(),
        }
    })
}

/// Length-prefixes both parts so that no two different (name, contents) sequences hash alike.
fn hash_file(hasher: &mut Sha256, name: &[u8], contents: &[u8]) {
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name);
    hasher.update((contents.len() as u64).to_le_bytes());
    hasher.update(contents);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where something was first defined, for "defined twice" errors that name both places.
struct FirstSeen {
    file: String,
    line: usize,
}

fn duplicate(file: &str, line: usize, what: String, first: &FirstSeen) -> PolicyError {
    PolicyError::Invalid {
        file: file.to_owned(),
        line,
        message: format!("{what} (first defined at {}:{})", first.file, first.line),
    }
}

/// Checks the fragments against each other and assembles the policy.
fn merge(
    fragments: Vec<Fragment>,
    revision: String,
    sources: Vec<PathBuf>,
) -> Result<RolePolicy, PolicyError> {
    let mut device_ids: HashMap<String, FirstSeen> = HashMap::new();
    let mut pcis: HashMap<String, FirstSeen> = HashMap::new();
    let mut role_ids: HashMap<String, FirstSeen> = HashMap::new();
    let mut devices = Vec::new();
    let mut roles = Vec::new();

    for fragment in &fragments {
        for d in &fragment.devices {
            let seen_at = |line| FirstSeen {
                file: fragment.file.clone(),
                line,
            };
            if let Some(first) = device_ids.get(&d.policy.id) {
                let what = format!("duplicate device id '{}'", d.policy.id);
                return Err(duplicate(&fragment.file, d.id_line, what, first));
            }
            device_ids.insert(d.policy.id.clone(), seen_at(d.id_line));
            if let Some(first) = pcis.get(&d.policy.pci) {
                let what = format!("duplicate PCI address '{}'", d.policy.pci);
                return Err(duplicate(&fragment.file, d.pci_line, what, first));
            }
            pcis.insert(d.policy.pci.clone(), seen_at(d.pci_line));
        }
        for r in &fragment.roles {
            if let Some(first) = role_ids.get(&r.role.id) {
                let what = format!("duplicate role id '{}'", r.role.id);
                return Err(duplicate(&fragment.file, r.id_line, what, first));
            }
            role_ids.insert(
                r.role.id.clone(),
                FirstSeen {
                    file: fragment.file.clone(),
                    line: r.id_line,
                },
            );
        }
    }

    // A loader that shares a firmware entry would write an image to the flash without the
    // firmware's signature check: refused, across files and devices.
    let mut firmware_entries: HashMap<(LoaderBackend, &str), (&str, FirstSeen)> = HashMap::new();
    for fragment in &fragments {
        for d in &fragment.devices {
            if let Some(fw) = &d.policy.firmware {
                let seen = FirstSeen {
                    file: fragment.file.clone(),
                    line: d.id_line,
                };
                firmware_entries.insert((fw.backend, fw.name.as_str()), (&d.policy.id, seen));
            }
        }
    }
    for fragment in &fragments {
        for d in &fragment.devices {
            let personality = d.policy.personality.iter().map(|l| ("personality", l));
            let loaders = d
                .policy
                .slices
                .iter()
                .filter_map(|s| s.loader.as_ref().map(|l| (s.id.as_str(), l)));
            for (user, loader) in personality.chain(loaders) {
                if let Some((owner, first)) =
                    firmware_entries.get(&(loader.backend, loader.name.as_str()))
                {
                    let what = if user == "personality" {
                        format!("the personality loader of device '{}'", d.policy.id)
                    } else {
                        format!("the loader of slice '{}/{user}'", d.policy.id)
                    };
                    return Err(PolicyError::Invalid {
                        file: fragment.file.clone(),
                        line: d.id_line,
                        message: format!(
                            "{what} uses '{}', the firmware entry of device '{owner}' \
                             (defined at {}:{}): images loaded through it would reach the \
                             firmware without its signature check; give the loader its own entry",
                            loader.name, first.file, first.line
                        ),
                    });
                }
            }
        }
    }

    // Roles may name devices declared in any file, so this waits until all are known.
    for fragment in &fragments {
        for r in &fragment.roles {
            let names = r.role.devices.iter().flatten();
            for (name, &line) in names.zip(&r.device_lines) {
                if !device_ids.contains_key(name) {
                    return Err(PolicyError::Invalid {
                        file: fragment.file.clone(),
                        line,
                        message: format!("role '{}' names unknown device '{name}'", r.role.id),
                    });
                }
            }
        }
    }

    for fragment in fragments {
        devices.extend(fragment.devices.into_iter().map(|d| d.policy));
        roles.extend(fragment.roles.into_iter().map(|r| r.role));
    }
    Ok(RolePolicy {
        devices,
        roles,
        revision,
        sources,
    })
}
