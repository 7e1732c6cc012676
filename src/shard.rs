//! One shard of the map: keys found by a hash computed once, before any lock, so that
//! the only user code that runs under a shard's lock is `Eq` (to find a key) and
//! nothing that changes the shard can panic half-way.
//!
//! The shard is a `HashMap` from each key's 64-bit hash to the keys with that hash (one,
//! unless 64 bits collide). Growing it rehashes stored `u64`s, never the user's `Hash`,
//! which could panic in the middle of the standard map's rehash and lose entries. Each
//! change finds its key first (user `Eq`, reading only) and then changes the shard with
//! moves alone; it returns a [`Step`] that reverts it exactly, without user code, so a
//! transaction cut short by a panic is rolled back whole.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// One value, with the sequence number of the write that set it (what `transact` checks).
#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
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

/// How to revert one change exactly, without user code (see the module's docs).
#[derive(Debug)]
pub(crate) enum Step<K, V> {
    /// A key was added; `key` is the caller's copy of it.
    Added {
        hash: u64,
        key: K,
        /// The key got a bucket of its own (else it was pushed onto a bucket).
        alone: bool,
    },
    /// The entry at `index` of the key's bucket was replaced; `key` is the caller's copy.
    Replaced {
        hash: u64,
        index: usize,
        key: K,
        old: Entry<V>,
    },
    /// The pair at `index` was removed (swapped out); `key` is the shard's copy.
    Removed {
        hash: u64,
        index: usize,
        key: K,
        old: Entry<V>,
        /// The key's bucket went with it.
        alone: bool,
    },
}

/// What a change let go of: dropped (user `Drop`) only once every lock is released.
#[derive(Debug)]
pub(crate) struct Trash<K, V> {
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
pub(crate) struct Shard<K, V> {
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
    /// Room for `n` more keys.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.buckets.reserve(n);
    }

    /// The entry of `k`, whose hash is `hash` (runs the user's `Eq`).
    pub(crate) fn get(&self, hash: u64, k: &K) -> Option<&Entry<V>> {
        match self.buckets.get(&hash)? {
            Bucket::One(x, e) => (x == k).then_some(e),
            Bucket::Many(v) => v.iter().find(|(x, _)| x == k).map(|(_, e)| e),
        }
    }

    /// About the number of keys (exact unless 64-bit hashes collide).
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Every pair, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &Entry<V>)> {
        self.buckets.values().flat_map(Bucket::iter)
    }

    /// Sets `k` (`copy` is a second copy of it, made by the caller before any lock) to
    /// `e`. A panic (in `Eq`) comes before anything changes.
    pub(crate) fn set(&mut self, hash: u64, k: K, copy: K, e: Entry<V>) -> Step<K, V> {
        let found = self.buckets.get(&hash).map(|b| b.find(&k));
        match found {
            None => {
                self.buckets.insert(hash, Bucket::One(copy, e));
                Step::Added {
                    hash,
                    key: k,
                    alone: true,
                }
            }
            Some(None) => {
                self.bucket(hash).push(copy, e);
                Step::Added {
                    hash,
                    key: k,
                    alone: false,
                }
            }
            Some(Some(index)) => {
                // `copy` is not needed: the shard keeps its own copy of the key.
                drop(copy);
                let old = std::mem::replace(self.bucket(hash).entry_mut(index), e);
                Step::Replaced {
                    hash,
                    index,
                    key: k,
                    old,
                }
            }
        }
    }

    /// Removes `k`; `None` (with `k` handed back) if it was absent. A panic (in `Eq`)
    /// comes before anything changes.
    pub(crate) fn remove(&mut self, hash: u64, k: K) -> Result<Step<K, V>, K> {
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
        Ok(Step::Removed {
            hash,
            index,
            key,
            old,
            alone,
        })
    }

    /// Reverts `step`, the last change made to this shard that is not reverted yet.
    /// Runs no user code: what it lets go of goes to `trash`.
    pub(crate) fn revert(&mut self, step: Step<K, V>, trash: &mut Trash<K, V>) {
        match step {
            Step::Added { hash, key, alone } => {
                trash.keys.push(key);
                let pair = if alone {
                    self.buckets.remove(&hash).and_then(Bucket::into_one)
                } else {
                    self.buckets.get_mut(&hash).and_then(Bucket::pop)
                };
                if let Some((k, e)) = pair {
                    trash.keys.push(k);
                    trash.entries.push(e);
                }
            }
            Step::Replaced {
                hash,
                index,
                key,
                old,
            } => {
                trash.keys.push(key);
                if let Some(b) = self.buckets.get_mut(&hash) {
                    trash
                        .entries
                        .push(std::mem::replace(b.entry_mut(index), old));
                }
            }
            Step::Removed {
                hash,
                index,
                key,
                old,
                alone,
            } => {
                if alone {
                    self.buckets.insert(hash, Bucket::One(key, old));
                } else {
                    self.bucket(hash).unswap_remove(index, key, old);
                }
            }
        }
    }

    /// Puts `e` back as the entry of `k` (undo of a later write; runs `Eq`). Returns
    /// whether the key was present.
    pub(crate) fn put_back(
        &mut self,
        hash: u64,
        k: K,
        e: Entry<V>,
        trash: &mut Trash<K, V>,
    ) -> bool {
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

    /// Takes `k` out (undo of a later write that added it; runs `Eq`). Returns whether
    /// it was present.
    pub(crate) fn take_out(&mut self, hash: u64, k: K, trash: &mut Trash<K, V>) -> bool {
        let r = self.remove(hash, k);
        match r {
            Ok(step) => {
                if let Step::Removed { key, old, .. } = step {
                    trash.keys.push(key);
                    trash.entries.push(old);
                }
                true
            }
            Err(k) => {
                trash.keys.push(k);
                false
            }
        }
    }

    fn bucket(&mut self, hash: u64) -> &mut Bucket<K, V> {
        self.buckets
            .get_mut(&hash)
            .expect("the bucket was found under the same lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u32) -> Entry<u32> {
        Entry {
            value: v,
            version: 0,
        }
    }

    fn pairs(s: &Shard<u32, u32>) -> Vec<(u32, u32)> {
        let mut v: Vec<_> = s.iter().map(|(k, e)| (*k, e.value)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn steps_revert_exactly_in_reverse_order_even_within_one_bucket() {
        // Every key in one bucket: the colliding case is the one with indices.
        let mut s: Shard<u32, u32> = Shard::default();
        let mut steps = Vec::new();
        for k in 0..4 {
            steps.push(s.set(7, k, k, entry(k)));
        }
        let before = pairs(&s);
        let mut trash = Trash::default();
        let mut more = vec![
            s.remove(7, 1).expect("present"),
            s.set(7, 3, 3, entry(30)),
            s.set(7, 9, 9, entry(90)),
            s.remove(7, 0).expect("present"),
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
        let _ = s.set(1, 5, 5, entry(5));
        let _ = s.set(1, 6, 6, entry(6));
        assert!(s.put_back(1, 5, entry(50), &mut trash));
        assert!(!s.put_back(2, 8, entry(8), &mut trash));
        assert!(s.take_out(1, 6, &mut trash));
        assert!(!s.take_out(1, 6, &mut trash));
        assert_eq!(pairs(&s), [(5, 50), (8, 8)]);
        assert_eq!(s.get(1, &5).map(|e| e.value), Some(50));
        assert!(s.get(1, &6).is_none());
    }
}
