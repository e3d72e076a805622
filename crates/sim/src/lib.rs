//! Simulated hardware for `accelgated --simulate DIR`: a sysfs-shaped tree of devices
//! ([`build`]) and an emulator that plays the kernel and the devices ([`Emulator`]).
//! The contract (layout, registers, behaviour) is docs/simulated-hardware.md.
//!
//! The simulator sits below the hardware crate: it plays the kernel (sysfs attributes,
//! `resourceN` files, the firmware-upload class) and knows nothing of the daemon.

#![forbid(unsafe_code)]

mod emulator;
mod files;
pub mod flash;
mod spec;
mod tree;

use std::path::{Path, PathBuf};

pub use emulator::{image_tag, request_hotplug, Emulator, HOTPLUG, UNPACED_ENV};
pub use spec::scale_bdf;
pub use spec::{
    FwEffect, FwEntrySpec, MtdSpec, PfSpec, RegionSpec, SimSpec, VfSpec, REG_ID, REG_IMAGE_STATUS,
    REG_IMAGE_TAG, REG_PERSONALITY_TAG, REG_REGION_ID, SIM_DRIVER, SIM_VF_DRIVER,
    TEST_FIRMWARE_MAX,
};
pub use tree::MANIFEST;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid simulator manifest")]
    Manifest(#[source] serde_json::Error),
    #[error("invalid simulator spec: {0}")]
    InvalidSpec(String),
    #[error("inotify failed")]
    Inotify(#[source] nix::Error),
    #[error("cannot start an emulator thread")]
    Thread(#[source] std::io::Error),
}

impl SimError {
    /// Adapter for `map_err` that names the path.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
        move |source| SimError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds the tree under dir, or reuses an existing one (idempotent): missing parts are
/// created, BAR contents are kept, firmware uploads interrupted by a crash end idle with
/// error "<status>:hw-error", and VFs are reconciled with `sriov_numvfs`. Writes the manifest
/// `dir/sim.json` last; [`Emulator::start`] reads it.
pub fn build(dir: &Path, spec: &SimSpec) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(SimError::io(dir))?;
    tree::Tree::new(dir, spec.clone())?.build()
}

#[cfg(test)]
mod tests;
