//! `testkit/tests/fuzz_seeds.rs` on the ordered map: `testkit/tests/common/mod.rs` picks the
//! map from this test crate's name.

#[path = "fuzz_seeds.rs"]
mod suite;
