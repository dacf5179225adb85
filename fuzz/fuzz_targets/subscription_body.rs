//! Fuzz target: `dododb::fuzz::subscription_body` (see that function for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dododb::fuzz::subscription_body(data));
