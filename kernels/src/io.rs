//! File helpers shared by everything that writes user data.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed and
/// synced, then renamed over `path`. A crash or a full disk leaves the old file intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(|e| io_error(path, e)))
}

/// [`write_atomic`] for contents streamed by `write` (through a buffered writer, so large
/// files need not be held in memory); on an error of `write` the temporary file is removed
/// and `path` left as it was.
pub fn write_atomic_with<E: From<Error>>(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::Io { path: path.display().to_string(), msg: "not a file path".into() })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(&tmp).map_err(|e| io_error(path, e))?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| io_error(path, e.into_error()))?;
        f.sync_all().map_err(|e| io_error(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| E::from(io_error(path, e)))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), msg: e.to_string() }
}
