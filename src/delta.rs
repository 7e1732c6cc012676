//! `Delta`: a set of changes to many keys, serialized as they are added, written as one
//! unit. The bounds on keys and values.

use std::collections::hash_map::{self, HashMap};
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::Result;

/// What a key must be: stored as JSON, compared and hashed in memory, shared by threads.
///
/// Implemented for every type with these bounds: strings, integers, tuples (stored as JSON
/// arrays), your own `#[derive(Serialize, Deserialize, PartialEq, Eq, Hash, Clone)]`
/// structs.
pub trait Key: Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static> Key for T {}

/// What a value must be: stored as JSON, cloned out to readers, shared by threads.
///
/// Implemented for every type with these bounds, `serde_json::Value` among them.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}

/// One pending change: the new value (`None` removes the key) and its record line.
#[derive(Debug, Clone)]
pub(crate) struct Change<V> {
    pub(crate) value: Option<V>,
    pub(crate) line: Vec<u8>,
}

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
/// delta.remove("carol".to_string())?;
/// db.commit_transaction(delta)?; // both balances, durably, or neither
/// assert_eq!(db.get(&"bob".to_string()), Some(30));
/// # db.close()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Delta<K, V> {
    pub(crate) changes: HashMap<K, Change<V>>,
}

impl<K, V> Default for Delta<K, V> {
    fn default() -> Self {
        Delta {
            changes: HashMap::new(),
        }
    }
}

impl<K: Key, V: Value> Delta<K, V> {
    /// An empty delta.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` in this delta.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the key or the value cannot be
    /// stored as JSON (a non-finite float, a map with non-string keys, a failing
    /// `Serialize`); the delta is unchanged.
    pub fn set(&mut self, key: K, value: V) -> Result<()> {
        let mut line = Vec::new();
        codec::encode_set(&key, &value, &mut line)?;
        self.changes.insert(
            key,
            Change {
                value: Some(value),
                line,
            },
        );
        Ok(())
    }

    /// Removes `key` in this delta.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) if the key cannot be stored as JSON;
    /// the delta is unchanged.
    pub fn remove(&mut self, key: K) -> Result<()> {
        let mut line = Vec::new();
        codec::encode_remove(&key, &mut line)?;
        self.changes.insert(key, Change { value: None, line });
        Ok(())
    }

    /// What this delta does to `key`: `None` if nothing, `Some(None)` if it removes it,
    /// `Some(Some(v))` if it sets it to `v`.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<Option<&V>> {
        self.changes.get(key).map(|c| c.value.as_ref())
    }

    /// Moves every change of `other` into this delta; `other`'s win where both touch a key.
    pub fn merge(&mut self, other: Delta<K, V>) {
        if self.changes.is_empty() {
            self.changes = other.changes;
        } else {
            self.changes.extend(other.changes);
        }
    }

    /// The changed keys and what each becomes (`None`: removed), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Option<&V>)> + '_ {
        self.changes.iter().map(|(k, c)| (k, c.value.as_ref()))
    }

    /// Number of keys this delta changes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True if this delta changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Drops every change.
    pub fn clear(&mut self) {
        self.changes.clear();
    }
}

impl<K, V> IntoIterator for Delta<K, V> {
    type Item = (K, Option<V>);
    type IntoIter = IntoIter<K, V>;

    fn into_iter(self) -> IntoIter<K, V> {
        IntoIter(self.changes.into_iter())
    }
}

/// The changes of a [`Delta`], by value: each key and what it becomes (`None`: removed).
#[derive(Debug)]
pub struct IntoIter<K, V>(hash_map::IntoIter<K, Change<V>>);

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, Option<V>);

    fn next(&mut self) -> Option<(K, Option<V>)> {
        self.0.next().map(|(k, c)| (k, c.value))
    }
}
