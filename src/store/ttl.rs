//! An index of committed keys that carry an expiry, ordered by expiry time,
//! so the expiry loop and `count` never scan the whole map.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// `(expires_at_ms, key)` pairs. A plain mutex: it is only touched by
/// writes of keys that have or had a TTL, and never held across I/O.
#[derive(Default)]
pub(super) struct TtlIndex {
    due: Mutex<BTreeSet<(u64, Box<str>)>>,
}

impl TtlIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, Box<str>)>> {
        // The set stays consistent even if a holder panicked mid-way.
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, expires_at_ms: u64, key: &str) {
        self.lock().insert((expires_at_ms, Box::from(key)));
    }

    pub(super) fn remove(&self, expires_at_ms: u64, key: &str) {
        self.lock().remove(&(expires_at_ms, Box::from(key)));
    }

    /// Swaps the whole index with `other`'s.
    pub(super) fn swap(&self, other: &TtlIndex) {
        std::mem::swap(&mut *self.lock(), &mut *other.lock());
    }

    /// Entries under `prefix` whose expiry is at or before `now_ms`.
    pub(super) fn count_due_under(&self, now_ms: u64, prefix: &str) -> usize {
        self.lock()
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .filter(|(_, key)| key.starts_with(prefix))
            .count()
    }

    /// Up to `max` keys whose expiry is due, earliest first.
    pub(super) fn due(&self, now_ms: u64, max: usize) -> Vec<Box<str>> {
        self.lock()
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .map(|(_, key)| key.clone())
            .collect()
    }
}
