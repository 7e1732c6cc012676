//! The map a build of a suite runs on, picked from the test crate's name: each suite that
//! holds for both maps is built twice, the second time by `tests/NAME_ordered.rs`, a
//! wrapper that loads `NAME.rs` as module `suite`. Shared by the library's
//! `tests/common/mod.rs` and the test kit's `testkit/tests/common/mod.rs`.

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
    type Kind;
}

impl Pick for Select<false> {
    type Kind = ptvp35::Hashed;
}

impl Pick for Select<true> {
    type Kind = ptvp35::Ordered;
}

/// The map this build of the suite runs on.
pub type Kind = <Select<{ ordered_build() }> as Pick>::Kind;

/// Every suite that shares this module runs this check: the `_ordered` build of a suite
/// runs on the ordered map, the other on the hash map.
#[test]
fn this_build_runs_on_the_map_its_name_says() {
    let ordered = env!("CARGO_CRATE_NAME").ends_with("_ordered");
    let kind = std::any::type_name::<Kind>();
    assert_eq!(kind.ends_with("Ordered"), ordered, "{kind}");
    assert_eq!(kind.ends_with("Hashed"), !ordered, "{kind}");
}
