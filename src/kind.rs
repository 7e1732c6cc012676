//! Which in-memory map a database keeps: [`Hashed`] (the default) or [`Ordered`], chosen
//! by the third type parameter of [`DbConnection`](crate::DbConnection). Both sit behind
//! the same engine (shards, versions, the writer, recovery); they differ only in how one
//! shard holds its pairs, which is the [`Table`] trait below.

use std::borrow::Borrow;
use std::hash::Hash;

use crate::bounds::{Key, Value};
use crate::error::Result;
use crate::map::Change;
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
    /// merge of every shard).
    const SPREAD: bool;

    /// Room for `n` more keys, so that the next `n` changes move no pair that is there
    /// (the hash table's buckets stay put, which [`revert`](Table::revert) relies on).
    /// The hash table may run the user's `Hash` here; a panic leaves it as it was.
    fn reserve(&mut self, n: usize);

    /// Number of keys.
    fn len(&self) -> usize;

    /// The entry of `k`, whose hash is `hash`.
    fn get(&self, hash: u64, k: &K) -> Option<&Entry<V>>;

    /// Every pair; in key order for the ordered table.
    fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Entry<V>)>
    where
        K: 'a,
        V: 'a;

    /// Where a pair is, in a form that stays true while the table changes: a copy that
    /// takes the table's lock once per piece notes every pair first
    /// ([`marks`](Table::marks)), then copies the pairs still at those marks a piece at a
    /// time ([`visit_marked`](Table::visit_marked)).
    type Mark: Send;

    /// Appends a mark for every pair (the hash table: each pair's bucket; the ordered
    /// table: a clone of each key, user `Clone`). Returns the stamp to give
    /// [`visit_marked`](Table::visit_marked) with them.
    fn marks(&self, out: &mut Vec<Self::Mark>) -> u64;

    /// Calls `f` on every pair at one of `marks` (taken with `stamp`) now: each pair once
    /// if the marks are distinct; none for a mark whose pair is gone. Returns `false`,
    /// having called `f` on nothing, if the marks no longer lead anywhere (the hash table
    /// regrew since they were taken): the caller takes them again.
    fn visit_marked(
        &self,
        stamp: u64,
        marks: &[Self::Mark],
        f: &mut dyn FnMut(&K, &Entry<V>),
    ) -> bool;

    /// Sets `k` to `e`. A panic (user `Eq` or `Ord`) comes before anything changes.
    fn set(&mut self, hash: u64, k: K, e: Entry<V>) -> Applied<K, V, Self::Pos>;

    /// Removes `k`: where, the table's copy of the key and its entry; `Err(k)` if it was
    /// absent. A panic (user `Eq` or `Ord`) comes before anything changes.
    #[allow(clippy::type_complexity)] // three plain parts, named at the one call
    fn remove(&mut self, hash: u64, k: K) -> std::result::Result<(Self::Pos, K, Entry<V>), K>;

    /// Reverts `step`, the last change to this table not reverted yet. No user code.
    fn revert(&mut self, step: Revert<K, V, Self::Pos>, trash: &mut Trash<K, V>);

    /// Puts `e` back as the entry of `k` (undo of a later write). Whether `k` was there.
    fn put_back(&mut self, hash: u64, k: K, e: Entry<V>, trash: &mut Trash<K, V>) -> bool;

    /// Takes `k` out (a removal read from the file at open). Whether it was there.
    fn take_out(&mut self, hash: u64, k: K, trash: &mut Trash<K, V>) -> bool;

    /// Takes out every pair whose version is `since` or later (undo of the writes from
    /// `since` on that added keys, once the entries they replaced are back), counting them
    /// in `removed` as it goes. Runs no user code but `Clone`, for the ordered table's
    /// leaves that a frozen state shares; a panic there leaves the rest of the table as
    /// it is.
    fn take_out_since(&mut self, since: u64, trash: &mut Trash<K, V>, removed: &mut usize);

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

    /// Puts the changes of a large write in the order this table applies fastest, before
    /// any lock (user code may run and panic: nothing has changed yet). The changes of
    /// one key keep their order.
    fn order_bulk(changes: &mut [Change<K, V>]);

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

/// What [`Table::set`] did, and where (`P`).
#[derive(Debug)]
pub enum Applied<K, V, P> {
    /// The key was added; the table holds the caller's key.
    Added(P),
    /// The key's entry was replaced: the caller's key (not needed) and the old entry.
    Replaced(P, K, Entry<V>),
}

/// How to revert one change (see [`Table`]), at the place `P` where the table made it,
/// with what the change took out for the two kinds that took something out.
#[derive(Debug)]
pub enum Revert<K, V, P> {
    /// A key was added.
    Added(P),
    /// The key's entry was replaced by another: `K` is any copy of the key, `Entry` the
    /// old entry.
    Replaced(P, K, Entry<V>),
    /// The key was removed: the table's key and its entry.
    Removed(P, K, Entry<V>),
}

/// About how many bytes of lines a copy of the map hands its sink at a time.
pub(crate) const SINK_CHUNK: usize = 1 << 20;

/// Encodes every pair of `frozen` as record lines (in key order for the ordered table) and
/// hands them to `sink` in chunks of about 1 MiB: a rebuild's copy and a backup.
///
/// # Errors
///
/// The first error of the encoding or of `sink`.
pub(crate) fn encode_all<K: Key, V: Value, T: Table<K, V>>(
    frozen: &T::Frozen,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(SINK_CHUNK + 4096);
    T::visit(frozen, &mut |k, v| {
        crate::codec::encode_set(k, v, &mut buf)?;
        if buf.len() >= SINK_CHUNK {
            sink(&buf)?;
            buf.clear();
        }
        Ok(())
    })?;
    sink(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::hash_key;
    use crate::shard::tests::entry;

    /// Marks taken, then keys removed, added and changed: the marks lead to the pairs
    /// still there, each once, with their values now, and to nothing else but keys added
    /// since (the hash table: a new key may take a bucket a removed one freed).
    fn marks_lead_to_the_pairs_still_there<T: Table<u32, u32>>() {
        let mut t = T::default();
        t.reserve(1100);
        for k in 0..1000u32 {
            t.set(hash_key(&k), k, entry(k));
        }
        let mut marks = Vec::new();
        let stamp = t.marks(&mut marks);
        assert_eq!(marks.len(), 1000);
        for k in (0..1000u32).step_by(3) {
            assert!(t.remove(hash_key(&k), k).is_ok());
        }
        for k in (1..1000u32).step_by(3) {
            t.set(hash_key(&k), k, entry(k + 5000));
        }
        for k in 1000..1100u32 {
            t.set(hash_key(&k), k, entry(k));
        }
        let mut seen = Vec::new();
        for some in marks.chunks(7) {
            assert!(t.visit_marked(stamp, some, &mut |k, e| seen.push((*k, e.value))));
        }
        seen.sort_unstable();
        let added: Vec<(u32, u32)> = seen.iter().copied().filter(|p| p.0 >= 1000).collect();
        assert!(added.iter().all(|&(k, v)| k == v));
        assert!(added.windows(2).all(|w| w[0] < w[1]));
        seen.retain(|p| p.0 < 1000);
        let expected: Vec<(u32, u32)> = (0..1000u32)
            .filter(|k| k % 3 != 0)
            .map(|k| (k, if k % 3 == 1 { k + 5000 } else { k }))
            .collect();
        assert_eq!(seen, expected);
    }

    /// A hash table that regrew after its marks were taken refuses them, visiting nothing.
    #[test]
    fn hash_table_marks_go_stale_when_it_regrows() {
        let mut t = Shard::<u32, u32>::default();
        t.reserve(10);
        for k in 0..10u32 {
            t.set(hash_key(&k), k, entry(k));
        }
        let mut marks = Vec::new();
        let stamp = t.marks(&mut marks);
        let mut seen = 0;
        assert!(t.visit_marked(stamp, &marks, &mut |_, _| seen += 1));
        assert_eq!(seen, 10);
        t.reserve(1000);
        assert!(!t.visit_marked(stamp, &marks, &mut |_, _| seen += 1));
        assert_eq!(seen, 10);
        marks.clear();
        let stamp = t.marks(&mut marks);
        assert!(t.visit_marked(stamp, &marks, &mut |_, _| seen += 1));
        assert_eq!(seen, 20);
    }

    #[test]
    fn hash_table_marks_lead_to_the_pairs_still_there() {
        marks_lead_to_the_pairs_still_there::<Shard<u32, u32>>();
    }

    #[test]
    fn ordered_table_marks_lead_to_the_pairs_still_there() {
        marks_lead_to_the_pairs_still_there::<OrdTable<u32, u32>>();
    }
}
