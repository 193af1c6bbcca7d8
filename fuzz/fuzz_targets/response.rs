//! `response`: see `podgate_fuzz::response` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podgate_fuzz::response(data));
