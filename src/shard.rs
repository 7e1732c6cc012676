//! One shard of the map: keys found by a hash computed once, before any lock, so that
//! the only user code that runs under a shard's lock is `Eq` (to find a key) and
//! nothing that changes the shard can panic half-way.
//!
//! The shard is a `HashMap` from each key's 64-bit hash to the keys with that hash (one,
//! unless 64 bits collide). Growing it rehashes stored `u64`s, never the user's `Hash`,
//! which could panic in the middle of the standard map's rehash and lose entries. Each
//! change finds its key first (user `Eq`, reading only) and then changes the shard with
//! moves alone; it returns where it made the change, so that it is reverted exactly,
//! without user code, and a transaction cut short by a panic is rolled back whole.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::bounds::{Key, Value};
use crate::kind::{Applied, Revert, Table};
use crate::map::Change;

/// One value, with the sequence number of the write that set it (what `transact` checks).
#[derive(Debug, Clone)]
pub struct Entry<V> {
    pub(crate) value: V,
    pub(crate) version: u64,
}

/// Passes a key's precomputed hash through. The top bits chose the shard and are the
/// same for every key in it, so they are rotated away from the bits the table uses.
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
        self.0 = n.rotate_left(32);
    }
}

/// The keys of one hash, nearly always one of them.
#[derive(Debug)]
enum Bucket<K, V> {
    One(K, Entry<V>),
    Many(Vec<(K, Entry<V>)>),
}

impl<K, V> Bucket<K, V> {
    fn len(&self) -> usize {
        match self {
            Bucket::One(..) => 1,
            Bucket::Many(v) => v.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &Entry<V>)> {
        let (one, many) = match self {
            Bucket::One(k, e) => (Some((k, e)), &[][..]),
            Bucket::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(k, e)| (k, e)))
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry<V> {
        match self {
            Bucket::One(_, e) => e,
            Bucket::Many(v) => &mut v[i].1,
        }
    }

    fn push(&mut self, k: K, e: Entry<V>) {
        match self {
            Bucket::Many(v) => v.push((k, e)),
            Bucket::One(..) => {
                let Bucket::One(k0, e0) = std::mem::replace(self, Bucket::Many(Vec::new())) else {
                    unreachable!("matched One above")
                };
                *self = Bucket::Many(vec![(k0, e0), (k, e)]);
            }
        }
    }

    /// Removes the pair at `i`, moving the last one into its place. Only for a bucket of
    /// two or more (a bucket of one is removed from the shard instead).
    fn swap_remove(&mut self, i: usize) -> (K, Entry<V>) {
        match self {
            Bucket::Many(v) => v.swap_remove(i),
            Bucket::One(..) => unreachable!("a bucket of one is removed whole"),
        }
    }

    /// Undoes [`swap_remove`](Self::swap_remove) of `i`.
    fn unswap_remove(&mut self, i: usize, k: K, e: Entry<V>) {
        self.push(k, e);
        if let Bucket::Many(v) = self {
            let last = v.len() - 1;
            v.swap(i, last);
        }
    }

    /// Undoes [`push`](Self::push).
    fn pop(&mut self) -> Option<(K, Entry<V>)> {
        match self {
            Bucket::Many(v) => v.pop(),
            Bucket::One(..) => None,
        }
    }

    fn into_one(self) -> Option<(K, Entry<V>)> {
        match self {
            Bucket::One(k, e) => Some((k, e)),
            Bucket::Many(mut v) => v.pop(),
        }
    }
}

impl<K: Eq, V> Bucket<K, V> {
    /// Where `k` is (runs the user's `Eq`; changes nothing).
    fn find(&self, k: &K) -> Option<usize> {
        match self {
            Bucket::One(x, _) => (x == k).then_some(0),
            Bucket::Many(v) => v.iter().position(|(x, _)| x == k),
        }
    }
}

/// Where a change was made in a hash table: the key's hash, the index in its bucket,
/// and whether the key had (or got) a bucket of its own.
#[derive(Debug, Clone, Copy)]
pub struct HashPos {
    hash: u64,
    index: usize,
    alone: bool,
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
    buckets: HashMap<u64, Bucket<K, V>, BuildHasherDefault<PassThrough>>,
}

impl<K, V> Default for Shard<K, V> {
    fn default() -> Self {
        Shard {
            buckets: HashMap::default(),
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
        match self.buckets.get(&hash)? {
            Bucket::One(x, e) => (x.borrow() == q).then_some(e),
            Bucket::Many(v) => v.iter().find(|(x, _)| x.borrow() == q).map(|(_, e)| e),
        }
    }

    fn bucket(&mut self, hash: u64) -> &mut Bucket<K, V> {
        self.buckets
            .get_mut(&hash)
            .expect("the bucket was found under the same lock")
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

    fn reserve(&mut self, n: usize) {
        self.buckets.reserve(n);
    }

    fn get(&self, hash: u64, k: &K) -> Option<&Entry<V>> {
        self.find_borrowed(hash, k)
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }

    fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Entry<V>)>
    where
        K: 'a,
        V: 'a,
    {
        self.buckets.values().flat_map(Bucket::iter)
    }

    type Mark = u64;

    fn marks(&self, out: &mut Vec<u64>) {
        out.extend(self.buckets.keys());
    }

    fn visit_marked(&self, marks: &[u64], f: &mut dyn FnMut(&K, &Entry<V>)) {
        for (k, e) in marks
            .iter()
            .filter_map(|h| self.buckets.get(h))
            .flat_map(Bucket::iter)
        {
            f(k, e);
        }
    }

    /// A panic (in `Eq`) comes before anything changes.
    fn set(&mut self, hash: u64, k: K, e: Entry<V>) -> Applied<K, V, HashPos> {
        let found = self.buckets.get(&hash).map(|b| b.find(&k));
        match found {
            None => {
                self.buckets.insert(hash, Bucket::One(k, e));
                Applied::Added(HashPos {
                    hash,
                    index: 0,
                    alone: true,
                })
            }
            Some(None) => {
                self.bucket(hash).push(k, e);
                Applied::Added(HashPos {
                    hash,
                    index: 0,
                    alone: false,
                })
            }
            Some(Some(index)) => {
                // The shard keeps its own copy of the key; the caller's goes back.
                let old = std::mem::replace(self.bucket(hash).entry_mut(index), e);
                let at = HashPos {
                    hash,
                    index,
                    alone: false,
                };
                Applied::Replaced(at, k, old)
            }
        }
    }

    /// A panic (in `Eq`) comes before anything changes.
    fn remove(&mut self, hash: u64, k: K) -> Result<(HashPos, K, Entry<V>), K> {
        let Some(Some(index)) = self.buckets.get(&hash).map(|b| b.find(&k)) else {
            return Err(k);
        };
        let alone = self.bucket(hash).len() == 1;
        let (key, old) = if alone {
            let pair = self.buckets.remove(&hash).and_then(Bucket::into_one);
            pair.expect("the bucket holds the key found in it")
        } else {
            self.bucket(hash).swap_remove(index)
        };
        drop(k);
        Ok((HashPos { hash, index, alone }, key, old))
    }

    fn revert(&mut self, step: Revert<K, V, HashPos>, trash: &mut Trash<K, V>) {
        match step {
            Revert::Added(at) => {
                let pair = if at.alone {
                    self.buckets.remove(&at.hash).and_then(Bucket::into_one)
                } else {
                    self.buckets.get_mut(&at.hash).and_then(Bucket::pop)
                };
                if let Some((k, e)) = pair {
                    trash.keys.push(k);
                    trash.entries.push(e);
                }
            }
            Revert::Replaced(at, key, old) => {
                trash.keys.push(key);
                if let Some(b) = self.buckets.get_mut(&at.hash) {
                    trash
                        .entries
                        .push(std::mem::replace(b.entry_mut(at.index), old));
                }
            }
            Revert::Removed(at, key, old) => {
                if at.alone {
                    self.buckets.insert(at.hash, Bucket::One(key, old));
                } else {
                    self.bucket(at.hash).unswap_remove(at.index, key, old);
                }
            }
        }
    }

    fn put_back(&mut self, hash: u64, k: K, e: Entry<V>, trash: &mut Trash<K, V>) -> bool {
        match self.buckets.get_mut(&hash) {
            None => {
                self.buckets.insert(hash, Bucket::One(k, e));
                false
            }
            Some(b) => {
                if let Some(i) = b.find(&k) {
                    trash.entries.push(std::mem::replace(b.entry_mut(i), e));
                    trash.keys.push(k);
                    true
                } else {
                    b.push(k, e);
                    false
                }
            }
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
        let mut out = |(k, e): (K, Entry<V>)| {
            trash.keys.push(k);
            trash.entries.push(e);
            *removed += 1;
        };
        // Buckets of several keys first (64-bit hashes that collide: nearly never).
        for b in self.buckets.values_mut() {
            if let Bucket::Many(v) = b {
                v.extract_if(.., |(_, e)| e.version >= since)
                    .for_each(&mut out);
            }
        }
        let gone = self.buckets.extract_if(|_, b| match b {
            Bucket::One(_, e) => e.version >= since,
            Bucket::Many(v) => v.is_empty(),
        });
        for (_, b) in gone {
            if let Bucket::One(k, e) = b {
                out((k, e));
            }
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
    fn steps_revert_exactly_in_reverse_order_even_within_one_bucket() {
        // Every key in one bucket: the colliding case is the one with indices.
        let mut s: Shard<u32, u32> = Shard::default();
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
    fn take_out_since_takes_the_newer_versions_even_within_one_bucket() {
        let mut s: Shard<u32, u32> = Shard::default();
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
}
