//! Revoking every user mapping of a PCI function's BAR by binding, for a moment, a kernel
//! driver that claims it.
//!
//! Nothing in sysfs revokes one process's mmap of a `resourceN` file, and removing the
//! function does not either (measured: rig/README.md). What does is a driver claiming the BAR:
//! `__request_region()` calls `revoke_iomem()`, which zaps every user mapping of that range
//! in the iomem address space the `resourceN` mappings live in (kernels with
//! `CONFIG_IO_STRICT_DEVMEM`, without `iomem=relaxed`). The same option makes a new mmap of a
//! claimed range fail with `EINVAL`, which is how [`revoke_bar_mappings`] proves the
//! revocation was in force before it unbinds the driver again.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::pci::PciBdf;
use super::{write_attr, HwRoot};

/// How often to look again while the kernel binds or unbinds (the kernel does it inside the
/// write; a simulated host a moment after).
const POLL_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("invalid driver name {0:?}")]
    InvalidDriver(String),
    #[error("{bdf} already has the driver {driver} bound; the daemon binds only to a function without one")]
    AlreadyBound { bdf: PciBdf, driver: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the driver {driver} did not bind to {bdf} within {wait:?} (is its module loaded? does it \
         take this device?)"
    )]
    NotBound {
        driver: String,
        bdf: PciBdf,
        wait: Duration,
    },
    #[error("{bdf} got the driver {found} instead of {driver}")]
    WrongDriver {
        bdf: PciBdf,
        driver: String,
        found: String,
    },
    #[error(
        "the revocation is not in force: with {driver} bound to {bdf}, a new mapping of {path} \
         still succeeds, so the kernel did not revoke the old ones either (the driver claims no \
         BAR, or the kernel lacks CONFIG_IO_STRICT_DEVMEM or runs with iomem=relaxed)"
    )]
    NotInForce {
        driver: String,
        bdf: PciBdf,
        path: PathBuf,
    },
    #[error("cannot check the revocation: {what} {path} failed")]
    Check {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the driver {driver} did not let go of {bdf} within {wait:?}")]
    NotUnbound {
        driver: String,
        bdf: PciBdf,
        wait: Duration,
    },
}

/// What a successful revocation took.
#[derive(Clone, Copy, Debug)]
pub struct Revoked {
    /// From the `driver_override` write until the driver was bound.
    pub bind: Duration,
    /// From the unbind write until the driver was gone.
    pub unbind: Duration,
}

/// Revokes every user mapping of BAR `bar` of the function at `function_dir` (`bdf`): binds
/// `driver` through `driver_override` and `drivers_probe`, waits (up to `wait`) for it, checks
/// that a new mmap of `resource<bar>` now fails, then unbinds the driver and clears
/// `driver_override`, so the function is mappable again. The function must have no driver.
///
/// The caller must hold no mapping of the BAR it still means to use: its own mappings are
/// revoked too (an access through them faults with SIGBUS).
///
/// Fails closed: an error after the bind still unbinds and clears the override as far as it
/// can, and [`RevokeError::NotInForce`] means old mappings may still be alive.
pub fn revoke_bar_mappings(
    root: &HwRoot,
    function_dir: &Path,
    bdf: &PciBdf,
    bar: u8,
    driver: &str,
    wait: Duration,
) -> Result<Revoked, RevokeError> {
    let well_formed = !driver.is_empty()
        && driver.len() <= 64
        && driver
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed {
        return Err(RevokeError::InvalidDriver(
            driver.chars().take(80).collect(),
        ));
    }
    if let Some(found) = bound_driver(function_dir) {
        return Err(RevokeError::AlreadyBound {
            bdf: bdf.clone(),
            driver: found,
        });
    }
    let started = Instant::now();
    let overridden = function_dir.join("driver_override");
    write(&overridden, driver)?;
    let bound = bind(root, function_dir, bdf, driver, wait);
    let bind_took = started.elapsed();
    let checked = match bound {
        Ok(()) => check_in_force(root, function_dir, bdf, bar, driver),
        Err(e) => Err(e),
    };
    // Whatever the outcome, the function goes back to having no driver and no override.
    let unbind_started = Instant::now();
    let unbound = match bound_driver(function_dir) {
        Some(found) => unbind(function_dir, bdf, &found, wait),
        None => Ok(()),
    };
    let unbind_took = unbind_started.elapsed();
    // `echo > driver_override` clears it (the kernel takes a lone newline as "none").
    let cleared = write(&overridden, "\n");
    checked?;
    unbound?;
    cleared?;
    Ok(Revoked {
        bind: bind_took,
        unbind: unbind_took,
    })
}

/// The driver bound to the function, if any.
fn bound_driver(function_dir: &Path) -> Option<String> {
    let link = std::fs::read_link(function_dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

fn write(path: &Path, value: &str) -> Result<(), RevokeError> {
    write_attr(path, value).map_err(|source| RevokeError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `drivers_probe` of the PCI bus, then waits for the driver link.
fn bind(
    root: &HwRoot,
    function_dir: &Path,
    bdf: &PciBdf,
    driver: &str,
    wait: Duration,
) -> Result<(), RevokeError> {
    write(&root.path().join("sys/bus/pci/drivers_probe"), bdf.as_str())?;
    let deadline = Instant::now() + wait;
    loop {
        match bound_driver(function_dir) {
            Some(found) if found == driver => return Ok(()),
            Some(found) => {
                return Err(RevokeError::WrongDriver {
                    bdf: bdf.clone(),
                    driver: driver.to_owned(),
                    found,
                })
            }
            None if Instant::now() >= deadline => {
                return Err(RevokeError::NotBound {
                    driver: driver.to_owned(),
                    bdf: bdf.clone(),
                    wait,
                })
            }
            None => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The revocation is in force when a new mmap of the claimed BAR fails the way the kernel
/// refuses a range a driver owns: `EINVAL` (`iomem_is_exclusive`, CONFIG_IO_STRICT_DEVMEM).
/// A simulated host cannot make a file refuse mmap with EINVAL; its claimed `resourceN` is a
/// link to `/dev/null`, which refuses with `ENODEV`, accepted only on a simulated root.
fn check_in_force(
    root: &HwRoot,
    function_dir: &Path,
    bdf: &PciBdf,
    bar: u8,
    driver: &str,
) -> Result<(), RevokeError> {
    let path = function_dir.join(format!("resource{bar}"));
    let check = |what, source| RevokeError::Check {
        what,
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| check("opening", e))?;
    let page = usize::try_from(super::window::page_size())
        .ok()
        .and_then(std::num::NonZeroUsize::new)
        .ok_or_else(|| check("sizing a page for", std::io::ErrorKind::InvalidData.into()))?;
    // SAFETY: a fresh shared mapping at an address the kernel picks, so it aliases no Rust
    // object; it is never read or written, only unmapped right below.
    let mapped = unsafe {
        mmap(
            None,
            page,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file.as_fd(),
            0,
        )
    };
    match mapped {
        Ok(mapping) => {
            // SAFETY: exactly the mapping mmap returned, with its length; nothing uses it.
            if let Err(e) = unsafe { munmap(mapping, page.get()) } {
                tracing::warn!("munmap of the revocation check's mapping failed: {e}");
            }
            Err(RevokeError::NotInForce {
                driver: driver.to_owned(),
                bdf: bdf.clone(),
                path,
            })
        }
        Err(nix::Error::EINVAL) => Ok(()),
        Err(nix::Error::ENODEV) if root.is_simulated() => Ok(()),
        Err(e) => Err(check("mapping", e.into())),
    }
}

/// `driver/unbind` of the function, then waits until the driver link is gone.
fn unbind(
    function_dir: &Path,
    bdf: &PciBdf,
    driver: &str,
    wait: Duration,
) -> Result<(), RevokeError> {
    write(&function_dir.join("driver/unbind"), bdf.as_str())?;
    let deadline = Instant::now() + wait;
    while bound_driver(function_dir).is_some() {
        if Instant::now() >= deadline {
            return Err(RevokeError::NotUnbound {
                driver: driver.to_owned(),
                bdf: bdf.clone(),
                wait,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}
