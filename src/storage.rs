//! The six-path protocol: names of the side files, the truncate marker, the session start
//! and clean close, and the rebuild through `P.backup` and `P.recover`.
//!
//! `docs/recovery.md` gives the order of every write, sync and directory sync below and
//! why each crash point between them is safe; the step numbers in the comments are the
//! ones used there.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};

/// The six paths of a database whose main file is `P`.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) main: PathBuf,
    pub(crate) backup: PathBuf,
    pub(crate) recover: PathBuf,
    pub(crate) truncate: PathBuf,
    pub(crate) truncate_flag: PathBuf,
    pub(crate) error: PathBuf,
    pub(crate) dir: PathBuf,
}

impl Paths {
    pub(crate) fn new(main: &Path) -> Self {
        let with = |suffix: &str| {
            let mut s = main.as_os_str().to_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        let dir = match main.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Paths {
            main: main.to_path_buf(),
            backup: with(".backup"),
            recover: with(".recover"),
            truncate: with(".truncate"),
            truncate_flag: with(".truncate_flag"),
            error: with(".error"),
            dir,
        }
    }
}

/// Runs `f`, wrapping an I/O error with `op` and `path`.
pub(crate) fn io<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(op, path, e))
}

pub(crate) fn sync_dir(fs: &dyn Fs, paths: &Paths) -> Result<()> {
    io("fsync directory", &paths.dir, fs.sync_dir(&paths.dir))
}

/// Removes `path` if it exists; returns whether it did.
pub(crate) fn remove_if_exists(fs: &dyn Fs, path: &Path) -> Result<bool> {
    match fs.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Creates (or empties) `path` and makes `data` its durable content. The directory entry
/// is not synced here.
pub(crate) fn write_file(fs: &dyn Fs, path: &Path, data: &[u8]) -> Result<()> {
    let mut f = io("create", path, fs.open(path, true))?;
    io("truncate", path, f.set_len(0))?;
    io("write", path, f.write_at(0, data))?;
    io("fsync", path, f.sync_data())
}

/// Parses the 16-byte little-endian count of `P.truncate`.
pub(crate) fn parse_count(path: &Path, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| Error::BadSideFile {
        path: path.to_path_buf(),
        reason: format!("holds {} bytes, expected 16", bytes.len()),
    })?;
    u64::try_from(u128::from_le_bytes(arr)).map_err(|_| Error::BadSideFile {
        path: path.to_path_buf(),
        reason: "count does not fit in 64 bits".into(),
    })
}

/// Session start: make sure `P.truncate_flag` vouches for a count in `P.truncate` no larger
/// than `P`'s durable length before the first append.
///
/// With the flag already there (recovery kept it, and its count was checked), nothing is
/// written: the count stays a valid lower bound, and every batch after it is
/// self-validating. Otherwise: (S1) write and fsync `P.truncate`, (S2) fsync the directory,
/// (S3) create `P.truncate_flag`, (S4) fsync the directory.
pub(crate) fn start_session(fs: &dyn Fs, paths: &Paths, len: u64, has_flag: bool) -> Result<()> {
    if has_flag {
        return Ok(());
    }
    write_file(fs, &paths.truncate, &u128::from(len).to_le_bytes())?;
    sync_dir(fs, paths)?;
    write_file(fs, &paths.truncate_flag, b"")?;
    sync_dir(fs, paths)
}

/// Clean close, after the last batch is durable: (C1) remove `P.truncate_flag`, (C2) fsync
/// the directory, (C3) remove `P.truncate`, (C4) fsync the directory. The flag goes first:
/// a flag without its count would stop the next open.
pub(crate) fn end_session(fs: &dyn Fs, paths: &Paths) -> Result<()> {
    remove_if_exists(fs, &paths.truncate_flag)?;
    sync_dir(fs, paths)?;
    remove_if_exists(fs, &paths.truncate)?;
    sync_dir(fs, paths)
}

/// Streams a full copy of the live data into `P.backup`. Owns what it needs, so a
/// rebuild thread can fill it while the writer goes on appending to `P`.
#[derive(Debug)]
pub(crate) struct BackupWriter {
    fs: Arc<dyn Fs>,
    paths: Paths,
    file: Box<dyn FsFile>,
    len: u64,
    hasher: Hasher,
}

/// XXH3 state over every byte of a file so far.
#[derive(Clone)]
pub(crate) struct Hasher(pub(crate) Xxh3);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hasher({:016x})", self.0.digest())
    }
}

impl Hasher {
    pub(crate) fn new() -> Self {
        Hasher(Xxh3::new())
    }
}

impl BackupWriter {
    /// (R1) Creates or empties `P.backup` and takes its lock, so that the file that
    /// becomes `P` is already locked when it is renamed into place.
    pub(crate) fn create(fs: Arc<dyn Fs>, paths: Paths) -> Result<Self> {
        let mut file = io("create", &paths.backup, fs.open(&paths.backup, true))?;
        if !io("lock", &paths.backup, file.try_lock())? {
            return Err(Error::Locked {
                path: paths.backup.clone(),
            });
        }
        io("truncate", &paths.backup, file.set_len(0))?;
        Ok(BackupWriter {
            fs,
            paths,
            file,
            len: 0,
            hasher: Hasher::new(),
        })
    }

    /// Syncs what was written so far (the rebuild thread does this, so that the
    /// writer's own sync in [`install`](Self::install) has little left to flush).
    pub(crate) fn sync(&mut self) -> Result<()> {
        io("fsync", &self.paths.backup, self.file.sync_data())
    }

    /// Removes the unfinished backup (nothing vouches for it yet, so `P` stays as is).
    pub(crate) fn discard(self) -> Result<()> {
        drop(self.file);
        remove_if_exists(&*self.fs, &self.paths.backup)?;
        sync_dir(&*self.fs, &self.paths)
    }

    /// (R2) Appends whole record lines.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        io(
            "write",
            &self.paths.backup,
            self.file.write_at(self.len, data),
        )?;
        self.hasher.0.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Steps R3–R8: makes the backup durable, flags it, renames it over `P`, records the new
    /// count and drops the flag. Returns the new main file, its length and hash state.
    ///
    /// (R3) fsync `P.backup`; (R4) fsync the directory, so the flag below never vouches for
    /// a missing file; (R5) create `P.recover`, (R6) fsync the directory: from here the
    /// backup is the authoritative copy; (R7) rename `P.backup` over `P`, fsync the
    /// directory; (R8) overwrite `P.truncate` with the new length and fsync it (safe while
    /// `P.recover` exists, which makes recovery ignore it); (R9) remove `P.recover`, fsync
    /// the directory.
    pub(crate) fn install(mut self) -> Result<(Box<dyn FsFile>, u64, Hasher)> {
        let (fs, paths) = (&*self.fs, &self.paths);
        io("fsync", &paths.backup, self.file.sync_data())?;
        sync_dir(fs, paths)?;
        write_file(fs, &paths.recover, b"")?;
        sync_dir(fs, paths)?;
        io(
            "rename",
            &paths.backup,
            fs.rename(&paths.backup, &paths.main),
        )?;
        sync_dir(fs, paths)?;
        write_file(fs, &paths.truncate, &u128::from(self.len).to_le_bytes())?;
        io("remove", &paths.recover, fs.remove(&paths.recover))?;
        sync_dir(fs, paths)?;
        Ok((self.file, self.len, self.hasher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_file_names() {
        let p = Paths::new(Path::new("dir/data.db"));
        assert_eq!(p.truncate_flag, Path::new("dir/data.db.truncate_flag"));
        assert_eq!(p.error, Path::new("dir/data.db.error"));
        assert_eq!(p.dir, Path::new("dir"));
        assert_eq!(Paths::new(Path::new("x.db")).dir, Path::new("."));
    }

    #[test]
    fn count_must_be_sixteen_bytes() {
        let p = Path::new("x.truncate");
        assert_eq!(parse_count(p, &42u128.to_le_bytes()).ok(), Some(42));
        assert!(matches!(
            parse_count(p, &[1, 2, 3]),
            Err(Error::BadSideFile { .. })
        ));
        assert!(parse_count(p, &u128::MAX.to_le_bytes()).is_err());
    }
}
