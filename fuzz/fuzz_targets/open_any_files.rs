//! `open_any_files`: see `ptvp35_testkit::open_any_files`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35_testkit::open_any_files(data));
