//! The main-memory database: a map split into shards, each behind its own read-write
//! lock, and the one path by which writes enter it, numbered and queued in the order they
//! were applied.
//!
//! Sharding keeps readers on different keys off each other's cache lines, and lets a
//! rebuild copy the map one shard at a time while readers and writers go on.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::codec::Record;
use crate::delta::{Key, Value};

/// Number of shards. A power of two; 256 keeps a shard of a million-key database small
/// enough (about 4,000 keys) to be copied in about a millisecond.
pub(crate) const SHARDS: usize = 256;

/// One value, with the sequence number of the write that set it (what `transact` checks).
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    pub(crate) version: u64,
}

/// Keys a `transact` closure read, with the version it saw (`None`: absent).
pub(crate) type ReadSet<K> = HashMap<K, Option<u64>>;

/// What undoes one write: the keys it added (to remove) and the entries it replaced or
/// removed (to put back). A write touches each key once, so the order does not matter.
#[derive(Debug)]
pub(crate) struct UndoList<K, V> {
    added: Vec<K>,
    replaced: Vec<(K, Entry<V>)>,
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
type Hasher = foldhash::fast::RandomState;

type Shard<K, V> = HashMap<K, Entry<V>, Hasher>;

/// A shard's lock on a cache line of its own, so that readers of different shards do not
/// slow each other down.
#[repr(align(128))]
struct Padded<K, V>(RwLock<Shard<K, V>>);

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

pub(crate) struct Map<K, V> {
    shards: Box<[Padded<K, V>]>,
    hasher: Hasher,
    order: Mutex<Order>,
    live: AtomicUsize,
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

impl<K: Key, V: Value> Map<K, V> {
    pub(crate) fn new() -> Self {
        Map {
            shards: (0..SHARDS)
                .map(|_| Padded(RwLock::new(HashMap::with_hasher(Hasher::default()))))
                .collect(),
            hasher: Hasher::default(),
            order: Mutex::new(Order {
                seq: 0,
                refuse: false,
            }),
            live: AtomicUsize::new(0),
        }
    }

    /// Fills the map at open (it is not shared yet: no locks are taken). `halves[h]` holds,
    /// chunk by chunk in file order, the records whose keys belong to half `h` of the
    /// shards; each half is applied on its own thread. `per_shard` sizes the shards first.
    pub(crate) fn load(&mut self, halves: [Vec<Vec<Record<K, V>>>; 2], per_shard: &[usize]) {
        let hasher = &self.hasher;
        let live = &self.live;
        for (s, n) in self.shards.iter_mut().zip(per_shard) {
            s.0.get_mut().reserve(*n);
        }
        let (lo, hi) = self.shards.split_at_mut(SHARDS / 2);
        let [lo_recs, hi_recs] = halves;
        let apply = |shards: &mut [Padded<K, V>], base: usize, chunks: Vec<Vec<Record<K, V>>>| {
            let mut n: isize = 0;
            for r in chunks.into_iter().flatten() {
                let i = shard_index(hasher, r.key()) - base;
                let shard = shards[i].0.get_mut();
                match r {
                    Record::Set(k, value) => {
                        if shard.insert(k, Entry { value, version: 0 }).is_none() {
                            n += 1;
                        }
                    }
                    Record::Remove(k) => {
                        if shard.remove(&k).is_some() {
                            n -= 1;
                        }
                    }
                }
            }
            n
        };
        let (a, b) = std::thread::scope(|s| {
            let other = s.spawn(|| apply(hi, SHARDS / 2, hi_recs));
            let a = apply(lo, 0, lo_recs);
            (a, other.join().unwrap_or(0))
        });
        live.store(usize::try_from(a + b).unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn shard_of(&self, k: &K) -> usize {
        shard_index(&self.hasher, k)
    }

    /// Calls `f` on the entry of `k` under its shard's read lock.
    pub(crate) fn read<R>(&self, k: &K, f: impl FnOnce(Option<&Entry<V>>) -> R) -> R {
        f(self.shards[self.shard_of(k)].0.read().get(k))
    }

    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Sequence number of the last submitted write.
    pub(crate) fn seq(&self) -> u64 {
        self.order.lock().seq
    }

    /// Calls `f` on every pair under every shard's read lock at once: a consistent view
    /// (a write holds all its shards while it applies).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &Entry<V>)) {
        let guards: Vec<_> = self.shards.iter().map(|s| s.0.read()).collect();
        for g in &guards {
            for (k, e) in g.iter() {
                f(k, e);
            }
        }
    }

    /// For each shard, calls `under_lock` under its read lock only, then `after` on the
    /// result with the lock released. Not a consistent view across shards: a rebuild
    /// replays the writes made meanwhile (see `writer.rs`).
    pub(crate) fn for_each_shard<T, E>(
        &self,
        mut under_lock: impl FnMut(&Shard<K, V>) -> Result<T, E>,
        mut after: impl FnMut(T) -> Result<(), E>,
    ) -> Result<(), E> {
        for s in &*self.shards {
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
    pub(crate) fn submit(
        &self,
        changes: Vec<(K, Option<V>)>,
        reads: Option<&ReadSet<K>>,
        send: impl FnOnce(u64, UndoList<K, V>) -> Result<(), UndoList<K, V>>,
    ) -> Result<u64, Refusal> {
        let mut set = ShardSet::default();
        let mut per_shard = [0usize; SHARDS];
        for (k, _) in &changes {
            let i = self.shard_of(k);
            set.insert(i);
            per_shard[i] += 1;
        }
        if let Some(reads) = reads {
            for k in reads.keys() {
                set.insert(self.shard_of(k));
            }
        }
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, Shard<K, V>>)> =
            set.iter().map(|i| (i, self.shards[i].0.write())).collect();
        let slot = |i: usize, guards: &[(usize, _)]| guards.partition_point(|g| g.0 < i);
        if let Some(reads) = reads {
            for (k, seen) in reads {
                let g = &guards[slot(self.shard_of(k), &guards)].1;
                if g.get(k).map(|e| e.version) != *seen {
                    return Err(Refusal::Conflict);
                }
            }
        }
        let mut order = self.order.lock();
        if order.refuse {
            return Err(Refusal::Refused);
        }
        if changes.is_empty() {
            return Ok(order.seq);
        }
        order.seq += 1;
        let seq = order.seq;
        if changes.len() > 1024 {
            // A bulk write: grow each shard once, not step by step.
            for (i, g) in &mut guards {
                g.reserve(per_shard[*i]);
            }
        }
        let mut undo = UndoList::default();
        for (k, v) in changes {
            let at = slot(self.shard_of(&k), &guards);
            let g = &mut guards[at].1;
            let is_set = v.is_some();
            let old = match v {
                Some(value) => g.insert(
                    k.clone(),
                    Entry {
                        value,
                        version: seq,
                    },
                ),
                None => g.remove(&k),
            };
            self.count(old.is_some(), is_set);
            match old {
                Some(e) => undo.replaced.push((k, e)),
                None if is_set => undo.added.push(k),
                None => {}
            }
        }
        if let Err(undo) = send(seq, undo) {
            order.seq -= 1;
            for k in undo.added {
                let at = slot(self.shard_of(&k), &guards);
                self.restore(&mut guards[at].1, k, None);
            }
            for (k, e) in undo.replaced {
                let at = slot(self.shard_of(&k), &guards);
                self.restore(&mut guards[at].1, k, Some(e));
            }
            return Err(Refusal::Closed);
        }
        Ok(seq)
    }

    fn count(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Puts `old` back as the entry of `k`.
    fn restore(&self, g: &mut Shard<K, V>, k: K, old: Option<Entry<V>>) {
        let is = old.is_some();
        let was = match old {
            Some(e) => g.insert(k, e).is_some(),
            None => g.remove(&k).is_some(),
        };
        self.count(was, is);
    }

    /// Refuses every later submission.
    pub(crate) fn refuse(&self) {
        self.order.lock().refuse = true;
    }

    /// Undoes writes, newest first (`lists` holds them oldest first).
    pub(crate) fn undo(&self, lists: Vec<UndoList<K, V>>) {
        for list in lists.into_iter().rev() {
            for k in list.added {
                let mut g = self.shards[self.shard_of(&k)].0.write();
                self.restore(&mut g, k, None);
            }
            for (k, e) in list.replaced {
                let mut g = self.shards[self.shard_of(&k)].0.write();
                self.restore(&mut g, k, Some(e));
            }
        }
    }
}

fn shard_index<K: std::hash::Hash>(hasher: &Hasher, k: &K) -> usize {
    // The top bits, which are below `SHARDS`, so the cast never truncates.
    usize::try_from(hasher.hash_one(k) >> (64 - SHARDS.trailing_zeros())).unwrap_or(0)
}
