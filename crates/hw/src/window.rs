//! A register window: a MAP_SHARED mapping of exactly one window of a BAR resource file, with
//! volatile little-endian accesses that are bounds- and alignment-checked before touching it.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Most registers one `read`/`write` may touch (bounds the reply size of a request).
pub const MAX_COUNT: u32 = 65536;

/// Access width of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    U8,
    U16,
    U32,
    U64,
}

impl TryFrom<u8> for Width {
    type Error = WindowError;

    /// From a width in bytes (1, 2, 4 or 8), as the D-Bus API passes it.
    fn try_from(bytes: u8) -> Result<Self, WindowError> {
        match bytes {
            1 => Ok(Width::U8),
            2 => Ok(Width::U16),
            4 => Ok(Width::U32),
            8 => Ok(Width::U64),
            other => Err(WindowError::InvalidWidth(other)),
        }
    }
}

impl Width {
    pub fn bytes(self) -> u64 {
        match self {
            Width::U8 => 1,
            Width::U16 => 2,
            Width::U32 => 4,
            Width::U64 => 8,
        }
    }

    pub fn max_value(self) -> u64 {
        match self {
            Width::U8 => u64::from(u8::MAX),
            Width::U16 => u64::from(u16::MAX),
            Width::U32 => u64::from(u32::MAX),
            Width::U64 => u64::MAX,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("width must be 1, 2, 4 or 8 bytes, not {0}")]
    InvalidWidth(u8),
    #[error("window size is zero")]
    EmptyWindow,
    #[error("window at {offset:#x} of size {size:#x} exceeds the resource of {len:#x} bytes")]
    WindowPastResource { offset: u64, size: u64, len: u64 },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("register count is zero")]
    ZeroCount,
    #[error("register count {count} exceeds the maximum of {MAX_COUNT}")]
    TooManyRegisters { count: u64 },
    #[error("offset {offset:#x} is not aligned to the {width}-byte access width")]
    Misaligned { offset: u64, width: u64 },
    #[error(
        "access of {len:#x} bytes at offset {offset:#x} is outside the window of size {size:#x}"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("value {value:#x} at index {index} does not fit in {width} bytes")]
    ValueTooWide {
        index: usize,
        value: u64,
        width: u64,
    },
    #[error("range {start:#x}..{end:#x} is not inside the window of size {size:#x}")]
    InvalidRange { start: u64, end: u64, size: u64 },
    #[error("the window is mapped read-only")]
    ReadOnly,
}

/// How a window is mapped: a read-only window's pages are mapped without `PROT_WRITE`, so not
/// even a bug in this process can store through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// One mapped window. The mapping starts at the page containing the window's first byte and
/// ends with the page containing its last, so nothing further of the BAR is mapped.
#[derive(Debug)]
pub struct SliceWindow {
    mapping: NonNull<u8>,
    mapping_len: usize,
    /// Where the window starts inside the mapping (its offset within the first page).
    lead: usize,
    /// Window offset within the resource file; absolute alignment is checked against it.
    file_offset: u64,
    size: u64,
    access: Access,
}

// SAFETY: the struct only holds the address of a process-wide MAP_SHARED mapping that it alone
// unmaps (in Drop, which needs ownership). It never hands out Rust references into the mapping;
// every access is a bounds-checked volatile load or store of a naturally aligned integer, which
// is how memory that is also changed by a device or another process (outside the Rust
// abstract machine) must be accessed anyway. Moving it between threads or sharing it changes
// none of this; ordering between concurrent requests on one window is the daemon's job.
unsafe impl Send for SliceWindow {}
// SAFETY: see the Send impl above: `&SliceWindow` only permits volatile, checked accesses.
unsafe impl Sync for SliceWindow {}

impl SliceWindow {
    /// Maps [offset, offset+size) of a resource file: a page-aligned MAP_SHARED read-write
    /// mapping covering only that window. Fails if size == 0 or the window exceeds the file.
    pub fn open(resource: &Path, offset: u64, size: u64) -> Result<Self, WindowError> {
        Self::open_with(resource, offset, size, Access::ReadWrite)
    }

    /// [`SliceWindow::open`] with the given access; the file is opened read-only for
    /// [`Access::ReadOnly`].
    pub fn open_with(
        resource: &Path,
        offset: u64,
        size: u64,
        access: Access,
    ) -> Result<Self, WindowError> {
        if size == 0 {
            return Err(WindowError::EmptyWindow);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(resource)
            .map_err(|source| WindowError::Open {
                path: resource.to_path_buf(),
                source,
            })?;
        Self::map_fd(file.as_fd(), resource, offset, size, access)
    }

    /// Maps a window of an already open resource file (e.g. an fd that `Map` handed out);
    /// `label` names it in errors.
    pub fn map_fd(
        fd: BorrowedFd<'_>,
        label: &Path,
        offset: u64,
        size: u64,
        access: Access,
    ) -> Result<Self, WindowError> {
        if size == 0 {
            return Err(WindowError::EmptyWindow);
        }
        let len = nix::sys::stat::fstat(fd)
            .map_err(|e| WindowError::Open {
                path: label.to_path_buf(),
                source: e.into(),
            })?
            .st_size;
        let len = u64::try_from(len).unwrap_or(0);
        let past = WindowError::WindowPastResource { offset, size, len };
        match offset.checked_add(size) {
            Some(end) if end <= len => {}
            _ => return Err(past),
        }
        let page = page_size();
        let map_offset = offset - offset % page;
        let lead = offset - map_offset;
        let map_err = |source| WindowError::Map {
            path: label.to_path_buf(),
            source,
        };
        let mapping_len = usize::try_from(lead + size).map_err(|_| past)?;
        let length = NonZeroUsize::new(mapping_len).ok_or(WindowError::EmptyWindow)?;
        let file_off =
            nix::libc::off_t::try_from(map_offset).map_err(|_| map_err(nix::Error::EOVERFLOW))?;
        let prot = match access {
            Access::ReadOnly => ProtFlags::PROT_READ,
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
        };
        // SAFETY: a fresh mapping at an address the kernel picks, so it aliases no Rust object;
        // the file range was checked to exist. The pointer is only used through volatile,
        // bounds-checked accesses and unmapped exactly once in Drop.
        let mapping = unsafe { mmap(None, length, prot, MapFlags::MAP_SHARED, fd, file_off) }
            .map_err(map_err)?;
        Ok(SliceWindow {
            mapping: mapping.cast(),
            mapping_len,
            lead: lead as usize,
            file_offset: offset,
            size,
            access,
        })
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// `count` registers of `width` from `offset` (relative to the window). Errors (distinct
    /// variants, clear messages): count == 0, count > MAX_COUNT, offset not aligned to width,
    /// offset + count*width overflowing or past the window.
    pub fn read(&self, offset: u64, count: u32, width: Width) -> Result<Vec<u64>, WindowError> {
        // Checked before the buffer is allocated: a caller's count must never size memory
        // before it is known to be in range.
        self.check_access(offset, u64::from(count), width)?;
        let mut out = vec![0u64; count as usize];
        self.read_into(offset, width, &mut out)?;
        Ok(out)
    }

    /// [`SliceWindow::read`] into a caller's buffer: `out.len()` registers, no allocation (for
    /// callers that sweep a window repeatedly).
    pub fn read_into(&self, offset: u64, width: Width, out: &mut [u64]) -> Result<(), WindowError> {
        self.check_access(offset, out.len() as u64, width)?;
        let step = width.bytes();
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.load(offset + i as u64 * step, width);
        }
        Ok(())
    }

    /// Same checks; plus a value wider than `width` is an error. Checks everything before
    /// writing anything (all or nothing). Knows nothing of writable ranges (daemon's job).
    pub fn write(&self, offset: u64, values: &[u64], width: Width) -> Result<(), WindowError> {
        if self.access == Access::ReadOnly {
            return Err(WindowError::ReadOnly);
        }
        self.check_access(offset, values.len() as u64, width)?;
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|(_, &value)| value > width.max_value())
        {
            return Err(WindowError::ValueTooWide {
                index,
                value,
                width: width.bytes(),
            });
        }
        let step = width.bytes();
        for (i, &value) in values.iter().enumerate() {
            self.store(offset + i as u64 * step, width, value);
        }
        Ok(())
    }

    /// Zeroes [start, end) (scrubbing a released slice), widest aligned accesses.
    pub fn zero(&self, start: u64, end: u64) -> Result<(), WindowError> {
        if self.access == Access::ReadOnly {
            return Err(WindowError::ReadOnly);
        }
        if start > end || end > self.size {
            return Err(WindowError::InvalidRange {
                start,
                end,
                size: self.size,
            });
        }
        let mut at = start;
        while at < end {
            let width = [Width::U64, Width::U32, Width::U16, Width::U8]
                .into_iter()
                .find(|w| self.is_aligned(at, *w) && at + w.bytes() <= end)
                .unwrap_or(Width::U8);
            self.store(at, width, 0);
            at += width.bytes();
        }
        Ok(())
    }

    fn is_aligned(&self, offset: u64, width: Width) -> bool {
        // The mapping is page aligned, so absolute alignment follows from the file offset.
        // Wrapping keeps the low bits exact, and an offset that large fails the range check.
        offset % width.bytes() == 0 && self.file_offset.wrapping_add(offset) % width.bytes() == 0
    }

    fn check_access(&self, offset: u64, count: u64, width: Width) -> Result<(), WindowError> {
        if count == 0 {
            return Err(WindowError::ZeroCount);
        }
        if count > u64::from(MAX_COUNT) {
            return Err(WindowError::TooManyRegisters { count });
        }
        if !self.is_aligned(offset, width) {
            return Err(WindowError::Misaligned {
                offset,
                width: width.bytes(),
            });
        }
        let len = count * width.bytes(); // <= 65536 * 8, cannot overflow
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(WindowError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Address of window offset `offset`; callers have checked `offset < size`.
    fn addr(&self, offset: u64) -> *mut u8 {
        // SAFETY: lead + offset < mapping_len (offset < size was checked by the caller), so the
        // result stays inside the mapping.
        unsafe { self.mapping.as_ptr().add(self.lead + offset as usize) }
    }

    /// One volatile little-endian load; `offset` is checked in bounds and aligned.
    fn load(&self, offset: u64, width: Width) -> u64 {
        let ptr = self.addr(offset);
        // SAFETY: ptr is inside the live mapping, aligned to the width (checked), and the
        // access is volatile because the memory belongs to a device or another process.
        unsafe {
            match width {
                Width::U8 => u64::from(ptr.read_volatile()),
                Width::U16 => u64::from(u16::from_le(ptr.cast::<u16>().read_volatile())),
                Width::U32 => u64::from(u32::from_le(ptr.cast::<u32>().read_volatile())),
                Width::U64 => u64::from_le(ptr.cast::<u64>().read_volatile()),
            }
        }
    }

    /// One volatile little-endian store; `offset` is checked and `value` fits the width.
    fn store(&self, offset: u64, width: Width, value: u64) {
        let ptr = self.addr(offset);
        // SAFETY: as in `load`; the mapping is writable (PROT_WRITE) and the truncating casts
        // are exact because the caller checked `value <= width.max_value()`.
        unsafe {
            match width {
                Width::U8 => ptr.write_volatile(value as u8),
                Width::U16 => ptr.cast::<u16>().write_volatile((value as u16).to_le()),
                Width::U32 => ptr.cast::<u32>().write_volatile((value as u32).to_le()),
                Width::U64 => ptr.cast::<u64>().write_volatile(value.to_le()),
            }
        }
    }
}

impl Drop for SliceWindow {
    fn drop(&mut self) {
        // SAFETY: mapping/mapping_len are exactly what mmap returned and was given; no access
        // can follow because Drop has exclusive ownership.
        let result = unsafe { munmap(self.mapping.cast(), self.mapping_len) };
        if let Err(err) = result {
            tracing::warn!("munmap of a register window failed: {err}");
        }
    }
}

/// The system page size, from the auxiliary vector (AT_PAGESZ) the kernel gives every process;
/// 4096 if that cannot be read. Cached: it cannot change while the process runs.
pub(crate) fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        const AT_PAGESZ: u64 = 6;
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        auxv.chunks_exact(16)
            .map(|pair| {
                let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
                (word(&pair[..8]), word(&pair[8..]))
            })
            .find(|&(key, _)| key == AT_PAGESZ)
            .map(|(_, value)| value)
            .filter(|value| value.is_power_of_two())
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn resource(tag: &str, len: u64) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "accelgate-window-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(len).unwrap();
        TempFile(path)
    }

    fn file_bytes(path: &Path, at: usize, len: usize) -> Vec<u8> {
        std::fs::read(path).unwrap()[at..at + len].to_vec()
    }

    #[test]
    fn a_huge_count_is_refused_before_any_buffer_is_sized() {
        let res = resource("huge", 4096);
        let w = SliceWindow::open(&res.0, 0, 4096).unwrap();
        // u32::MAX registers of 8 bytes would be 32 GiB: refused by the checks, not by the
        // allocator (which would abort the process).
        assert!(matches!(
            w.read(0, u32::MAX, Width::U64),
            Err(WindowError::TooManyRegisters { .. })
        ));
    }

    #[test]
    fn a_read_only_window_reads_and_refuses_every_store() {
        let res = resource("ro", 8192);
        let rw = SliceWindow::open(&res.0, 0, 8192).unwrap();
        rw.write(0x10, &[0xdead_beef], Width::U32).unwrap();
        let file = std::fs::File::open(&res.0).unwrap();
        let ro = SliceWindow::map_fd(file.as_fd(), &res.0, 0, 8192, Access::ReadOnly).unwrap();
        assert_eq!(ro.access(), Access::ReadOnly);
        assert_eq!(ro.read(0x10, 1, Width::U32).unwrap(), [0xdead_beef]);
        let mut out = [0u64; 2];
        ro.read_into(0x10, Width::U32, &mut out).unwrap();
        assert_eq!(out, [0xdead_beef, 0]);
        assert!(matches!(
            ro.write(0x10, &[1], Width::U32),
            Err(WindowError::ReadOnly)
        ));
        assert!(matches!(ro.zero(0, 8), Err(WindowError::ReadOnly)));
        assert_eq!(file_bytes(&res.0, 0x10, 4), 0xdead_beef_u32.to_le_bytes());
        // Opened read-only, the file cannot be mapped writable at all.
        assert!(matches!(
            SliceWindow::map_fd(file.as_fd(), &res.0, 0, 8192, Access::ReadWrite),
            Err(WindowError::Map { .. })
        ));
    }

    #[test]
    fn window_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<SliceWindow>();
        let file = resource("threads", 0x1000);
        let window = SliceWindow::open(&file.0, 0, 0x1000).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let window = &window;
                scope.spawn(move || window.write(t * 8, &[t + 1], Width::U64).unwrap());
            }
        });
        assert_eq!(window.read(0, 4, Width::U64).unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn page_size_is_sane() {
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096);
    }

    #[test]
    fn width_conversions() {
        assert_eq!(Width::try_from(4).unwrap(), Width::U32);
        assert!(matches!(
            Width::try_from(3),
            Err(WindowError::InvalidWidth(3))
        ));
        assert!(matches!(
            Width::try_from(16),
            Err(WindowError::InvalidWidth(16))
        ));
        assert_eq!(Width::U16.max_value(), 0xffff);
        assert_eq!(Width::U64.bytes(), 8);
    }

    #[test]
    fn open_checks_the_window() {
        let file = resource("open", 0x20000);
        assert!(matches!(
            SliceWindow::open(&file.0, 0x1000, 0),
            Err(WindowError::EmptyWindow)
        ));
        assert!(matches!(
            SliceWindow::open(&file.0, 0x10000, 0x10001),
            Err(WindowError::WindowPastResource { .. })
        ));
        assert!(matches!(
            SliceWindow::open(&file.0, u64::MAX, 2),
            Err(WindowError::WindowPastResource { .. })
        ));
        assert!(matches!(
            SliceWindow::open(Path::new("/nonexistent/accelgate"), 0, 8),
            Err(WindowError::Open { .. })
        ));
        let window = SliceWindow::open(&file.0, 0x10000, 0x10000).unwrap();
        assert_eq!(window.size(), 0x10000);
    }

    #[test]
    fn access_errors_are_distinct() {
        let file = resource("errors", 0x3000);
        let window = SliceWindow::open(&file.0, 0x1000, 0x100).unwrap();
        assert!(matches!(
            window.read(0, 0, Width::U32),
            Err(WindowError::ZeroCount)
        ));
        assert!(matches!(
            window.read(0, MAX_COUNT + 1, Width::U8),
            Err(WindowError::TooManyRegisters { .. })
        ));
        assert!(matches!(
            window.read(2, 1, Width::U32),
            Err(WindowError::Misaligned {
                offset: 2,
                width: 4
            })
        ));
        assert!(matches!(
            window.read(0xf8, 2, Width::U64),
            Err(WindowError::OutOfRange { .. })
        ));
        assert!(matches!(
            window.read(u64::MAX - 7, 1, Width::U64),
            Err(WindowError::OutOfRange { .. })
        ));
        assert!(matches!(
            window.write(0, &[], Width::U8),
            Err(WindowError::ZeroCount)
        ));
        assert!(matches!(
            window.write(0, &[1, 0x1_0000], Width::U16),
            Err(WindowError::ValueTooWide { index: 1, .. })
        ));
        assert!(matches!(
            window.zero(0x10, 0x101),
            Err(WindowError::InvalidRange { .. })
        ));
        // The full last register is fine.
        assert_eq!(window.read(0xf8, 1, Width::U64).unwrap(), vec![0]);
    }

    #[test]
    fn write_is_all_or_nothing() {
        let file = resource("atomic", 0x1000);
        let window = SliceWindow::open(&file.0, 0, 0x100).unwrap();
        assert!(window.write(0, &[0x11, 0x22, 0x333], Width::U8).is_err());
        assert_eq!(window.read(0, 3, Width::U8).unwrap(), vec![0, 0, 0]);
        assert!(window.write(0xfc, &[1, 2], Width::U32).is_err());
        assert_eq!(window.read(0xfc, 1, Width::U32).unwrap(), vec![0]);
    }

    #[test]
    fn volatile_round_trips_are_little_endian_and_windowed() {
        let file = resource("roundtrip", 0x4000);
        // An unaligned-to-page window: offset 0x1100 inside the file.
        let window = SliceWindow::open(&file.0, 0x1100, 0x200).unwrap();
        window
            .write(0x8, &[0x0102_0304_0506_0708], Width::U64)
            .unwrap();
        window
            .write(0x10, &[0xaabb_ccdd, 0x1122_3344], Width::U32)
            .unwrap();
        window.write(0x1fe, &[0xbeef], Width::U16).unwrap();
        assert_eq!(
            window.read(0x8, 1, Width::U64).unwrap(),
            vec![0x0102_0304_0506_0708]
        );
        assert_eq!(
            window.read(0x8, 2, Width::U32).unwrap(),
            vec![0x0506_0708, 0x0102_0304]
        );
        assert_eq!(
            window.read(0x10, 1, Width::U64).unwrap(),
            vec![0x1122_3344_aabb_ccdd]
        );
        // The bytes land in the file where the window says, little endian.
        assert_eq!(file_bytes(&file.0, 0x1108, 8), vec![8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(file_bytes(&file.0, 0x12fe, 2), vec![0xef, 0xbe]);
        // Outside the window nothing changed.
        assert!(file_bytes(&file.0, 0, 0x1100).iter().all(|&b| b == 0));

        // A second mapping sees the first one's stores (MAP_SHARED), and zero scrubs.
        let other = SliceWindow::open(&file.0, 0x1000, 0x400).unwrap();
        assert_eq!(
            other.read(0x1fe + 0x100, 1, Width::U16).unwrap(),
            vec![0xbeef]
        );
        window.write(0x100, &[0xff; 16], Width::U8).unwrap();
        window.zero(0x9, 0x10b).unwrap();
        assert_eq!(window.read(0x8, 1, Width::U8).unwrap(), vec![0x08]);
        assert_eq!(window.read(0x9, 1, Width::U8).unwrap(), vec![0]);
        assert_eq!(
            window.read(0x100, 12, Width::U8).unwrap()[..],
            [0; 11].iter().chain(&[0xff]).copied().collect::<Vec<u64>>()[..]
        );
        assert_eq!(window.read(0x1fe, 1, Width::U16).unwrap(), vec![0xbeef]);
    }
}
