//! The filesystem seam: the only module that touches `std::fs`.
//!
//! Every file operation of the storage protocol goes through [`Fs`] and [`FsFile`], so the
//! tests (and the fuzz targets) can put a simulated, crashable filesystem under the engine
//! without touching the protocol code. Production uses [`RealFs`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A directory tree of files, as the storage protocol needs it.
///
/// Directory entries (create, rename, remove) are durable only after [`Fs::sync_dir`] on
/// the parent directory; file contents only after [`FsFile::sync_data`].
pub trait Fs: Send + Sync + fmt::Debug {
    /// Opens `path` for reading and writing. With `create`, a missing file is created
    /// (the new entry is durable only after [`Fs::sync_dir`]); without it, a missing file
    /// is an error of kind [`io::ErrorKind::NotFound`].
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>>;

    /// Reads the whole file at `path`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// What the filesystem reports (a directory in the file's place is an error).
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;

    /// Opens `path` for reading only (read permission is enough), or `None` if there is
    /// no file. The file is read with [`FsFile::read_at`] and may be locked with
    /// [`FsFile::try_lock`]; writing through it fails. The default opens it with
    /// [`Fs::open`] without `create`.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn FsFile>>> {
        match self.open(path, false) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads the file at `path` from byte `offset` to its end (nothing if it is shorter),
    /// or `None` if there is none. Opens the file for reading only. The default reads the
    /// whole file with [`Fs::read`] and drops the bytes before `offset`.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn read_from(&self, path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.read(path)?.map(|mut data| {
            let at = usize::try_from(offset).map_or(data.len(), |o| o.min(data.len()));
            data.drain(..at);
            data
        }))
    }

    /// Whether a file exists at `path`.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn exists(&self, path: &Path) -> io::Result<bool>;

    /// Renames `from` to `to`, replacing `to` atomically if it exists.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes the file at `path`.
    ///
    /// # Errors
    ///
    /// What the filesystem reports; [`io::ErrorKind::NotFound`] if there is none.
    fn remove(&self, path: &Path) -> io::Result<()>;

    /// Makes every earlier create, rename and remove of entries in `dir` durable.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// The identity and ownership of the file at `path` (symbolic links followed), or
    /// `None` if there is none.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn meta(&self, path: &Path) -> io::Result<Option<FileMeta>>;

    /// The absolute path of the file that `path` names now: relative to the current
    /// directory, with symbolic links (of the file itself, and of the directories above
    /// it) followed. The file itself need not exist; its directory must.
    ///
    /// # Errors
    ///
    /// What the filesystem reports; a chain of more than 40 links is an error.
    fn resolve(&self, path: &Path) -> io::Result<PathBuf>;

    /// A fresh 64-bit salt, never 0: the seed of a new file incarnation's checksum chain.
    /// Random on a real system; the simulated filesystem makes it reproducible.
    fn salt(&self) -> u64;
}

/// What identifies a file, and what a rebuild keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Device and inode number: two paths name one file when these are equal.
    pub id: (u64, u64),
    /// The number of hard links (names) the file has.
    pub links: u64,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owning user.
    pub uid: u32,
    /// Owning group.
    pub gid: u32,
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is never asked
pub trait FsFile: Send + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes all of `data` at `offset`, extending the file if needed.
    ///
    /// # Errors
    ///
    /// What the filesystem reports; after an error, any prefix of `data` may have been
    /// written.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Cuts or extends (with zeros) the file to `len` bytes.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// The file's current length.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn len(&mut self) -> io::Result<u64>;

    /// Makes the file's data (and its length) durable: `fdatasync`.
    ///
    /// # Errors
    ///
    /// What the filesystem reports. After an error the data's state on disk is unknown,
    /// and a later successful sync does not make it known (the kernel may have dropped
    /// the dirty pages): callers must not retry and trust.
    fn sync_data(&mut self) -> io::Result<()>;

    /// The file's identity and ownership.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn meta(&mut self) -> io::Result<FileMeta>;

    /// Gives the file the owner, group and permission bits of `like`, as far as the
    /// process may: a change of owner that the system refuses for lack of privilege is
    /// skipped (the group is still tried), any other failure is an error.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn set_owner_and_mode(&mut self, like: &FileMeta) -> io::Result<()>;

    /// Takes an exclusive advisory lock without waiting. Returns `false` if another open
    /// file (in this process or another) holds it. The lock ends when the file is closed.
    ///
    /// # Errors
    ///
    /// What the filesystem reports.
    fn try_lock(&mut self) -> io::Result<bool>;
}

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
}

impl Fs for RealFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(RealFile { file }))
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match File::open(path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_read(&self, path: &Path) -> io::Result<Option<Box<dyn FsFile>>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Box::new(RealFile { file }))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_from(&self, path: &Path, offset: u64) -> io::Result<Option<Vec<u8>>> {
        match File::open(path) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                f.read_to_end(&mut buf)?;
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn meta(&self, path: &Path) -> io::Result<Option<FileMeta>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(file_meta(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        let file = follow_links(std::path::absolute(path)?)?;
        let name = file
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
        let dir = file.parent().unwrap_or(Path::new("/"));
        Ok(std::fs::canonicalize(dir)?.join(name))
    }

    fn salt(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // The standard library seeds each `RandomState` from the system's randomness.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish().max(1)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        // Other systems cannot open a directory for syncing; their directory entries
        // are made durable by the filesystem itself (NTFS journals metadata).
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }
}

#[cfg(unix)]
fn file_meta(m: &std::fs::Metadata) -> FileMeta {
    use std::os::unix::fs::MetadataExt;
    FileMeta {
        id: (m.dev(), m.ino()),
        links: m.nlink(),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
    }
}

// Other systems have no inode numbers or owners to keep: every file looks alike, and
// the identity checks that compare them pass.
#[cfg(not(unix))]
fn file_meta(_: &std::fs::Metadata) -> FileMeta {
    FileMeta {
        id: (0, 0),
        links: 1,
        mode: 0,
        uid: 0,
        gid: 0,
    }
}

/// Follows `path` while it is a symbolic link; returns the first path that is not one
/// (or does not exist).
fn follow_links(mut path: PathBuf) -> io::Result<PathBuf> {
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("more than 40 levels of symbolic links"))
}

impl FsFile for RealFile {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.seek(SeekFrom::Start(offset))?;
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)
        }
        #[cfg(not(unix))]
        {
            self.file.seek(SeekFrom::Start(offset))?;
            self.file.write_all(data)
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_data()
    }

    fn meta(&mut self) -> io::Result<FileMeta> {
        Ok(file_meta(&self.file.metadata()?))
    }

    fn set_owner_and_mode(&mut self, like: &FileMeta) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let now = self.meta()?;
            // Owner first: a change of owner may clear the set-id bits set below.
            if (now.uid, now.gid) != (like.uid, like.gid) {
                let denied = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
                match std::os::unix::fs::fchown(&self.file, Some(like.uid), Some(like.gid)) {
                    Err(e) if denied(&e) => {
                        match std::os::unix::fs::fchown(&self.file, None, Some(like.gid)) {
                            Err(e) if !denied(&e) => return Err(e),
                            _ => {}
                        }
                    }
                    r => r?,
                }
            }
            if self.meta()?.mode != like.mode {
                self.file
                    .set_permissions(std::fs::Permissions::from_mode(like.mode))?;
            }
        }
        #[cfg(not(unix))]
        let _ = like;
        Ok(())
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fs_round_trip_and_lock() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("ptvp35-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let p = dir.join("a");
        let fs = RealFs;
        let mut f = fs.open(&p, true)?;
        f.write_at(0, b"hello")?;
        f.write_at(5, b" world")?;
        f.sync_data()?;
        assert_eq!(f.len()?, 11);
        assert_eq!(fs.read(&p)?.as_deref(), Some(&b"hello world"[..]));
        assert!(f.try_lock()?);
        let mut g = fs.open(&p, false)?;
        assert!(!g.try_lock()?, "a second open file must not get the lock");
        drop(f);
        assert!(g.try_lock()?, "the lock ends when its file closes");
        fs.rename(&p, &dir.join("b"))?;
        assert!(!fs.exists(&p)?);
        fs.sync_dir(&dir)?;
        fs.remove(&dir.join("b"))?;
        assert_eq!(fs.read(&p)?, None);
        std::fs::remove_dir_all(&dir)
    }
}
