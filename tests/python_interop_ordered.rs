//! `tests/python_interop.rs` on the ordered map: `tests/common/mod.rs` picks the map from this
//! crate's name.

#[path = "python_interop.rs"]
mod suite;
