//! Iteration over a consistent state of the map, holding no lock: [`DbConnection::iter`]
//! for both maps, and the ordered map's [`range`](DbConnection::range),
//! [`first`](DbConnection::first), [`last`](DbConnection::last) and
//! [`scan_prefix`](DbConnection::scan_prefix).

use std::borrow::Borrow;
use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use crate::bounds::{Key, Value};
use crate::connection::DbConnection;
use crate::kind::{MapKind, Ordered, Table};
use crate::ordered::{Leaves, OrdTable, Owned, Root, Span};

/// The pairs of a database at one instant, owned (`(K, V)`), holding no lock.
///
/// Returned by [`DbConnection::iter`] and, for the [`Ordered`] map, by
/// [`range`](DbConnection::range) and [`scan_prefix`](DbConnection::scan_prefix). It sees
/// one consistent state: every transaction whole or not at all, whatever writers do
/// meanwhile; a `get`, `set` or transaction inside a loop over it neither deadlocks nor
/// changes what it yields. The ordered map's pairs are cloned as they are yielded, with no
/// lock held; the hash map's were cloned when the iterator was made.
pub struct Iter<K, V> {
    inner: Box<dyn DoubleEndedIterator<Item = (K, V)> + Send>,
}

impl<K, V> fmt::Debug for Iter<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<K, V> Iterator for Iter<K, V> {
    type Item = (K, V);

    fn next(&mut self) -> Option<(K, V)> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for Iter<K, V> {
    fn next_back(&mut self) -> Option<(K, V)> {
        self.inner.next_back()
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> IntoIterator for &DbConnection<K, V, M> {
    type Item = (K, V);
    type IntoIter = Iter<K, V>;

    /// As [`DbConnection::iter`].
    fn into_iter(self) -> Iter<K, V> {
        self.iter()
    }
}

impl<K: Key, V: Value, M: MapKind<K, V>> DbConnection<K, V, M> {
    /// Every pair of the database as it is now: in key order for the [`Ordered`] map, in
    /// no particular order for the [`Hashed`](crate::Hashed) one. See [`Iter`] for what it
    /// guarantees.
    ///
    /// What it costs: the ordered map shares its structure with the iterator (the call
    /// takes microseconds whatever the size; later writes copy what they change while the
    /// iterator lives). The hash map copies every pair while writers wait, then yields the
    /// copy.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-iter-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::DbConnection::<String, i64>::open(dir.join("d.db"))?;
    /// db.set("a".into(), 1)?;
    /// db.set("b".into(), 2)?;
    /// for (k, v) in db.iter() {
    ///     db.set(k, v * 10)?; // writing inside the loop is fine
    /// }
    /// assert_eq!(db.iter().map(|(_, v)| v).sum::<i64>(), 30);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    // `for x in &db` would hide that the loop works on a copy taken when it starts.
    #[allow(clippy::iter_without_into_iter)]
    pub fn iter(&self) -> Iter<K, V> {
        let frozen = self
            .shared
            .map
            .with_all(|tables, _| M::Table::freeze_all(tables));
        Iter {
            inner: M::Table::thaw(frozen),
        }
    }
}

impl<K: Key + Ord, V: Value> DbConnection<K, V, Ordered> {
    /// The database as it is now, as a read-only ordered map that shares its structure
    /// with the database: taking it costs microseconds at any size, it holds no lock, and
    /// its `get`, `range` and `iter` lend references instead of cloning. Writes made
    /// after it was taken copy the leaves (at most 64 pairs) they change, once, while it
    /// lives. See [`Frozen`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-freeze-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use std::ops::Bound;
    ///
    /// let db = ptvp35::Options::new().open_ordered::<String, u64>(dir.join("d.db"))?;
    /// for (k, v) in [("apple", 3), ("banana", 5), ("cherry", 7)] {
    ///     db.set_nowait(k.into(), v)?;
    /// }
    /// db.commit()?;
    /// let frozen = db.freeze();
    /// db.set("apple".into(), 100)?; // not in `frozen`
    /// let upto = (Bound::Unbounded, Bound::Included("banana"));
    /// let total: u64 = frozen.range::<str, _>(upto).map(|(_, v)| *v).sum();
    /// assert_eq!(total, 8);
    /// assert_eq!(frozen.get("apple"), Some(&3));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn freeze(&self) -> Frozen<K, V> {
        let (leaves, len) = self.shared.map.with_all(|tables, _| {
            let len = tables.first().map_or(0, |t| t.len());
            (OrdTable::freeze_all(tables), len)
        });
        Frozen { leaves, len }
    }

    /// The pairs whose keys fall in `range`, in key order, cloned, of the database as it
    /// is now (see [`Iter`]; [`freeze`](Self::freeze) lends them instead). Bounds take a
    /// borrowed form of the key, as `BTreeMap::range` does:
    /// `db.range::<str, _>((Bound::Included("a"), Bound::Excluded("c")))` for `String`
    /// keys, or `db.range("a".to_string().."c".to_string())`. The iterator runs from
    /// either end (`.rev()`).
    ///
    /// # Panics
    ///
    /// If the range's start is above its end, or both are the same excluded bound (as
    /// `BTreeMap::range`).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-range-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use ptvp35::{DbConnection, Options, Ordered};
    ///
    /// let db: DbConnection<u64, f64, Ordered> = Options::new().open_ordered(dir.join("t.db"))?;
    /// for t in 0..100u64 {
    ///     db.set_nowait(t * 10, t as f64)?;
    /// }
    /// db.commit()?;
    /// let window: Vec<u64> = db.range(200..250).map(|(t, _)| t).collect();
    /// assert_eq!(window, [200, 210, 220, 230, 240]);
    /// let latest: Vec<u64> = db.range(..).rev().take(2).map(|(t, _)| t).collect();
    /// assert_eq!(latest, [990, 980]);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn range<Q, R>(&self, range: R) -> Iter<K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        let frozen = self.freeze();
        let span = frozen.span(&range);
        Iter {
            inner: Box::new(Owned {
                leaves: frozen.leaves,
                span,
            }),
        }
    }

    /// The pair with the smallest key, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-first-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::Options::new().open_ordered::<String, i64>(dir.join("d.db"))?;
    /// assert_eq!(db.first(), None);
    /// db.set("b".into(), 2)?;
    /// db.set("a".into(), 1)?;
    /// assert_eq!(db.first(), Some(("a".to_string(), 1)));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn first(&self) -> Option<(K, V)> {
        self.freeze().first().map(|(k, v)| (k.clone(), v.clone()))
    }

    /// The pair with the largest key, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-last-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::Options::new().open_ordered::<u32, String>(dir.join("d.db"))?;
    /// db.set(7, "seven".into())?;
    /// db.set(3, "three".into())?;
    /// assert_eq!(db.last(), Some((7, "seven".to_string())));
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn last(&self) -> Option<(K, V)> {
        self.freeze().last().map(|(k, v)| (k.clone(), v.clone()))
    }
}

impl<K: Key + Ord + Borrow<str>, V: Value> DbConnection<K, V, Ordered> {
    /// The pairs whose keys start with `prefix`, in key order (see [`Iter`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> anyhow::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("ptvp35-doc-prefix-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let db = ptvp35::Options::new().open_ordered::<String, u32>(dir.join("d.db"))?;
    /// for (k, v) in [("user/1", 1), ("user/2", 2), ("users", 3), ("group/1", 4)] {
    ///     db.set_nowait(k.into(), v)?;
    /// }
    /// db.commit()?;
    /// let users: Vec<String> = db.scan_prefix("user/").map(|(k, _)| k).collect();
    /// assert_eq!(users, ["user/1", "user/2"]);
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn scan_prefix(&self, prefix: &str) -> Iter<K, V> {
        let frozen = self.freeze();
        let span = frozen.prefix_span(prefix);
        Iter {
            inner: Box::new(Owned {
                leaves: frozen.leaves,
                span,
            }),
        }
    }
}

/// An ordered database at one instant, read-only, sharing its structure with the
/// database (see [`DbConnection::freeze`]). Cheap to clone; `Send` and `Sync`.
pub struct Frozen<K, V> {
    leaves: Leaves<K, V>,
    len: usize,
}

impl<K, V> Clone for Frozen<K, V> {
    fn clone(&self) -> Self {
        Frozen {
            leaves: Arc::clone(&self.leaves),
            len: self.len,
        }
    }
}

impl<K, V> fmt::Debug for Frozen<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frozen").field("len", &self.len()).finish()
    }
}

impl<K, V> Frozen<K, V> {
    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every pair, in key order, lent.
    #[must_use]
    pub fn iter(&self) -> FrozenRange<'_, K, V> {
        FrozenRange {
            leaves: &self.leaves,
            span: Span::all(&self.leaves),
        }
    }

    /// The pair with the smallest key, if any.
    #[must_use]
    pub fn first(&self) -> Option<(&K, &V)> {
        self.iter().next()
    }

    /// The pair with the largest key, if any.
    #[must_use]
    pub fn last(&self) -> Option<(&K, &V)> {
        self.iter().next_back()
    }
}

impl<K: Ord, V> Frozen<K, V> {
    fn span<Q, R>(&self, range: &R) -> Span
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        check_bounds(range.start_bound(), range.end_bound());
        Span::of(&self.leaves, range.start_bound(), range.end_bound())
    }

    /// The value of the key that borrows as `key`, lent.
    #[must_use]
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let mut span = Span::of(&self.leaves, Bound::Included(key), Bound::Included(key));
        span.next(&self.leaves).map(|(_, v)| v)
    }

    /// The pairs whose keys fall in `range`, in key order, lent; from either end.
    ///
    /// # Panics
    ///
    /// As [`DbConnection::range`].
    pub fn range<Q, R>(&self, range: R) -> FrozenRange<'_, K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
        R: RangeBounds<Q>,
    {
        FrozenRange {
            leaves: &self.leaves,
            span: self.span(&range),
        }
    }
}

impl<K: Ord + Borrow<str>, V> Frozen<K, V> {
    fn prefix_span(&self, prefix: &str) -> Span {
        let mut span = Span::of(&self.leaves, Bound::Included(prefix), Bound::Unbounded);
        // The end: the first key from the start on that does not start with `prefix`.
        let mut probe = span;
        let mut n = 0;
        while let Some((k, _)) = probe.next(&self.leaves) {
            if !k.borrow().starts_with(prefix) {
                break;
            }
            n += 1;
        }
        span.truncate(&self.leaves, n);
        span
    }

    /// The pairs whose keys start with `prefix`, in key order, lent.
    #[must_use]
    pub fn scan_prefix(&self, prefix: &str) -> FrozenRange<'_, K, V> {
        FrozenRange {
            leaves: &self.leaves,
            span: self.prefix_span(prefix),
        }
    }
}

/// Pairs of a [`Frozen`] state, lent, in key order; from either end.
pub struct FrozenRange<'a, K, V> {
    leaves: &'a Root<K, V>,
    span: Span,
}

impl<K, V> fmt::Debug for FrozenRange<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrozenRange")
            .field("left", &self.span.len(self.leaves))
            .finish()
    }
}

impl<'a, K, V> Iterator for FrozenRange<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<(&'a K, &'a V)> {
        self.span.next(self.leaves)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.span.len(self.leaves);
        (n, Some(n))
    }
}

impl<'a, K, V> DoubleEndedIterator for FrozenRange<'a, K, V> {
    fn next_back(&mut self) -> Option<(&'a K, &'a V)> {
        self.span.next_back(self.leaves)
    }
}

impl<K, V> ExactSizeIterator for FrozenRange<'_, K, V> {}

impl<'a, K, V> IntoIterator for &'a Frozen<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = FrozenRange<'a, K, V>;

    fn into_iter(self) -> FrozenRange<'a, K, V> {
        self.iter()
    }
}

/// Panics on the ranges `BTreeMap::range` panics on.
fn check_bounds<Q: Ord + ?Sized>(start: Bound<&Q>, end: Bound<&Q>) {
    match (start, end) {
        (Bound::Excluded(s), Bound::Excluded(e)) if s == e => {
            panic!("range start and end are equal and excluded")
        }
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e))
            if s > e =>
        {
            panic!("range start is greater than range end")
        }
        _ => {}
    }
}
