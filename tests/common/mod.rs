//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by test crates through `mod common`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> std::io::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ptvp35-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names of the files in the directory, sorted.
    pub fn files(&self) -> std::io::Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies every file of a live database (`P` and its side files) into `to`: the image a
/// power cut would leave if every synced byte survived and nothing else was written.
pub fn crash_image(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = from.parent().unwrap_or(Path::new("."));
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n == name || n.starts_with(&format!("{name}.")) {
            let target = to.with_file_name(
                n.replacen(
                    &name,
                    &to.file_name()
                        .map(|x| x.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    1,
                ),
            );
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// The 16-byte little-endian count that `P.truncate` holds.
pub fn count_bytes(n: u64) -> [u8; 16] {
    u128::from(n).to_le_bytes()
}

/// Runs `f` on another thread and fails if it does not finish within `secs` seconds, so
/// that a test of a hang fails instead of hanging.
pub fn within<T: Send + 'static>(
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .map_err(|_| anyhow::anyhow!("hung for {secs} seconds"))
}

mod map;
pub use map::Kind;

/// A database with this build's map.
pub type TestDb<K, V> = ptvp35::DbConnection<K, V, Kind>;

/// The full name of the test `name` of the calling test file, as `--exact` wants it: the
/// ordered-map build loads the file as module `suite`, so its tests are `suite::NAME`.
pub fn test_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_, inner)) => format!("{inner}::{name}"),
        None => name.to_owned(),
    }
}

/// The real file system, calling a hook with the file's path before every file sync (to
/// note which thread syncs, or to fail or panic there).
pub struct SyncHookFs {
    on_sync: std::sync::Arc<dyn Fn(&Path) + Send + Sync>,
}

impl SyncHookFs {
    pub fn new(on_sync: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        SyncHookFs {
            on_sync: std::sync::Arc::new(on_sync),
        }
    }
}

impl std::fmt::Debug for SyncHookFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHookFs")
    }
}

struct HookedFile {
    file: Box<dyn ptvp35::FsFile>,
    path: PathBuf,
    on_sync: std::sync::Arc<dyn Fn(&Path) + Send + Sync>,
}

impl std::fmt::Debug for HookedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookedFile({})", self.path.display())
    }
}

impl ptvp35::FsFile for HookedFile {
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read_at(at, buf)
    }
    fn write_at(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_at(at, data)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&mut self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        (self.on_sync)(&self.path);
        self.file.sync_data()
    }
    fn meta(&mut self) -> std::io::Result<ptvp35::FileMeta> {
        self.file.meta()
    }
    fn set_owner_and_mode(&mut self, like: &ptvp35::FileMeta) -> std::io::Result<()> {
        self.file.set_owner_and_mode(like)
    }
    fn try_lock(&mut self) -> std::io::Result<bool> {
        self.file.try_lock()
    }
}

impl ptvp35::Fs for SyncHookFs {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn ptvp35::FsFile>> {
        Ok(Box::new(HookedFile {
            file: ptvp35::RealFs.open(path, create)?,
            path: path.to_path_buf(),
            on_sync: std::sync::Arc::clone(&self.on_sync),
        }))
    }
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        ptvp35::RealFs.read(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        ptvp35::RealFs.exists(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        ptvp35::RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        ptvp35::RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        ptvp35::RealFs.sync_dir(dir)
    }
    fn meta(&self, path: &Path) -> std::io::Result<Option<ptvp35::FileMeta>> {
        ptvp35::RealFs.meta(path)
    }
    fn resolve(&self, path: &Path) -> std::io::Result<PathBuf> {
        ptvp35::RealFs.resolve(path)
    }
    fn salt(&self) -> u64 {
        ptvp35::RealFs.salt()
    }
}
