//! Taking an image (application image, personality, firmware) from a caller's file descriptor.
//!
//! The daemon never opens a path a caller names: images arrive as an fd. Only a regular file or
//! a sealed memfd is accepted (a FIFO or socket could block the daemon, a directory has no
//! bytes). The bytes are read once into memory within a size limit and hashed there, so what is
//! verified, hashed and written is the same buffer, whatever the sender does to its fd later.

use std::os::fd::{AsFd, OwnedFd};

use accelgate_hw::digest::hex;
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
    #[error("image grew past the {size} bytes it had when it was opened, while it was read")]
    Grew { size: u64 },
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
    read_image_with(fd, limit, None::<fn(&mut dyn Iterator<Item = &[u8]>)>).map(|(image, _)| image)
}

/// How much is read (and SHA-256-hashed) at a time: small enough that the hash finds the bytes
/// still in the CPU's cache, large enough that the syscalls do not count.
const READ_CHUNK: usize = 256 * 1024;

/// [`read_image`], hashing each piece as it is read (one pass over the bytes, not a read and
/// then a hash), and handing each piece, in order, to `side` — another consumer of the bytes,
/// such as a signature check — on a thread of its own, so the two hashes run side by side.
/// Returns what `side` returned; on a read error `side` still sees a prefix and its result is
/// dropped.
pub fn read_image_with<T, F>(
    fd: &OwnedFd,
    limit: u64,
    side: Option<F>,
) -> Result<(Image, Option<T>), ImageError>
where
    T: Send,
    F: FnOnce(&mut dyn Iterator<Item = &[u8]>) -> T + Send,
{
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
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > limit {
        return Err(ImageError::TooLarge { limit });
    }
    // One byte more than fstat said: an unsealed regular file may grow while it is read, and
    // a read that fills this byte saw it grow. The buffer never moves, so the pieces handed to
    // `side` stay valid while the rest is read.
    let cap = usize::try_from(size)
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or(ImageError::TooLarge { limit })?;
    let mut bytes = vec![0u8; cap];
    let mut sha = Sha256::new();
    let (filled, side_result) = std::thread::scope(|scope| {
        let (pieces, received) = std::sync::mpsc::channel::<&[u8]>();
        let consumer = side.map(|f| scope.spawn(move || f(&mut received.into_iter())));
        let mut rest: &mut [u8] = &mut bytes;
        let mut filled = 0usize;
        let outcome = loop {
            if rest.is_empty() {
                break Ok(());
            }
            let want = rest.len().min(READ_CHUNK);
            let Ok(offset) = i64::try_from(filled) else {
                break Err(ImageError::TooLarge { limit });
            };
            match pread(fd.as_fd(), &mut rest[..want], offset) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let (done, tail) = std::mem::take(&mut rest).split_at_mut(n);
                    let done: &[u8] = done;
                    sha.update(done);
                    // A consumer that stopped early no longer needs the pieces.
                    let _ = pieces.send(done);
                    rest = tail;
                    filled += n;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => break Err(ImageError::Read(e)),
            }
        };
        drop(pieces);
        let side_result = consumer.and_then(|c| c.join().ok());
        outcome.map(|()| (filled, side_result))
    })?;
    if filled as u64 > size {
        return Err(ImageError::Grew { size });
    }
    if filled == 0 {
        return Err(ImageError::Empty);
    }
    // Shorter than fstat said if an unsealed file shrank meanwhile: what was hashed is kept.
    bytes.truncate(filled);
    let sha256 = hex(&sha.finalize());
    Ok((
        Image {
            bytes,
            sha256,
            reservation: None,
        },
        side_result,
    ))
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
    fn the_second_reader_sees_every_byte_in_order_and_the_hash_is_taken_in_the_same_pass() {
        let bytes: Vec<u8> = (0..(READ_CHUNK * 2 + 12_345))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let (path, f) = temp_file(&bytes);
        let (img, seen) = read_image_with(
            &OwnedFd::from(f),
            bytes.len() as u64,
            Some(|pieces: &mut dyn Iterator<Item = &[u8]>| {
                let mut seen = Vec::new();
                let mut count = 0;
                for p in pieces {
                    seen.extend_from_slice(p);
                    count += 1;
                }
                (seen, count)
            }),
        )
        .unwrap();
        std::fs::remove_file(path).unwrap();
        let (seen, pieces) = seen.unwrap();
        assert!(pieces >= 3, "{pieces} pieces");
        assert!(seen == bytes && img.bytes == bytes);
        assert_eq!(img.sha256, accelgate_hw::digest::sha256_hex(&bytes));
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
