//! Taking an image (application image, personality, firmware) from a caller's file descriptor.
//!
//! The daemon never opens a path a caller names: images arrive as an fd. Only a regular file or
//! a sealed memfd is accepted (a FIFO or socket could block the daemon, a directory has no
//! bytes). The bytes are read once into memory within a size limit and hashed there, so what is
//! verified, hashed and written is the same buffer, whatever the sender does to its fd later.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::uio::pread;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image must be a regular file or a sealed memfd, not {0}")]
    NotRegularFile(&'static str),
    #[error("image memfd must be sealed against write, shrink and grow")]
    Unsealed,
    #[error("image is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("image is empty")]
    Empty,
    #[error("cannot read image")]
    Read(#[source] Errno),
}

/// Bytes of an image as read from the caller's fd, with their sha256.
pub struct Image {
    pub bytes: Vec<u8>,
    /// Lowercase hex sha256 of `bytes`.
    pub sha256: String,
    /// The image memory reserved for these bytes (see `core::budget`), held as long as they.
    pub reservation: Option<super::budget::Reservation>,
}

/// Reads the image behind `fd`, refusing anything but a regular file or a sealed memfd, and
/// anything over `limit` bytes. Blocking: call from a blocking thread.
pub fn read_image(fd: &OwnedFd, limit: u64) -> Result<Image, ImageError> {
    let st = fstat(fd.as_fd()).map_err(ImageError::Read)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(ImageError::NotRegularFile(file_kind_name(kind)));
    }
    match fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => {
            let seals = SealFlag::from_bits_truncate(bits);
            let needed = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
            if !seals.contains(needed) {
                return Err(ImageError::Unsealed);
            }
        }
        // EINVAL: a file system without sealing, i.e. an ordinary regular file.
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(ImageError::Read(e)),
    }
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > limit {
        return Err(ImageError::TooLarge { limit });
    }
    // Read up to limit + 1 bytes: an unsealed regular file may grow after fstat.
    let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; cap.min(usize::try_from(st.st_size).unwrap_or(0) + 1)];
    let mut filled = 0usize;
    loop {
        if filled == bytes.len() {
            if bytes.len() >= cap {
                break;
            }
            let grown = (bytes.len() * 2).clamp(4096, cap);
            bytes.resize(grown, 0);
        }
        let offset = i64::try_from(filled).map_err(|_| ImageError::TooLarge { limit })?;
        match pread(fd.as_fd(), &mut bytes[filled..], offset) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ImageError::Read(e)),
        }
    }
    if filled as u64 > limit {
        return Err(ImageError::TooLarge { limit });
    }
    if filled == 0 {
        return Err(ImageError::Empty);
    }
    bytes.truncate(filled);
    let sha256 = sha256_hex(&bytes);
    Ok(Image {
        bytes,
        sha256,
        reservation: None,
    })
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn file_kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "a special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "accelgate-image-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        (path.clone(), std::fs::File::open(&path).unwrap())
    }

    #[test]
    fn reads_regular_file_and_hashes_it() {
        let (path, f) = temp_file(b"abc");
        let img = read_image(&OwnedFd::from(f), 16).unwrap();
        assert_eq!(img.bytes, b"abc");
        assert_eq!(
            img.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn refuses_over_limit_and_empty() {
        let (path, f) = temp_file(&[7u8; 100]);
        assert!(matches!(
            read_image(&OwnedFd::from(f), 99),
            Err(ImageError::TooLarge { limit: 99 })
        ));
        std::fs::remove_file(path).unwrap();
        let (path, f) = temp_file(b"");
        assert!(matches!(
            read_image(&OwnedFd::from(f), 99),
            Err(ImageError::Empty)
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn refuses_directory_and_fifo() {
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        assert!(matches!(
            read_image(&OwnedFd::from(dir), 99),
            Err(ImageError::NotRegularFile("a directory"))
        ));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            read_image(&r, 99),
            Err(ImageError::NotRegularFile("a FIFO"))
        ));
    }

    #[test]
    fn memfd_must_be_sealed() {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let fd = memfd_create("t", MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::write(&fd, b"img").unwrap();
        assert!(matches!(read_image(&fd, 99), Err(ImageError::Unsealed)));
        let seals = SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_SEAL;
        fcntl(fd.as_fd(), FcntlArg::F_ADD_SEALS(seals)).unwrap();
        assert_eq!(read_image(&fd, 99).unwrap().bytes, b"img");
    }
}
