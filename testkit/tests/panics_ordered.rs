//! `testkit/tests/panics.rs` on the ordered map: `testkit/tests/common/mod.rs` picks the
//! map from this test crate's name.

#[path = "panics.rs"]
mod suite;
