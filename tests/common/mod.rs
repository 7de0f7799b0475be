//! Support shared by the integration tests.
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A fresh folder `t2v-{prefix}-{name}-{pid}` under the system's temp folder, removed with
/// everything in it when dropped — also when the test panics, since a test run leaves
/// gigabytes of checkpoints otherwise (CI's disk filled up). Set `T2V_KEEP_TEST_DIRS=1` to
/// keep them for a look after a failure.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(prefix: &str, name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("t2v-{prefix}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

/// Removes `t2v-{prefix}-{name}-{pid}` folders that earlier test processes left behind
/// (shared fixtures live as long as their process and are never dropped), where that
/// process has ended (Linux: no /proc/{pid}).
#[allow(dead_code)] // each test binary compiles this module; only some have shared fixtures
pub fn sweep_stale(prefix: &str, name: &str) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let stem = format!("t2v-{prefix}-{name}-");
    let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in dir.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let pid = file.strip_prefix(&stem).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("T2V_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
