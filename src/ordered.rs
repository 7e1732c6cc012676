//! One shard of the ordered map: the shard's pairs in key order, in leaves of at most
//! [`LEAF`] pairs, each leaf and the list of leaves behind an `Arc`.
//!
//! The `Arc`s make a copy of the shard cost one reference count (a frozen state for
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
use std::ops::Bound;
use std::sync::Arc;

use crate::bounds::{Key, Value};
use crate::kind::{Step, Table};
use crate::shard::{Entry, Trash};

/// Most pairs in a leaf; a leaf that grows past it is split in two halves.
const LEAF: usize = 64;

pub(crate) type Leaf<K, V> = Vec<(K, Entry<V>)>;

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

type OrdStep<K, V> = Step<K, V, OrdPos>;

/// A shard's state at one instant, shared with the shard (see the module's docs).
pub(crate) type Leaves<K, V> = Arc<Vec<Arc<Leaf<K, V>>>>;

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
    pub(crate) fn freeze(&self) -> Leaves<K, V> {
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

    const SPREAD: bool = false;

    const CHEAP_FREEZE: bool = true;

    type Frozen = Leaves<K, V>;

    fn freeze_all(tables: &[&Self]) -> Leaves<K, V> {
        // Every key is in the first shard (`SPREAD` is false).
        tables.first().map(|t| t.freeze()).unwrap_or_default()
    }

    fn visit(
        frozen: &Leaves<K, V>,
        f: &mut dyn FnMut(&K, &V) -> crate::error::Result<()>,
    ) -> crate::error::Result<()> {
        frozen
            .iter()
            .flat_map(|l| l.iter())
            .try_for_each(|(k, e)| f(k, &e.value))
    }

    fn thaw(frozen: Leaves<K, V>) -> Box<dyn DoubleEndedIterator<Item = (K, V)> + Send> {
        let span = Span::all(&frozen);
        Box::new(Owned {
            leaves: frozen,
            span,
        })
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

    fn set(&mut self, hash: u64, k: K, copy: K, e: Entry<V>) -> OrdStep<K, V> {
        match locate(&self.leaves, &k) {
            (leaf, Ok(pos)) => {
                drop(copy);
                let old = std::mem::replace(&mut self.leaf_mut(leaf)[pos].1, e);
                Step::Replaced {
                    hash,
                    key: k,
                    old,
                    at: OrdPos {
                        leaf,
                        pos,
                        shape: Shape::Same,
                    },
                }
            }
            (leaf, Err(pos)) => {
                let shape = self.insert_at(leaf, pos, copy, e);
                Step::Added {
                    hash,
                    key: k,
                    at: OrdPos { leaf, pos, shape },
                }
            }
        }
    }

    fn remove(&mut self, hash: u64, k: K) -> Result<OrdStep<K, V>, K> {
        let (leaf, Ok(pos)) = locate(&self.leaves, &k) else {
            return Err(k);
        };
        let (key, old, shape) = self.remove_at(leaf, pos);
        drop(k);
        Ok(Step::Removed {
            hash,
            key,
            old,
            at: OrdPos { leaf, pos, shape },
        })
    }

    fn revert(&mut self, step: OrdStep<K, V>, trash: &mut Trash<K, V>) {
        // Each leaf and list a step touched is this table's own by now (the step made it
        // so, under the same lock): the `make_mut`s below copy nothing.
        match step {
            Step::Added { key, at, .. } => {
                trash.keys.push(key);
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
            Step::Replaced { key, old, at, .. } => {
                trash.keys.push(key);
                let e = std::mem::replace(&mut self.leaf_mut(at.leaf)[at.pos].1, old);
                trash.entries.push(e);
            }
            Step::Removed { key, old, at, .. } => {
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
}

/// The leaf in `l`, which this table owns alone (a step made it, under the same lock).
fn own<K: Clone, V: Clone>(l: Arc<Leaf<K, V>>) -> Leaf<K, V> {
    Arc::try_unwrap(l).unwrap_or_else(|shared| (*shared).clone())
}

/// A position among a frozen table's pairs: a leaf and a pair in it. Normalized: the
/// pair is in the leaf, or the position is `(leaves, 0)`, past the last pair; so
/// positions compare as tuples.
type At = (usize, usize);

/// `(leaf, pos)`, moved to the start of the next leaf if it is past the end of its own.
fn normalize<K, V>(leaves: &[Arc<Leaf<K, V>>], (leaf, pos): At) -> At {
    if leaf < leaves.len() && pos >= leaves[leaf].len() {
        (leaf + 1, 0)
    } else {
        (leaf, pos)
    }
}

/// Where the pairs from the bound `b` on start, as a lower bound (`upper` false) or where
/// they end, as an upper bound (exclusive end).
fn position<K, V, Q>(leaves: &[Arc<Leaf<K, V>>], b: Bound<&Q>, upper: bool) -> At
where
    K: Borrow<Q>,
    Q: Ord + ?Sized,
{
    let (q, past_equal) = match b {
        Bound::Unbounded if upper => return (leaves.len(), 0),
        Bound::Unbounded => return (0, 0),
        // A lower bound includes an equal key; an upper bound stops after it.
        Bound::Included(q) => (q, upper),
        Bound::Excluded(q) => (q, !upper),
    };
    let at = match locate(leaves, q) {
        (leaf, Ok(p)) if past_equal => (leaf, p + 1),
        (leaf, Ok(p) | Err(p)) => (leaf, p),
    };
    normalize(leaves, at)
}

/// The positions from `front` (included) to `back` (excluded) of one frozen table: a walk
/// in key order from either end, with no comparison of keys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    front: At,
    back: At,
}

impl Span {
    /// Every pair of `leaves`.
    pub(crate) fn all<K, V>(leaves: &[Arc<Leaf<K, V>>]) -> Span {
        Span {
            front: (0, 0),
            back: (leaves.len(), 0),
        }
    }

    /// The pairs of `leaves` within the bounds (empty if the start is past the end).
    pub(crate) fn of<K, V, Q>(leaves: &[Arc<Leaf<K, V>>], start: Bound<&Q>, end: Bound<&Q>) -> Span
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let front = position(leaves, start, false);
        let back = position(leaves, end, true).max(front);
        Span { front, back }
    }

    /// The next pair from the front.
    pub(crate) fn next<'a, K, V>(
        &mut self,
        leaves: &'a [Arc<Leaf<K, V>>],
    ) -> Option<(&'a K, &'a V)> {
        if self.front >= self.back {
            return None;
        }
        let (k, e) = &leaves[self.front.0][self.front.1];
        self.front = normalize(leaves, (self.front.0, self.front.1 + 1));
        Some((k, &e.value))
    }

    /// The next pair from the back.
    pub(crate) fn next_back<'a, K, V>(
        &mut self,
        leaves: &'a [Arc<Leaf<K, V>>],
    ) -> Option<(&'a K, &'a V)> {
        if self.front >= self.back {
            return None;
        }
        self.back = match self.back {
            (leaf, 0) => (leaf - 1, leaves[leaf - 1].len() - 1),
            (leaf, pos) => (leaf, pos - 1),
        };
        let (k, e) = &leaves[self.back.0][self.back.1];
        Some((k, &e.value))
    }

    /// Keeps the first `n` pairs left from the front.
    pub(crate) fn truncate<K, V>(&mut self, leaves: &[Arc<Leaf<K, V>>], n: usize) {
        let mut back = self.front;
        let mut left = n;
        while left > 0 && back.0 < leaves.len() {
            let step = (leaves[back.0].len() - back.1).min(left);
            left -= step;
            back = normalize(leaves, (back.0, back.1 + step));
        }
        self.back = back.min(self.back);
    }

    /// An upper limit of the pairs left (exact but for empty leaves, which a table never
    /// keeps).
    pub(crate) fn len<K, V>(&self, leaves: &[Arc<Leaf<K, V>>]) -> usize {
        if self.front >= self.back {
            return 0;
        }
        let whole: usize = leaves[self.front.0..self.back.0]
            .iter()
            .map(|l| l.len())
            .sum();
        whole + self.back.1 - self.front.1
    }
}

/// A span of a frozen table that owns the table's state and clones what it yields.
pub(crate) struct Owned<K, V> {
    pub(crate) leaves: Leaves<K, V>,
    pub(crate) span: Span,
}

impl<K: Clone, V: Clone> Iterator for Owned<K, V> {
    type Item = (K, V);

    /// The next pair, cloned (user `Clone`, no lock held).
    fn next(&mut self) -> Option<(K, V)> {
        self.span
            .next(&self.leaves)
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.span.len(&self.leaves);
        (n, Some(n))
    }
}

impl<K: Clone, V: Clone> DoubleEndedIterator for Owned<K, V> {
    fn next_back(&mut self) -> Option<(K, V)> {
        self.span
            .next_back(&self.leaves)
            .map(|(k, v)| (k.clone(), v.clone()))
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

    fn pairs(t: &OrdTable<u32, u32>) -> Vec<(u32, u32)> {
        t.pairs().map(|(k, e)| (*k, e.value)).collect()
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
                t.set(0, k, k, entry(x));
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
            steps.push(t.set(0, k * 2, k * 2, entry(k)));
        }
        let frozen = t.freeze();
        let before = pairs(&t);
        let mut trash = Trash::default();
        let mut more = Vec::new();
        // Inserts that split leaves, replacements, removals that empty a leaf.
        for k in 0..70 {
            more.push(t.set(0, 1, 1, entry(1000 + k)));
            more.push(t.set(0, k * 2 + 1, k * 2 + 1, entry(k)));
        }
        for k in 0..200 {
            more.push(t.remove(0, k * 2).expect("present"));
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
    fn spans_walk_from_both_ends_within_bounds() {
        let mut t = OrdTable::default();
        // Every third key, across many leaves.
        for k in (0..3000u32).step_by(3) {
            t.set(0, k, k, entry(k));
        }
        let leaves = t.freeze();
        let walk = |start: Bound<&u32>, end: Bound<&u32>| {
            let mut span = Span::of(&leaves, start, end);
            let n = span.len(&leaves);
            let mut out = Vec::new();
            while let Some((k, _)) = span.next(&leaves) {
                out.push(*k);
            }
            assert_eq!(out.len(), n);
            let mut back = Span::of(&leaves, start, end);
            let mut rev = Vec::new();
            while let Some((k, _)) = back.next_back(&leaves) {
                rev.push(*k);
            }
            rev.reverse();
            assert_eq!(out, rev);
            out
        };
        let all: Vec<u32> = (0..3000).step_by(3).collect();
        assert_eq!(walk(Bound::Unbounded, Bound::Unbounded), all);
        assert_eq!(
            walk(Bound::Excluded(&9), Bound::Included(&21)),
            [12, 15, 18, 21]
        );
        assert_eq!(
            walk(Bound::Included(&9), Bound::Excluded(&21)),
            [9, 12, 15, 18]
        );
        assert_eq!(
            walk(Bound::Included(&10), Bound::Excluded(&11)),
            Vec::<u32>::new()
        );
        assert_eq!(
            walk(Bound::Included(&5000), Bound::Unbounded),
            Vec::<u32>::new()
        );
        assert_eq!(
            walk(Bound::Unbounded, Bound::Excluded(&0)),
            Vec::<u32>::new()
        );
        assert_eq!(
            walk(Bound::Excluded(&2997), Bound::Unbounded),
            Vec::<u32>::new()
        );
        assert_eq!(walk(Bound::Included(&2997), Bound::Unbounded), [2997]);
        // Mixed ends: two from the front, then the rest from the back.
        let mut span = Span::of(&leaves, Bound::Included(&0), Bound::Excluded(&15));
        assert_eq!(span.next(&leaves).map(|(k, _)| *k), Some(0));
        assert_eq!(span.next_back(&leaves).map(|(k, _)| *k), Some(12));
        assert_eq!(span.next(&leaves).map(|(k, _)| *k), Some(3));
        assert_eq!(span.len(&leaves), 2);
    }
}
