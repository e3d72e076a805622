//! The CDI spec format for what this plugin writes, and the check every spec passes before it
//! is put in place.
//!
//! Written from the Container Device Interface specification (SPEC.md in
//! github.com/cncf-tags/container-device-interface) and the version rules its reference
//! implementation applies when runtimes load a spec. The model covers only the part of the
//! format the plugin writes: devices with `env`, bind `mounts` and `deviceNodes` by `path`.
//! Any other field is refused as unknown (fail closed: a new feature must be added here, with
//! its version rule, before the plugin can write it).
//!
//! What the check refuses, as the spec and runtimes do:
//! - a missing required field (`cdiVersion`, `kind`, `devices`, a device's `name`, a mount's
//!   `hostPath` and `containerPath`, a device node's `path`);
//! - a `cdiVersion` that is not a released version, or lower than the features used need;
//! - a `kind` that is not `<vendor>/<class>`: the vendor a DNS subdomain (at most 253
//!   characters), the class at most 63, both starting with a letter and ending with a letter or
//!   digit, with letters, digits, `-`, `_` and `.` between;
//! - no device, a device name that does not start and end with a letter or digit or has other
//!   characters than letters, digits, `-`, `_`, `.` and `:`, two devices of the same name, a
//!   device without container edits;
//! - an `env` entry that is not `NAME=value`, an empty host path, a container path (mount
//!   destination or device node) that is not absolute.
//!
//! Versions: 0.3.0 is the earliest runtimes accept. What changed since, for the fields here:
//! 0.4.0 added a mount's `type` (not written), 0.5.0 allowed device names that start with a
//! digit (and added a device node's `hostPath`, not written), 0.6.0 allowed dots in the class
//! (and added annotations, not written). podman 4.3 (Debian 12) reads up to 0.5.0.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Released CDI versions, oldest first; earlier ones are no longer accepted by runtimes.
pub const RELEASED_VERSIONS: [&str; 8] = [
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The longest vendor part of a kind (a DNS subdomain).
const MAX_VENDOR_LEN: usize = 253;
/// The longest class part of a kind.
const MAX_CLASS_LEN: usize = 63;

/// Why a spec is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("not a CDI spec of the supported form: {0}")]
    Format(String),
    #[error("cdiVersion {0:?} is not a released CDI version (0.3.0 or later)")]
    UnknownVersion(String),
    #[error("cdiVersion {declared} is too low: the spec's features need {needed}")]
    VersionTooLow {
        declared: String,
        needed: &'static str,
    },
    #[error("kind {kind:?}: {reason}")]
    Kind { kind: String, reason: &'static str },
    #[error("the spec has no device")]
    NoDevices,
    #[error("device name {name:?}: {reason}")]
    DeviceName { name: String, reason: &'static str },
    #[error("device {0:?} is defined twice")]
    DuplicateDevice(String),
    #[error("device {0:?} has no container edits")]
    EmptyDevice(String),
    #[error("env entry {0:?} is not NAME=value")]
    Env(String),
    #[error("{what} {path:?} is not an absolute path")]
    RelativePath { what: &'static str, path: String },
    #[error("a mount of {0:?} has an empty host path")]
    EmptyHostPath(String),
}

/// A CDI spec file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    /// Edits applied when any device of the spec is requested.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device a container can request as `<kind>=<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

/// Changes to the container's OCI config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// `NAME=value` entries appended to the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// A device node, at the same path on the host and in the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
}

/// A mount without a filesystem `type` (a bind mount, by its options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }

    fn check(&self) -> Result<(), SpecError> {
        for entry in &self.env {
            match entry.split_once('=') {
                Some((name, _)) if !name.is_empty() => {}
                _ => return Err(SpecError::Env(entry.clone())),
            }
        }
        for node in &self.device_nodes {
            absolute("device node path", &node.path)?;
        }
        for mount in &self.mounts {
            if mount.host_path.is_empty() {
                return Err(SpecError::EmptyHostPath(mount.container_path.clone()));
            }
            absolute("mount container path", &mount.container_path)?;
        }
        Ok(())
    }
}

impl Spec {
    /// Reads a spec as a runtime loads it: the JSON, then [`Spec::check`].
    pub fn from_json(bytes: &[u8]) -> Result<Spec, SpecError> {
        let spec: Spec =
            serde_json::from_slice(bytes).map_err(|e| SpecError::Format(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    /// The lowest CDI version whose rules allow everything this spec uses.
    pub fn minimum_version(&self) -> &'static str {
        let (_, class) = self.kind.split_once('/').unwrap_or(("", &self.kind));
        if class.contains('.') {
            return "0.6.0";
        }
        let starts_with_letter = |name: &str| name.starts_with(|c: char| c.is_ascii_alphabetic());
        if self.devices.iter().any(|d| !starts_with_letter(&d.name)) {
            return "0.5.0";
        }
        "0.3.0"
    }

    /// Checks everything the spec defines; the first refusal is returned.
    pub fn check(&self) -> Result<(), SpecError> {
        let declared = parse_version(&self.cdi_version)
            .filter(|v| {
                RELEASED_VERSIONS
                    .iter()
                    .any(|r| parse_version(r) == Some(*v))
            })
            .ok_or_else(|| SpecError::UnknownVersion(self.cdi_version.clone()))?;
        check_kind(&self.kind)?;
        if self.devices.is_empty() {
            return Err(SpecError::NoDevices);
        }
        let mut names = BTreeSet::new();
        for device in &self.devices {
            check_device_name(&device.name)?;
            if !names.insert(device.name.as_str()) {
                return Err(SpecError::DuplicateDevice(device.name.clone()));
            }
            if device.container_edits.is_empty() {
                return Err(SpecError::EmptyDevice(device.name.clone()));
            }
            device.container_edits.check()?;
        }
        self.container_edits.check()?;
        let needed = self.minimum_version();
        if parse_version(needed).is_some_and(|n| declared < n) {
            return Err(SpecError::VersionTooLow {
                declared: self.cdi_version.clone(),
                needed,
            });
        }
        Ok(())
    }
}

/// `X.Y.Z` as numbers, comparable in version order.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    });
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

fn absolute(what: &'static str, path: &str) -> Result<(), SpecError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(SpecError::RelativePath {
            what,
            path: path.to_owned(),
        })
    }
}

/// A vendor or class: starts with a letter, ends with a letter or digit, letters, digits,
/// `-`, `_` and `.` between.
fn name_part_reason(part: &str, max: usize) -> Option<&'static str> {
    let bytes = part.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Some("an empty vendor or class");
    };
    if part.len() > max {
        return Some("a vendor longer than 253 or a class longer than 63 characters");
    }
    if !first.is_ascii_alphabetic() {
        return Some("vendor and class must start with a letter");
    }
    if !last.is_ascii_alphanumeric() {
        return Some("vendor and class must end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Some("vendor and class hold only letters, digits, '-', '_' and '.'");
    }
    None
}

fn check_kind(kind: &str) -> Result<(), SpecError> {
    let refuse = |reason| SpecError::Kind {
        kind: kind.to_owned(),
        reason,
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(refuse("not <vendor>/<class>"));
    };
    if class.contains('/') {
        return Err(refuse("more than one '/'"));
    }
    if let Some(reason) = name_part_reason(vendor, MAX_VENDOR_LEN) {
        return Err(refuse(reason));
    }
    // The vendor is a DNS subdomain: no empty label between dots.
    if vendor.split('.').any(str::is_empty) {
        return Err(refuse("the vendor has an empty DNS label"));
    }
    if let Some(reason) = name_part_reason(class, MAX_CLASS_LEN) {
        return Err(refuse(reason));
    }
    Ok(())
}

fn check_device_name(name: &str) -> Result<(), SpecError> {
    let refuse = |reason| SpecError::DeviceName {
        name: name.to_owned(),
        reason,
    };
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(refuse("empty"));
    };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(refuse("must start and end with a letter or digit"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(refuse("holds only letters, digits, '-', '_', '.' and ':'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> serde_json::Value {
        json!({
            "cdiVersion": "0.3.0",
            "kind": "accelgate.org/slice",
            "devices": [{
                "name": "c3-nic0-vf0",
                "containerEdits": {
                    "env": ["ACCELGATE_SLICE=nic0/vf0"],
                    "mounts": [{
                        "hostPath": "/run/dbus/system_bus_socket",
                        "containerPath": "/run/dbus/system_bus_socket",
                        "options": ["bind"],
                    }],
                    "deviceNodes": [{ "path": "/dev/vfio/42" }],
                },
            }],
        })
    }

    fn load(v: &serde_json::Value) -> Result<Spec, SpecError> {
        Spec::from_json(&serde_json::to_vec(v).unwrap())
    }

    /// `good()` with one change at a JSON pointer.
    fn with(pointer: &str, value: serde_json::Value) -> Result<Spec, SpecError> {
        let mut v = good();
        *v.pointer_mut(pointer).unwrap() = value;
        load(&v)
    }

    fn without(parent: &str, field: &str) -> Result<Spec, SpecError> {
        let mut v = good();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(field);
        load(&v)
    }

    #[test]
    fn a_spec_of_the_written_form_loads_and_round_trips() {
        let spec = load(&good()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), good());
        assert_eq!(spec.minimum_version(), "0.3.0");
    }

    #[test]
    fn required_fields_are_required() {
        for (parent, field) in [
            ("", "cdiVersion"),
            ("", "kind"),
            ("", "devices"),
            ("/devices/0", "name"),
            ("/devices/0/containerEdits/mounts/0", "hostPath"),
            ("/devices/0/containerEdits/mounts/0", "containerPath"),
            ("/devices/0/containerEdits/deviceNodes/0", "path"),
        ] {
            let err = without(parent, field).unwrap_err();
            assert!(
                matches!(&err, SpecError::Format(m) if m.contains(field)),
                "{parent}/{field}: {err}"
            );
        }
    }

    #[test]
    fn fields_outside_the_supported_form_are_refused() {
        let err = with("/devices/0/containerEdits/mounts/0/options", json!("bind")).unwrap_err();
        assert!(matches!(err, SpecError::Format(_)), "{err}");
        let mut v = good();
        v["devices"][0]["containerEdits"]["mounts"][0]["type"] = json!("bind");
        assert!(matches!(load(&v), Err(SpecError::Format(_))));
        let mut v = good();
        v["annotations"] = json!({ "a": "b" });
        assert!(matches!(load(&v), Err(SpecError::Format(_))));
        assert!(matches!(
            Spec::from_json(b"not json"),
            Err(SpecError::Format(_))
        ));
    }

    #[test]
    fn versions_must_be_released_and_high_enough() {
        for bad in [
            "0.2.0", "0.9.0", "1.2.0", "0.3", "0.3.0.1", "v0.3.0", "0.3.x", "",
        ] {
            assert_eq!(
                with("/cdiVersion", json!(bad)),
                Err(SpecError::UnknownVersion(bad.into())),
                "{bad}"
            );
        }
        for good_version in RELEASED_VERSIONS {
            assert!(with("/cdiVersion", json!(good_version)).is_ok());
        }
        // A device name that starts with a digit came with 0.5.0.
        let mut v = good();
        v["devices"][0]["name"] = json!("1b2c-fpga0-region0");
        assert_eq!(
            load(&v),
            Err(SpecError::VersionTooLow {
                declared: "0.3.0".into(),
                needed: "0.5.0"
            })
        );
        v["cdiVersion"] = json!("0.4.0");
        assert!(matches!(load(&v), Err(SpecError::VersionTooLow { .. })));
        v["cdiVersion"] = json!("0.5.0");
        assert_eq!(load(&v).unwrap().minimum_version(), "0.5.0");
        // Dots in the class came with 0.6.0.
        let mut v = good();
        v["kind"] = json!("accelgate.org/slice.v1");
        v["cdiVersion"] = json!("0.5.0");
        assert!(matches!(
            load(&v),
            Err(SpecError::VersionTooLow {
                needed: "0.6.0",
                ..
            })
        ));
        v["cdiVersion"] = json!("0.6.0");
        assert!(load(&v).is_ok());
    }

    #[test]
    fn kinds_must_be_vendor_slash_class() {
        for bad in [
            "slice",
            "accelgate.org/",
            "/slice",
            "accelgate.org/slice/x",
            "accelgate.org/slice-",
            "accelgate.org/-slice",
            "accelgate.org/1slice",
            "accelgate.org/sl ice",
            "accelgate..org/slice",
            "accelgate.org./slice",
            "9accelgate.org/slice",
            "accel_gate+.org/slice",
        ] {
            assert!(
                matches!(with("/kind", json!(bad)), Err(SpecError::Kind { .. })),
                "{bad}"
            );
        }
        let long_class = format!("accelgate.org/{}", "s".repeat(64));
        assert!(matches!(
            with("/kind", json!(long_class)),
            Err(SpecError::Kind { .. })
        ));
        let long_vendor = format!("{}/slice", "a".repeat(254));
        assert!(matches!(
            with("/kind", json!(long_vendor)),
            Err(SpecError::Kind { .. })
        ));
        for ok in ["vendor.com/foo", "a/b", "x-y_z.example/Cls_9"] {
            assert!(with("/kind", json!(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn device_names_follow_the_syntax() {
        for bad in ["", "-a", "a-", "a/b", "a=b", "a b", "é", "a.", ":a"] {
            assert!(
                matches!(
                    with("/devices/0/name", json!(bad)),
                    Err(SpecError::DeviceName { .. })
                ),
                "{bad:?}"
            );
        }
        for ok in ["a", "a-b_c.d:e", "Z9"] {
            assert!(with("/devices/0/name", json!(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn devices_must_exist_be_unique_and_edit_something() {
        assert_eq!(with("/devices", json!([])), Err(SpecError::NoDevices));
        let mut v = good();
        let twin = v["devices"][0].clone();
        v["devices"].as_array_mut().unwrap().push(twin);
        assert_eq!(
            load(&v),
            Err(SpecError::DuplicateDevice("c3-nic0-vf0".into()))
        );
        assert_eq!(
            with("/devices/0/containerEdits", json!({})),
            Err(SpecError::EmptyDevice("c3-nic0-vf0".into()))
        );
    }

    #[test]
    fn edits_are_checked() {
        for bad in ["NOEQUALS", "=value", ""] {
            assert_eq!(
                with("/devices/0/containerEdits/env", json!([bad])),
                Err(SpecError::Env(bad.into()))
            );
        }
        assert!(with("/devices/0/containerEdits/env", json!(["A="])).is_ok());
        assert!(matches!(
            with(
                "/devices/0/containerEdits/mounts/0/containerPath",
                json!("run/dbus")
            ),
            Err(SpecError::RelativePath { .. })
        ));
        assert!(matches!(
            with(
                "/devices/0/containerEdits/deviceNodes/0/path",
                json!("dev/vfio/42")
            ),
            Err(SpecError::RelativePath { .. })
        ));
        assert!(matches!(
            with("/devices/0/containerEdits/mounts/0/hostPath", json!("")),
            Err(SpecError::EmptyHostPath(_))
        ));
        // The spec-wide edits follow the same rules.
        let mut v = good();
        v["containerEdits"] = json!({ "env": ["BAD"] });
        assert_eq!(load(&v), Err(SpecError::Env("BAD".into())));
    }
}
