//! `open_any_files`: see `ptvp35::testing::open_any_files`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35::testing::open_any_files(data));
