//! One shard of the ordered map: the shard's pairs in key order, in leaves of at most
//! [`LEAF`] pairs, each leaf and the list of leaves behind an `Arc`.
//!
//! The `Arc`s make a copy of the shard cost one reference count (a [`Frozen`] state for
//! iterators, range scans and rebuilds, which then need no lock). A change to a shard
//! copies only what a frozen state still shares: the list of leaves (pointers) and the one
//! leaf it changes. With no frozen state alive nothing is copied.
//!
//! As in the hash table, every change finds its key first (user `Ord`, reading only),
//! then makes any copy it needs (user `Clone`, before anything changes: a copy that
//! panics leaves the original in place), and then changes the shard with moves alone; it
//! returns where it made the change, so that [`Table::revert`] undoes it exactly without
//! user code.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use crate::bounds::{Key, Value};
use crate::kind::{Applied, Revert, Table};
use crate::shard::{Entry, Trash};

/// Most pairs in a leaf; a leaf that grows past it is split in two halves.
const LEAF: usize = 64;

type Leaf<K, V> = Vec<(K, Entry<V>)>;

/// One shard of the ordered map (see the module's docs).
#[derive(Debug)]
pub struct OrdTable<K, V> {
    /// Never holds an empty leaf.
    leaves: Arc<Vec<Arc<Leaf<K, V>>>>,
    len: usize,
}

impl<K, V> Default for OrdTable<K, V> {
    fn default() -> Self {
        OrdTable {
            leaves: Arc::new(Vec::new()),
            len: 0,
        }
    }
}

/// Where a change was made in an ordered table.
#[derive(Debug, Clone, Copy)]
pub struct OrdPos {
    leaf: usize,
    pos: usize,
    shape: Shape,
}

/// What a change did to the list of leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing.
    Same,
    /// Added: the leaf was split in two after the insertion.
    Split,
    /// Added: the key made the table's first leaf. Removed: the leaf went with the key.
    Whole,
}

/// A shard's state at one instant, shared with the shard (see the module's docs).
pub(crate) type Frozen<K, V> = Arc<Vec<Arc<Leaf<K, V>>>>;

/// Where `q` is or would go: the leaf, and the position in it (`Ok`: found).
fn locate<K, V, Q>(leaves: &[Arc<Leaf<K, V>>], q: &Q) -> (usize, Result<usize, usize>)
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    if leaves.is_empty() {
        return (0, Err(0));
    }
    // The first leaf whose last key is not below `q`; past the end, the last leaf.
    let i = leaves
        .partition_point(|l| l.last().is_some_and(|(k, _)| k.borrow() < q))
        .min(leaves.len() - 1);
    (i, leaves[i].binary_search_by(|(k, _)| k.borrow().cmp(q)))
}

impl<K: Key + Ord, V: Value> OrdTable<K, V> {
    /// The entry of the key that borrows as `q` (runs the user's `Ord`).
    pub(crate) fn find_borrowed<Q>(&self, q: &Q) -> Option<&Entry<V>>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match locate(&self.leaves, q) {
            (i, Ok(p)) => Some(&self.leaves[i][p].1),
            (_, Err(_)) => None,
        }
    }

    /// The shard's state now, sharing its leaves (no user code).
    pub(crate) fn freeze(&self) -> Frozen<K, V> {
        Arc::clone(&self.leaves)
    }

    /// The leaf `i`, made this table's own (copying it, user `Clone`, if a frozen state
    /// shares it). Nothing changes if the copy panics.
    fn leaf_mut(&mut self, i: usize) -> &mut Leaf<K, V> {
        let leaves = Arc::make_mut(&mut self.leaves);
        Arc::make_mut(&mut leaves[i])
    }

    /// Inserts `(k, e)` at `pos` of leaf `leaf` (`leaf` may be one past the last leaf only
    /// when there is none), splitting the leaf if it grew past [`LEAF`]. Runs `Clone`
    /// only before changing anything.
    fn insert_at(&mut self, leaf: usize, pos: usize, k: K, e: Entry<V>) -> Shape {
        if self.leaves.is_empty() {
            Arc::make_mut(&mut self.leaves).push(Arc::new(vec![(k, e)]));
            self.len += 1;
            return Shape::Whole;
        }
        // Both copies first (if shared), then the moves.
        let leaves = Arc::make_mut(&mut self.leaves);
        let l = Arc::make_mut(&mut leaves[leaf]);
        l.insert(pos, (k, e));
        self.len += 1;
        if l.len() <= LEAF {
            return Shape::Same;
        }
        let upper = l.split_off(l.len() / 2);
        leaves.insert(leaf + 1, Arc::new(upper));
        Shape::Split
    }

    /// Removes the pair at `pos` of leaf `leaf`, and the leaf if it is left empty.
    fn remove_at(&mut self, leaf: usize, pos: usize) -> (K, Entry<V>, Shape) {
        let leaves = Arc::make_mut(&mut self.leaves);
        let l = Arc::make_mut(&mut leaves[leaf]);
        let (k, e) = l.remove(pos);
        self.len -= 1;
        if !l.is_empty() {
            return (k, e, Shape::Same);
        }
        leaves.remove(leaf);
        (k, e, Shape::Whole)
    }
}

impl<K: Key + Ord, V: Value> Table<K, V> for OrdTable<K, V> {
    type Pos = OrdPos;

    const CHEAP_FREEZE: bool = true;

    type Frozen = Vec<Frozen<K, V>>;

    fn freeze_all(tables: &[&Self]) -> Vec<Frozen<K, V>> {
        tables.iter().map(|t| t.freeze()).collect()
    }

    fn visit(
        frozen: &Vec<Frozen<K, V>>,
        f: &mut dyn FnMut(&K, &V) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        let mut m = Merge::new(frozen.clone(), Bound::<&K>::Unbounded, Bound::Unbounded);
        while let Some((k, v)) = m.next_ref() {
            f(k, v)?;
        }
        Ok(())
    }

    fn thaw(frozen: Vec<Frozen<K, V>>) -> Box<dyn Iterator<Item = (K, V)> + Send> {
        Box::new(Merge::new(frozen, Bound::<&K>::Unbounded, Bound::Unbounded))
    }

    fn reserve(&mut self, _n: usize) {}

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, _hash: u64, k: &K) -> Option<&Entry<V>> {
        self.find_borrowed(k)
    }

    fn pairs<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Entry<V>)>
    where
        K: 'a,
        V: 'a,
    {
        self.leaves
            .iter()
            .flat_map(|l| l.iter().map(|(k, e)| (k, e)))
    }

    fn set(&mut self, _hash: u64, k: K, e: Entry<V>) -> Applied<K, V, OrdPos> {
        match locate(&self.leaves, &k) {
            (leaf, Ok(pos)) => {
                let old = std::mem::replace(&mut self.leaf_mut(leaf)[pos].1, e);
                let at = OrdPos {
                    leaf,
                    pos,
                    shape: Shape::Same,
                };
                Applied::Replaced(at, k, old)
            }
            (leaf, Err(pos)) => {
                let shape = self.insert_at(leaf, pos, k, e);
                Applied::Added(OrdPos { leaf, pos, shape })
            }
        }
    }

    fn remove(&mut self, _hash: u64, k: K) -> Result<(OrdPos, K, Entry<V>), K> {
        let (leaf, Ok(pos)) = locate(&self.leaves, &k) else {
            return Err(k);
        };
        let (key, old, shape) = self.remove_at(leaf, pos);
        drop(k);
        Ok((OrdPos { leaf, pos, shape }, key, old))
    }

    fn revert(&mut self, step: Revert<K, V, OrdPos>, trash: &mut Trash<K, V>) {
        // Each leaf and list a step touched is this table's own by now (the step made it
        // so, under the same lock): the `make_mut`s below copy nothing.
        match step {
            Revert::Added(at) => {
                let leaves = Arc::make_mut(&mut self.leaves);
                match at.shape {
                    Shape::Whole => {
                        let l = leaves.remove(at.leaf);
                        trash.keys.extend(own(l).into_iter().map(|(k, e)| {
                            trash.entries.push(e);
                            k
                        }));
                        self.len -= 1;
                        return;
                    }
                    Shape::Split => {
                        // The upper half goes back on the end of the leaf.
                        let upper = own(leaves.remove(at.leaf + 1));
                        Arc::make_mut(&mut leaves[at.leaf]).extend(upper);
                    }
                    Shape::Same => {}
                }
                let (k, e) = Arc::make_mut(&mut leaves[at.leaf]).remove(at.pos);
                trash.keys.push(k);
                trash.entries.push(e);
                self.len -= 1;
            }
            Revert::Replaced(at, key, old) => {
                trash.keys.push(key);
                let e = std::mem::replace(&mut self.leaf_mut(at.leaf)[at.pos].1, old);
                trash.entries.push(e);
            }
            Revert::Removed(at, key, old) => {
                let leaves = Arc::make_mut(&mut self.leaves);
                if at.shape == Shape::Whole {
                    leaves.insert(at.leaf, Arc::new(vec![(key, old)]));
                } else {
                    Arc::make_mut(&mut leaves[at.leaf]).insert(at.pos, (key, old));
                }
                self.len += 1;
            }
        }
    }

    fn put_back(&mut self, _hash: u64, k: K, e: Entry<V>, trash: &mut Trash<K, V>) -> bool {
        match locate(&self.leaves, &k) {
            (leaf, Ok(pos)) => {
                let old = std::mem::replace(&mut self.leaf_mut(leaf)[pos].1, e);
                trash.entries.push(old);
                trash.keys.push(k);
                true
            }
            (leaf, Err(pos)) => {
                self.insert_at(leaf, pos, k, e);
                false
            }
        }
    }

    fn take_out(&mut self, _hash: u64, k: K, trash: &mut Trash<K, V>) -> bool {
        let (leaf, Ok(pos)) = locate(&self.leaves, &k) else {
            trash.keys.push(k);
            return false;
        };
        let (key, old, _) = self.remove_at(leaf, pos);
        trash.keys.push(key);
        trash.keys.push(k);
        trash.entries.push(old);
        true
    }

    fn take_out_since(&mut self, since: u64, trash: &mut Trash<K, V>, removed: &mut usize) {
        let mut i = 0;
        while i < self.leaves.len() {
            if !self.leaves[i].iter().any(|(_, e)| e.version >= since) {
                i += 1;
                continue;
            }
            // The one user code: a copy of the leaf if a frozen state shares it, made
            // before this leaf changes.
            let l = self.leaf_mut(i);
            let before = l.len();
            for (k, e) in l.extract_if(.., |(_, e)| e.version >= since) {
                trash.keys.push(k);
                trash.entries.push(e);
                *removed += 1;
            }
            let (gone, empty) = (before - l.len(), l.is_empty());
            self.len -= gone;
            if empty {
                Arc::make_mut(&mut self.leaves).remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// The leaf in `l`, which this table owns alone (a step made it, under the same lock).
fn own<K: Clone, V: Clone>(l: Arc<Leaf<K, V>>) -> Leaf<K, V> {
    Arc::try_unwrap(l).unwrap_or_else(|shared| (*shared).clone())
}

/// A position in one frozen shard: the leaf and the pair in it.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    leaf: usize,
    pos: usize,
}

/// The pairs of every shard of a frozen ordered map, merged into key order, from a start
/// bound to an end bound. Holds no lock: the shards' frozen states keep what it reads.
pub(crate) struct Merge<K, V> {
    shards: Vec<Frozen<K, V>>,
    /// The shards that have pairs left, as a binary min-heap on their current keys.
    heap: Vec<(usize, Cursor)>,
    end: std::ops::Bound<K>,
}

impl<K: Ord, V> Merge<K, V> {
    /// The pairs of `shards` from `start` on, up to `end`.
    pub(crate) fn new<Q>(
        shards: Vec<Frozen<K, V>>,
        start: std::ops::Bound<&Q>,
        end: std::ops::Bound<K>,
    ) -> Self
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let mut heap = Vec::new();
        for (s, leaves) in shards.iter().enumerate() {
            let first = match start {
                Bound::Unbounded => Some(Cursor { leaf: 0, pos: 0 }),
                Bound::Included(q) | Bound::Excluded(q) => {
                    let (leaf, at) = locate(leaves, q);
                    let pos = match at {
                        Ok(p) if matches!(start, Bound::Excluded(_)) => p + 1,
                        Ok(p) | Err(p) => p,
                    };
                    Some(Cursor { leaf, pos })
                }
            };
            if let Some(c) = first.and_then(|c| normalize(leaves, c)) {
                heap.push((s, c));
            }
        }
        let mut m = Merge { shards, heap, end };
        for i in (0..m.heap.len() / 2).rev() {
            m.sift_down(i);
        }
        m
    }

    fn key(&self, at: (usize, Cursor)) -> &K {
        &self.shards[at.0][at.1.leaf][at.1.pos].0
    }

    fn less(&self, a: usize, b: usize) -> bool {
        self.key(self.heap[a]) < self.key(self.heap[b])
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.less(l, least) {
                least = l;
            }
            if r < self.heap.len() && self.less(r, least) {
                least = r;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// The next pair, borrowed from the frozen shards.
    pub(crate) fn next_ref(&mut self) -> Option<(&K, &V)> {
        let &(s, c) = self.heap.first()?;
        let past_end = match &self.end {
            Bound::Unbounded => false,
            Bound::Included(e) => self.key((s, c)).cmp(e) == Ordering::Greater,
            Bound::Excluded(e) => self.key((s, c)).cmp(e) != Ordering::Less,
        };
        if past_end {
            self.heap.clear();
            return None;
        }
        match normalize(
            &self.shards[s],
            Cursor {
                pos: c.pos + 1,
                ..c
            },
        ) {
            Some(next) => self.heap[0] = (s, next),
            None => {
                self.heap.swap_remove(0);
            }
        }
        self.sift_down(0);
        let (k, e) = &self.shards[s][c.leaf][c.pos];
        Some((k, &e.value))
    }
}

impl<K: Clone + Ord, V: Clone> Iterator for Merge<K, V> {
    type Item = (K, V);

    /// The next pair, cloned (user `Clone`, no lock held).
    fn next(&mut self) -> Option<(K, V)> {
        self.next_ref().map(|(k, v)| (k.clone(), v.clone()))
    }
}

/// `c`, or the start of the next leaf if `c` is past the end of its leaf; `None` past the
/// last leaf.
fn normalize<K, V>(leaves: &[Arc<Leaf<K, V>>], mut c: Cursor) -> Option<Cursor> {
    while c.leaf < leaves.len() && c.pos >= leaves[c.leaf].len() {
        c = Cursor {
            leaf: c.leaf + 1,
            pos: 0,
        };
    }
    (c.leaf < leaves.len()).then_some(c)
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

    fn pairs(t: &OrdTable<u32, u32>) -> Vec<(u32, u32)> {
        t.pairs().map(|(k, e)| (*k, e.value)).collect()
    }

    fn set(t: &mut OrdTable<u32, u32>, k: u32, v: u32) -> Revert<u32, u32, OrdPos> {
        match t.set(0, k, entry(v)) {
            Applied::Added(at) => Revert::Added(at),
            Applied::Replaced(at, k, old) => Revert::Replaced(at, k, old),
        }
    }

    fn remove(t: &mut OrdTable<u32, u32>, k: u32) -> Revert<u32, u32, OrdPos> {
        let (at, k, old) = t.remove(0, k).expect("present");
        Revert::Removed(at, k, old)
    }

    #[test]
    fn pairs_stay_in_key_order_across_splits_and_removals() {
        let mut t = OrdTable::default();
        let mut model = std::collections::BTreeMap::new();
        // A fixed pseudo-random walk over 0..500: enough to split and empty leaves.
        let mut x = 12345u32;
        for _ in 0..5000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let k = (x >> 8) % 500;
            if x & 1 == 0 {
                let _ = t.set(0, k, entry(x));
                model.insert(k, x);
            } else {
                let _ = t.remove(0, k);
                model.remove(&k);
            }
            assert_eq!(t.len(), model.len());
        }
        let want: Vec<_> = model.into_iter().collect();
        assert_eq!(pairs(&t), want);
        assert!(t.leaves.iter().all(|l| !l.is_empty() && l.len() <= LEAF));
    }

    #[test]
    fn steps_revert_exactly_in_reverse_order() {
        let mut t = OrdTable::default();
        let mut steps = Vec::new();
        for k in 0..200 {
            steps.push(set(&mut t, k * 2, k));
        }
        let frozen = t.freeze();
        let before = pairs(&t);
        let mut trash = Trash::default();
        let mut more = Vec::new();
        // Inserts that split leaves, replacements, removals that empty a leaf.
        for k in 0..70 {
            more.push(set(&mut t, 1, 1000 + k));
            more.push(set(&mut t, k * 2 + 1, k));
        }
        for k in 0..200 {
            more.push(remove(&mut t, k * 2));
        }
        assert!(t.remove(0, 9999).is_err());
        for step in more.into_iter().rev() {
            t.revert(step, &mut trash);
        }
        assert_eq!(pairs(&t), before);
        assert_eq!(t.len(), 200);
        // The frozen state never saw any of it.
        let seen: Vec<_> = frozen
            .iter()
            .flat_map(|l| l.iter().map(|(k, e)| (*k, e.value)))
            .collect();
        assert_eq!(seen, before);
        for step in steps.into_iter().rev() {
            t.revert(step, &mut trash);
        }
        assert!(pairs(&t).is_empty());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn take_out_since_takes_the_newer_versions_and_empty_leaves() {
        let mut t = OrdTable::default();
        for k in 0..300u32 {
            let version = if (100..200).contains(&k) || k % 7 == 0 {
                9
            } else {
                1
            };
            let _ = t.set(0, k, Entry { value: k, version });
        }
        let frozen = t.freeze();
        let (mut trash, mut removed) = (Trash::default(), 0);
        t.take_out_since(5, &mut trash, &mut removed);
        let want: Vec<_> = (0..300)
            .filter(|k| !(100..200).contains(k) && k % 7 != 0)
            .map(|k| (k, k))
            .collect();
        assert_eq!(pairs(&t), want);
        assert_eq!((t.len(), removed), (want.len(), 300 - want.len()));
        assert!(t.leaves.iter().all(|l| !l.is_empty()));
        assert_eq!(frozen.iter().map(|l| l.len()).sum::<usize>(), 300);
    }

    #[test]
    fn a_merge_yields_every_shard_in_key_order_within_bounds() {
        let mut shards: Vec<OrdTable<u32, u32>> = (0..5).map(|_| OrdTable::default()).collect();
        for k in 0..1000u32 {
            let _ = shards[(k * 7 % 5) as usize].set(0, k, entry(k));
        }
        let frozen = || shards.iter().map(OrdTable::freeze).collect::<Vec<_>>();
        let collect = |mut m: Merge<u32, u32>| {
            let mut out = Vec::new();
            while let Some((k, _)) = m.next_ref() {
                out.push(*k);
            }
            out
        };
        let all = collect(Merge::new(
            frozen(),
            Bound::<&u32>::Unbounded,
            Bound::Unbounded,
        ));
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let some = collect(Merge::new(
            frozen(),
            Bound::Excluded(&10),
            Bound::Included(20),
        ));
        assert_eq!(some, (11..=20).collect::<Vec<_>>());
        let none = collect(Merge::new(
            frozen(),
            Bound::Included(&2000),
            Bound::Unbounded,
        ));
        assert!(none.is_empty());
    }
}
