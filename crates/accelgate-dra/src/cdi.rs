//! CDI specs: one file per prepared claim, one CDI device per slice, checked by [`spec`]
//! before it is put in place.
//!
//! `cdiVersion` is the lowest version the spec's features need, so that older runtimes load it
//! too (podman 4.3 in Debian 12 reads up to 0.5.0). What we write needs 0.3.0 (env, bind mounts
//! without a `type`, device nodes by path only), except that a device name that does not begin
//! with a letter needs 0.5.0 — a claim uid may begin with a digit.
//!
//! The check is our own, written from the CDI specification, not the
//! `container-device-interface` crate: that crate always builds a JSON-schema validator with an
//! HTTP client and a TLS stack compiled from C, about half of this plugin's build, to check a
//! file we write ourselves.

pub mod spec;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use spec::{ContainerEdits, Device, DeviceNode, Mount, Spec, SpecError};

/// Vendor and class of every device we write: CDI ids are `accelgate.org/slice=<name>`.
pub const KIND: &str = "accelgate.org/slice";

/// Failures making or removing a spec.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    // The reason is in the message too: the kubelet gets only the message.
    #[error("CDI spec for claim {claim} is not valid: {source}")]
    Invalid {
        claim: String,
        #[source]
        source: SpecError,
    },
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

/// Builds the spec of a claim with the lowest `cdiVersion` it needs, checked.
pub fn build_spec(
    claim_uid: &str,
    bus: &BusMount,
    slices: &[SliceEdits],
) -> Result<Spec, CdiError> {
    let bus_address = format!("unix:path={}", bus.container_socket.display());
    let devices = slices
        .iter()
        .map(|s| Device {
            name: s.name.clone(),
            container_edits: ContainerEdits {
                env: vec![
                    format!("ACCELGATE_BUS={bus_address}"),
                    format!("ACCELGATE_SLICE={}", s.slice),
                ],
                mounts: vec![Mount {
                    host_path: bus.host_socket.display().to_string(),
                    container_path: bus.container_socket.display().to_string(),
                    options: vec!["bind".into()],
                }],
                device_nodes: s
                    .vfio_nodes
                    .iter()
                    .map(|p| DeviceNode { path: p.clone() })
                    .collect(),
            },
        })
        .collect();
    let mut spec = Spec {
        cdi_version: String::new(),
        kind: KIND.to_owned(),
        devices,
        container_edits: ContainerEdits::default(),
    };
    spec.cdi_version = spec.minimum_version().to_owned();
    spec.check().map_err(|source| CdiError::Invalid {
        claim: claim_uid.to_owned(),
        source,
    })?;
    Ok(spec)
}

/// Writes the spec so that a runtime never sees half a file: a temporary name the runtimes do
/// not load, flushed, then renamed into place.
pub fn write_spec(dir: &Path, claim_uid: &str, spec: &Spec) -> Result<PathBuf, CdiError> {
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
        assert_eq!(spec.cdi_version, "0.3.0");
        // A name beginning with a digit is a 0.5.0 feature.
        let spec = build_spec("1b2c", &bus(), &[edits("1b2c-fpga0-region0", &[])]).unwrap();
        assert_eq!(spec.cdi_version, "0.5.0");
        let spec = build_spec(
            "c3",
            &bus(),
            &[edits("c3-nic0-vf0", &["/dev/vfio/vfio", "/dev/vfio/42"])],
        )
        .unwrap();
        assert_eq!(spec.cdi_version, "0.3.0");
        assert_eq!(
            spec.devices[0].container_edits.device_nodes[1].path,
            "/dev/vfio/42"
        );
        // What is written reads back as the same spec.
        let text = serde_json::to_vec(&spec).unwrap();
        assert_eq!(Spec::from_json(&text).unwrap(), spec);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let err = build_spec("x", &bus(), &[edits("bad/name", &[])]).unwrap_err();
        assert!(
            matches!(
                &err,
                CdiError::Invalid {
                    source: SpecError::DeviceName { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            build_spec("x", &bus(), &[]),
            Err(CdiError::Invalid {
                source: SpecError::NoDevices,
                ..
            })
        ));
        let relative = BusMount {
            host_socket: "/run/dbus/system_bus_socket".into(),
            container_socket: "run/bus".into(),
        };
        assert!(matches!(
            build_spec("x", &relative, &[edits("x-a", &[])]),
            Err(CdiError::Invalid {
                source: SpecError::RelativePath { .. },
                ..
            })
        ));
        let twice = [edits("x-a", &[]), edits("x-a", &[])];
        assert!(matches!(
            build_spec("x", &bus(), &twice),
            Err(CdiError::Invalid {
                source: SpecError::DuplicateDevice(_),
                ..
            })
        ));
    }
}
