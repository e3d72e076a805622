//! Images travel to the daemon as sealed memfds: the daemon never opens a path a caller names,
//! and a sealed memfd cannot change between the daemon's check and its use.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::sendfile::sendfile;

use super::error::ClientError;

/// Largest image the client copies. Devices set their own, usually much smaller, limit; this
/// one only stops a mistaken `/dev/zero` from filling memory.
pub const MAX_IMAGE_LEN: u64 = 4 << 30;

/// The seals the daemon requires: the contents and size are fixed and no seal can be removed.
pub fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL
}

/// An image in a sealed, read-only memfd.
#[derive(Debug)]
pub struct SealedImage {
    fd: OwnedFd,
    len: u64,
}

impl SealedImage {
    /// Copies the file at `path` into a sealed memfd.
    pub fn from_path(path: &Path) -> Result<SealedImage, ClientError> {
        let read_error = |source| ClientError::ReadFile {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        Self::sealed(|memfd| match kernel_copy(&file, memfd)? {
            Some(len) => Ok(len),
            // Not a file the kernel can copy from (a pipe, some /proc files): through here.
            None => copy(&mut (&file).take(MAX_IMAGE_LEN + 1), memfd),
        })
        .map_err(|e| match e {
            CopyError::Read(source) => read_error(source),
            CopyError::Other(e) => e,
        })
    }

    /// Puts `bytes` into a sealed memfd.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedImage, ClientError> {
        Self::copy_from(bytes).map_err(|e| match e {
            CopyError::Read(source) => ClientError::Seal(source),
            CopyError::Other(e) => e,
        })
    }

    /// Image size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the file offset back to the start, for a daemon that reads rather than preads.
    pub(crate) fn rewind(&self) -> io::Result<()> {
        File::from(self.fd.try_clone()?).seek(SeekFrom::Start(0))?;
        Ok(())
    }

    fn copy_from(source: impl Read) -> Result<SealedImage, CopyError> {
        // Read one byte past the limit so that "exactly the limit" and "more" differ.
        let mut limited = source.take(MAX_IMAGE_LEN + 1);
        Self::sealed(|memfd| copy(&mut limited, memfd))
    }

    /// A new memfd, filled by `fill` (at most one byte past the limit), then sealed.
    fn sealed(
        fill: impl FnOnce(&mut File) -> Result<u64, CopyError>,
    ) -> Result<SealedImage, CopyError> {
        let seal_error = |e: io::Error| CopyError::Other(ClientError::Seal(e));
        let fd = memfd_create(
            c"accelgate-image",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| seal_error(e.into()))?;
        let mut memfd = File::from(fd);
        let len = fill(&mut memfd)?;
        if len > MAX_IMAGE_LEN {
            return Err(CopyError::Other(ClientError::ImageTooLarge {
                limit: MAX_IMAGE_LEN,
            }));
        }
        memfd.seek(SeekFrom::Start(0)).map_err(seal_error)?;
        fcntl(&memfd, FcntlArg::F_ADD_SEALS(required_seals())).map_err(|e| seal_error(e.into()))?;
        Ok(SealedImage {
            fd: memfd.into(),
            len,
        })
    }
}

impl AsFd for SealedImage {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Read errors are the source's fault; write errors are the memfd's.
enum CopyError {
    Read(io::Error),
    Other(ClientError),
}

/// Copies `from` into `to` inside the kernel (`sendfile`: page to page, the bytes never pass
/// through this process, half the memory traffic of a read and a write), up to one byte past
/// the limit. None when the kernel cannot copy from this kind of file, before any byte moved.
fn kernel_copy(from: &File, to: &File) -> Result<Option<u64>, CopyError> {
    let mut total = 0u64;
    loop {
        let left = MAX_IMAGE_LEN + 1 - total;
        if left == 0 {
            return Ok(Some(total));
        }
        let want = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match sendfile(to.as_fd(), from.as_fd(), None, want) {
            Ok(0) => return Ok(Some(total)),
            Ok(n) => total += n as u64,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) if total == 0 => {
                return Ok(None)
            }
            // The memfd's side: out of memory or space.
            Err(e @ (Errno::ENOSPC | Errno::ENOMEM | Errno::EFBIG)) => {
                return Err(CopyError::Other(ClientError::Seal(e.into())))
            }
            Err(e) => return Err(CopyError::Read(e.into())),
        }
    }
}

/// `io::copy`, but telling read failures from write failures.
fn copy(from: &mut impl Read, to: &mut File) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n])
            .map_err(|e| CopyError::Other(ClientError::Seal(e)))?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_seals(image: &SealedImage) -> SealFlag {
        SealFlag::from_bits_truncate(fcntl(image, FcntlArg::F_GET_SEALS).unwrap())
    }

    #[test]
    fn sealed_image_cannot_change() {
        let image = SealedImage::from_bytes(b"bitstream").unwrap();
        assert_eq!(image.len(), 9);
        assert!(get_seals(&image).contains(required_seals()));

        let mut file = File::from(image.fd.try_clone().unwrap());
        assert!(file.write_all(b"evil").is_err(), "write to a sealed memfd");
        assert!(file.set_len(1).is_err(), "shrink a sealed memfd");
        assert!(file.set_len(100).is_err(), "grow a sealed memfd");
        let more = fcntl(&file, FcntlArg::F_ADD_SEALS(SealFlag::empty()));
        assert!(
            more.is_err(),
            "F_SEAL_SEAL must forbid further seal changes"
        );

        let mut back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"bitstream");
    }

    #[test]
    fn from_path_copies_the_file_and_starts_at_offset_zero() {
        let dir = std::env::temp_dir().join(format!("accelgate-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        let image = SealedImage::from_path(&path).unwrap();
        // Later changes to the file do not reach the image.
        std::fs::write(&path, b"changed").unwrap();
        let mut back = Vec::new();
        File::from(image.fd.try_clone().unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        image.rewind().unwrap();
        let mut first = [0u8; 4];
        // dup'ed fds share the offset, so this read sees where the daemon would start.
        File::from(image.fd.try_clone().unwrap())
            .read_exact(&mut first)
            .unwrap();
        assert_eq!(first, data[..4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kernel_copy_and_the_copy_through_the_process_give_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("accelgate-kcopy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.bin");
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 31 % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let read_back = |image: &SealedImage| {
            let mut back = Vec::new();
            File::from(image.fd.try_clone().unwrap())
                .read_to_end(&mut back)
                .unwrap();
            back
        };
        let file = File::open(&path).unwrap();
        let memfd = File::from(
            memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap(),
        );
        // A regular file is copied by the kernel, not through the fallback.
        assert_eq!(
            kernel_copy(&file, &memfd).ok().flatten(),
            Some(data.len() as u64)
        );
        let by_kernel = SealedImage::from_path(&path).unwrap();
        let by_process = SealedImage::copy_from(File::open(&path).unwrap())
            .ok()
            .unwrap();
        assert_eq!(by_kernel.len(), data.len() as u64);
        assert!(read_back(&by_kernel) == data && read_back(&by_process) == data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_path() {
        let err = SealedImage::from_path(Path::new("/nonexistent/accelgate.bin")).unwrap_err();
        assert!(
            matches!(&err, ClientError::ReadFile { path, .. } if path.ends_with("accelgate.bin"))
        );
        assert_eq!(err.to_string(), "cannot read /nonexistent/accelgate.bin");
    }
}
