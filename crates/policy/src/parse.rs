//! Validating one policy file: TOML text in, checked devices and roles out, or an error that
//! names the file and line. Checks that need every file at once (duplicate ids across files,
//! roles naming devices) are in `load`.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::accounts::Accounts;
use super::raw::{NameOrId, RawDevice, RawFile, RawLoader, RawRole, RawSlice, RawVfs};
use super::{
    DevicePolicy, FirmwarePolicy, LoaderBackend, LoaderSpec, Role, Scope, SliceKind, SlicePolicy,
    VfPolicy, DEFAULT_MAX_IMAGE_SIZE,
};
use accelgate_proto::names::{is_valid_id, vf_slice_id};
use accelgate_proto::operation::Operation;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A directory held neither `policy.toml` nor any `policy.d/*.toml`.
    #[error("{path}: no policy files (expected policy.toml or policy.d/*.toml)")]
    NoFiles { path: String },
}

/// BARs a PCI function can have.
const MAX_BAR: u8 = 5;
/// Upper bound of `[device.vfs] max`: the most VFs one PF can expose in one bus's devfn space.
const MAX_VFS: u32 = 256;

/// The text of one file and the name its errors carry.
pub(super) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte offset into the text.
    pub fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: self.line_at(span.start),
            message: message.into(),
        }
    }
}

/// A device checked on its own, with the lines that cross-file checks may need to point at.
pub(super) struct ParsedDevice {
    pub policy: DevicePolicy,
    pub id_line: usize,
    pub pci_line: usize,
}

/// A role checked on its own; `device_lines[i]` is the line of `role.devices[i]`.
pub(super) struct ParsedRole {
    pub role: Role,
    pub id_line: usize,
    pub device_lines: Vec<usize>,
}

/// Everything one file declares, checked as far as one file allows.
pub(super) struct Fragment {
    pub file: String,
    pub devices: Vec<ParsedDevice>,
    pub roles: Vec<ParsedRole>,
}

/// Parses and checks one file.
pub(super) fn parse_fragment(
    src: &Source<'_>,
    accounts: &dyn Accounts,
) -> Result<Fragment, PolicyError> {
    let raw: RawFile = toml::from_str(src.text).map_err(|e| PolicyError::Invalid {
        file: src.file.to_owned(),
        line: e.span().map_or(0, |s| src.line_at(s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    let devices = raw
        .device
        .into_iter()
        .map(|d| device(src, d.into_inner()))
        .collect::<Result<_, _>>()?;
    let roles = raw
        .role
        .into_iter()
        .map(|r| role(src, r.into_inner(), accounts))
        .collect::<Result<_, _>>()?;
    Ok(Fragment {
        file: src.file.to_owned(),
        devices,
        roles,
    })
}

fn checked_id(src: &Source<'_>, id: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
    if is_valid_id(id.get_ref()) {
        Ok(id.get_ref().clone())
    } else {
        Err(src.invalid(
            id.span(),
            format!(
                "invalid {what} id '{}' (expected [A-Za-z0-9_]+)",
                id.get_ref()
            ),
        ))
    }
}

/// `dddd:bb:dd.f` in lowercase hex, with a device number that fits 5 bits and a function that
/// fits 3, as the kernel names PCI functions in sysfs.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let is_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    let shaped = b.len() == 12
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b':',
            10 => c == b'.',
            _ => is_hex(c),
        });
    let device_ok = s
        .get(8..10)
        .and_then(|d| u8::from_str_radix(d, 16).ok())
        .is_some_and(|d| d <= 0x1f);
    let function_ok = b.get(11).is_some_and(|&f| (b'0'..=b'7').contains(&f));
    shaped && device_ok && function_ok
}

fn is_valid_kind(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Backend device names become one path element (`sys/class/firmware/<name>`, `/dev/<name>`),
/// so they must not be able to climb out of that directory.
fn is_valid_backend_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn backend(src: &Source<'_>, name: &Spanned<String>) -> Result<LoaderBackend, PolicyError> {
    match name.get_ref().as_str() {
        "fw-upload" => Ok(LoaderBackend::FwUpload),
        "mtd" => Ok(LoaderBackend::Mtd),
        other => Err(src.invalid(
            name.span(),
            format!("unknown backend '{other}' (expected fw-upload or mtd)"),
        )),
    }
}

fn backend_name(src: &Source<'_>, name: &Spanned<String>) -> Result<String, PolicyError> {
    if is_valid_backend_name(name.get_ref()) {
        Ok(name.get_ref().clone())
    } else {
        Err(src.invalid(
            name.span(),
            format!(
                "invalid backend device name '{}' (expected [A-Za-z0-9._-]+, not . or ..)",
                name.get_ref()
            ),
        ))
    }
}

fn loader(src: &Source<'_>, raw: &RawLoader) -> Result<LoaderSpec, PolicyError> {
    Ok(LoaderSpec {
        backend: backend(src, &raw.backend)?,
        name: backend_name(src, &raw.name)?,
    })
}

fn device(src: &Source<'_>, raw: RawDevice) -> Result<ParsedDevice, PolicyError> {
    let id = checked_id(src, &raw.id, "device")?;
    if !is_pci_address(raw.pci.get_ref()) {
        return Err(src.invalid(
            raw.pci.span(),
            format!(
                "invalid PCI address '{}' (expected dddd:bb:dd.f in lowercase hex)",
                raw.pci.get_ref()
            ),
        ));
    }
    if !is_valid_kind(raw.kind.get_ref()) {
        return Err(src.invalid(
            raw.kind.span(),
            format!(
                "invalid device kind '{}' (expected [a-z0-9_-]+)",
                raw.kind.get_ref()
            ),
        ));
    }
    let max_image_size = match &raw.max_image_size {
        None => DEFAULT_MAX_IMAGE_SIZE,
        Some(size) if *size.get_ref() == 0 => {
            return Err(src.invalid(size.span(), "max_image_size must be greater than 0"));
        }
        Some(size) => *size.get_ref(),
    };
    let firmware = raw
        .firmware
        .as_ref()
        .map(|fw| firmware(src, fw.get_ref()))
        .transpose()?;
    let personality = raw
        .personality
        .as_ref()
        .map(|p| loader(src, p.get_ref()))
        .transpose()?;
    let vfs = raw
        .vfs
        .map(|v| vf_policy(src, v.into_inner()))
        .transpose()?;

    // Each slice with the line of its id, for "first defined at".
    let mut slices: Vec<(SlicePolicy, usize)> = Vec::new();
    for raw_slice in raw.slice {
        let raw_slice = raw_slice.into_inner();
        let id_span = raw_slice.id.span();
        let offset_span = raw_slice.offset.span();
        let slice = slice(src, raw_slice)?;
        if let Some((_, first_line)) = slices.iter().find(|(s, _)| s.id == slice.id) {
            return Err(src.invalid(
                id_span,
                format!(
                    "duplicate slice id '{}' in device '{id}' (first defined at {}:{first_line})",
                    slice.id, src.file
                ),
            ));
        }
        if let Some(v) = &vfs {
            if (0..v.max).any(|n| vf_slice_id(n) == slice.id) {
                return Err(src.invalid(
                    id_span,
                    format!(
                        "slice id '{}' is taken by a VF slice of device '{id}'",
                        slice.id
                    ),
                ));
            }
        }
        if let Some((other, _)) = slices
            .iter()
            .find(|(s, _)| s.bar == slice.bar && windows_overlap(s, &slice))
        {
            return Err(src.invalid(
                offset_span,
                format!(
                    "slice '{}' overlaps slice '{}' in BAR {} of device '{id}'",
                    slice.id, other.id, slice.bar
                ),
            ));
        }
        let id_line = src.line_at(id_span.start);
        slices.push((slice, id_line));
    }

    Ok(ParsedDevice {
        id_line: src.line_at(raw.id.span().start),
        pci_line: src.line_at(raw.pci.span().start),
        policy: DevicePolicy {
            id,
            pci: raw.pci.into_inner(),
            kind: raw.kind.into_inner(),
            max_image_size,
            firmware,
            personality,
            slices: slices.into_iter().map(|(s, _)| s).collect(),
            vfs,
        },
    })
}

/// Slices end inside u64 (checked when each slice is read), so `offset + size` cannot wrap.
fn windows_overlap(a: &SlicePolicy, b: &SlicePolicy) -> bool {
    a.offset < b.offset + b.size && b.offset < a.offset + a.size
}

fn firmware(
    src: &Source<'_>,
    raw: &super::raw::RawFirmware,
) -> Result<FirmwarePolicy, PolicyError> {
    let backend = backend(src, &raw.backend)?;
    let name = backend_name(src, &raw.name)?;
    let mut keys = Vec::with_capacity(raw.keys.len());
    for key in &raw.keys {
        // Checked now so that a typo in a key shows up at load, not as a failed Flash later.
        if minisign_verify::PublicKey::from_base64(key.get_ref()).is_err() {
            return Err(src.invalid(
                key.span(),
                "invalid minisign public key (expected the base64 line of a .pub file)",
            ));
        }
        keys.push(key.get_ref().clone());
    }
    let min_version = match &raw.min_version {
        Some(v) if crate::version::FirmwareVersion::parse(v.get_ref()).is_some() => {
            Some(v.get_ref().clone())
        }
        Some(v) => {
            return Err(src.invalid(
                v.span(),
                "invalid min_version (expected dot-separated numbers, e.g. \"2.1.0\", \
                 optionally with a -pre-release or +build suffix)",
            ))
        }
        None => None,
    };
    Ok(FirmwarePolicy {
        backend,
        name,
        locked: raw.locked,
        keys,
        allow_unsigned: raw.allow_unsigned,
        min_version,
        allow_downgrade: raw.allow_downgrade,
    })
}

fn bar(src: &Source<'_>, bar: &Spanned<u8>) -> Result<u8, PolicyError> {
    if *bar.get_ref() <= MAX_BAR {
        Ok(*bar.get_ref())
    } else {
        Err(src.invalid(
            bar.span(),
            format!("invalid BAR {} (expected 0..=5)", bar.get_ref()),
        ))
    }
}

fn slice(src: &Source<'_>, raw: RawSlice) -> Result<SlicePolicy, PolicyError> {
    let id = checked_id(src, &raw.id, "slice")?;
    let kind = match raw.kind.get_ref().as_str() {
        "region" => SliceKind::Region,
        "window" => SliceKind::Window,
        "vf" => {
            return Err(src.invalid(
                raw.kind.span(),
                "VF slices are not declared one by one: use [device.vfs]",
            ));
        }
        other => {
            return Err(src.invalid(
                raw.kind.span(),
                format!("unknown slice kind '{other}' (expected region or window)"),
            ));
        }
    };
    let bar = bar(src, &raw.bar)?;
    let offset = *raw.offset.get_ref();
    let size = *raw.size.get_ref();
    if size == 0 {
        return Err(src.invalid(raw.size.span(), "slice size must be greater than 0"));
    }
    if offset.checked_add(size).is_none() {
        return Err(src.invalid(
            raw.size.span(),
            "slice offset + size does not fit in 64 bits",
        ));
    }
    let writable = writable_ranges(src, raw.writable, Some(size))?;
    let loader = match &raw.loader {
        None => None,
        Some(l) if kind == SliceKind::Window => {
            return Err(src.invalid(
                l.span(),
                format!("slice '{id}' is a window: only regions have a loader"),
            ));
        }
        Some(l) => Some(loader(src, l.get_ref())?),
    };
    Ok(SlicePolicy {
        id,
        kind,
        bar,
        offset,
        size,
        writable,
        loader,
    })
}

fn vf_policy(src: &Source<'_>, raw: RawVfs) -> Result<VfPolicy, PolicyError> {
    let max = *raw.max.get_ref();
    if !(1..=MAX_VFS).contains(&max) {
        return Err(src.invalid(
            raw.max.span(),
            format!("invalid VF count {max} (expected 1..=256)"),
        ));
    }
    let bar = raw
        .bar
        .as_ref()
        .map(|b| bar(src, b))
        .transpose()?
        .unwrap_or(0);
    // The VF BAR's size is only known from the hardware, so ranges are checked against it
    // when the daemon opens the VF, not here.
    let writable = raw
        .writable
        .map(|w| writable_ranges(src, w, None))
        .transpose()?;
    let revoke_driver = raw
        .revoke_driver
        .map(|d| revoke_driver(src, &d))
        .transpose()?;
    Ok(VfPolicy {
        max,
        bar,
        writable,
        pf_stub: raw.pf_stub.unwrap_or(false),
        revoke_driver,
    })
}

/// Longest kernel driver name accepted (the kernel's own are far shorter).
const MAX_DRIVER_NAME: usize = 64;

/// A driver name for `revoke_driver`: what `driver_override` takes and what names a directory
/// under `/sys/bus/pci/drivers` (letters, digits, `_`, `-`), and not one of the stubs, which
/// claim no BAR and so revoke nothing.
fn revoke_driver(src: &Source<'_>, raw: &Spanned<String>) -> Result<String, PolicyError> {
    let name = raw.get_ref();
    let well_formed = !name.is_empty()
        && name.len() <= MAX_DRIVER_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(src.invalid(
            raw.span(),
            format!(
                "invalid revoke_driver {:?} (expected a kernel driver name: letters, digits, \
                 '_' and '-', at most {MAX_DRIVER_NAME} characters)",
                name.chars().take(80).collect::<String>()
            ),
        ));
    }
    if matches!(
        name.as_str(),
        "pci-stub" | "pci-pf-stub" | "pci_stub" | "pci_pf_stub"
    ) {
        return Err(src.invalid(
            raw.span(),
            format!(
                "revoke_driver {name:?} claims no BAR when it binds, so it revokes no mapping; \
                 name the VF's own driver (e.g. igbvf for igb VFs)"
            ),
        ));
    }
    Ok(name.clone())
}

/// Checks `[start, end)` ranges against `limit` (the slice size, when known), sorts them and
/// rejects overlaps.
fn writable_ranges(
    src: &Source<'_>,
    raw: Vec<Spanned<Vec<u64>>>,
    limit: Option<u64>,
) -> Result<Vec<(u64, u64)>, PolicyError> {
    let mut ranges: Vec<Spanned<(u64, u64)>> = Vec::with_capacity(raw.len());
    for range in raw {
        let span = range.span();
        let (start, end) = match range.get_ref().as_slice() {
            &[start, end] => (start, end),
            _ => {
                return Err(src.invalid(
                    span,
                    "a writable range is a list of two numbers [start, end]",
                ));
            }
        };
        if start >= end {
            return Err(src.invalid(
                span,
                format!("writable range [{start:#x}, {end:#x}) is empty or reversed"),
            ));
        }
        if let Some(size) = limit.filter(|&size| end > size) {
            return Err(src.invalid(
                span,
                format!(
                    "writable range [{start:#x}, {end:#x}) ends past the slice (size {size:#x})"
                ),
            ));
        }
        ranges.push(Spanned::new(span, (start, end)));
    }
    let mut sorted = ranges;
    sorted.sort_by_key(|r| *r.get_ref());
    for pair in sorted.windows(2) {
        let ((a0, a1), (b0, b1)) = (*pair[0].get_ref(), *pair[1].get_ref());
        if b0 < a1 {
            // Point at whichever of the two comes later in the file.
            let later = if pair[1].span().start > pair[0].span().start {
                pair[1].span()
            } else {
                pair[0].span()
            };
            return Err(src.invalid(
                later,
                format!("writable ranges [{a0:#x}, {a1:#x}) and [{b0:#x}, {b1:#x}) overlap"),
            ));
        }
    }
    Ok(sorted.into_iter().map(Spanned::into_inner).collect())
}

fn resolve(
    src: &Source<'_>,
    entries: &[Spanned<NameOrId>],
    what: &str,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, PolicyError> {
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = match entry.get_ref() {
            NameOrId::Id(id) => *id,
            NameOrId::Name(name) => lookup(name)
                .ok_or_else(|| src.invalid(entry.span(), format!("unknown {what} '{name}'")))?,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn role(
    src: &Source<'_>,
    raw: RawRole,
    accounts: &dyn Accounts,
) -> Result<ParsedRole, PolicyError> {
    let id = checked_id(src, &raw.id, "role")?;
    let users = resolve(src, &raw.users, "user", |n| accounts.user_id(n))?;
    let groups = resolve(src, &raw.groups, "group", |n| accounts.group_id(n))?;
    if users.is_empty() && groups.is_empty() {
        return Err(src.invalid(
            raw.id.span(),
            format!("role '{id}' has no users and no groups"),
        ));
    }

    let scope = match raw.scope.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("all", _)) => Scope::All,
        Some(("assigned", _)) => Scope::Assigned,
        Some((other, span)) => {
            return Err(src.invalid(
                span,
                format!("unknown scope '{other}' (expected all or assigned)"),
            ));
        }
    };

    if raw.operations.get_ref().is_empty() {
        return Err(src.invalid(
            raw.operations.span(),
            format!("role '{id}' grants no operations"),
        ));
    }
    let mut operations: Vec<Operation> = Vec::new();
    for entry in raw.operations.get_ref() {
        let granted: Vec<Operation> = if entry.get_ref() == "*" {
            Operation::ALL.to_vec()
        } else {
            match entry.get_ref().parse::<Operation>() {
                Ok(op) => vec![op],
                Err(e) => return Err(src.invalid(entry.span(), e.to_string())),
            }
        };
        if scope == Scope::Assigned {
            if let Some(op) = granted.iter().find(|op| !op.is_tenant_slice_op()) {
                return Err(src.invalid(
                    entry.span(),
                    format!(
                        "scope \"assigned\" cannot grant {op} (only slice.read, slice.write, \
                         slice.map and slice.program)"
                    ),
                ));
            }
        }
        for op in granted {
            if !operations.contains(&op) {
                operations.push(op);
            }
        }
    }
    operations.sort();

    let (devices, device_lines) = match &raw.devices {
        None => (None, Vec::new()),
        Some(list) if list.get_ref().is_empty() => {
            return Err(src.invalid(
                list.span(),
                format!("role '{id}' covers no devices (omit devices to cover all)"),
            ));
        }
        Some(list) => {
            let mut names: Vec<String> = Vec::new();
            let mut lines = Vec::new();
            for name in list.get_ref() {
                let name_str = checked_id(src, name, "device")?;
                if !names.contains(&name_str) {
                    names.push(name_str);
                    lines.push(src.line_at(name.span().start));
                }
            }
            (Some(names), lines)
        }
    };

    let mut caller_caps = BTreeMap::new();
    for (op_name, cap_names) in &raw.caller_caps {
        let op = op_name
            .get_ref()
            .parse::<Operation>()
            .map_err(|e| src.invalid(op_name.span(), e.to_string()))?;
        if !operations.contains(&op) {
            return Err(src.invalid(
                op_name.span(),
                format!("caller_caps names {op}, which role '{id}' does not grant"),
            ));
        }
        let mut caps: Vec<caps::Capability> = Vec::new();
        for cap_name in cap_names {
            let cap = cap_name
                .get_ref()
                .parse::<caps::Capability>()
                .map_err(|_| {
                    src.invalid(
                        cap_name.span(),
                        format!("unknown capability '{}'", cap_name.get_ref()),
                    )
                })?;
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caller_caps.insert(op, caps);
    }

    Ok(ParsedRole {
        id_line: src.line_at(raw.id.span().start),
        device_lines,
        role: Role {
            id,
            users,
            groups,
            operations,
            scope,
            devices,
            caller_caps,
        },
    })
}
