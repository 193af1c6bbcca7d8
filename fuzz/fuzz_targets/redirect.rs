//! `redirect`: see `podgate_fuzz::redirect` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podgate_fuzz::redirect(data));
