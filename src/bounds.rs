//! What keys and values must be: the two bounds every typed part of the crate shares.

use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a key must be: stored as JSON, compared and hashed in memory, shared by threads.
///
/// Implemented for every type with these bounds: strings, integers, tuples (stored as JSON
/// arrays), your own `#[derive(Serialize, Deserialize, PartialEq, Eq, Hash, Clone)]`
/// structs.
///
/// The database runs these impls (and `Drop`) itself, some of them under its locks: they
/// must not call back into the database. They may panic: the panic reaches the caller (or
/// fails the open, or stops the writer thread) and no transaction is left half-applied.
pub trait Key: Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Eq + Hash + Clone + Send + Sync + 'static> Key for T {}

/// What a value must be: stored as JSON, cloned out to readers, shared by threads.
///
/// Implemented for every type with these bounds, `serde_json::Value` among them.
///
/// As for [`Key`], the database runs these impls (and `Drop`) itself, `Clone` under its
/// locks: they must not call back into the database, and a panic in them leaves no
/// transaction half-applied.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for T {}
