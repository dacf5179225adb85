//! One key's committed state in one allocation behind a thin pointer: the
//! key, its version, its expiry and the value's bytes.
//!
//! ```text
//! offset 0   version: u64    top bit set: an expiry follows the header
//!        8   key_len: u32
//!       12   value_len: u32
//!       16   [expires_at_ms: u64, only with the top bit]
//!            key bytes, then value bytes
//! ```
//!
//! The allocation's size is `class_of(used bytes)`, a size class of
//! mimalloc's bins, so the pointer (an 8-byte map bucket) is all the map
//! keeps, and an overwrite whose new state falls in the same class is
//! written in place: the pointer stays, and with it the ordered index's
//! reference to the key. Readers therefore copy a value out under the
//! shard's read lock rather than keep a reference to it.
//!
//! Invariant: no I/O, no locks; the unsafe code here only reads and writes
//! inside the one allocation it owns.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;

/// Bytes before the optional expiry: version, key length, value length.
const HEADER: usize = 16;
/// Set in the stored version when an expiry follows the header.
const HAS_EXPIRY: u64 = 1 << 63;

/// The size an allocation of `n` bytes is given: a multiple of 8 up to 64
/// bytes, then four classes per doubling (80, 96, 112, 128, 160, ...), as
/// mimalloc's bins, so the rounding costs nothing the allocator would not
/// spend anyway.
pub(super) fn class_of(n: usize) -> usize {
    if n <= 64 {
        return (n + 7) & !7;
    }
    // 2^k < n <= 2^(k+1): a class every 2^(k-2) bytes.
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    let step = 1usize << (k - 2);
    (n + step - 1) & !(step - 1)
}

/// Bytes the state of a key takes, before rounding to its class.
fn used_bytes(key_len: usize, value_len: usize, expires_at_ms: u64) -> usize {
    HEADER + if expires_at_ms != 0 { 8 } else { 0 } + key_len + value_len
}

fn layout(size: usize) -> Layout {
    // Sizes stay far below isize::MAX (keys and values are bounded by the
    // configuration), and 8 is a valid alignment.
    Layout::from_size_align(size, 8).unwrap_or_else(|_| panic!("entry of {size} bytes"))
}

/// An owned entry: a key's committed state in one allocation.
pub(super) struct Packed(NonNull<u8>);

// SAFETY: a `Packed` owns its allocation outright, like a `Box<[u8]>`;
// shared references only read it.
unsafe impl Send for Packed {}
// SAFETY: as above.
unsafe impl Sync for Packed {}

impl Packed {
    /// A new entry holding `key`, `value`, `version` and `expires_at_ms`
    /// (0 for never).
    ///
    /// # Panics
    ///
    /// When the key or value is 4 GiB or longer, or `version` uses the top
    /// bit (revisions never get there).
    pub(super) fn new(key: &str, value: &[u8], version: u64, expires_at_ms: u64) -> Packed {
        let size = class_of(used_bytes(key.len(), value.len(), expires_at_ms));
        let layout = layout(size);
        // SAFETY: the layout has a non-zero size (at least the header).
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        let key_len = u32::try_from(key.len()).expect("key shorter than 4 GiB");
        // SAFETY: the header fits in the fresh allocation.
        unsafe { ptr.as_ptr().add(8).cast::<u32>().write(key_len) };
        let mut packed = Packed(ptr);
        // SAFETY: `key` is outside the fresh allocation, `key_len` long.
        unsafe { packed.write(key.as_ptr(), value, version, expires_at_ms) };
        packed
    }

    /// Writes the header, the expiry, the key and `value`. The allocation
    /// is at least `class_of(used_bytes(..))` bytes for this state, and the
    /// key's length is already in the header.
    ///
    /// # Safety
    ///
    /// `key` points to `key_len()` readable bytes: outside the allocation,
    /// or this entry's own key at its current place.
    unsafe fn write(&mut self, key: *const u8, value: &[u8], version: u64, expires_at_ms: u64) {
        assert!(version & HAS_EXPIRY == 0, "revision out of range");
        let value_len = u32::try_from(value.len()).expect("value shorter than 4 GiB");
        let key_len = self.key_len();
        let flag = if expires_at_ms != 0 { HAS_EXPIRY } else { 0 };
        let key_at = HEADER + if expires_at_ms != 0 { 8 } else { 0 };
        let base = self.0.as_ptr();
        // SAFETY: every write lands inside the allocation, whose size the
        // caller guarantees covers the header, the expiry, the key and the
        // value; the header fields are 8-aligned (the allocation is). The
        // key moves first, with `copy` (its old and new places may
        // overlap), before the expiry can overwrite its old place.
        unsafe {
            std::ptr::copy(key, base.add(key_at), key_len);
            base.cast::<u64>().write(version | flag);
            base.add(12).cast::<u32>().write(value_len);
            if expires_at_ms != 0 {
                base.add(HEADER).cast::<u64>().write(expires_at_ms);
            }
            std::ptr::copy_nonoverlapping(value.as_ptr(), base.add(key_at + key_len), value.len());
        }
    }

    fn raw_version(&self) -> u64 {
        // SAFETY: the header is always initialized and 8-aligned.
        unsafe { self.0.as_ptr().cast::<u64>().read() }
    }

    fn key_len(&self) -> usize {
        // SAFETY: as above.
        unsafe { self.0.as_ptr().add(8).cast::<u32>().read() as usize }
    }

    fn value_len(&self) -> usize {
        // SAFETY: as above.
        unsafe { self.0.as_ptr().add(12).cast::<u32>().read() as usize }
    }

    fn key_offset(&self) -> usize {
        HEADER
            + if self.raw_version() & HAS_EXPIRY != 0 {
                8
            } else {
                0
            }
    }

    /// Starts loading the entry's first bytes (header, key and, for a
    /// small entry, its value) into the cache; a hint, as
    /// `super::prefetch_line`.
    pub(super) fn prefetch(&self) {
        let base = self.0.as_ptr().cast_const();
        // The lines of a 128-byte block, wherever it starts.
        for offset in [0, 64, 127] {
            super::prefetch_line(base.wrapping_add(offset));
        }
    }

    /// The revision of the key's last change.
    pub(super) fn version(&self) -> u64 {
        self.raw_version() & !HAS_EXPIRY
    }

    /// Unix milliseconds at which the value expires, 0 for never.
    pub(super) fn expires_at_ms(&self) -> u64 {
        if self.raw_version() & HAS_EXPIRY == 0 {
            return 0;
        }
        // SAFETY: with the flag set, the expiry was written at offset 16.
        unsafe { self.0.as_ptr().add(HEADER).cast::<u64>().read() }
    }

    /// Starts loading the entry's second cache line, where the value of
    /// a small entry ends, while the first one (header and key) loads.
    pub(super) fn prefetch_tail(&self) {
        super::prefetch_line(self.0.as_ptr().wrapping_add(64));
    }

    /// The key.
    pub(super) fn key(&self) -> &str {
        key_of(self.0)
    }

    /// The value's bytes.
    pub(super) fn value(&self) -> &[u8] {
        let at = self.key_offset() + self.key_len();
        // SAFETY: `write` put `value_len` bytes right after the key.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(at), self.value_len()) }
    }

    /// Whether the entry is visible at `now_ms`; the clock is read only for
    /// an entry that has an expiry.
    pub(super) fn is_live_by(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let at = self.expires_at_ms();
        at == 0 || at > now_ms()
    }

    fn size(&self) -> usize {
        class_of(used_bytes(
            self.key_len(),
            self.value_len(),
            self.expires_at_ms(),
        ))
    }

    /// Replaces the value, version and expiry. In place when the new state
    /// falls in the allocation's size class; otherwise in a new allocation,
    /// and then the old one is handed back: any [`KeyRef`] to it must be
    /// replaced before it is dropped.
    #[must_use = "a moved entry's old allocation must outlive its index references"]
    pub(super) fn set(&mut self, value: &[u8], version: u64, expires_at_ms: u64) -> Option<Packed> {
        let size = class_of(used_bytes(self.key_len(), value.len(), expires_at_ms));
        if size == self.size() {
            // SAFETY: the key's own bytes, at their current place.
            let key = unsafe { self.0.as_ptr().add(self.key_offset()) };
            // SAFETY: as above; the size class is unchanged, so the
            // allocation covers the new state.
            unsafe { self.write(key, value, version, expires_at_ms) };
            return None;
        }
        let moved = Packed::new(self.key(), value, version, expires_at_ms);
        Some(std::mem::replace(self, moved))
    }

    /// A non-owning reference to the key, for the ordered index.
    pub(super) fn key_ref(&self) -> KeyRef {
        KeyRef(self.0)
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        // SAFETY: allocated by `new` with this very layout: the size is a
        // function of the state, and `set` writes in place only when the
        // new state has the same size.
        unsafe { dealloc(self.0.as_ptr(), layout(self.size())) }
    }
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed")
            .field("key", &self.key())
            .field("version", &self.version())
            .field("expires_at_ms", &self.expires_at_ms())
            .field("value_len", &self.value_len())
            .finish()
    }
}

/// The map compares and hashes entries by their key alone, exactly as the
/// key's `str`, so a `&str` finds its entry.
impl Hash for Packed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Packed {}

impl Borrow<str> for Packed {
    fn borrow(&self) -> &str {
        self.key()
    }
}

/// The key of the entry at `ptr`.
fn key_of<'a>(ptr: NonNull<u8>) -> &'a str {
    let base = ptr.as_ptr();
    // SAFETY: the caller's entry is alive (see `KeyRef`); its key is the
    // UTF-8 `str` that `new` copied in, at the offset the flag gives.
    unsafe {
        let flag = base.cast::<u64>().read() & HAS_EXPIRY;
        let key_len = base.add(8).cast::<u32>().read() as usize;
        let at = HEADER + if flag != 0 { 8 } else { 0 };
        std::str::from_utf8_unchecked(std::slice::from_raw_parts(base.add(at), key_len))
    }
}

/// A non-owning reference to an entry's key, ordered as the key's bytes:
/// the element of the ordered index.
///
/// Invariant: a `KeyRef` is held (by the index of the entry's shard) only
/// from the entry's insertion to its removal or move, both under the
/// shard's write lock, and the index is only read under that shard's lock;
/// so every `KeyRef` that is compared or read points to a live entry.
#[derive(Clone, Copy)]
pub(super) struct KeyRef(NonNull<u8>);

// SAFETY: a `KeyRef` only reads an immutable key, and only under the
// shard lock that keeps the entry alive (see the invariant above).
unsafe impl Send for KeyRef {}
// SAFETY: as above.
unsafe impl Sync for KeyRef {}

impl KeyRef {
    /// The key it refers to.
    pub(super) fn key(&self) -> &str {
        key_of(self.0)
    }

    /// Whether the entry is visible at `now_ms` (read under the shard
    /// lock, like the key).
    pub(super) fn is_live_at(&self, now_ms: u64) -> bool {
        let entry = std::mem::ManuallyDrop::new(Packed(self.0));
        entry.is_live_by(|| now_ms)
    }
}

impl PartialEq for KeyRef {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for KeyRef {}

impl PartialOrd for KeyRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().as_bytes().cmp(other.key().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::{Packed, class_of};

    #[test]
    fn size_classes_follow_mimallocs_bins() {
        let check = |n: usize, class: usize| assert_eq!(class_of(n), class, "{n}");
        check(16, 16);
        check(17, 24);
        check(64, 64);
        check(65, 80);
        check(123, 128);
        check(128, 128);
        check(129, 160);
        check(1000, 1024);
        check(1025, 1280);
        check(1 << 20, 1 << 20);
        check((1 << 20) + 1, (1 << 20) + (1 << 18));
    }

    /// One case: an entry's fields read back after creation and after
    /// each `set`, with whether the set moved it.
    fn check(key: &str, states: &[(&[u8], u64, u64, bool)]) {
        let (value, version, expires, _) = states[0];
        let mut entry = Packed::new(key, value, version, expires);
        for (i, &(value, version, expires, moves)) in states.iter().enumerate() {
            if i > 0 {
                let old = entry.set(value, version, expires);
                assert_eq!(old.is_some(), moves, "{key:?} step {i}");
            }
            assert_eq!(entry.key(), key);
            assert_eq!(entry.key_ref().key(), key);
            assert_eq!(entry.value(), value, "{key:?} step {i}");
            assert_eq!(entry.version(), version);
            assert_eq!(entry.expires_at_ms(), expires);
            assert_eq!(entry.is_live_by(|| 5), expires == 0 || expires > 5);
        }
    }

    #[test]
    fn fields_read_back_through_overwrites() {
        check("", &[(b"", 1, 0, false)]);
        check("k", &[(b"1", 1, 0, false), (b"2", 2, 0, false)]);
        check(
            "k",
            &[(b"1", 1, 0, false), (b"22", 2, 9, true), (b"3", 3, 0, true)],
        );
        check("key", &[(b"{}", 1, 0, false), (&[b'x'; 100], 2, 0, true)]);
        check(
            "key",
            &[(&[b'x'; 100], 1, 0, false), (&[b'y'; 101], 2, 0, false)],
        );
        check(
            "key",
            &[(&[b'x'; 100], 1, 0, false), (&[b'y'; 99], 2, 4, false)],
        );
        check("key", &[(&[b'x'; 100], 1, 3, false), (b"0", 2, 0, true)]);
        // The expiry comes and goes in place: the key moves within.
        check(
            "key",
            &[
                (&[b'x'; 100], 1, 0, false),
                (&[b'y'; 99], 2, 4, false),
                (&[b'z'; 100], 3, 0, false),
            ],
        );
        check(
            "é/ü",
            &[(b"null", 7, u64::MAX >> 2, false), (b"true", 8, 0, true)],
        );
        let long = "k".repeat(1024);
        check(
            &long,
            &[(&[b'v'; 5000], 1, 0, false), (&[b'w'; 5001], 2, 0, false)],
        );
    }

    #[test]
    fn every_size_round_trips() {
        for len in 0..1100 {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut entry = Packed::new("key", &value, 1, 0);
            assert_eq!(entry.value(), &value[..], "{len}");
            drop(entry.set(&value[..len / 2], 2, 1));
            assert_eq!(entry.value(), &value[..len / 2], "{len}");
            assert_eq!(entry.key(), "key");
        }
    }
}
