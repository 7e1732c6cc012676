//! One shard of the map: keys placed by a hash computed before any lock, so that
//! nothing that changes the shard can panic half-way.
//!
//! The shard is a `hashbrown::HashTable` of `(key, entry)` pairs: beside the user's pair
//! a slot holds the write's number only (8 bytes), where a table keyed by the hash held
//! the hash too. The table never regrows on its own: [`Shard::reserve`] regrows it
//! here, with every key's hash (user `Hash`) computed before any pair moves, so that a
//! panic leaves it as it was (a table that rehashed with a panicking `Hash` could lose
//! entries). Each change finds its key first (user `Eq`, reading only) and then changes
//! the table with moves alone, in room reserved before the write began; it returns the
//! bucket where it made the change, so that it is reverted exactly, without user code,
//! and a transaction cut short by a panic is rolled back whole.

use hashbrown::HashTable;

use crate::bounds::{Key, Value};
use crate::kind::{Applied, Revert, Table};
use crate::map::{hash_key, Change};

/// One value, with the sequence number of the write that set it (what `transact` checks).
#[derive(Debug, Clone)]
pub struct Entry<V> {
    pub(crate) value: V,
    pub(crate) version: u64,
}

/// Passes a key's precomputed hash through (for a standard `HashMap` keyed by the hash,
/// as the `Delta`'s index is). The top bits chose the shard and are the same for every
/// key in it, so they are rotated away from the bits the table uses.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; this keeps the trait's contract anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = table_hash(n);
    }
}

/// The hash a shard's table places a key by: the top bits chose the shard and are the
/// same for every key in it, so they are rotated away from the low bits (where the
/// table looks) and the top seven (its tag).
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

/// The table hash of a stored key (user `Hash`), for a regrowth.
fn rehash<K: std::hash::Hash, V>(pair: &(K, Entry<V>)) -> u64 {
    table_hash(hash_key(&pair.0))
}

/// Where a change was made in a hash table: the key's hash and its bucket.
#[derive(Debug, Clone, Copy)]
pub struct HashPos {
    hash: u64,
    index: usize,
}

/// What a change let go of: dropped (user `Drop`) only once every lock is released.
#[derive(Debug)]
pub struct Trash<K, V> {
    pub(crate) keys: Vec<K>,
    pub(crate) entries: Vec<Entry<V>>,
}

impl<K, V> Default for Trash<K, V> {
    fn default() -> Self {
        Trash {
            keys: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// One shard's pairs.
#[derive(Debug)]
pub struct Shard<K, V> {
    table: HashTable<(K, Entry<V>)>,
    /// How many times the table regrew (its pairs moved to other buckets).
    generation: u64,
    /// While a write's steps are reverted: each bucket a reverted removal took its pair
    /// from, with the bucket the pair went back to, where they differ (the first free
    /// bucket of its probe sequence may be one that a later step freed). The steps
    /// before it name the first; the pair is in the second. Emptied by the next change.
    moved: Vec<(usize, usize)>,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard {
            table: HashTable::new(),
            generation: 0,
            moved: Vec::new(),
        }
    }
}

impl<K: Eq, V> Shard<K, V> {
    /// The entry of the key that borrows as `q` (runs the user's `Eq` on `Q`).
    pub(crate) fn find_borrowed<Q>(&self, hash: u64, q: &Q) -> Option<&Entry<V>>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.table
            .find(table_hash(hash), |(x, _)| x.borrow() == q)
            .map(|(_, e)| e)
    }

    /// The bucket of `k` (runs the user's `Eq`; changes nothing).
    fn find(&self, hash: u64, k: &K) -> Option<usize> {
        self.table
            .find_bucket_index(table_hash(hash), |(x, _)| x == k)
    }
}

impl<K: Key, V: Value> Shard<K, V> {
    /// Where the pair that a step of the write being reverted found in bucket `index` is
    /// now (see `moved`).
    fn now_at(&self, index: usize) -> usize {
        self.moved
            .iter()
            .rev()
            .find(|m| m.0 == index)
            .map_or(index, |m| m.1)
    }

    /// A change begins: no revert under way.
    fn forget_moves(&mut self) {
        self.moved.clear();
    }

    /// Inserts a pair whose key is absent, in room already reserved: nothing moves.
    fn insert_new(&mut self, hash: u64, k: K, e: Entry<V>) -> usize {
        debug_assert!(self.table.capacity() > self.table.len(), "room reserved");
        self.table
            .insert_unique(table_hash(hash), (k, e), rehash)
            .bucket_index()
    }
}

impl<K: Key, V: Value> Table<K, V> for Shard<K, V> {
    type Pos = HashPos;

    const SPREAD: bool = true;

    const CHEAP_FREEZE: bool = false;

    type Frozen = Vec<(K, V)>;

    fn freeze_all(tables: &[&Self]) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(tables.iter().map(|t| t.len()).sum());
        for t in tables {
            out.extend(t.pairs().map(|(k, e)| (k.clone(), e.value.clone())));
        }
        out
    }

    fn visit(
        frozen: &Vec<(K, V)>,
        f: &mut dyn FnMut(&K, &V) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        frozen.iter().try_for_each(|(k, v)| f(k, v))
    }

    fn release(_pos: HashPos, _trash: &mut Trash<K, V>) {}

    /// Shard order, which `Map::submit` makes itself.
    fn order_bulk(_changes: &mut [Change<K, V>]) {}

    fn thaw(frozen: Vec<(K, V)>) -> Box<dyn DoubleEndedIterator<Item = (K, V)> + Send> {
        Box::new(frozen.into_iter())
    }

    /// Regrows the table if it has room for fewer than `n` more keys: every key's hash
    /// first (user `Hash`: a panic there leaves the table as it was), then every pair
    /// moved into a new table, with no user code. Removals leave tombstones that use up
    /// room too, so a table whose keys would fill at most half of it is rebuilt at its
    /// size (the tombstones gone), and a fuller one at least doubles, as the standard
    /// map does: either way it then has room for many changes, not just `n`.
    fn reserve(&mut self, n: usize) {
        let len = self.table.len();
        if self.table.capacity() - len >= n {
            return;
        }
        // The most keys the table's buckets hold, tombstones or not (its load factor).
        let buckets = self.table.num_buckets();
        let full = if buckets < 8 {
            buckets.saturating_sub(1)
        } else {
            buckets / 8 * 7
        };
        let want = if len + n <= full / 2 {
            full
        } else {
            (len + n).max(full + 1)
        };
        let hashes: Vec<(usize, u64)> = self
            .table
            .iter_buckets()
            .map(|i| {
                let pair = self.table.get_bucket(i).expect("a full bucket");
                (i, rehash(pair))
            })
            .collect();
        let mut grown = HashTable::with_capacity(want);
        for (i, hash) in hashes {
            let (pair, _) = match self.table.get_bucket_entry(i) {
                Ok(entry) => entry.remove(),
                Err(_) => unreachable!("the bucket was full a moment ago"),
            };
            grown.insert_unique(hash, pair, rehash);
        }
        self.table = grown;
        self.generation += 1;
    }

    fn get(&self, hash: u64, k: &K) -> Option<&Entry<V>> {
        self.find_borrowed(hash, k)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Entry<V>)>
    where
        K: 'a,
        V: 'a,
    {
        self.table.iter().map(|(k, e)| (k, e))
    }

    /// A pair's bucket, which stays its own while the table does not regrow.
    type Mark = usize;

    /// Reads the table's control bytes only, not its pairs. The stamp is the number of
    /// regrowths so far.
    fn marks(&self, out: &mut Vec<usize>) -> u64 {
        out.extend(self.table.iter_buckets());
        self.generation
    }

    fn visit_marked(&self, stamp: u64, marks: &[usize], f: &mut dyn FnMut(&K, &Entry<V>)) -> bool {
        if stamp != self.generation {
            return false;
        }
        for &index in marks {
            if let Some((k, e)) = self.table.get_bucket(index) {
                f(k, e);
            }
        }
        true
    }

    /// A panic (in `Eq`) comes before anything changes. The caller reserved room.
    fn set(&mut self, hash: u64, k: K, e: Entry<V>) -> Applied<K, V, HashPos> {
        self.forget_moves();
        match self.find(hash, &k) {
            None => {
                let index = self.insert_new(hash, k, e);
                Applied::Added(HashPos { hash, index })
            }
            Some(index) => {
                // The shard keeps its own copy of the key; the caller's goes back.
                let (_, slot) = self.table.get_bucket_mut(index).expect("just found");
                let old = std::mem::replace(slot, e);
                Applied::Replaced(HashPos { hash, index }, k, old)
            }
        }
    }

    /// A panic (in `Eq`) comes before anything changes.
    fn remove(&mut self, hash: u64, k: K) -> Result<(HashPos, K, Entry<V>), K> {
        self.forget_moves();
        let Some(index) = self.find(hash, &k) else {
            return Err(k);
        };
        let ((key, old), _) = match self.table.get_bucket_entry(index) {
            Ok(entry) => entry.remove(),
            Err(_) => unreachable!("just found"),
        };
        drop(k);
        Ok((HashPos { hash, index }, key, old))
    }

    fn revert(&mut self, step: Revert<K, V, HashPos>, trash: &mut Trash<K, V>) {
        match step {
            Revert::Added(at) => {
                let index = self.now_at(at.index);
                if let Ok(entry) = self.table.get_bucket_entry(index) {
                    let ((k, e), _) = entry.remove();
                    trash.keys.push(k);
                    trash.entries.push(e);
                }
                // The pair that was there is gone: the bucket names none now.
                self.moved.retain(|m| m.0 != at.index);
            }
            Revert::Replaced(at, key, old) => {
                trash.keys.push(key);
                let index = self.now_at(at.index);
                if let Some((_, e)) = self.table.get_bucket_mut(index) {
                    trash.entries.push(std::mem::replace(e, old));
                }
            }
            Revert::Removed(at, key, old) => {
                // The room the removal freed (or the room reserved) takes it back, in
                // the first free bucket of its probe sequence.
                let index = self.insert_new(at.hash, key, old);
                self.moved.retain(|m| m.0 != at.index);
                if index != at.index {
                    self.moved.push((at.index, index));
                }
            }
        }
    }

    fn put_back(&mut self, hash: u64, k: K, e: Entry<V>, trash: &mut Trash<K, V>) -> bool {
        if let Some(index) = self.find(hash, &k) {
            let (_, slot) = self.table.get_bucket_mut(index).expect("just found");
            trash.entries.push(std::mem::replace(slot, e));
            trash.keys.push(k);
            true
        } else {
            self.reserve(1);
            self.insert_new(hash, k, e);
            false
        }
    }

    fn take_out(&mut self, hash: u64, k: K, trash: &mut Trash<K, V>) -> bool {
        match self.remove(hash, k) {
            Ok((_, key, old)) => {
                trash.keys.push(key);
                trash.entries.push(old);
                true
            }
            Err(k) => {
                trash.keys.push(k);
                false
            }
        }
    }

    fn take_out_since(&mut self, since: u64, trash: &mut Trash<K, V>, removed: &mut usize) {
        for (k, e) in self.table.extract_if(|(_, e)| e.version >= since) {
            trash.keys.push(k);
            trash.entries.push(e);
            *removed += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kind::Table;

    /// An entry of version 0 (for the tables' unit tests).
    pub(crate) fn entry(v: u32) -> Entry<u32> {
        Entry {
            value: v,
            version: 0,
        }
    }

    fn pairs(s: &Shard<u32, u32>) -> Vec<(u32, u32)> {
        let mut v: Vec<_> = s.pairs().map(|(k, e)| (*k, e.value)).collect();
        v.sort_unstable();
        v
    }

    fn set(s: &mut Shard<u32, u32>, k: u32, v: u32) -> Revert<u32, u32, HashPos> {
        match s.set(7, k, entry(v)) {
            Applied::Added(at) => Revert::Added(at),
            Applied::Replaced(at, k, old) => Revert::Replaced(at, k, old),
        }
    }

    fn remove(s: &mut Shard<u32, u32>, k: u32) -> Revert<u32, u32, HashPos> {
        let (at, k, old) = s.remove(7, k).expect("present");
        Revert::Removed(at, k, old)
    }

    #[test]
    fn steps_revert_exactly_in_reverse_order_even_with_one_hash() {
        // Every key of one hash: they probe past each other's buckets.
        let mut s: Shard<u32, u32> = Shard::default();
        s.reserve(16);
        let mut steps = Vec::new();
        for k in 0..4 {
            steps.push(set(&mut s, k, k));
        }
        let before = pairs(&s);
        let mut trash = Trash::default();
        let mut more = vec![
            remove(&mut s, 1),
            set(&mut s, 3, 30),
            set(&mut s, 9, 90),
            remove(&mut s, 0),
        ];
        assert!(s.remove(7, 42).is_err());
        assert_eq!(pairs(&s), [(2, 2), (3, 30), (9, 90)]);
        while let Some(step) = more.pop() {
            s.revert(step, &mut trash);
        }
        assert_eq!(pairs(&s), before);
        while let Some(step) = steps.pop() {
            s.revert(step, &mut trash);
        }
        assert!(pairs(&s).is_empty());
    }

    #[test]
    fn put_back_and_take_out_undo_by_key() {
        let mut s: Shard<u32, u32> = Shard::default();
        s.reserve(16);
        let mut trash = Trash::default();
        let _ = s.set(1, 5, entry(5));
        let _ = s.set(1, 6, entry(6));
        assert!(s.put_back(1, 5, entry(50), &mut trash));
        assert!(!s.put_back(2, 8, entry(8), &mut trash));
        assert!(s.take_out(1, 6, &mut trash));
        assert!(!s.take_out(1, 6, &mut trash));
        assert_eq!(pairs(&s), [(5, 50), (8, 8)]);
        assert_eq!(s.get(1, &5).map(|e| e.value), Some(50));
        assert!(s.get(1, &6).is_none());
    }

    #[test]
    fn take_out_since_takes_the_newer_versions_even_with_one_hash() {
        let mut s: Shard<u32, u32> = Shard::default();
        s.reserve(16);
        let versioned = |value, version| Entry { value, version };
        for (k, hash, version) in [(1, 1, 3), (2, 1, 5), (3, 2, 5), (4, 3, 4), (5, 3, 6)] {
            let _ = s.set(hash, k, versioned(k, version));
        }
        let (mut trash, mut removed) = (Trash::default(), 0);
        s.take_out_since(5, &mut trash, &mut removed);
        assert_eq!(removed, 3);
        assert_eq!(pairs(&s), [(1, 1), (4, 4)]);
        assert_eq!(trash.keys.len(), 3);
    }

    /// A key whose `Hash` panics while `PANIC_ON_HASH` is set.
    #[derive(Debug, PartialEq, Eq, Clone, serde::Serialize, serde::Deserialize)]
    struct Touchy(u32);

    static PANIC_ON_HASH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    impl std::hash::Hash for Touchy {
        fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
            assert!(
                !PANIC_ON_HASH.load(std::sync::atomic::Ordering::Relaxed),
                "Touchy's Hash"
            );
            self.0.hash(h);
        }
    }

    #[test]
    fn a_regrowth_whose_hash_panics_leaves_the_table_as_it_was() {
        let mut s: Shard<Touchy, u32> = Shard::default();
        s.reserve(100);
        for k in 0..100 {
            let _ = s.set(hash_key(&Touchy(k)), Touchy(k), entry(k));
        }
        let hashes: Vec<u64> = (0..100).map(|k| hash_key(&Touchy(k))).collect();
        PANIC_ON_HASH.store(true, std::sync::atomic::Ordering::Relaxed);
        let grew = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.reserve(1000)));
        PANIC_ON_HASH.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(grew.is_err());
        assert_eq!(s.len(), 100);
        for (k, h) in (0..100).zip(&hashes) {
            assert_eq!(s.get(*h, &Touchy(k)).map(|e| e.value), Some(k));
        }
        s.reserve(1000);
        assert!(s.table.capacity() >= 1100);
        for (k, h) in (0..100).zip(&hashes) {
            assert_eq!(s.get(*h, &Touchy(k)).map(|e| e.value), Some(k));
        }
    }

    /// Keys removed and added one for one in a nearly full shard: the tombstones the
    /// removals leave use up its room, and each regrowth must make room for many more
    /// changes, not a few (else every few changes rehash the whole shard).
    #[test]
    fn churn_in_a_nearly_full_shard_regrows_it_rarely() {
        let mut s: Shard<u32, u32> = Shard::default();
        s.reserve(100);
        let full = s.table.capacity();
        let below_full = u32::try_from(full - 2).expect("a small table");
        let mut live: std::collections::VecDeque<u32> = (0..below_full).collect();
        for &k in &live {
            s.reserve(1);
            let _ = s.set(hash_key(&k), k, entry(k));
        }
        let mut trash = Trash::default();
        for k in 1_000..21_000u32 {
            let old = live.pop_front().expect("keys left");
            assert!(s.take_out(hash_key(&old), old, &mut trash));
            s.reserve(1);
            let _ = s.set(hash_key(&k), k, entry(k));
            live.push_back(k);
        }
        assert_eq!(s.len(), live.len());
        assert!(
            s.table.capacity() <= 4 * full,
            "grew to {}",
            s.table.capacity()
        );
        // About one regrowth per half a table of changes at most.
        assert!(
            s.generation <= 20_000 / (full as u64 / 4),
            "{} regrowths",
            s.generation
        );
    }

    /// A removal reverted puts its pair back in the first free bucket, which may be one an
    /// earlier step of the same write freed, not its own: the steps before it must still
    /// find the pair (here a replacement of the same key, then the first removal).
    #[test]
    fn a_pair_put_back_in_another_bucket_is_still_reverted_exactly() {
        let mut s: Shard<u32, u32> = Shard::default();
        s.reserve(16);
        let _ = set(&mut s, 1, 10); // X, then A after it in their one probe sequence
        let _ = set(&mut s, 2, 20);
        let before = pairs(&s);
        let mut steps = vec![remove(&mut s, 1), set(&mut s, 2, 21), remove(&mut s, 2)];
        assert!(pairs(&s).is_empty());
        let mut trash = Trash::default();
        while let Some(step) = steps.pop() {
            s.revert(step, &mut trash);
        }
        assert_eq!(pairs(&s), before);
        assert_eq!(s.get(7, &2).map(|e| e.value), Some(20));
    }
}
