//! A scratch directory for the crate's unit tests, removed when dropped.

use std::path::PathBuf;

/// `ptvp35-NAME-PID` under the system's temporary directory, empty when made.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> std::io::Result<Self> {
        let d = std::env::temp_dir().join(format!("ptvp35-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Dir(d))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
