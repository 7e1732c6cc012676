//! Every store measured, and the limits, behind one small interface.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use anyhow::{Context, Result};
use redb::ReadableDatabase;

use crate::data::{sync_dir, Record, Val};

/// One thread's access to a store.
pub trait Handle {
    /// Set one key; returns once durable (as durable as the store makes it).
    fn set(&mut self, k: String, v: Val) -> Result<()>;
    /// Set several keys atomically; returns once durable.
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()>;
    /// Point read: the value as the store hands it out. `true` if found.
    #[allow(clippy::ptr_arg)]
    fn get(&mut self, k: &String) -> Result<bool>;
    /// Point read without an owned copy, where the store has one.
    #[allow(clippy::ptr_arg)]
    fn get_ref(&mut self, k: &String) -> Result<bool> {
        self.get(k)
    }
}

/// A store opened in a directory of its own.
pub trait Store: Sync {
    fn handle(&self) -> Result<Box<dyn Handle + '_>>;
    /// Load all `items` in one batch, durable when it returns.
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()>;
    /// Device syncs done so far, where the store counts them.
    fn syncs(&self) -> Option<u64> {
        None
    }
    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Ptvp35,
    /// ptvp35's bulk API, `DbConnection::extend` (chunked transactions).
    Ptvp35Extend,
    /// ptvp35 with every commit queued to its writer thread, as before a lone committer
    /// wrote its own commits (`Options::caller_writes(false)`).
    Ptvp35Queued,
    Redb,
    Sled,
    Sqlite,
    Pickledb,
    PickledbFsync,
    Rustbreak,
    /// Limit: append one record + fdatasync, growing file.
    LogGrow,
    /// Limit: the same into a preallocated (zero-written, synced) file.
    LogPrealloc,
    /// Limit: a plain `HashMap<String, Val>`, get + clone.
    HashMap,
    /// Limit: write the NDJSON stream with a `BufWriter`, then fdatasync.
    Ndjson,
    /// Limit: the in-memory store: serialize into one buffer, one write, one fdatasync,
    /// insert into one pre-sized `HashMap` (issue 11).
    MemLimit,
}

pub const ALL: [Kind; 14] = [
    Kind::Ptvp35,
    Kind::Ptvp35Extend,
    Kind::Ptvp35Queued,
    Kind::Redb,
    Kind::Sled,
    Kind::Sqlite,
    Kind::Pickledb,
    Kind::PickledbFsync,
    Kind::Rustbreak,
    Kind::LogGrow,
    Kind::LogPrealloc,
    Kind::HashMap,
    Kind::Ndjson,
    Kind::MemLimit,
];

impl Kind {
    pub fn id(self) -> &'static str {
        match self {
            Kind::Ptvp35 => "ptvp35",
            Kind::Ptvp35Extend => "ptvp35-extend",
            Kind::Ptvp35Queued => "ptvp35-queued",
            Kind::Redb => "redb",
            Kind::Sled => "sled",
            Kind::Sqlite => "sqlite",
            Kind::Pickledb => "pickledb",
            Kind::PickledbFsync => "pickledb-fsync",
            Kind::Rustbreak => "rustbreak",
            Kind::LogGrow => "log-grow",
            Kind::LogPrealloc => "log-prealloc",
            Kind::HashMap => "hashmap",
            Kind::Ndjson => "ndjson",
            Kind::MemLimit => "mem-limit",
        }
    }

    pub fn from_id(s: &str) -> Option<Kind> {
        ALL.into_iter().find(|k| k.id() == s)
    }

    /// Row label in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ptvp35 => "ptvp35",
            Kind::Ptvp35Extend => "ptvp35 `extend`",
            Kind::Ptvp35Queued => "ptvp35, every commit queued",
            Kind::Redb => "redb 4",
            Kind::Sled => "sled 0.34 ¹",
            Kind::Sqlite => "SQLite (WAL, FULL)",
            Kind::Pickledb => "pickledb 0.5 ²",
            Kind::PickledbFsync => "pickledb 0.5 + fsync",
            Kind::Rustbreak => "rustbreak 2 ³",
            Kind::LogGrow => "limit: append+fdatasync",
            Kind::LogPrealloc => "limit: prealloc+fdatasync",
            Kind::HashMap => "limit: HashMap get+clone",
            Kind::Ndjson => "limit: NDJSON write+fdatasync",
            Kind::MemLimit => "limit: in-memory store ⁴",
        }
    }

    pub fn is_limit(self) -> bool {
        matches!(
            self,
            Kind::LogGrow | Kind::LogPrealloc | Kind::HashMap | Kind::Ndjson | Kind::MemLimit
        )
    }

    /// Is a commit acknowledged by this store durable against a power cut?
    pub fn power_safe(self) -> bool {
        !matches!(self, Kind::Sled | Kind::Pickledb | Kind::Rustbreak)
    }
}

/// The footnotes the tables refer to.
pub const SYNC_NOTES: &str = "¹ sled 0.34 `flush()` calls `sync_file_range`, no fdatasync: no device cache flush, no metadata; not power-safe.  \n\
² pickledb `dump()` writes a temp file and renames it, with no fsync at all; the \"+ fsync\" row adds fsync of the file and of its directory after each dump.  \n\
³ rustbreak `save()` fsyncs the temp file, then renames it without syncing the directory: the rename itself can be lost.";

/// Open a fresh (or existing) store of `kind` inside `dir`.
pub fn open(kind: Kind, dir: &Path) -> Result<Box<dyn Store>> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    Ok(match kind {
        Kind::Ptvp35 => Box::new(crate::engine::Engine::open(dir)?),
        Kind::Ptvp35Extend => Box::new(crate::engine::Engine::open_extend(dir)?),
        Kind::Ptvp35Queued => Box::new(crate::engine::Engine::open_queued(dir)?),
        Kind::Redb => Box::new(RedbStore::open(dir)?),
        Kind::Sled => Box::new(SledStore::open(dir)?),
        Kind::Sqlite => Box::new(SqliteStore::open(dir)?),
        Kind::Pickledb => Box::new(PickleStore::open(dir, false)?),
        Kind::PickledbFsync => Box::new(PickleStore::open(dir, true)?),
        Kind::Rustbreak => Box::new(RustbreakStore::open(dir)?),
        Kind::LogGrow => Box::new(LogStore::open(dir, false)?),
        Kind::LogPrealloc => Box::new(LogStore::open(dir, true)?),
        Kind::HashMap => Box::new(MapStore::default()),
        Kind::Ndjson => Box::new(NdjsonStore {
            path: ndjson_path(dir),
        }),
        Kind::MemLimit => Box::new(MemLimitStore {
            path: ndjson_path(dir),
            map: HashMap::new(),
        }),
    })
}

pub fn to_json(v: &Val) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

// ---------------------------------------------------------------- redb

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");

pub fn redb_path(dir: &Path) -> PathBuf {
    dir.join("data.redb")
}

struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    fn open(dir: &Path) -> Result<Self> {
        let db = redb::Database::create(redb_path(dir))?;
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(RedbStore { db })
    }
}

struct RedbHandle<'a>(&'a redb::Database);

impl Handle for RedbHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.txn(vec![(k, v)])
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let tx = self.0.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in kv {
                t.insert(k.as_str(), to_json(&v).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        let r = self.0.begin_read()?;
        let t = r.open_table(TABLE)?;
        Ok(t.get(k.as_str())?
            .map(|g| black_box(g.value().to_vec()))
            .is_some())
    }
}

impl Store for RedbStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(RedbHandle(&self.db)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in items {
                t.insert(k.as_str(), to_json(&v).as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- sled

pub fn sled_path(dir: &Path) -> PathBuf {
    dir.join("sled")
}

struct SledStore {
    db: sled::Db,
}

impl SledStore {
    fn open(dir: &Path) -> Result<Self> {
        Ok(SledStore {
            db: sled::open(sled_path(dir))?,
        })
    }
}

struct SledHandle<'a>(&'a sled::Db);

impl Handle for SledHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.0.insert(k.as_bytes(), to_json(&v))?;
        self.0.flush()?;
        Ok(())
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in kv {
            b.insert(k.as_bytes(), to_json(&v));
        }
        self.0.apply_batch(b)?;
        self.0.flush()?;
        Ok(())
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        Ok(self.0.get(k.as_bytes())?.map(black_box).is_some())
    }
}

impl Store for SledStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(SledHandle(&self.db)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let mut b = sled::Batch::default();
        for (k, v) in items {
            b.insert(k.as_bytes(), to_json(&v));
        }
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- SQLite

pub fn sqlite_path(dir: &Path) -> PathBuf {
    dir.join("data.sqlite")
}

pub fn sqlite_conn(path: &Path) -> Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.busy_timeout(std::time::Duration::from_secs(60))?;
    Ok(c)
}

/// One writer connection behind a mutex (SQLite has one writer at a time anyway; a
/// mutex hands it over without the busy handler's sleeps), one reader connection per
/// thread.
struct SqliteStore {
    path: PathBuf,
    writer: Mutex<rusqlite::Connection>,
}

impl SqliteStore {
    fn open(dir: &Path) -> Result<Self> {
        let path = sqlite_path(dir);
        let c = sqlite_conn(&path)?;
        c.execute_batch("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB NOT NULL)")?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(c),
        })
    }
}

const SQL_SET: &str = "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)";
const SQL_GET: &str = "SELECT v FROM kv WHERE k = ?1";

struct SqliteHandle<'a> {
    store: &'a SqliteStore,
    reader: Option<rusqlite::Connection>,
}

impl Handle for SqliteHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        let c = self
            .store
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        c.prepare_cached(SQL_SET)?.execute((k, to_json(&v)))?;
        Ok(())
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let mut c = self
            .store
            .writer
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(SQL_SET)?;
            for (k, v) in kv {
                st.execute((k, to_json(&v)))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        if self.reader.is_none() {
            self.reader = Some(sqlite_conn(&self.store.path)?);
        }
        let Some(c) = self.reader.as_ref() else {
            return Ok(false);
        };
        let mut st = c.prepare_cached(SQL_GET)?;
        let mut rows = st.query([k])?;
        match rows.next()? {
            Some(r) => {
                black_box(r.get::<_, Vec<u8>>(0)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Store for SqliteStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(SqliteHandle {
            store: self,
            reader: None,
        }))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let c = self
            .writer
            .get_mut()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare_cached(SQL_SET)?;
            for (k, v) in items {
                st.execute((k, to_json(&v)))?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- pickledb

pub fn pickle_path(dir: &Path) -> PathBuf {
    dir.join("data.pickle.json")
}

struct PickleStore {
    dir: PathBuf,
    db: RwLock<pickledb::PickleDb>,
    fsync: bool,
}

impl PickleStore {
    fn open(dir: &Path, fsync: bool) -> Result<Self> {
        let db = pickledb::PickleDb::new(
            pickle_path(dir),
            pickledb::PickleDbDumpPolicy::DumpUponRequest,
            pickledb::SerializationMethod::Json,
        );
        Ok(PickleStore {
            dir: dir.to_owned(),
            db: RwLock::new(db),
            fsync,
        })
    }

    fn dump(&self, db: &mut pickledb::PickleDb) -> Result<()> {
        db.dump()?;
        if self.fsync {
            File::open(pickle_path(&self.dir))?.sync_all()?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

struct PickleHandle<'a>(&'a PickleStore);

impl Handle for PickleHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.txn(vec![(k, v)])
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let mut db = self.0.db.write().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (k, v) in kv {
            db.set(&k, &v)?;
        }
        self.0.dump(&mut db)
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        let db = self.0.db.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(db.get::<Val>(k).map(black_box).is_some())
    }
}

impl Store for PickleStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(PickleHandle(self)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let db = self.db.get_mut().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (k, v) in items {
            db.set(&k, &v)?;
        }
        db.dump()?;
        if self.fsync {
            File::open(pickle_path(&self.dir))?.sync_all()?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- rustbreak

pub fn rustbreak_path(dir: &Path) -> PathBuf {
    dir.join("data.ron")
}

type Rb<V> = rustbreak::FileDatabase<HashMap<String, V>, rustbreak::deser::Ron>;

struct RustbreakStore {
    db: Rb<Val>,
}

impl RustbreakStore {
    fn open(dir: &Path) -> Result<Self> {
        Ok(RustbreakStore {
            db: Rb::<Val>::load_from_path_or_default(rustbreak_path(dir))?,
        })
    }
}

struct RustbreakHandle<'a>(&'a Rb<Val>);

impl Handle for RustbreakHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.txn(vec![(k, v)])
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        self.0.write(|m| m.extend(kv))?;
        self.0.save()?;
        Ok(())
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        Ok(self.0.read(|m| m.get(k).cloned())?.map(black_box).is_some())
    }
}

impl Store for RustbreakStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(RustbreakHandle(&self.db)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        self.db.write(|m| m.extend(items))?;
        self.db.save()?;
        Ok(())
    }
}

// ---------------------------------------------------------------- limits

/// One record per commit, one `fdatasync` each, under a mutex: the device-sync limit.
struct LogStore {
    file: Mutex<(File, u64)>,
    prealloc: u64,
}

const PREALLOC: u64 = 64 << 20;

impl LogStore {
    fn open(dir: &Path, prealloc: bool) -> Result<Self> {
        let path = dir.join(if prealloc { "prealloc.log" } else { "grow.log" });
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut cap = 0;
        if prealloc {
            let zeros = vec![0u8; 1 << 20];
            let mut w = &file;
            while cap < PREALLOC {
                w.write_all(&zeros)?;
                cap += zeros.len() as u64;
            }
            file.sync_all()?;
        }
        sync_dir(dir)?;
        Ok(LogStore {
            file: Mutex::new((file, 0)),
            prealloc: cap,
        })
    }

    fn append(&self, buf: &[u8]) -> Result<()> {
        let mut g = self.file.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let (file, off) = &mut *g;
        if self.prealloc > 0 && *off + buf.len() as u64 > self.prealloc {
            *off = 0;
        }
        file.write_all_at(buf, *off)?;
        *off += buf.len() as u64;
        file.sync_data()?;
        Ok(())
    }
}

fn record_line(k: String, v: Val, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, &Record { key: k, value: v });
    out.push(b'\n');
}

struct LogHandle<'a>(&'a LogStore);

impl Handle for LogHandle<'_> {
    fn set(&mut self, k: String, v: Val) -> Result<()> {
        self.txn(vec![(k, v)])
    }
    fn txn(&mut self, kv: Vec<(String, Val)>) -> Result<()> {
        let mut buf = Vec::with_capacity(128 * kv.len());
        for (k, v) in kv {
            record_line(k, v, &mut buf);
        }
        self.0.append(&buf)
    }
    fn get(&mut self, _k: &String) -> Result<bool> {
        Ok(false)
    }
}

impl Store for LogStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(LogHandle(self)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let mut buf = Vec::new();
        for (k, v) in items {
            record_line(k, v, &mut buf);
        }
        self.append(&buf)
    }
}

/// A plain `HashMap`, read-only once loaded: the read limit.
#[derive(Default)]
struct MapStore {
    map: HashMap<String, Val>,
}

struct MapHandle<'a>(&'a HashMap<String, Val>);

impl Handle for MapHandle<'_> {
    fn set(&mut self, _k: String, _v: Val) -> Result<()> {
        anyhow::bail!("read-only")
    }
    fn txn(&mut self, _kv: Vec<(String, Val)>) -> Result<()> {
        anyhow::bail!("read-only")
    }
    fn get(&mut self, k: &String) -> Result<bool> {
        Ok(self.0.get(k).cloned().map(black_box).is_some())
    }
}

impl Store for MapStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        Ok(Box::new(MapHandle(&self.map)))
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        self.map.extend(items);
        Ok(())
    }
}

pub fn ndjson_path(dir: &Path) -> PathBuf {
    dir.join("data.ndjson")
}

/// Write the NDJSON stream once and fdatasync it: the bulk-load limit.
struct NdjsonStore {
    path: PathBuf,
}

impl Store for NdjsonStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        anyhow::bail!("the NDJSON limit only loads")
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        let f = File::create(&self.path)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for (key, value) in items {
            serde_json::to_writer(&mut w, &Record { key, value })?;
            w.write_all(b"\n")?;
        }
        let f = w
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        f.sync_data()?;
        if let Some(d) = self.path.parent() {
            sync_dir(d)?;
        }
        Ok(())
    }
}

/// The in-memory-store limit of a durable bulk load: every record serialized into one
/// buffer, written with one `write` and one `fdatasync`, and every pair inserted into one
/// `HashMap` sized for them up front; the map lives until the store is closed.
struct MemLimitStore {
    path: PathBuf,
    map: HashMap<String, Val>,
}

impl Store for MemLimitStore {
    fn handle(&self) -> Result<Box<dyn Handle + '_>> {
        anyhow::bail!("the in-memory limit only loads")
    }
    fn load(&mut self, items: &mut dyn Iterator<Item = (String, Val)>) -> Result<()> {
        self.map.reserve(items.size_hint().0);
        let mut buf = Vec::new();
        for (key, value) in items {
            let r = Record { key, value };
            serde_json::to_writer(&mut buf, &r)?;
            buf.push(b'\n');
            self.map.insert(r.key, r.value);
        }
        let mut f = File::create(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        if let Some(d) = self.path.parent() {
            sync_dir(d)?;
        }
        Ok(())
    }
}
