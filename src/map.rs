//! The main-memory database: a map split into shards, each behind its own read-write
//! lock, and the one path by which writes enter it, numbered and queued in the order they
//! were applied.
//!
//! Sharding keeps readers on different keys off each other's cache lines, and lets a
//! rebuild copy the map one shard at a time while readers and writers go on.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::bounds::{Key, Value};
use crate::codec::Record;
use crate::kind::{Find, Step, Table};
pub(crate) use crate::shard::Entry;
use crate::shard::{Shard, Trash};

/// Number of shards. A power of two; 256 keeps a shard of a million-key database small
/// enough (about 4,000 keys) to be copied in about a millisecond.
pub(crate) const SHARDS: usize = 256;

/// Keys a `transact` closure read, with the version it saw (`None`: absent).
pub(crate) type ReadSet<K> = HashMap<K, Option<u64>>;

/// What undoes one write once other writes may have followed it: the keys it added (to
/// take out) and the entries it replaced or removed (to put back), each with its hash. A
/// write touches each key once, so the order does not matter.
#[derive(Debug)]
pub(crate) struct UndoList<K, V> {
    added: Vec<(u64, K)>,
    replaced: Vec<(u64, K, Entry<V>)>,
}

impl<K, V> Default for UndoList<K, V> {
    fn default() -> Self {
        UndoList {
            added: Vec::new(),
            replaced: Vec::new(),
        }
    }
}

/// foldhash with a random seed per map: several times faster than the standard `SipHash`
/// on short keys, and seeded so that chosen keys cannot be made to collide without it.
type KeyHashing = foldhash::fast::RandomState;

/// A shard's lock on a cache line of its own, so that readers of different shards do not
/// slow each other down.
#[repr(align(128))]
struct Padded<T>(RwLock<T>);

/// A change made in the shard at the given index, and how to revert it.
type ShardStep<K, V, T> = (usize, Step<K, V, <T as Table<K, V>>::Pos>);

/// Why a submission did not go in.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A key that was read has changed since.
    Conflict,
    /// The writer refuses writes (an earlier failure).
    Refused,
    /// The writer is gone.
    Closed,
}

struct Order {
    /// Sequence number of the last submitted write.
    seq: u64,
    /// Set after a failure: every later submission is refused.
    refuse: bool,
}

pub(crate) struct Map<K, V, T = Shard<K, V>> {
    shards: Box<[Padded<T>]>,
    hasher: KeyHashing,
    order: Mutex<Order>,
    live: AtomicUsize,
    _pairs: std::marker::PhantomData<fn() -> (K, V)>,
}

/// A set of shard indices, iterated in ascending order (the order locks are taken in).
#[derive(Default)]
struct ShardSet([u64; SHARDS / 64]);

impl ShardSet {
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SHARDS).filter(|&i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }
}

/// One change, prepared before any lock: the user's `Hash` and `Clone` have run.
struct Prepared<K, V> {
    hash: u64,
    key: K,
    /// For a set: the second copy of the key (one in the map, one in the undo list).
    copy: Option<K>,
    value: Option<V>,
}

/// The map is filled at open in this many parts, each on its own thread.
const LOAD_PARTS: usize = 2;

/// Records parsed from one chunk of the file, sorted by the part of the map their keys
/// belong to, with how many fall in each shard (to size the shards before filling them).
pub(crate) struct Sorted<K, V> {
    parts: [Vec<Record<K, V>>; LOAD_PARTS],
    per_shard: Vec<usize>,
}

impl<K: Key, V: Value> Sorted<K, V> {
    pub(crate) fn new() -> Self {
        Sorted {
            parts: [Vec::new(), Vec::new()],
            per_shard: vec![0; SHARDS],
        }
    }

    /// Adds the next record of the chunk (runs the user's `Hash`).
    pub(crate) fn push<T: Table<K, V>>(&mut self, map: &Map<K, V, T>, r: Record<K, V>) {
        let i = map.shard_of(r.key());
        self.per_shard[i] += 1;
        self.parts[i * LOAD_PARTS / SHARDS].push(r);
    }

    /// Records sorted so far.
    pub(crate) fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }
}

impl<K: Key, V: Value, T: Table<K, V>> Map<K, V, T> {
    pub(crate) fn new() -> Self {
        Map {
            shards: (0..SHARDS)
                .map(|_| Padded(RwLock::new(T::default())))
                .collect(),
            hasher: KeyHashing::default(),
            order: Mutex::new(Order {
                seq: 0,
                refuse: false,
            }),
            live: AtomicUsize::new(0),
            _pairs: std::marker::PhantomData,
        }
    }

    /// Fills the map at open (it is not shared yet: no locks are taken) from the file's
    /// chunks, in file order, each sorted by [`Sorted::push`]. Each part of the shards is
    /// filled on its own thread; a key always lives in the same part, so the last record
    /// of each key wins, as in a sequential read.
    ///
    /// # Errors
    ///
    /// `Err(())` if filling a part panicked (in the user's `Hash`, `Eq` or `Drop`): the
    /// map is then incomplete and must not be used.
    pub(crate) fn fill(&mut self, chunks: Vec<Sorted<K, V>>) -> Result<(), ()> {
        let mut per_shard = vec![0usize; SHARDS];
        let mut halves: [Vec<Vec<Record<K, V>>>; LOAD_PARTS] = [Vec::new(), Vec::new()];
        for chunk in chunks {
            for (n, c) in per_shard.iter_mut().zip(&chunk.per_shard) {
                *n += c;
            }
            let [lo, hi] = chunk.parts;
            halves[0].push(lo);
            halves[1].push(hi);
        }
        self.load(halves, &per_shard)
    }

    fn load(
        &mut self,
        halves: [Vec<Vec<Record<K, V>>>; LOAD_PARTS],
        per_shard: &[usize],
    ) -> Result<(), ()> {
        let hasher = &self.hasher;
        for (s, n) in self.shards.iter_mut().zip(per_shard) {
            s.0.get_mut().reserve(*n);
        }
        let (lo, hi) = self.shards.split_at_mut(SHARDS / 2);
        let [lo_recs, hi_recs] = halves;
        let apply = |shards: &mut [Padded<T>], base: usize, chunks: Vec<Vec<Record<K, V>>>| {
            let mut n: isize = 0;
            let mut trash = Trash::default();
            for r in chunks.into_iter().flatten() {
                let hash = if T::SPREAD {
                    hasher.hash_one(r.key())
                } else {
                    0
                };
                let shard = shards[shard_index(hash) - base].0.get_mut();
                match r {
                    Record::Set(k, value) => {
                        if !shard.put_back(hash, k, Entry { value, version: 0 }, &mut trash) {
                            n += 1;
                        }
                    }
                    Record::Remove(k) => {
                        if shard.take_out(hash, k, &mut trash) {
                            n -= 1;
                        }
                    }
                }
                // Drop what was replaced now, not all at the end.
                trash.keys.clear();
                trash.entries.clear();
            }
            n
        };
        let (a, b) = std::thread::scope(|s| {
            let other =
                s.spawn(|| catch_unwind(AssertUnwindSafe(|| apply(hi, SHARDS / 2, hi_recs))));
            let a = catch_unwind(AssertUnwindSafe(|| apply(lo, 0, lo_recs)));
            (a, other.join())
        });
        let (Ok(a), Ok(Ok(b))) = (a, b) else {
            return Err(());
        };
        self.live
            .store(usize::try_from(a + b).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The hash of `k` (runs the user's `Hash`); its top bits choose the shard. For a
    /// table that keeps every key in one shard ([`Table::SPREAD`] false), 0, and no user
    /// code runs.
    pub(crate) fn hash_of(&self, k: &K) -> u64 {
        if T::SPREAD {
            self.hasher.hash_one(k)
        } else {
            0
        }
    }

    /// The shards keys may be in: all of them, or the first alone.
    fn in_use(&self) -> &[Padded<T>] {
        if T::SPREAD {
            &self.shards
        } else {
            &self.shards[..1]
        }
    }

    pub(crate) fn shard_of(&self, k: &K) -> usize {
        shard_index(self.hash_of(k))
    }

    /// Calls `f` on the entry of `k` under its shard's read lock.
    pub(crate) fn read<R>(&self, k: &K, f: impl FnOnce(Option<&Entry<V>>) -> R) -> R {
        let hash = self.hash_of(k);
        f(self.shards[shard_index(hash)].0.read().get(hash, k))
    }

    /// Calls `f` on the entry of the key that borrows as `q` under its shard's read lock
    /// (the `Borrow` contract makes `q`'s hash the key's).
    pub(crate) fn read_borrowed<Q, R>(&self, q: &Q, f: impl FnOnce(Option<&Entry<V>>) -> R) -> R
    where
        Q: std::hash::Hash + ?Sized,
        T: Find<K, V, Q>,
    {
        let hash = if T::SPREAD {
            self.hasher.hash_one(q)
        } else {
            0
        };
        f(self.shards[shard_index(hash)].0.read().find(hash, q))
    }

    /// Calls `f` with every shard, under every shard's read lock at once (a consistent
    /// state), and the number of the last write it includes.
    pub(crate) fn with_all<R>(&self, f: impl FnOnce(&[&T], u64) -> R) -> R {
        let guards: Vec<_> = self.in_use().iter().map(|s| s.0.read()).collect();
        // Every write holds its shards' write locks while it takes its number.
        let seq = self.seq();
        let tables: Vec<&T> = guards.iter().map(|g| &**g).collect();
        f(&tables, seq)
    }

    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Sequence number of the last submitted write.
    pub(crate) fn seq(&self) -> u64 {
        self.order.lock().seq
    }

    /// A copy of every pair, taken under every shard's read lock at once: a consistent
    /// state (a write, and an undo, holds all its shards while it applies). The user's
    /// `Clone` runs under the locks; nothing else does.
    pub(crate) fn copy_all(&self) -> Vec<(K, V)> {
        let guards: Vec<_> = self.in_use().iter().map(|s| s.0.read()).collect();
        let mut out = Vec::with_capacity(self.len());
        for g in &guards {
            out.extend(g.pairs().map(|(k, e)| (k.clone(), e.value.clone())));
        }
        out
    }

    /// For each shard, calls `under_lock` under its read lock only, then `after` on the
    /// result with the lock released. Not a consistent view across shards: a rebuild
    /// replays the writes made meanwhile (see `writer.rs`).
    pub(crate) fn for_each_shard<R, E>(
        &self,
        mut under_lock: impl FnMut(&T) -> Result<R, E>,
        mut after: impl FnMut(R) -> Result<(), E>,
    ) -> Result<(), E> {
        for s in self.in_use() {
            let t = under_lock(&s.0.read())?;
            after(t)?;
        }
        Ok(())
    }

    /// The one way into the map for writes. Under the write locks of every shard it
    /// touches or read (taken in ascending order), checks `reads`, numbers the write,
    /// applies it and calls `send` with its number and undo list, so the queue's order is
    /// the order of the applications. Returns the write's number, or the last number if
    /// there is nothing to apply.
    ///
    /// User code may panic anywhere in here, and then nothing has changed: `Hash` and
    /// `Clone` run before any lock; `Eq` runs under the locks but before each change it
    /// guards, and a panic there reverts the changes already made (exactly, without user
    /// code) and gives the number back before the panic goes on; `Drop` runs only once
    /// every lock is released.
    pub(crate) fn submit(
        &self,
        changes: Vec<(K, Option<V>)>,
        reads: Option<&ReadSet<K>>,
        send: impl FnOnce(u64, UndoList<K, V>) -> Result<(), UndoList<K, V>>,
    ) -> Result<u64, Refusal> {
        // 1. User `Hash` and `Clone`, before any lock.
        let (mut prepared, mut set, per_shard) = self.prepare(changes);
        let reads: Vec<(u64, &K, Option<u64>)> = reads
            .into_iter()
            .flatten()
            .map(|(k, seen)| (self.hash_of(k), k, *seen))
            .collect();
        for (hash, ..) in &reads {
            set.insert(shard_index(*hash));
        }
        let mut trash = Trash::default();
        // Declared after `prepared` and `trash`: the locks go first, then user `Drop`s.
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, T>)> =
            set.iter().map(|i| (i, self.shards[i].0.write())).collect();
        // 2. Checks (user `Eq`, nothing changes).
        for (hash, k, seen) in reads {
            let g = &guards[slot(hash, &guards)].1;
            if g.get(hash, k).map(|e| e.version) != seen {
                return Err(Refusal::Conflict);
            }
        }
        let mut order = self.order.lock();
        if order.refuse {
            return Err(Refusal::Refused);
        }
        if prepared.is_empty() {
            return Ok(order.seq);
        }
        order.seq += 1;
        let seq = order.seq;
        if prepared.len() > 1024 {
            // A bulk write: grow each shard once, not step by step.
            for (i, g) in &mut guards {
                g.reserve(per_shard[*i]);
            }
        }
        // 3. Apply, step by step; a panic (user `Eq`) reverts the steps taken.
        let mut steps: Vec<ShardStep<K, V, T>> = Vec::with_capacity(prepared.len());
        let applied = catch_unwind(AssertUnwindSafe(|| {
            for p in prepared.drain(..) {
                let at = slot(p.hash, &guards);
                let g = &mut guards[at].1;
                let step = match (p.value, p.copy) {
                    (Some(value), Some(copy)) => Some(g.set(
                        p.hash,
                        p.key,
                        copy,
                        Entry {
                            value,
                            version: seq,
                        },
                    )),
                    _ => g.remove(p.hash, p.key).map_err(|k| trash.keys.push(k)).ok(),
                };
                steps.extend(step.map(|s| (at, s)));
            }
        }));
        if let Err(panic) = applied {
            order.seq -= 1;
            for (at, step) in steps.into_iter().rev() {
                guards[at].1.revert(step, &mut trash);
            }
            drop(order);
            drop(guards);
            drop(trash);
            resume_unwind(panic);
        }
        let (undo, added, removed) = undo_of::<K, V, T>(steps, &mut trash);
        self.live.fetch_add(added, Ordering::Relaxed);
        self.live.fetch_sub(removed, Ordering::Relaxed);
        if let Err(undo) = send(seq, undo) {
            // Unreachable in practice: the writer refuses writes (under `order`) before
            // it lets go of the queue.
            order.seq -= 1;
            let undone = self.undo_locked(&mut guards, undo, &mut trash);
            drop(order);
            drop(guards);
            drop(trash);
            if let Err(p) = undone {
                resume_unwind(p);
            }
            return Err(Refusal::Closed);
        }
        Ok(seq)
    }

    /// Hashes every change's key and copies the key of every set (user code that may
    /// panic, before any lock). Returns the changes, their shards and how many per shard.
    #[allow(clippy::type_complexity)] // three plain parts, named at the one call
    fn prepare(
        &self,
        changes: Vec<(K, Option<V>)>,
    ) -> (Vec<Prepared<K, V>>, ShardSet, Box<[usize; SHARDS]>) {
        let mut set = ShardSet::default();
        let mut per_shard = Box::new([0usize; SHARDS]);
        let mut prepared = Vec::with_capacity(changes.len());
        for (key, value) in changes {
            let hash = self.hash_of(&key);
            let copy = value.as_ref().map(|_| key.clone());
            set.insert(shard_index(hash));
            per_shard[shard_index(hash)] += 1;
            prepared.push(Prepared {
                hash,
                key,
                copy,
                value,
            });
        }
        (prepared, set, per_shard)
    }

    /// Refuses every later submission.
    pub(crate) fn refuse(&self) {
        self.order.lock().refuse = true;
    }

    /// Undoes writes, newest first (`lists` holds them oldest first), under the write
    /// locks of every shard they touch, taken together: a reader sees all of them undone
    /// or none.
    ///
    /// A panic in the user's `Eq` leaves that one key as it is, the rest is undone, and
    /// the panic goes on once the locks are released (on the writer thread, whose guard
    /// then fails every waiter).
    pub(crate) fn undo(&self, lists: Vec<UndoList<K, V>>) {
        let mut set = ShardSet::default();
        for list in &lists {
            for (hash, _) in &list.added {
                set.insert(shard_index(*hash));
            }
            for (hash, ..) in &list.replaced {
                set.insert(shard_index(*hash));
            }
        }
        let mut trash = Trash::default();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, T>)> =
            set.iter().map(|i| (i, self.shards[i].0.write())).collect();
        let mut panicked = None;
        for list in lists.into_iter().rev() {
            if let Err(p) = self.undo_locked(&mut guards, list, &mut trash) {
                panicked.get_or_insert(p);
            }
        }
        drop(guards);
        drop(trash);
        if let Some(p) = panicked {
            resume_unwind(p);
        }
    }

    /// Undoes one write under locks already held (runs the user's `Eq`); returns the
    /// first panic, having undone every other key.
    fn undo_locked(
        &self,
        guards: &mut [(usize, RwLockWriteGuard<'_, T>)],
        list: UndoList<K, V>,
        trash: &mut Trash<K, V>,
    ) -> Result<(), Box<dyn std::any::Any + Send>> {
        let mut first = Ok(());
        for (hash, k) in list.added {
            let g = &mut guards[slot(hash, guards)].1;
            match catch_unwind(AssertUnwindSafe(|| g.take_out(hash, k, trash))) {
                Ok(true) => {
                    self.live.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(p) => first = first.and(Err(p)),
            }
        }
        for (hash, k, e) in list.replaced {
            let g = &mut guards[slot(hash, guards)].1;
            match catch_unwind(AssertUnwindSafe(|| g.put_back(hash, k, e, trash))) {
                Ok(true) => {}
                Ok(false) => {
                    self.live.fetch_add(1, Ordering::Relaxed);
                }
                Err(p) => first = first.and(Err(p)),
            }
        }
        first
    }
}

/// The undo list of an applied write (moves only), and how many keys it added and
/// removed.
fn undo_of<K, V, T: Table<K, V>>(
    steps: Vec<ShardStep<K, V, T>>,
    trash: &mut Trash<K, V>,
) -> (UndoList<K, V>, usize, usize) {
    let mut undo = UndoList::default();
    let (mut added, mut removed) = (0, 0);
    for (_, step) in steps {
        match step {
            Step::Added { hash, key, at } => {
                added += 1;
                undo.added.push((hash, key));
                T::release(at, trash);
            }
            Step::Replaced { hash, key, old, at } => {
                undo.replaced.push((hash, key, old));
                T::release(at, trash);
            }
            Step::Removed { hash, key, old, at } => {
                removed += 1;
                undo.replaced.push((hash, key, old));
                T::release(at, trash);
            }
        }
    }
    (undo, added, removed)
}

/// Where the guard of the shard of `hash` is among `guards` (sorted by shard, and
/// holding that shard).
fn slot<G>(hash: u64, guards: &[(usize, G)]) -> usize {
    let i = shard_index(hash);
    guards.partition_point(|g| g.0 < i)
}

/// The shard of a key whose hash is `hash`: its top bits, which are below `SHARDS`, so
/// the cast never truncates.
fn shard_index(hash: u64) -> usize {
    usize::try_from(hash >> (64 - SHARDS.trailing_zeros())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use serde::{Deserialize, Serialize};

    use super::*;

    thread_local! {
        /// Calls of `Eq` on this thread left before one panics (0: none will).
        static EQ_COUNTDOWN: Cell<u32> = const { Cell::new(0) };
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct PanickyKey(u32);

    impl std::hash::Hash for PanickyKey {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl PartialEq for PanickyKey {
        fn eq(&self, other: &Self) -> bool {
            EQ_COUNTDOWN.with(|c| match c.get() {
                0 => {}
                1 => {
                    c.set(0);
                    panic!("intended");
                }
                n => c.set(n - 1),
            });
            self.0 == other.0
        }
    }

    impl Eq for PanickyKey {}

    fn value(map: &Map<PanickyKey, u32>, k: u32) -> Option<u32> {
        map.read(&PanickyKey(k), |e| e.map(|e| e.value))
    }

    #[test]
    fn an_undo_whose_eq_panics_undoes_every_other_key() {
        let map: Map<PanickyKey, u32> = Map::new();
        let base = vec![(PanickyKey(1), Some(1)), (PanickyKey(2), Some(2))];
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let mut undo = None;
        let later = vec![
            (PanickyKey(1), Some(10)),
            (PanickyKey(2), Some(20)),
            (PanickyKey(3), Some(30)),
        ];
        let r = map.submit(later, None, |_, u| {
            undo = Some(u);
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(map.len(), 3);
        // The first `Eq` of the undo is the added key 3's.
        EQ_COUNTDOWN.with(|c| c.set(1));
        let lists: Vec<_> = undo.into_iter().collect();
        assert!(catch_unwind(AssertUnwindSafe(|| map.undo(lists))).is_err());
        assert_eq!(value(&map, 1), Some(1));
        assert_eq!(value(&map, 2), Some(2));
        assert_eq!(value(&map, 3), Some(30), "the key whose Eq panicked stays");
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn a_submit_whose_eq_panics_changes_nothing_and_gives_its_number_back() {
        let map: Map<PanickyKey, u32> = Map::new();
        let base = vec![(PanickyKey(1), Some(1)), (PanickyKey(2), Some(2))];
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let seq = map.seq();
        // Two `Eq` calls: keys 1 and 2 are there; key 4's hash has no bucket yet.
        for n in 1..=2 {
            let changes = vec![
                (PanickyKey(1), None),
                (PanickyKey(2), Some(20)),
                (PanickyKey(4), Some(40)),
            ];
            EQ_COUNTDOWN.with(|c| c.set(n));
            let r = catch_unwind(AssertUnwindSafe(|| {
                map.submit(changes, None, |_, _| Ok(()))
            }));
            EQ_COUNTDOWN.with(|c| c.set(0));
            assert!(r.is_err(), "Eq call {n} did not panic");
            assert_eq!(map.seq(), seq);
            assert_eq!((value(&map, 1), value(&map, 2)), (Some(1), Some(2)));
            assert_eq!(value(&map, 4), None);
            assert_eq!(map.len(), 2);
        }
    }
}
