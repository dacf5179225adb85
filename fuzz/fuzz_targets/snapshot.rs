//! Fuzz target: `dododb::fuzz::snapshot` (see that function for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dododb::fuzz::snapshot(data));
