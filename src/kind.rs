//! Which in-memory map a database keeps: [`Hashed`] (the default) or [`Ordered`], chosen
//! by the third type parameter of [`DbConnection`](crate::DbConnection). Both sit behind
//! the same engine (shards, versions, the writer, recovery); they differ only in how one
//! shard holds its pairs, which is the [`Table`] trait below.

use std::borrow::Borrow;
use std::hash::Hash;

use crate::bounds::{Key, Value};
use crate::error::Result;
use crate::ordered::OrdTable;
use crate::shard::{Entry, Shard, Trash};

/// The in-memory map of a [`DbConnection`](crate::DbConnection): [`Hashed`] or
/// [`Ordered`]. Sealed: the crate's two kinds are the only ones.
pub trait MapKind<K: Key, V: Value>: sealed::Sealed + Send + Sync + 'static {
    /// How one shard holds its pairs (an implementation detail).
    /// Lookups by `&K` always work, so code generic over the map can call `get(&key)`.
    #[doc(hidden)]
    type Table: Table<K, V> + Find<K, V, K>;
}

/// The default map: a hash map. Point reads are fastest; [`iter`] copies the pairs (a
/// consistent state, in no particular order) and writers wait while it is copied.
///
/// [`iter`]: crate::DbConnection::iter
#[derive(Debug, Clone, Copy)]
pub enum Hashed {}

/// An ordered map, for keys that implement `Ord`: [`range`], [`iter`] in key order,
/// [`first`], [`last`], prefix scans, and rebuilt files with the pairs in key order.
/// Iterators share the map's structure (taking one costs microseconds, whatever the
/// size) and hold no lock.
///
/// [`range`]: crate::DbConnection::range
/// [`iter`]: crate::DbConnection::iter
/// [`first`]: crate::DbConnection::first
/// [`last`]: crate::DbConnection::last
#[derive(Debug, Clone, Copy)]
pub enum Ordered {}

impl<K: Key, V: Value> MapKind<K, V> for Hashed {
    type Table = Shard<K, V>;
}

impl<K: Key + Ord, V: Value> MapKind<K, V> for Ordered {
    type Table = OrdTable<K, V>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Hashed {}
    impl Sealed for super::Ordered {}
}

/// One shard's pairs. Every change finds its key first (user `Eq` or `Ord`, reading only),
/// then makes the change with moves alone, and returns where it made it, so that
/// [`revert`](Table::revert) undoes it exactly without user code.
#[doc(hidden)]
#[allow(unreachable_pub)] // named by `MapKind::Table`, which users never need
pub trait Table<K, V>: Default + Send + Sync + 'static {
    /// Where a change was made, enough to revert it.
    type Pos: Send + std::fmt::Debug;

    /// Whether keys are spread over the map's shards by their hash (the hash table), or
    /// all kept in the first shard (the ordered table: a range is then one walk, not a
    /// merge of every shard, and no user `Hash` runs).
    const SPREAD: bool;

    /// Room for `n` more keys.
    fn reserve(&mut self, n: usize);

    /// Number of keys (about, for the hash table, if 64-bit hashes collide).
    fn len(&self) -> usize;

    /// The entry of `k`, whose hash is `hash`.
    fn get(&self, hash: u64, k: &K) -> Option<&Entry<V>>;

    /// Every pair; in key order for the ordered table.
    fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Entry<V>)>
    where
        K: 'a,
        V: 'a;

    /// Sets `k` (`copy` is a second copy, made before any lock) to `e`.
    fn set(&mut self, hash: u64, k: K, copy: K, e: Entry<V>) -> Step<K, V, Self::Pos>;

    /// Removes `k`; `Err(k)` if it was absent.
    fn remove(&mut self, hash: u64, k: K) -> std::result::Result<Step<K, V, Self::Pos>, K>;

    /// Reverts `step`, the last change to this table not reverted yet. No user code.
    fn revert(&mut self, step: Step<K, V, Self::Pos>, trash: &mut Trash<K, V>);

    /// Puts `e` back as the entry of `k` (undo of a later write). Whether `k` was there.
    fn put_back(&mut self, hash: u64, k: K, e: Entry<V>, trash: &mut Trash<K, V>) -> bool;

    /// Takes `k` out (undo of a later write that added it). Whether it was there.
    fn take_out(&mut self, hash: u64, k: K, trash: &mut Trash<K, V>) -> bool;

    /// Whether [`freeze_all`](Table::freeze_all) costs no copy: a rebuild then copies the
    /// map from a frozen state, in key order, holding no lock.
    const CHEAP_FREEZE: bool;

    /// The state of every shard at one instant, taken while the caller holds every
    /// shard's read lock: the ordered tables' shared leaves, or a copy of the hash tables'
    /// pairs (user `Clone` under the locks).
    type Frozen: Send + 'static;

    /// See [`Frozen`](Table::Frozen).
    fn freeze_all(tables: &[&Self]) -> Self::Frozen;

    /// Calls `f` on every pair of `frozen` (in key order for the ordered tables).
    ///
    /// # Errors
    ///
    /// The first error `f` returns.
    fn visit(frozen: &Self::Frozen, f: &mut dyn FnMut(&K, &V) -> Result<()>) -> Result<()>;

    /// Lets go of what a step that is kept (not reverted) moved out of the table, into
    /// `trash` (dropped once the locks are released).
    fn release(pos: Self::Pos, trash: &mut Trash<K, V>);

    /// The pairs of `frozen`, owned (in key order for the ordered tables).
    fn thaw(frozen: Self::Frozen) -> Box<dyn DoubleEndedIterator<Item = (K, V)> + Send>;
}

/// Lookups by a borrowed form `Q` of the key, as `HashMap::get` takes them: `&str` for
/// `String` keys. The hash map needs `Q: Hash + Eq`; the ordered map also `Q: Ord`.
#[doc(hidden)]
#[allow(unreachable_pub)]
pub trait Find<K, V, Q: ?Sized>: Table<K, V> {
    /// The entry of the key that borrows as `q`, whose hash is `hash`.
    fn find(&self, hash: u64, q: &Q) -> Option<&Entry<V>>;
}

impl<K: Key, V: Value, Q> Find<K, V, Q> for Shard<K, V>
where
    K: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    fn find(&self, hash: u64, q: &Q) -> Option<&Entry<V>> {
        self.find_borrowed(hash, q)
    }
}

impl<K: Key + Ord, V: Value, Q> Find<K, V, Q> for OrdTable<K, V>
where
    K: Borrow<Q>,
    Q: Hash + Eq + Ord + ?Sized,
{
    fn find(&self, _hash: u64, q: &Q) -> Option<&Entry<V>> {
        self.find_borrowed(q)
    }
}

/// How to revert one change (see [`Table`]); `at` is where the table made it.
#[derive(Debug)]
pub enum Step<K, V, P> {
    /// A key was added; `key` is the caller's copy of it.
    Added { hash: u64, key: K, at: P },
    /// The key's entry was replaced; `key` is the caller's copy.
    Replaced {
        hash: u64,
        key: K,
        old: Entry<V>,
        at: P,
    },
    /// The key was removed; `key` is the table's copy.
    Removed {
        hash: u64,
        key: K,
        old: Entry<V>,
        at: P,
    },
}
