//! The filesystem seam: the only module that touches `std::fs`.
//!
//! Every file operation of the storage protocol goes through [`Fs`] and [`FsFile`], so the
//! tests (and the fuzz targets) can put a simulated, crashable filesystem under the engine
//! without touching the protocol code. Production uses [`RealFs`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A directory tree of files, as the storage protocol needs it.
///
/// Directory entries (create, rename, remove) are durable only after [`Fs::sync_dir`] on
/// the parent directory; file contents only after [`FsFile::sync_data`] or
/// [`FsFile::sync_all`].
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
