//! `VirtualConnection`, the `TransactionView` (a delta over a parent), the RAII
//! `Transaction` guard, and `DbConnection::transact` for isolated read-modify-write.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;

use parking_lot::Mutex;

use crate::bounds::{Key, Value};
use crate::connection::{CommitHandle, DbConnection};
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::kind::MapKind;
use crate::map::ReadSet;

/// What the root view of [`DbConnection::transact`] needs of its database, whichever map
/// it keeps.
pub(crate) trait Tracker<K: Key, V: Value> {
    /// The value of `key` and the number of the write that set it.
    fn get_versioned(&self, key: &K) -> (Option<V>, Option<u64>);
    /// The main file's path, for errors.
    fn path(&self) -> &std::path::Path;
}

impl<K: Key, V: Value, M: MapKind<K, V>> Tracker<K, V> for DbConnection<K, V, M> {
    fn get_versioned(&self, key: &K) -> (Option<V>, Option<u64>) {
        DbConnection::get_versioned(self, key)
    }

    fn path(&self) -> &std::path::Path {
        DbConnection::path(self)
    }
}

/// The connection-like interface shared by [`DbConnection`] and [`TransactionView`], so a
/// view can sit on a database or on another view, to any depth.
///
/// The Python library's `loop()` has no counterpart: there is no event loop here, and
/// every blocking call runs on the caller's thread.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-vc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
/// use ptvp35::VirtualConnection;
///
/// /// Works on a database and on any transaction view alike.
/// fn deposit(conn: &dyn VirtualConnection<String, i64>, amount: i64) -> ptvp35::Result<()> {
///     let mut delta = ptvp35::Delta::new();
///     let balance = conn.get(&"balance".to_string()).unwrap_or(0);
///     delta.set("balance".into(), balance + amount)?;
///     conn.submit_transaction(delta)
/// }
/// deposit(&db, 10)?;
/// let tx = db.transaction();
/// deposit(&*tx, 5)?;
/// assert_eq!(tx.get("balance"), Some(15));
/// tx.commit()?;
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub trait VirtualConnection<K: Key, V: Value> {
    /// The value of `key` as this connection sees it.
    fn get(&self, key: &K) -> Option<V>;

    /// Passes `delta` on without waiting: a database applies and queues it; a view merges
    /// it into its own delta.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if the database refuses writes.
    fn submit_transaction(&self, delta: Delta<K, V>) -> Result<()>;

    /// Submits `delta` (a view: together with its own) down to the database and returns a
    /// handle to wait until it is durable.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if the database refuses writes.
    fn submit_transaction_request(&self, delta: Delta<K, V>) -> Result<CommitHandle>;

    /// Submits `delta` (a view: together with its own) and waits until it is durable.
    ///
    /// # Errors
    ///
    /// As [`CommitHandle::wait`].
    fn commit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        self.submit_transaction_request(delta)?.wait()
    }

    /// As [`submit_transaction`](Self::submit_transaction); a database also returns a
    /// handle on the write (a view merges, and returns `None`).
    #[doc(hidden)]
    fn submit_numbered(&self, delta: Delta<K, V>) -> Result<Option<CommitHandle>> {
        self.submit_transaction(delta).map(|()| None)
    }

    /// A new transaction over this connection.
    fn transaction(&self) -> Transaction<'_, K, V>
    where
        Self: Sized,
    {
        Transaction::new(self)
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> VirtualConnection<K, V> for DbConnection<K, V, M> {
    fn get(&self, key: &K) -> Option<V> {
        // By `&K`, so for every map kind (the inherent `get` takes any borrowed form).
        self.shared.map.read(key, |e| e.map(|e| e.value.clone()))
    }

    fn submit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        DbConnection::submit_transaction(self, delta)
    }

    fn submit_transaction_request(&self, delta: Delta<K, V>) -> Result<CommitHandle> {
        DbConnection::submit_transaction_request(self, delta)
    }

    fn commit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        DbConnection::commit_transaction(self, delta)
    }

    fn submit_numbered(&self, delta: Delta<K, V>) -> Result<Option<CommitHandle>> {
        DbConnection::submit_transaction_request(self, delta).map(Some)
    }
}

/// How a view reaches the keys it does not hold itself.
enum Parent<'p, K: Key, V: Value> {
    Connection(&'p dyn VirtualConnection<K, V>),
    /// The root view of [`DbConnection::transact`]: reads record the version they saw.
    Tracked {
        db: &'p dyn Tracker<K, V>,
        reads: Mutex<ReadSet<K>>,
    },
}

/// A connection-like view holding a delta (key → new value or removal) over a parent.
///
/// `get` reads the delta first, then the parent, so a transaction reads its own writes.
/// `set_nowait` and `remove_nowait` change only the delta; [`submit`](Self::submit) passes
/// it to the parent, [`commit`](Self::commit) submits it down to the database and waits
/// until it is durable. There is no `set`: setting one value and waiting for it is what
/// [`DbConnection::set`] is for; in a view that is `set_nowait`, then `commit`.
///
/// Methods take `&self`, so a nested [`Transaction`] can borrow its parent view while the
/// parent stays usable.
pub struct TransactionView<'p, K: Key, V: Value> {
    parent: Parent<'p, K, V>,
    delta: Mutex<Delta<K, V>>,
    /// The last write this view's [`submit`](Self::submit) passed to a database: its
    /// commit waits for it too.
    submitted: Mutex<Option<CommitHandle>>,
}

impl<K: Key, V: Value> fmt::Debug for TransactionView<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionView")
            .field("changes", &self.delta.lock().len())
            .finish_non_exhaustive()
    }
}

impl<'p, K: Key, V: Value> TransactionView<'p, K, V> {
    /// A view with an empty delta over `parent`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewnew-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let view = ptvp35::TransactionView::new(&db);
    /// view.set_nowait("a".into(), 1)?;
    /// view.commit()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(parent: &'p dyn VirtualConnection<K, V>) -> Self {
        TransactionView {
            parent: Parent::Connection(parent),
            delta: Mutex::new(Delta::new()),
            submitted: Mutex::new(None),
        }
    }

    fn tracked(db: &'p dyn Tracker<K, V>) -> Self {
        TransactionView {
            parent: Parent::Tracked {
                db,
                reads: Mutex::new(ReadSet::new()),
            },
            delta: Mutex::new(Delta::new()),
            submitted: Mutex::new(None),
        }
    }

    /// The value of `key`: this view's change if it has one, else the parent's value.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewget-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// let tx = db.transaction();
    /// tx.set_nowait("b".into(), 2)?;
    /// assert_eq!(tx.get("a"), Some(1)); // from the database
    /// assert_eq!(tx.get("b"), Some(2)); // from the view's own delta
    /// drop(tx);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(change) = self.delta.lock().get(key) {
            return change.cloned();
        }
        let key = key.to_owned();
        match &self.parent {
            Parent::Connection(p) => p.get(&key),
            Parent::Tracked { db, reads } => {
                let (value, version) = db.get_versioned(&key);
                reads.lock().entry(key).or_insert(version);
                value
            }
        }
    }

    /// Sets `key` to `value` in this view's delta; nothing outside the view sees it yet.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the key or value cannot be stored; the delta is unchanged
    /// and the view stays usable.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewset-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// assert_eq!(db.get("a"), None); // only the view sees it
    /// tx.commit()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_nowait(&self, key: K, value: V) -> Result<()> {
        self.delta.lock().set(key, value)
    }

    /// Removes `key` in this view's delta.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] if the key cannot be stored; the delta is unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewremove-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// let tx = db.transaction();
    /// tx.remove_nowait("a")?;
    /// assert_eq!(tx.get("a"), None);
    /// tx.commit()?;
    /// assert!(db.is_empty());
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove_nowait<Q>(&self, key: &Q) -> Result<()>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        self.delta.lock().remove(key)
    }

    /// Passes the whole delta to the parent (a database applies it at once, as one unit)
    /// and clears it. Does not wait for the disk.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if the database refuses writes; the delta is dropped then.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewsubmit-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.submit()?; // visible now, durable later
    /// assert_eq!(db.get("a"), Some(1));
    /// tx.rollback(); // nothing left to discard
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn submit(&self) -> Result<()> {
        let p = self.connection("submit")?;
        let delta = std::mem::take(&mut *self.delta.lock());
        if delta.is_empty() {
            return Ok(());
        }
        if let Some(h) = p.submit_numbered(delta)? {
            *self.submitted.lock() = Some(h);
        }
        Ok(())
    }

    /// The parent, unless this is the root view of [`DbConnection::transact`], which
    /// has no way to commit or submit on its own: `transact` commits its changes when
    /// the closure returns, with the conflict check.
    fn connection(&self, what: &str) -> Result<&'p dyn VirtualConnection<K, V>> {
        match &self.parent {
            Parent::Connection(p) => Ok(*p),
            Parent::Tracked { db, .. } => Err(Error::Unsupported {
                path: db.path().to_path_buf(),
                reason: format!(
                    "{what} inside `transact`: its changes are committed when the closure \
                     returns; nested transactions submit into it on drop"
                ),
            }),
        }
    }

    /// A handle on `h` or on what this view submitted before, whichever comes later.
    fn after_submitted(&self, h: CommitHandle) -> CommitHandle {
        match self.submitted.lock().take() {
            Some(earlier) => h.or_later(earlier),
            None => h,
        }
    }

    /// Merges `delta` into this view's delta (a view's form of "submit").
    ///
    /// # Errors
    ///
    /// None today; the `Result` matches [`VirtualConnection`].
    pub fn submit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        self.delta.lock().merge(delta);
        Ok(())
    }

    /// Merges `delta` into this view's delta, then submits the whole of it down to the
    /// database, and returns a handle to wait for durability.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if the database refuses writes.
    pub fn submit_transaction_request(&self, delta: Delta<K, V>) -> Result<CommitHandle> {
        let p = self.connection("submit_transaction_request")?;
        let mut own = std::mem::take(&mut *self.delta.lock());
        own.merge(delta);
        let h = p.submit_transaction_request(own)?;
        Ok(self.after_submitted(h))
    }

    /// Submits this view's delta down to the database and waits until it is durable.
    ///
    /// In a nested view this commits the ancestors' deltas with it: the parent view's
    /// `commit_transaction` merges the child's delta into its own and commits the whole.
    ///
    /// # Errors
    ///
    /// As [`CommitHandle::wait`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewcommit-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.commit()?; // submitted and durable
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit(&self) -> Result<()> {
        self.commit_transaction(Delta::new())
    }

    /// Merges `delta` into this view's delta and commits the whole (see
    /// [`commit`](Self::commit)).
    ///
    /// # Errors
    ///
    /// As [`CommitHandle::wait`].
    pub fn commit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        let p = self.connection("commit")?;
        let mut own = std::mem::take(&mut *self.delta.lock());
        own.merge(delta);
        let earlier = self.submitted.lock().take();
        p.commit_transaction(own)?;
        earlier.map_or(Ok(()), CommitHandle::wait)
    }

    /// Drops every change in this view's delta.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-viewrollback-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.rollback();
    /// assert!(db.is_empty());
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollback(&self) {
        self.delta.lock().clear();
    }

    /// A nested transaction over this view: it submits into this view's delta.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-nested-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let outer = db.transaction();
    /// outer.set_nowait("a".into(), 1)?;
    /// {
    ///     let inner = outer.transaction();
    ///     inner.set_nowait("b".into(), 2)?;
    /// } // inner submits into outer, not into the database
    /// assert_eq!(db.get("b"), None);
    /// outer.commit()?; // both
    /// assert_eq!(db.get("b"), Some(2));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn transaction(&self) -> Transaction<'_, K, V> {
        Transaction::new(self)
    }

    fn take_delta(&self) -> Delta<K, V> {
        std::mem::take(&mut *self.delta.lock())
    }

    fn take_reads(&self) -> ReadSet<K> {
        match &self.parent {
            Parent::Tracked { reads, .. } => std::mem::take(&mut *reads.lock()),
            Parent::Connection(_) => ReadSet::new(),
        }
    }
}

impl<K: Key, V: Value> VirtualConnection<K, V> for TransactionView<'_, K, V> {
    fn get(&self, key: &K) -> Option<V> {
        TransactionView::get(self, key)
    }

    fn submit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        TransactionView::submit_transaction(self, delta)
    }

    fn submit_transaction_request(&self, delta: Delta<K, V>) -> Result<CommitHandle> {
        TransactionView::submit_transaction_request(self, delta)
    }

    fn commit_transaction(&self, delta: Delta<K, V>) -> Result<()> {
        TransactionView::commit_transaction(self, delta)
    }
}

/// The RAII transaction guard: derefs to its [`TransactionView`].
///
/// - Dropped normally, it **submits** its delta to its parent (visible at once, durable
///   later; a database parent's error is lost then, so call [`commit`](Self::commit) to
///   see it).
/// - Dropped while the thread panics, it **rolls back**.
/// - [`commit`](Self::commit) submits and waits until durable; [`rollback`](Self::rollback)
///   discards.
///
/// A nested guard submits into its parent view's delta, so a rollback (or panic) of the
/// parent discards the child's changes too.
///
/// Guards are atomic and read their own writes, but they do not isolate: two threads that
/// read a value and write it back through guards can lose an update (last writer wins).
/// Use [`DbConnection::transact`] for read-modify-write.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-tx-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use ptvp35::DbConnection;
///
/// let db = DbConnection::<String, i64>::open(dir.join("tx.db"))?;
/// {
///     let tx = db.transaction();
///     tx.set_nowait("a".into(), 1)?;
///     tx.set_nowait("b".into(), 2)?;
///     assert_eq!(db.get("a"), None); // not submitted yet
/// } // dropped: submitted, both at once
/// assert_eq!(db.get("a"), Some(1));
///
/// let tx = db.transaction();
/// tx.set_nowait("c".into(), 3)?;
/// {
///     let inner = tx.transaction(); // nested: submits into `tx`
///     inner.set_nowait("d".into(), 4)?;
/// }
/// assert_eq!(tx.get("d"), Some(4));
/// tx.commit()?; // c and d, durable
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub struct Transaction<'p, K: Key, V: Value> {
    view: TransactionView<'p, K, V>,
    done: bool,
}

impl<K: Key, V: Value> fmt::Debug for Transaction<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl<'p, K: Key, V: Value> Transaction<'p, K, V> {
    /// A new guard over `parent`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-txnew-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = ptvp35::Transaction::new(&db); // what db.transaction() does
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.commit()?;
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(parent: &'p dyn VirtualConnection<K, V>) -> Self {
        Transaction {
            view: TransactionView::new(parent),
            done: false,
        }
    }

    /// Submits the delta down to the database and waits until it is durable. In a nested
    /// guard, the ancestors' deltas go with it.
    ///
    /// # Errors
    ///
    /// As [`CommitHandle::wait`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-txcommit-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.commit()?;
    /// assert_eq!(db.get("a"), Some(1));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.view.commit()
    }

    /// Discards the delta.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-txrollback-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// let tx = db.transaction();
    /// tx.set_nowait("a".into(), 1)?;
    /// tx.rollback();
    /// assert!(db.is_empty());
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollback(mut self) {
        self.done = true;
        self.view.rollback();
    }
}

impl<'p, K: Key, V: Value> Deref for Transaction<'p, K, V> {
    type Target = TransactionView<'p, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.view
    }
}

impl<K: Key, V: Value> Drop for Transaction<'_, K, V> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::thread::panicking() {
            self.view.rollback();
        } else {
            // Errors cannot leave `drop`; `commit` reports them.
            let _ = self.view.submit();
        }
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> DbConnection<K, V, M> {
    /// A new transaction guard over this database (see [`Transaction`]).
    pub fn transaction(&self) -> Transaction<'_, K, V> {
        Transaction::new(self)
    }

    /// Runs `f` in a view and commits its changes only if none of the keys it read have
    /// changed since; otherwise runs it again (up to [`Options::transact_attempts`]
    /// times). Returns once the change is durable.
    ///
    /// This is the safe form of read-modify-write: two threads moving money between the
    /// same accounts never lose an update. `f` may run more than once, so it should not
    /// have side effects outside the view. If `f` returns an error, nothing is submitted
    /// and the error is returned as is.
    ///
    /// [`Options::transact_attempts`]: crate::Options::transact_attempts
    ///
    /// # Errors
    ///
    /// `f`'s own error; [`Error::Conflict`] (converted into `E`) after too many attempts;
    /// any error of the commit.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-transact-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::DbConnection::<String, i64>::open(dir.join("bank.db"))?;
    /// db.set("alice".into(), 100)?;
    /// let moved = db.transact(|tx| -> anyhow::Result<i64> {
    ///     let a = tx.get("alice").unwrap_or(0);
    ///     let b = tx.get("bob").unwrap_or(0);
    ///     tx.set_nowait("alice".into(), a - 30)?;
    ///     tx.set_nowait("bob".into(), b + 30)?;
    ///     Ok(30)
    /// })?;
    /// assert_eq!(moved, 30);
    /// assert_eq!(db.get("bob"), Some(30));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn transact<R, E, F>(&self, mut f: F) -> Result<R, E>
    where
        F: FnMut(&TransactionView<'_, K, V>) -> Result<R, E>,
        E: From<Error>,
    {
        let attempts = self.transact_attempts();
        for _ in 0..attempts {
            let view = TransactionView::tracked(self);
            let r = f(&view)?;
            let delta = view.take_delta();
            let reads = view.take_reads();
            let changes = !delta.is_empty();
            match self.submit_delta(delta, Some(&reads), true) {
                Ok(seq) => {
                    // With no change, what it read is what must be durable.
                    let seq = if changes {
                        seq
                    } else {
                        reads.values().flatten().copied().max().unwrap_or(0)
                    };
                    self.handle(seq).wait()?;
                    return Ok(r);
                }
                Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict { attempts }.into())
    }
}
