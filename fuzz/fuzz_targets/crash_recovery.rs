//! `crash_recovery`: see `ptvp35::testing::crash_recovery`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35::testing::crash_recovery(data));
