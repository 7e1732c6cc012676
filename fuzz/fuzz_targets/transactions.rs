//! `transactions`: see `ptvp35_testkit::transactions`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35_testkit::transactions(data));
