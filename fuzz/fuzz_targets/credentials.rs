//! `credentials`: see `podgate_fuzz::credentials` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podgate_fuzz::credentials(data));
