//! Layout of the simulated sysfs tree, building it, and the parts of "the kernel" that both the
//! builder and the emulator perform: creating/removing VFs and repairing firmware entries.

use std::path::{Path, PathBuf};

use super::files::{
    create_if_missing, ensure_bar, ensure_symlink, read_attr, remove_if_present, write_atomic,
};
use super::spec::{FwEffect, MtdSpec, PfSpec, SimSpec, VfSpec, REG_ID, REG_REGION_ID};
use super::SimError;
use accelgate_hw::PciBdf;

/// Name of the manifest inside the simulation directory.
pub const MANIFEST: &str = "sim.json";
/// `driver_override` of a function nobody overrode, as the kernel shows it.
const NO_OVERRIDE: &str = "(null)\n";
/// Files of a firmware-upload entry and their initial contents.
const FW_FILES: [(&str, &str); 6] = [
    ("loading", "0\n"),
    ("data", ""),
    ("status", "idle\n"),
    ("remaining_size", "0\n"),
    ("error", "\n"),
    ("cancel", ""),
];
/// `IORESOURCE_MEM | IORESOURCE_SIZEALIGN`, as simspec.md prescribes for BAR0.
const BAR_FLAGS: u64 = 0x40200;
/// Lines in the kernel's `resource` file for an endpoint: 6 BARs, ROM, 6 SR-IOV BARs.
const RESOURCE_LINES: usize = 13;
/// First SR-IOV resource line (the VF BAR0 aperture of a PF).
const IOV_RESOURCE_LINE: usize = 7;
/// The standard configuration header the `config` attribute shows (64 bytes).
const CONFIG_LEN: usize = 64;
/// The command register and its memory-space enable bit.
pub(crate) const PCI_COMMAND: u64 = 0x4;
pub(crate) const PCI_COMMAND_MEMORY: u16 = 0x2;
/// What firmware leaves in a boot-time function's command register: memory space and bus
/// master on.
const COMMAND_AT_BOOT: u16 = 0x6;

/// The simulated tree: its root and what it contains.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    pub root: PathBuf,
    pub spec: SimSpec,
}

impl Tree {
    pub fn new(root: &Path, spec: SimSpec) -> Result<Self, SimError> {
        for pf in &spec.functions {
            PciBdf::parse(&pf.bdf).map_err(|_| SimError::InvalidSpec(pf.bdf.clone()))?;
            if pf.sriov.as_ref().is_some_and(|vfs| vfs.total > 255) {
                return Err(SimError::InvalidSpec(format!("{}: too many VFs", pf.name)));
            }
        }
        for entry in &spec.fw_uploads {
            let name = &entry.name;
            if name.is_empty() || name.starts_with('.') || name.contains('/') {
                return Err(SimError::InvalidSpec(name.clone()));
            }
        }
        Ok(Tree {
            root: root.to_path_buf(),
            spec,
        })
    }

    /// Reads the manifest of a built tree.
    pub fn load(root: &Path) -> Result<Self, SimError> {
        let path = root.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(SimError::io(&path))?;
        let spec = serde_json::from_str(&text).map_err(SimError::Manifest)?;
        Tree::new(root, spec)
    }

    fn sys(&self) -> PathBuf {
        self.root.join("sys")
    }

    /// Real directory of a function: `sys/devices/pci<dddd>:<bb>/<bdf>`.
    pub fn function_dir(&self, bdf: &str) -> PathBuf {
        self.sys()
            .join("devices")
            .join(format!("pci{}", &bdf[..7]))
            .join(bdf)
    }

    pub fn fw_dir(&self, name: &str) -> PathBuf {
        self.sys().join("class/firmware").join(name)
    }

    pub fn pf_by_bdf(&self, bdf: &str) -> Option<&PfSpec> {
        self.spec.functions.iter().find(|pf| pf.bdf == bdf)
    }

    /// Builds whatever is missing and repairs what a crash left behind; keeps BAR contents.
    pub fn build(&self) -> Result<(), SimError> {
        let sys = self.sys();
        for dir in ["bus/pci/devices", "bus/pci/drivers", "class/firmware"] {
            mkdir_all(&sys.join(dir))?;
        }
        // Written by the daemon (the kernel's file is write-only); the emulator binds then.
        create_if_missing(&sys.join("bus/pci/drivers_probe"), "")?;
        for (index, pf) in self.spec.functions.iter().enumerate() {
            self.build_pf(index, pf)?;
        }
        for entry in &self.spec.fw_uploads {
            self.build_fw_entry(&entry.name)?;
            if entry.effect == FwEffect::Flash {
                super::flash::build(self, entry)?;
            }
            if entry.effect == FwEffect::TestFirmware {
                mkdir_all(&self.test_firmware_dir())?;
            }
        }
        for (index, mtd) in self.spec.mtds.iter().enumerate() {
            self.build_mtd(index, mtd)?;
        }
        for pf in &self.spec.functions {
            if pf.sriov.is_some() {
                self.reconcile_vfs(pf)?;
            }
        }
        let manifest = serde_json::to_string_pretty(&self.spec).map_err(SimError::Manifest)?;
        write_atomic(&self.root.join(MANIFEST), &manifest)
    }

    fn build_pf(&self, index: usize, pf: &PfSpec) -> Result<(), SimError> {
        let dir = self.function_dir(&pf.bdf);
        mkdir_all(&dir)?;
        let identity = Identity {
            vendor: pf.vendor,
            device: pf.device,
            class: pf.class,
        };
        write_bytes(
            &dir.join("config"),
            &config_header(&identity, COMMAND_AT_BOOT),
        )?;
        self.write_pf_resources(index, pf, &pf_registers(pf), true)?;
        self.link_function(&pf.bdf)
    }

    /// The PF's `resource` and `resource0` (with `registers` written), its SR-IOV attributes,
    /// and with `driver`, its driver link.
    fn write_pf_resources(
        &self,
        index: usize,
        pf: &PfSpec,
        registers: &[(u64, u32)],
        driver: bool,
    ) -> Result<(), SimError> {
        let dir = self.function_dir(&pf.bdf);
        let bar_start = 0x2000_0000_0000 + ((index as u64) << 32);
        let mut resources = vec![(bar_start, pf.bar0_size)];
        if let Some(vfs) = &pf.sriov {
            resources.resize(IOV_RESOURCE_LINE, (0, 0));
            resources.push((vf_bar_base(bar_start), vfs.bar0_size * u64::from(vfs.total)));
            write_file(&dir.join("sriov_totalvfs"), &format!("{}\n", vfs.total))?;
            create_if_missing(&dir.join("sriov_numvfs"), "0\n")?;
            write_file(
                &dir.join("sriov_offset"),
                &format!("{}\n", vfs.first_offset),
            )?;
            write_file(&dir.join("sriov_stride"), &format!("{}\n", vfs.stride))?;
            create_if_missing(&dir.join("sriov_drivers_autoprobe"), "1\n")?;
        }
        let identity = Identity {
            vendor: pf.vendor,
            device: pf.device,
            class: pf.class,
        };
        self.write_function(&dir, &identity, &resources, pf.bar0_size, registers)?;
        create_if_missing(&dir.join("driver_override"), NO_OVERRIDE)?;
        // The spec's driver is bound when the host comes up; a function without one keeps
        // whatever was bound later (pci-pf-stub through drivers_probe), as a running kernel does.
        // A hot-added function comes up without a driver.
        if let (true, Some(name)) = (driver, &pf.driver) {
            self.bind(&pf.bdf, name)?;
        }
        Ok(())
    }

    /// Takes a PF off the bus as the kernel does (its VFs first), and returns the addresses
    /// removed, in the order the kernel announces them. Nothing to do for an absent PF.
    pub fn unplug(&self, pf: &PfSpec) -> Result<Vec<String>, SimError> {
        let dir = self.function_dir(&pf.bdf);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut gone = Vec::new();
        if let Some(vfs) = &pf.sriov {
            for i in (0..self.existing_vfs(pf)).rev() {
                let vf_bdf = vf_bdf(&pf.bdf, vfs, i);
                let vf_dir = self.function_dir(&vf_bdf);
                self.remove_vf(&dir.join(format!("virtfn{i}")), &vf_bdf, &vf_dir)?;
                gone.push(vf_bdf);
            }
        }
        remove_if_present(&self.sys().join("bus/pci/devices").join(&pf.bdf))?;
        std::fs::remove_dir_all(&dir).map_err(SimError::io(&dir))?;
        gone.push(pf.bdf.clone());
        Ok(gone)
    }

    /// First half of a hot-add, before the kernel announces the function: its directory,
    /// identity and `config` (memory decoding off), and the bus link. `false` if it is
    /// already on the bus.
    pub fn plug_announce(&self, pf: &PfSpec) -> Result<bool, SimError> {
        let dir = self.function_dir(&pf.bdf);
        if dir.exists() {
            return Ok(false);
        }
        mkdir_all(&dir)?;
        let identity = Identity {
            vendor: pf.vendor,
            device: pf.device,
            class: pf.class,
        };
        write_file(&dir.join("vendor"), &format!("{:#06x}\n", identity.vendor))?;
        write_file(&dir.join("device"), &format!("{:#06x}\n", identity.device))?;
        write_file(&dir.join("class"), &format!("{:#08x}\n", identity.class))?;
        write_bytes(&dir.join("config"), &config_header(&identity, 0))?;
        self.link_function(&pf.bdf)?;
        Ok(true)
    }

    /// Second half of a hot-add, after the announcement (as the kernel, which adds the
    /// `resourceN` files after the `add` uevent): the BAR reads 0 until memory decoding is
    /// turned on ([`Tree::decode_on`]), and no driver binds the function.
    pub fn plug_finish(&self, index: usize, pf: &PfSpec) -> Result<(), SimError> {
        let bar = self.function_dir(&pf.bdf).join("resource0");
        remove_if_present(&bar)?;
        self.write_pf_resources(index, pf, &[], false)
    }

    /// The function's `config` was written: with memory decoding on, its registers answer.
    pub fn decode_on(&self, pf: &PfSpec) -> Result<(), SimError> {
        let dir = self.function_dir(&pf.bdf);
        let Ok(config) = std::fs::read(dir.join("config")) else {
            return Ok(());
        };
        let command = match config.get(PCI_COMMAND as usize..PCI_COMMAND as usize + 2) {
            Some(&[lo, hi]) => u16::from_le_bytes([lo, hi]),
            _ => 0,
        };
        let bar = dir.join("resource0");
        if command & PCI_COMMAND_MEMORY == 0 || !bar.exists() {
            return Ok(());
        }
        ensure_bar(&bar, pf.bar0_size, &pf_registers(pf))
    }

    /// `<bdf>/driver` -> `bus/pci/drivers/<driver>`, creating the driver's directory (with its
    /// `unbind` attribute). A driver of the spec's `bar_claiming_drivers` claims the function's
    /// BARs as it binds: see [`claim_bars`].
    pub fn bind(&self, bdf: &str, driver: &str) -> Result<(), SimError> {
        self.ensure_driver(driver)?;
        let dir = self.function_dir(bdf);
        if self.claims_bars(driver) {
            claim_bars(&dir)?;
        }
        ensure_symlink(
            Path::new(&format!("../../../bus/pci/drivers/{driver}")),
            &dir.join("driver"),
        )
    }

    /// `sys/bus/pci/drivers/<driver>`.
    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.sys().join("bus/pci/drivers").join(driver)
    }

    /// Every driver directory there is now.
    pub fn driver_dirs(&self) -> Vec<(String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.sys().join("bus/pci/drivers")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
            .collect()
    }

    fn claims_bars(&self, driver: &str) -> bool {
        self.spec.bar_claiming_drivers.iter().any(|d| d == driver)
    }

    /// The kernel's `drivers/<driver>/unbind`: the function named there loses `driver` if it
    /// has it; a driver that claimed its BARs releases them (see [`release_bars`]).
    pub fn unbind(&self, driver: &str) -> Result<(), SimError> {
        let Some(bdf) = read_attr(&self.driver_dir(driver).join("unbind")) else {
            return Ok(());
        };
        let bdf = bdf.trim();
        if PciBdf::parse(bdf).is_err() {
            return Ok(());
        }
        let dir = self.function_dir(bdf);
        let link = dir.join("driver");
        let bound_here = std::fs::read_link(&link)
            .is_ok_and(|target| target.file_name().and_then(|n| n.to_str()) == Some(driver));
        if !bound_here {
            return Ok(());
        }
        remove_if_present(&link)?;
        if self.claims_bars(driver) {
            release_bars(&dir)?;
        }
        Ok(())
    }

    /// The kernel's `drivers_probe`: a function without a driver whose `driver_override` names
    /// one gets it (only that driver may bind then). Unknown or bound functions are left alone.
    /// Returns the function and driver to bind ([`Tree::bind`]), so that the emulator can
    /// watch the driver's `unbind` before the driver link tells anyone it is bound.
    pub fn probe_target(&self) -> Option<(String, String)> {
        let bdf = read_attr(&self.sys().join("bus/pci/drivers_probe"))?;
        let bdf = bdf.trim();
        // A PF of the spec or one of the VFs that exist now.
        PciBdf::parse(bdf).ok()?;
        self.sys()
            .join("bus/pci/devices")
            .join(bdf)
            .symlink_metadata()
            .ok()?;
        let dir = self.function_dir(bdf);
        if dir.join("driver").symlink_metadata().is_ok() {
            return None;
        }
        let driver = read_attr(&dir.join("driver_override"))?;
        let driver = driver.trim();
        (!driver.is_empty() && driver != "(null)").then(|| (bdf.to_owned(), driver.to_owned()))
    }

    /// Makes a driver's directory and its `unbind` attribute.
    pub fn ensure_driver(&self, driver: &str) -> Result<(), SimError> {
        if driver.is_empty() || driver.starts_with('.') || driver.contains('/') {
            return Err(SimError::InvalidSpec(format!("driver name {driver:?}")));
        }
        let driver_dir = self.driver_dir(driver);
        mkdir_all(&driver_dir)?;
        create_if_missing(&driver_dir.join("unbind"), "")
    }

    /// Where the simulated `test_firmware` driver keeps what each entry received.
    pub fn test_firmware_dir(&self) -> PathBuf {
        self.root.join("test_firmware")
    }

    /// `sys/class/mtd/mtd<N>/{name,size,erasesize,type}` as the kernel publishes them, and the
    /// partition's bytes in `dev/mtd<N>` (a regular file; erased NOR reads 0xff). Existing
    /// contents of the right size are kept, as flash keeps them.
    fn build_mtd(&self, index: usize, mtd: &MtdSpec) -> Result<(), SimError> {
        let valid_name = !mtd.name.is_empty() && !mtd.name.contains(['/', '\n']);
        if !valid_name
            || mtd.erase_size == 0
            || mtd.size % mtd.erase_size != 0
            || u32::try_from(mtd.size).is_err()
        {
            return Err(SimError::InvalidSpec(format!("MTD {:?}", mtd.name)));
        }
        let class = self.sys().join("class/mtd").join(format!("mtd{index}"));
        mkdir_all(&class)?;
        write_file(&class.join("name"), &format!("{}\n", mtd.name))?;
        write_file(&class.join("size"), &format!("{}\n", mtd.size))?;
        write_file(&class.join("erasesize"), &format!("{}\n", mtd.erase_size))?;
        write_file(&class.join("type"), "nor\n")?;
        let dev = self.root.join("dev");
        mkdir_all(&dev)?;
        let bytes = dev.join(format!("mtd{index}"));
        let fresh = std::fs::metadata(&bytes).map_or(true, |m| m.len() != mtd.size);
        if fresh {
            let erased = vec![0xffu8; mtd.size as usize];
            std::fs::write(&bytes, erased).map_err(SimError::io(&bytes))?;
        }
        Ok(())
    }

    /// Identity files, `resource`, `resource0` and the ID registers (rewritten every time:
    /// they are read-only in hardware, so a build restores them).
    fn write_function(
        &self,
        dir: &Path,
        identity: &Identity,
        resources: &[(u64, u64)],
        bar0_size: u64,
        registers: &[(u64, u32)],
    ) -> Result<(), SimError> {
        write_file(&dir.join("vendor"), &format!("{:#06x}\n", identity.vendor))?;
        write_file(&dir.join("device"), &format!("{:#06x}\n", identity.device))?;
        write_file(&dir.join("class"), &format!("{:#08x}\n", identity.class))?;
        let mut resource = String::with_capacity(RESOURCE_LINES * 57);
        for line in 0..RESOURCE_LINES {
            let (start, end, flags) = match resources.get(line) {
                Some(&(start, size)) if size > 0 => (start, start + size - 1, BAR_FLAGS),
                _ => (0, 0, 0),
            };
            resource.push_str(&format!("{start:#018x} {end:#018x} {flags:#018x}\n"));
        }
        write_file(&dir.join("resource"), &resource)?;
        let bar = dir.join("resource0");
        ensure_bar(&bar, bar0_size, registers)
    }

    /// `sys/bus/pci/devices/<bdf>` -> the real directory.
    fn link_function(&self, bdf: &str) -> Result<(), SimError> {
        let target = format!("../../../devices/pci{}/{bdf}", &bdf[..7]);
        ensure_symlink(
            Path::new(&target),
            &self.sys().join("bus/pci/devices").join(bdf),
        )
    }

    fn build_fw_entry(&self, name: &str) -> Result<(), SimError> {
        let dir = self.fw_dir(name);
        mkdir_all(&dir)?;
        for (file, initial) in FW_FILES {
            create_if_missing(&dir.join(file), initial)?;
        }
        // An upload that was running when the previous emulator died did not complete.
        let status = read_attr(&dir.join("status")).unwrap_or_default();
        if status != "idle" {
            write_atomic(&dir.join("error"), &format!("{status}:hw-error\n"))?;
            write_atomic(&dir.join("remaining_size"), "0\n")?;
            write_atomic(&dir.join("status"), "idle\n")?;
        }
        Ok(())
    }

    /// Number of VFs that currently exist (virtfn0.. without a gap).
    pub fn existing_vfs(&self, pf: &PfSpec) -> u32 {
        let dir = self.function_dir(&pf.bdf);
        let total = pf.sriov.as_ref().map_or(0, |vfs| vfs.total);
        (0..total)
            .take_while(|i| dir.join(format!("virtfn{i}")).symlink_metadata().is_ok())
            .count() as u32
    }

    /// Makes the VFs match `sriov_numvfs`; a malformed or too large count is replaced by the
    /// number of VFs that exist (as the kernel rejects the write and keeps its state).
    pub fn reconcile_vfs(&self, pf: &PfSpec) -> Result<(), SimError> {
        let Some(vfs) = &pf.sriov else {
            return Ok(());
        };
        let dir = self.function_dir(&pf.bdf);
        let numvfs = dir.join("sriov_numvfs");
        let wanted = read_attr(&numvfs).and_then(|text| text.trim().parse::<u32>().ok());
        let wanted = match wanted {
            Some(n) if n <= vfs.total => n,
            _ => {
                let existing = self.existing_vfs(pf);
                write_atomic(&numvfs, &format!("{existing}\n"))?;
                existing
            }
        };
        // One directory listing each instead of a lookup per possible VF: building many PFs
        // with many VFs must stay fast.
        let links = self.listed_vfs(pf, &dir, |name| name.strip_prefix("virtfn")?.parse().ok());
        let pf_devfn = devfn(&pf.bdf);
        let dirs = match dir.parent() {
            Some(bus_dir) => self.listed_vfs(pf, bus_dir, |name| {
                // Validated first: slicing needs a well-formed ASCII address.
                (PciBdf::parse(name).is_ok() && name[..7] == pf.bdf[..7] && name != pf.bdf)
                    .then(|| devfn(name).checked_sub(pf_devfn + vfs.first_offset))
                    .flatten()
                    .filter(|d| d % vfs.stride.max(1) == 0)
                    .map(|d| d / vfs.stride.max(1))
            }),
            None => Vec::new(),
        };
        // Removal from the top down, creation from the bottom up, so virtfn0.. stay gap-free.
        let mut stale: Vec<u32> = links
            .iter()
            .chain(&dirs)
            .copied()
            .filter(|&i| i >= wanted)
            .collect();
        stale.sort_unstable_by(|a, b| b.cmp(a));
        stale.dedup();
        for i in stale {
            let vf_bdf = vf_bdf(&pf.bdf, vfs, i);
            let vf_dir = self.function_dir(&vf_bdf);
            self.remove_vf(&dir.join(format!("virtfn{i}")), &vf_bdf, &vf_dir)?;
        }
        for i in 0..wanted {
            if !links.contains(&i) {
                self.create_vf(pf, vfs, i)?;
            }
        }
        Ok(())
    }

    /// The directory of VF `i` of `pf` (which need not exist).
    pub fn vf_dir(&self, pf: &PfSpec, i: u32) -> Option<PathBuf> {
        let vfs = pf.sriov.as_ref()?;
        Some(self.function_dir(&vf_bdf(&pf.bdf, vfs, i)))
    }

    /// A function-level reset of VF `i` (what FLR does): every register back to its reset
    /// value (zero, the read-only ID register restored), stored in place so that mappings of
    /// the BAR see it. Counts the reset in the simulator-only file `sim_resets` (no kernel
    /// attribute; tests read it), then empties `reset`, which tells the writer it is done.
    pub fn reset_vf(&self, pf: &PfSpec, i: u32) -> Result<(), SimError> {
        let (Some(vfs), Some(dir)) = (&pf.sriov, self.vf_dir(pf, i)) else {
            return Ok(());
        };
        let reset = dir.join("reset");
        if read_attr(&reset).as_deref() != Some("1") {
            return Ok(());
        }
        let bar = dir.join("resource0");
        if !is_regular_file(&bar) {
            // Claimed by a driver (/dev/null stands in for it): the driver resets its function.
            return write_atomic(&reset, "");
        }
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&bar)
                .map_err(SimError::io(&bar))?;
            let len = file.metadata().map_err(SimError::io(&bar))?.len();
            let zeros = vec![0u8; 64 << 10];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(SimError::io(&bar))?;
                at += n as u64;
            }
            file.write_all_at(&(vfs.id_base | i).to_le_bytes(), REG_ID)
                .map_err(SimError::io(&bar))?;
        }
        let count = dir.join("sim_resets");
        let done = read_attr(&count)
            .and_then(|c| c.trim().parse::<u64>().ok())
            .unwrap_or(0);
        write_atomic(&count, &format!("{}\n", done + 1))?;
        write_atomic(&reset, "")
    }

    /// VF indexes (below the PF's total) named by entries of `dir`, via `index_of`.
    fn listed_vfs(
        &self,
        pf: &PfSpec,
        dir: &Path,
        index_of: impl Fn(&str) -> Option<u32>,
    ) -> Vec<u32> {
        let total = pf.sriov.as_ref().map_or(0, |vfs| vfs.total);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| index_of(entry.ok()?.file_name().to_str()?))
            .filter(|&i| i < total)
            .collect()
    }

    fn remove_vf(&self, link: &Path, vf_bdf: &str, vf_dir: &Path) -> Result<(), SimError> {
        revoke_bar_mappings(vf_dir)?;
        remove_if_present(link)?;
        remove_if_present(&self.sys().join("bus/pci/devices").join(vf_bdf))?;
        match std::fs::remove_dir_all(vf_dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(SimError::io(vf_dir)(err))
            }
            _ => Ok(()),
        }
    }

    /// A fresh VF: its directory (replacing any half-made one), then the bus link, then
    /// `virtfn<i>` last, so the PF link means "complete".
    fn create_vf(&self, pf: &PfSpec, vfs: &VfSpec, i: u32) -> Result<(), SimError> {
        let vf_bdf = vf_bdf(&pf.bdf, vfs, i);
        let vf_dir = self.function_dir(&vf_bdf);
        if vf_dir.exists() {
            std::fs::remove_dir_all(&vf_dir).map_err(SimError::io(&vf_dir))?;
        }
        std::fs::create_dir(&vf_dir).map_err(SimError::io(&vf_dir))?;
        let index = self
            .spec
            .functions
            .iter()
            .position(|f| f.bdf == pf.bdf)
            .unwrap_or(0);
        let base = vf_bar_base(0x2000_0000_0000 + ((index as u64) << 32));
        let identity = Identity {
            vendor: pf.vendor,
            device: vfs.device,
            class: vfs.class,
        };
        let start = base + u64::from(i) * vfs.bar0_size;
        self.write_function(
            &vf_dir,
            &identity,
            &[(start, vfs.bar0_size)],
            vfs.bar0_size,
            &[(REG_ID, vfs.id_base | i)],
        )?;
        // VFs stay without a driver, as the daemon keeps them (sriov_drivers_autoprobe = 0).
        // Memory decoding on, as on hardware, where the PF's SR-IOV control turns it on for
        // every VF (QEMU's igb VFs start with it off: rig/README.md).
        write_bytes(
            &vf_dir.join("config"),
            &config_header(&identity, COMMAND_AT_BOOT),
        )?;
        // The function-reset attribute (write-only in the kernel; here it reads "1" until the
        // emulator has reset the function, see `reset_vf`).
        write_file(&vf_dir.join("reset"), "")?;
        write_file(&vf_dir.join("driver_override"), NO_OVERRIDE)?;
        ensure_symlink(Path::new(&format!("../{}", pf.bdf)), &vf_dir.join("physfn"))?;
        self.link_function(&vf_bdf)?;
        ensure_symlink(
            Path::new(&format!("../{vf_bdf}")),
            &self.function_dir(&pf.bdf).join(format!("virtfn{i}")),
        )
    }
}

/// What the kernel does to the mappings of a removed function's `resourceN` files (kernfs
/// unmaps them, and a later access faults with SIGBUS): the files are truncated to nothing
/// before they go, so an access through an old mapping faults the same way.
fn revoke_bar_mappings(vf_dir: &Path) -> Result<(), SimError> {
    for path in bar_files(vf_dir) {
        // A claimed BAR is a link to /dev/null (see `claim_bars`); its old mappings are
        // already revoked.
        if is_regular_file(&path) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .map_err(SimError::io(&path))?;
        }
    }
    Ok(())
}

/// `resourceN` files of a function directory, by name.
fn bar_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|n| {
                n.strip_prefix("resource")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|entry| entry.path())
        .collect()
}

fn is_regular_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Where a claimed BAR's registers are kept while a driver owns it (the device keeps them:
/// binding clears no register, measured on the rig).
fn claimed_copy(bar: &Path) -> PathBuf {
    let name = bar
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bar.with_file_name(format!(".claimed-{name}"))
}

/// What the kernel does when a driver claims a function's BARs (`__request_region` calls
/// `revoke_iomem`): every user mapping of them is zapped, so an access through one faults
/// with SIGBUS, for good; and while the driver holds them a new mmap fails (the kernel's
/// EINVAL under CONFIG_IO_STRICT_DEVMEM). Here: the registers are copied aside, the old file
/// is truncated (its mappings fault from now on, also after the unbind, which brings a new
/// file) and replaced by a link to `/dev/null`, which opens but refuses mmap (ENODEV; a
/// regular file always maps). Only syscalls the daemon's seccomp allow-list has (the
/// emulator runs inside `accelgated --simulate`): no mknod for a FIFO, no fchmod of a copy.
fn claim_bars(dir: &Path) -> Result<(), SimError> {
    for bar in bar_files(dir) {
        if !is_regular_file(&bar) {
            continue;
        }
        let copy = claimed_copy(&bar);
        let registers = std::fs::read(&bar).map_err(SimError::io(&bar))?;
        std::fs::write(&copy, registers).map_err(SimError::io(&copy))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&bar)
            .and_then(|f| f.set_len(0))
            .map_err(SimError::io(&bar))?;
        std::fs::remove_file(&bar).map_err(SimError::io(&bar))?;
        std::os::unix::fs::symlink(UNMAPPABLE, &bar).map_err(SimError::io(&bar))?;
    }
    Ok(())
}

/// What a claimed `resourceN` is while its driver holds it: a device with no mmap.
const UNMAPPABLE: &str = "/dev/null";

/// The driver lets go of the BARs: each `resourceN` is a regular file again, a new one (new
/// inode) holding the registers as the driver left them, so new mappings work and old ones
/// stay revoked.
fn release_bars(dir: &Path) -> Result<(), SimError> {
    for bar in bar_files(dir) {
        let copy = claimed_copy(&bar);
        if is_regular_file(&bar) || !copy.exists() {
            continue;
        }
        std::fs::remove_file(&bar).map_err(SimError::io(&bar))?;
        std::fs::rename(&copy, &bar).map_err(SimError::io(&bar))?;
    }
    Ok(())
}

/// The read-only registers of a PF's BAR0: its ID and each region's ID.
fn pf_registers(pf: &PfSpec) -> Vec<(u64, u32)> {
    let mut registers = vec![(REG_ID, pf.id)];
    for (n, region) in pf.regions.iter().enumerate() {
        registers.push((region.offset + REG_REGION_ID, 0xacce_0000 | n as u32));
    }
    registers
}

/// The standard configuration header: IDs, the command register, class code.
fn config_header(identity: &Identity, command: u16) -> Vec<u8> {
    let mut header = vec![0u8; CONFIG_LEN];
    header[0..2].copy_from_slice(&identity.vendor.to_le_bytes());
    header[2..4].copy_from_slice(&identity.device.to_le_bytes());
    header[4..6].copy_from_slice(&command.to_le_bytes());
    // Revision (0x08) then the 24-bit class code, low byte first.
    header[9..12].copy_from_slice(&identity.class.to_le_bytes()[..3]);
    header
}

struct Identity {
    vendor: u16,
    device: u16,
    class: u32,
}

/// VF BAR0 aperture of the PF whose BAR0 starts at `pf_bar`.
fn vf_bar_base(pf_bar: u64) -> u64 {
    pf_bar + 0x8000_0000
}

/// Device and function of a validated PCI address as one number (the routing ID's low byte).
fn devfn(bdf: &str) -> u32 {
    let device = u32::from_str_radix(&bdf[8..10], 16).unwrap_or(0);
    let function = u32::from_str_radix(&bdf[11..12], 16).unwrap_or(0);
    device << 3 | function
}

/// PCI address of VF `i` of a PF: routing ID = PF's + First VF Offset + i * VF Stride, as the
/// SR-IOV capability says (the specs keep every VF on the PF's bus).
pub(crate) fn vf_bdf(pf_bdf: &str, vfs: &VfSpec, i: u32) -> String {
    let devfn = devfn(pf_bdf) + vfs.first_offset + i * vfs.stride;
    format!(
        "{}:{:02x}.{:x}",
        &pf_bdf[..7],
        (devfn >> 3) & 0x1f,
        devfn & 7
    )
}

fn write_bytes(path: &Path, contents: &[u8]) -> Result<(), SimError> {
    if std::fs::read(path).is_ok_and(|existing| existing == contents) {
        return Ok(());
    }
    std::fs::write(path, contents).map_err(SimError::io(path))
}

fn mkdir_all(dir: &Path) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(SimError::io(dir))
}

/// Writes `path` unless it already holds `contents`: reusing a tree then costs reads only,
/// which matters on a busy disk where every metadata update is journaled.
fn write_file(path: &Path, contents: &str) -> Result<(), SimError> {
    if std::fs::read(path).is_ok_and(|existing| existing == contents.as_bytes()) {
        return Ok(());
    }
    std::fs::write(path, contents).map_err(SimError::io(path))
}
