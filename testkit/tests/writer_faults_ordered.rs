//! `testkit/tests/writer_faults.rs` on the ordered map: `testkit/tests/common/mod.rs` picks the
//! map from this test crate's name.

#[path = "writer_faults.rs"]
mod suite;
