//! Looking inside a database without opening it: [`inspect`] reads the six files and
//! predicts what recovery would do, changing nothing; [`repair`] is the explicit act that
//! moves undecodable lines of the valid region to `P.error`.
//!
//! Both decode every line with the caller's key and value types, so they answer "does
//! this file open as `DbConnection<K, V>`?". For a schema-less look, decode keys as any
//! type that holds the keys in the file, and values as `serde_json::Value`, which reads
//! them as a typed program would (every number and string parsed, the nesting counted
//! against the reader's limit). [`serde::de::IgnoredAny`] is cheaper but checks only that
//! the JSON is well formed: it neither parses numbers nor counts nesting, so a value that
//! no typed program reads back (`1e400`, arrays nested past the limit) passes it.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::codec::{self, Record};
use crate::error::{Error, Result};
use crate::follow;
use crate::fs::{Fs, FsFile, RealFs};
use crate::plan::{self, Found};
use crate::recovery::{self, RecoveryReport};
use crate::storage::{self, wrap, BackupWriter, Paths};

/// How a database's files look: what `ptvp35 check` exits with (0, 1 or 2).
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-health-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("h.db");
/// # ptvp35::DbConnection::<String, i64>::open(&path)?.close()?;
/// use ptvp35::{inspect, Health};
///
/// match inspect::<String, i64>(&path)?.health() {
///     Health::Clean => println!("closed cleanly"),
///     Health::NeedsRecovery => println!("the next open will recover"),
///     Health::Corrupt => println!("run a repair first"),
///     _ => {}
/// }
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The files are exactly as a clean close leaves them (`P`, and maybe `P.error`),
    /// and every line of `P` decodes.
    Clean,
    /// Flag files or leftovers of a crash are present; opening will recover, and will
    /// then succeed.
    NeedsRecovery,
    /// Opening would fail: a line of the valid region does not decode, or a side file is
    /// in a state that no crash explains.
    Corrupt,
}

/// One of the six files of a database, and whether it exists.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-filestate-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("f.db");
/// # ptvp35::DbConnection::<String, i64>::open(&path)?.close()?;
/// let report = ptvp35::inspect::<String, i64>(&path)?;
/// for f in report.files.iter() {
///     if let Some(len) = f.len {
///         println!("{} ({len} bytes)", f.path.display());
///     }
/// }
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileState {
    /// The file's path.
    pub path: PathBuf,
    /// Its length in bytes, or `None` if it does not exist.
    pub len: Option<u64>,
}

/// Something for each of the six files of a database, by name: their paths
/// ([`SixFiles::of`]), or what [`inspect`] found of each ([`Inspection::files`]).
///
/// # Examples
///
/// ```
/// let files = ptvp35::SixFiles::of("data/app.db");
/// assert_eq!(files.backup, std::path::Path::new("data/app.db.backup"));
/// assert_eq!(files.iter().count(), 6);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SixFiles<T> {
    /// `P`, the record stream.
    pub main: T,
    /// `P.backup`, the copy a rebuild writes.
    pub backup: T,
    /// `P.recover`, the flag that vouches for the backup.
    pub recover: T,
    /// `P.truncate`, the count of valid bytes.
    pub truncate: T,
    /// `P.truncate_flag`, the flag that vouches for the count.
    pub truncate_flag: T,
    /// `P.error`, what recovery cut.
    pub error: T,
}

impl SixFiles<PathBuf> {
    /// The six paths of the database whose main file is `main` (as given: not resolved).
    #[must_use]
    pub fn of(main: impl AsRef<Path>) -> Self {
        let p = Paths::new(main.as_ref());
        SixFiles {
            main: p.main,
            backup: p.backup,
            recover: p.recover,
            truncate: p.truncate,
            truncate_flag: p.truncate_flag,
            error: p.error,
        }
    }
}

impl<T> SixFiles<T> {
    /// The six, in the order `P`, `P.backup`, `P.recover`, `P.truncate`,
    /// `P.truncate_flag`, `P.error`.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [
            &self.main,
            &self.backup,
            &self.recover,
            &self.truncate,
            &self.truncate_flag,
            &self.error,
        ]
        .into_iter()
    }
}

/// A line of the valid region that does not decode as a record of the database's types.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-badline-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("b.db");
/// std::fs::write(&path, "{\"key\":\"a\",\"value\":1}\nnot json\n")?;
/// let report = ptvp35::inspect::<String, i64>(&path)?;
/// let bad = &report.bad_lines[0];
/// assert_eq!((bad.line, bad.offset, bad.len), (2, 22, 9));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BadLine {
    /// 1-based line number in `P` (after the recovery that opening would run).
    pub line: u64,
    /// Byte offset of the line's start.
    pub offset: u64,
    /// Length of the line in bytes, its `\n` included.
    pub len: u64,
    /// Why it does not decode.
    pub reason: String,
}

/// What [`inspect`] found: the six files, what recovery would do, and what the valid
/// region of `P` holds.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-insp-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("i.db");
/// let db = ptvp35::DbConnection::<String, i64>::open(&path)?;
/// db.set("a".into(), 1)?;
/// db.set("a".into(), 2)?;
/// db.close()?;
/// let report = ptvp35::inspect::<String, i64>(&path)?;
/// assert_eq!((report.records, report.live_keys, report.dead_records), (2, 1, 1));
/// assert!(report.live_bytes < report.dead_bytes + report.live_bytes);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Inspection {
    /// The six files.
    pub files: SixFiles<FileState>,
    /// The count of valid bytes recorded in `P.truncate`, if that file holds one.
    pub truncate_count: Option<u64>,
    /// What opening would do to the files: the report that
    /// [`DbConnection::recovery_report`](crate::DbConnection::recovery_report) would give.
    pub recovery: RecoveryReport,
    /// Why recovery would refuse to open the files, if it would (a side file in a state
    /// that no crash explains). The counts below then describe `P` as it is.
    pub refused: Option<Error>,
    /// Bytes of `P` that recovery would keep.
    pub valid_len: u64,
    /// Records (lines that decode) in the valid region.
    pub records: u64,
    /// Keys that those records leave set.
    pub live_keys: u64,
    /// Bytes of the records that set the live keys to their current values.
    pub live_bytes: u64,
    /// Records superseded by a later record of the same key, and removals.
    pub dead_records: u64,
    /// Bytes of the dead records (and of blank lines).
    pub dead_bytes: u64,
    /// Lines that do not decode, in file order.
    pub bad_lines: Vec<BadLine>,
}

impl Inspection {
    /// Clean, needs recovery, or corrupt; see [`Health`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-hl-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("h.db");
    /// std::fs::write(&path, "{\"key\": \"a\", \"value\": 1}\n")?; // as Python writes it
    /// assert_eq!(ptvp35::inspect::<String, i64>(&path)?.health(), ptvp35::Health::Clean);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn health(&self) -> Health {
        if self.refused.is_some() || !self.bad_lines.is_empty() {
            return Health::Corrupt;
        }
        let f = &self.files;
        let leftovers = [&f.backup, &f.recover, &f.truncate, &f.truncate_flag]
            .iter()
            .any(|f| f.len.is_some());
        if leftovers || !self.recovery.was_clean() {
            Health::NeedsRecovery
        } else {
            Health::Clean
        }
    }
}

/// What [`repair`] did.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-rr-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("r.db");
/// std::fs::write(&path, "{\"key\":\"a\",\"value\":1}\n")?;
/// let report = ptvp35::repair::<String, i64>(&path)?;
/// assert!(report.moved.is_empty()); // nothing to repair: the file is left as it is
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// What the recovery that ran first did.
    pub recovery: RecoveryReport,
    /// The lines moved to `P.error`, with their numbers and offsets in `P` as it was.
    pub moved: Vec<BadLine>,
    /// Length of `P` after the repair.
    pub kept_bytes: u64,
}

/// Reads the six files of the database whose main file is `path` and reports what they
/// hold and what opening would do, without changing anything.
///
/// Every line of the region that recovery would keep is decoded as a record of `K` and
/// `V`, exactly as [`DbConnection::open`](crate::DbConnection::open) would; unlike the
/// open, a bad line does not stop the inspection but is listed in
/// [`Inspection::bad_lines`]. The database's lock is held while the files are read, so the
/// report describes one state, not a database that is being written.
///
/// Blocks while the files are read; holds them all in memory while it runs.
///
/// # Errors
///
/// [`Error::Locked`] if the database is open (here or in another process);
/// [`Error::NotFound`] if neither `P` nor `P.backup` exists; [`Error::Io`] if a file
/// cannot be read.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-inspect-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("c.db");
/// use ptvp35::{inspect, Health};
///
/// let db = ptvp35::DbConnection::<(String, u32), serde_json::Value>::open(&path)?;
/// db.set(("a".into(), 1), serde_json::json!({"x": [1, 2]}))?;
/// db.close()?;
/// // Schema-less: keys as tuples, values checked as well-formed JSON and dropped.
/// let report = inspect::<(String, u32), serde::de::IgnoredAny>(&path)?;
/// assert_eq!(report.health(), Health::Clean);
/// assert_eq!(report.live_keys, 1);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn inspect<K, V>(path: impl AsRef<Path>) -> Result<Inspection>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    inspect_with::<K, V>(&RealFs, &Paths::resolve(&RealFs, path.as_ref())?)
}

pub(crate) fn inspect_with<K, V>(fs: &dyn Fs, paths: &Paths) -> Result<Inspection>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    let exists = |p: &Path| wrap("stat", p, fs.exists(p));
    let (has_main, has_backup) = (exists(&paths.main)?, exists(&paths.backup)?);
    if !has_main && !has_backup {
        return Err(Error::NotFound {
            path: paths.main.clone(),
        });
    }
    // Held until the end, so that nobody opens the database while it is read.
    let _lock = if has_main { lock(fs, paths)? } else { None };
    let names = SixFiles::of(&paths.main);
    let read = |p: &PathBuf| wrap("read", p, fs.read(p));
    let (main, backup, recover, truncate, flag, error) = (
        read(&names.main)?,
        read(&names.backup)?,
        read(&names.recover)?,
        read(&names.truncate)?,
        read(&names.truncate_flag)?,
        read(&names.error)?,
    );
    let len = |bytes: &Option<Vec<u8>>| bytes.as_ref().map(|b| b.len() as u64);
    let lens = SixFiles {
        main: len(&main),
        backup: len(&backup),
        recover: len(&recover),
        truncate: len(&truncate),
        truncate_flag: len(&flag),
        error: len(&error),
    };

    // The decisions of `recovery::open_and_recover`, taken without acting on them.
    let meta = |p: &Path| wrap("stat", p, fs.meta(p));
    let (main_meta, backup_meta) = (meta(&paths.main)?, meta(&paths.backup)?);
    let backup_is_main =
        main_meta.is_some() && main_meta.map(|m| m.id) == backup_meta.map(|m| m.id);
    let found = Found {
        main_links: main_meta.map_or(0, |m| m.links),
        backup: backup.is_some(),
        backup_data: backup.filter(|_| recover.is_some() && !backup_is_main),
        backup_is_main,
        recover: recover.is_some(),
        flag: flag.is_some(),
        truncate,
        main,
    };
    Ok(inspection::<K, V>(paths, &lens, found))
}

/// Like [`inspect`], but takes no lock: for a database another program has open (where
/// [`inspect`] returns [`Error::Locked`]), or any other.
///
/// It reads the files as a [read-only open](crate::Options::read_only) does: the side
/// files, then `P` (and `P.backup` where `P.recover` vouches for it), then the side files
/// again, and keeps the reading only if both agree, so the report describes one state
/// the owner's writes went through, never half of a rebuild. Changes no file; read
/// permission is enough. The sizes of `P.backup` (while the owner rebuilds) and
/// `P.error` are read beside that state.
///
/// While an owner has the database open, its session's files are there: `P.truncate`
/// and `P.truncate_flag`, maybe preallocated zeros after the data, maybe a batch being
/// written, and during a rebuild `P.backup`. [`Inspection::recovery`] then says what
/// recovery would do if the owner stopped at that instant without closing, and
/// [`Inspection::health`] says [`Health::NeedsRecovery`] for them: only a caller that
/// knows the owner is running (as `ptvp35 check` does, from the lock) can tell an open
/// session from a crash's leftovers.
///
/// Blocks while the files are read; holds `P` in memory while it runs.
///
/// # Errors
///
/// [`Error::NotFound`] if neither `P` nor `P.backup` exists; [`Error::Io`] if a file
/// cannot be read, or the files kept changing while they were read.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-unlocked-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("u.db");
/// use ptvp35::{inspect, inspect_unlocked, DbConnection, Error};
///
/// let db = DbConnection::<String, i64>::open(&path)?;
/// db.set("a".into(), 1)?;
/// assert!(matches!(inspect::<String, i64>(&path), Err(Error::Locked { .. })));
/// let report = inspect_unlocked::<String, i64>(&path)?;
/// assert_eq!((report.live_keys, report.bad_lines.len()), (1, 0));
/// assert!(report.files.truncate_flag.len.is_some()); // the owner's session flag
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn inspect_unlocked<K, V>(path: impl AsRef<Path>) -> Result<Inspection>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    let fs = &RealFs;
    let paths = Paths::resolve(fs, path.as_ref())?;
    let (_, found) = follow::gather(fs, &paths)?;
    if found.main.is_none() && !found.backup {
        return Err(Error::NotFound {
            path: paths.main.clone(),
        });
    }
    let size = |p: &Path| -> Result<Option<u64>> {
        match wrap("open", p, fs.open_read(p))? {
            Some(mut f) => Ok(Some(wrap("stat", p, f.len())?)),
            None => Ok(None),
        }
    };
    let on = |yes: bool, p: &Path| if yes { size(p) } else { Ok(None) };
    let lens = SixFiles {
        main: found.main.as_ref().map(|b| b.len() as u64),
        backup: match &found.backup_data {
            Some(b) => Some(b.len() as u64),
            None => on(found.backup, &paths.backup)?,
        },
        recover: on(found.recover, &paths.recover)?,
        truncate: found.truncate.as_ref().map(|b| b.len() as u64),
        truncate_flag: on(found.flag, &paths.truncate_flag)?,
        error: size(&paths.error)?,
    };
    Ok(inspection::<K, V>(&paths, &lens, found))
}

/// The report on `found`, the files as read (`lens`: their sizes).
fn inspection<K, V>(paths: &Paths, lens: &SixFiles<Option<u64>>, mut found: Found) -> Inspection
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    let names = SixFiles::of(&paths.main);
    let state = |path: &PathBuf, len: Option<u64>| FileState {
        path: path.clone(),
        len,
    };
    let files = SixFiles {
        main: state(&names.main, lens.main),
        backup: state(&names.backup, lens.backup),
        recover: state(&names.recover, lens.recover),
        truncate: state(&names.truncate, lens.truncate),
        truncate_flag: state(&names.truncate_flag, lens.truncate_flag),
        error: state(&names.error, lens.error),
    };
    let truncate_count = found
        .truncate
        .as_deref()
        .and_then(|b| storage::parse_count(&paths.truncate, b).ok())
        .map(|c| c.valid);
    let (report, refused, data) = match plan::plan(paths, &mut found) {
        Ok(plan) => (plan.report.clone(), None, &plan.data(&found)[..plan.valid]),
        Err(e) => {
            let report = RecoveryReport {
                created: found.main.is_none(),
                ..RecoveryReport::default()
            };
            (report, Some(e), found.main.as_deref().unwrap_or_default())
        }
    };
    let mut out = Inspection {
        files,
        truncate_count,
        recovery: report,
        refused,
        valid_len: data.len() as u64,
        records: 0,
        live_keys: 0,
        live_bytes: 0,
        dead_records: 0,
        dead_bytes: 0,
        bad_lines: Vec::new(),
    };
    scan::<K, V>(data, &mut out);
    out
}

/// Takes the database's lock on `P` for the caller's scope, through a handle opened for
/// reading (read permission is enough to take an advisory lock, and to find an owner's),
/// and makes sure `P` still names the locked file; `None` if `P` went away meanwhile.
fn lock(fs: &dyn Fs, paths: &Paths) -> Result<Option<Box<dyn FsFile>>> {
    let p = &paths.main;
    for _ in 0..8 {
        let Some(mut file) = wrap("open", p, fs.open_read(p))? else {
            return Ok(None);
        };
        if !wrap("lock", p, file.try_lock())? {
            return Err(Error::Locked { path: p.clone() });
        }
        let locked = wrap("stat", p, file.meta())?.id;
        if wrap("stat", p, fs.meta(p))?.map(|m| m.id) == Some(locked) {
            return Ok(Some(file));
        }
        // Renamed over between the open and the lock: lock the file the name holds now.
    }
    Err(Error::Locked { path: p.clone() })
}

/// Calls `f(line_number, offset, line)` for every line of `data`; `line` has no `\n`, and
/// `complete` says whether one followed it.
fn for_each_line(data: &[u8], mut f: impl FnMut(u64, usize, &[u8], bool)) {
    for (n, line) in (1u64..).zip(codec::lines(data, 0)) {
        f(n, line.offset, line.bytes, line.complete);
    }
}

/// Why a line is bad, or `None` if it is a record or blank. The last line must end with
/// `\n`, as at open.
fn classify<K: DeserializeOwned, V: DeserializeOwned>(
    line: &[u8],
    complete: bool,
) -> std::result::Result<Option<Record<K, V>>, String> {
    if !complete {
        return Err("the last line has no newline".into());
    }
    codec::decode::<K, V>(line)
}

fn scan<K, V>(data: &[u8], out: &mut Inspection)
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    let mut live: HashMap<K, u64> = HashMap::new();
    let mut good_bytes = 0u64;
    for_each_line(data, |line_no, offset, line, complete| {
        let len = line.len() as u64 + u64::from(complete);
        match classify::<K, V>(line, complete) {
            Ok(rec) => {
                good_bytes += len;
                match rec {
                    Some(Record::Set(k, _)) => {
                        out.records += 1;
                        live.insert(k, len);
                    }
                    Some(Record::Remove(k)) => {
                        out.records += 1;
                        live.remove(&k);
                    }
                    None => {}
                }
            }
            Err(reason) => out.bad_lines.push(BadLine {
                line: line_no,
                offset: offset as u64,
                len,
                reason,
            }),
        }
    });
    out.live_keys = live.len() as u64;
    out.live_bytes = live.values().sum();
    out.dead_records = out.records - out.live_keys;
    out.dead_bytes = good_bytes - out.live_bytes;
}

/// Moves every line of the valid region that does not decode as a record of `K` and `V`
/// to `P.error`, each after a comment line `# ptvp35 repair: line N at byte offset X: why`,
/// and keeps every other line as it is.
///
/// Runs recovery first (as an open would), holding the database's lock throughout. The
/// bad lines are appended to `P.error` and made durable before `P` changes; the repaired
/// copy is then written as a rebuild writes one (`P.backup`, flagged by `P.recover`,
/// renamed over `P`), so a crash at any point leaves either the old or the repaired file,
/// never neither. A crash after `P.error` was written but before the rename leaves the
/// old `P`, and repairing again appends the same lines to `P.error` a second time. When
/// this returns, only `P` and `P.error` remain, and the database opens.
///
/// With no bad line, nothing but the recovery is done. A file in which no line is a
/// record is refused, not emptied.
///
/// # Errors
///
/// [`Error::Locked`] if the database is open; [`Error::BadSideFile`] if recovery refuses
/// the side files (repair does not guess either); [`Error::Corrupt`], naming the file and
/// its first line, if no line of it is a record of `K` and `V` (a file that is not a
/// database, or a database of other types): repair would empty it, so it refuses and
/// changes nothing, not even the recovery; [`Error::NotFound`] if there is no database;
/// [`Error::Io`] if a file operation fails (the
/// files are then in a state the next open or repair recovers from).
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-repair-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("r.db");
/// std::fs::write(&path, "{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"val\n{\"key\":\"c\",\"value\":3}\n")?;
/// assert!(ptvp35::DbConnection::<String, i64>::open(&path).is_err()); // line 2 is corrupt
///
/// let report = ptvp35::repair::<String, i64>(&path)?;
/// assert_eq!(report.moved[0].line, 2);
/// let db = ptvp35::DbConnection::<String, i64>::open(&path)?;
/// assert_eq!((db.get("a"), db.get("c")), (Some(1), Some(3)));
/// # db.close()?;
/// let error_file = std::fs::read_to_string(dir.join("r.db.error"))?;
/// assert!(error_file.contains("{\"key\":\"b\",\"val\n"));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn repair<K, V>(path: impl AsRef<Path>) -> Result<RepairReport>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    repair_on::<K, V>(&(Arc::new(RealFs) as Arc<dyn Fs>), path.as_ref())
}

/// [`repair`] on another filesystem (the test kit's simulated one). Hidden and outside
/// semver, like [`Options::filesystem`](crate::Options::filesystem).
///
/// # Errors
///
/// As [`repair`].
#[doc(hidden)]
pub fn repair_on<K, V>(fs: &Arc<dyn Fs>, path: &Path) -> Result<RepairReport>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    let paths = Paths::resolve(&**fs, path)?;
    repair_with::<K, V>(fs, &paths)
}

pub(crate) fn repair_with<K, V>(fs: &Arc<dyn Fs>, paths: &Paths) -> Result<RepairReport>
where
    K: DeserializeOwned + Eq + Hash,
    V: DeserializeOwned,
{
    if !wrap("stat", &paths.main, fs.exists(&paths.main))?
        && !wrap("stat", &paths.backup, fs.exists(&paths.backup))?
    {
        return Err(Error::NotFound {
            path: paths.main.clone(),
        });
    }
    // A file in which nothing is a record is not a database (a copy of `/etc/passwd`, or
    // a database of other types): moving every line to `P.error` would empty it. Decided
    // on the prediction, before recovery changes anything.
    let plan = inspect_with::<K, V>(&**fs, paths)?;
    if plan.refused.is_none() && plan.records == 0 {
        if let Some(first) = plan.bad_lines.first() {
            return Err(not_a_database(paths, plan.bad_lines.len(), first));
        }
    }
    // Locks `P` (held until `rec.file` drops at the end) and recovers.
    let mut rec = recovery::open_and_recover(&**fs, paths)?;
    let mut moved = Vec::new();
    let mut error_bytes = Vec::new();
    let mut records = 0u64;
    for_each_line(&rec.data, |line_no, offset, line, complete| {
        let decoded = classify::<K, V>(line, complete);
        if let Ok(Some(_)) = decoded {
            records += 1;
        }
        if let Err(reason) = decoded {
            error_bytes.extend_from_slice(
                format!(
                    "# ptvp35 repair: line {line_no} at byte offset {offset}: {}\n",
                    reason.replace('\n', " ")
                )
                .as_bytes(),
            );
            error_bytes.extend_from_slice(line);
            error_bytes.push(b'\n');
            moved.push(BadLine {
                line: line_no,
                offset: offset as u64,
                len: line.len() as u64 + u64::from(complete),
                reason,
            });
        }
    });
    if records == 0 {
        if let Some(first) = moved.first() {
            // The files changed between the prediction and the lock: still not a database.
            return Err(not_a_database(paths, moved.len(), first));
        }
    }
    if moved.is_empty() {
        if rec.has_flag {
            // Every byte of `P` is vouched for now; end the session a crash left open.
            storage::end_session(&**fs, paths)?;
        }
        return Ok(RepairReport {
            recovery: rec.report,
            kept_bytes: rec.data.len() as u64,
            moved,
        });
    }

    // (1) The bad lines are durable in `P.error` before `P` loses them.
    recovery::append_error(&**fs, paths, &error_bytes)?;
    // (2) The kept lines go to `P.backup`, which is flagged and renamed over `P` as in a
    // rebuild (`docs/recovery.md`, R1–R9).
    let like = wrap("stat", &paths.main, rec.file.meta())?;
    let mut backup = BackupWriter::create(Arc::clone(fs), paths.clone(), &like)?;
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut kept = 0u64;
    let mut next_bad = moved.iter().map(|b| b.offset).peekable();
    let mut write_err = None;
    for_each_line(&rec.data, |_, offset, line, _| {
        if next_bad.peek() == Some(&(offset as u64)) {
            next_bad.next();
            return;
        }
        chunk.extend_from_slice(line);
        chunk.push(b'\n');
        if chunk.len() >= 1 << 20 && write_err.is_none() {
            kept += chunk.len() as u64;
            write_err = backup.write(&chunk).err();
            chunk.clear();
        }
    });
    if let Some(e) = write_err {
        return Err(e);
    }
    kept += chunk.len() as u64;
    backup.write(&chunk)?;
    let installed = backup.install()?;
    installed.result?;
    // (3) `install` left a count in `P.truncate` (and the flag, if a crash had left one):
    // the repaired `P` is whole, so end the session as a clean close does.
    storage::end_session(&**fs, paths)?;
    drop(installed.file);
    drop(rec.file);
    Ok(RepairReport {
        recovery: rec.report,
        moved,
        kept_bytes: kept,
    })
}

/// Why [`repair`] refuses a file in which no line is a record.
fn not_a_database(paths: &Paths, bad: usize, first: &BadLine) -> Error {
    Error::Corrupt {
        path: paths.main.clone(),
        line: first.line,
        offset: first.offset,
        reason: format!(
            "this is not a database: none of its lines is a record of the database's key \
             and value types ({bad} do not decode, the first because: {}); repair refuses \
             to move every line to the error file",
            first.reason.replace('\n', " ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DbConnection;
    use anyhow::Result;

    use crate::test_dir::Dir;

    fn side(p: &Path, suffix: &str) -> PathBuf {
        let mut s = p.as_os_str().to_os_string();
        s.push(suffix);
        s.into()
    }

    /// Predicts the recovery of the files at `p`, then opens them and compares the
    /// prediction with what the open did and found.
    fn predicted_matches_open(p: &Path) -> Result<Inspection> {
        let before = inspect::<u32, String>(p)?;
        let db = DbConnection::<u32, String>::open(p)?;
        assert_eq!(&before.recovery, db.recovery_report(), "{}", p.display());
        assert_eq!(before.live_keys, db.len() as u64);
        db.close()?;
        let after = inspect::<u32, String>(p)?;
        assert_eq!(after.health(), Health::Clean);
        assert_eq!(after.live_keys, before.live_keys);
        assert_eq!(after.valid_len, before.valid_len);
        Ok(before)
    }

    fn image(dir: &Path, name: &str, lines: u32) -> Result<PathBuf> {
        let p = dir.join(name);
        let db = crate::Options::new()
            .preallocate(false)
            .open::<u32, String>(&p)?;
        for i in 0..lines {
            db.set(i % 7, format!("v{i}"))?;
        }
        db.close()?;
        Ok(p)
    }

    #[test]
    fn inspection_predicts_every_recovery_branch() -> Result<()> {
        let d = Dir::new("check-branches")?;
        // Clean.
        let p = image(&d.0, "clean.db", 20)?;
        let r = predicted_matches_open(&p)?;
        assert_eq!(r.health(), Health::Clean);
        assert_eq!((r.records, r.live_keys, r.dead_records), (20, 7, 13));

        // A torn tail under the flag: cut from the count on, into `P.error`.
        let p = image(&d.0, "torn.db", 5)?;
        let len = std::fs::metadata(&p)?.len();
        std::fs::write(side(&p, ".truncate"), u128::from(len).to_le_bytes())?;
        std::fs::write(side(&p, ".truncate_flag"), b"")?;
        let mut data = std::fs::read(&p)?;
        data.extend_from_slice(b"{\"key\":9,\"val");
        data.extend_from_slice(&[0; 10]);
        std::fs::write(&p, &data)?;
        let r = predicted_matches_open(&p)?;
        assert_eq!(r.health(), Health::NeedsRecovery);
        assert_eq!(r.recovery.cut, Some(crate::Cut::new(len, 13)));
        assert_eq!(r.recovery.padding, 10);
        assert_eq!(r.truncate_count, Some(len));

        // A flagged backup: restored.
        let p = image(&d.0, "restore.db", 3)?;
        let b = image(&d.0, "other.db", 9)?;
        std::fs::rename(&b, side(&p, ".backup"))?;
        std::fs::write(side(&p, ".recover"), b"")?;
        let r = predicted_matches_open(&p)?;
        assert!(r.recovery.restored_from_backup);
        assert_eq!(r.records, 9);

        // An unflagged backup: discarded.
        let p = image(&d.0, "stale.db", 3)?;
        std::fs::write(side(&p, ".backup"), b"{\"key\":1,\"value\":\"x\"}\n")?;
        let r = predicted_matches_open(&p)?;
        assert!(r.recovery.discarded_stale_backup);
        assert_eq!(r.records, 3);
        Ok(())
    }

    #[test]
    fn a_flag_without_its_count_is_refused_like_open() -> Result<()> {
        let d = Dir::new("check-refused")?;
        let p = image(&d.0, "r.db", 2)?;
        std::fs::write(side(&p, ".truncate_flag"), b"")?;
        let r = inspect::<u32, String>(&p)?;
        assert!(matches!(r.refused, Some(Error::BadSideFile { .. })));
        assert_eq!(r.health(), Health::Corrupt);
        assert!(matches!(
            DbConnection::<u32, String>::open(&p),
            Err(Error::BadSideFile { .. })
        ));
        assert!(matches!(
            repair::<u32, String>(&p),
            Err(Error::BadSideFile { .. })
        ));
        Ok(())
    }

    #[test]
    fn inspect_changes_nothing_and_respects_the_lock() -> Result<()> {
        let d = Dir::new("check-lock")?;
        let p = image(&d.0, "l.db", 4)?;
        let mut data = std::fs::read(&p)?;
        data.extend_from_slice(b"garbage\n");
        std::fs::write(&p, &data)?;
        let r = inspect::<u32, String>(&p)?;
        assert_eq!(r.bad_lines.len(), 1);
        assert_eq!(r.bad_lines[0].line, 5);
        assert_eq!(std::fs::read(&p)?, data);
        assert!(!side(&p, ".error").exists());

        let q = image(&d.0, "open.db", 1)?;
        let db = DbConnection::<u32, String>::open(&q)?;
        assert!(matches!(
            inspect::<u32, String>(&q),
            Err(Error::Locked { .. })
        ));
        assert!(matches!(
            repair::<u32, String>(&q),
            Err(Error::Locked { .. })
        ));
        db.close()?;
        assert!(matches!(
            inspect::<u32, String>(d.0.join("missing.db")),
            Err(Error::NotFound { .. })
        ));
        assert!(!d.0.join("missing.db").exists());
        Ok(())
    }

    /// Issue 9, item 17: repair moved every line of a file that is not a database to
    /// `P.error` and left it empty.
    #[test]
    fn repair_refuses_a_file_in_which_nothing_is_a_record() -> Result<()> {
        let d = Dir::new("check-notadb")?;
        let p = d.0.join("passwd");
        let text = "root:x:0:0:root:/root:/bin/bash\n\ndaemon:x:1:1::/usr/sbin:/bin/sh\n";
        std::fs::write(&p, text)?;
        // A crash image around it too: recovery must not run either.
        std::fs::write(side(&p, ".truncate"), 32u128.to_le_bytes())?;
        std::fs::write(side(&p, ".truncate_flag"), b"")?;
        let e = repair::<String, serde_json::Value>(&p).expect_err("refused");
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                Error::Corrupt {
                    line: 1,
                    offset: 0,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("not a database"), "{msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert_eq!(std::fs::read_to_string(&p)?, text);
        assert!(!side(&p, ".error").exists());
        assert!(side(&p, ".truncate_flag").exists());

        // A database read with other types: every line is a stranger, so also refused.
        let q = image(&d.0, "typed.db", 5)?;
        let before = std::fs::read(&q)?;
        let e = repair::<String, bool>(&q).expect_err("refused");
        assert!(e.to_string().contains("not a database"), "{e}");
        assert_eq!(std::fs::read(&q)?, before);
        // One record among strangers is a database: the strangers move.
        let mut data = before.clone();
        data.extend_from_slice(b"not json\n");
        std::fs::write(&q, &data)?;
        assert_eq!(repair::<u32, String>(&q)?.moved.len(), 1);
        assert_eq!(std::fs::read(&q)?, before);
        Ok(())
    }

    #[test]
    fn repair_moves_bad_lines_and_keeps_the_rest_in_order() -> Result<()> {
        let d = Dir::new("check-repair")?;
        let p = d.0.join("r.db");
        let text = "{\"key\":1,\"value\":\"a\"}\n{\"key\":2,\"value\":NaN}\n\
                    {\"key\":1,\"value\":\"b\"}\n\u{0}\u{0}\n{\"key\":3}\n{\"key\":4,\"value\":\"t\"}";
        std::fs::write(&p, text)?;
        let r = repair::<u32, String>(&p)?;
        let lines: Vec<u64> = r.moved.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        let kept = std::fs::read_to_string(&p)?;
        assert_eq!(
            kept,
            "{\"key\":1,\"value\":\"a\"}\n{\"key\":1,\"value\":\"b\"}\n{\"key\":3}\n"
        );
        assert_eq!(r.kept_bytes, kept.len() as u64);
        let err = std::fs::read(side(&p, ".error"))?;
        let err = String::from_utf8_lossy(&err);
        assert!(err.contains("# ptvp35 repair: line 2 at byte offset 22: "));
        assert!(err.contains("{\"key\":2,\"value\":NaN}\n"));
        assert!(err.contains("line 6 at byte offset"));
        for s in [".backup", ".recover", ".truncate", ".truncate_flag"] {
            assert!(!side(&p, s).exists(), "{s} left behind");
        }
        let db = DbConnection::<u32, String>::open(&p)?;
        assert_eq!(db.get(&1).as_deref(), Some("b"));
        assert_eq!(db.len(), 1);
        db.close()?;
        assert_eq!(inspect::<u32, String>(&p)?.health(), Health::Clean);
        Ok(())
    }
}
