//! Read-only handles: open without the lock and without touching any file, show the
//! state recovery would produce ([`plan::plan`]), and follow the owner's later batches
//! and rebuilds with `refresh`.
//!
//! A reader reads the side files, then `P`, then the side files again, and keeps what it
//! read only if both readings agree: within one session of the owner, `P` only grows
//! and the side files stay as they are, so two equal readings bracket a state that the
//! protocol went through (`docs/recovery.md`, "What a reader may assume while the owner
//! writes").

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::bounds::{Key, Value};
use crate::codec::{self, chain::Chain, Record};
use crate::connection::{Core, DbConnection};
use crate::error::{Error, Result};
use crate::fs::{FileMeta, Fs};
use crate::kind::MapKind;
use crate::map::Change;
use crate::plan::{self, Found, Restore};
use crate::progress::Tracking;
use crate::recovery::RecoveryReport;
use crate::storage::{wrap, Paths};

/// How many times a reader reads the files again when they changed while it read them.
pub(crate) const ATTEMPTS: usize = 64;

/// What one [`DbConnection::refresh`] brought in.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-refreshed-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("f.db");
/// use ptvp35::{DbConnection, Options};
///
/// let owner = DbConnection::<String, i64>::open(&path)?;
/// let reader: DbConnection<String, i64> = Options::new().read_only(true).open(&path)?;
/// owner.set("a".into(), 1)?;
/// let r = reader.refresh()?;
/// assert_eq!((r.records, r.reloaded), (1, false));
/// assert_eq!(reader.get("a"), Some(1));
/// # owner.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refreshed {
    /// Records applied: those of the new batches, or after a reload, the keys set or
    /// removed to turn the old state into the new one (a key whose value serializes the
    /// same is left alone, so a rebuild alone applies nothing).
    pub records: u64,
    /// The file was read again from its start: the owner rebuilt it (a new `P` under the
    /// same name), opened, closed or recovered it.
    pub reloaded: bool,
    /// Bytes of `P` the handle shows now (what the count and the batch checksums vouch
    /// for).
    pub valid_len: u64,
}

/// The state of a read-only handle: what it read, and how to go on from there.
#[derive(Debug)]
pub(crate) struct Follower {
    fs: Arc<dyn Fs>,
    threads: usize,
    view: Mutex<View>,
}

#[derive(Debug)]
struct View {
    /// The side files when the view was read.
    side: Side,
    /// Bytes of `P` applied: the end of the last batch vouched for.
    valid: u64,
    /// The chain after `valid`, when the owner's session flag vouches for what follows
    /// (the only state in which `P` may grow by appends alone).
    chain: Option<Chain>,
    /// The length of the file read, where there is no chain to go on with.
    read_len: u64,
}

/// What identifies a state of the six files, except the bytes of `P` and `P.backup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Side {
    pub(crate) main: Option<FileMeta>,
    pub(crate) backup: Option<FileMeta>,
    pub(crate) recover: bool,
    pub(crate) truncate: Option<Vec<u8>>,
    pub(crate) flag: bool,
}

pub(crate) fn side(fs: &dyn Fs, paths: &Paths) -> Result<Side> {
    let exists = |p: &Path| wrap("stat", p, fs.exists(p));
    Ok(Side {
        main: wrap("stat", &paths.main, fs.meta(&paths.main))?,
        backup: wrap("stat", &paths.backup, fs.meta(&paths.backup))?,
        recover: exists(&paths.recover)?,
        truncate: wrap("read", &paths.truncate, fs.read(&paths.truncate))?,
        flag: exists(&paths.truncate_flag)?,
    })
}

impl Side {
    /// Whether `P.backup` and `P` are one file (a rename cut after it linked the target).
    pub(crate) fn backup_is_main(&self) -> bool {
        self.main.is_some() && self.main.map(|m| m.id) == self.backup.map(|m| m.id)
    }

    /// Whether recovery would read `P.backup`: `P.recover` vouches for it, and it is not
    /// `P` itself.
    pub(crate) fn reads_backup(&self) -> bool {
        self.recover && self.backup.is_some() && !self.backup_is_main()
    }

    /// What recovery's plan takes, from these side files and the contents read.
    pub(crate) fn found<D>(&self, main: Option<D>, backup_data: Option<D>) -> Found<D> {
        Found {
            main,
            main_links: self.main.map_or(0, |m| m.links),
            backup: self.backup.is_some(),
            backup_data,
            backup_is_main: self.backup_is_main(),
            recover: self.recover,
            truncate: self.truncate.clone(),
            flag: self.flag,
        }
    }

    /// Whether a view read under `self` still stands under `other`. `P.backup` counts only
    /// while `P.recover` vouches for it: a rebuild writing it changes nothing a reader
    /// shows until then.
    fn same(&self, other: &Side) -> bool {
        self.main == other.main
            && self.recover == other.recover
            && self.truncate == other.truncate
            && self.flag == other.flag
            && (!self.recover || self.backup == other.backup)
    }
}

pub(crate) fn changing(paths: &Paths) -> Error {
    Error::io(
        "read",
        &paths.main,
        io::Error::other("the database's files kept changing while they were read"),
    )
}

/// Gathers [`Found`] with reads only, between two equal readings of the side files.
pub(crate) fn gather(fs: &dyn Fs, paths: &Paths) -> Result<(Side, Found)> {
    for _ in 0..ATTEMPTS {
        let before = side(fs, paths)?;
        let main = wrap("read", &paths.main, fs.read(&paths.main))?;
        let backup_data = if before.reads_backup() {
            wrap("read", &paths.backup, fs.read(&paths.backup))?
        } else {
            None
        };
        let after = side(fs, paths)?;
        if before != after || main.is_some() != before.main.is_some() {
            continue;
        }
        let found = before.found(main, backup_data);
        return Ok((before, found));
    }
    Err(changing(paths))
}

/// The bytes of the database as recovery would leave them, and the view to go on from.
fn read_view(fs: &dyn Fs, paths: &Paths) -> Result<(Vec<u8>, View, RecoveryReport)> {
    let (side, mut found) = gather(fs, paths)?;
    if found.main.is_none() && found.backup_data.is_none() && !found.recover {
        return Err(Error::NotFound {
            path: paths.main.clone(),
        });
    }
    let plan = plan::plan(paths, &mut found)?;
    let data = plan.data(&found);
    let read_len = data.len() as u64;
    // The chain the plan reached, to go on from its end (only with the owner's flag).
    let chain = plan.chain.clone();
    let mut data = match plan.restore {
        Restore::Rename => found.backup_data.take().unwrap_or_default(),
        _ => found.main.take().unwrap_or_default(),
    };
    data.truncate(plan.valid);
    let view = View {
        side,
        valid: plan.valid as u64,
        chain,
        read_len,
    };
    Ok((data, view, plan.report))
}

/// Opens the database at `path` read-only (see [`crate::Options::read_only`]).
pub(crate) fn open<K: Key, V: Value, M: MapKind<K, V>>(
    fs: Arc<dyn Fs>,
    path: &Path,
    threads: usize,
) -> Result<DbConnection<K, V, M>> {
    let paths = Paths::resolve(&*fs, path)?;
    let (data, view, report) = read_view(&*fs, &paths)?;
    let (map, records) = crate::load::load::<K, V, M::Table>(&data, &paths.main, threads)?;
    // No writer: the receiver is dropped, and every write is refused before it is sent.
    let (tx, _) = crossbeam_channel::unbounded();
    let tracking = Arc::new(Tracking::new(1, 1, data.len() as u64, records));
    Ok(DbConnection {
        shared: Arc::new(Core {
            map,
            tx,
            tracking,
            copy_piece: crate::connection::COPY_PIECE,
        }),
        writer: parking_lot::Mutex::new(None),
        writer_state: None,
        paths,
        report,
        transact_attempts: 1,
        fs: Arc::clone(&fs),
        follower: Some(Follower {
            fs,
            threads,
            view: Mutex::new(view),
        }),
    })
}

fn same_json<V: Value>(a: &V, b: &V) -> bool {
    matches!((serde_json::to_vec(a), serde_json::to_vec(b)), (Ok(x), Ok(y)) if x == y)
}

/// Decodes every line of `data` (whole batches) into changes for the map.
fn decode_all<K: Key, V: Value>(
    data: &[u8],
    base: u64,
    paths: &Paths,
) -> Result<Vec<(K, Option<V>)>> {
    let mut changes = Vec::new();
    for line in codec::lines(data, 0) {
        match codec::decode::<K, V>(line.bytes) {
            Ok(Some(Record::Set(k, v))) => changes.push((k, Some(v))),
            Ok(Some(Record::Remove(k))) => changes.push((k, None)),
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: paths.main.clone(),
                    line: 0,
                    offset: base + line.offset as u64,
                    reason,
                })
            }
        }
    }
    Ok(changes)
}

impl<K: Key, V: Value, M: MapKind<K, V>> DbConnection<K, V, M> {
    /// Refuses a write on a read-only handle.
    pub(crate) fn writable(&self) -> Result<()> {
        match self.follower {
            Some(_) => Err(Error::ReadOnly {
                path: self.paths.main.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Brings a [read-only](crate::Options::read_only) handle up to date with the files:
    /// applies the whole batches the owner appended since the last read (each batch at
    /// once, so a transaction is never seen in part), or, when the owner rebuilt the
    /// file, opened, closed or recovered it, reads it again from the start and applies
    /// the difference, in one step too.
    ///
    /// Blocks while the new bytes (or, on a reload, the whole file) are read and parsed;
    /// readers of the handle go on meanwhile and see the old state until the new one is
    /// applied. Takes no lock on the files and changes none. On a read-write handle,
    /// which is always current, it does nothing and returns [`Refreshed::default`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a file cannot be read or no longer exists, or the files kept
    /// changing while they were read; [`Error::Corrupt`] if a vouched-for line does not
    /// decode; [`Error::BadSideFile`] or [`Error::Unsupported`] as
    /// [`Options::open`](crate::Options::open). The handle keeps its last state.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-refresh-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("f.db");
    /// use ptvp35::{DbConnection, Options};
    ///
    /// let owner = DbConnection::<String, i64>::open(&path)?;
    /// let reader: DbConnection<String, i64> = Options::new().read_only(true).open(&path)?;
    /// owner.set("a".into(), 1)?;
    /// owner.compact()?; // a new `P` under the same name
    /// assert!(reader.refresh()?.reloaded);
    /// assert_eq!(reader.get("a"), Some(1));
    /// # owner.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn refresh(&self) -> Result<Refreshed> {
        self.refresh_with(|_, _| {})
    }

    /// [`refresh`](Self::refresh), calling `on_change(key, new value or None for a
    /// removal)` for each change it applies, in file order, before the map shows them:
    /// the records of the new batches, or after a reload, a removal for each key that is
    /// gone and a set for each key that is new or whose value changed. A change feed (`ptvp35 tail --follow`) is
    /// built on it.
    ///
    /// # Errors
    ///
    /// As [`refresh`](Self::refresh).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-rw-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("f.db");
    /// use ptvp35::{DbConnection, Options};
    ///
    /// let owner = DbConnection::<String, i64>::open(&path)?;
    /// let reader: DbConnection<String, i64> = Options::new().read_only(true).open(&path)?;
    /// owner.set("a".into(), 1)?;
    /// owner.remove("a")?;
    /// let mut seen = Vec::new();
    /// reader.refresh_with(|k, v| seen.push((k.clone(), v.copied())))?;
    /// assert_eq!(seen, [("a".to_string(), Some(1)), ("a".to_string(), None)]);
    /// # owner.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn refresh_with(&self, mut on_change: impl FnMut(&K, Option<&V>)) -> Result<Refreshed> {
        let Some(f) = &self.follower else {
            return Ok(Refreshed::default());
        };
        let mut view = f.view.lock();
        let r = match self.append(f, &mut view, &mut on_change)? {
            Some(r) => r,
            None => self.reload(f, &mut view, &mut on_change)?,
        };
        // `stats().file_len` of a read-only handle: the bytes it shows.
        self.shared
            .tracking
            .counters
            .file_len
            .store(r.valid_len, std::sync::atomic::Ordering::Relaxed);
        Ok(r)
    }

    /// Applies what was appended in the same session, or `None` if the file must be
    /// read again.
    fn append(
        &self,
        f: &Follower,
        view: &mut View,
        on_change: &mut dyn FnMut(&K, Option<&V>),
    ) -> Result<Option<Refreshed>> {
        let paths = &self.paths;
        let Some(chain) = view.chain.clone() else {
            // No session flag: the file changes only by a rebuild, a session's start or a
            // recovery; a reload finds out whether anything differs.
            return Ok(None);
        };
        if !side(&*f.fs, paths)?.same(&view.side) {
            return Ok(None);
        }
        let Some(tail) = wrap("read", &paths.main, f.fs.read_from(&paths.main, view.valid))? else {
            return Ok(None);
        };
        if !side(&*f.fs, paths)?.same(&view.side) {
            return Ok(None);
        }
        let (end, chain) = chain.valid_end(&tail, 0);
        let changes = decode_all::<K, V>(&tail[..end], view.valid, paths)?;
        let records = changes.len() as u64;
        self.apply(changes, on_change);
        view.valid += end as u64;
        view.chain = Some(chain);
        Ok(Some(Refreshed {
            records,
            reloaded: false,
            valid_len: view.valid,
        }))
    }

    /// Reads the file again and applies the difference to the map at once.
    fn reload(
        &self,
        f: &Follower,
        view: &mut View,
        on_change: &mut dyn FnMut(&K, Option<&V>),
    ) -> Result<Refreshed> {
        let (data, new, _) = read_view(&*f.fs, &self.paths)?;
        if view.chain.is_none()
            && new.chain.is_none()
            && new.side.same(&view.side)
            && new.read_len == view.read_len
        {
            *view = new;
            return Ok(Refreshed {
                records: 0,
                reloaded: false,
                valid_len: view.valid,
            });
        }
        let (map, _) = crate::load::load::<K, V, M::Table>(&data, &self.paths.main, f.threads)?;
        drop(data);
        let old: HashMap<K, V> = self.shared.map.copy_all().into_iter().collect();
        let mut changes: Vec<(K, Option<V>)> = Vec::new();
        let mut fresh = map.copy_all();
        drop(map);
        let kept: std::collections::HashSet<&K> = fresh.iter().map(|(k, _)| k).collect();
        for k in old.keys() {
            if !kept.contains(k) {
                changes.push((k.clone(), None));
            }
        }
        drop(kept);
        // A key whose value reads the same (as JSON) is no change: a rebuild alone
        // brings in nothing.
        fresh.retain(|(k, v)| old.get(k).is_none_or(|o| !same_json(o, v)));
        changes.extend(fresh.into_iter().map(|(k, v)| (k, Some(v))));
        let records = changes.len() as u64;
        self.apply(changes, on_change);
        *view = new;
        Ok(Refreshed {
            records,
            reloaded: true,
            valid_len: view.valid,
        })
    }

    /// Applies `changes` to the map in one step, and marks them durable (they came from
    /// the file), so that [`commit`](Self::commit) never waits for a writer that is not
    /// there.
    fn apply(&self, changes: Vec<(K, Option<V>)>, on_change: &mut dyn FnMut(&K, Option<&V>)) {
        if changes.is_empty() {
            return;
        }
        for (k, v) in &changes {
            on_change(k, v.as_ref());
        }
        let sh = &self.shared;
        let changes = changes
            .into_iter()
            .map(|(k, v)| Change::new(k, v))
            .collect();
        if let Ok(seq) = sh.map.submit(changes, None, |_, _| Ok(())) {
            sh.tracking.progress.advance(seq);
        }
    }
}
