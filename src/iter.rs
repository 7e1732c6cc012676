//! Iteration over a consistent state of the map, holding no lock: [`DbConnection::iter`]
//! for both maps, and the ordered map's [`range`](DbConnection::range),
//! [`first`](DbConnection::first), [`last`](DbConnection::last) and
//! [`scan_prefix`](DbConnection::scan_prefix).

use std::borrow::Borrow;
use std::fmt;
use std::ops::{Bound, RangeBounds};

use crate::bounds::{Key, Value};
use crate::connection::DbConnection;
use crate::kind::{MapKind, Ordered, Table};
use crate::ordered::{Frozen, Merge, OrdTable};

/// The pairs of a database at one instant, owned (`(K, V)`), holding no lock.
///
/// Returned by [`DbConnection::iter`] and, for the [`Ordered`] map, by
/// [`range`](DbConnection::range) and [`scan_prefix`](DbConnection::scan_prefix). It sees
/// one consistent state: every transaction whole or not at all, whatever writers do
/// meanwhile; a `get`, `set` or transaction inside a loop over it neither deadlocks nor
/// changes what it yields. Each pair is cloned as it is yielded, with no lock held.
pub struct Iter<K, V> {
    inner: Box<dyn Iterator<Item = (K, V)> + Send>,
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
    fn frozen(&self) -> Vec<Frozen<K, V>> {
        self.shared
            .map
            .with_all(|tables, _| OrdTable::freeze_all(tables))
    }

    /// The pairs whose keys fall in `range`, in key order, of the database as it is now
    /// (see [`Iter`]). Bounds take a borrowed form of the key, as `BTreeMap::range` does:
    /// `db.range::<str, _>("a".."c")` for `String` keys.
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
    /// # db.close()?;
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn range<Q, R>(&self, range: R) -> Iter<K, V>
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
        R: RangeBounds<Q>,
    {
        check_bounds(range.start_bound(), range.end_bound());
        let end = match range.end_bound() {
            Bound::Included(q) => Bound::Included(q.to_owned()),
            Bound::Excluded(q) => Bound::Excluded(q.to_owned()),
            Bound::Unbounded => Bound::Unbounded,
        };
        Iter {
            inner: Box::new(Merge::new(self.frozen(), range.start_bound(), end)),
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
        self.iter().next()
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
        // The largest key is the last of one shard's last leaf.
        self.frozen()
            .iter()
            .filter_map(|leaves| leaves.last().and_then(|l| l.last()))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(k, e)| (k.clone(), e.value.clone()))
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
        let prefix = prefix.to_owned();
        let m = Merge::new(
            self.frozen(),
            Bound::Included(prefix.as_str()),
            Bound::Unbounded,
        );
        Iter {
            inner: Box::new(m.take_while(move |(k, _)| k.borrow().starts_with(&prefix))),
        }
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
