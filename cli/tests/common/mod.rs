//! What the tool's test files share: a scratch directory.
#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by test crates through `mod common`

use std::path::PathBuf;

/// `ptvp35-CRATE-NAME-PID` under the system's temporary directory (CRATE: the test
/// file), empty when made and removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> std::io::Result<Self> {
        let d = std::env::temp_dir().join(format!(
            "ptvp35-{}-{name}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Dir(d))
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
