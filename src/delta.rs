//! `Delta`: a set of changes to many keys, serialized as they are added, written as one
//! unit.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};

use crate::bounds::{Key, Value};
use crate::codec;
use crate::error::Result;
use crate::map::{hash_key, Change};
use crate::shard::PassThrough;

/// One pending change, hashed, and where its record line is in the delta's buffer.
#[derive(Debug, Clone)]
struct Slot<K, V> {
    change: Change<K, V>,
    start: usize,
    len: usize,
    /// The next slot whose key has the same 64-bit hash (nearly never one), or `NONE`.
    next: usize,
}

const NONE: usize = usize::MAX;

/// Changes to many keys that are applied together and written as one unit: after any
/// crash, all of them are in the database or none.
///
/// Each change is serialized when it is added, so a key or value that cannot be stored is
/// refused right there and the delta stays as it was. A later change to the same key
/// replaces the earlier one.
///
/// # Examples
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-delta-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use ptvp35::{DbConnection, Delta};
///
/// let db = DbConnection::<String, i64>::open(dir.join("bank.db"))?;
/// let mut delta = Delta::new();
/// delta.set("alice".to_string(), 70)?;
/// delta.set("bob".to_string(), 30)?;
/// delta.remove("carol")?;
/// db.commit_transaction(delta)?; // both balances, durably, or neither
/// assert_eq!(db.get(&"bob".to_string()), Some(30));
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Delta<K, V> {
    /// Every changed key, in the order first changed; a later change to a key replaces
    /// its slot's contents. A plain vector: entering the map moves each change once, and
    /// nothing is rehashed as it grows.
    slots: Vec<Slot<K, V>>,
    /// Each key's hash (computed once, and used again by the map) to its first slot.
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    /// Every record line added, in order; one buffer instead of one allocation per line.
    /// Bytes that no change points to (replaced by a later change, or left by a panic in
    /// the user's `Serialize`, `Hash` or `Eq` half-way through an addition) are never
    /// written: see [`into_parts`](Delta::into_parts).
    lines: Vec<u8>,
}

impl<K, V> Default for Delta<K, V> {
    fn default() -> Self {
        Delta {
            slots: Vec::new(),
            index: HashMap::default(),
            lines: Vec::new(),
        }
    }
}

impl<K: Key, V: Value> Delta<K, V> {
    /// An empty delta.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty delta with room for `keys` changes of about `bytes` bytes of records in
    /// all, so that a bulk load does not grow it step by step.
    #[must_use]
    pub fn with_capacity(keys: usize, bytes: usize) -> Self {
        Delta {
            slots: Vec::with_capacity(keys),
            index: HashMap::with_capacity_and_hasher(keys, BuildHasherDefault::default()),
            lines: Vec::with_capacity(bytes),
        }
    }

    /// Sets `key` to `value` in this delta.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the key or the value cannot be
    /// stored as JSON (a non-finite float, a map with non-string keys, a failing
    /// `Serialize`); the delta is unchanged.
    pub fn set(&mut self, key: K, value: V) -> Result<()> {
        let start = self.lines.len();
        codec::encode_set(&key, &value, &mut self.lines)?;
        self.put(key, Some(value), start);
        Ok(())
    }

    /// Records the change whose line starts at `start` (runs the user's `Hash` and `Eq`:
    /// a panic there leaves the slots as they were).
    fn put(&mut self, key: K, value: Option<V>, start: usize) {
        let len = self.lines.len() - start;
        let hash = hash_key(&key);
        let change = Change { hash, key, value };
        self.add(change, start, len);
    }

    /// Adds `change` (its line at `start`, `len` bytes), replacing the change of the same
    /// key if there is one (runs the user's `Eq`).
    fn add(&mut self, change: Change<K, V>, start: usize, len: usize) {
        let first = self.index.get(&change.hash).copied().unwrap_or(NONE);
        let mut at = first;
        while at != NONE {
            let slot = &mut self.slots[at];
            if slot.change.key == change.key {
                let old = std::mem::replace(&mut slot.change.value, change.value);
                (slot.start, slot.len) = (start, len);
                // The replaced value and the second copy of the key drop last.
                drop(old);
                drop(change.key);
                return;
            }
            at = slot.next;
        }
        let hash = change.hash;
        self.slots.push(Slot {
            change,
            start,
            len,
            next: first,
        });
        self.index.insert(hash, self.slots.len() - 1);
    }

    /// The slot of the key that borrows as `q` (runs the user's `Hash` and `Eq`).
    fn find<Q>(&self, q: &Q) -> Option<&Slot<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut at = *self.index.get(&hash_key(q))?;
        while at != NONE {
            let slot = &self.slots[at];
            if slot.change.key.borrow() == q {
                return Some(slot);
            }
            at = slot.next;
        }
        None
    }

    /// Removes `key` in this delta.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the key cannot be stored as JSON;
    /// the delta is unchanged.
    pub fn remove<Q>(&mut self, key: &Q) -> Result<()>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        let key = key.to_owned();
        let start = self.lines.len();
        codec::encode_remove(&key, &mut self.lines)?;
        self.put(key, None, start);
        Ok(())
    }

    /// What this delta does to `key`: `None` if nothing, `Some(None)` if it removes it,
    /// `Some(Some(v))` if it sets it to `v`.
    #[must_use]
    pub fn get<Q>(&self, key: &Q) -> Option<Option<&V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(key).map(|s| s.change.value.as_ref())
    }

    /// Moves every change of `other` into this delta; `other`'s win where both touch a key.
    pub fn merge(&mut self, other: Delta<K, V>) {
        if self.slots.is_empty() {
            *self = other;
            return;
        }
        let base = self.lines.len();
        self.lines.extend_from_slice(&other.lines);
        self.slots.reserve(other.slots.len());
        for slot in other.slots {
            self.add(slot.change, base + slot.start, slot.len);
        }
    }

    /// Splits the delta into its changes, hashed, and the record lines of exactly those
    /// changes (one line per key), ready to be applied and written as one unit.
    ///
    /// The buffer is used as it is only if the changes' lines fill it exactly; otherwise
    /// (a replaced change, or a panic in user code that left bytes no change points to)
    /// the lines are copied out change by change. Runs no user code.
    pub(crate) fn into_parts(self) -> (Vec<Change<K, V>>, Vec<u8>) {
        let Delta {
            slots,
            index,
            lines,
        } = self;
        drop(index);
        let live: usize = slots.iter().map(|s| s.len).sum();
        let lines = if live == lines.len() {
            lines
        } else {
            let mut live = Vec::with_capacity(live);
            for s in &slots {
                live.extend_from_slice(&lines[s.start..s.start + s.len]);
            }
            live
        };
        let changes = slots.into_iter().map(|s| s.change).collect();
        (changes, lines)
    }

    /// The changed keys and what each becomes (`None`: removed), in the order each key
    /// was first changed.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Option<&V>)> + '_ {
        self.slots
            .iter()
            .map(|s| (&s.change.key, s.change.value.as_ref()))
    }

    /// Number of keys this delta changes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if this delta changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of record lines held (those of replaced changes too).
    pub(crate) fn lines_len(&self) -> usize {
        self.lines.len()
    }

    /// Drops every change.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.lines.clear();
    }
}

impl<K, V> IntoIterator for Delta<K, V> {
    type Item = (K, Option<V>);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> IntoIter<K, V> {
        IntoIter(self.slots.into_iter())
    }
}

/// The changes of a [`Delta`], by value: each key and what it becomes (`None`: removed).
#[derive(Debug)]
pub struct IntoIter<K, V>(std::vec::IntoIter<Slot<K, V>>);

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, Option<V>);

    fn next(&mut self) -> Option<(K, Option<V>)> {
        self.0.next().map(|s| (s.change.key, s.change.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(d: Delta<String, i32>) -> Vec<String> {
        let (_, bytes) = d.into_parts();
        let mut v: Vec<String> = String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_replaced_change_leaves_one_line_per_key() -> Result<()> {
        let mut d = Delta::new();
        d.set("a".into(), 1)?;
        d.set("b".into(), 2)?;
        d.set("a".into(), 3)?;
        d.remove("b")?;
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("a"), Some(Some(&3)));
        assert_eq!(d.get("b"), Some(None));
        assert_eq!(lines(d), ["{\"key\":\"a\",\"value\":3}", "{\"key\":\"b\"}"]);
        Ok(())
    }

    #[test]
    fn merge_keeps_the_newer_change_and_its_line() -> Result<()> {
        let mut a = Delta::new();
        a.set("x".into(), 1)?;
        a.set("y".into(), 1)?;
        let mut b = Delta::with_capacity(2, 64);
        b.set("y".into(), 2)?;
        b.set("z".into(), 2)?;
        a.merge(b);
        assert_eq!(
            lines(a),
            [
                "{\"key\":\"x\",\"value\":1}",
                "{\"key\":\"y\",\"value\":2}",
                "{\"key\":\"z\",\"value\":2}"
            ]
        );
        let mut empty = Delta::new();
        let mut c = Delta::new();
        c.set("q".into(), 9)?;
        empty.merge(c);
        assert_eq!(lines(empty), ["{\"key\":\"q\",\"value\":9}"]);
        Ok(())
    }

    #[test]
    fn a_refused_change_leaves_the_delta_as_it_was() -> Result<()> {
        let mut d: Delta<String, f64> = Delta::new();
        d.set("a".into(), 1.0)?;
        assert!(d.set("b".into(), f64::NAN).is_err());
        assert!(d.set("a".into(), f64::INFINITY).is_err());
        assert_eq!(d.get("a"), Some(Some(&1.0)));
        let (changes, bytes) = d.into_parts();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].hash, hash_key("a"));
        assert_eq!(bytes, b"{\"key\":\"a\",\"value\":1.0}\n");
        Ok(())
    }
}
