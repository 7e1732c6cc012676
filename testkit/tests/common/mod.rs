//! What the test kit's suites share: the map a build runs on. Each suite that uses this
//! module is built twice, as `tests/NAME.rs` and as `tests/NAME_ordered.rs` (a wrapper
//! that loads `NAME.rs` as module `suite`); this module picks the map from the test
//! crate's name, as the library's `tests/common/mod.rs` does. (`crash.rs` is built once:
//! it explores both maps itself.)
#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by test crates through `mod common`

#[path = "../../../tests/common/map.rs"]
mod map;
/// The map this build of the suite runs on: the `M` of the test kit's `_as` entry points.
pub use map::Kind as Map;

/// The test kit's database ([`ptvp35_testkit::Db`]) with this build's map.
pub type TestDb = ptvp35_testkit::Db<Map>;
