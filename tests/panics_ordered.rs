//! `tests/panics.rs` on the ordered map: `tests/common/mod.rs` picks the map from this
//! crate's name.

#[path = "panics.rs"]
mod suite;
