//! What the test kit's suites share: the map a build runs on. Each suite that uses this
//! module is built twice, as `tests/NAME.rs` and as `tests/NAME_ordered.rs` (a wrapper
//! that loads `NAME.rs` as module `suite`); this module picks the map from the test
//! crate's name, as the library's `tests/common/mod.rs` does. (`crash.rs` is built once:
//! it explores both maps itself.)
#![allow(dead_code)] // each test file uses a different part
#![allow(unreachable_pub)] // shared by test crates through `mod common`

/// Whether this test crate is the ordered-map build of its suite (its name ends in
/// `_ordered`).
const fn ordered_build() -> bool {
    let name = env!("CARGO_CRATE_NAME").as_bytes();
    let tail = b"_ordered".as_slice();
    if name.len() < tail.len() {
        return false;
    }
    let mut i = 0;
    while i < tail.len() {
        if name[name.len() - tail.len() + i] != tail[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Picks the map of a build (see [`ordered_build`]).
pub struct Select<const ORDERED: bool>;

/// The map a [`Select`] picks.
pub trait Pick {
    type Map;
}

impl Pick for Select<false> {
    type Map = ptvp35::Hashed;
}

impl Pick for Select<true> {
    type Map = ptvp35::Ordered;
}

/// The map this build of the suite runs on: the `M` of the test kit's `_as` entry points.
pub type Map = <Select<{ ordered_build() }> as Pick>::Map;

/// The test kit's database ([`ptvp35_testkit::Db`]) with this build's map.
pub type TestDb = ptvp35_testkit::Db<Map>;

/// Every suite that shares this module runs this check: a `NAME_ordered` build that
/// silently ran the hash map (or the other way round) fails here.
#[test]
fn this_build_runs_on_the_map_its_name_says() {
    let ordered = env!("CARGO_CRATE_NAME").ends_with("_ordered");
    let map = std::any::type_name::<Map>();
    assert_eq!(map.ends_with("Ordered"), ordered, "{map}");
    assert_eq!(map.ends_with("Hashed"), !ordered, "{map}");
}
