//! SR-IOV virtual functions through `sriov_totalvfs`, `sriov_numvfs` and `virtfnN` links.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::pci::{PciBdf, PciError, PciFunction};
use super::{read_attr, write_attr};

/// How often to look again while the kernel creates or removes VFs.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error("{0} does not support SR-IOV")]
    NotSupported(PciBdf),
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed contents in {0}")]
    Malformed(PathBuf),
    #[error("{requested} VFs requested but the device supports at most {total}")]
    TooMany { requested: u32, total: u32 },
    #[error("VF {0} does not exist")]
    NoSuchVf(u32),
    #[error("VF {index} link points to an invalid PCI address")]
    BadVfLink { index: u32 },
    #[error("the VF count did not become {0} in time")]
    Timeout(u32),
    #[error("cannot open VF")]
    Vf(#[source] PciError),
    #[error(
        "no driver is bound to the PF {0}, and the kernel configures SR-IOV only through one \
         (pf_stub = true in the device's [device.vfs] binds pci-pf-stub)"
    )]
    NoPfDriver(PciBdf),
    #[error("pci-pf-stub did not bind to {0} (is the pci-pf-stub module loaded?)")]
    StubNotBound(PciBdf),
}

/// The SR-IOV controls of one physical function.
#[derive(Clone, Debug)]
pub struct Sriov {
    dir: PathBuf,
    bdf: PciBdf,
}

/// How long `bind_pf_stub` waits for the driver link after `drivers_probe`.
const STUB_BIND_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Sriov {
    pub fn new(pf: &PciFunction) -> Result<Self, SriovError> {
        if !pf.dir.join("sriov_totalvfs").is_file() {
            return Err(SriovError::NotSupported(pf.bdf.clone()));
        }
        Ok(Sriov {
            dir: pf.dir.clone(),
            bdf: pf.bdf.clone(),
        })
    }

    /// Binds the kernel's `pci-pf-stub` (it claims no BAR) to a PF that has no driver, the way
    /// an admin would: `driver_override`, then `drivers_probe` of the PCI bus. A PF with a
    /// driver is left alone.
    pub fn bind_pf_stub(&self) -> Result<(), SriovError> {
        if self.has_driver() {
            return Ok(());
        }
        let io = |path: PathBuf| move |source| SriovError::Io { path, source };
        let overridden = self.dir.join("driver_override");
        write_attr(&overridden, "pci-pf-stub").map_err(io(overridden.clone()))?;
        // <root>/sys/bus/pci/devices/<bdf> -> <root>/sys/bus/pci/drivers_probe
        let probe = self
            .dir
            .parent()
            .and_then(|devices| devices.parent())
            .map(|bus| bus.join("drivers_probe"))
            .ok_or_else(|| SriovError::Malformed(self.dir.clone()))?;
        write_attr(&probe, self.bdf.as_str()).map_err(io(probe.clone()))?;
        // The kernel binds inside the write; a simulated host a moment after it.
        let deadline = std::time::Instant::now() + STUB_BIND_WAIT;
        while !self.has_driver() {
            if std::time::Instant::now() > deadline {
                return Err(SriovError::StubNotBound(self.bdf.clone()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    fn has_driver(&self) -> bool {
        self.dir.join("driver").symlink_metadata().is_ok()
    }

    pub fn total_vfs(&self) -> Result<u32, SriovError> {
        self.read_count("sriov_totalvfs")
    }

    pub fn num_vfs(&self) -> Result<u32, SriovError> {
        self.read_count("sriov_numvfs")
    }

    /// Kernel rule: write 0 first when going from a non-zero count to another non-zero count.
    /// Then wait (poll ~2 ms) until sriov_numvfs reads back n, virtfn0..n-1 exist and virtfn<n>
    /// does not; Timeout error otherwise. n > total is an error before anything is written.
    pub fn set_num_vfs(&self, n: u32, timeout: Duration) -> Result<(), SriovError> {
        let total = self.total_vfs()?;
        if n > total {
            return Err(SriovError::TooMany {
                requested: n,
                total,
            });
        }
        let deadline = Instant::now() + timeout;
        let current = self.num_vfs()?;
        if n != 0 {
            self.keep_vfs_unclaimed()?;
        }
        if current != n {
            if current != 0 && n != 0 {
                self.write_count(0)?;
                self.wait_for(0, deadline)?;
            }
            self.write_count(n)?;
        }
        // Also when nothing was written: a retried call returns only once the VFs are there.
        self.wait_for(n, deadline)
    }

    /// The PF's link to VF `i` (`<pf>/virtfn<i>`), which need not exist.
    pub fn vf_dir(&self, i: u32) -> PathBuf {
        self.dir.join(format!("virtfn{i}"))
    }

    /// The function behind `virtfn<i>`.
    pub fn vf(&self, i: u32) -> Result<PciFunction, SriovError> {
        let bdf = self.vf_bdf(i)?;
        PciFunction::open_dir(bdf, self.vf_dir(i)).map_err(SriovError::Vf)
    }

    /// The address of the function behind `virtfn<i>`, from the link alone.
    pub fn vf_bdf(&self, i: u32) -> Result<PciBdf, SriovError> {
        let target = std::fs::read_link(self.vf_dir(i)).map_err(|_| SriovError::NoSuchVf(i))?;
        let bdf = target
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or(SriovError::BadVfLink { index: i })?;
        PciBdf::parse(bdf).map_err(|_| SriovError::BadVfLink { index: i })
    }

    fn read_count(&self, name: &str) -> Result<u32, SriovError> {
        let path = self.dir.join(name);
        let text = read_attr(&path).map_err(|source| SriovError::Io {
            path: path.clone(),
            source,
        })?;
        text.trim().parse().map_err(|_| SriovError::Malformed(path))
    }

    fn write_count(&self, n: u32) -> Result<(), SriovError> {
        let path = self.dir.join("sriov_numvfs");
        write_attr(&path, &format!("{n}\n")).map_err(|source| {
            // The kernel's answer when no driver is bound to the PF.
            if source.raw_os_error() == Some(nix::libc::ENOENT) && !self.has_driver() {
                SriovError::NoPfDriver(self.bdf.clone())
            } else {
                SriovError::Io { path, source }
            }
        })
    }

    /// New VFs stay without a kernel driver (`sriov_drivers_autoprobe` = 0): a driver that
    /// claims a VF's BAR (e.g. igbvf) makes it unmappable under CONFIG_IO_STRICT_DEVMEM.
    fn keep_vfs_unclaimed(&self) -> Result<(), SriovError> {
        let path = self.dir.join("sriov_drivers_autoprobe");
        match read_attr(&path) {
            Ok(value) if value.trim() == "0" => Ok(()),
            Ok(_) => write_attr(&path, "0").map_err(|source| SriovError::Io { path, source }),
            // Kernels before 4.12 have no such attribute.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SriovError::Io { path, source }),
        }
    }

    /// Whether the kernel has finished: the count reads back `n` and exactly virtfn0..n-1 exist.
    fn settled(&self, n: u32) -> Result<bool, SriovError> {
        let exists = |i: u32| {
            self.dir
                .join(format!("virtfn{i}"))
                .symlink_metadata()
                .is_ok()
        };
        Ok(self.num_vfs()? == n && (0..n).all(exists) && !exists(n))
    }

    fn wait_for(&self, n: u32, deadline: Instant) -> Result<(), SriovError> {
        loop {
            // A count that is briefly unreadable or malformed mid-change is not fatal here.
            if matches!(self.settled(n), Ok(true)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SriovError::Timeout(n));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
