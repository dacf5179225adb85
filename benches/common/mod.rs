//! What the bench binaries share: the server's allocator, the value they
//! write and the keys they visit, so that their figures compare.

use mimalloc::MiMalloc;

// The allocator the server ships with, so the figures are the server's.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// A typical ~100-byte JSON document.
pub const VALUE: &[u8] = br#"{"user":"ada","score":1234,"tags":["a","b","c"],"active":true,"note":"0123456789abcdef0123"}"#;

/// The keys `key:0` .. `key:{n-1}`.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key:{i}")).collect()
}
