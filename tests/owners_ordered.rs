//! `tests/owners.rs` on the ordered map: `tests/common/mod.rs` picks the map from this
//! crate's name.

#[path = "owners.rs"]
mod suite;
