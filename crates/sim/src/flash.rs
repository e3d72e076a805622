//! The simulated two-slot firmware flash behind a `FwEffect::Flash` upload entry.
//!
//! The device does A/B itself, as many cards with a management controller do: an upload
//! always goes into the inactive ("staging") slot, the device reads the slot back and reports
//! its digest, and a write of a slot name to `activate` switches the boot slot atomically.
//! Its vendor attributes live under the PCI function, in `fw_slots/` (the layout is in
//! the daemon's fw-upload firmware backend), and the fw-upload entry links to the function as `device`.
//!
//! The flash chip's contents are files outside `sys/`, `<root>/flash/<entry>/slot-<s>.bin`,
//! so tests can check what the hardware holds. Slot bytes are written as the transfer
//! proceeds: a daemon killed mid-flash leaves a half-written slot marked "writing", which the
//! next build marks "invalid" (as a device finds a bad checksum at power-up).

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::files::{create_if_missing, ensure_symlink, read_attr, write_atomic};
use super::spec::FwEntrySpec;
use super::tree::Tree;
use super::SimError;
use accelgate_hw::digest::hex;
use accelgate_hw::{image_version, Slot};

/// Name of the slot attribute directory under the PCI function.
pub const SLOTS_DIR: &str = "fw_slots";
/// Version of the firmware a fresh simulated device ships with, in slot A.
pub const FACTORY_VERSION: &str = "1.0.0-factory";
/// Flash programming speed: far slower than a register window, like real SPI NOR.
pub const FLASH_BYTES_PER_SEC: u64 = 8 << 20;

/// The factory image of slot A.
pub fn factory_image() -> Vec<u8> {
    let mut image = format!("ACCELGATE-FW {FACTORY_VERSION}\n").into_bytes();
    image.extend((0..4096u32).map(|i| (i % 251) as u8));
    image
}

/// Attribute directory of an entry's slots.
pub(crate) fn slots_dir(tree: &Tree, entry: &FwEntrySpec) -> PathBuf {
    tree.function_dir(&entry.bdf).join(SLOTS_DIR)
}

/// File holding the bytes of one slot.
pub fn storage_path(root: &Path, entry_name: &str, slot: Slot) -> PathBuf {
    root.join("flash")
        .join(entry_name)
        .join(format!("slot-{}.bin", slot.as_str()))
}

fn attr(dir: &Path, slot: Slot, what: &str) -> PathBuf {
    dir.join(format!("slot_{}_{what}", slot.as_str()))
}

/// Creates the slots (factory firmware in A, B empty) if missing, and repairs a write the
/// previous emulator did not finish.
pub(crate) fn build(tree: &Tree, entry: &FwEntrySpec) -> Result<(), SimError> {
    let dir = slots_dir(tree, entry);
    std::fs::create_dir_all(&dir).map_err(SimError::io(&dir))?;
    let storage = tree.root.join("flash").join(&entry.name);
    std::fs::create_dir_all(&storage).map_err(SimError::io(&storage))?;
    ensure_symlink(
        Path::new(&format!(
            "../../../devices/pci{}/{}",
            &entry.bdf[..7],
            entry.bdf
        )),
        &tree.fw_dir(&entry.name).join("device"),
    )?;
    if read_attr(&dir.join("active_slot")).is_none() {
        let image = factory_image();
        let path = storage_path(&tree.root, &entry.name, Slot::A);
        std::fs::write(&path, &image).map_err(SimError::io(&path))?;
        mark_valid(&dir, Slot::A, &hex(&Sha256::digest(&image)), &image)?;
        mark(&dir, Slot::B, "empty")?;
        let path = storage_path(&tree.root, &entry.name, Slot::B);
        std::fs::write(&path, b"").map_err(SimError::io(&path))?;
        write_atomic(&dir.join("active_slot"), "a\n")?;
    }
    create_if_missing(&dir.join("activate"), "")?;
    let active = read_attr(&dir.join("active_slot"))
        .and_then(|s| Slot::parse(&s))
        .unwrap_or(Slot::A);
    write_atomic(
        &dir.join("staging_slot"),
        &format!("{}\n", active.other().as_str()),
    )?;
    for slot in [Slot::A, Slot::B] {
        if read_attr(&attr(&dir, slot, "state")).as_deref() == Some("writing") {
            mark(&dir, slot, "invalid")?;
        }
    }
    Ok(())
}

fn mark(dir: &Path, slot: Slot, state: &str) -> Result<(), SimError> {
    // State first: a reader never sees an old digest next to "valid".
    write_atomic(&attr(dir, slot, "state"), &format!("{state}\n"))?;
    write_atomic(&attr(dir, slot, "version"), "\n")?;
    write_atomic(&attr(dir, slot, "sha256"), "\n")
}

fn mark_valid(dir: &Path, slot: Slot, sha256: &str, head: &[u8]) -> Result<(), SimError> {
    write_atomic(&attr(dir, slot, "sha256"), &format!("{sha256}\n"))?;
    write_atomic(
        &attr(dir, slot, "version"),
        &format!("{}\n", image_version(head)),
    )?;
    write_atomic(&attr(dir, slot, "state"), "valid\n")
}

/// Bytes read from a written slot to find its version line.
const HEADER_PEEK: usize = 256;

/// A write into the staging slot, in progress.
pub(crate) struct SlotWrite {
    dir: PathBuf,
    slot: Slot,
    file: std::fs::File,
    path: PathBuf,
    /// The digest of what was written, taken as it was written while the writes came in
    /// order (as a transfer does); None once one did not, and `finish` reads the slot back.
    written: Option<(u64, Sha256)>,
}

impl SlotWrite {
    /// Starts writing the staging slot: it is "writing" (invalid) from now on.
    pub fn begin(tree: &Tree, entry: &FwEntrySpec) -> Result<SlotWrite, SimError> {
        let dir = slots_dir(tree, entry);
        let active = read_attr(&dir.join("active_slot"))
            .and_then(|s| Slot::parse(&s))
            .unwrap_or(Slot::A);
        let slot = active.other();
        mark(&dir, slot, "writing")?;
        let path = storage_path(&tree.root, &entry.name, slot);
        // Read as well: `finish` reads the version line back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(SimError::io(&path))?;
        Ok(SlotWrite {
            dir,
            slot,
            file,
            path,
            written: Some((0, Sha256::new())),
        })
    }

    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), SimError> {
        self.file
            .write_all_at(bytes, offset)
            .and_then(|()| self.file.flush())
            .map_err(SimError::io(&self.path))?;
        self.written = match self.written.take() {
            Some((end, mut sha)) if end == offset => {
                sha.update(bytes);
                Some((end + bytes.len() as u64, sha))
            }
            _ => None,
        };
        Ok(())
    }

    /// Publishes the slot's digest and version: the slot is valid.
    pub fn finish(self) -> Result<(), SimError> {
        let digest = match self.written {
            Some((_, sha)) => hex(&sha.finalize()),
            None => {
                let back = std::fs::read(&self.path).map_err(SimError::io(&self.path))?;
                hex(&Sha256::digest(&back))
            }
        };
        // The version is the image's first line: read that much, or all of it if the first
        // line is longer than a version header can be.
        let mut head = vec![0u8; HEADER_PEEK];
        let n = self
            .file
            .read_at(&mut head, 0)
            .map_err(SimError::io(&self.path))?;
        head.truncate(n);
        if n == HEADER_PEEK && !head.contains(&b'\n') {
            head = std::fs::read(&self.path).map_err(SimError::io(&self.path))?;
        }
        mark_valid(&self.dir, self.slot, &digest, &head)
    }

    /// A cancelled or failed write leaves a slot that must not boot.
    pub fn abort(self) -> Result<(), SimError> {
        mark(&self.dir, self.slot, "invalid")
    }
}

/// A write to `activate`: switch the boot slot if the named slot is valid.
pub(crate) fn on_activate(tree: &Tree, entry: &FwEntrySpec) -> Result<(), SimError> {
    let dir = slots_dir(tree, entry);
    let Some(slot) = read_attr(&dir.join("activate")).and_then(|s| Slot::parse(&s)) else {
        return Ok(());
    };
    if read_attr(&attr(&dir, slot, "state")).as_deref() != Some("valid") {
        tracing::warn!(
            "simulator: {}: refusing to boot invalid slot {}",
            entry.name,
            slot.as_str()
        );
        return Ok(());
    }
    // The switch is this one rename; the staging slot follows (and a build re-derives it).
    write_atomic(&dir.join("active_slot"), &format!("{}\n", slot.as_str()))?;
    write_atomic(
        &dir.join("staging_slot"),
        &format!("{}\n", slot.other().as_str()),
    )
}
