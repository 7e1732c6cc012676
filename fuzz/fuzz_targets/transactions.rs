//! `transactions`: see `ptvp35::testing::transactions`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35::testing::transactions(data));
