//! Small file operations the simulated kernel needs: atomic attribute updates, idempotent
//! links and register pokes into BAR files.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::SimError;

/// Replaces `path` with `contents` via a temp file and rename, so a reader never sees a
/// half-written value and inotify watchers see no close-after-write on `path` itself.
pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<(), SimError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&temp, contents).map_err(SimError::io(&temp))?;
    std::fs::rename(&temp, path).map_err(SimError::io(path))
}

/// Reads an attribute without its trailing newline; None if it does not exist.
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim_end_matches('\n').to_string())
}

/// Makes `link` a symlink to `target`, replacing whatever is there.
pub(crate) fn ensure_symlink(target: &Path, link: &Path) -> Result<(), SimError> {
    if std::fs::read_link(link).is_ok_and(|existing| existing == target) {
        return Ok(());
    }
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(SimError::io(link)(err)),
    }
    std::os::unix::fs::symlink(target, link).map_err(SimError::io(link))
}

/// Removes a file or symlink; absent is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), SimError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(SimError::io(path)(err)),
        _ => Ok(()),
    }
}

/// Stores a little-endian register value into a BAR file (what the device would do).
pub(crate) fn poke(bar: &Path, offset: u64, bytes: &[u8]) -> Result<(), SimError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(bar)
        .map_err(SimError::io(bar))?;
    file.write_all_at(bytes, offset).map_err(SimError::io(bar))
}

/// Creates a sparse BAR file of `size` bytes unless one of that size exists (a reused tree
/// keeps its register contents, like hardware that stayed powered), then stores the
/// read-only ID `registers` (u32, little endian) through the same descriptor.
pub(crate) fn ensure_bar(bar: &Path, size: u64, registers: &[(u64, u32)]) -> Result<(), SimError> {
    // A BAR a driver claimed when the host went down is a link to /dev/null (`Tree::bind`): the host
    // comes up without that driver, so the BAR is a plain file again.
    if std::fs::symlink_metadata(bar).is_ok_and(|m| !m.file_type().is_file()) {
        std::fs::remove_file(bar).map_err(SimError::io(bar))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(bar)
        .map_err(SimError::io(bar))?;
    let len = file.metadata().map_err(SimError::io(bar))?.len();
    if len != size {
        // A BAR of the wrong size is not this device's: start from zeroed registers.
        file.set_len(0).map_err(SimError::io(bar))?;
        file.set_len(size).map_err(SimError::io(bar))?;
    }
    for &(offset, value) in registers {
        file.write_all_at(&value.to_le_bytes(), offset)
            .map_err(SimError::io(bar))?;
    }
    Ok(())
}

/// Creates `path` with `contents` unless it exists. Used while building, when no reader is
/// running yet; a torn write from a crash is repaired by the next build.
pub(crate) fn create_if_missing(path: &Path, contents: &str) -> Result<(), SimError> {
    use std::io::Write;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut file) => file
            .write_all(contents.as_bytes())
            .map_err(SimError::io(path)),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(SimError::io(path)(err)),
    }
}
