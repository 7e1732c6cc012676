//! `DbConnection`: open (with recovery), reads from the in-memory map, writes through the
//! writer thread, close. `Options` holds the tunables, `Stats` the counters.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::bounds::{Key, Value};
use crate::codec;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::fs::{Fs, RealFs};
use crate::kind::{Find, Hashed, MapKind, Ordered, Table};
use crate::map::{Change, Map, ReadSet, Refusal, UndoList};
use crate::progress::{nanos, Tracking};
use crate::recovery::{self, RecoveryReport};
use crate::storage::{self, Paths};
use crate::writer::{MainFile, Request, TypedSide, Writer, WriterConfig, WriterState};

/// Tunables for opening a database. [`Options::new`] gives the defaults.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-opts-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use ptvp35::{DbConnection, Options};
///
/// let db: DbConnection<u64, String> = Options::new()
///     .compact_ratio(4.0)          // rebuild when the file holds 4x the live records
///     .compact_floor(64 << 20)     // ...and is at least 64 MiB
///     .open(dir.join("tuned.db"))?;
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    batch_bytes: usize,
    queue_requests: usize,
    queue_bytes: usize,
    compact_ratio: f64,
    compact_floor: u64,
    transact_attempts: u32,
    parse_threads: usize,
    preallocate: bool,
    read_only: bool,
    fs: Arc<dyn Fs>,
    copy_piece: usize,
    commit_wait: Duration,
    caller_writes: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_bytes: 8 << 20,
            queue_requests: 1 << 16,
            queue_bytes: 256 << 20,
            compact_ratio: 2.0,
            compact_floor: 1 << 20,
            transact_attempts: 100,
            parse_threads: default_parse_threads(),
            preallocate: true,
            read_only: false,
            fs: Arc::new(RealFs),
            copy_piece: COPY_PIECE,
            commit_wait: Duration::from_millis(1),
            caller_writes: true,
        }
    }
}

/// Most pairs a rebuild of the hash map clones under one shard lock. Each pair's clone
/// reads its key and value from wherever they were allocated (cache and TLB misses, a few
/// microseconds at worst for a value of a few small strings): with 256, a lock of an idle
/// 1M-key rebuild was held 0.5-2.9 ms at longest; with 32, 0.3-0.7 ms, the rebuild about
/// 6% longer.
pub(crate) const COPY_PIECE: usize = 32;

impl Options {
    /// The defaults: 8 MiB batches, at most 65,536 requests or 256 MiB queued, automatic
    /// rebuild when the file holds more than 2 records per live key and is over 1 MiB,
    /// 100 attempts for [`DbConnection::transact`], one thread per core (at most 8) to
    /// parse the file at open, batches held open at most 1 ms for other threads' commits.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The writer stops draining the queue into a batch once it holds this many bytes (a
    /// single transaction is never split, whatever its size).
    #[must_use]
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// Longest the writer holds a batch open for commits it expects (default 1 ms;
    /// `Duration::ZERO` turns the wait off).
    ///
    /// Group commit: with several threads committing, a thread whose commit was just
    /// made durable comes back with its next one a few microseconds after the writer
    /// started the next batch without it. The writer expects as many commits in its next
    /// batch as it just synced plus those that arrived during that sync, and waits for
    /// them, at most as long as the last sync took and at most `max`, so that they share
    /// one sync. With one committing thread nothing arrives during a sync, and it never
    /// waits; a wait that gains nothing, or gains only after half a sync (the cores are
    /// busy), makes the writer skip the next waits, more of them each time.
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-cw-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use std::time::Duration;
    /// let db: ptvp35::DbConnection<String, u64> = ptvp35::Options::new()
    ///     .commit_wait(Duration::ZERO) // every batch is written as soon as it is drained
    ///     .open(dir.join("no-wait.db"))?;
    /// db.set("a".into(), 1)?;
    /// assert_eq!(db.stats().commit_waits, 0);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn commit_wait(mut self, max: Duration) -> Self {
        self.commit_wait = max;
        self
    }

    /// Bounds on what may wait for the writer; a writer faster than the disk waits for
    /// room instead of growing memory without limit.
    #[must_use]
    pub fn queue_limits(mut self, requests: usize, bytes: usize) -> Self {
        self.queue_requests = requests.max(1);
        self.queue_bytes = bytes.max(1);
        self
    }

    /// Rebuild the file automatically once it holds more than `ratio` records per live
    /// key. `f64::INFINITY` turns automatic rebuilds off. An automatic rebuild that
    /// fails (before anything vouches for its copy, so nothing is lost) is not retried
    /// until the file has grown by its own length again (at least 64 KiB), doubling with
    /// each failure in a row.
    #[must_use]
    pub fn compact_ratio(mut self, ratio: f64) -> Self {
        self.compact_ratio = if ratio.is_nan() { 2.0 } else { ratio.max(1.0) };
        self
    }

    /// ...and only once the file is at least this many bytes long.
    #[must_use]
    pub fn compact_floor(mut self, bytes: u64) -> Self {
        self.compact_floor = bytes;
        self
    }

    /// How many times [`DbConnection::transact`] runs its closure before it gives up
    /// with [`Error::Conflict`].
    #[must_use]
    pub fn transact_attempts(mut self, attempts: u32) -> Self {
        self.transact_attempts = attempts.max(1);
        self
    }

    /// Threads that parse the file at open; by default the cores this process may use
    /// ([`std::thread::available_parallelism`]), at most [`MAX_DEFAULT_PARSE_THREADS`].
    /// As many fill the map beside them (the calling thread is one of those), each
    /// applying the records of its part of the map as soon as they are parsed, so that
    /// what a later record replaces is freed, and its memory reused, during the open.
    /// With 1, the calling thread does everything, chunk after chunk. A file is split
    /// into chunks of at least about 1 MiB, so a small file is read on the calling
    /// thread whatever this says.
    #[must_use]
    pub fn parse_threads(mut self, threads: usize) -> Self {
        self.parse_threads = threads.clamp(1, 64);
        self
    }

    /// Whether the writer extends the main file with zeros ahead of its appends (on by
    /// default), so that most syncs flush data only and not the file's size. The zeros
    /// exist only while the database is open; a clean close trims them and recovery cuts
    /// them after a crash.
    #[must_use]
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// Opens the database read-only (off by default): without its lock, without a writer
    /// thread, and without creating, changing or removing any file. The handle shows
    /// the state recovery would produce from the files as they are, follows the owner
    /// with [`DbConnection::refresh`], and refuses every write with [`Error::ReadOnly`].
    /// See the guide's section on read-only handles in the crate docs.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-ro-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("ro.db");
    /// use ptvp35::{DbConnection, Error, Options};
    ///
    /// let owner = DbConnection::<String, i64>::open(&path)?;
    /// owner.set("a".into(), 1)?;
    /// let reader: DbConnection<String, i64> = Options::new().read_only(true).open(&path)?;
    /// assert_eq!(reader.get("a"), Some(1));
    /// assert!(matches!(reader.set("b".into(), 2), Err(Error::ReadOnly { .. })));
    /// # owner.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Puts another filesystem under the engine (the crash tests' simulated one). Hidden
    /// and outside semver: the seam exists for the test kit.
    #[doc(hidden)]
    #[must_use]
    pub fn filesystem(mut self, fs: Arc<dyn Fs>) -> Self {
        self.fs = fs;
        self
    }

    /// Most pairs a rebuild clones under one lock of the hash map (at least 1; default
    /// 32). Hidden and outside semver: tests set it low, so that small maps are copied
    /// in many pieces with writes between them.
    #[doc(hidden)]
    #[must_use]
    pub fn rebuild_piece(mut self, pairs: usize) -> Self {
        self.copy_piece = pairs.max(1);
        self
    }

    /// Whether a commit whose caller waits for it (`set`, `remove`, `commit_transaction`,
    /// `transact`) is written and synced by the caller's own thread when the writer
    /// thread is idle and expects no other committer (default `true`): a lone committer
    /// then crosses no thread. Hidden and outside semver: the benchmark turns it off to
    /// measure what it saves, and `false` is how every commit went before.
    #[doc(hidden)]
    #[must_use]
    pub fn caller_writes(mut self, on: bool) -> Self {
        self.caller_writes = on;
        self
    }

    /// Opens (or creates) the database whose main file is `path`, running recovery first.
    ///
    /// Blocks while the file is read and parsed. When it returns, the whole database is in
    /// memory, any crash leftovers are repaired (see [`DbConnection::recovery_report`]),
    /// and the database's lock is held until it is closed.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] if another owner has it open; [`Error::Corrupt`] if a line in the
    /// valid region does not decode (file, line and offset in the error);
    /// [`Error::BadSideFile`] if a side file is in a state no crash can explain;
    /// [`Error::Io`] if a file operation fails; [`Error::Internal`] if a thread parsing or
    /// loading the file panicked (in a key's or value's `Deserialize`, `Hash`, `Eq` or
    /// `Drop`). A [read-only](Self::read_only) open never returns [`Error::Locked`]; it
    /// fails with [`Error::NotFound`] where there is no database.
    pub fn open<K: Key, V: Value>(&self, path: impl AsRef<Path>) -> Result<DbConnection<K, V>> {
        self.open_as(path.as_ref())
    }

    /// As [`open`](Self::open), with the [`Ordered`] map: keys in order, [`range`]
    /// scans, [`first`] and [`last`], and rebuilt files with the pairs in key order.
    ///
    /// [`range`]: DbConnection::range
    /// [`first`]: DbConnection::first
    /// [`last`]: DbConnection::last
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-openord-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use ptvp35::{DbConnection, Options, Ordered};
    ///
    /// let db: DbConnection<u64, String, Ordered> =
    ///     Options::new().open_ordered(dir.join("events.db"))?;
    /// db.set(20, "b".into())?;
    /// db.set(10, "a".into())?;
    /// assert_eq!(db.first(), Some((10, "a".to_string())));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_ordered<K: Key + Ord, V: Value>(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<DbConnection<K, V, Ordered>> {
        self.open_as(path.as_ref())
    }

    /// As [`open`](Self::open), with the map chosen by the type parameter `M`
    /// ([`Hashed`] or [`Ordered`]): for code generic over the map.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-openas-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use ptvp35::{DbConnection, MapKind, Options, Ordered};
    ///
    /// fn count<M: MapKind<String, u32>>(path: &std::path::Path) -> ptvp35::Result<usize> {
    ///     let db: DbConnection<String, u32, M> = Options::new().open_as(path)?;
    ///     let n = db.len();
    ///     db.close()?;
    ///     Ok(n)
    /// }
    /// assert_eq!(count::<Ordered>(&dir.join("d.db"))?, 0);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_as<K: Key, V: Value, M: MapKind<K, V>>(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<DbConnection<K, V, M>> {
        let path = path.as_ref();
        if self.read_only {
            return crate::follow::open(Arc::clone(&self.fs), path, self.parse_threads);
        }
        DbConnection::open_with(self, path)
    }
}

/// Counters of a database's work, for users and tests. See [`DbConnection::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Keys in the database.
    pub live_keys: u64,
    /// Length of the main file.
    pub file_len: u64,
    /// Batches appended since open (each made durable with one sync).
    pub batches: u64,
    /// Write requests (single-key writes and transactions) made durable since open.
    pub requests: u64,
    /// Records appended since open.
    pub records_written: u64,
    /// Bytes appended since open.
    pub bytes_written: u64,
    /// Syncs of the main file since open (one per batch, two per rebuild).
    pub syncs: u64,
    /// Rebuilds since open, automatic and explicit.
    pub rebuilds: u64,
    /// The longest the last rebuild held a lock of the in-memory map (zero before the first
    /// rebuild): readers and writers of the keys behind that lock waited at most this long
    /// for it. The hash map's rebuild clones at most 32 pairs of a shard under its read
    /// lock at a time; the ordered map's takes a snapshot, which holds a lock for a
    /// moment only. A thread preempted while it holds the lock holds it longer.
    pub rebuild_longest_lock: Duration,
    /// How long the last rebuild's install (appending the writes made during the copy,
    /// syncing and renaming the new file into place) kept the writer thread from writes:
    /// the longest a commit waited for the rebuild.
    pub rebuild_install: Duration,
    /// Batches the writer held open since open, waiting for commits it expected from
    /// other threads (see [`Options::commit_wait`]); never with a single committing
    /// thread.
    pub commit_waits: u64,
}

/// A submitted change that is visible already; [`CommitHandle::wait`] blocks until it is
/// durable.
#[derive(Debug)]
#[must_use = "a commit handle does nothing unless waited on"]
pub struct CommitHandle {
    seq: u64,
    tracking: Arc<Tracking>,
}

impl CommitHandle {
    /// Blocks until the change (and everything submitted before it) is durable.
    ///
    /// # Errors
    ///
    /// The [`Error::Io`] of the failed write or sync, if the batch holding it failed;
    /// [`Error::Poisoned`] if an earlier failure stopped writes; [`Error::Closed`] if the
    /// writer stopped first; [`Error::Internal`] if the writer thread panicked first.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-wait-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let mut delta = ptvp35::Delta::new();
    /// delta.set("a".into(), 1)?;
    /// db.submit_transaction_request(delta)?.wait()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(self) -> Result<()> {
        self.tracking.progress.wait(self.seq)
    }

    /// A handle on whichever of the two writes comes later.
    pub(crate) fn or_later(self, other: CommitHandle) -> CommitHandle {
        if other.seq > self.seq {
            other
        } else {
            self
        }
    }
}

/// A chunk of [`DbConnection::extend`]'s pairs on its way to the thread that applies it:
/// as read, or serialized already.
enum Chunk<K, V> {
    Pairs(Vec<(K, V)>),
    Delta(Delta<K, V>),
}

/// The next pairs of `extend` (at most [`EXTEND_CHUNK`]); none once `stop` is set.
fn read_pairs<K, V>(items: &mut impl Iterator<Item = (K, V)>, stop: &AtomicBool) -> Vec<(K, V)> {
    let mut pairs = Vec::with_capacity(EXTEND_CHUNK);
    pairs.extend(
        items
            .take_while(|_| !stop.load(Ordering::Relaxed))
            .take(EXTEND_CHUNK),
    );
    pairs
}

/// One chunk of `extend` as a delta (user `Serialize` and `Hash`), its lines in a buffer
/// of about `bytes_hint` bytes.
fn encode_chunk<K: Key, V: Value>(pairs: Vec<(K, V)>, bytes_hint: usize) -> Result<Delta<K, V>> {
    let mut delta = Delta::with_capacity(pairs.len(), bytes_hint);
    for (k, v) in pairs {
        delta.set(k, v)?;
    }
    Ok(delta)
}

/// What a connection shares with its writer thread: the map, the queue, and the
/// durability progress, budget and counters.
pub(crate) struct Core<K, V, T> {
    pub(crate) map: Map<K, V, T>,
    /// Unbounded: the budget in `tracking` bounds what is queued, so a send never blocks
    /// (it happens under the map's locks).
    pub(crate) tx: Sender<Request<UndoList<K, V>>>,
    pub(crate) tracking: Arc<Tracking>,
    /// Most pairs a rebuild clones under one shard lock ([`Options::rebuild_piece`]).
    pub(crate) copy_piece: usize,
}

impl<K: Key, V: Value, T: Table<K, V>> TypedSide for Core<K, V, T> {
    type Undo = UndoList<K, V>;

    fn snapshot(&self, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let longest = &self.tracking.counters.rebuild_lock_ns;
        if T::CHEAP_FREEZE {
            // A consistent state, in key order, copied with no lock held.
            let (frozen, seq) = self.map.with_all(|tables, seq| {
                let t = Instant::now();
                let frozen = T::freeze_all(tables);
                longest.store(nanos(t.elapsed()), Ordering::Relaxed);
                (frozen, seq)
            });
            crate::kind::encode_all::<K, V, T>(&frozen, sink)?;
            return Ok(seq);
        }
        // Under a shard's read lock only a copy (user `Clone`) of at most `piece` pairs,
        // which costs a fraction of serializing them; the lines are written with the
        // lock released, so readers and writers of the shard wait for one piece at most.
        // The lines go to `sink` at the end of each shard, and a megabyte or so at a time
        // within a large one.
        let mut buf = Vec::new();
        let held = self
            .map
            .copy_in_pieces(self.copy_piece, |pairs, shard_end| {
                for (k, v) in &pairs {
                    codec::encode_set(k, v, &mut buf)?;
                }
                drop(pairs);
                if shard_end || buf.len() >= crate::kind::SINK_CHUNK {
                    sink(&buf)?;
                    buf.clear();
                }
                Ok(())
            })?;
        longest.store(nanos(held), Ordering::Relaxed);
        // The copy above took one shard at a time; the writer completes it by replaying
        // every write up to this number.
        Ok(self.map.seq())
    }

    fn refuse_writes(&self) {
        self.map.refuse();
    }

    fn undo(&self, undos: Vec<UndoList<K, V>>) {
        self.map.undo(undos);
    }

    fn live_keys(&self) -> u64 {
        self.map.len() as u64
    }
}

/// The most threads an open uses by default to parse the file and fill the map: past
/// about eight, memory bandwidth and the final join, not parsing, bound an open.
///
/// # Examples
///
/// ```
/// assert_eq!(ptvp35::MAX_DEFAULT_PARSE_THREADS, 8);
/// ```
pub const MAX_DEFAULT_PARSE_THREADS: usize = 8;

fn default_parse_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .clamp(1, MAX_DEFAULT_PARSE_THREADS)
}

/// Most keys in one transaction of [`DbConnection::extend`]: about 10 MB of records of
/// 150 bytes, enough that the per-transaction costs vanish and small enough that the
/// writer thread writes one chunk while the caller prepares the next.
///
/// # Examples
///
/// ```
/// assert_eq!(ptvp35::EXTEND_CHUNK, 65_536);
/// ```
pub const EXTEND_CHUNK: usize = 1 << 16;

/// An open database: an in-memory map of `K` to `V`, kept durable in an NDJSON file.
///
/// Reads (`get`, `len`, ...) take a shared lock on the map and never touch the disk.
/// Writes change the map at once, under one exclusive lock per transaction, and queue the
/// change for the writer thread, which appends whole batches and makes each durable with
/// one sync; the `_nowait` forms return right away, the others once the change is durable.
/// `DbConnection` is `Send + Sync`: share it between threads by reference or in an `Arc`.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-db-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use ptvp35::DbConnection;
///
/// let path = dir.join("data.db");
/// let db = DbConnection::<(String, u32), serde_json::Value>::open(&path)?;
/// db.set(("tuple".into(), 1), serde_json::json!({"dict": "example"}))?; // durable now
/// db.close()?;
///
/// let db = DbConnection::<(String, u32), serde_json::Value>::open(&path)?;
/// assert_eq!(db.get(&("tuple".into(), 1)), Some(serde_json::json!({"dict": "example"})));
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub struct DbConnection<K: Key, V: Value, M: MapKind<K, V> = Hashed> {
    pub(crate) shared: Arc<Core<K, V, M::Table>>,
    pub(crate) writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread's state: a committing thread that waits for its commit locks it
    /// to write that commit itself when the writer is idle (`None` for a read-only
    /// handle).
    pub(crate) writer_state: Option<WriterState<Core<K, V, M::Table>>>,
    pub(crate) paths: Paths,
    pub(crate) report: RecoveryReport,
    pub(crate) transact_attempts: u32,
    pub(crate) fs: Arc<dyn Fs>,
    /// `Some` for a read-only handle (see `follow.rs`).
    pub(crate) follower: Option<crate::follow::Follower>,
}

impl<K: Key, V: Value, M: MapKind<K, V>> fmt::Debug for DbConnection<K, V, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConnection")
            .field("path", &self.paths.main)
            .field("live_keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> DbConnection<K, V, M> {
    /// Opens (or creates) the database whose main file is `path` with default
    /// [`Options`], running recovery first.
    ///
    /// # Errors
    ///
    /// As [`Options::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Options::new().open_as(path.as_ref())
    }

    fn open_with(opts: &Options, path: &Path) -> Result<Self> {
        let fs = Arc::clone(&opts.fs);
        let paths = Paths::resolve(&*fs, path)?;
        let mut rec = recovery::open_and_recover(&*fs, &paths)?;
        let (map, records) =
            crate::load::load::<K, V, M::Table>(&rec.data, &paths.main, opts.parse_threads)?;
        let len = rec.data.len() as u64;
        drop(rec.data);
        let chain = storage::start_session(&*fs, &paths, &mut *rec.file, len, rec.has_flag)?;

        let (tx, rx) = crossbeam_channel::unbounded();
        let tracking = Arc::new(Tracking::new(
            opts.queue_requests,
            opts.queue_bytes,
            len,
            records,
        ));
        let shared = Arc::new(Core {
            map,
            tx,
            tracking: Arc::clone(&tracking),
            copy_piece: opts.copy_piece,
        });
        let main = MainFile {
            fs: Arc::clone(&fs),
            paths: paths.clone(),
            file: rec.file,
            len,
            chain,
        };
        let config = WriterConfig {
            batch_bytes: opts.batch_bytes,
            compact_ratio: opts.compact_ratio,
            compact_floor: opts.compact_floor,
            preallocate: opts.preallocate,
            commit_wait: opts.commit_wait,
        };
        let (writer, state) = Writer::spawn(main, rx, Arc::clone(&shared), tracking, config)?;
        Ok(DbConnection {
            shared,
            writer: Mutex::new(Some(writer)),
            writer_state: opts.caller_writes.then_some(state),
            paths,
            report: rec.report,
            transact_attempts: opts.transact_attempts,
            fs,
            follower: None,
        })
    }

    /// The main file's path.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-path-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// assert!(db.path().ends_with("d.db"));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.paths.main
    }

    /// What recovery found and did when this database was opened.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-report-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// assert!(db.recovery_report().created); // a new, empty database
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The value of `key`, cloned. Never touches the disk; sees every submitted change.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-get-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// assert_eq!(db.get("a"), Some(1));
    /// assert_eq!(db.get("b"), None);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        M::Table: Find<K, V, Q>,
    {
        self.shared
            .map
            .read_borrowed(key, |e| e.map(|e| e.value.clone()))
    }

    /// Calls `f` on the value of `key` under the read lock, without cloning it.
    ///
    /// `f` runs while the key's shard is locked for reading: it must not write to this
    /// database (that waits for the lock `f` holds), and a read from it may wait behind a
    /// writer that waits for `f`. Use [`get`](Self::get) when `f` needs the database.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-getwith-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::DbConnection::<String, Vec<u8>>::open(dir.join("blobs.db"))?;
    /// db.set("a".into(), vec![1, 2, 3])?;
    /// assert_eq!(db.get_with("a", |v| v.len()), Some(3));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        M::Table: Find<K, V, Q>,
    {
        self.shared
            .map
            .read_borrowed(key, |e| e.map(|e| f(&e.value)))
    }

    pub(crate) fn get_versioned(&self, key: &K) -> (Option<V>, Option<u64>) {
        self.shared.map.read(key, |e| match e {
            Some(e) => (Some(e.value.clone()), Some(e.version)),
            None => (None, None),
        })
    }

    /// True if `key` has a value.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-contains-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// assert!(db.contains_key("a"));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        M::Table: Find<K, V, Q>,
    {
        self.shared.map.read_borrowed(key, |e| e.is_some())
    }

    /// Number of keys.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-len-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.set("b".into(), 2)?;
    /// assert_eq!(db.len(), 2);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// True if there are no keys.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-isempty-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// assert!(db.is_empty());
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` on every pair, in no particular order, of a consistent state (never part
    /// of a transaction).
    ///
    /// The state is copied first, under the read locks of the whole map (writers wait
    /// while every key and value is cloned), and `f` runs after they are released, so it
    /// may read or write this database. The cost is a copy of the whole map: memory for
    /// every pair and the time to clone them. Use [`get_with`](Self::get_with) to see one
    /// value without a copy.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-foreach-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.set("b".into(), 2)?;
    /// let mut total = 0;
    /// db.for_each(|_, v| total += v);
    /// assert_eq!(total, 3);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for (k, v) in self {
            f(&k, &v);
        }
    }

    /// A copy of every pair, taken under the read locks of the whole map: a consistent
    /// snapshot. Writers wait while it is taken.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-snapshot-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// let copy = db.snapshot();
    /// db.set("a".into(), 2)?;
    /// assert_eq!(copy[&"a".to_string()], 1);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn snapshot(&self) -> HashMap<K, V> {
        self.iter().collect()
    }

    /// Sets `key` to `value` and returns once the change is durable.
    ///
    /// Concurrent callers share syncs (group commit): many threads calling `set` at once
    /// cost about one sync per batch, not one each. A caller alone (the writer thread
    /// idle, no other commit expected) writes and syncs its change on its own thread,
    /// sparing two thread wake-ups; the same holds for [`remove`](Self::remove),
    /// [`commit_transaction`](Self::commit_transaction) and `transact`.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the key or value cannot be stored (nothing changes);
    /// [`Error::Io`] if the batch's write or sync failed; [`Error::Poisoned`] if an earlier
    /// failure stopped writes.
    ///
    /// # Panics
    ///
    /// If the `Drop` of the value this replaces panics when this thread wrote the change
    /// itself, once the change is durable (the database stays open). Dropped on the writer
    /// thread instead, such a panic poisons the database.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-set-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("balance".into(), 100)?; // on disk when this returns
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set(&self, key: K, value: V) -> Result<()> {
        let seq = self.set_seq(key, value, true)?;
        self.shared.tracking.progress.wait(seq)
    }

    /// Sets `key` to `value`: visible to every reader when this returns, durable later
    /// (after [`commit`](Self::commit), or at close).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the key or value cannot be stored (nothing changes);
    /// [`Error::Poisoned`] if an earlier failure stopped writes.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-setnowait-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// for i in 0..100 {
    ///     db.set_nowait(format!("k{i}"), i)?; // visible at once
    /// }
    /// db.commit()?; // all 100 durable, sharing syncs
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_nowait(&self, key: K, value: V) -> Result<()> {
        self.set_seq(key, value, false).map(drop)
    }

    /// Submits a `set`; `alone`: the caller waits for it next (see [`Self::submit`]).
    fn set_seq(&self, key: K, value: V, alone: bool) -> Result<u64> {
        let mut line = Vec::with_capacity(64);
        codec::encode_set(&key, &value, &mut line)?;
        let change = Change::new(key, Some(value));
        self.submit(vec![change], line, 1, None, alone)
    }

    /// Removes `key` and returns once the removal is durable.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-remove-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.remove("a")?;
    /// assert_eq!(db.get("a"), None);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Result<()>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        let seq = self.remove_seq(key.to_owned(), true)?;
        self.shared.tracking.progress.wait(seq)
    }

    /// Removes `key`: gone for every reader when this returns, durably gone later.
    ///
    /// # Errors
    ///
    /// As [`set_nowait`](Self::set_nowait).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-removenowait-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.remove_nowait("a")?;
    /// assert!(!db.contains_key("a"));
    /// db.commit()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove_nowait<Q>(&self, key: &Q) -> Result<()>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        self.remove_seq(key.to_owned(), false).map(drop)
    }

    /// Submits a removal; `alone`: the caller waits for it next (see [`Self::submit`]).
    fn remove_seq(&self, key: K, alone: bool) -> Result<u64> {
        let mut line = Vec::with_capacity(32);
        codec::encode_remove(&key, &mut line)?;
        let change = Change::new(key, None);
        self.submit(vec![change], line, 1, None, alone)
    }

    /// Blocks until every change submitted before this call is durable.
    ///
    /// # Errors
    ///
    /// The error of the first failed batch among them, or [`Error::Poisoned`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-commit-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set_nowait("a".into(), 1)?;
    /// db.commit()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit(&self) -> Result<()> {
        let seq = self.shared.map.seq();
        self.shared.tracking.progress.wait(seq)
    }

    /// Applies every change of `delta` at once (no reader sees part of it) and queues it
    /// as one unit; returns without waiting for the disk.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if an earlier failure stopped writes; nothing changes then.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-submittx-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let mut delta = ptvp35::Delta::new();
    /// delta.set("a".into(), 1)?;
    /// delta.set("b".into(), 2)?;
    /// db.submit_transaction(delta)?; // both visible now
    /// assert_eq!(db.get("b"), Some(2));
    /// db.commit()?; // durable
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        self.submit_delta(delta, None, false).map(drop)
    }

    /// As [`submit_transaction`](Self::submit_transaction), and returns a handle whose
    /// [`wait`](CommitHandle::wait) blocks until the change is durable.
    ///
    /// # Errors
    ///
    /// As [`submit_transaction`](Self::submit_transaction).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-submitreq-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let mut delta = ptvp35::Delta::new();
    /// delta.set("a".into(), 1)?;
    /// let handle = db.submit_transaction_request(delta)?;
    /// // ... other work while the writer thread syncs ...
    /// handle.wait()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit_transaction_request(&self, delta: Delta<K, V>) -> Result<CommitHandle> {
        self.submit_request(delta, false)
    }

    /// [`Self::submit_transaction_request`]; `alone`: the caller waits for it next (see
    /// [`Self::submit`]).
    fn submit_request(&self, delta: Delta<K, V>, alone: bool) -> Result<CommitHandle> {
        if delta.is_empty() {
            // No change: nothing to wait for (not another thread's last write).
            self.writable()?;
            return Ok(self.handle(0));
        }
        let seq = self.submit_delta(delta, None, alone)?;
        Ok(self.handle(seq))
    }

    /// Applies `delta` as one unit and returns once it is durable: after any crash, all of
    /// it is in the database or none of it.
    ///
    /// # Errors
    ///
    /// As [`set`](Self::set).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-committx-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let mut delta = ptvp35::Delta::new();
    /// delta.set("from".into(), -10)?;
    /// delta.set("to".into(), 10)?;
    /// db.commit_transaction(delta)?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        self.submit_request(delta, true)?.wait()
    }

    /// Sets every pair of `items` and returns once all of them are durable: the bulk load.
    ///
    /// The pairs go in as transactions of up to 65,536 keys each (see [`EXTEND_CHUNK`]).
    /// From the second chunk on, three threads share the work: this one reads the pairs,
    /// a thread `ptvp35-extend` serializes and applies each chunk (this one serializes
    /// a chunk itself when the other is still busy), and the writer thread writes the
    /// chunk before. Each chunk is atomic, the whole is
    /// not: a reader may see the first chunks before the last, and after a crash the
    /// database holds some prefix of the chunks. Memory stays near the size of the loaded
    /// map (a few chunks of pairs on their way), where one [`Delta`] of every pair also
    /// holds every record line and a second copy of every pair until it is applied. For
    /// all-or-nothing, build one [`Delta`] and [`commit_transaction`] it.
    ///
    /// [`commit_transaction`]: Self::commit_transaction
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if a pair cannot be stored: the chunks before it are
    /// submitted (and durable when this returns), the chunk it was in is dropped, and
    /// reading `items` stops (pairs read meanwhile, at most about two chunks, are
    /// dropped). Otherwise as [`commit_transaction`](Self::commit_transaction), and
    /// [`Error::Io`] if the thread cannot be started.
    ///
    /// # Panics
    ///
    /// A panic in user code (the iterator, or the keys' and values' `Serialize`, `Hash`,
    /// `Eq`, `Clone` or `Drop`) goes on in this thread once the chunks before it are in.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-extend-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, u64>::open(dir.join("d.db"))?;
    /// db.extend((0..100_000u64).map(|i| (format!("key{i}"), i)))?; // all durable now
    /// assert_eq!(db.len(), 100_000);
    /// assert_eq!(db.get("key123"), Some(123));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn extend<I: IntoIterator<Item = (K, V)>>(&self, items: I) -> Result<()> {
        let mut items = items.into_iter();
        let stop = AtomicBool::new(false);
        let first = read_pairs(&mut items, &stop);
        if first.len() < EXTEND_CHUNK {
            // One chunk: no thread.
            return self.commit_transaction(encode_chunk(first, 0)?);
        }
        let bytes_hint = AtomicUsize::new(0);
        let (tx, rx) = crossbeam_channel::bounded::<Chunk<K, V>>(1);
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("ptvp35-extend".into())
                .spawn_scoped(s, || self.submit_chunks(rx.into_iter(), &bytes_hint, &stop))
                .map_err(|e| Error::io("start the extend thread for", &self.paths.main, e))?;
            let mut pairs = first;
            let read = loop {
                // The other thread serializes the chunk if it is free for it; if not, this
                // one does. A send fails when the other thread is gone (it failed).
                match tx.try_send(Chunk::Pairs(pairs)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(Chunk::Pairs(pairs))) => {
                        let delta = match encode_chunk(pairs, bytes_hint.load(Ordering::Relaxed)) {
                            Ok(delta) => delta,
                            Err(e) => break Err(e),
                        };
                        if tx.send(Chunk::Delta(delta)).is_err() {
                            break Ok(());
                        }
                    }
                    Err(_) => break Ok(()),
                }
                pairs = read_pairs(&mut items, &stop);
                if pairs.is_empty() {
                    break Ok(());
                }
            };
            drop(tx);
            let submitted = match worker.join() {
                Ok(r) => r,
                Err(panic) => resume_unwind(panic),
            };
            // The other thread's failure, if any, came from an earlier chunk.
            submitted.and(read)
        })
    }

    /// `extend`'s other thread: serializes the chunks sent as pairs, submits each
    /// (user `Eq` or `Ord` under the map's locks) and, once all are in, waits until the
    /// last is durable. Sets `stop` when a chunk fails, so that the reader of the pairs
    /// stops.
    fn submit_chunks(
        &self,
        chunks: impl Iterator<Item = Chunk<K, V>>,
        bytes_hint: &AtomicUsize,
        stop: &AtomicBool,
    ) -> Result<()> {
        let mut last: Option<CommitHandle> = None;
        let submit_all = || -> Result<()> {
            for chunk in chunks {
                let delta = match chunk {
                    Chunk::Pairs(pairs) => encode_chunk(pairs, bytes_hint.load(Ordering::Relaxed))?,
                    Chunk::Delta(delta) => delta,
                };
                bytes_hint.fetch_max(delta.lines_len(), Ordering::Relaxed);
                let h = self.submit_transaction_request(delta)?;
                last = Some(match last.take() {
                    Some(earlier) => h.or_later(earlier),
                    None => h,
                });
            }
            Ok(())
        };
        let r = catch_unwind(AssertUnwindSafe(submit_all));
        if !matches!(r, Ok(Ok(()))) {
            stop.store(true, Ordering::Relaxed);
        }
        match r {
            Ok(r) => r?,
            Err(panic) => resume_unwind(panic),
        }
        last.map_or(Ok(()), CommitHandle::wait)
    }

    pub(crate) fn handle(&self, seq: u64) -> CommitHandle {
        CommitHandle {
            seq,
            tracking: Arc::clone(&self.shared.tracking),
        }
    }

    pub(crate) fn transact_attempts(&self) -> u32 {
        self.transact_attempts
    }

    /// Submits `delta`; with `reads`, only if none of those keys changed since they were
    /// read ([`Error::Conflict`] otherwise). Returns the request's sequence number.
    /// `alone`: the caller waits for it next (see [`Self::submit`]).
    pub(crate) fn submit_delta(
        &self,
        delta: Delta<K, V>,
        reads: Option<&ReadSet<K>>,
        alone: bool,
    ) -> Result<u64> {
        self.writable()?;
        if delta.is_empty() && reads.is_none() {
            return Ok(self.shared.map.seq());
        }
        let n = delta.len() as u64;
        let (changes, data) = delta.into_parts();
        self.submit(changes, data, n, reads, alone)
    }

    /// Queues a write: takes room in the queue (before any lock, so a full queue never
    /// blocks readers, and nothing blocks under the map's locks), then lets the map
    /// check, number, apply and send it. With `alone` (the caller waits for the write to
    /// be durable next) and the writer thread idle, the write is not queued: this thread
    /// writes and syncs it itself once the map's locks are let go (see
    /// [`Writer::may_write_alone`]), and it is durable (or failed) on return.
    fn submit(
        &self,
        changes: Vec<Change<K, V>>,
        data: Vec<u8>,
        records: u64,
        reads: Option<&ReadSet<K>>,
        alone: bool,
    ) -> Result<u64> {
        self.writable()?;
        let sh = &*self.shared;
        let bytes = data.len();
        if !sh.tracking.budget.acquire(bytes) {
            return Err(self.refused());
        }
        let mut data = Some(data);
        // The writer's state, locked, and the write to write with it.
        let mut lone = None;
        // A panic in user code inside the map (`Eq`, `Ord`, a `Drop`) must give back the
        // room taken above unless the request was queued (the writer gives it back then):
        // leaked, the room of a few such panics would block every later write.
        let r = catch_unwind(AssertUnwindSafe(|| {
            sh.map.submit(changes, reads, |seq, undo| {
                // Under the map's order lock: no later write is numbered until this one
                // is queued or the writer's state is held (`try_lock`: never waits here).
                if let Some(state) = self.writer_state.as_ref().filter(|_| alone) {
                    if let Some(w) = state.try_lock().filter(|w| w.may_write_alone(seq)) {
                        lone = Some((w, seq, data.take().unwrap_or_default(), undo));
                        return Ok(());
                    }
                }
                let req = Request::Write {
                    seq,
                    data: data.take().unwrap_or_default(),
                    records,
                    undo,
                };
                // The channel is unbounded: this never blocks. It fails only if the writer is
                // gone, and then the map refuses writes already (see `writer.rs`).
                match sh.tx.send(req) {
                    Ok(()) => Ok(()),
                    Err(e) => match e.into_inner() {
                        Request::Write { undo, .. } => Err(undo),
                        _ => Err(UndoList::default()),
                    },
                }
            })
        }));
        // Numbered and applied: written even if dropping something in the map panicked
        // afterwards, or memory would hold a write the file never gets.
        if let Some((mut w, seq, line, undo)) = lone {
            let (ack, wake) = w.write_alone(seq, line, records, undo);
            if wake {
                let _ = sh.tx.send(Request::Wake);
            }
            drop(w);
            // Drops the replaced values (user `Drop`) on the caller's thread, last.
            ack.give(&sh.tracking);
        }
        let r = match r {
            Ok(r) => r,
            Err(panic) => {
                if data.is_some() {
                    sh.tracking.budget.release(1, bytes);
                }
                resume_unwind(panic);
            }
        };
        match r {
            Ok(seq) if data.is_none() => Ok(seq),
            Ok(seq) => {
                // Nothing was queued (a read-only `transact`).
                sh.tracking.budget.release(1, bytes);
                Ok(seq)
            }
            Err(refusal) => {
                sh.tracking.budget.release(1, bytes);
                Err(match refusal {
                    Refusal::Conflict => Error::Conflict { attempts: 1 },
                    Refusal::Refused => self.refused(),
                    Refusal::Closed => Error::Closed,
                })
            }
        }
    }

    fn refused(&self) -> Error {
        match self.shared.tracking.progress.poisoned() {
            Some(cause) => Error::Poisoned { cause },
            None => Error::Closed,
        }
    }

    /// Rebuilds the file now: writes a compact copy of the live data and swaps it in
    /// through `P.backup` and `P.recover`, so one complete copy is durable at every
    /// instant. Blocks until the new file is durable. Reads go on meanwhile; writes queue.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a step fails (the database is then poisoned; reopening recovers);
    /// [`Error::Poisoned`] if an earlier failure stopped writes.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-compact-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// for i in 0..1000 {
    ///     db.set_nowait("counter".into(), i)?;
    /// }
    /// db.compact()?; // the file now holds one line
    /// assert_eq!(db.get("counter"), Some(999));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn compact(&self) -> Result<()> {
        self.writable()?;
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.shared
            .tx
            .send(Request::Compact(reply))
            .map_err(|_| self.refused())?;
        rx.recv().map_err(|_| self.refused())?
    }

    /// Counters: live keys, file length, batches, syncs, rebuilds...
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-stats-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::DbConnection::<u32, u32>::open(dir.join("s.db"))?;
    /// for i in 0..10 {
    ///     db.set_nowait(i, i)?;
    /// }
    /// db.commit()?;
    /// let s = db.stats();
    /// assert_eq!(s.live_keys, 10);
    /// assert!(s.syncs <= 10); // queued writes share syncs
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.shared.tracking.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            live_keys: self.len() as u64,
            file_len: get(&c.file_len),
            batches: get(&c.batches),
            requests: get(&c.requests),
            records_written: get(&c.records_written),
            bytes_written: get(&c.bytes_written),
            syncs: get(&c.syncs),
            rebuilds: get(&c.rebuilds),
            rebuild_longest_lock: Duration::from_nanos(get(&c.rebuild_lock_ns)),
            rebuild_install: Duration::from_nanos(get(&c.rebuild_install_ns)),
            commit_waits: get(&c.commit_waits),
        }
    }

    /// Makes every queued write durable, ends the session (only `P`, and `P.error` if
    /// recovery ever wrote one, remain) and stops the writer thread.
    ///
    /// Dropping a `DbConnection` does the same, but can only ignore errors.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the last writes or the clean-up fail; [`Error::Poisoned`] if an
    /// earlier failure stopped writes (the flag files then stay for the next open's
    /// recovery).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-close-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set_nowait("a".into(), 1)?;
    /// let path = db.path().to_path_buf();
    /// db.close()?; // durable, and only the main file is left
    /// let db = ptvp35::DbConnection::<String, i64>::open(&path)?;
    /// assert_eq!(db.get("a"), Some(1));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        let Some(handle) = self.writer.lock().take() else {
            return Ok(());
        };
        let (reply, rx) = crossbeam_channel::bounded(1);
        let sent = self.shared.tx.send(Request::Shutdown(reply));
        let result = match sent {
            Ok(()) => rx.recv().unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        if handle.join().is_err() {
            return Err(Error::internal(format!(
                "the writer thread of {} panicked",
                self.paths.main.display()
            )));
        }
        result
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> Drop for DbConnection<K, V, M> {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
