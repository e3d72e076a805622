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
/// keeps its register contents, like hardware that stayed powered).
pub(crate) fn ensure_bar(bar: &Path, size: u64) -> Result<(), SimError> {
    if std::fs::metadata(bar).is_ok_and(|meta| meta.is_file() && meta.len() == size) {
        return Ok(());
    }
    let file = std::fs::File::create(bar).map_err(SimError::io(bar))?;
    file.set_len(size).map_err(SimError::io(bar))
}
