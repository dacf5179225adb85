//! Fuzz target: `dododb::fuzz::wal_records` (see that function for the invariant).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dododb::fuzz::wal_records(data));
