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
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::bounds::{Key, Value};
use crate::codec::Record;
use crate::kind::{Applied, Find, Revert, Table};
pub(crate) use crate::shard::Entry;
use crate::shard::{Shard, Trash};

/// Number of shards. A power of two; 256 keeps a shard of a million-key database small
/// enough (about 4,000 keys) to be copied in about a millisecond.
pub(crate) const SHARDS: usize = 256;

/// Keys a `transact` closure read, with the version it saw (`None`: absent).
pub(crate) type ReadSet<K> = HashMap<K, Option<u64>>;

/// What undoes one write once other writes may have followed it: its number, the shards
/// where it added keys, and the entries it replaced or removed (to put back), each with
/// its key's hash. The keys it added are found by their version, which is the write's
/// number: once every later write is undone and the old entries are back, an entry of
/// that version or later is one that a write being undone added (see [`Map::undo`]).
/// Nothing is copied to build it: the old entries and keys move out of the map.
#[derive(Debug)]
pub(crate) struct UndoList<K, V> {
    seq: u64,
    added_in: ShardSet,
    replaced: Vec<(u64, K, Entry<V>)>,
}

impl<K, V> Default for UndoList<K, V> {
    fn default() -> Self {
        UndoList {
            seq: 0,
            added_in: ShardSet::default(),
            replaced: Vec::new(),
        }
    }
}

/// One change to one key, hashed (the user's `Hash` has run): `None` removes the key.
#[derive(Debug, Clone)]
pub struct Change<K, V> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) value: Option<V>,
}

impl<K: std::hash::Hash, V> Change<K, V> {
    /// `key` to become `value` (`None`: removed), hashed (runs the user's `Hash`).
    pub(crate) fn new(key: K, value: Option<V>) -> Self {
        Change {
            hash: hash_key(&key),
            key,
            value,
        }
    }
}

/// foldhash, seeded at random once per process: several times faster than the standard
/// `SipHash` on short keys, and seeded so that chosen keys cannot be made to collide
/// without the seed. One seed for every map and every [`Delta`](crate::Delta), so that a
/// key hashed in a delta is not hashed again when the delta enters the map.
type KeyHashing = foldhash::fast::RandomState;

static KEY_HASHING: std::sync::OnceLock<KeyHashing> = std::sync::OnceLock::new();

/// The hash of `k` for every map and delta of this process (runs the user's `Hash`); its
/// top bits choose the shard.
pub(crate) fn hash_key<Q: std::hash::Hash + ?Sized>(k: &Q) -> u64 {
    KEY_HASHING.get_or_init(KeyHashing::default).hash_one(k)
}

/// A shard's lock on a cache line of its own, so that readers of different shards do not
/// slow each other down.
#[repr(align(128))]
struct Padded<T>(RwLock<T>);

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
    order: Mutex<Order>,
    live: AtomicUsize,
    _pairs: std::marker::PhantomData<fn() -> (K, V)>,
}

/// A set of shard indices, iterated in ascending order (the order locks are taken in).
#[derive(Default, Debug, Clone, Copy)]
struct ShardSet([u64; SHARDS / 64]);

impl ShardSet {
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn union(&mut self, other: &ShardSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Ascending; skips empty words, so a set of a few shards costs a few steps.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut bits = bits;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

/// One part of the shards, filled at open by one thread ([`Map::fill_parts`]): the
/// records of every key that lives in these shards, in file order.
pub(crate) struct Part<'a, K, V, T> {
    shards: &'a mut [Padded<T>],
    /// The index of the first of `shards` in the map.
    base: usize,
    /// Keys added less keys removed so far.
    live: isize,
    _pairs: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K: Key, V: Value, T: Table<K, V>> Part<'_, K, V, T> {
    /// Room for this part's share of `records`, the records of the whole file at most (a
    /// key's hash spreads its records evenly over the shards); a shard that gets more
    /// keys than its table holds grows as it fills. Nothing to spare: a table's buckets
    /// are a power of two, so that most shards have room for more than their share
    /// anyway, and a little more for each would double every table whose share is near
    /// a power of two.
    pub(crate) fn reserve_share(&mut self, records: usize) {
        let each = if T::SPREAD { records / SHARDS } else { records };
        for (i, s) in self.shards.iter_mut().enumerate() {
            if T::SPREAD || self.base + i == 0 {
                s.0.get_mut().reserve(each);
            }
        }
    }

    /// Applies the next records of this part (each with its key's hash), in file order:
    /// the last record of each key wins. Runs the user's `Eq` and `Drop` (and `Hash`, if
    /// a shard regrows); a panic leaves the part half filled, and the map must not be
    /// used.
    pub(crate) fn apply(&mut self, records: HashedRecords<K, V>) {
        let mut trash = Trash::default();
        for (hash, r) in records {
            let shard = self.shards[shard_index(hash) - self.base].0.get_mut();
            match r {
                Record::Set(k, value) => {
                    if !shard.put_back(hash, k, Entry { value, version: 0 }, &mut trash) {
                        self.live += 1;
                    }
                }
                Record::Remove(k) => {
                    if shard.take_out(hash, k, &mut trash) {
                        self.live -= 1;
                    }
                }
            }
            // Drop what was replaced now, not all at the end.
            trash.keys.clear();
            trash.entries.clear();
        }
    }
}

/// What one applied change did, enough to revert it with what `submit` keeps aside (the
/// replaced entries): the guard it was made under and where in the table.
#[derive(Debug)]
enum Done<P> {
    Added(u32, P),
    Replaced(u32, P),
    Removed(u32, P),
}

/// A write larger than this is applied shard by shard, and its shards are grown once.
const BULK: usize = 1024;

/// Records parsed from one chunk of the file, sorted by the part of the map their keys
/// belong to (one part per filling thread, [`Map::fill_parts`]).
pub(crate) struct Sorted<K, V> {
    /// Each record with its key's hash (computed once, on the parsing thread).
    parts: Vec<HashedRecords<K, V>>,
    /// Whether keys spread over the shards ([`Table::SPREAD`]); else all go to the first.
    spread: bool,
}

/// Records of one chunk for one part of the map, each with its key's hash.
pub(crate) type HashedRecords<K, V> = Vec<(u64, Record<K, V>)>;

/// The first shard of part `p` of `n`: shard `i` is in part `i * n / SHARDS`.
fn part_start(p: usize, n: usize) -> usize {
    (p * SHARDS).div_ceil(n)
}

impl<K: Key, V: Value> Sorted<K, V> {
    /// For a map of tables `T` filled in `parts` parts (1 to [`SHARDS`]).
    pub(crate) fn new<T: Table<K, V>>(parts: usize) -> Self {
        Sorted {
            parts: (0..parts.clamp(1, SHARDS)).map(|_| Vec::new()).collect(),
            spread: T::SPREAD,
        }
    }

    /// Adds the next record of the chunk (runs the user's `Hash`, for a map whose keys
    /// spread over its shards).
    pub(crate) fn push(&mut self, r: Record<K, V>) {
        let hash = if self.spread { hash_key(r.key()) } else { 0 };
        let n = self.parts.len();
        self.parts[shard_index(hash) * n / SHARDS].push((hash, r));
    }

    /// The records of each part, in the order pushed.
    pub(crate) fn into_parts(self) -> Vec<HashedRecords<K, V>> {
        self.parts
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
            order: Mutex::new(Order {
                seq: 0,
                refuse: false,
            }),
            live: AtomicUsize::new(0),
            _pairs: std::marker::PhantomData,
        }
    }

    /// Fills the map at open (it is not shared yet: no locks are taken) in `parts` parts
    /// at once, each on its own thread (the first on this one): `work(p, part)` applies
    /// to part `p` the records of its keys ([`Sorted::push`] sorts a chunk's records into
    /// the same number of parts), in file order. A key always lives in the same part,
    /// so the last record of each key wins, as in a sequential read.
    ///
    /// # Errors
    ///
    /// `Err(())` if `work` panicked for a part (in the user's `Hash`, `Eq` or `Drop`):
    /// the map is then incomplete and must not be used.
    pub(crate) fn fill_parts<W>(&mut self, parts: usize, work: W) -> Result<(), ()>
    where
        W: Fn(usize, &mut Part<'_, K, V, T>) + Sync,
    {
        let n = parts.clamp(1, SHARDS);
        // Each part's shards, split off in order.
        let mut rest: &mut [Padded<T>] = &mut self.shards;
        let mut jobs = Vec::with_capacity(n);
        for p in 0..n {
            let (mine, later) = rest.split_at_mut(part_start(p + 1, n) - part_start(p, n));
            rest = later;
            jobs.push((
                p,
                Part {
                    shards: mine,
                    base: part_start(p, n),
                    live: 0,
                    _pairs: std::marker::PhantomData,
                },
            ));
        }
        let work = &work;
        let run = move |(p, mut part): (usize, Part<'_, K, V, T>)| {
            catch_unwind(AssertUnwindSafe(|| work(p, &mut part)))
                .ok()
                .map(|()| part.live)
        };
        let counts: Vec<Option<isize>> = std::thread::scope(|s| {
            let mut jobs = jobs.into_iter();
            let first = jobs.next();
            let others: Vec<_> = jobs.map(|job| s.spawn(move || run(job))).collect();
            let mine = first.and_then(run);
            std::iter::once(mine)
                .chain(others.into_iter().map(|h| h.join().ok().flatten()))
                .collect()
        });
        let mut live: isize = 0;
        for c in counts {
            live += c.ok_or(())?;
        }
        self.live
            .store(usize::try_from(live).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The hash of `k` (runs the user's `Hash`); its top bits choose the shard. For a
    /// table that keeps every key in the first shard ([`Table::SPREAD`] false), 0.
    pub(crate) fn hash_of<Q: std::hash::Hash + ?Sized>(k: &Q) -> u64 {
        if T::SPREAD {
            hash_key(k)
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

    /// Calls `f` on the entry of `k` under its shard's read lock.
    pub(crate) fn read<R>(&self, k: &K, f: impl FnOnce(Option<&Entry<V>>) -> R) -> R {
        let hash = Self::hash_of(k);
        f(self.shards[shard_index(hash)].0.read().get(hash, k))
    }

    /// Calls `f` on the entry of the key that borrows as `q` under its shard's read lock
    /// (the `Borrow` contract makes `q`'s hash the key's).
    pub(crate) fn read_borrowed<Q, R>(&self, q: &Q, f: impl FnOnce(Option<&Entry<V>>) -> R) -> R
    where
        Q: std::hash::Hash + ?Sized,
        T: Find<K, V, Q>,
    {
        let hash = Self::hash_of(q);
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

    /// A copy of every pair of one consistent state, taken under every shard's read lock
    /// at once (a write, and an undo, holds all its shards while it applies): the hash
    /// map's pairs are cloned under the locks, the ordered map's from its frozen state.
    pub(crate) fn copy_all(&self) -> Vec<(K, V)> {
        T::thaw(self.with_all(|tables, _| T::freeze_all(tables))).collect()
    }

    /// Clones the map's pairs a piece at a time, each piece under its shard's read lock
    /// alone (user `Clone`), and hands each piece to `after` with the lock released, with
    /// whether it is its shard's last. A
    /// shard of more than `piece` pairs is noted first ([`Table::marks`], under its lock),
    /// then copied `piece` marks at a time, its lock released between them, so that a
    /// reader or writer of that shard waits for one piece at most. Returns the longest a
    /// lock was held.
    ///
    /// Not a consistent view: a pair added to a shard after its marks were taken, or
    /// removed before its piece, may be missed, and a write may show in one piece and not
    /// in another. A pair that no write touches while the copy runs is copied exactly
    /// once, unless writes make its shard's hash table regrow meanwhile (the shard is
    /// then noted and copied again, so some pairs twice); a rebuild replays every write
    /// made meanwhile (see `writer.rs`).
    pub(crate) fn copy_in_pieces<E>(
        &self,
        piece: usize,
        mut after: impl FnMut(Vec<(K, V)>, bool) -> Result<(), E>,
    ) -> Result<Duration, E> {
        let piece = piece.max(1);
        let mut longest = Duration::ZERO;
        let mut marks = Vec::new();
        for s in self.in_use() {
            let t = s.0.read();
            let held = Instant::now();
            if t.len() <= piece {
                let pairs: Vec<(K, V)> = t
                    .pairs()
                    .map(|(k, e)| (k.clone(), e.value.clone()))
                    .collect();
                longest = longest.max(held.elapsed());
                drop(t);
                after(pairs, true)?;
                continue;
            }
            marks.clear();
            let mut stamp = t.marks(&mut marks);
            longest = longest.max(held.elapsed());
            drop(t);
            let mut at = 0;
            loop {
                let end = (at + piece).min(marks.len());
                let t = s.0.read();
                let held = Instant::now();
                let mut pairs = Vec::with_capacity(end - at);
                let led = t.visit_marked(stamp, &marks[at..end], &mut |k, e| {
                    pairs.push((k.clone(), e.value.clone()));
                });
                if !led {
                    // The table regrew: its pairs moved. Noted again and copied again
                    // from the start; a pair copied twice is harmless (the later line
                    // wins, and every write made meanwhile is replayed after both).
                    marks.clear();
                    stamp = t.marks(&mut marks);
                    longest = longest.max(held.elapsed());
                    drop(t);
                    at = 0;
                    continue;
                }
                longest = longest.max(held.elapsed());
                drop(t);
                at = end;
                let last = at == marks.len();
                after(pairs, last)?;
                if last {
                    break;
                }
            }
        }
        Ok(longest)
    }

    /// The one way into the map for writes. Under the write locks of every shard it
    /// touches or read (taken in ascending order), checks `reads`, numbers the write,
    /// applies it and calls `send` with its number and undo list, so the queue's order is
    /// the order of the applications. Returns the write's number, or the last number if
    /// there is nothing to apply. The changes of one key apply in the order given; a
    /// large write is applied shard by shard.
    ///
    /// User code may panic anywhere in here, and then nothing has changed: `Hash` ran
    /// before (each change comes hashed) and nothing is cloned; `Eq` (or `Ord`) runs
    /// under the locks but before each change it guards, and a panic there reverts the
    /// changes already made (exactly, without user code) and gives the number back
    /// before the panic goes on; `Drop` runs only once every lock is released.
    pub(crate) fn submit(
        &self,
        changes: Vec<Change<K, V>>,
        reads: Option<&ReadSet<K>>,
        send: impl FnOnce(u64, UndoList<K, V>) -> Result<(), UndoList<K, V>>,
    ) -> Result<u64, Refusal> {
        // 1. User `Hash` (of the keys read), before any lock.
        let mut changes = changes;
        if !T::SPREAD {
            // Every key is in the first shard.
            for c in &mut changes {
                c.hash = 0;
            }
        }
        let mut set = ShardSet::default();
        let mut per_shard = [0usize; SHARDS];
        for c in &changes {
            let i = shard_index(c.hash);
            set.insert(i);
            per_shard[i] += 1;
        }
        let reads: Vec<(u64, &K, Option<u64>)> = reads
            .into_iter()
            .flatten()
            .map(|(k, seen)| (Self::hash_of(k), k, *seen))
            .collect();
        for (hash, ..) in &reads {
            set.insert(shard_index(*hash));
        }
        let bulk = changes.len() > BULK;
        let changes = if bulk {
            let mut changes = by_shard(changes, &per_shard);
            T::order_bulk(&mut changes);
            changes
        } else {
            changes
        };
        let mut trash = Trash::default();
        let mut rest = changes.into_iter();
        let mut undo = UndoList::default();
        // Declared after everything that holds user values: the locks go first, then the
        // user `Drop`s.
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, T>)> =
            set.iter().map(|i| (i, self.shards[i].0.write())).collect();
        // Room for every change, so that applying them moves no pair (the hash table's
        // reverts find theirs by bucket). The hash table regrows here if it must, running
        // the user's `Hash`; a panic leaves every table as it was. Once for a large write.
        // Counted for every change, not only the new keys (telling them apart would run
        // `Eq` twice): a table within that many keys of full regrows a little early.
        for (i, g) in &mut guards {
            g.reserve(per_shard[*i]);
        }
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
        if rest.len() == 0 {
            return Ok(order.seq);
        }
        order.seq += 1;
        let seq = order.seq;
        undo.seq = seq;
        // 3. Apply, step by step; a panic (user `Eq`) reverts the steps taken.
        let (added, removed) = match Self::apply(&mut guards, &mut rest, seq, &mut undo, &mut trash)
        {
            Ok(counts) => counts,
            Err(panic) => {
                order.seq -= 1;
                drop(order);
                drop(guards);
                drop(trash);
                drop(rest);
                resume_unwind(panic);
            }
        };
        self.live.fetch_add(added, Ordering::Relaxed);
        self.live.fetch_sub(removed, Ordering::Relaxed);
        if let Err(undo) = send(seq, undo) {
            // Unreachable in practice: the writer refuses writes (under `order`) before
            // it lets go of the queue.
            order.seq -= 1;
            let undone = self.undo_locked(&mut guards, vec![undo], &mut trash);
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

    /// Applies the changes of `rest` as write `seq` under `guards`, keeping in `undo` what
    /// undoes them; returns how many keys it added and removed. On a panic (user `Eq` or
    /// `Ord`) it reverts exactly what it applied, without user code, and returns the
    /// panic; the changes not applied yet stay in `rest`.
    #[allow(clippy::type_complexity)] // the panic's own type
    fn apply(
        guards: &mut [(usize, RwLockWriteGuard<'_, T>)],
        rest: &mut std::vec::IntoIter<Change<K, V>>,
        seq: u64,
        undo: &mut UndoList<K, V>,
        trash: &mut Trash<K, V>,
    ) -> Result<(usize, usize), Box<dyn std::any::Any + Send>> {
        let mut done: Vec<Done<T::Pos>> = Vec::with_capacity(rest.len());
        let (mut added, mut removed) = (0, 0);
        let applied = catch_unwind(AssertUnwindSafe(|| {
            for c in rest.by_ref() {
                let at = slot(c.hash, guards);
                let g = &mut guards[at].1;
                let at = u32::try_from(at).expect("fewer guards than shards");
                match c.value {
                    Some(value) => match g.set(
                        c.hash,
                        c.key,
                        Entry {
                            value,
                            version: seq,
                        },
                    ) {
                        Applied::Added(pos) => {
                            added += 1;
                            undo.added_in.insert(shard_index(c.hash));
                            done.push(Done::Added(at, pos));
                        }
                        Applied::Replaced(pos, key, old) => {
                            undo.replaced.push((c.hash, key, old));
                            done.push(Done::Replaced(at, pos));
                        }
                    },
                    None => match g.remove(c.hash, c.key) {
                        Ok((pos, key, old)) => {
                            removed += 1;
                            undo.replaced.push((c.hash, key, old));
                            done.push(Done::Removed(at, pos));
                        }
                        Err(k) => trash.keys.push(k),
                    },
                }
            }
        }));
        let Err(panic) = applied else {
            // Kept: what the changes moved out of the tables goes to the trash.
            for d in done {
                let (Done::Added(_, pos) | Done::Replaced(_, pos) | Done::Removed(_, pos)) = d;
                T::release(pos, trash);
            }
            return Ok((added, removed));
        };
        for d in done.into_iter().rev() {
            let (at, step) = match d {
                Done::Added(at, pos) => (at, Revert::Added(pos)),
                Done::Replaced(at, pos) => {
                    let (_, key, old) = undo.replaced.pop().expect("one per step");
                    (at, Revert::Replaced(pos, key, old))
                }
                Done::Removed(at, pos) => {
                    let (_, key, old) = undo.replaced.pop().expect("one per step");
                    (at, Revert::Removed(pos, key, old))
                }
            };
            guards[at as usize].1.revert(step, trash);
        }
        Err(panic)
    }

    /// Refuses every later submission.
    pub(crate) fn refuse(&self) {
        self.order.lock().refuse = true;
    }

    /// Undoes writes (`lists` holds them oldest first). Every write numbered from the
    /// oldest on must be in `lists` (the writer undoes every write it has not made
    /// durable, and all later ones). Under the write locks of every shard they touch,
    /// taken together: a reader sees all of them undone or none.
    ///
    /// A panic in the user's `Eq` (or `Ord`, or `Clone` of a shared ordered leaf) leaves
    /// that one key as it is, or taken out; the rest is undone, and the panic goes on
    /// once the locks are released (on the writer thread, whose guard then fails every
    /// waiter).
    pub(crate) fn undo(&self, lists: Vec<UndoList<K, V>>) {
        let mut set = ShardSet::default();
        for list in &lists {
            set.union(&list.added_in);
            for (hash, ..) in &list.replaced {
                set.insert(shard_index(*hash));
            }
        }
        let mut trash = Trash::default();
        let mut guards: Vec<(usize, RwLockWriteGuard<'_, T>)> =
            set.iter().map(|i| (i, self.shards[i].0.write())).collect();
        let undone = self.undo_locked(&mut guards, lists, &mut trash);
        drop(guards);
        drop(trash);
        if let Err(p) = undone {
            resume_unwind(p);
        }
    }

    /// Undoes `lists` (oldest first) under locks already held: puts back every replaced
    /// entry, newest write first (user `Eq`), then takes out every entry that the oldest
    /// write or a later one set (no user code; see [`UndoList`]). Returns the first
    /// panic, having undone every other key.
    fn undo_locked(
        &self,
        guards: &mut [(usize, RwLockWriteGuard<'_, T>)],
        lists: Vec<UndoList<K, V>>,
        trash: &mut Trash<K, V>,
    ) -> Result<(), Box<dyn std::any::Any + Send>> {
        let mut first = Ok(());
        let mut added_in = ShardSet::default();
        let mut since = u64::MAX;
        for list in lists.into_iter().rev() {
            since = since.min(list.seq);
            added_in.union(&list.added_in);
            for (hash, k, e) in list.replaced.into_iter().rev() {
                let g = &mut guards[slot(hash, guards)].1;
                match catch_unwind(AssertUnwindSafe(|| g.put_back(hash, k, e, trash))) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.live.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(p) => first = first.and(Err(p)),
                }
            }
        }
        for i in added_in.iter() {
            let g = &mut guards[slot_of(i, guards)].1;
            let mut removed = 0;
            let r = catch_unwind(AssertUnwindSafe(|| {
                g.take_out_since(since, trash, &mut removed);
            }));
            self.live.fetch_sub(removed, Ordering::Relaxed);
            if let Err(p) = r {
                first = first.and(Err(p));
            }
        }
        first
    }
}

/// `changes` in shard order (stable: the changes of one key keep their order), each moved
/// into place along the cycles of the permutation. `per_shard` counts them.
fn by_shard<K, V>(changes: Vec<Change<K, V>>, per_shard: &[usize; SHARDS]) -> Vec<Change<K, V>> {
    let mut next = [0usize; SHARDS];
    let mut at = 0;
    for (s, n) in next.iter_mut().zip(per_shard) {
        *s = at;
        at += *n;
    }
    // Where each change goes.
    let mut to: Vec<usize> = changes
        .iter()
        .map(|c| {
            let s = &mut next[shard_index(c.hash)];
            *s += 1;
            *s - 1
        })
        .collect();
    let mut changes = changes;
    for i in 0..changes.len() {
        loop {
            let j = to[i];
            if j == i {
                break;
            }
            changes.swap(i, j);
            to.swap(i, j);
        }
    }
    changes
}

/// Where the guard of the shard of `hash` is among `guards` (sorted by shard, and
/// holding that shard).
fn slot<G>(hash: u64, guards: &[(usize, G)]) -> usize {
    slot_of(shard_index(hash), guards)
}

/// Where the guard of shard `i` is among `guards` (sorted by shard, and holding it).
fn slot_of<G>(i: usize, guards: &[(usize, G)]) -> usize {
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

    fn changes(
        _map: &Map<PanickyKey, u32>,
        c: &[(u32, Option<u32>)],
    ) -> Vec<Change<PanickyKey, u32>> {
        c.iter()
            .map(|&(k, v)| Change::new(PanickyKey(k), v))
            .collect()
    }

    /// Writes between the pieces of a copy make the shards regrow (their pairs move to
    /// other buckets): every pair that no write touched is still copied, with its value.
    #[test]
    fn a_copy_in_pieces_keeps_every_pair_while_the_shards_regrow() {
        let map: Map<u32, u32> = Map::new();
        let base: Vec<_> = (0..2000).map(|k| Change::new(k, Some(k + 1))).collect();
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let mut copied: Vec<(u32, u32)> = Vec::new();
        let mut grown = false;
        map.copy_in_pieces(2, |pairs, _| -> Result<(), ()> {
            copied.extend(pairs);
            if !grown && !copied.is_empty() {
                // About 20 more keys a shard, where 8 fill the room of most.
                grown = true;
                let more: Vec<_> = (10_000..15_000).map(|k| Change::new(k, Some(0))).collect();
                assert!(map.submit(more, None, |_, _| Ok(())).is_ok());
            }
            Ok(())
        })
        .expect("the copy goes through");
        let mut original: Vec<(u32, u32)> = copied.iter().copied().filter(|p| p.0 < 2000).collect();
        let with_repeats = original.len();
        original.sort_unstable();
        original.dedup();
        let missing: Vec<u32> = (0..2000)
            .filter(|&k| original.binary_search(&(k, k + 1)).is_err())
            .collect();
        assert!(missing.is_empty(), "not copied: {missing:?}");
        assert_eq!(original.len(), 2000, "copied with another value");
        // The shard being copied regrew and was copied again from its start.
        assert!(with_repeats > original.len(), "no shard was noted again");
    }

    #[test]
    fn an_undo_whose_eq_panics_undoes_every_other_key() {
        let map: Map<PanickyKey, u32> = Map::new();
        let base = changes(&map, &[(1, Some(1)), (2, Some(2)), (4, Some(4))]);
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let mut undos = Vec::new();
        let later = changes(&map, &[(1, Some(10)), (2, Some(20)), (3, Some(30))]);
        let more = changes(&map, &[(3, Some(31)), (4, None), (5, Some(50))]);
        for c in [later, more] {
            assert!(map
                .submit(c, None, |_, u| {
                    undos.push(u);
                    Ok(())
                })
                .is_ok());
        }
        assert_eq!(map.len(), 4);
        // The second `Eq` of the undo: the newest write's are key 4's (put back, found
        // absent: no `Eq`) and key 3's (there, replaced), then the older write's key 2.
        EQ_COUNTDOWN.with(|c| c.set(2));
        assert!(catch_unwind(AssertUnwindSafe(|| map.undo(undos))).is_err());
        let now: Vec<_> = (1..=5).map(|k| value(&map, k)).collect();
        assert_eq!(now[0], Some(1));
        assert!(
            now[1] == Some(20) || now[1].is_none(),
            "left as it is or taken out"
        );
        assert_eq!(&now[2..], [None, Some(4), None]);
        assert_eq!(map.len(), now.iter().flatten().count());
    }

    #[test]
    fn an_undo_of_several_writes_restores_the_state_before_the_oldest() {
        let map: Map<PanickyKey, u32> = Map::new();
        let base = changes(&map, &[(1, Some(1)), (2, Some(2)), (3, Some(3))]);
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let mut undos = Vec::new();
        let writes = [
            changes(&map, &[(1, None), (4, Some(40)), (2, Some(20))]),
            changes(&map, &[(1, Some(11)), (4, None), (5, Some(50))]),
            changes(
                &map,
                &[(4, Some(41)), (5, Some(51)), (2, None), (3, Some(30))],
            ),
        ];
        for c in writes {
            assert!(map
                .submit(c, None, |_, u| {
                    undos.push(u);
                    Ok(())
                })
                .is_ok());
        }
        map.undo(undos);
        let now: Vec<_> = (1..=5).map(|k| value(&map, k)).collect();
        assert_eq!(now, [Some(1), Some(2), Some(3), None, None]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn a_bulk_write_applies_shard_by_shard_in_order_per_key() {
        let map: Map<u32, u32> = Map::new();
        let mut c: Vec<_> = (0..5000).map(|k| Change::new(k, Some(k))).collect();
        c.extend((0..5000).step_by(2).map(|k| Change::new(k, None)));
        c.extend((0..5000).step_by(4).map(|k| Change::new(k, Some(k + 1))));
        let mut undo = None;
        assert!(map
            .submit(c, None, |_, u| {
                undo = Some(u);
                Ok(())
            })
            .is_ok());
        for k in 0..5000 {
            let want = match k % 4 {
                0 => Some(k + 1),
                2 => None,
                _ => Some(k),
            };
            assert_eq!(map.read(&k, |e| e.map(|e| e.value)), want, "key {k}");
        }
        assert_eq!(map.len(), 3750);
        map.undo(undo.into_iter().collect());
        assert_eq!(map.len(), 0);
        assert!(map.copy_all().is_empty());
    }

    #[test]
    fn a_submit_whose_eq_panics_changes_nothing_and_gives_its_number_back() {
        let map: Map<PanickyKey, u32> = Map::new();
        let base = changes(&map, &[(1, Some(1)), (2, Some(2))]);
        assert!(map.submit(base, None, |_, _| Ok(())).is_ok());
        let seq = map.seq();
        // Two `Eq` calls: keys 1 and 2 are there; key 4's hash has no bucket yet.
        for n in 1..=2 {
            let changes = changes(&map, &[(1, None), (2, Some(20)), (4, Some(40))]);
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
