//! File helpers: atomic writes of user data (files, folders, safetensors streamed from the
//! device) and mapped reads.

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

/// Writes a folder atomically: `fill` writes its files into a temporary folder beside
/// `path` (`.NAME.tmp`), which is then renamed to `path` (replacing a folder of that name).
/// If `fill` fails — a full disk, say — the temporary folder is removed and nothing at
/// `path` or beside it changes, so a run's earlier checkpoint folders stay as they were.
pub fn write_atomic_dir<E: From<Error>>(path: &Path, fill: impl FnOnce(&Path) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::Io { path: path.display().to_string(), msg: "not a folder path".into() })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        fill(&tmp)?;
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| io_error(path, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| E::from(io_error(path, e)))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), msg: e.to_string() }
}


/// One tensor of a file written by [`write_safetensors`]: name, dtype and shape.
pub type SafetensorsEntry = (String, safetensors::Dtype, Vec<usize>);

/// Writes a safetensors file atomically with the tensors' bytes streamed, so that a model's
/// worth of weights need not be held in memory: the header (`entries` in order, their data
/// offsets, `metadata`), then `data` writes every entry's bytes in the same order. Writing
/// more or fewer bytes than the entries take is an error, and leaves `path` as it was.
pub fn write_safetensors<E: From<Error>>(path: &Path, entries: &[SafetensorsEntry], metadata: &[(String, String)], data: impl FnOnce(&mut dyn Write) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>().into());
    }
    let mut total = 0u64;
    for (name, dtype, shape) in entries {
        let bytes = (shape.iter().product::<usize>() * dtype.bitsize()).div_ceil(8) as u64;
        let dtype = serde_json::to_value(dtype).map_err(|e| Error::Io { path: path.display().to_string(), msg: e.to_string() })?;
        header.insert(name.clone(), serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [total, total + bytes] }));
        total += bytes;
    }
    let mut head = serde_json::to_vec(&header).expect("a JSON map");
    // the data starts 8-byte aligned, as safetensors writes it
    head.resize(head.len().next_multiple_of(8), b' ');
    write_atomic_with(path, |w| {
        w.write_all(&(head.len() as u64).to_le_bytes()).and_then(|_| w.write_all(&head)).map_err(|e| io_error(path, e))?;
        let mut counted = Counted { inner: w, bytes: 0 };
        data(&mut counted)?;
        if counted.bytes != total {
            return Err(Error::Io { path: path.display().to_string(), msg: format!("{} bytes of tensor data written, the header lists {total}", counted.bytes) }.into());
        }
        Ok(())
    })
}

/// A writer that counts what passes through.
struct Counted<'w> {
    inner: &'w mut dyn Write,
    bytes: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A file mapped into memory, read-only (large checkpoints are paged in as they are read
/// instead of copied whole into memory).
pub fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    // SAFETY: the map is read-only; a file changed by another process while mapped is the
    // documented caveat of every mmap reader (the safetensors loaders' too)
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_folder_write_leaves_everything_as_it_was() {
        let d = std::env::temp_dir().join(format!("t2v-io-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let ckpt = d.join("step-1");
        write_atomic_dir(&ckpt, |tmp| write_atomic(&tmp.join("a"), b"first")).unwrap();
        assert_eq!(std::fs::read(ckpt.join("a")).unwrap(), b"first");
        // a failure halfway (one file written, then an error): the old folder stays, no
        // temporary folder is left
        let e = write_atomic_dir(&ckpt, |tmp| {
            write_atomic(&tmp.join("a"), b"second")?;
            Err(Error::Io { path: "b".into(), msg: "No space left on device".into() })
        })
        .unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert_eq!(std::fs::read(ckpt.join("a")).unwrap(), b"first");
        let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["step-1"]);
        // a successful rewrite replaces the whole folder
        write_atomic_dir(&ckpt, |tmp| write_atomic(&tmp.join("b"), b"new")).unwrap();
        assert!(!ckpt.join("a").exists() && std::fs::read(ckpt.join("b")).unwrap() == b"new");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
