//! `ptvp35`: an embedded, synchronous key-value store for Rust programs that do not use
//! async. The whole database lives in memory, behind a read-write lock, so reads run at
//! memory speed; every change is appended to a newline-delimited JSON file by a dedicated
//! writer thread, and the calls that say so return only once the change is durable.
//!
//! It re-creates the Python library of the same name (`DbConnection`, `VirtualConnection`,
//! `TransactionView`, `Transaction`) with threads and RAII guards instead of an event
//! loop, and reads the files that library writes.
//!
//! What it is not: a database for data larger than memory, a query engine, or a store
//! shared by several processes at once (one process owns a database; others get
//! [`Error::Locked`]).
//!
//! # Quick start
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptvp35-doc-lib-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! use ptvp35::DbConnection;
//!
//! let db = DbConnection::<String, serde_json::Value>::open(dir.join("app.db"))?;
//! db.set("greeting".into(), serde_json::json!({"text": "hello"}))?; // durable on return
//! assert_eq!(db.get(&"greeting".into()).unwrap()["text"], "hello");
//!
//! let tx = db.transaction(); // RAII guard: submits on drop, rolls back on panic
//! tx.set_nowait("a".into(), 1.into())?;
//! tx.set_nowait("b".into(), 2.into())?;
//! tx.commit()?; // both, atomically and durably
//! db.close()?;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Durability and recovery
//!
//! For a main file `P` the engine uses six paths: `P` itself, `P.backup` and `P.recover`
//! (used while the file is rebuilt), `P.truncate` and `P.truncate_flag` (how much of `P`
//! is known good), and `P.error` (what recovery cut, never thrown away). Opening runs
//! recovery from whatever state a crash left; the repository's `docs/recovery.md` walks
//! through every crash point and `docs/format.md` describes the file format.

#![deny(missing_docs)]

mod check;
mod codec;
mod connection;
mod delta;
mod error;
mod fs;
mod load;
mod map;
mod recovery;
mod storage;
mod transaction;
mod writer;

/// The transactions guide (`docs/transactions.md`): visibility, durability, nesting,
/// panics and isolation, with examples that run as tests.
#[doc = include_str!("../docs/transactions.md")]
pub mod guide_transactions {}

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

pub use check::{inspect, repair, BadLine, FileState, Health, Inspection, RepairReport};
pub use connection::{CommitHandle, DbConnection, Options, Stats};
pub use delta::{Delta, IntoIter, Key, Value};
pub use error::{Error, Result};
pub use recovery::RecoveryReport;
pub use transaction::{Transaction, TransactionView, VirtualConnection};
