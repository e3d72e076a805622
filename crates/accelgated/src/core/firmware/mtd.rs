//! Firmware backend on MTD character devices: two partitions are the slots, a third one is
//! the boot selector.
//!
//! Partitions are found by name in `sys/class/mtd/mtd<N>/name` under the hardware root:
//! `<name>-a`, `<name>-b` and `<name>-sel`; the daemon opens `dev/mtd<N>` under the root.
//!
//! Slot layout: the image starts at the second erase block; the first erase block holds a
//! slot header (magic, length, sha256) written only after the image is written and read back,
//! so a torn write leaves a slot without a header, i.e. invalid.
//!
//! Selector: two erase blocks, each holding at most one record (magic, sequence number, slot,
//! checksum). The valid record with the highest sequence number names the boot slot. A
//! switch erases the block that does not hold the newest record and writes the next record
//! there: until that one write is complete the old record is the newest, so the switch is a
//! single atomic step even on flash that cannot rewrite in place.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::backend::{BackendError, Fault, FirmwareBackend};
use accelgate_hw::digest::hex;
use accelgate_hw::mtd::{FileFlash, FlashIo, FlashIoError, MtdChar};
use accelgate_hw::slot::{image_version, FirmwareStatus, Slot, SlotInfo};
use accelgate_hw::HwRoot;

const SLOT_MAGIC: &[u8; 8] = b"AGFWSLT1";
const SELECTOR_MAGIC: &[u8; 8] = b"AGFWSEL1";
/// Bytes of a slot header: magic, u64 length, sha256.
const SLOT_HEADER_LEN: usize = 8 + 8 + 32;
/// Bytes of a selector record: magic, u64 sequence, u8 slot, 7 zero bytes, 8-byte checksum.
const RECORD_LEN: usize = 8 + 8 + 8 + 8;
/// Bytes written per write(2) and checked for cancel in between.
const WRITE_CHUNK: usize = 64 * 1024;

/// Two slot partitions and a selector partition.
pub struct MtdSlots {
    a: Box<dyn FlashIo>,
    b: Box<dyn FlashIo>,
    selector: Box<dyn FlashIo>,
}

/// `dev/mtd<N>` of the partition called `name`, from `sys/class/mtd/mtd<N>/name`.
fn find_partition(hw: &HwRoot, name: &str) -> Option<PathBuf> {
    let class = hw.path().join("sys/class/mtd");
    std::fs::read_dir(&class).ok()?.find_map(|entry| {
        let file_name = entry.ok()?.file_name().into_string().ok()?;
        // mtdNro entries are the read-only twins of the same partition.
        let index = file_name.strip_prefix("mtd")?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let partition = std::fs::read_to_string(class.join(&file_name).join("name")).ok()?;
        (partition.trim_end() == name).then(|| hw.path().join("dev").join(&file_name))
    })
}

impl MtdSlots {
    pub fn open(hw: &HwRoot, name: &str) -> Result<MtdSlots, BackendError> {
        let open = |suffix: &str| -> Result<Box<dyn FlashIo>, BackendError> {
            let partition = format!("{name}-{suffix}");
            let err = |cause: Fault| BackendError::Open {
                name: partition.clone(),
                cause,
            };
            let path = find_partition(hw, &partition).ok_or_else(|| err(Fault::NoPartition))?;
            if hw.is_simulated() {
                // The simulator's dev/mtd<N> is a file; its geometry is in sysfs.
                let class = path
                    .file_name()
                    .map(|n| hw.path().join("sys/class/mtd").join(n))
                    .ok_or_else(|| err(Fault::NoPartition))?;
                let flash = FileFlash::open(&path, &class).map_err(|e| err(e.into()))?;
                return Ok(Box::new(flash));
            }
            Ok(Box::new(MtdChar::open(&path).map_err(|e| err(e.into()))?))
        };
        Ok(MtdSlots::new(open("a")?, open("b")?, open("sel")?))
    }

    pub fn new(a: Box<dyn FlashIo>, b: Box<dyn FlashIo>, selector: Box<dyn FlashIo>) -> Self {
        MtdSlots { a, b, selector }
    }

    fn part(&self, slot: Slot) -> &dyn FlashIo {
        match slot {
            Slot::A => self.a.as_ref(),
            Slot::B => self.b.as_ref(),
        }
    }

    /// The newest valid selector record: (block index, sequence, slot).
    fn newest_record(&self) -> Result<Option<(u64, u64, Slot)>, BackendError> {
        let mut best: Option<(u64, u64, Slot)> = None;
        for block in 0..2 {
            let mut record = [0u8; RECORD_LEN];
            self.selector
                .read_at(block * self.selector.erase_size(), &mut record)
                .map_err(|e| BackendError::Status(e.into()))?;
            if let Some((seq, slot)) = decode_record(&record) {
                if best.is_none_or(|(_, s, _)| seq > s) {
                    best = Some((block, seq, slot));
                }
            }
        }
        Ok(best)
    }

    fn slot_header(&self, slot: Slot) -> Result<Option<(u64, [u8; 32])>, BackendError> {
        let mut header = [0u8; SLOT_HEADER_LEN];
        self.part(slot)
            .read_at(0, &mut header)
            .map_err(|e| BackendError::Status(e.into()))?;
        if &header[..8] != SLOT_MAGIC {
            return Ok(None);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[8..16]);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&header[16..48]);
        Ok(Some((u64::from_le_bytes(len), sha)))
    }

    fn read_image(&self, slot: Slot, len: u64) -> Result<Vec<u8>, FlashIoError> {
        let part = self.part(slot);
        let len_usize = usize::try_from(len).map_err(|_| FlashIoError::Range {
            offset: part.erase_size(),
            len,
        })?;
        let mut bytes = vec![0u8; len_usize];
        part.read_at(part.erase_size(), &mut bytes)?;
        Ok(bytes)
    }

    fn slot_info(&self, slot: Slot) -> Result<SlotInfo, BackendError> {
        let Some((len, sha)) = self.slot_header(slot)? else {
            return Ok(SlotInfo::default());
        };
        let capacity = self
            .part(slot)
            .size()
            .saturating_sub(self.part(slot).erase_size());
        if len == 0 || len > capacity {
            return Ok(SlotInfo::default());
        }
        // Only the first line is needed for the version.
        let mut head = vec![0u8; len.min(256) as usize];
        self.part(slot)
            .read_at(self.part(slot).erase_size(), &mut head)
            .map_err(|e| BackendError::Status(e.into()))?;
        Ok(SlotInfo {
            valid: true,
            version: image_version(&head),
            sha256: hex(&sha),
        })
    }
}

/// Selector record bytes for `seq` and `slot`.
fn encode_record(seq: u64, slot: Slot) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    record[..8].copy_from_slice(SELECTOR_MAGIC);
    record[8..16].copy_from_slice(&seq.to_le_bytes());
    record[16] = match slot {
        Slot::A => 0,
        Slot::B => 1,
    };
    let check = Sha256::digest(&record[..24]);
    record[24..].copy_from_slice(&check[..8]);
    record
}

/// `(seq, slot)` of a complete, undamaged record; None for erased or torn bytes.
fn decode_record(record: &[u8; RECORD_LEN]) -> Option<(u64, Slot)> {
    if &record[..8] != SELECTOR_MAGIC || Sha256::digest(&record[..24])[..8] != record[24..] {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&record[8..16]);
    let slot = match record[16] {
        0 => Slot::A,
        1 => Slot::B,
        _ => return None,
    };
    Some((u64::from_le_bytes(seq), slot))
}

/// Rounds `len` up to whole erase blocks.
fn erase_span(len: u64, erase_size: u64) -> u64 {
    len.div_ceil(erase_size) * erase_size
}

impl FirmwareBackend for MtdSlots {
    fn status(&self) -> Result<FirmwareStatus, BackendError> {
        // No record yet: a factory-fresh selector boots slot A.
        let active = self.newest_record()?.map_or(Slot::A, |(_, _, slot)| slot);
        Ok(FirmwareStatus {
            active,
            a: self.slot_info(Slot::A)?,
            b: self.slot_info(Slot::B)?,
        })
    }

    fn write_slot(
        &self,
        slot: Slot,
        image: &[u8],
        progress: &mut dyn FnMut(f64),
        cancel: &AtomicBool,
    ) -> Result<(), BackendError> {
        let write_err = |e: FlashIoError| BackendError::Write {
            slot,
            cause: e.into(),
        };
        if self.status()?.active == slot {
            return Err(BackendError::Write {
                slot,
                cause: Fault::ActiveSlot,
            });
        }
        let part = self.part(slot);
        let block = part.erase_size();
        let len = image.len() as u64;
        if len + block > part.size() {
            return Err(BackendError::Write {
                slot,
                cause: Fault::TooLarge {
                    needed: len + block,
                    capacity: part.size(),
                },
            });
        }
        // Header block first: from here on the slot is invalid until the header is written.
        part.erase(0, block).map_err(write_err)?;
        part.erase(block, erase_span(len, block))
            .map_err(write_err)?;
        let mut written = 0usize;
        for chunk in image.chunks(WRITE_CHUNK) {
            if cancel.load(Ordering::SeqCst) {
                return Err(BackendError::Cancelled);
            }
            part.write_at(block + written as u64, chunk)
                .map_err(write_err)?;
            written += chunk.len();
            progress(written as f64 / image.len().max(1) as f64);
        }
        Ok(())
    }

    fn verify_slot(&self, slot: Slot, image: &[u8], sha256: &str) -> Result<(), BackendError> {
        let verify_err = |cause: Fault| BackendError::Verify { slot, cause };
        let back = self
            .read_image(slot, image.len() as u64)
            .map_err(|e| verify_err(e.into()))?;
        // The read-back is compared byte for byte with the image, whose SHA-256 the engine
        // took as it read it from the caller: equal bytes have that digest, and hashing them
        // again would be a second pass over the slot for nothing. A mismatch is hashed for the
        // report.
        let digest: [u8; 32] = match sha256.parse::<accelgate_proto::Sha256>() {
            Ok(d) if back == image => *d.as_bytes(),
            _ => {
                let found = hex(&Sha256::digest(&back));
                return Err(verify_err(Fault::DigestMismatch(found)));
            }
        };
        // The header makes the slot valid; it goes on only now.
        let mut header = [0u8; SLOT_HEADER_LEN];
        header[..8].copy_from_slice(SLOT_MAGIC);
        header[8..16].copy_from_slice(&(image.len() as u64).to_le_bytes());
        header[16..].copy_from_slice(&digest);
        self.part(slot)
            .write_at(0, &header)
            .map_err(|e| verify_err(e.into()))?;
        match self.slot_header(slot)? {
            Some((len, sha)) if len == image.len() as u64 && sha[..] == digest[..] => Ok(()),
            _ => Err(verify_err(Fault::HeaderNotWritten)),
        }
    }

    fn switch_to(&self, slot: Slot) -> Result<(), BackendError> {
        let switch_err = |cause: Fault| BackendError::Switch { slot, cause };
        if !self.slot_info(slot)?.valid {
            return Err(switch_err(Fault::NoValidImage));
        }
        let (block, seq) = match self.newest_record()? {
            Some((_, _, current)) if current == slot => return Ok(()),
            Some((block, seq, _)) => (1 - block, seq + 1),
            None => (0, 1),
        };
        let erase = self.selector.erase_size();
        self.selector
            .erase(block * erase, erase)
            .map_err(|e| switch_err(e.into()))?;
        self.selector
            .write_at(block * erase, &encode_record(seq, slot))
            .map_err(|e| switch_err(e.into()))?;
        match self.newest_record()? {
            Some((_, _, now)) if now == slot => Ok(()),
            _ => Err(switch_err(Fault::SelectorNotWritten)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// NOR flash in memory: erase sets bytes to 0xff, a write can only clear bits, and an
    /// optional budget of bytes makes a write stop part-way (a power cut).
    #[derive(Clone)]
    struct Nor {
        bytes: Arc<Mutex<Vec<u8>>>,
        erase: u64,
        budget: Arc<Mutex<Option<usize>>>,
    }

    impl Nor {
        fn new(size: usize, erase: u64) -> Nor {
            Nor {
                bytes: Arc::new(Mutex::new(vec![0xff; size])),
                erase,
                budget: Arc::new(Mutex::new(None)),
            }
        }
    }

    impl FlashIo for Nor {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }
        fn erase_size(&self) -> u64 {
            self.erase
        }
        fn erase(&self, offset: u64, len: u64) -> Result<(), FlashIoError> {
            if offset % self.erase != 0 || len % self.erase != 0 || offset + len > self.size() {
                return Err(FlashIoError::Range { offset, len });
            }
            self.bytes.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0xff);
            Ok(())
        }
        fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), FlashIoError> {
            let mut budget = self.budget.lock().unwrap();
            let n = budget.map_or(data.len(), |b| b.min(data.len()));
            if let Some(b) = budget.as_mut() {
                *b -= n;
            }
            let mut bytes = self.bytes.lock().unwrap();
            for (i, &d) in data[..n].iter().enumerate() {
                bytes[offset as usize + i] &= d;
            }
            if n < data.len() {
                return Err(FlashIoError::Io {
                    op: "write",
                    offset,
                    source: std::io::Error::other("power cut"),
                });
            }
            Ok(())
        }
        fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), FlashIoError> {
            let bytes = self.bytes.lock().unwrap();
            out.copy_from_slice(&bytes[offset as usize..offset as usize + out.len()]);
            Ok(())
        }
    }

    fn slots() -> (MtdSlots, Nor, Nor) {
        let b = Nor::new(64 * 1024, 4096);
        let sel = Nor::new(8192, 4096);
        let s = MtdSlots::new(
            Box::new(Nor::new(64 * 1024, 4096)),
            Box::new(b.clone()),
            Box::new(sel.clone()),
        );
        (s, b, sel)
    }

    fn flash(s: &MtdSlots, image: &[u8]) -> Result<Slot, BackendError> {
        let target = s.status()?.active.other();
        let sha = hex(&Sha256::digest(image));
        s.write_slot(target, image, &mut |_| {}, &AtomicBool::new(false))?;
        s.verify_slot(target, image, &sha)?;
        s.switch_to(target)?;
        Ok(target)
    }

    #[test]
    fn flashes_alternate_slots_and_report_versions() {
        let (s, _, _) = slots();
        assert_eq!(s.status().unwrap().active, Slot::A);
        assert!(!s.status().unwrap().a.valid);
        assert_eq!(flash(&s, b"ACCELGATE-FW 1.0\nfirst").unwrap(), Slot::B);
        assert_eq!(flash(&s, b"ACCELGATE-FW 2.0\nsecond").unwrap(), Slot::A);
        assert_eq!(flash(&s, b"ACCELGATE-FW 3.0\nthird").unwrap(), Slot::B);
        let st = s.status().unwrap();
        assert_eq!(st.active, Slot::B);
        assert_eq!(st.active_version(), "3.0");
        assert_eq!(st.a.version, "2.0");
    }

    #[test]
    fn the_active_slot_is_never_written() {
        let (s, _, _) = slots();
        let err = s.write_slot(Slot::A, b"x", &mut |_| {}, &AtomicBool::new(false));
        assert!(matches!(err, Err(BackendError::Write { .. })), "{err:?}");
    }

    #[test]
    fn torn_image_write_leaves_the_slot_invalid_and_unswitchable() {
        let (s, b, _) = slots();
        *b.budget.lock().unwrap() = Some(100);
        let image = vec![7u8; 5000];
        assert!(s
            .write_slot(Slot::B, &image, &mut |_| {}, &AtomicBool::new(false))
            .is_err());
        *b.budget.lock().unwrap() = None;
        assert!(!s.status().unwrap().b.valid);
        assert!(s.switch_to(Slot::B).is_err());
        assert_eq!(s.status().unwrap().active, Slot::A);
    }

    #[test]
    fn torn_selector_write_keeps_the_old_slot() {
        let (s, _, sel) = slots();
        flash(&s, b"ACCELGATE-FW 1.0\n").unwrap();
        assert_eq!(s.status().unwrap().active, Slot::B);
        let image = b"ACCELGATE-FW 2.0\n";
        let sha = hex(&Sha256::digest(image));
        s.write_slot(Slot::A, image, &mut |_| {}, &AtomicBool::new(false))
            .unwrap();
        s.verify_slot(Slot::A, image, &sha).unwrap();
        for cut in 0..RECORD_LEN {
            *sel.budget.lock().unwrap() = Some(cut);
            assert!(s.switch_to(Slot::A).is_err());
            *sel.budget.lock().unwrap() = None;
            assert_eq!(s.status().unwrap().active, Slot::B, "cut after {cut} bytes");
        }
        s.switch_to(Slot::A).unwrap();
        assert_eq!(s.status().unwrap().active, Slot::A);
    }

    #[test]
    fn verify_refuses_different_bytes_and_cancel_stops_writing() {
        let (s, _, _) = slots();
        let image = vec![1u8; 9000];
        s.write_slot(Slot::B, &image, &mut |_| {}, &AtomicBool::new(false))
            .unwrap();
        // The digest is the engine's of `image`, taken as it read it; one that is not a
        // digest at all is refused.
        assert!(s.verify_slot(Slot::B, &image, "not a digest").is_err());
        let mut changed = image.clone();
        changed[0] = 2;
        let sha = hex(&Sha256::digest(&changed));
        assert!(s.verify_slot(Slot::B, &changed, &sha).is_err());
        assert!(!s.status().unwrap().b.valid);
        let cancelled = s.write_slot(Slot::B, &image, &mut |_| {}, &AtomicBool::new(true));
        assert!(matches!(cancelled, Err(BackendError::Cancelled)));
    }

    #[test]
    fn finds_partitions_by_name() {
        let root = std::env::temp_dir().join(format!("accelgate-mtd-{}", std::process::id()));
        for (n, name) in [(0, "boot"), (3, "fw-a")] {
            let dir = root.join(format!("sys/class/mtd/mtd{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(root.join("sys/class/mtd/mtd3ro")).unwrap();
        let hw = HwRoot::new(&root);
        assert_eq!(find_partition(&hw, "fw-a"), Some(root.join("dev/mtd3")));
        assert_eq!(find_partition(&hw, "fw-b"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
