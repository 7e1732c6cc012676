//! The six-path protocol: names of the side files, the truncate marker, the session start
//! and clean close, and the rebuild through `P.backup` and `P.recover`.
//!
//! `docs/recovery.md` gives the order of every write, sync and directory sync below and
//! why each crash point between them is safe; the step numbers in the comments are the
//! ones used there.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::chain::Chain;
use crate::error::{Error, Result};
use crate::fs::{FileMeta, Fs, FsFile};

/// The six paths of a database whose main file is `P`, and the directory that holds them
/// (whose syncs make their names durable).
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

impl Paths {
    /// The paths of the database that `path` names now, for its whole life: absolute
    /// (a later change of the working directory does not move it) and with symbolic
    /// links followed (a rebuild replaces the file a link leads to, not the link).
    pub(crate) fn resolve(fs: &dyn Fs, path: &Path) -> Result<Self> {
        Ok(Paths::new(&wrap("resolve", path, fs.resolve(path))?))
    }
}

/// Wraps an I/O error with `op` and `path`.
pub(crate) fn wrap<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(op, path, e))
}

pub(crate) fn sync_dir(fs: &dyn Fs, paths: &Paths) -> Result<()> {
    wrap("fsync directory", &paths.dir, fs.sync_dir(&paths.dir))
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
    let mut f = wrap("create", path, fs.open(path, true))?;
    wrap("truncate", path, f.set_len(0))?;
    wrap("write", path, f.write_at(0, data))?;
    wrap("fsync", path, f.sync_data())
}

/// What `P.truncate` holds: how many bytes of `P` are valid, and the salt of the checksum
/// chain that starts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    pub(crate) valid: u64,
    /// 0 in a count written before salts existed (see [`crate::codec::chain`]).
    pub(crate) salt: u64,
}

impl Count {
    /// The 16 bytes of `P.truncate`: the count, then the salt, each little-endian. A
    /// count without a salt reads as the 16-byte little-endian number the Python
    /// library writes.
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        (u128::from(self.salt) << 64 | u128::from(self.valid)).to_le_bytes()
    }
}

/// Parses the 16 bytes of `P.truncate`.
pub(crate) fn parse_count(path: &Path, bytes: &[u8]) -> Result<Count> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| Error::BadSideFile {
        path: path.to_path_buf(),
        reason: format!("holds {} bytes, expected 16", bytes.len()),
    })?;
    let n = u128::from_le_bytes(arr);
    #[allow(clippy::cast_possible_truncation)] // the halves of a u128, on purpose
    Ok(Count {
        valid: n as u64,
        salt: (n >> 64) as u64,
    })
}

/// Opens (with `create`, creating) the file at `path` and takes its lock, and makes sure
/// `path` still names the locked file: an opener that raced with a rebuild may have
/// opened the old file just before `P.backup` was renamed over it, and locked it just
/// after its owner let it go. Returns `None` if another owner holds the lock.
pub(crate) fn open_locked(
    fs: &dyn Fs,
    path: &Path,
    create: bool,
) -> Result<Option<Box<dyn FsFile>>> {
    for _ in 0..8 {
        let mut file = wrap("open", path, fs.open(path, create))?;
        if !wrap("lock", path, file.try_lock())? {
            return Ok(None);
        }
        let locked = wrap("stat", path, file.meta())?.id;
        if wrap("stat", path, fs.meta(path))?.map(|m| m.id) == Some(locked) {
            return Ok(Some(file));
        }
        // Renamed over (or removed) between the open and the lock: try the file the
        // path names now, which its owner holds locked if it is live.
    }
    // The name keeps changing under us: an owner is rebuilding it again and again.
    Ok(None)
}

/// Session start, once recovery has left `P` (of `len` bytes) whole: make what the open
/// shows durable, then make `P.truncate_flag` vouch for a count of exactly `len` bytes,
/// with a new salt, before the first append. Returns the session's checksum chain.
///
/// (O2) fsync `P`: recovery may have kept batches that were written but never synced, or
/// another program may have written `P` without syncing it, and a reader may act on what
/// the open shows. (S0) Remove a flag recovery kept, and fsync the directory: the flag's
/// absence must be durable before `P.truncate` is rewritten (a close whose last directory
/// sync failed may have left that absence unsynced). (S1) Write and fsync `P.truncate`,
/// (S2) fsync the directory, (S3) create `P.truncate_flag`, (S4) fsync the directory.
pub(crate) fn start_session(
    fs: &dyn Fs,
    paths: &Paths,
    main: &mut dyn FsFile,
    len: u64,
    has_flag: bool,
) -> Result<Chain> {
    wrap("fsync", &paths.main, main.sync_data())?;
    if has_flag {
        remove_if_exists(fs, &paths.truncate_flag)?;
    }
    sync_dir(fs, paths)?;
    let salt = fs.salt().max(1);
    write_file(fs, &paths.truncate, &Count { valid: len, salt }.to_bytes())?;
    sync_dir(fs, paths)?;
    write_file(fs, &paths.truncate_flag, b"")?;
    sync_dir(fs, paths)?;
    Ok(Chain::new(salt))
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
}

/// The new main file of a rebuild that got as far as its rename: it is `P` now and holds
/// the database's lock, whether or not the steps after the rename succeeded.
#[derive(Debug)]
pub(crate) struct Installed {
    pub(crate) file: Box<dyn FsFile>,
    /// The length and checksum chain of the new `P`, or why the install failed after
    /// the rename.
    pub(crate) result: Result<(u64, Chain)>,
}

impl BackupWriter {
    /// (R1) Creates or empties `P.backup`, takes its lock, so that the file that becomes
    /// `P` is already locked when it is renamed into place, and gives it the owner, group
    /// and permissions of `P` (`like`), so that a rebuild keeps the file's identity.
    /// (R4) Then syncs the directory: the backup's entry is durable long before the flag
    /// ([`install`](Self::install)) vouches for it, and that sync is off the writer thread.
    pub(crate) fn create(fs: Arc<dyn Fs>, paths: Paths, like: &FileMeta) -> Result<Self> {
        let Some(mut file) = open_locked(&*fs, &paths.backup, true)? else {
            return Err(Error::Locked {
                path: paths.backup.clone(),
            });
        };
        wrap("truncate", &paths.backup, file.set_len(0))?;
        wrap(
            "set owner and mode of",
            &paths.backup,
            file.set_owner_and_mode(like),
        )?;
        sync_dir(&*fs, &paths)?;
        Ok(BackupWriter {
            fs,
            paths,
            file,
            len: 0,
        })
    }

    /// Syncs what was written so far (the rebuild thread does this, so that the
    /// writer's own sync in [`install`](Self::install) has little left to flush).
    pub(crate) fn sync(&mut self) -> Result<()> {
        wrap("fsync", &self.paths.backup, self.file.sync_data())
    }

    /// Removes the unfinished backup (nothing vouches for it yet, so `P` stays as is).
    pub(crate) fn discard(self) -> Result<()> {
        drop(self.file);
        remove_if_exists(&*self.fs, &self.paths.backup)?;
        sync_dir(&*self.fs, &self.paths)
    }

    /// (R2) Appends whole record lines.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        wrap(
            "write",
            &self.paths.backup,
            self.file.write_at(self.len, data),
        )?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Steps R3' and R5–R9: makes the backup durable, flags it, renames it over `P`,
    /// records the new count with a new salt and drops the flag.
    ///
    /// (R3') fsync `P.backup` (its entry is durable since [`create`](Self::create), R4,
    /// so the flag below never vouches for a missing file); (R5) create `P.recover`,
    /// empty (only its name counts, so it is not synced itself), (R6) fsync the
    /// directory: from here the backup is the authoritative copy; (R7) rename `P.backup`
    /// over `P`, fsync the directory; (R8) overwrite `P.truncate` with the new length and
    /// a new salt and fsync it (safe while `P.recover` exists, which makes recovery
    /// ignore it); (R9) remove `P.recover`, fsync the directory.
    ///
    /// # Errors
    ///
    /// The failure of a step before the rename: `P` is untouched and still the caller's,
    /// and the files are left as they are (a `P.recover` may vouch for the backup
    /// already, so it is not removed). Once the rename is done, the new `P` comes back in
    /// [`Installed`] whatever happens after, so that its lock is never let go.
    pub(crate) fn install(mut self) -> Result<Installed> {
        self.flag()?;
        let (fs, paths) = (&*self.fs, &self.paths);
        wrap(
            "rename",
            &paths.backup,
            fs.rename(&paths.backup, &paths.main),
        )?;
        let result = (|| {
            sync_dir(fs, paths)?;
            let salt = fs.salt().max(1);
            let count = Count {
                valid: self.len,
                salt,
            };
            write_file(fs, &paths.truncate, &count.to_bytes())?;
            wrap("remove", &paths.recover, fs.remove(&paths.recover))?;
            sync_dir(fs, paths)?;
            Ok((self.len, Chain::new(salt)))
        })();
        Ok(Installed {
            file: self.file,
            result,
        })
    }

    /// Steps R3', R5 and R6.
    fn flag(&mut self) -> Result<()> {
        let (fs, paths) = (&*self.fs, &self.paths);
        wrap("fsync", &paths.backup, self.file.sync_data())?;
        drop(wrap(
            "create",
            &paths.recover,
            fs.open(&paths.recover, true),
        )?);
        sync_dir(fs, paths)
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
        let legacy = Count { valid: 42, salt: 0 };
        assert_eq!(parse_count(p, &42u128.to_le_bytes()).ok(), Some(legacy));
        let salted = Count { valid: 42, salt: 9 };
        assert_eq!(parse_count(p, &salted.to_bytes()).ok(), Some(salted));
        assert!(matches!(
            parse_count(p, &[1, 2, 3]),
            Err(Error::BadSideFile { .. })
        ));
    }
}
