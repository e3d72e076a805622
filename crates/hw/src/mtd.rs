//! MTD character devices (`/dev/mtdN`): the `MEMGETINFO` and `MEMERASE` ioctls and
//! positioned reads and writes. The ioctl numbers are defined here, once; the daemon's seccomp
//! filter imports them from this module.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `struct mtd_info_user` from `<mtd/mtd-abi.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MtdInfoUser {
    pub kind: u8,
    pub flags: u32,
    pub size: u32,
    pub erasesize: u32,
    pub writesize: u32,
    pub oobsize: u32,
    pub padding: u64,
}

/// `struct erase_info_user` from `<mtd/mtd-abi.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct EraseInfoUser {
    pub start: u32,
    pub length: u32,
}

nix::ioctl_read!(mem_get_info, b'M', 1, MtdInfoUser);
nix::ioctl_write_ptr!(mem_erase, b'M', 2, EraseInfoUser);

#[derive(Debug, thiserror::Error)]
pub enum FlashIoError {
    #[error("{op} at {offset:#x}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("range {offset:#x}+{len:#x} is outside the partition or not erase-block aligned")]
    Range { offset: u64, len: u64 },
}

/// What the slot logic needs from a flash partition; MTD char devices in the daemon, memory
/// in the tests.
pub trait FlashIo: Send + Sync {
    fn size(&self) -> u64;
    fn erase_size(&self) -> u64;
    /// Sets `len` bytes from `offset` (erase-block aligned) to the erased state.
    fn erase(&self, offset: u64, len: u64) -> Result<(), FlashIoError>;
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), FlashIoError>;
    fn read_at(&self, offset: u64, bytes: &mut [u8]) -> Result<(), FlashIoError>;
}

/// An MTD character device (`/dev/mtdN`).
pub struct MtdChar {
    file: File,
    info: MtdInfoUser,
}

impl MtdChar {
    pub fn open(path: &Path) -> Result<MtdChar, FlashIoError> {
        let io = |source| FlashIoError::Io {
            op: "open",
            offset: 0,
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mut info = MtdInfoUser::default();
        // SAFETY: MEMGETINFO fills exactly one `struct mtd_info_user`, which `info` is (same
        // layout, repr(C)); the fd is open for the duration of the call.
        unsafe { mem_get_info(file.as_raw_fd(), &mut info) }.map_err(|e| FlashIoError::Io {
            op: "MEMGETINFO",
            offset: 0,
            source: e.into(),
        })?;
        Ok(MtdChar { file, info })
    }
}

impl FlashIo for MtdChar {
    fn size(&self) -> u64 {
        u64::from(self.info.size)
    }

    fn erase_size(&self) -> u64 {
        u64::from(self.info.erasesize.max(1))
    }

    fn erase(&self, offset: u64, len: u64) -> Result<(), FlashIoError> {
        let range = FlashIoError::Range { offset, len };
        let (Ok(start), Ok(length)) = (u32::try_from(offset), u32::try_from(len)) else {
            return Err(range);
        };
        let request = EraseInfoUser { start, length };
        // SAFETY: MEMERASE reads one `struct erase_info_user` from the pointer, which points to
        // `request` (same layout, repr(C)) for the duration of the call.
        unsafe { mem_erase(self.file.as_raw_fd(), &request) }.map_err(|e| FlashIoError::Io {
            op: "MEMERASE",
            offset,
            source: e.into(),
        })?;
        Ok(())
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), FlashIoError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| FlashIoError::Io {
                op: "write",
                offset,
                source,
            })
    }

    fn read_at(&self, offset: u64, bytes: &mut [u8]) -> Result<(), FlashIoError> {
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|source| FlashIoError::Io {
                op: "read",
                offset,
                source,
            })
    }
}

/// An MTD partition of the simulated host (`accelgated --simulate`): `dev/mtd<N>` is a regular
/// file there, which cannot answer `MEMGETINFO` or `MEMERASE`, so its size and erase size come
/// from the sysfs attributes the kernel publishes for every MTD (`sys/class/mtd/mtd<N>/size`,
/// `erasesize`), and an erase writes 0xff, as erased NOR flash reads.
pub struct FileFlash {
    file: File,
    size: u64,
    erase_size: u64,
}

impl FileFlash {
    /// Opens `device` (a regular file) with the geometry from the sysfs directory `class`.
    pub fn open(device: &Path, class: &Path) -> Result<FileFlash, FlashIoError> {
        let io = |source| FlashIoError::Io {
            op: "open",
            offset: 0,
            source,
        };
        let number = |name: &str| -> Result<u64, FlashIoError> {
            let text = crate::read_attr(&class.join(name)).map_err(io)?;
            text.trim().parse().map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a number: {text:?}", class.join(name).display()),
                ))
            })
        };
        let (size, erase_size) = (number("size")?, number("erasesize")?);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || meta.len() != size || erase_size == 0 {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a simulated MTD of {size} bytes in blocks of {erase_size}",
                    device.display()
                ),
            )));
        }
        Ok(FileFlash {
            file,
            size,
            erase_size,
        })
    }
}

impl FlashIo for FileFlash {
    fn size(&self) -> u64 {
        self.size
    }

    fn erase_size(&self) -> u64 {
        self.erase_size
    }

    fn erase(&self, offset: u64, len: u64) -> Result<(), FlashIoError> {
        let aligned = offset % self.erase_size == 0 && len % self.erase_size == 0;
        if !aligned || offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FlashIoError::Range { offset, len });
        }
        let block = vec![0xffu8; self.erase_size as usize];
        let mut at = offset;
        while at < offset + len {
            self.write_at(at, &block)?;
            at += self.erase_size;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), FlashIoError> {
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(FlashIoError::Range {
                offset,
                len: bytes.len() as u64,
            });
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| FlashIoError::Io {
                op: "write",
                offset,
                source,
            })
    }

    fn read_at(&self, offset: u64, bytes: &mut [u8]) -> Result<(), FlashIoError> {
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|source| FlashIoError::Io {
                op: "read",
                offset,
                source,
            })
    }
}

/// `MEMGETINFO` as the kernel encodes it (`_IOR('M', 1, struct mtd_info_user)`).
pub const MEMGETINFO: u32 =
    nix::request_code_read!(b'M', 1, std::mem::size_of::<MtdInfoUser>()) as u32;
/// `MEMERASE` as the kernel encodes it (`_IOW('M', 2, struct erase_info_user)`).
pub const MEMERASE: u32 =
    nix::request_code_write!(b'M', 2, std::mem::size_of::<EraseInfoUser>()) as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_encodings_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<MtdInfoUser>(), 32);
        assert_eq!(std::mem::size_of::<EraseInfoUser>(), 8);
        // <mtd/mtd-abi.h> on x86_64: MEMGETINFO 0x80204d01, MEMERASE 0x40084d02.
        assert_eq!(MEMGETINFO, 0x8020_4d01);
        assert_eq!(MEMERASE, 0x4008_4d02);
    }
}
