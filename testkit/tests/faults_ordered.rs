//! `testkit/tests/faults.rs` on the ordered map: `testkit/tests/common/mod.rs` picks the
//! map from this test crate's name.

#[path = "faults.rs"]
mod suite;
