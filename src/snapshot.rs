//! Reading a database's records as a stream, without loading it: [`Snapshot`] decides the
//! region recovery would keep with the same plan as a read-only open ([`plan::plan`]),
//! holds the file that region lies in open, and reads it line by line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::codec::{self, chain::Chain, chain::Validator, Record};
use crate::error::{Error, Result};
use crate::follow::{changing, side, ATTEMPTS};
use crate::fs::{Fs, FsFile, RealFs};
use crate::plan::{self, Bytes, Restore};
use crate::recovery::RecoveryReport;
use crate::storage::{wrap, Paths};

/// What [`lines`] calls for each line: its offset, its bytes without the `\n`, and
/// whether a `\n` ended it.
type OnLine<'a> = dyn FnMut(usize, &[u8], bool) -> Result<()> + 'a;

/// How many bytes one read takes from the file.
const CHUNK: usize = 1 << 20;

/// A consistent, read-only view of a database's records on disk, read as a stream: memory
/// stays bounded by the longest line, however large the file.
///
/// [`Snapshot::open`] reads the side files and decides, as a
/// [read-only open](crate::Options::read_only) does, which bytes recovery would keep: all
/// of `P` after a clean close; the bytes the count of `P.truncate` and the batch
/// checksums vouch for while an owner has it open or after a crash (never preallocated
/// zeros or a torn tail); or all of `P.backup` when `P.recover` says a rebuild's copy
/// replaces `P`. It keeps that file open, so a rebuild by the owner (a new file renamed
/// over `P`) changes nothing it reads: the bytes it vouched for are never rewritten in
/// place. It takes no lock and changes no file; read permission is enough.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-snapshot-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("s.db");
/// use ptvp35::{DbConnection, Snapshot};
///
/// let db = DbConnection::<String, i64>::open(&path)?;
/// db.set("a".into(), 1)?;
/// db.set("a".into(), 2)?;
/// // While the owner has it open: only what its batches vouch for.
/// let mut snap = Snapshot::open(&path)?;
/// let mut last = None;
/// snap.for_each::<String, serde::de::IgnoredAny>(|e| last = Some((e.key, e.offset, e.len)))?;
/// let (key, offset, len) = last.expect("two records");
/// let e = snap.read_entry::<String, i64>(offset, len)?;
/// assert_eq!((key.as_str(), e.value), ("a", Some(2)));
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub struct Snapshot {
    paths: Paths,
    source: PathBuf,
    file: Option<Box<dyn FsFile>>,
    valid: u64,
    report: RecoveryReport,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("source", &self.source)
            .field("valid", &self.valid)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

/// One record that a [`Snapshot`] read: where its line is, its key, and its value (`None`
/// for a removal).
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-entry-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("e.db");
/// std::fs::write(&path, "{\"key\":\"a\",\"value\":1}\n{\"key\":\"a\"}\n")?;
/// let mut seen = Vec::new();
/// ptvp35::Snapshot::open(&path)?.for_each::<String, i64>(|e| seen.push((e.offset, e.value)))?;
/// assert_eq!(seen, [(0, Some(1)), (22, None)]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry<K, V> {
    /// Byte offset of the line in the file read ([`Snapshot::source`]).
    pub offset: u64,
    /// Length of the line in bytes, its `\n` included.
    pub len: u64,
    /// The record's key.
    pub key: K,
    /// The value it sets, or `None` for a removal.
    pub value: Option<V>,
}

/// The bytes of one file, read through an open handle when asked for.
#[derive(Debug, Default)]
struct FileBytes {
    file: Option<Box<dyn FsFile>>,
    path: PathBuf,
    len: usize,
}

impl Bytes for FileBytes {
    fn size(&self) -> usize {
        self.len
    }

    fn pieces(&mut self, range: Range<usize>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let Some(file) = self.file.as_deref_mut() else {
            return Ok(());
        };
        let mut buf = vec![0u8; CHUNK.min(range.len())];
        let mut at = range.start;
        while at < range.end {
            let want = (range.end - at).min(buf.len());
            let n = read_at(file, &self.path, at, &mut buf[..want])?;
            if n == 0 {
                return Err(shrunk(&self.path));
            }
            f(&buf[..n]);
            at += n;
        }
        Ok(())
    }

    fn valid_end(&mut self, chain: Chain, from: usize) -> Result<(usize, Chain)> {
        let mut v = Validator::new(chain, from);
        if let Some(file) = self.file.as_deref_mut() {
            lines(
                file,
                &self.path,
                from..self.len,
                &mut |offset, line, complete| {
                    if complete {
                        v.line(offset, line);
                    }
                    Ok(())
                },
            )?;
        }
        Ok(v.finish())
    }
}

fn read_at(file: &mut dyn FsFile, path: &Path, at: usize, buf: &mut [u8]) -> Result<usize> {
    loop {
        match file.read_at(at as u64, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return wrap("read", path, r),
        }
    }
}

fn shrunk(path: &Path) -> Error {
    Error::io(
        "read",
        path,
        std::io::Error::other("the file became shorter while it was read"),
    )
}

/// Calls `f(offset, line, complete)` for each line of the bytes of `file` in `range`:
/// `line` without its `\n`, and `complete` false for bytes after the last `\n`. Holds one
/// chunk and the line being read, never more.
fn lines(
    file: &mut dyn FsFile,
    path: &Path,
    range: Range<usize>,
    f: &mut OnLine<'_>,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = range.start; // the offset of `buf[0]` in the file
    let mut scanned = 0; // bytes of `buf` known to hold no `\n`
    let mut read_to = range.start;
    let mut end = range.end;
    loop {
        if read_to < end {
            let old = buf.len();
            buf.resize(old + CHUNK.min(end - read_to), 0);
            let n = read_at(file, path, read_to, &mut buf[old..])?;
            buf.truncate(old + n);
            if n == 0 {
                // Shorter than it was: only bytes past what anyone vouched for went.
                end = read_to;
            }
            read_to += n;
        }
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[scanned..]) {
            let stop = scanned + nl;
            f(buf_at + start, &buf[start..stop], true)?;
            start = stop + 1;
            scanned = start;
        }
        buf.drain(..start);
        buf_at += start;
        scanned = buf.len();
        if read_to >= end {
            if !buf.is_empty() {
                f(buf_at, &buf, false)?;
            }
            return Ok(());
        }
    }
}

/// Opens `path` read-only if it names the file `id` still; `Err(())` if it names another
/// (or none): the files changed under the reader.
fn open_same(
    fs: &dyn Fs,
    path: &Path,
    id: Option<(u64, u64)>,
) -> Result<std::result::Result<Option<FileBytes>, ()>> {
    let Some(mut file) = wrap("open", path, fs.open_read(path))? else {
        return Ok(if id.is_none() { Ok(None) } else { Err(()) });
    };
    if Some(wrap("stat", path, file.meta())?.id) != id {
        return Ok(Err(()));
    }
    let len = wrap("stat", path, file.len())?;
    let len = usize::try_from(len).map_err(|_| Error::Unsupported {
        path: path.to_path_buf(),
        reason: "the file is larger than this machine's address space".into(),
    })?;
    Ok(Ok(Some(FileBytes {
        file: Some(file),
        path: path.to_path_buf(),
        len,
    })))
}

impl Snapshot {
    /// Opens the database at `path` for a streamed read of its records, as described on
    /// [`Snapshot`]: decides the region recovery would keep and holds its file open.
    ///
    /// Blocks while it reads the side files and, where the owner's session flag is
    /// present, the bytes after the recorded count (to check the batch checksums); the
    /// records themselves are read by [`for_each`](Self::for_each).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no database at `path`; [`Error::BadSideFile`] or
    /// [`Error::Unsupported`] where an open would refuse the files; [`Error::Io`] if a
    /// file cannot be read, or the files kept changing while they were read.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-snapopen-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("o.db");
    /// std::fs::write(&path, "{\"key\":\"a\",\"value\":1}\n")?;
    /// let snap = ptvp35::Snapshot::open(&path)?;
    /// assert_eq!(snap.valid_len(), 22);
    /// assert!(snap.recovery_report().was_clean());
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Snapshot> {
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let paths = Paths::resolve(&*fs, path.as_ref())?;
        Self::open_with(&*fs, paths)
    }

    fn open_with(fs: &dyn Fs, paths: Paths) -> Result<Snapshot> {
        for _ in 0..ATTEMPTS {
            let before = side(fs, &paths)?;
            let Ok(main) = open_same(fs, &paths.main, before.main.map(|m| m.id))? else {
                continue;
            };
            let backup_data = if before.reads_backup() {
                match open_same(fs, &paths.backup, before.backup.map(|m| m.id))? {
                    Ok(b) => b,
                    Err(()) => continue,
                }
            } else {
                None
            };
            let mut found = before.found(main, backup_data);
            if found.main.is_none() && found.backup_data.is_none() && !found.recover {
                return Err(Error::NotFound {
                    path: paths.main.clone(),
                });
            }
            let planned = plan::plan(&paths, &mut found);
            if side(fs, &paths)? != before {
                continue;
            }
            let plan = planned?;
            let source = match plan.restore {
                Restore::Rename => found.backup_data.take(),
                _ => found.main.take(),
            }
            .unwrap_or_default();
            return Ok(Snapshot {
                source: if source.file.is_some() {
                    source.path
                } else {
                    paths.main.clone()
                },
                paths,
                file: source.file,
                valid: plan.valid as u64,
                report: plan.report,
            });
        }
        Err(changing(&paths))
    }

    /// How many bytes of [`source`](Self::source) hold the records: the region recovery
    /// would keep.
    #[must_use]
    pub fn valid_len(&self) -> u64 {
        self.valid
    }

    /// The file the records are read from: the main file, or its `.backup` while
    /// `.recover` says that copy replaces it (recovery has not run yet).
    #[must_use]
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// What recovery would do to the files as they were read: the report
    /// [`DbConnection::recovery_report`](crate::DbConnection::recovery_report) of an open
    /// would give.
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Calls `f` with each record of the region, in file order, decoded as `K` and `V`
    /// (use [`serde::de::IgnoredAny`] for a part you do not need: it still checks the
    /// JSON). Later records of a key supersede earlier ones, and a removal ends the key,
    /// as an open applies them. Blank lines are skipped.
    ///
    /// Blocks while the region is read, one chunk at a time; holds one chunk and one line.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`], naming the main file, the line and its offset, at the first
    /// line that does not decode (as an open would fail); [`Error::Io`] if a read fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-foreach-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("f.db");
    /// std::fs::write(&path, "{\"key\":1,\"value\":\"x\"}\n{\"key\":2,\"value\":\"y\"}\n")?;
    /// let mut keys = Vec::new();
    /// ptvp35::Snapshot::open(&path)?.for_each::<u32, serde::de::IgnoredAny>(|e| keys.push(e.key))?;
    /// assert_eq!(keys, [1, 2]);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn for_each<K, V>(&mut self, mut f: impl FnMut(Entry<K, V>)) -> Result<()>
    where
        K: DeserializeOwned,
        V: DeserializeOwned,
    {
        let Some(file) = self.file.as_deref_mut() else {
            return Ok(());
        };
        let main = &self.paths.main;
        let valid = usize::try_from(self.valid).unwrap_or(usize::MAX);
        let mut line_no = 0u64;
        lines(
            file,
            &self.source,
            0..valid,
            &mut |offset, line, complete| {
                line_no += 1;
                let corrupt = |reason: String| Error::Corrupt {
                    path: main.clone(),
                    line: line_no,
                    offset: offset as u64,
                    reason,
                };
                if !complete {
                    return Err(corrupt(
                        "the last line has no newline (a torn write that no recorded crash \
                     explains)"
                            .into(),
                    ));
                }
                let len = line.len() as u64 + 1;
                match codec::decode::<K, V>(line).map_err(corrupt)? {
                    Some(Record::Set(key, value)) => f(Entry {
                        offset: offset as u64,
                        len,
                        key,
                        value: Some(value),
                    }),
                    Some(Record::Remove(key)) => f(Entry {
                        offset: offset as u64,
                        len,
                        key,
                        value: None,
                    }),
                    None => {}
                }
                Ok(())
            },
        )
    }

    /// Reads the record whose line starts at `offset` and is `len` bytes long (its `\n`
    /// included), as [`for_each`](Self::for_each) reported it: a second pass that
    /// fetches only the records it needs.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the bytes there are not one record line (line 0: the line's
    /// number is not known here); [`Error::Io`] if the read fails or the range lies
    /// outside the region.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-readentry-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("r.db");
    /// std::fs::write(&path, "{\"key\":1,\"value\":\"x\"}\n{\"key\":2,\"value\":\"y\"}\n")?;
    /// let mut snap = ptvp35::Snapshot::open(&path)?;
    /// let e = snap.read_entry::<u32, String>(22, 22)?;
    /// assert_eq!((e.key, e.value.as_deref()), (2, Some("y")));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_entry<K, V>(&mut self, offset: u64, len: u64) -> Result<Entry<K, V>>
    where
        K: DeserializeOwned,
        V: DeserializeOwned,
    {
        let outside = || {
            Error::io(
                "read",
                &self.source,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{len} bytes at offset {offset} lie outside the {} valid bytes",
                        self.valid
                    ),
                ),
            )
        };
        let end = offset.checked_add(len).ok_or_else(outside)?;
        if len == 0 || end > self.valid {
            return Err(outside());
        }
        let (Some(file), Ok(n), Ok(at)) = (
            self.file.as_deref_mut(),
            usize::try_from(len),
            usize::try_from(offset),
        ) else {
            return Err(outside());
        };
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n {
            let got = read_at(file, &self.source, at + done, &mut buf[done..])?;
            if got == 0 {
                return Err(shrunk(&self.source));
            }
            done += got;
        }
        let corrupt = |reason: String| Error::Corrupt {
            path: self.paths.main.clone(),
            line: 0,
            offset,
            reason,
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Err(corrupt("not a whole line".into()));
        };
        match codec::decode::<K, V>(line).map_err(corrupt)? {
            Some(Record::Set(key, value)) => Ok(Entry {
                offset,
                len,
                key,
                value: Some(value),
            }),
            Some(Record::Remove(key)) => Ok(Entry {
                offset,
                len,
                key,
                value: None,
            }),
            None => Err(corrupt("a blank line, not a record".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::Dir;

    #[test]
    fn lines_cross_chunks_and_long_lines_come_whole() -> anyhow::Result<()> {
        let d = Dir::new("snap-lines")?;
        let p = d.0.join("l");
        let mut data = Vec::new();
        let long = "x".repeat(3 * CHUNK + 17);
        for i in 0..40_000 {
            data.extend_from_slice(format!("line {i}\n").as_bytes());
            if i == 20_000 {
                data.extend_from_slice(long.as_bytes());
                data.push(b'\n');
            }
        }
        data.extend_from_slice(b"tail");
        std::fs::write(&p, &data)?;
        let mut file = RealFs.open_read(&p)?.expect("exists");
        let mut got = Vec::new();
        lines(&mut *file, &p, 0..data.len(), &mut |off, line, complete| {
            got.push((off, line.to_vec(), complete));
            Ok(())
        })?;
        let want: Vec<_> = codec::lines(&data, 0)
            .map(|l| (l.offset, l.bytes.to_vec(), l.complete))
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        Ok(())
    }
}
