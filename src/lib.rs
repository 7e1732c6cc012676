//! `ptvp35`: an embedded, synchronous key-value store for Rust programs that do not use
//! async. The whole database lives in memory, so reads run at memory speed; every change
//! is appended to a newline-delimited JSON file by a dedicated writer thread, and the calls
//! that say so return only once the change is durable. A crash at any instant loses
//! nothing that was acknowledged.
//!
//! It re-creates the Python library of the same name (`DbConnection`, `VirtualConnection`,
//! `TransactionView`, `Transaction`) with threads and RAII guards instead of an event
//! loop, and reads the files that library writes.
//!
//! What it is not: a database for data larger than memory, a query engine, or a store
//! that several processes write at once (one process owns a database; other owners get
//! [`Error::Locked`], other processes may read it with a read-only handle).
//!
//! # Guide
//!
//! ## Open
//!
//! [`DbConnection::open`] opens (or creates) the database whose main file is the given
//! path, repairs whatever a crash left (see [`DbConnection::recovery_report`]) and loads
//! every pair into memory. Keys are any `Serialize + DeserializeOwned + Eq + Hash + Clone`
//! type (strings, integers, tuples, your structs), values any
//! `Serialize + DeserializeOwned + Clone` type, `serde_json::Value` included.
//! [`Options`] holds the tunables.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! use ptvp35::DbConnection;
//!
//! let db = DbConnection::<(String, u32), serde_json::Value>::open(dir.join("app.db"))?;
//! # db.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Read
//!
//! Reads never touch the disk: [`get`](DbConnection::get) clones a value,
//! [`get_with`](DbConnection::get_with) lends it to a closure; both take any borrowed
//! form of the key, as `HashMap::get` does (`db.get("alice")` for `String` keys).
//! [`iter`](DbConnection::iter) yields every pair of one consistent state (all of a
//! transaction or none of it) and holds no lock while your loop runs, so the loop may
//! read and write the database.
//!
//! ## Choosing a map: hashed or ordered
//!
//! The third type parameter of [`DbConnection`] chooses the in-memory map; the engine,
//! the file format, transactions and recovery are the same for both.
//!
//! - [`Hashed`] (the default) is the fastest for point reads and writes. Its
//!   [`iter`](DbConnection::iter) copies the pairs first (writers wait while they are
//!   cloned) and yields them in no particular order.
//! - [`Ordered`], for keys that implement `Ord`, keeps each key in order:
//!   [`range`](DbConnection::range), [`first`](DbConnection::first),
//!   [`last`](DbConnection::last), [`scan_prefix`](DbConnection::scan_prefix) for string
//!   keys, and [`iter`](DbConnection::iter) in key order. An iterator shares the map's
//!   structure instead of copying it: taking one costs microseconds at any size, and
//!   writes made while it lives copy only the parts they change.
//!   [`freeze`](DbConnection::freeze) gives that state as a [`Frozen`] map that lends
//!   references instead of cloning. A rebuild writes the pairs in key order, so the same
//!   data gives the same file. Point reads cost more than in the hash map (a search of
//!   about 20 comparisons at a million keys; `docs/benchmarks.md`).
//!
//! Open an ordered database with [`Options::open_ordered`] or
//! `DbConnection::<K, V, Ordered>::open`; [`Options::open_as`] serves code generic over
//! the map. The repository's `docs/benchmarks.md` compares the two.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib-ord-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! use ptvp35::{DbConnection, Ordered};
//!
//! // Readings keyed by (sensor, time): one sensor's readings are one range.
//! let db = DbConnection::<(String, u64), f64, Ordered>::open(dir.join("readings.db"))?;
//! for t in 0..10 {
//!     db.set_nowait(("boiler".into(), t), 60.0 + t as f64)?;
//!     db.set_nowait(("attic".into(), t), 12.0)?;
//! }
//! db.commit()?;
//! let from = ("boiler".to_string(), 3);
//! let to = ("boiler".to_string(), 6);
//! let window: Vec<f64> = db.range(from..to).map(|(_, v)| v).collect();
//! assert_eq!(window, [63.0, 64.0, 65.0]);
//! assert_eq!(db.last().map(|(k, _)| k), Some(("boiler".to_string(), 9)));
//! # db.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Write
//!
//! [`set`](DbConnection::set) and [`remove`](DbConnection::remove) return once the change
//! is durable; many threads writing at once share one sync per batch (group commit). The
//! `_nowait` forms return as soon as the change is visible, and
//! [`commit`](DbConnection::commit) waits for everything submitted before it.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib2-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let db = ptvp35::DbConnection::<String, serde_json::Value>::open(dir.join("app.db"))?;
//! db.set("greeting".into(), serde_json::json!({"text": "hello"}))?; // durable on return
//! assert_eq!(db.get("greeting").unwrap()["text"], "hello");
//! for i in 0..100 {
//!     db.set_nowait(format!("item{i}"), i.into())?; // visible now
//! }
//! db.commit()?; // all durable
//! # db.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Transactions
//!
//! A [`Delta`] is a set of changes applied as one unit: readers see all of it or none,
//! and after any crash the file holds all of it or none. A [`Transaction`] guard collects
//! changes in a [`TransactionView`] that reads its own writes; it submits on drop, rolls
//! back on panic, and nests. [`DbConnection::transact`] runs a read-modify-write closure
//! and reruns it if another thread changed what it read. The
//! [transactions guide](guide_transactions) explains visibility, nesting and isolation.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib3-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("bank.db"))?;
//! db.set("alice".into(), 100)?;
//! let tx = db.transaction();
//! tx.set_nowait("alice".into(), 70)?;
//! tx.set_nowait("bob".into(), 30)?;
//! tx.commit()?; // both, atomically and durably
//!
//! db.transact(|tx| -> anyhow::Result<()> {
//!     let a = tx.get("alice").unwrap_or(0);
//!     tx.set_nowait("alice".into(), a + 1)?; // no lost update, whatever other threads do
//!     Ok(())
//! })?;
//! # db.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Durability
//!
//! The writer thread appends each batch with one write and makes it durable with one
//! `fdatasync`; the last line of a batch carries a checksum chained over the whole file, so
//! no second sync is needed to record how much of the file is valid. A failed sync poisons
//! the database: writes are refused with [`Error::Poisoned`], reads go on, and reopening
//! recovers. [`close`](DbConnection::close) (or drop) leaves only the main file.
//!
//! ## Recovery
//!
//! For a main file `P` the engine uses six paths: `P` itself, `P.backup` and `P.recover`
//! (used while the file is rebuilt), `P.truncate` and `P.truncate_flag` (how much of `P`
//! is known good), and `P.error` (what recovery cut, never thrown away). Opening runs
//! recovery from whatever state a crash left. A line that is bad where no crash can
//! explain it stops the open with [`Error::Corrupt`], naming the file, line and offset.
//! The repository's `docs/recovery.md` walks through every crash point and
//! `docs/format.md` describes the file format.
//!
//! ## Read-only handles and followers
//!
//! [`Options::read_only`] opens a database without its lock and without creating,
//! changing or removing any file: on a read-only file or directory, beside the process
//! that owns it, or where a crash left it (it shows, in memory, the state that recovery
//! would produce; recovery itself stays for the owner). The handle shows whole batches
//! only, those the truncate count or the batch checksums vouch for: never the zeros the
//! owner preallocated, never a torn tail, never part of a transaction. Every write
//! returns [`Error::ReadOnly`]; there is no writer thread.
//!
//! [`DbConnection::refresh`] brings in what the owner appended since (or reloads after a
//! rebuild), so a process can follow another's database: a dashboard, a cache, a standby.
//! [`DbConnection::refresh_with`] also reports each change, for a change feed.
//! [`DbConnection::backup_to`] writes a consistent, compacted copy while the database
//! stays in use, from a read-only handle or from the owner. `examples/follower.rs` runs
//! an owner and a follower side by side.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib-ro-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("shared.db");
//! use ptvp35::{DbConnection, Error, Options};
//!
//! let owner = DbConnection::<String, i64>::open(&path)?; // in another process, usually
//! owner.set("visits".into(), 1)?;
//!
//! let follower: DbConnection<String, i64> = Options::new().read_only(true).open(&path)?;
//! assert_eq!(follower.get("visits"), Some(1));
//! assert!(matches!(follower.set("visits".into(), 0), Err(Error::ReadOnly { .. })));
//!
//! owner.set("visits".into(), 2)?;
//! let news = follower.refresh()?; // whole batches appended since
//! assert_eq!((news.records, follower.get("visits")), (1, Some(2)));
//!
//! follower.backup_to(dir.join("copy.db"))?; // consistent, compacted, durable
//! # owner.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Checking, repairing, and the `ptvp35` tool
//!
//! [`inspect`] reads a database's six files without changing anything and tells what
//! opening would do; [`repair`] moves lines that do not decode to `P.error` and keeps the
//! rest, crash-safely. The `ptvp35` command (`cargo install ptvp35-cli`) wraps both, with
//! `check`, `recover`, `dump`, `get`, `set`, `rm`, `compact`, `repair`, `stats`,
//! `backup` and `tail`; `check`, `stats`, `dump`, `get`, `backup` and `tail` read a
//! database in use, with read permission only.

#![deny(missing_docs)]

mod backup;
mod bounds;
mod codec;
mod connection;
mod delta;
mod error;
mod follow;
mod fs;
mod inspect;
mod iter;
mod kind;
mod load;
mod map;
mod ordered;
mod plan;
mod progress;
mod recovery;
mod shard;
mod snapshot;
mod storage;
#[cfg(test)]
mod test_dir;
mod transaction;
mod writer;

/// The transactions guide (`docs/transactions.md`): visibility, durability, nesting,
/// panics and isolation, with examples that run as tests.
#[doc = include_str!("../docs/transactions.md")]
pub mod guide_transactions {}

/// The filesystem seam, public but hidden and outside semver: the workspace's test kit
/// (`testkit/`) puts a simulated, crashable filesystem under the engine through it.
#[doc(hidden)]
pub use fs::{FileMeta, Fs, FsFile, RealFs};

// The benchmark's hook into the commit path's encoding (outside the API and semver).
#[doc(hidden)]
pub use codec::bench_encode_set;

pub use bounds::{Key, Value};
pub use connection::{
    CommitHandle, DbConnection, Options, Stats, EXTEND_CHUNK, MAX_DEFAULT_PARSE_THREADS,
};
pub use delta::{Delta, IntoIter};
pub use error::{Error, Result};
pub use follow::Refreshed;
#[doc(hidden)]
pub use inspect::repair_on;
pub use inspect::{
    inspect, inspect_unlocked, repair, BadLine, FileState, Health, Inspection, RepairReport,
    SixFiles,
};
pub use iter::{Frozen, FrozenRange, Iter};
pub use kind::{Hashed, MapKind, Ordered};
pub use recovery::{Cut, RecoveryReport};
pub use snapshot::{Entry, Snapshot};
pub use transaction::{Transaction, TransactionView, VirtualConnection};
