//! Fuzz target: `dododb::fuzz::key_and_value` (see that function for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dododb::fuzz::key_and_value(data));
