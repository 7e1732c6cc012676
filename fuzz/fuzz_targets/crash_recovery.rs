//! `crash_recovery`: see `ptvp35_testkit::crash_recovery`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ptvp35_testkit::crash_recovery(data));
