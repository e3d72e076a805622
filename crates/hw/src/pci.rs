//! PCI functions as sysfs shows them: identity, driver and BAR resources.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{parse_hex, read_attr, write_attr, HwRoot};

/// `IORESOURCE_MEM` in the flags column of the sysfs `resource` file.
const IORESOURCE_MEM: u64 = 0x200;
/// BARs 0..=5; the ROM and SR-IOV lines that follow are not BARs of this function.
const BAR_COUNT: u8 = 6;
/// The command register in the configuration header, and its memory-space enable bit.
const PCI_COMMAND: u64 = 0x4;
const PCI_COMMAND_MEMORY: u16 = 0x2;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("invalid PCI address {0:?} (expected dddd:bb:dd.f in lowercase hex)")]
    InvalidBdf(String),
    #[error("no PCI function {0}")]
    NotFound(String),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed contents in {0}")]
    Malformed(PathBuf),
    #[error("BAR {0} does not exist (BARs are 0..=5)")]
    NoSuchBar(u8),
    #[error("BAR {0} is not implemented by the function")]
    BarUnused(u8),
    #[error("{0} has no reset method (no `reset` attribute)")]
    NoReset(PathBuf),
    #[error("resetting the function through {path} failed")]
    Reset {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the reset through {0} did not finish in time")]
    ResetTimeout(PathBuf),
}

/// A BAR as described by one line of the `resource` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    pub start: u64,
    pub size: u64,
    pub is_memory: bool,
}

/// A PCI function address, `dddd:bb:dd.f` in lowercase hex: checked once when made, so every
/// path built from it is a single, safe element.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciBdf(String);

impl PciBdf {
    /// Checks `dddd:bb:dd.f` strictly: lowercase hex, device <= 0x1f, function <= 7. Paths are
    /// built from the address, so anything else (`..`, `/`, uppercase aliases) is refused.
    pub fn parse(bdf: &str) -> Result<PciBdf, PciError> {
        let bytes = bdf.as_bytes();
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let shape_ok = bytes.len() == 12
            && bytes[4] == b':'
            && bytes[7] == b':'
            && bytes[10] == b'.'
            && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| hex(bytes[i]))
            && (b'0'..=b'7').contains(&bytes[11]);
        let device_ok = shape_ok && u8::from_str_radix(&bdf[8..10], 16).is_ok_and(|d| d <= 0x1f);
        if device_ok {
            Ok(PciBdf(bdf.to_owned()))
        } else {
            Err(PciError::InvalidBdf(bdf.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PciBdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PciBdf {
    type Err = PciError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PciBdf::parse(s)
    }
}

impl PartialEq<&str> for PciBdf {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// One PCI function, read from `sys/bus/pci/devices/<bdf>`.
#[derive(Clone, Debug)]
pub struct PciFunction {
    pub bdf: PciBdf,
    pub dir: PathBuf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub driver: Option<String>,
}

impl PciFunction {
    pub fn open(root: &HwRoot, bdf: &PciBdf) -> Result<Self, PciError> {
        Self::open_dir(bdf.clone(), root.pci_device_dir(bdf))
    }

    /// Opens the function whose sysfs directory is `dir` (e.g. reached through a `virtfnN`
    /// link).
    pub fn open_dir(bdf: PciBdf, dir: PathBuf) -> Result<Self, PciError> {
        if !dir.is_dir() {
            return Err(PciError::NotFound(bdf.to_string()));
        }
        let vendor = read_id(&dir.join("vendor"))?;
        let device = read_id(&dir.join("device"))?;
        let class = read_id(&dir.join("class"))?;
        let driver = match std::fs::read_link(dir.join("driver")) {
            Ok(target) => target
                .file_name()
                .map(|name| name.to_string_lossy().into_owned()),
            Err(_) => None,
        };
        Ok(PciFunction {
            bdf,
            dir,
            vendor,
            device,
            class,
            driver,
        })
    }

    pub fn bar(&self, n: u8) -> Result<BarInfo, PciError> {
        if n >= BAR_COUNT {
            return Err(PciError::NoSuchBar(n));
        }
        let path = self.dir.join("resource");
        let text = std::fs::read_to_string(&path).map_err(|source| PciError::Io {
            path: path.clone(),
            source,
        })?;
        let line = text
            .lines()
            .nth(usize::from(n))
            .ok_or_else(|| PciError::Malformed(path.clone()))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(parse_hex)
            .collect::<Option<_>>()
            .ok_or_else(|| PciError::Malformed(path.clone()))?;
        let [start, end, flags] = fields[..] else {
            return Err(PciError::Malformed(path));
        };
        if start == 0 && end == 0 {
            return Err(PciError::BarUnused(n));
        }
        if end < start {
            return Err(PciError::Malformed(path));
        }
        Ok(BarInfo {
            start,
            size: end - start + 1,
            is_memory: flags & IORESOURCE_MEM != 0,
        })
    }

    pub fn resource_path(&self, n: u8) -> PathBuf {
        self.dir.join(format!("resource{n}"))
    }

    /// Turns on memory decoding (`PCI_COMMAND_MEMORY`) if it is off, and says whether it
    /// was. A hot-added function starts with decoding off: its BARs read 0 until it is on.
    ///
    /// Written through the `config` attribute rather than `enable`: the kernel's `enable`
    /// wants CAP_SYS_ADMIN (the confined daemon keeps only CAP_SYS_RAWIO), while a write to
    /// the standard header through `config` needs only the file's permissions (root).
    pub fn enable_memory(&self) -> Result<bool, PciError> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join("config");
        let io = |source| PciError::Io {
            path: path.clone(),
            source,
        };
        let config = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut command = [0u8; 2];
        config
            .read_exact_at(&mut command, PCI_COMMAND)
            .map_err(io)?;
        let value = u16::from_le_bytes(command);
        if value & PCI_COMMAND_MEMORY != 0 {
            return Ok(false);
        }
        config
            .write_all_at(&(value | PCI_COMMAND_MEMORY).to_le_bytes(), PCI_COMMAND)
            .map_err(io)?;
        Ok(true)
    }
}

/// Resets the PCI function whose sysfs directory is `function_dir`, the way the kernel offers
/// it: "1" written to its `reset` attribute runs the function's reset method (FLR for a VF),
/// and the write returns when the reset is done. The attribute is write-only on a real kernel,
/// so it cannot be read back; a simulated one reads "1" until the simulator has reset the
/// function, which is waited for (up to `timeout`).
pub fn reset_function(function_dir: &Path, timeout: Duration) -> Result<(), PciError> {
    let path = function_dir.join("reset");
    if path.symlink_metadata().is_err() {
        return Err(PciError::NoReset(function_dir.to_path_buf()));
    }
    write_attr(&path, "1").map_err(|source| PciError::Reset {
        path: path.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    while read_attr(&path).is_ok_and(|v| v == "1") {
        if Instant::now() >= deadline {
            return Err(PciError::ResetTimeout(path));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn read_id<T: TryFrom<u64>>(path: &Path) -> Result<T, PciError> {
    let text = read_attr(path).map_err(|source| PciError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_hex(&text)
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| PciError::Malformed(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_validation_is_strict() {
        for good in ["0000:3b:00.0", "ffff:ff:1f.7", "0000:5e:00.1"] {
            assert_eq!(PciBdf::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "0000:3B:00.0",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "000:3b:00.0",
            "0000:3b:00.0/",
            "../../../etc",
            "0000:3b:00:0",
            "0000:3b:0g.0",
            "",
        ] {
            assert!(
                matches!(PciBdf::parse(bad), Err(PciError::InvalidBdf(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("0xacce\n"), Some(0xacce));
        assert_eq!(parse_hex("acce"), None);
        assert_eq!(parse_hex("0x"), None);
    }
}
