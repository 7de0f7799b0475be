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
