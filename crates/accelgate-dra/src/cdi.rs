//! CDI specs: one file per prepared claim, one CDI device per slice, checked with the
//! `container-device-interface` crate before it is put in place.
//!
//! `cdiVersion` is the lowest version the spec's features need, so that older runtimes load it
//! too (podman 4.3 in Debian 12 reads up to 0.5.0): the crate computes it from the spec. What
//! we use needs 0.3.0 (env, bind mounts without a `type`, device nodes by path only), except
//! that a device name that does not begin with a letter needs 0.5.0 — a claim uid may begin
//! with a digit.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use container_device_interface::specs::config::Spec as CdiSpec;
use serde_json::{json, Value};

/// Vendor and class of every device we write: CDI ids are `accelgate.org/slice=<name>`.
pub const KIND: &str = "accelgate.org/slice";

/// Failures making or removing a spec.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI spec for claim {claim} is not valid: {reason}")]
    Invalid { claim: String, reason: String },
    #[error("cannot write CDI spec {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove CDI spec {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a container gets for one slice.
#[derive(Debug, Clone)]
pub struct SliceEdits {
    /// The CDI device name, `<claim-uid>-<dra device name>`.
    pub name: String,
    /// `device/slice`, for `ACCELGATE_SLICE`.
    pub slice: String,
    /// `/dev/vfio/...` nodes for a VF bound to vfio-pci; empty otherwise.
    pub vfio_nodes: Vec<String>,
}

/// Where the accelgate bus socket is on the host and in the container.
#[derive(Debug, Clone)]
pub struct BusMount {
    pub host_socket: PathBuf,
    pub container_socket: PathBuf,
}

/// The file of a claim's spec in `dir`.
pub fn spec_path(dir: &Path, claim_uid: &str) -> PathBuf {
    dir.join(format!("accelgate-{claim_uid}.json"))
}

/// The fully qualified id of a CDI device name.
pub fn qualified(name: &str) -> String {
    format!("{KIND}={name}")
}

/// Builds the spec of a claim with the lowest `cdiVersion` it needs, validated.
pub fn build_spec(
    claim_uid: &str,
    bus: &BusMount,
    slices: &[SliceEdits],
) -> Result<Value, CdiError> {
    let invalid = |reason: String| CdiError::Invalid {
        claim: claim_uid.to_owned(),
        reason,
    };
    let bus_address = format!("unix:path={}", bus.container_socket.display());
    let devices: Vec<Value> = slices
        .iter()
        .map(|s| {
            let mut edits = json!({
                "env": [
                    format!("ACCELGATE_BUS={bus_address}"),
                    format!("ACCELGATE_SLICE={}", s.slice),
                ],
                "mounts": [{
                    "hostPath": bus.host_socket.display().to_string(),
                    "containerPath": bus.container_socket.display().to_string(),
                    "options": ["bind"],
                }],
            });
            if !s.vfio_nodes.is_empty() {
                edits["deviceNodes"] = s.vfio_nodes.iter().map(|p| json!({ "path": p })).collect();
            }
            json!({ "name": s.name, "containerEdits": edits })
        })
        .collect();
    let mut spec = json!({
        "cdiVersion": container_device_interface::specs::config::CURRENT_VERSION,
        "kind": KIND,
        "devices": devices,
    });
    let parsed: CdiSpec =
        serde_json::from_value(spec.clone()).map_err(|e| invalid(e.to_string()))?;
    let lowest = container_device_interface::version::minimum_required_version(&parsed)
        .map_err(|e| invalid(format!("{e:#}")))?;
    spec["cdiVersion"] = Value::String(lowest.to_string());
    validate(&spec).map_err(invalid)?;
    Ok(spec)
}

/// Checks a spec as a runtime would load it: the JSON schema, the version against the features
/// used, vendor, class and device names, and every container edit.
pub fn validate(spec: &Value) -> Result<(), String> {
    let parsed: CdiSpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    container_device_interface::spec::new_spec(
        &parsed,
        &PathBuf::from("/var/run/cdi/check.json"),
        0,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:#}"))
}

/// Writes the spec so that a runtime never sees half a file: a temporary name the runtimes do
/// not load, flushed, then renamed into place.
pub fn write_spec(dir: &Path, claim_uid: &str, spec: &Value) -> Result<PathBuf, CdiError> {
    let path = spec_path(dir, claim_uid);
    let tmp = dir.join(format!(".accelgate-{claim_uid}.tmp"));
    let write_err = |source| CdiError::Write {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(write_err)?;
    let text = serde_json::to_vec_pretty(spec).map_err(|e| write_err(e.into()))?;
    let mut f = fs::File::create(&tmp).map_err(write_err)?;
    f.write_all(&text).map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    fs::rename(&tmp, &path).map_err(write_err)?;
    Ok(path)
}

/// Removes a claim's spec; one that is not there is removed already.
pub fn remove_spec(dir: &Path, claim_uid: &str) -> Result<(), CdiError> {
    let path = spec_path(dir, claim_uid);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CdiError::Remove { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> BusMount {
        BusMount {
            host_socket: "/run/dbus/system_bus_socket".into(),
            container_socket: "/run/dbus/system_bus_socket".into(),
        }
    }

    fn edits(name: &str, vfio: &[&str]) -> SliceEdits {
        SliceEdits {
            name: name.into(),
            slice: "fpga0/region0".into(),
            vfio_nodes: vfio.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn lowest_version_follows_the_features() {
        let spec = build_spec("a1b2", &bus(), &[edits("a1b2-fpga0-region0", &[])]).unwrap();
        assert_eq!(spec["cdiVersion"], "0.3.0");
        // A name beginning with a digit is a 0.5.0 feature.
        let spec = build_spec("1b2c", &bus(), &[edits("1b2c-fpga0-region0", &[])]).unwrap();
        assert_eq!(spec["cdiVersion"], "0.5.0");
        let spec = build_spec(
            "c3",
            &bus(),
            &[edits("c3-nic0-vf0", &["/dev/vfio/vfio", "/dev/vfio/42"])],
        )
        .unwrap();
        assert_eq!(spec["cdiVersion"], "0.3.0");
        assert_eq!(
            spec["devices"][0]["containerEdits"]["deviceNodes"][1]["path"],
            "/dev/vfio/42"
        );
    }

    #[test]
    fn invalid_specs_are_refused() {
        assert!(build_spec("x", &bus(), &[edits("bad/name", &[])]).is_err());
        assert!(
            build_spec("x", &bus(), &[]).is_err(),
            "a spec needs a device"
        );
    }
}
